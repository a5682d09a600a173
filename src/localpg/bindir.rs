//! Finding the PostgreSQL server binaries, and their version.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{run_checked, LocalPgError};

/// Environment variable naming the folder that holds `initdb`, `pg_ctl`, `postgres`, `psql`.
pub const BINDIR_ENV: &str = "WALSHIP_PG_BINDIR";

/// Where Debian and Ubuntu install each major version: `<root>/<major>/bin`.
const DEBIAN_VERSIONS_ROOT: &str = "/usr/lib/postgresql";

/// `$WALSHIP_PG_BINDIR`, then `pg_config --bindir`, then the highest
/// `/usr/lib/postgresql/*/bin`; the first that holds `initdb`.
pub fn find_bindir() -> Result<PathBuf, LocalPgError> {
    find_bindir_from(std::env::var_os(BINDIR_ENV).as_deref())
}

/// [`find_bindir`] with the value of `$WALSHIP_PG_BINDIR` given, so tests need not touch the
/// environment. A set but wrong value is an error rather than silently skipped.
pub fn find_bindir_from(env: Option<&OsStr>) -> Result<PathBuf, LocalPgError> {
    search(env, Path::new("pg_config"), Path::new(DEBIAN_VERSIONS_ROOT))
}

pub(crate) fn search(env: Option<&OsStr>, pg_config: &Path, versions_root: &Path) -> Result<PathBuf, LocalPgError> {
    if let Some(dir) = env.filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return match has_initdb(&dir) {
            true => Ok(dir),
            false => Err(LocalPgError::BadBindirEnv { path: dir }),
        };
    }
    if let Some(dir) = pg_config_bindir(pg_config).filter(|dir| has_initdb(dir)) {
        return Ok(dir);
    }
    if let Some(dir) = highest_version_bindir(versions_root) {
        return Ok(dir);
    }
    Err(LocalPgError::BinariesNotFound {
        looked_in: format!("${BINDIR_ENV}, `{} --bindir`, {}/*/bin", pg_config.display(), versions_root.display()),
    })
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

fn pg_config_bindir(pg_config: &Path) -> Option<PathBuf> {
    let output = Command::new(pg_config).arg("--bindir").output().ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (output.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The `<root>/<version>/bin` with the highest version (`9.6` < `15` < `17`) holding initdb.
fn highest_version_bindir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The full server version, e.g. `15.18`, from `postgres --version` (which, unlike the
/// server, runs as root too).
pub(crate) fn server_version(bindir: &Path) -> Result<String, LocalPgError> {
    let mut cmd = Command::new(bindir.join("postgres"));
    let output = run_checked(cmd.arg("--version"), "")?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&output.stdout);
    let version =
        text.split_whitespace().nth(2).filter(|v| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    version.map(str::to_owned).ok_or_else(|| LocalPgError::CommandFailed {
        program: "postgres --version".to_owned(),
        status: output.status,
        output: format!("unexpected output {:?}", text.trim()),
    })
}
