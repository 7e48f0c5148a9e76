//! `palisade daemon`: runs each job on its schedule (one run of a job at a time), records
//! every run in the state store, raises and resolves alerts, and serves metrics. SIGHUP
//! reloads the config once it has been checked; SIGTERM and SIGINT stop it cleanly. See
//! docs/daemon.md.

mod runner;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use palisade_events::{
    Alerts, Clock, Dispatcher, FileClock, Notice, Problem, Rule, RunKind, RunOutcome, RunPhase,
    RunResult, Store, SystemClock, Trigger, metrics::MetricsServer,
};
use serde::Deserialize;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use self::runner::{Finished, Running, StopReason};
use crate::{
    Outcome,
    cli::Global,
    config::{Config, Job},
    schedule::Schedule,
    tasks::TaskConfig,
};

/// The metrics endpoint's default address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
/// How long SIGTERM waits for running backups by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);
/// How long a repository probe may take (real time).
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// `[daemon]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Run a job once at start-up when its slot passed while the daemon was down (default
    /// true).
    pub catch_up: Option<bool>,
    /// How long SIGTERM waits for running backups before abandoning them (default 5m).
    pub shutdown_grace: Option<String>,
    /// Address of the Prometheus endpoint (default 127.0.0.1:9464); `"off"` for none.
    pub metrics: Option<String>,
}

/// Options of `palisade daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {}

/// The clock: the system's, or (for tests) the time written in the file that
/// `PALISADE_TEST_CLOCK_FILE` names.
pub fn clock() -> Arc<dyn Clock> {
    match std::env::var_os("PALISADE_TEST_CLOCK_FILE") {
        Some(path) => Arc::new(FileClock::new(path.into())),
        None => Arc::new(SystemClock),
    }
}

/// Retention after every successful scheduled backup of `job`: `palisade forget --job NAME`
/// run as a child process (as the backup itself runs) when the job has a `retention` table,
/// nothing otherwise. Its failure (a non-zero exit) raises the `retention-failed` alert for
/// the job and its success resolves it; the daemon never runs it while the job's next backup
/// could start in parallel, because the job counts as running until it ends. Pruning is not
/// part of it: `forget` only drops snapshot files, and the data they alone used stays until a
/// `palisade prune`.
pub(crate) fn after_backup(job: &Job) -> Option<Vec<String>> {
    job.policy
        .as_ref()
        .map(|_| vec!["forget".into(), "--job".into(), job.name.clone()])
}

/// What the daemon schedules: a job's backups, or a `[[tasks]]` entry (by its kind and job).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Unit {
    Job(String),
    Task(RunKind, String),
}

impl Unit {
    fn of_task(task: &TaskConfig) -> Self {
        Self::Task(task.run.kind(), task.job_column().to_string())
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Job(name) => write!(f, "job {name}"),
            Self::Task(kind, job) if job.is_empty() => write!(f, "task {}", kind.as_str()),
            Self::Task(kind, job) => write!(f, "task {} of {job}", kind.as_str()),
        }
    }
}

/// What a child process is for.
#[derive(Debug)]
enum Task {
    /// A job's backup, recorded as run `run`.
    Backup {
        job: Box<Job>,
        run: i64,
        location: String,
    },
    /// `palisade snapshots` against a repository after a failed backup: can it be opened?
    Probe { location: String },
    /// The retention step after a backup ([`after_backup`]).
    Retention { job: String },
    /// A `[[tasks]]` entry, recorded as run `run`.
    Maintenance {
        task: Box<TaskConfig>,
        run: i64,
        location: String,
    },
}

impl Task {
    /// What it keeps busy: a job's backup and its retention keep the job busy, a task itself.
    fn unit(&self) -> Option<Unit> {
        match self {
            Self::Backup { job, .. } => Some(Unit::Job(job.name.clone())),
            Self::Retention { job } => Some(Unit::Job(job.clone())),
            Self::Maintenance { task, .. } => Some(Unit::of_task(task)),
            Self::Probe { .. } => None,
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(global: &Global) -> Result<Outcome> {
    let clock = clock();
    let (config, text) = crate::alerting::load_checked(&global.config)?;
    let state_dir = crate::state::state_dir(&config)
        .context("no state directory: set `state_dir` in palisade.toml or PALISADE_STATE_DIR")?;
    let store = Store::open_dir(&state_dir)?;
    let abandoned = store.abandon_unfinished(clock.now())?;
    if abandoned > 0 {
        log::warn!(
            "{abandoned} run(s) were going on when the daemon last stopped; marked abandoned"
        );
    }
    let metrics = match metrics_address(&config) {
        Some(address) => {
            let server =
                MetricsServer::start(&address, store.path().to_path_buf(), job_names(&config))?;
            log::info!("metrics on http://{}/metrics", server.address());
            Some(server)
        }
        None => None,
    };
    let dispatcher = Dispatcher::start(crate::alerting::channels(&config)?, clock.clone());

    let (signal_tx, signals) = mpsc::channel();
    let mut listener = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = listener.handle();
    std::thread::spawn(move || {
        for signal in listener.forever() {
            if signal_tx.send(signal).is_err() {
                break;
            }
        }
    });

    let mut daemon = Daemon {
        global,
        clock,
        store,
        config,
        text,
        schedules: BTreeMap::new(),
        next: BTreeMap::new(),
        running: Vec::new(),
        dispatcher,
        metrics,
        probing: HashSet::new(),
        last_check: None,
        stopping: false,
    };
    daemon.plan(true);
    log::info!(
        "palisade daemon: {} job(s) and {} task(s) scheduled, state in {}",
        daemon.schedules.len() - daemon.config.tasks.len(),
        daemon.config.tasks.len(),
        state_dir.display()
    );
    loop {
        daemon.tick();
        match signals.recv_timeout(Duration::from_millis(100)) {
            Ok(SIGHUP) => daemon.reload(),
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    daemon.shutdown(&signals);
    handle.close();
    Ok(Outcome::Done)
}

fn metrics_address(config: &Config) -> Option<String> {
    let setting = config.daemon.as_ref().and_then(|d| d.metrics.clone());
    match setting.as_deref() {
        Some("off") | Some("") => None,
        Some(address) => Some(address.to_string()),
        None => Some(DEFAULT_METRICS.to_string()),
    }
}

fn job_names(config: &Config) -> Vec<String> {
    config.jobs.iter().map(|job| job.name.clone()).collect()
}

struct Daemon<'a> {
    global: &'a Global,
    clock: Arc<dyn Clock>,
    store: Store,
    config: Config,
    text: String,
    schedules: BTreeMap<Unit, (crate::schedule::ScheduleConfig, Schedule)>,
    next: BTreeMap<Unit, DateTime<Utc>>,
    running: Vec<Running<Task>>,
    dispatcher: Dispatcher,
    metrics: Option<MetricsServer>,
    probing: HashSet<String>,
    last_check: Option<Instant>,
    stopping: bool,
}

impl Daemon<'_> {
    /// Parses every job's and task's schedule and plans its next run; at start-up, runs once
    /// each whose slot passed since its last recorded run (unless `catch_up = false`).
    fn plan(&mut self, at_start: bool) {
        let now = self.clock.now();
        let old = std::mem::take(&mut self.schedules);
        let catch_up = self
            .config
            .daemon
            .as_ref()
            .and_then(|d| d.catch_up)
            .unwrap_or(true);
        let mut units: Vec<(Unit, crate::schedule::ScheduleConfig)> = Vec::new();
        for job in &self.config.jobs {
            if let Some(setting) = &job.schedule {
                if let Err(err) = self.store.first_seen(&job.name, now) {
                    log::warn!("{err}");
                }
                units.push((Unit::Job(job.name.clone()), setting.clone()));
            }
        }
        for task in &self.config.tasks {
            units.push((Unit::of_task(task), task.schedule.clone()));
        }
        for (unit, setting) in units {
            let schedule = Schedule::parse(&setting).expect("schedules were validated");
            let unchanged = old.get(&unit).is_some_and(|(before, _)| before == &setting);
            if !unchanged && let Some(next) = schedule.next_after(now) {
                let at = next + jitter(schedule.jitter);
                self.plan_next(&unit, at);
            }
            let last = match &unit {
                Unit::Job(name) => self.store.last_run(name),
                Unit::Task(kind, job) => self.store.last_of(*kind, job),
            };
            let missed = last
                .ok()
                .flatten()
                .and_then(|last| schedule.next_after(last.started_at))
                .is_some_and(|slot| slot <= now);
            self.schedules.insert(unit.clone(), (setting, schedule));
            if at_start && catch_up && missed {
                log::info!("{unit}: missed its slot while the daemon was down; running it now");
                self.start_unit(&unit, Trigger::CatchUp, now);
            }
        }
        self.next
            .retain(|unit, _| self.schedules.contains_key(unit));
    }

    /// One turn of the loop: collect finished children, stop overdue ones, start due jobs,
    /// evaluate the rules.
    fn tick(&mut self) {
        let now = self.clock.now();
        self.reap(now);
        for child in &mut self.running {
            let overdue = child.deadline.is_some_and(|deadline| deadline <= now)
                || child.limit.is_some_and(|limit| limit <= Instant::now());
            if !child.stopping() && overdue {
                log::warn!("{}: timed out; stopping it", describe(&child.task));
                child.stop(StopReason::Timeout);
            }
            child.escalate();
        }
        if self.stopping {
            return;
        }
        let due: Vec<Unit> = self
            .next
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(unit, _)| unit.clone())
            .collect();
        for unit in due {
            self.start_due(&unit, now);
        }
        if self
            .last_check
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(500))
        {
            self.last_check = Some(Instant::now());
            self.check_rules(now);
        }
    }

    fn start_due(&mut self, unit: &Unit, now: DateTime<Utc>) {
        let Some((_, schedule)) = self.schedules.get(unit) else {
            return;
        };
        match schedule.next_after(now) {
            Some(next) => {
                let at = next + jitter(schedule.jitter);
                self.plan_next(unit, at);
            }
            None => {
                self.next.remove(unit);
            }
        }
        if self
            .running
            .iter()
            .any(|child| child.task.unit().as_ref() == Some(unit))
        {
            log::warn!("{unit}: still running at its next slot; this slot is skipped");
            return;
        }
        self.start_unit(unit, Trigger::Schedule, now);
    }

    /// Sets when `unit` runs next (its slot plus this slot's jitter).
    fn plan_next(&mut self, unit: &Unit, at: DateTime<Utc>) {
        log::info!(
            "{unit}: next run at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        self.next.insert(unit.clone(), at);
    }

    fn start_unit(&mut self, unit: &Unit, trigger: Trigger, now: DateTime<Utc>) {
        match unit {
            Unit::Job(name) => {
                if let Some(job) = self.config.jobs.iter().find(|j| &j.name == name).cloned() {
                    self.start_backup(&job, trigger, now);
                }
            }
            Unit::Task(..) => {
                if let Some(task) = self
                    .config
                    .tasks
                    .iter()
                    .find(|t| &Unit::of_task(t) == unit)
                    .cloned()
                {
                    self.start_task(&task, trigger, now);
                }
            }
        }
    }

    /// The repository location a job's backups go to, as the config (or `--repo`) names it.
    fn location(&self, job: &Job) -> String {
        self.global
            .repo
            .clone()
            .or_else(|| job.repository.clone())
            .unwrap_or_else(|| self.default_location())
    }

    /// The repository a task works on: its job's, or the default one.
    fn task_location(&self, task: &TaskConfig) -> String {
        match task.job.as_deref().map(|name| self.config.job(name)) {
            Some(Ok(job)) => self.location(job),
            _ => self.default_location(),
        }
    }

    /// The default repository's location (`--repo`, else the config's).
    fn default_location(&self) -> String {
        self.global
            .repo
            .clone()
            .or_else(|| self.config.repository_location().map(str::to_string))
            .unwrap_or_default()
    }

    /// `palisade --daemon-child --config FILE [--repo ...] [--password-file ...]`; the child
    /// reads the daemon's config text from its standard input, so that a file edited but not
    /// yet reloaded changes nothing.
    fn command(&self, with_repo: bool) -> std::process::Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| "palisade".into());
        let mut command = std::process::Command::new(exe);
        command
            .arg("--daemon-child")
            .arg("--config")
            .arg(&self.global.config);
        if with_repo && let Some(repo) = &self.global.repo {
            command.arg("--repo").arg(repo);
        }
        if let Some(file) = &self.global.password_file {
            command.arg("--password-file").arg(file);
        }
        command
    }

    fn start_backup(&mut self, job: &Job, trigger: Trigger, now: DateTime<Utc>) {
        // A backup by hand holds the job: skip the slot without a child (and without a ping
        // that would never be followed by a finish). The child checks again, for the moment
        // between this test and its start.
        if crate::state::RunLock::job(&self.config, &job.name).is_err() {
            if let Ok(run) = self.store.start_run(&job.name, trigger, now) {
                self.record_skipped(&job.name, run, now);
            }
            return;
        }
        let run = match self.store.start_run(&job.name, trigger, now) {
            Ok(run) => run,
            Err(err) => {
                log::error!("job {}: not started: {err}", job.name);
                return;
            }
        };
        let timeout = self
            .schedules
            .get(&Unit::Job(job.name.clone()))
            .and_then(|(_, s)| s.timeout);
        let deadline = timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .map(|t| now + t);
        let mut command = self.command(true);
        command.args(["--json", "backup", "--job", &job.name]);
        let task = Task::Backup {
            job: Box::new(job.clone()),
            run,
            location: self.location(job),
        };
        match Running::spawn(command, &self.text, task, deadline) {
            Ok(child) => {
                log::info!("job {}: started ({})", job.name, trigger_name(trigger));
                self.dispatcher.ping(&job.name, RunPhase::Start, "");
                self.running.push(child);
            }
            Err(err) => {
                let error = crate::render(&err);
                self.record(
                    run,
                    now,
                    RunOutcome::Failed,
                    RunResult {
                        error: Some(error.clone()),
                        ..RunResult::default()
                    },
                );
                self.raise(
                    now,
                    &Problem::job(
                        Rule::RunFailed,
                        &job.name,
                        format!("job `{}` could not start: {error}", job.name),
                    ),
                );
            }
        }
    }

    /// Starts a `[[tasks]]` entry as a child: `palisade --json prune|verify|restore-test ...`.
    fn start_task(&mut self, task: &TaskConfig, trigger: Trigger, now: DateTime<Utc>) {
        let name = task.name();
        let run = match self
            .store
            .start(task.run.kind(), task.job_column(), trigger, now)
        {
            Ok(run) => run,
            Err(err) => {
                log::error!("task {name}: not started: {err}");
                return;
            }
        };
        let deadline = self
            .schedules
            .get(&Unit::of_task(task))
            .and_then(|(_, s)| s.timeout)
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .map(|t| now + t);
        let location = self.task_location(task);
        let mut command = self.command(true);
        command.arg("--json").args(task.args());
        let boxed = Box::new(task.clone());
        let child = Task::Maintenance {
            task: boxed,
            run,
            location,
        };
        match Running::spawn(command, &self.text, child, deadline) {
            Ok(child) => {
                log::info!("task {name}: started ({})", trigger_name(trigger));
                self.running.push(child);
            }
            Err(err) => {
                let error = crate::render(&err);
                let result = RunResult {
                    error: Some(error.clone()),
                    ..RunResult::default()
                };
                self.record(run, now, RunOutcome::Failed, result);
                let problem = task_problem(task, &self.default_location(), &error);
                self.raise(now, &problem);
            }
        }
    }

    fn task_finished(
        &mut self,
        task: &TaskConfig,
        run: i64,
        location: &str,
        done: &Finished<Task>,
        now: DateTime<Utc>,
    ) {
        let name = task.name();
        let report = serde_json::from_str::<serde_json::Value>(&done.stdout).ok();
        let bytes = report.as_ref().and_then(|r| {
            r["bytes"].as_u64().or_else(|| {
                r["tests"].as_array().map(|tests| {
                    tests
                        .iter()
                        .filter_map(|t| t["bytes_restored"].as_u64())
                        .sum()
                })
            })
        });
        let ok = done.stopped.is_none() && done.status.code() == Some(0);
        let error = match done.stopped {
            Some(StopReason::Timeout) => Some(format!(
                "stopped by its timeout ({} s)",
                self.schedules
                    .get(&Unit::of_task(task))
                    .and_then(|(_, s)| s.timeout)
                    .unwrap_or_default()
                    .as_secs()
            )),
            Some(StopReason::Shutdown) => {
                Some("abandoned: the daemon was stopped while it ran".to_string())
            }
            None if ok => None,
            // The report's one-line reason, else what the child said last.
            None => Some(
                report
                    .as_ref()
                    .and_then(|r| r["failure"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| failure_text(&done.stderr, None)),
            ),
        };
        let outcome = match done.stopped {
            Some(StopReason::Timeout) => RunOutcome::Timeout,
            Some(StopReason::Shutdown) => RunOutcome::Abandoned,
            None if ok => RunOutcome::Success,
            None => RunOutcome::Failed,
        };
        let result = RunResult {
            bytes_read: bytes,
            error: error.clone(),
            report,
            ..RunResult::default()
        };
        let parts_read = result
            .report
            .as_ref()
            .map(|r| r["parts"].clone())
            .unwrap_or_default();
        self.record(run, now, outcome, result);
        let problem = task_problem(task, location, error.as_deref().unwrap_or(""));
        match (outcome, error) {
            (RunOutcome::Success, _)
                if task.run == crate::tasks::TaskRun::Verify
                    && !self.failed_parts_read(task, run, &parts_read) =>
            {
                log::info!(
                    "task {name}: passed, but the part that failed has not been read again yet; \
                     its alert stays open"
                );
            }
            (RunOutcome::Success, _) => {
                log::info!("task {name}: done");
                self.clear(now, problem.rule, &problem.subject);
            }
            (RunOutcome::Abandoned, _) => {}
            (_, error) => {
                log::error!("task {name}: {}", error.unwrap_or_default());
                self.raise(now, &problem);
            }
        }
    }

    /// Whether a verify that passed, reading `parts`, has read again every part whose reading
    /// failed in the task's last failed run (a verify reads one part of the data per run, so
    /// the damage of a part is only known to be gone once that part reads clean). True when
    /// there was no failed run, it read no part, or the parts were counted differently.
    fn failed_parts_read(&self, task: &TaskConfig, run: i64, parts: &serde_json::Value) -> bool {
        let Ok(runs) = self.store.runs_of(task.run.kind(), task.job_column(), 100) else {
            return true;
        };
        let Some(failed) = runs
            .iter()
            .filter(|r| r.id != run)
            .find(|r| r.outcome != RunOutcome::Success)
        else {
            return true;
        };
        let names = |value: &serde_json::Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        };
        let failed_parts = failed
            .report
            .as_ref()
            .map(|r| names(&r["parts"]))
            .unwrap_or_default();
        covers(&failed_parts, &names(parts))
    }

    fn reap(&mut self, now: DateTime<Utc>) {
        let mut still = Vec::new();
        let mut done = Vec::new();
        for mut child in self.running.drain(..) {
            if child.exited() {
                done.push(child.finish());
            } else {
                still.push(child);
            }
        }
        self.running = still;
        for finished in done {
            self.finished(finished, now);
        }
    }

    fn finished(&mut self, done: Finished<Task>, now: DateTime<Utc>) {
        let ok = done.stopped.is_none() && matches!(done.status.code(), Some(0 | 3));
        match &done.task {
            Task::Backup { job, run, location } => {
                if ok {
                    self.backup_saved(job, *run, location, &done, now);
                } else {
                    self.backup_failed(job, *run, location, &done, now);
                }
            }
            Task::Probe { location } => {
                self.probing.remove(location);
                if ok {
                    self.clear(now, Rule::RepositoryUnreachable, location);
                } else {
                    let why = failure_text(&done.stderr, None);
                    self.raise(
                        now,
                        &Problem {
                            rule: Rule::RepositoryUnreachable,
                            subject: location.clone(),
                            job: None,
                            message: format!("the repository {location} cannot be opened: {why}"),
                        },
                    );
                }
            }
            Task::Maintenance {
                task,
                run,
                location,
            } => self.task_finished(task, *run, location, &done, now),
            Task::Retention { job } => {
                if ok {
                    log::info!("job {job}: retention applied");
                    self.clear(now, Rule::RetentionFailed, job);
                } else {
                    let why = failure_text(&done.stderr, Some(job));
                    log::error!("job {job}: retention failed: {why}");
                    self.raise(
                        now,
                        &Problem::job(
                            Rule::RetentionFailed,
                            job,
                            format!("retention of job `{job}` failed: {why}"),
                        ),
                    );
                }
            }
        }
    }

    fn backup_saved(
        &mut self,
        job: &Job,
        run: i64,
        location: &str,
        done: &Finished<Task>,
        now: DateTime<Utc>,
    ) {
        let report = serde_json::from_str::<serde_json::Value>(&done.stdout)
            .ok()
            .and_then(|reports| reports.get(0).cloned())
            .unwrap_or_default();
        let result = RunResult {
            bytes_read: report["bytes_read"].as_u64(),
            bytes_added: report["bytes_added"].as_u64(),
            snapshot: report["snapshot"].as_str().map(str::to_string),
            ..RunResult::default()
        };
        let outcome = if done.status.code() == Some(3) {
            RunOutcome::Partial
        } else {
            RunOutcome::Success
        };
        let snapshot = result.snapshot.clone().unwrap_or_default();
        log::info!(
            "job {}: snapshot {} saved, {} byte(s) added",
            job.name,
            &snapshot[..snapshot.len().min(8)],
            result.bytes_added.unwrap_or(0)
        );
        self.record(run, now, outcome, result);
        self.clear(now, Rule::RunFailed, &job.name);
        self.clear(now, Rule::MissedBackup, &job.name);
        self.clear(now, Rule::RepositoryUnreachable, location);
        self.dispatcher.ping(
            &job.name,
            RunPhase::Success,
            &format!("snapshot {snapshot}"),
        );
        if self.stopping {
            return;
        }
        if let Some(args) = after_backup(job) {
            let mut command = self.command(true);
            command.args(&args);
            let task = Task::Retention {
                job: job.name.clone(),
            };
            match Running::spawn(command, &self.text, task, None) {
                Ok(child) => self.running.push(child),
                Err(err) => log::error!("job {}: retention not started: {err}", job.name),
            }
        }
    }

    fn backup_failed(
        &mut self,
        job: &Job,
        run: i64,
        location: &str,
        done: &Finished<Task>,
        now: DateTime<Utc>,
    ) {
        if done.stopped.is_none() && done.status.code() == Some(i32::from(crate::EXIT_BUSY)) {
            self.record_skipped(&job.name, run, now);
            return;
        }
        let timeout = self
            .schedules
            .get(&Unit::Job(job.name.clone()))
            .and_then(|(_, s)| s.timeout);
        let (outcome, error) = match done.stopped {
            Some(StopReason::Timeout) => (
                RunOutcome::Timeout,
                format!(
                    "stopped by its timeout ({} s)",
                    timeout.unwrap_or_default().as_secs()
                ),
            ),
            Some(StopReason::Shutdown) => (
                RunOutcome::Abandoned,
                "abandoned: the daemon was stopped; no snapshot was saved".to_string(),
            ),
            None => (
                RunOutcome::Failed,
                failure_text(&done.stderr, Some(&job.name)),
            ),
        };
        log::warn!("job {}: {}: {error}", job.name, outcome.as_str());
        self.record(
            run,
            now,
            outcome,
            RunResult {
                error: Some(error.clone()),
                ..RunResult::default()
            },
        );
        if outcome == RunOutcome::Abandoned {
            return;
        }
        self.raise(
            now,
            &Problem::job(
                Rule::RunFailed,
                &job.name,
                format!("job `{}` failed: {error}", job.name),
            ),
        );
        self.dispatcher.ping(&job.name, RunPhase::Fail, &error);
        if self.stopping || location.is_empty() || !self.probing.insert(location.to_string()) {
            return;
        }
        let mut command = self.command(false);
        command.arg("--repo").arg(location);
        let env_password = std::env::var_os("PALISADE_PASSWORD").is_some();
        if let (None, false, Some(file)) =
            (&self.global.password_file, env_password, &job.password_file)
        {
            command.arg("--password-file").arg(file);
        }
        command.args(["--json", "snapshots"]);
        let task = Task::Probe {
            location: location.to_string(),
        };
        match Running::spawn(command, &self.text, task, None) {
            Ok(mut child) => {
                child.limit = Some(Instant::now() + PROBE_TIMEOUT);
                self.running.push(child);
            }
            Err(err) => {
                self.probing.remove(location);
                log::error!("cannot probe the repository: {err}");
            }
        }
    }

    /// The missed-backup alarm for every scheduled job, and the repeats of open alerts.
    fn check_rules(&mut self, now: DateTime<Utc>) {
        let (repeat, factor) = crate::alerting::settings(&self.config);
        let mut problems = Vec::new();
        let mut fine = Vec::new();
        for (unit, (_, schedule)) in &self.schedules {
            let Unit::Job(name) = unit else {
                continue;
            };
            let allowance = schedule.interval(now).mul_f64(factor);
            let last = match self.store.last_success(name) {
                Ok(Some(run)) => run.finished_at.unwrap_or(run.started_at),
                Ok(None) => self.store.first_seen(name, now).unwrap_or(now),
                Err(err) => {
                    log::warn!("{err}");
                    continue;
                }
            };
            let allowance = chrono::Duration::from_std(allowance).unwrap_or(chrono::Duration::MAX);
            if now - last > allowance {
                problems.push(Problem::job(
                    Rule::MissedBackup,
                    name,
                    format!(
                        "no successful backup of job `{name}` since {} (allowed: {factor} × its interval); \
                         every run failed, or the daemon was not running",
                        palisade_events::store::time(last)
                    ),
                ));
            } else {
                fine.push(name.clone());
            }
        }
        for problem in problems {
            self.raise(now, &problem);
        }
        for name in fine {
            self.clear(now, Rule::MissedBackup, &name);
        }
        self.drop_stale_alerts(now);
        match Alerts::new(&self.store, repeat).repeats(now) {
            Ok(notices) => notices.into_iter().for_each(|n| self.send(n)),
            Err(err) => log::warn!("{err}"),
        }
    }

    /// Alerts about a job or task that left the config are closed without a message; a
    /// missed-backup alert of a job that is no longer scheduled is resolved.
    fn drop_stale_alerts(&self, now: DateTime<Utc>) {
        let Ok(open) = self.store.open_alerts() else {
            return;
        };
        let prune_subjects: Vec<String> = self
            .config
            .tasks
            .iter()
            .filter(|t| t.run == crate::tasks::TaskRun::Prune)
            .map(|t| task_problem(t, &self.task_location(t), "").subject)
            .collect();
        for alert in open {
            let stale_prune = alert.rule == Rule::RetentionFailed.as_str()
                && alert.subject.starts_with("prune ")
                && !prune_subjects.contains(&alert.subject);
            let stale_check = [Rule::VerifyFailed, Rule::RestoreTestFailed]
                .into_iter()
                .find(|rule| rule.as_str() == alert.rule)
                .is_some_and(|rule| {
                    !self
                        .config
                        .tasks
                        .iter()
                        .any(|t| t.run.rule() == rule && t.job == alert.job)
                });
            if stale_prune || stale_check {
                log::info!(
                    "its task left the config; the {} alert is closed",
                    alert.key
                );
                if let Err(err) = self.store.remove_alert(&alert.key) {
                    log::warn!("{err}");
                }
                continue;
            }
            let Some(job) = &alert.job else {
                continue;
            };
            if self.config.jobs.iter().all(|j| &j.name != job) {
                log::info!(
                    "job {job} left the config; its {} alert is closed",
                    alert.rule
                );
                if let Err(err) = self.store.remove_alert(&alert.key) {
                    log::warn!("{err}");
                }
            } else if alert.rule == Rule::MissedBackup.as_str()
                && !self.schedules.contains_key(&Unit::Job(job.clone()))
            {
                self.clear(now, Rule::MissedBackup, job);
            }
        }
    }

    fn record_skipped(&self, job: &str, run: i64, now: DateTime<Utc>) {
        let error = "skipped: another run of the job (by hand, or another daemon) was going on";
        log::warn!("job {job}: {error}");
        let result = RunResult {
            error: Some(error.into()),
            ..RunResult::default()
        };
        self.record(run, now, RunOutcome::Skipped, result);
    }

    fn record(&self, run: i64, now: DateTime<Utc>, outcome: RunOutcome, result: RunResult) {
        if let Err(err) = self.store.finish_run(run, now, outcome, &result) {
            log::error!("cannot record run {run}: {err}");
        }
    }

    fn raise(&self, now: DateTime<Utc>, problem: &Problem) {
        let (repeat, _) = crate::alerting::settings(&self.config);
        match Alerts::new(&self.store, repeat).raise(now, problem) {
            Ok(Some(notice)) => self.send(notice),
            Ok(None) => {}
            Err(err) => log::warn!("{err}"),
        }
    }

    fn clear(&self, now: DateTime<Utc>, rule: Rule, subject: &str) {
        let (repeat, _) = crate::alerting::settings(&self.config);
        match Alerts::new(&self.store, repeat).clear(now, rule, subject) {
            Ok(Some(notice)) => self.send(notice),
            Ok(None) => {}
            Err(err) => log::warn!("{err}"),
        }
    }

    fn send(&self, notice: Notice) {
        log::info!("alert: {}", notice.title());
        self.dispatcher.notify(notice);
    }

    /// SIGHUP: the new config replaces the old only when it loads, validates and its email
    /// servers answer; otherwise the old one stays in force.
    fn reload(&mut self) {
        let (config, text) = match crate::alerting::load_checked(&self.global.config) {
            Ok(loaded) => loaded,
            Err(err) => {
                log::error!(
                    "config reload rejected, the previous config stays in force: {}",
                    crate::render(&err)
                );
                return;
            }
        };
        let channels = match crate::alerting::channels(&config) {
            Ok(channels) => channels,
            Err(err) => {
                log::error!("config reload rejected, the previous config stays in force: {err}");
                return;
            }
        };
        self.config = config;
        self.text = text;
        self.plan(false);
        self.dispatcher.replace(channels);
        if let Some(metrics) = &self.metrics {
            metrics.set_jobs(job_names(&self.config));
        }
        log::info!(
            "config reloaded: {} job(s), {} scheduled, {} task(s), {} alert channel(s)",
            self.config.jobs.len(),
            self.schedules.len() - self.config.tasks.len(),
            self.config.tasks.len(),
            self.config.alerts.len()
        );
    }

    /// SIGTERM or SIGINT: start nothing new, give running backups the grace period, then stop
    /// them (a stopped backup saves no snapshot) and record them as abandoned.
    fn shutdown(mut self, signals: &mpsc::Receiver<i32>) {
        self.stopping = true;
        let grace = self
            .config
            .daemon
            .as_ref()
            .and_then(|d| d.shutdown_grace.as_deref())
            .and_then(|text| crate::schedule::parse_duration(text).ok())
            .unwrap_or(DEFAULT_GRACE);
        let deadline = Instant::now() + grace;
        if !self.running.is_empty() {
            log::info!(
                "stopping: waiting up to {} s for {} run(s)",
                grace.as_secs(),
                self.running.len()
            );
        }
        while !self.running.is_empty() && Instant::now() < deadline {
            self.reap(self.clock.now());
            if matches!(
                signals.recv_timeout(Duration::from_millis(100)),
                Ok(SIGTERM | SIGINT)
            ) {
                break;
            }
        }
        for child in &mut self.running {
            log::warn!("stopping: abandoning {}", describe(&child.task));
            child.stop(StopReason::Shutdown);
        }
        while !self.running.is_empty() {
            self.reap(self.clock.now());
            for child in &mut self.running {
                child.escalate();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.dispatcher.stop();
        log::info!("palisade daemon stopped");
    }
}

fn describe(task: &Task) -> String {
    match task {
        Task::Backup { job, .. } => format!("job {}", job.name),
        Task::Probe { location } => format!("the probe of {location}"),
        Task::Retention { job } => format!("retention of job {job}"),
        Task::Maintenance { task, .. } => format!("task {}", task.name()),
    }
}

/// The alert a task's failure raises: about its repository for prune, its job (or every job)
/// for verify and restore-test.
fn task_problem(task: &TaskConfig, location: &str, error: &str) -> Problem {
    let subject = match (task.run, &task.job) {
        (crate::tasks::TaskRun::Prune, _) => format!("prune {location}"),
        (_, Some(job)) => job.clone(),
        (_, None) => "all jobs".to_string(),
    };
    Problem {
        rule: task.run.rule(),
        subject,
        job: task.job.clone(),
        message: format!("{} failed: {error}", task.name()),
    }
}

fn trigger_name(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Command => "by hand",
        Trigger::Schedule => "scheduled",
        Trigger::CatchUp => "catch-up",
    }
}

/// Whether the parts `read` (as `n/m`) include every part of `failed`: true too when nothing
/// failed in a part, or the parts were counted differently (the rotation started again).
fn covers(failed: &[String], read: &[String]) -> bool {
    let of = |part: &String| part.split('/').nth(1).map(str::to_string);
    let same_count = failed.first().map(of) == read.first().map(of);
    failed.is_empty() || !same_count || failed.iter().all(|p| read.contains(p))
}

/// A random delay of at most `max`.
fn jitter(max: Duration) -> chrono::Duration {
    if max.is_zero() {
        return chrono::Duration::zero();
    }
    let millis = rand::random_range(0..=max.as_millis() as i64);
    chrono::Duration::milliseconds(millis)
}

/// What a child said went wrong: the `palisade: job NAME: ...` line of a backup, else its
/// last line.
fn failure_text(stderr: &str, job: Option<&str>) -> String {
    let from_job = job.and_then(|job| {
        let prefix = format!("palisade: job {job}: ");
        stderr
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
    });
    from_job
        .or_else(|| {
            stderr
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .map(|line| line.trim_start_matches("palisade: ").to_string())
        })
        .unwrap_or_else(|| "the process exited without saying why".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_alert_waits_for_the_failed_part_to_be_read_again() {
        let parts = |list: &[&str]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert!(!covers(&parts(&["3/7"]), &parts(&["4/7"])));
        assert!(covers(&parts(&["3/7"]), &parts(&["3/7"])));
        assert!(covers(
            &parts(&["3/28", "4/28"]),
            &parts(&["2/28", "3/28", "4/28"])
        ));
        assert!(!covers(
            &parts(&["3/28", "4/28"]),
            &parts(&["4/28", "5/28"])
        ));
        // Counted again from scratch, or a failure before any part was read.
        assert!(covers(&parts(&["3/7"]), &parts(&["1/1"])));
        assert!(covers(&[], &parts(&["4/7"])));
    }

    #[test]
    fn the_failure_line_of_the_job_is_chosen() {
        let stderr = "palisade: job db: cannot open /srv/app.db: No such file\n\
                      palisade: 1 of 1 job(s) failed: db\n";
        assert_eq!(
            failure_text(stderr, Some("db")),
            "cannot open /srv/app.db: No such file"
        );
        assert_eq!(failure_text(stderr, None), "1 of 1 job(s) failed: db");
        assert_eq!(
            failure_text("", None),
            "the process exited without saying why"
        );
    }
}
