//! The admin API from the command line: `walship status --admin URL` and friends. A minimal
//! HTTP/1.1 client (one request per connection), enough for our own server.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::status::Status;

/// How long a command waits for the admin API.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin URL {0:?} is not of the form http://HOST:PORT")]
    Url(String),
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} answered something that is not HTTP")]
    Response { addr: String },
    #[error("{addr} answered {code}: {body}")]
    Status { addr: String, code: u16, body: String },
    #[error("{addr} sent a status that does not parse: {source}")]
    Json { addr: String, source: serde_json::Error },
}

/// `http://host:port[/]` to `host:port`.
pub fn authority(url: &str) -> Result<String, ClientError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| ClientError::Url(url.into()))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || !host.contains(':') {
        return Err(ClientError::Url(url.into()));
    }
    Ok(host.to_owned())
}

/// Sends one request and returns the status code and body.
pub async fn request(url: &str, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), ClientError> {
    request_within(url, method, path, token, REQUEST_TIMEOUT).await
}

/// [`request`], waiting up to `timeout` for the answer (a switchover takes a while).
pub async fn request_within(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let addr = authority(url)?;
    let exchange = async {
        let mut stream =
            TcpStream::connect(&addr).await.map_err(|source| ClientError::Connect { addr: addr.clone(), source })?;
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n");
        if let Some(token) = token {
            let _ = write!(head, "Authorization: Bearer {token}\r\n");
        }
        head.push_str("\r\n");
        let io = |source| ClientError::Connect { addr: addr.clone(), source };
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(io)?;
        parse_response(&addr, &response)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ClientError::Timeout { addr: addr.clone(), timeout })?
}

fn parse_response(addr: &str, response: &[u8]) -> Result<(u16, String), ClientError> {
    let bad = || ClientError::Response { addr: addr.to_owned() };
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    Ok((code, if chunked { dechunk(body) } else { body.to_owned() }))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        let (Some(chunk), Some(tail)) = (after.get(..size), after.get(size..)) else { break };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        rest = tail.trim_start_matches("\r\n");
    }
    out
}

/// `GET /status`.
pub async fn status(url: &str) -> Result<Status, ClientError> {
    let (code, body) = request(url, "GET", "/status", None).await?;
    let addr = authority(url)?;
    if code != 200 {
        return Err(ClientError::Status { addr, code, body });
    }
    serde_json::from_str(&body).map_err(|source| ClientError::Json { addr, source })
}

/// The status of every node the one at `url` knows (itself first, then its peers in the
/// order of its configuration), each asked directly; an unreachable one shows its error.
pub async fn cluster(url: &str) -> Result<Vec<(String, Result<Status, ClientError>)>, ClientError> {
    let own = status(url).await?;
    let mut nodes = Vec::with_capacity(own.peers.len() + 1);
    let peers = own.peers.clone();
    nodes.push((own.node.clone(), Ok(own)));
    for peer in peers {
        let url = format!("http://{}", peer.admin);
        let answer = tokio::time::timeout(PEER_STATUS_TIMEOUT, status(&url))
            .await
            .unwrap_or(Err(ClientError::Timeout { addr: peer.admin.clone(), timeout: PEER_STATUS_TIMEOUT }));
        nodes.push((peer.node, answer));
    }
    Ok(nodes)
}

/// How long `walship status` waits for each peer.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster as a table, a row per node, like `patronictl list`.
pub fn render_cluster(nodes: &[(String, Result<Status, ClientError>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<13} {:>5} {:<12} {:>10} {:>10} {:>10} {:<12}",
        "NODE", "ROLE", "TERM", "LEADER", "INDEX", "APPLIED", "LAG", "REPLAY"
    );
    for (node, answer) in nodes {
        match answer {
            Ok(s) => {
                let idx = |i: Option<u64>| i.map_or("-".into(), |i| i.to_string());
                let _ = writeln!(
                    out,
                    "{:<12} {:<13} {:>5} {:<12} {:>10} {:>10} {:>10} {:<12}",
                    s.node,
                    s.role,
                    s.term,
                    s.leader.as_deref().unwrap_or("-"),
                    idx(s.index),
                    idx(s.applied_index),
                    s.lag_bytes.map_or("-".into(), human_bytes),
                    s.replay.as_deref().unwrap_or("-")
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{node:<12} UNREACHABLE   {e}");
            }
        }
    }
    for (_, answer) in nodes {
        if let Ok(Status { node, divergent_report: Some(report), .. }) = answer {
            let _ = writeln!(out, "{node} DIVERGED: what it holds that the cluster lost is in {report}");
        }
        if let Ok(Status { node, error: Some(error), .. }) = answer {
            let _ = writeln!(out, "{node} REPLAY STOPPED: {error}");
        }
    }
    out
}

/// One node as an on-call engineer reads it.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let index = status.index.map_or("-".into(), |i| i.to_string());
    let leader = status.leader.as_deref().unwrap_or("unknown");
    let _ = writeln!(
        out,
        "node {}  role {}  term {}  log index {}  leader {}",
        status.node, status.role, status.term, index, leader
    );
    if let Some(sync) = &status.sync {
        let _ = writeln!(out, "replication {sync}");
    }
    if let Some(applied) = status.applied_index {
        let lag = status.lag_bytes.map_or("unknown".into(), human_bytes);
        let replay = status.replay.as_deref().unwrap_or("unknown");
        let _ = writeln!(out, "applied index {applied}  lag {lag}  replay {replay}");
    }
    if let Some(error) = &status.error {
        let _ = writeln!(out, "REPLAY STOPPED: {error}");
    }
    if let Some(p) = &status.seeding {
        let _ = writeln!(
            out,
            "loading a snapshot: {} of {} tables, {} rows, {}",
            p.tables_done,
            p.tables_total,
            p.rows,
            human_bytes(p.bytes)
        );
    }
    if let Some(followers) = &status.followers {
        let _ = writeln!(
            out,
            "\n{:<16} {:<9} {:>12} {:>12} {:>10} {:>9}",
            "FOLLOWER", "CONNECTED", "FLUSHED", "APPLIED", "LAG", "LAG TIME"
        );
        for f in followers {
            let idx = |i: Option<u64>| i.map_or("-".into(), |i| i.to_string());
            let _ = writeln!(
                out,
                "{:<16} {:<9} {:>12} {:>12} {:>10} {:>9}",
                f.node,
                if f.connected { "yes" } else { "NO" },
                idx(f.flushed_index),
                idx(f.applied_index),
                human_bytes(f.lag_bytes),
                human_seconds(f.lag_seconds)
            );
        }
    }
    out
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn human_seconds(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!("{}m{:02}s", (seconds / 60.0) as u64, (seconds % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (seconds / 3600.0) as u64, (seconds % 3600.0 / 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_units() {
        assert_eq!(authority("http://127.0.0.1:7480/").unwrap(), "127.0.0.1:7480");
        assert!(authority("127.0.0.1:7480").is_err());
        assert!(authority("http://host/path").is_err());
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_seconds(0.04), "0.0s");
        assert_eq!(human_seconds(303.0), "5m03s");
        assert_eq!(human_seconds(7322.0), "2h02m");
    }

    #[test]
    fn a_stopped_follower_says_why() {
        let status: Status = serde_json::from_str(
            r#"{"node":"b","role":"follower","term":1,"leader":"a","index":9,"applied_index":7,"lag_bytes":512,
                "lag_seconds":3.0,"replay":"stopped","error":"apply: entry 1.8 diverges on table public.t (key id=42)"}"#,
        )
        .unwrap();
        let text = render(&status);
        assert!(text.contains("applied index 7  lag 512 B  replay stopped"), "{text}");
        assert!(text.contains("REPLAY STOPPED: apply: entry 1.8 diverges on table public.t (key id=42)"), "{text}");
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response("a", plain).unwrap(), (200, "ok".into()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response("a", chunked).unwrap(), (503, "abcde".into()));
        assert!(parse_response("a", b"garbage").is_err());
    }
}
