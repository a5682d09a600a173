//! The cached `initdb` template, and copying it into an instance.
//!
//! `initdb` takes 1-2 s. Copying its result (~970 files, 39 MB) takes 50 ms on tmpfs but
//! 0.6-1 s on this machine's journal-less ext4, where creating an inode costs ~1 ms after
//! many recent deletions; hence [`TMPDIR_ENV`]. The template lives at
//! `<temp root>/walship-pg-template-<version>-<uid>-r<revision>/` (a data folder owned by the
//! server user) and is built once per machine and temp root:
//!
//! - A complete template is used without locking: it only ever appears by `rename`, after
//!   `initdb` finished, so a half-made one is never seen under that name.
//! - Otherwise the builder takes an exclusive lock on `<name>.lock` (other processes, and
//!   other threads of this one, wait), checks again, runs `initdb` into a temporary folder
//!   beside it and renames it into place. A leftover staging folder of a killed builder is a
//!   `.walship-pg-template-*` folder in `$TMPDIR`, harmless.
//!
//! Bump [`TEMPLATE_REVISION`] whenever the `initdb` arguments or the template's edits change.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

use super::bindir::server_version;
use super::config;
use super::error::{io_err, run_checked, LocalPgError};
use super::os_user::ServerUser;

const TEMPLATE_REVISION: u32 = 1;

/// Environment variable naming the folder for the template and for [`Instance::start`]'s
/// folders, e.g. `/dev/shm` (tmpfs: about 10 times faster starts). Default: `std::env::temp_dir()`.
///
/// [`Instance::start`]: super::Instance::start
pub const TMPDIR_ENV: &str = "WALSHIP_PG_TMPDIR";

pub(crate) fn temp_root() -> PathBuf {
    temp_root_from(std::env::var_os(TMPDIR_ENV).as_deref())
}

pub(crate) fn temp_root_from(env: Option<&OsStr>) -> PathBuf {
    match env.filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir(),
    }
}

/// The path of a complete template for `bindir`'s PostgreSQL, built if needed.
pub(crate) fn ensure(bindir: &Path, user: &ServerUser) -> Result<PathBuf, LocalPgError> {
    let version = server_version(bindir)?;
    let name = format!("walship-pg-template-{version}-{}-r{TEMPLATE_REVISION}", user.euid());
    let root = temp_root();
    let path = root.join(&name);
    if is_complete(&path, user) {
        return Ok(path);
    }
    let lock_path = root.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).map_err(io_err("create lock file", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;
    if is_complete(&path, user) {
        return Ok(path);
    }
    remove_incomplete(&path, user)?;
    build(bindir, &root, &name, user)?;
    Ok(path)
    // `lock` is released when dropped here.
}

fn is_complete(path: &Path, user: &ServerUser) -> bool {
    user.owns_dir(path)
        && path.join("PG_VERSION").is_file()
        && path.join("global/pg_control").is_file()
        && path.join(config::INSTANCE_CONF).is_file()
}

/// Removes what is at `path` when it is ours but incomplete (e.g. partly cleaned from /tmp).
fn remove_incomplete(path: &Path, user: &ServerUser) -> Result<(), LocalPgError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if !user.owns_dir(path) {
        return Err(LocalPgError::TemplateNotOurs { path: path.to_path_buf(), expected_uid: user.owner_uid() });
    }
    fs::remove_dir_all(path).map_err(io_err("remove incomplete template", path))
}

fn build(bindir: &Path, root: &Path, name: &str, user: &ServerUser) -> Result<(), LocalPgError> {
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(root)
        .map_err(io_err("create a staging folder in", root))?;
    user.own(staging.path())?;
    let started = std::time::Instant::now();
    run_initdb(bindir, staging.path(), user)?;
    config::prepare_template(staging.path(), user)?;
    let final_path = root.join(name);
    fs::rename(staging.path(), &final_path).map_err(io_err("rename template to", &final_path))?;
    // Renamed away: keep() only stops TempDir from trying to remove the old path.
    let _ = staging.keep();
    info!(path = %final_path.display(), elapsed_ms = started.elapsed().as_millis() as u64,
        "built initdb template");
    Ok(())
}

fn run_initdb(bindir: &Path, data_dir: &Path, user: &ServerUser) -> Result<(), LocalPgError> {
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .current_dir(data_dir);
    user.apply(&mut cmd);
    run_checked(&mut cmd, user.describe()).map(drop)
}

/// Copies the template folder `from` to the new folder `to`, keeping permission bits and
/// symlinks, and giving everything to the server user.
pub(crate) fn copy_tree(from: &Path, to: &Path, user: &ServerUser) -> Result<(), LocalPgError> {
    let meta = fs::metadata(from).map_err(io_err("read", from))?;
    fs::create_dir(to).map_err(io_err("create", to))?;
    fs::set_permissions(to, meta.permissions()).map_err(io_err("set permissions of", to))?;
    user.own(to)?;
    for entry in fs::read_dir(from).map_err(io_err("list", from))? {
        let entry = entry.map_err(io_err("list", from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io_err("read", &source))?;
        if kind.is_dir() {
            copy_tree(&source, &target, user)?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(io_err("read link", &source))?;
            std::os::unix::fs::symlink(link, &target).map_err(io_err("create link", &target))?;
            user.own(&target)?;
        } else {
            // fs::copy keeps the permission bits (and uses copy_file_range on Linux).
            fs::copy(&source, &target).map_err(io_err("copy to", &target))?;
            user.own(&target)?;
        }
    }
    Ok(())
}
