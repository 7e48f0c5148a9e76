//! Scheduled maintenance: the `[[tasks]]` entries (prune, verify, restore-test) the daemon runs
//! on their own schedules, their checks, and the command line each one runs as.

use palisade_events::{Rule, RunKind};
use serde::Deserialize;

use crate::{config::Config, schedule::ScheduleConfig};

/// What a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskRun {
    /// `palisade prune` of a repository.
    Prune,
    /// `palisade verify`.
    Verify,
    /// `palisade restore-test`.
    RestoreTest,
}

impl TaskRun {
    /// The run store's kind for it.
    pub fn kind(self) -> RunKind {
        match self {
            Self::Prune => RunKind::Prune,
            Self::Verify => RunKind::Verify,
            Self::RestoreTest => RunKind::RestoreTest,
        }
    }

    /// The alert its failure raises.
    pub fn rule(self) -> Rule {
        match self {
            Self::Prune => Rule::RetentionFailed,
            Self::Verify => Rule::VerifyFailed,
            Self::RestoreTest => Rule::RestoreTestFailed,
        }
    }
}

/// One `[[tasks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// `prune`, `verify` or `restore-test`.
    pub run: TaskRun,
    /// When: a cron expression or a schedule table, as a job's.
    pub schedule: ScheduleConfig,
    /// The job it is about: verify reads its repository and hashes only its items,
    /// restore-test tests only its newest snapshot, prune prunes its repository. Without it:
    /// verify and prune work on the default repository, restore-test tests every job.
    pub job: Option<String>,
    /// verify: the percentage of the data read per run (`15` or `"15%"`).
    #[serde(default, deserialize_with = "percent")]
    pub read_data_subset: Option<f64>,
    /// verify: read until this much time has passed instead (`30m`).
    pub max_duration: Option<String>,
}

impl TaskConfig {
    /// The task's name in logs, runs and alerts: `verify`, `restore-test of shop`.
    pub fn name(&self) -> String {
        match &self.job {
            Some(job) => format!("{} of {job}", self.run.kind().as_str()),
            None => self.run.kind().as_str().to_string(),
        }
    }

    /// The job column of its runs: the job, or empty for every job.
    pub fn job_column(&self) -> &str {
        self.job.as_deref().unwrap_or("")
    }

    /// The subcommand and options the daemon's child runs.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![self.run.kind().as_str().to_string()];
        if let Some(job) = &self.job {
            args.extend(["--job".into(), job.clone()]);
        }
        if let Some(percent) = self.read_data_subset {
            args.extend(["--read-data-subset".into(), percent.to_string()]);
        }
        if let Some(limit) = &self.max_duration {
            args.extend(["--max-duration".into(), limit.clone()]);
        }
        args
    }
}

/// A percentage written as a number (`15`) or as text (`"15%"`), as on the command line.
fn percent<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(f64),
        Text(String),
    }
    match Written::deserialize(deserializer)? {
        Written::Number(n) => Ok(Some(n)),
        Written::Text(text) => text
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a percentage; write e.g. 15 or \"15%\""
                ))
            }),
    }
}

/// Checks every task; an error names its line.
pub fn validate(config: &Config, text: &str) -> Result<(), (Option<usize>, String)> {
    let mut seen = std::collections::HashSet::new();
    for (index, task) in config.tasks.iter().enumerate() {
        let at = |key: &str| {
            crate::config::line_of(text, "tasks", index, key)
                .or_else(|| crate::config::line_of(text, "tasks", index, ""))
        };
        let name = task.name();
        if let Some(job) = &task.job
            && config.jobs.iter().all(|j| &j.name != job)
        {
            let known: Vec<_> = config.jobs.iter().map(|j| j.name.as_str()).collect();
            return Err((
                at("job"),
                format!(
                    "task `{name}`: no job named `{job}`; jobs: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if !seen.insert((task.run.kind(), task.job.clone())) {
            return Err((
                at("run"),
                format!("two tasks `{name}`; give each task a different `run` or `job`"),
            ));
        }
        crate::schedule::Schedule::parse(&task.schedule)
            .map_err(|err| (at("schedule"), format!("task `{name}`: schedule {err}")))?;
        if task.run != TaskRun::Verify
            && (task.read_data_subset.is_some() || task.max_duration.is_some())
        {
            return Err((
                at(if task.read_data_subset.is_some() {
                    "read_data_subset"
                } else {
                    "max_duration"
                }),
                format!(
                    "task `{name}`: `read_data_subset` and `max_duration` only apply to verify"
                ),
            ));
        }
        if task.read_data_subset.is_some() && task.max_duration.is_some() {
            return Err((
                at("max_duration"),
                format!("task `{name}`: give `read_data_subset` or `max_duration`, not both"),
            ));
        }
        if let Some(percent) = task.read_data_subset
            && !(1.0..=100.0).contains(&percent)
        {
            return Err((
                at("read_data_subset"),
                format!(
                    "task `{name}`: read_data_subset = {percent} is not a percentage from 1 to \
                     100; give e.g. 15 (the whole data every 7 runs)"
                ),
            ));
        }
        if let Some(limit) = &task.max_duration {
            crate::schedule::parse_duration(limit)
                .map_err(|err| (at("max_duration"), format!("task `{name}`: {err}")))?;
        }
        if task.job.is_none() && config.repository_location().is_none() {
            return Err((
                at("run"),
                format!(
                    "task `{name}` has no `job` and the config no default `repository`; set \
                     `job = NAME` or a top-level `repository`"
                ),
            ));
        }
        if task.run == TaskRun::Prune
            && let Some(job) = &task.job
            && config.job(job).is_ok_and(|j| j.repository.is_none())
        {
            return Err((
                at("job"),
                format!(
                    "task `{name}`: job `{job}` uses the default repository; leave `job` out \
                     to prune it"
                ),
            ));
        }
    }
    Ok(())
}
