//! A TCP proxy that injects network faults between two local processes (a follower and its
//! leader's relay, a sidecar and PostgreSQL), as Toxiproxy does: for tests, benches and the
//! soak. Each connection is pumped by two threads, one per direction, chunk by chunk; the
//! fault in force is looked up for every chunk, so it changes under open connections.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes a pump reads at a time.
const CHUNK_BYTES: usize = 16 << 10;

/// What happens to the bytes going through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded as they come.
    Pass,
    /// Each chunk waits this long before it is forwarded (latency; order is kept).
    Delay(Duration),
    /// Read and dropped: both sides see a link that is up but silent, until their timeouts.
    BlackHole,
    /// Forwarded at no more than this many bytes a second in each direction.
    Bandwidth(u64),
    /// Each direction of each connection forwards this many bytes in all, then the connection
    /// is reset: with a count that is no multiple of any frame size, in the middle of one.
    CutAfter(u64),
}

struct Shared {
    fault: Mutex<Fault>,
    /// Both ends of every open connection, by number, to reset them all at once.
    open: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    stopped: AtomicBool,
}

/// A proxy listening on 127.0.0.1 (an ephemeral port) and forwarding to `target`. Dropping it
/// stops accepting and resets every connection.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            open: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::Builder::new().name("fault-proxy".into()).spawn(move || accept(&listener, target, &accepting))?;
        Ok(FaultProxy { port, shared })
    }

    /// The port clients connect to instead of the target's.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, fault: Fault) {
        if let Ok(mut current) = self.shared.fault.lock() {
            *current = fault;
        }
    }

    /// Resets every open connection (both ends see ECONNRESET or EOF at once).
    pub fn reset_all(&self) {
        let open = self.shared.open.lock().map(|mut open| std::mem::take(&mut *open)).unwrap_or_default();
        for (_, a, b) in open {
            reset(&a);
            reset(&b);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.reset_all();
    }
}

fn accept(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    for (number, client) in (0u64..).zip(listener.incoming()) {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(target) else {
            reset(&client);
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
            (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
        else {
            continue;
        };
        if let Ok(mut open) = shared.open.lock() {
            open.push((number, c3, s3));
        }
        for (from, to) in [(client, server), (s2, c2)] {
            let shared = Arc::clone(shared);
            let _ = std::thread::Builder::new().name("fault-pump".into()).spawn(move || {
                pump(from, to, &shared);
                if let Ok(mut open) = shared.open.lock() {
                    open.retain(|(n, ..)| *n != number);
                }
            });
        }
    }
}

/// Forwards `from` to `to` under the fault in force until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut forwarded = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let fault = shared.fault.lock().map(|f| *f).unwrap_or(Fault::Pass);
        let sent = match fault {
            Fault::Pass => to.write_all(chunk),
            Fault::Delay(delay) => {
                std::thread::sleep(delay);
                to.write_all(chunk)
            }
            Fault::BlackHole => Ok(()),
            Fault::Bandwidth(per_second) => {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / per_second.max(1) as f64));
                to.write_all(chunk)
            }
            Fault::CutAfter(limit) => {
                let room = usize::try_from(limit.saturating_sub(forwarded)).unwrap_or(usize::MAX).min(n);
                let written = to.write_all(chunk.get(..room).unwrap_or_default());
                if room < n {
                    reset(&from);
                    reset(&to);
                    break;
                }
                written
            }
        };
        forwarded += n as u64;
        if sent.is_err() {
            break;
        }
    }
    let _ = (from.shutdown(Shutdown::Both), to.shutdown(Shutdown::Both));
}

/// Closes with a reset rather than a clean FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(port: u16, data: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(data)?;
        let mut got = vec![0u8; data.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn faults_pass_delay_drop_and_cut_the_bytes() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        assert_eq!(round_trip(proxy.port(), &data, Duration::from_secs(5)).unwrap(), data);

        proxy.set(Fault::Delay(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(proxy.port(), b"slow", Duration::from_secs(5)).unwrap(), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(400), "delayed both ways: {:?}", started.elapsed());

        proxy.set(Fault::BlackHole);
        assert!(round_trip(proxy.port(), b"lost", Duration::from_millis(300)).is_err(), "nothing comes back");

        proxy.set(Fault::CutAfter(1000));
        let cut = round_trip(proxy.port(), &data, Duration::from_secs(5));
        assert!(cut.is_err(), "the connection is reset after 1000 bytes");

        proxy.set(Fault::Pass);
        assert_eq!(round_trip(proxy.port(), b"again", Duration::from_secs(5)).unwrap(), b"again");
    }
}
