//! The daemon's child processes: each backup (and each repository probe) runs as its own
//! `palisade` process in its own process group, so that a timeout or a shutdown can stop it
//! without touching the daemon, and a crash in one run cannot take the daemon down.

use std::{
    io::{Read, Write},
    process::{Command, ExitStatus, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

/// How long a child gets between SIGTERM and SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);

/// Why the daemon stopped a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job's timeout passed.
    Timeout,
    /// The daemon is shutting down.
    Shutdown,
}

/// A running child.
#[derive(Debug)]
pub struct Running<T> {
    /// What the daemon does with the result.
    pub task: T,
    /// When the job's timeout stops it (daemon clock).
    pub deadline: Option<DateTime<Utc>>,
    /// When it is stopped whatever the daemon clock says (real time: for repository probes).
    pub limit: Option<Instant>,
    child: std::process::Child,
    stopping: Option<(Instant, StopReason)>,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// A child that exited.
#[derive(Debug)]
pub struct Finished<T> {
    /// What the daemon does with the result.
    pub task: T,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Whether the daemon stopped it, and why.
    pub stopped: Option<StopReason>,
}

impl<T> Running<T> {
    /// Starts `command` in a process group of its own and writes `input` (the config text) to
    /// its standard input.
    pub fn spawn(
        mut command: Command,
        input: &str,
        task: T,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("cannot start a palisade child process")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let stdout = read_all(child.stdout.take().expect("stdout is piped"));
        let stderr = read_all(child.stderr.take().expect("stderr is piped"));
        Ok(Self {
            task,
            deadline,
            limit: None,
            child,
            stopping: None,
            stdout,
            stderr,
        })
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
    }

    /// The exited child's result; call after [`Running::exited`] said so.
    pub fn finish(mut self) -> Finished<T> {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(1 << 8));
        Finished {
            task: self.task,
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
            stopped: self.stopping.map(|(_, reason)| reason),
        }
    }

    /// Asks the child's process group to stop (SIGTERM): a backup then exits without writing
    /// its snapshot and removes its scratch directory.
    pub fn stop(&mut self, reason: StopReason) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some((Instant::now(), reason));
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    }

    /// Whether it was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Kills a child that ignored SIGTERM for [`KILL_AFTER`].
    pub fn escalate(&mut self) {
        if let Some((since, _)) = self.stopping
            && since.elapsed() > KILL_AFTER
        {
            let _ = self.child.kill();
        }
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
