//! The OS account a private database server runs as: `postgres` (or another) when the tests run
//! as root, the current user otherwise.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Who a server's processes run as, and how to run a command as that account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// The account name; `None` means the current user (no `runuser` needed).
    name: Option<String>,
    uid: u32,
    gid: u32,
}

impl OsUser {
    /// The current user.
    pub fn current() -> Self {
        let (uid, gid) = current_ids();
        Self {
            name: None,
            uid,
            gid,
        }
    }

    /// `name` when this process is root (servers refuse to run as root), else the current user.
    pub fn unprivileged(name: &str) -> Self {
        if !is_root() {
            return Self::current();
        }
        let ids = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, name])
                .output()
                .unwrap_or_else(|e| panic!("cannot run `id {flag} {name}`: {e}"));
            assert!(
                out.status.success(),
                "there is no OS user `{name}` to run the server as (install the server's Debian \
                 package, which creates it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("`id` prints a number")
        };
        Self {
            name: Some(name.to_string()),
            uid: ids("-u"),
            gid: ids("-g"),
        }
    }

    /// The account name (the current user's from `$USER` when no switch is needed).
    pub fn name(&self) -> String {
        self.name
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| self.uid.to_string())
    }

    /// Numeric user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// A command that runs `program` as this user: through `runuser -u NAME --` when this
    /// process must switch, directly otherwise. The environment is kept.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match &self.name {
            Some(name) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", name, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Gives `path` and everything below it to this user (a no-op without a switch).
    pub fn chown_tree(&self, path: &Path) {
        if self.name.is_none() {
            return;
        }
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("cannot give {} to {}: {e}", path.display(), self.name()));
        let Ok(meta) = path.symlink_metadata() else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).expect("read a directory being chowned") {
                self.chown_tree(&entry.expect("directory entry").path());
            }
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    current_ids().0 == 0
}

/// Real uid and gid, from `/proc/self/status`.
fn current_ids() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |key: &str| -> u32 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no {key} line in /proc/self/status"))
    };
    (field("Uid:"), field("Gid:"))
}
