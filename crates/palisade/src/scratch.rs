//! The per-run scratch directory for SQLite copies and restore tests, removed when the run
//! ends — also when it is interrupted by SIGINT, SIGTERM or SIGHUP, after the private database
//! servers of a restore test are stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

/// A private (0700) directory under the configured temporary directory.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Creates the directory and arranges for it to be removed if a signal ends the process.
    pub fn new(root: &Path) -> Result<Self> {
        // The handlers first: a signal between creating the directory and installing them
        // would end the process the default way and leave the directory behind.
        let signals =
            Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
        let dir = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .prefix("palisade-run-")
            .tempdir_in(root)
            .with_context(|| format!("cannot create a scratch directory in {}", root.display()))?;
        remove_on_signal(signals, dir.path().to_path_buf());
        Ok(Self { dir })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// On the first SIGINT, SIGTERM or SIGHUP: stop the private servers a restore test started,
/// remove `dir` and exit as the shell would report the signal (128 + its number). No snapshot is
/// visible at that point unless the backup had already finished, because the snapshot file is
/// the last thing a backup writes.
fn remove_on_signal(mut signals: Signals, dir: PathBuf) {
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            palisade_backup::prove::stop_servers();
            // The run's own thread may be removing parts of the directory at the same moment
            // (its step failed when its server stopped), which can make one pass give up:
            // try again until the directory is gone, for up to two seconds.
            for _ in 0..100 {
                let _ = std::fs::remove_dir_all(&dir);
                if !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            eprintln!(
                "palisade: interrupted; removed the scratch directory, no snapshot was saved"
            );
            std::process::exit(128 + signal);
        }
    });
}
