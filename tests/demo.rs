//! `walship demo` end to end: the real binary, three real PostgreSQL instances, sidecars, load.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous: three starts, 12 s of load, and a stop, on a loaded CI machine.
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `walship demo ARGS` with `envs`, killing it after `DEMO_TIMEOUT`.
fn run_demo(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_walship"))
        .arg("demo")
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("walship demo did not end within {DEMO_TIMEOUT:?}:\n{}", fs::read_to_string(&stdout_path).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Run { status, stdout: fs::read_to_string(&stdout_path).unwrap(), stderr: fs::read_to_string(&stderr_path).unwrap() }
}

/// The folder from the first line: `walship demo in PATH (...)`.
fn demo_folder(stdout: &str) -> PathBuf {
    let rest = stdout.lines().next().and_then(|line| line.strip_prefix("walship demo in ")).unwrap();
    PathBuf::from(rest.split(" (").next().unwrap())
}

/// `(applied_index, lag_bytes, lag_seconds)` of every line where `node` is connected:
/// `   12s  b         yes                 1234     2.0KiB        0.012`.
fn connected_lines(stdout: &str, node: &str) -> Vec<(u64, String, f64)> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|tokens| tokens.len() == 6 && tokens[1] == node && tokens[2] == "yes")
        .map(|t| (t[3].parse().unwrap(), t[4].to_owned(), t[5].parse().unwrap()))
        .collect()
}

/// Processes whose command line mentions `folder`: postmasters (`-D folder/...`), sidecars
/// (`--config folder/...`), their watchers and localpg guardians.
fn processes_in(folder: &Path) -> Vec<String> {
    let needle = folder.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| fs::read(entry.ok()?.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}

#[test]
fn the_demo_replicates_shows_lag_and_leaves_nothing_behind() {
    let run = run_demo(&["--duration", "12"], &[]);
    let output = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.status.success(), "walship demo exited with {}; {output}", run.status);
    for node in ["b", "c"] {
        let lines = connected_lines(&run.stdout, node);
        assert!(lines.len() >= 5, "follower {node} was connected in only {} lines; {output}", lines.len());
        let (first, last) = (lines[0].0, lines[lines.len() - 1].0);
        assert!(last > first + 100, "follower {node}'s applied index went from {first} to {last}; {output}");
        for (_, lag_bytes, lag_seconds) in &lines {
            assert!(lag_bytes.ends_with('B'), "lag in bytes {lag_bytes:?}; {output}");
            assert!((0.0..60.0).contains(lag_seconds), "lag in seconds {lag_seconds}; {output}");
        }
    }
    assert!(run.stdout.contains("rows      customers a="), "no row counts; {output}");
    assert!(!run.stderr.contains(" ERROR "), "a sidecar logged errors; {output}");

    let folder = demo_folder(&run.stdout);
    assert!(run.stdout.contains(&format!("removed {}", folder.display())), "{output}");
    assert!(!folder.exists(), "{} is still there; {output}", folder.display());
    let left = processes_in(&folder);
    assert!(left.is_empty(), "still running after the demo:\n{}", left.join("\n"));
}

#[test]
fn without_postgres_binaries_the_demo_says_how_to_get_them() {
    let run = run_demo(&[], &[("WALSHIP_PG_BINDIR", "/nonexistent")]);
    assert_eq!(run.status.code(), Some(2), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("WALSHIP_PG_BINDIR") && run.stderr.contains("holds no initdb"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "it should stop before making a folder: {}", run.stdout);
}
