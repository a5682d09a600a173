//! The guardian: cleans up an instance when this process dies without dropping it.
//!
//! `pg_ctl`-style, the postmaster runs in its own process group so a Ctrl-C meant for us does
//! not reach it; it therefore outlives a test process killed by nextest or by a signal. Each
//! instance has a small `sh` guardian (in its own process group too, ignoring the usual
//! termination signals) that blocks reading a pipe whose only write end we hold. The kernel
//! closes it however we exit; the guardian then stops the server (`pg_ctl stop -m immediate`)
//! and removes the instance folder if we owned it. [`Guardian::dismiss`] SIGKILLs it first,
//! for the normal path where `Drop` cleans up itself.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tracing::warn;

use super::error::{spawn_error, LocalPgError};
use super::os_user::ServerUser;

/// `$0` name, `$1` pg_ctl, `$2` data folder, `$3` folder to remove or empty.
const SCRIPT: &str = r#"trap '' HUP INT QUIT TERM
while read -r _; do :; done
"$1" stop -D "$2" -m immediate -s >/dev/null 2>&1
[ -z "$3" ] || rm -rf -- "$3"
"#;

#[derive(Debug)]
pub(crate) struct Guardian {
    /// Holds the pipe's write end in `child.stdin`.
    child: Child,
}

impl Guardian {
    /// Runs as the server user in `dir`, which also checks that user can reach `dir`.
    pub(crate) fn spawn(
        bindir: &Path,
        dir: &Path,
        data_dir: &Path,
        remove_dir: Option<&Path>,
        user: &ServerUser,
    ) -> Result<Guardian, LocalPgError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("walship-localpg-guardian")
            .arg(bindir.join("pg_ctl"))
            .arg(data_dir)
            .arg(remove_dir.unwrap_or(Path::new("")))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        user.apply(&mut cmd);
        let child = cmd.spawn().map_err(|source| spawn_error(&cmd, user.describe(), source))?;
        Ok(Guardian { child })
    }

    /// Ends the guardian without letting it act.
    pub(crate) fn dismiss(mut self) {
        // SIGKILL before the write end closes (in `wait`), so the script never runs on.
        if let Err(err) = self.child.kill() {
            warn!(error = %err, "could not kill the localpg guardian");
        }
        if let Err(err) = self.child.wait() {
            warn!(error = %err, "could not wait for the localpg guardian");
        }
    }
}
