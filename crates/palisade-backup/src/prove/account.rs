//! The OS account a private database server runs as, and the registry that stops every private
//! server when a signal ends the run.

use std::{
    ffi::OsStr,
    path::Path,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{Error, Result, prove::ProveError};

/// Who a private server's processes run as: the named service account when Palisade runs as
/// root (PostgreSQL refuses to run as root), the current user otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// `None` for the current user (no switch needed).
    name: Option<String>,
    uid: u32,
    gid: u32,
}

impl Account {
    /// `name` when this process is root, else the current user.
    pub(crate) fn for_server(name: &str) -> Result<Self> {
        if !is_root() {
            return Ok(Self {
                name: None,
                uid: 0,
                gid: 0,
            });
        }
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id")
                .args([flag, name])
                .output()
                .map_err(|err| Error::io("id", err))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .ok()
                .filter(|_| out.status.success())
                .ok_or_else(|| {
                    ProveError::NoAccount {
                        account: name.into(),
                    }
                    .into()
                })
        };
        Ok(Self {
            name: Some(name.to_string()),
            uid: id("-u")?,
            gid: id("-g")?,
        })
    }

    /// Whether commands run as another account than this process.
    pub(crate) fn switches(&self) -> bool {
        self.name.is_some()
    }

    /// The account's name, for messages.
    pub(crate) fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| "the current user".into())
    }

    /// A command that runs `program` as this account (through `setpriv`, which replaces itself
    /// with the program, so the child's pid is the program's), with English messages.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match &self.name {
            Some(_) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={}", self.uid))
                    .arg(format!("--regid={}", self.gid))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.env("LC_ALL", "C").env("LC_MESSAGES", "C");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Gives `path` and everything below it to this account (nothing to do without a switch).
    pub(crate) fn give(&self, path: &Path) -> Result<()> {
        if self.name.is_none() {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|err| Error::io(path, err))?;
        let meta = path
            .symlink_metadata()
            .map_err(|err| Error::io(path, err))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|err| Error::io(path, err))? {
                let entry = entry.map_err(|err| Error::io(path, err))?;
                self.give(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Fails with the fix when this account cannot enter `dir` (a parent folder of mode 0700,
    /// say), which would make the server fail with a less telling message.
    pub(crate) fn ensure_reaches(&self, dir: &Path) -> Result<()> {
        if self.name.is_none() {
            return Ok(());
        }
        let reached = self
            .command("test")
            .arg("-x")
            .arg(dir)
            .status()
            .is_ok_and(|status| status.success());
        if reached {
            return Ok(());
        }
        Err(ProveError::Unreachable {
            account: self.name(),
            dir: dir.into(),
        }
        .into())
    }
}

/// Whether this process runs as root (its real uid, from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next())
                .map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

/// How to stop one running private server from the signal handler.
type Stopper = Box<dyn Fn() + Send>;

static RUNNING: Mutex<Vec<(u64, Stopper)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Records how to stop a server that was just started; the token removes it again.
pub(crate) fn register(stop: Stopper) -> u64 {
    let token = NEXT.fetch_add(1, Ordering::SeqCst);
    running().push((token, stop));
    token
}

/// Forgets a server that was stopped normally.
pub(crate) fn unregister(token: u64) {
    running().retain(|(t, _)| *t != token);
}

/// Stops every private server this process started and has not stopped yet. The binary calls
/// it from its signal handler before it removes the scratch directory.
pub fn stop_servers() {
    let stoppers: Vec<(u64, Stopper)> = std::mem::take(&mut *running());
    for (_, stop) in stoppers {
        stop();
    }
}

fn running() -> std::sync::MutexGuard<'static, Vec<(u64, Stopper)>> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
