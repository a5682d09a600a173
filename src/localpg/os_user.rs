//! Which OS user runs the server-side programs (`initdb`, `postgres`, `pg_ctl`, ...).
//!
//! They refuse to run as root. As root we switch to the `postgres` user with
//! `CommandExt::uid`/`gid` (std also drops the supplementary groups) rather than
//! `runuser -u postgres --`: runuser stays as the parent of the program for its PAM session,
//! so the `Child` we hold would not be the postmaster, and its exit would not be the
//! postmaster's. Files the server touches are chowned to that user.

use std::os::unix::fs::{lchown, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::error::{io_err, LocalPgError};

const SERVER_USER: &str = "postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerUser {
    /// Our effective uid.
    euid: u32,
    /// `Some((uid, gid))` of the `postgres` user when we are root.
    switch_to: Option<(u32, u32)>,
}

impl ServerUser {
    pub(crate) fn detect() -> Result<Self, LocalPgError> {
        let euid = effective_uid()?;
        if euid != 0 {
            return Ok(ServerUser { euid, switch_to: None });
        }
        let ids = lookup_user(SERVER_USER).ok_or(LocalPgError::NoPostgresUser)?;
        Ok(ServerUser { euid, switch_to: Some(ids) })
    }

    pub(crate) fn euid(&self) -> u32 {
        self.euid
    }

    /// The uid that owns the server's files.
    pub(crate) fn owner_uid(&self) -> u32 {
        self.switch_to.map_or(self.euid, |(uid, _)| uid)
    }

    /// For messages: " as user postgres", or nothing.
    pub(crate) fn describe(&self) -> &'static str {
        match self.switch_to {
            Some(_) => " as user postgres",
            None => "",
        }
    }

    /// Makes `cmd` run as the server user.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.switch_to {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Gives `path` (not following a symlink) to the server user; nothing when not root.
    pub(crate) fn own(&self, path: &Path) -> Result<(), LocalPgError> {
        match self.switch_to {
            Some((uid, gid)) => lchown(path, Some(uid), Some(gid)).map_err(io_err("chown", path)),
            None => Ok(()),
        }
    }

    /// Whether `path` exists, is a real folder (not a symlink) and belongs to the server user.
    pub(crate) fn owns_dir(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() && meta.uid() == self.owner_uid())
    }
}

/// From `/proc/self/status` (`Uid: real effective saved fs`), else from `id -u`.
fn effective_uid() -> Result<u32, LocalPgError> {
    let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    });
    if let Some(uid) = from_proc {
        return Ok(uid);
    }
    id_number(&["-u"]).ok_or_else(|| LocalPgError::Spawn {
        program: "id -u".to_owned(),
        source: std::io::Error::other("no /proc/self/status and no usable `id`"),
        hint: String::new(),
    })
}

/// `(uid, gid)` from `/etc/passwd`, else from `id` (which also asks NSS, e.g. LDAP).
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let from_passwd = std::fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then_some(())?;
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
    });
    from_passwd.or_else(|| Some((id_number(&["-u", name])?, id_number(&["-g", name])?)))
}

fn id_number(args: &[&str]) -> Option<u32> {
    let output = Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}
