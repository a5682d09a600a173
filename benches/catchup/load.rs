//! How much of the machine something outside this bench used during a measurement: the
//! machine's busy CPU time (`/proc/stat`) minus that of this process and its descendants
//! (sidecars, pgbench, the postmasters and, through their `cutime`, the backends they reaped).
//! The bench's machine may be shared; a figure taken beside a busy neighbour says so.

use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of `/proc` CPU times (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Snapshot {
    at: Instant,
    busy_ticks: u64,
    ours_ticks: u64,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot { at: Instant::now(), busy_ticks: machine_busy_ticks(), ours_ticks: our_ticks() }
    }

    /// Cores busy on average with other work since `self`.
    pub fn others_since(&self) -> f64 {
        let now = Snapshot::take();
        let busy = now.busy_ticks.saturating_sub(self.busy_ticks);
        let ours = now.ours_ticks.saturating_sub(self.ours_ticks);
        busy.saturating_sub(ours) as f64 / TICKS_PER_SECOND / now.at.duration_since(self.at).as_secs_f64()
    }
}

/// user + nice + system + irq + softirq + steal, all CPUs.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(total) = stat.lines().next() else { return 0 };
    let fields: Vec<u64> = total.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum()
}

/// utime + stime + cutime + cstime of this process and every live descendant.
fn our_ticks() -> u64 {
    // pid -> (parent, ticks)
    let mut processes: HashMap<u32, (u32, u64)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        processes.insert(pid, (number(1) as u32, number(11) + number(12) + number(13) + number(14)));
    }
    let me = std::process::id();
    let ours = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            match processes.get(&pid) {
                Some(&(parent, _)) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    processes.iter().filter(|(&pid, _)| ours(pid)).map(|(_, &(_, ticks))| ticks).sum()
}
