//! Where the state store lives, `palisade runs`, and the run records `palisade backup` keeps.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use palisade_backup::BackupReport;
use palisade_events::{RunKind, RunOutcome, RunResult, Store, Trigger};

use crate::{Outcome, commands::Session, config::Config};

/// The state directory: `state_dir` in the config, then `PALISADE_STATE_DIR`, then systemd's
/// `STATE_DIRECTORY`, then `$XDG_STATE_HOME/palisade`, then `~/.local/state/palisade`.
pub fn state_dir(config: &Config) -> Option<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    config
        .state_dir
        .clone()
        .or_else(|| env("PALISADE_STATE_DIR"))
        .or_else(|| {
            // systemd may list several directories, separated by colons: the first is ours.
            env("STATE_DIRECTORY").map(|dirs| {
                PathBuf::from(dirs.to_string_lossy().split(':').next().unwrap_or_default())
            })
        })
        .or_else(|| env("XDG_STATE_HOME").map(|dir| dir.join("palisade")))
        .or_else(|| env("HOME").map(|home| home.join(".local/state/palisade")))
}

/// Opens the store of `config`'s state directory.
pub fn open(config: &Config) -> Result<Store> {
    let dir = state_dir(config).context(
        "no state directory: set `state_dir` in palisade.toml or PALISADE_STATE_DIR (HOME is not \
         set either)",
    )?;
    Ok(Store::open_dir(&dir)?)
}

/// Records the runs of `palisade backup`, `prune`, `verify` and `restore-test` started by
/// hand; a store that cannot be used is a warning, never a failed command.
pub struct Recorder {
    store: Option<Store>,
}

impl Recorder {
    /// A recorder for this session's backups (none for the daemon's own children: the daemon
    /// records those).
    pub fn new(session: &Session) -> Self {
        if session.global.daemon_child {
            return Self { store: None };
        }
        let store = match open(&session.config) {
            Ok(store) => Some(store),
            Err(err) => {
                log::warn!("runs are not recorded: {}", crate::render(&err));
                None
            }
        };
        Self { store }
    }

    /// Records that a backup of `job` started; gives the run's id.
    pub fn start(&self, job: &str) -> Option<i64> {
        self.start_task(RunKind::Backup, job)
    }

    /// Records that a run of `kind` about `job` (empty: every job) started.
    pub fn start_task(&self, kind: RunKind, job: &str) -> Option<i64> {
        let store = self.store.as_ref()?;
        store
            .start(kind, job, Trigger::Command, chrono::Utc::now())
            .map_err(|err| log::warn!("cannot record the run: {err}"))
            .ok()
    }

    /// Records how a task ended: its report (as JSON, with what it found), or the error that
    /// stopped it before it had one. `failure` tells whether a report is a failure, and why.
    pub fn finish_task<T: serde::Serialize>(
        &self,
        id: Option<i64>,
        outcome: &Result<T>,
        failure: impl Fn(&T) -> Option<String>,
        bytes: impl Fn(&T) -> Option<u64>,
    ) {
        let (Some(store), Some(id)) = (&self.store, id) else {
            return;
        };
        let (state, result) = match outcome {
            Ok(report) => {
                let error = failure(report);
                (
                    if error.is_some() {
                        RunOutcome::Failed
                    } else {
                        RunOutcome::Success
                    },
                    RunResult {
                        bytes_read: bytes(report),
                        error,
                        report: serde_json::to_value(report).ok(),
                        ..RunResult::default()
                    },
                )
            }
            Err(err) => failed(err),
        };
        if let Err(err) = store.finish_run(id, chrono::Utc::now(), state, &result) {
            log::warn!("cannot record the run: {err}");
        }
    }

    /// Records how the run ended.
    pub fn finish(&self, id: Option<i64>, outcome: &Result<BackupReport>) {
        let (Some(store), Some(id)) = (&self.store, id) else {
            return;
        };
        let (state, result) = match outcome {
            Ok(report) => (
                if report.is_partial() {
                    RunOutcome::Partial
                } else {
                    RunOutcome::Success
                },
                RunResult {
                    bytes_read: Some(report.bytes_read),
                    bytes_added: Some(report.bytes_added),
                    snapshot: Some(report.snapshot.clone()),
                    ..RunResult::default()
                },
            ),
            Err(err) => failed(err),
        };
        if let Err(err) = store.finish_run(id, chrono::Utc::now(), state, &result) {
            log::warn!("cannot record the run: {err}");
        }
    }
}

/// A lock file in the state directory's `locks/`, held through an advisory `flock` that the
/// kernel releases when its holder exits, however it exits. Two kinds:
///
/// - a job's run lock (`job-ID.lock`), exclusive, held while one process backs the job up, so
///   that a backup by hand and the daemon's (or two by hand) never run one job at once;
/// - a repository's lock (`repo-ID.lock`), shared by every backup writing to it and exclusive
///   for a prune, so that a prune never marks the packs of a backup still running, nor packs
///   a running backup reuses (rustic_core's index reads no packs marked for deletion).
///
/// `ID` is the first 16 hex digits of the SHA-256 of the job's name or the repository's
/// location, so any name fits in a file name. Without a usable state directory there is
/// nothing to lock in: the command goes on unlocked, with a warning.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// A lock is held by another process.
#[derive(Debug)]
pub struct Busy;

impl RunLock {
    /// Takes `job`'s run lock without waiting.
    pub fn job(config: &Config, job: &str) -> std::result::Result<Option<Self>, Busy> {
        let Some(file) = lock_file(config, "job", job) else {
            return Ok(None);
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(Busy),
            Err(std::fs::TryLockError::Error(err)) => {
                log::warn!("job {job}: cannot take its run lock: {err}; running unlocked");
                Ok(None)
            }
        }
    }

    /// Takes the lock of the repository at `location`: shared for a backup, exclusive for a
    /// prune. Waits, saying so once, while a holder of the other kind runs.
    pub fn repository(
        config: &Config,
        location: &palisade_backup::Location,
        exclusive: bool,
    ) -> Option<Self> {
        // One key per repository however it was named: a local path as the file system has it.
        let key = match location {
            palisade_backup::Location::Local(path) => std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string(),
            other => other.to_string(),
        };
        let file = lock_file(config, "repo", &key)?;
        let tried = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        let result = match tried {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if exclusive {
                    eprintln!(
                        "palisade: waiting for the backups running to {location} to finish \
                         before pruning it"
                    );
                    file.lock()
                } else {
                    eprintln!("palisade: waiting for the prune of {location} to finish");
                    file.lock_shared()
                }
            }
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        };
        match result {
            Ok(()) => Some(Self { _file: file }),
            Err(err) => {
                log::warn!("cannot lock the repository {location}: {err}; running unlocked");
                None
            }
        }
    }
}

/// Opens (creating it) `locks/KIND-ID.lock` in the state directory.
fn lock_file(config: &Config, kind: &str, name: &str) -> Option<std::fs::File> {
    use sha2::Digest;
    let dir = state_dir(config)?.join("locks");
    let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let path = dir.join(format!("{kind}-{}.lock", &id[..16]));
    let file = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    });
    match file {
        Ok(file) => Some(file),
        Err(err) => {
            log::warn!(
                "cannot open the lock file {}: {err}; running unlocked",
                path.display()
            );
            None
        }
    }
}

/// Options of `palisade runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// Only this job's runs.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// At most this many runs, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// `palisade runs`: the recorded runs, newest first.
pub fn show(session: &Session, args: &RunsArgs) -> Result<Outcome> {
    let store = open(&session.config)?;
    let runs = store.runs(args.job.as_deref(), args.limit)?;
    session.list(&runs, |runs| {
        let mut out = format!(
            "{:>5}  {:<12}  {:<12}  {:<9}  {:<19}  {:>8}  {:<9}  {:>10}  {:<8}  error\n",
            "id", "kind", "job", "trigger", "started (UTC)", "took", "outcome", "added", "snapshot"
        );
        for run in runs {
            let took = run
                .finished_at
                .map(|end| {
                    format!(
                        "{:.1}s",
                        (end - run.started_at).num_milliseconds() as f64 / 1e3
                    )
                })
                .unwrap_or_default();
            let trigger = serde_json::to_value(run.trigger).unwrap_or_default();
            out.push_str(&format!(
                "{:>5}  {:<12}  {:<12}  {:<9}  {:<19}  {:>8}  {:<9}  {:>10}  {:<8}  {}\n",
                run.id,
                run.kind.as_str(),
                if run.job.is_empty() {
                    "(all)"
                } else {
                    &run.job
                },
                trigger.as_str().unwrap_or(""),
                run.started_at.format("%Y-%m-%d %H:%M:%S"),
                took,
                run.outcome.as_str(),
                run.bytes_added
                    .map(|b| ByteSize(b).display().iec().to_string())
                    .unwrap_or_default(),
                run.snapshot
                    .as_deref()
                    .map(|s| &s[..s.len().min(8)])
                    .unwrap_or(""),
                run.error.as_deref().unwrap_or("")
            ));
        }
        out.push_str(&format!("{} run(s)", runs.len()));
        out
    })
}

/// The record of a run that ended with `err`.
fn failed(err: &anyhow::Error) -> (RunOutcome, RunResult) {
    (
        RunOutcome::Failed,
        RunResult {
            error: Some(crate::render(err)),
            ..RunResult::default()
        },
    )
}
