//! The `palisade.toml` config file: the default repository and its S3 settings, bucket setup,
//! and the backup jobs with their retention.
//!
//! Relative paths in the file are taken relative to the file's own folder, so a config works
//! the same from any working directory. Every mistake is reported with the line it is on.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use palisade_backup::{RetentionPolicy, SourceSpec};
use palisade_s3::{BucketSpec, S3Options};
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default repository for every job: `repository = "DIR-OR-URL"`, or a `[repository]`
    /// table with `location` and `[repository.s3]` settings.
    pub repository: Option<RepositoryConfig>,
    /// How `palisade bucket setup` sets the S3 bucket up, and what `bucket check` expects.
    pub bucket: Option<BucketSpec>,
    /// File whose first line is the repository password.
    pub password_file: Option<PathBuf>,
    /// Where database copies and streams wait while they are archived (default: the system's
    /// temporary folder).
    pub temp_dir: Option<PathBuf>,
    /// Backup jobs.
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// PostgreSQL point-in-time recovery settings.
    pub pitr: Option<crate::pg::PitrConfig>,
    /// Where the run records, the alert state and `verify`'s cursor live (default: see
    /// docs/daemon.md).
    pub state_dir: Option<PathBuf>,
    /// `palisade daemon` settings.
    pub daemon: Option<crate::daemon::DaemonConfig>,
    /// How alerts repeat and when a backup counts as missed.
    pub alerting: Option<crate::alerting::AlertingConfig>,
    /// Alert channels.
    #[serde(default)]
    pub alerts: Vec<crate::alerting::AlertConfig>,
    /// Maintenance the daemon runs on its own schedules: prune, verify, restore-test.
    #[serde(default)]
    pub tasks: Vec<crate::tasks::TaskConfig>,
    /// `palisade gateway` settings (docs/gateway.md).
    pub gateway: Option<palisade_gateway::GatewayOptions>,
}

/// The `[repository]` table (a plain string is read as its `location`).
#[derive(Debug, Default, Clone)]
pub struct RepositoryConfig {
    /// Directory or `s3:` URL.
    pub location: Option<String>,
    /// How to reach an S3 repository; used for every `s3:` location, the jobs' included.
    pub s3: S3Options,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryTable {
    location: Option<String>,
    #[serde(default)]
    s3: S3Options,
}

impl<'de> Deserialize<'de> for RepositoryConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RepositoryConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a location string or a [repository] table")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(RepositoryConfig {
                    location: Some(text.to_string()),
                    s3: S3Options::default(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = RepositoryTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RepositoryConfig {
                    location: table.location,
                    s3: table.s3,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One backup job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Unique name; the snapshot label.
    pub name: String,
    /// Repository for this job, instead of the default.
    pub repository: Option<String>,
    /// Password file for this job's repository.
    pub password_file: Option<PathBuf>,
    /// What to back up.
    pub sources: Vec<Source>,
    /// Extra snapshot tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Which of the job's snapshots `forget` keeps; without it, every one.
    retention: Option<RetentionTable>,
    /// The `retention` table, checked.
    #[serde(skip)]
    pub policy: Option<RetentionPolicy>,
    /// When `palisade daemon` runs the job: a cron expression, or a table with `cron`,
    /// `timezone`, `jitter` and `timeout`.
    pub schedule: Option<crate::schedule::ScheduleConfig>,
}

/// A job's `retention` table as written, restic's rule names in kebab-case; counts and
/// durations are checked by [`RetentionTable::policy`], so that a mistake names its line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RetentionTable {
    keep_last: Option<i64>,
    keep_hourly: Option<i64>,
    keep_daily: Option<i64>,
    keep_weekly: Option<i64>,
    keep_monthly: Option<i64>,
    keep_yearly: Option<i64>,
    keep_within: Option<String>,
    #[serde(default)]
    keep_tag: Vec<String>,
}

impl RetentionTable {
    /// The checked rules, or the key at fault and what is wrong with it.
    fn policy(&self, job: &str) -> std::result::Result<RetentionPolicy, (&'static str, String)> {
        let count = |key: &'static str, value: Option<i64>| {
            value
                .map(|n| RetentionPolicy::count(key, n))
                .transpose()
                .map_err(|err| (key, format!("job `{job}`: {err}")))
        };
        let policy = RetentionPolicy {
            keep_last: count("keep-last", self.keep_last)?,
            keep_hourly: count("keep-hourly", self.keep_hourly)?,
            keep_daily: count("keep-daily", self.keep_daily)?,
            keep_weekly: count("keep-weekly", self.keep_weekly)?,
            keep_monthly: count("keep-monthly", self.keep_monthly)?,
            keep_yearly: count("keep-yearly", self.keep_yearly)?,
            keep_within: self
                .keep_within
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|err| ("keep-within", format!("job `{job}`: {err}")))?,
            keep_tag: self
                .keep_tag
                .iter()
                .map(|tag| RetentionPolicy::tag(tag))
                .collect::<palisade_backup::Result<_>>()
                .map_err(|err| ("keep-tag", format!("job `{job}`: {err}")))?,
        };
        if policy.is_empty() {
            return Err((
                "",
                format!(
                    "job `{job}` has an empty retention table; set at least one of keep-last, \
                     keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly, \
                     keep-within or keep-tag, or remove the table to keep every snapshot"
                ),
            ));
        }
        Ok(policy)
    }
}

/// One source of a job: exactly one of `sqlite`, `dir`, `postgres` or `mysql`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// An SQLite database file.
    pub sqlite: Option<PathBuf>,
    /// A directory.
    pub dir: Option<PathBuf>,
    /// A PostgreSQL server URL (the password belongs in PGPASSWORD or ~/.pgpass).
    pub postgres: Option<String>,
    /// A MariaDB/MySQL server URL.
    pub mysql: Option<String>,
    /// Databases of the server to dump (default: all).
    #[serde(default)]
    pub databases: Vec<String>,
    /// PostgreSQL: also dump roles and tablespaces (default true; needs a superuser).
    pub globals: Option<bool>,
    /// Folder of the database tools, instead of PATH.
    pub bin_dir: Option<PathBuf>,
    /// Item name in the snapshot (default: the file or folder name).
    pub name: Option<String>,
    /// Globs to leave out of a directory.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `postgres` and `mysql`: SQL queries that must each return true on every restored
    /// database of this source in `restore-test` and `drill`.
    #[serde(default, rename = "assert")]
    pub assertions: Vec<String>,
}

impl Config {
    /// Reads `path`; a missing file gives the empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read config {}", path.display()));
            }
        };
        Self::parse(&text, path)
    }

    /// Parses `text` as the config file at `path` (relative paths are taken from its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let text = text.to_string();
        let mut config: Self = toml::from_str(&text).map_err(|err| {
            // toml's own rendering quotes the offending line, which may hold a secret key:
            // name the line and column instead.
            let at = err
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" line {line} column {column}")
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "config {}{at}: {}",
                path.display(),
                err.message().trim_end()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve(base);
        config
            .validate(&text)
            .and_then(|()| config.check_retention(&text))
            .map_err(|(line, message)| match line {
                Some(line) => anyhow::anyhow!("config {} line {line}: {message}", path.display()),
                None => anyhow::anyhow!("config {}: {message}", path.display()),
            })?;
        Ok(config)
    }

    /// The default repository location, if the file names one.
    pub fn repository_location(&self) -> Option<&str> {
        self.repository.as_ref()?.location.as_deref()
    }

    /// The S3 settings for `s3:` locations (the defaults when the file has none).
    pub fn s3_options(&self) -> S3Options {
        self.repository
            .as_ref()
            .map(|repo| repo.s3.clone())
            .unwrap_or_default()
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.password_file.as_mut().map(fix);
        self.temp_dir.as_mut().map(fix);
        self.state_dir.as_mut().map(fix);
        for alert in &mut self.alerts {
            alert.resolve(base);
        }
        if let Some(gateway) = self.gateway.as_mut() {
            for files in &mut gateway.tls.certificates {
                fix(&mut files.cert);
                fix(&mut files.key);
                files.ocsp.as_mut().map(fix);
            }
            gateway.csrf.key_file.as_mut().map(fix);
            gateway.state.path.as_mut().map(fix);
            gateway.challenge.secret_file.as_mut().map(fix);
            for route in &mut gateway.routes {
                if let Some(rules) = route.validate.as_mut() {
                    rules.json_schema_file.as_mut().map(fix);
                }
            }
            if let Some(socket) = gateway.clamav.as_mut().and_then(|c| c.socket.as_mut()) {
                fix(socket);
            }
        }
        if let Some(pitr) = self.pitr.as_mut() {
            pitr.bin_dir.as_mut().map(fix);
            pitr.cache_dir.as_mut().map(fix);
        }
        if let Some(repo) = self.repository.as_mut().and_then(|r| r.location.as_mut()) {
            *repo = resolve_repo(repo, base);
        }
        for job in &mut self.jobs {
            job.password_file.as_mut().map(fix);
            if let Some(repo) = &mut job.repository {
                *repo = resolve_repo(repo, base);
            }
            for source in &mut job.sources {
                source.sqlite.as_mut().map(fix);
                source.dir.as_mut().map(fix);
                source.bin_dir.as_mut().map(fix);
            }
        }
    }

    /// Checks what the file's syntax cannot: each error comes with the line it is on.
    fn validate(&self, text: &str) -> std::result::Result<(), (Option<usize>, String)> {
        if let Some(repo) = &self.repository {
            if let Some(location) = &repo.location {
                palisade_backup::Location::parse(location).map_err(|err| {
                    (
                        line_of(text, "repository", 0, "location")
                            .or_else(|| line_of(text, "", 0, "repository")),
                        err.to_string(),
                    )
                })?;
            }
            repo.s3.validate().map_err(|err| {
                let key = match &err {
                    palisade_s3::Error::BadSetting { setting, .. } => setting.clone(),
                    _ => String::new(),
                };
                (
                    line_of(text, "repository.s3", 0, &key)
                        .or_else(|| line_of(text, "repository.s3", 0, "")),
                    err.to_string(),
                )
            })?;
        }
        if let Some(bucket) = &self.bucket {
            bucket.validate().map_err(|err| {
                let line = match &err {
                    palisade_s3::Error::BadSetting { setting, .. } => bucket_line(text, setting),
                    _ => None,
                };
                (
                    line.or_else(|| line_of(text, "bucket", 0, "")),
                    err.to_string(),
                )
            })?;
        }
        let mut names = std::collections::HashSet::new();
        for (index, job) in self.jobs.iter().enumerate() {
            let at = |key: &str| {
                line_of(text, "jobs", index, key).or_else(|| line_of(text, "jobs", index, ""))
            };
            if !names.insert(job.name.as_str()) {
                return Err((
                    at("name"),
                    format!(
                        "two jobs are named `{}`; job names must be unique",
                        job.name
                    ),
                ));
            }
            if job.sources.is_empty() {
                return Err((
                    at("sources"),
                    format!(
                        "job `{}` has no sources; add `sources = [{{ sqlite = \"app.db\" }}]` or similar",
                        job.name
                    ),
                ));
            }
            if let Some(location) = &job.repository {
                palisade_backup::Location::parse(location)
                    .map_err(|err| (at("repository"), err.to_string()))?;
            }
            for source in &job.sources {
                let kinds = [
                    source.sqlite.is_some(),
                    source.dir.is_some(),
                    source.postgres.is_some(),
                    source.mysql.is_some(),
                ];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    return Err((
                        at("sources"),
                        format!(
                            "each source of job `{}` needs exactly one of `sqlite`, `dir`, \
                             `postgres` or `mysql`",
                            job.name
                        ),
                    ));
                }
                let server = source.postgres.is_some() || source.mysql.is_some();
                if !server
                    && (!source.databases.is_empty()
                        || source.globals.is_some()
                        || source.bin_dir.is_some())
                {
                    return Err((
                        at("sources"),
                        format!(
                            "`databases`, `globals` and `bin_dir` only apply to `postgres` and \
                             `mysql` sources (job `{}`)",
                            job.name
                        ),
                    ));
                }
                if server && (source.name.is_some() || !source.exclude.is_empty()) {
                    return Err((
                        at("sources"),
                        format!(
                            "`name` and `exclude` do not apply to `postgres` and `mysql` sources \
                             (each database is stored under its own name); choose databases \
                             with `databases = [...]` (job `{}`)",
                            job.name
                        ),
                    ));
                }
                if !server && !source.assertions.is_empty() {
                    return Err((
                        at("sources"),
                        format!(
                            "`assert` only applies to `postgres` and `mysql` sources (job `{}`)",
                            job.name
                        ),
                    ));
                }
                if let Some(empty) = source.assertions.iter().find(|a| a.trim().is_empty()) {
                    return Err((
                        at("sources"),
                        format!(
                            "job `{}` has an empty assertion `{empty}`; write a query that \
                             returns true, such as \"SELECT count(*) > 0 FROM users\"",
                            job.name
                        ),
                    ));
                }
                if source.mysql.is_some() && source.globals.is_some() {
                    return Err((
                        at("sources"),
                        format!(
                            "`globals` only applies to `postgres` sources (job `{}`)",
                            job.name
                        ),
                    ));
                }
                if let Some(url) = &source.postgres {
                    palisade_backup::DbUrl::parse(url, palisade_backup::postgres::SCHEMES)
                        .map_err(|err| (at("sources"), format!("job `{}`: {err}", job.name)))?;
                }
                if let Some(url) = &source.mysql {
                    palisade_backup::DbUrl::parse(url, palisade_backup::mysql::SCHEMES)
                        .and_then(|url| palisade_backup::mysql::check_url(&url))
                        .map_err(|err| (at("sources"), format!("job `{}`: {err}", job.name)))?;
                }
                if source.sqlite.is_some() && !source.exclude.is_empty() {
                    return Err((
                        at("sources"),
                        format!(
                            "`exclude` only applies to `dir` sources (job `{}`)",
                            job.name
                        ),
                    ));
                }
            }
        }
        crate::schedule::validate(self, text)?;
        crate::tasks::validate(self, text)?;
        crate::alerting::validate(self, text)?;
        if let Some(gateway) = &self.gateway {
            gateway.validate().map_err(|err| {
                let line = match &err {
                    palisade_gateway::Error::BadSetting { setting, .. } => {
                        gateway_line(text, setting)
                    }
                    _ => None,
                };
                (
                    line.or_else(|| line_of(text, "gateway", 0, "")),
                    format!("[gateway] {err}"),
                )
            })?;
        }
        Ok(())
    }

    /// Turns each job's `retention` table into its policy; an error names the line.
    fn check_retention(&mut self, text: &str) -> std::result::Result<(), (Option<usize>, String)> {
        for (index, job) in self.jobs.iter_mut().enumerate() {
            let Some(table) = &job.retention else {
                continue;
            };
            let policy = table
                .policy(&job.name)
                .map_err(|(key, message)| (retention_line(text, index, key), message))?;
            job.policy = Some(policy);
        }
        Ok(())
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Result<&Job> {
        self.jobs.iter().find(|j| j.name == name).with_context(|| {
            let known: Vec<_> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            format!(
                "no job named `{name}` in the config; jobs: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

impl Job {
    /// The assertions of the job's database sources, for restore tests.
    pub fn assertions(&self) -> Vec<palisade_backup::prove::Assertion> {
        let mut all = Vec::new();
        for source in &self.sources {
            let kind = if source.postgres.is_some() {
                palisade_backup::ItemKind::Postgres
            } else if source.mysql.is_some() {
                palisade_backup::ItemKind::Mysql
            } else {
                continue;
            };
            all.extend(
                source
                    .assertions
                    .iter()
                    .map(|sql| palisade_backup::prove::Assertion {
                        kind,
                        databases: source.databases.clone(),
                        sql: sql.clone(),
                    }),
            );
        }
        all
    }

    /// The `bin_dir` of the job's first source of `kind`, where the restore test looks for
    /// the server programs too.
    pub fn bin_dir(&self, kind: palisade_backup::ItemKind) -> Option<PathBuf> {
        self.sources
            .iter()
            .find(|s| match kind {
                palisade_backup::ItemKind::Postgres => s.postgres.is_some(),
                _ => s.mysql.is_some(),
            })
            .and_then(|s| s.bin_dir.clone())
    }

    /// The job's sources as engine specs (the file was validated, so every URL parses).
    pub fn specs(&self) -> Result<Vec<SourceSpec>> {
        self.sources
            .iter()
            .map(|s| {
                Ok(if let Some(path) = &s.sqlite {
                    SourceSpec::Sqlite {
                        path: path.clone(),
                        name: s.name.clone(),
                    }
                } else if let Some(url) = &s.postgres {
                    SourceSpec::Postgres(palisade_backup::PostgresSource {
                        url: palisade_backup::DbUrl::parse(
                            url,
                            palisade_backup::postgres::SCHEMES,
                        )?,
                        databases: s.databases.clone(),
                        globals: s.globals.unwrap_or(true),
                        bin_dir: s.bin_dir.clone(),
                    })
                } else if let Some(url) = &s.mysql {
                    SourceSpec::Mysql(palisade_backup::MysqlSource {
                        url: palisade_backup::DbUrl::parse(url, palisade_backup::mysql::SCHEMES)?,
                        databases: s.databases.clone(),
                        bin_dir: s.bin_dir.clone(),
                    })
                } else {
                    SourceSpec::Directory {
                        path: s.dir.clone().unwrap_or_default(),
                        name: s.name.clone(),
                        exclude: s.exclude.clone(),
                    }
                })
            })
            .collect()
    }
}

/// The line of a `[bucket]` setting such as `lifecycle.noncurrent_expire_days`: in its own
/// `[bucket.lifecycle]` table, or on the inline `lifecycle = { ... }` line.
fn bucket_line(text: &str, setting: &str) -> Option<usize> {
    let setting = setting.strip_prefix("bucket.").unwrap_or(setting);
    match setting.split_once('.') {
        Some((table, key)) => line_of(text, &format!("bucket.{table}"), 0, key)
            .or_else(|| line_of(text, "bucket", 0, setting))
            .or_else(|| line_of(text, "bucket", 0, table))
            .or_else(|| line_of(text, &format!("bucket.{table}"), 0, "")),
        None => line_of(text, "bucket", 0, setting),
    }
}

/// The line of a `[gateway]` setting such as `headers.hsts_max_age`: in its own
/// `[gateway.headers]` table, or on the `headers = { ... }` line of `[gateway]`.
fn gateway_line(text: &str, setting: &str) -> Option<usize> {
    // `routes[2].headers.x`: the third `[[gateway.routes]]`, on its key's line or its header.
    if let Some((index, rest)) = setting
        .strip_prefix("routes[")
        .and_then(|rest| rest.split_once(']'))
    {
        let nth = index.parse().ok()?;
        let key = rest.trim_start_matches('.').split('.').next().unwrap_or("");
        return line_of(text, "gateway.routes", nth, key)
            .or_else(|| line_of(text, "gateway.routes", nth, ""));
    }
    match setting.rsplit_once('.') {
        Some((table, key)) => line_of(text, &format!("gateway.{table}"), 0, key)
            .or_else(|| line_of(text, "gateway", 0, table.split('.').next().unwrap_or(table)))
            .or_else(|| line_of(text, &format!("gateway.{table}"), 0, "")),
        None => line_of(text, "gateway", 0, setting),
    }
}

/// The 1-based line of `key = ...` in the `nth` table called `section` (`""` for the top
/// level; `nth` counts `[[section]]` entries); with an empty `key`, the table's header line.
pub(crate) fn line_of(text: &str, section: &str, nth: usize, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut seen: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            current = name.to_string();
            if current == section {
                seen = Some(seen.map_or(0, |n| n + 1));
                if key.is_empty() && seen == Some(nth) {
                    return Some(number + 1);
                }
            }
            continue;
        }
        let in_section = if section.is_empty() {
            current.is_empty()
        } else {
            current == section && seen == Some(nth)
        };
        if in_section && !key.is_empty() {
            let name = line.split('=').next().unwrap_or("").trim();
            if name == key {
                return Some(number + 1);
            }
        }
    }
    None
}

/// The 1-based line of `key` in the retention table of the `nth` `[[jobs]]` entry: in a
/// `[jobs.retention]` table, or the `retention = { ... }` line itself. With an empty `key`, the
/// table's first line.
fn retention_line(text: &str, nth: usize, key: &str) -> Option<usize> {
    let mut job: Option<usize> = None;
    let mut table = "";
    let mut header = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.trim_start_matches('[').split(']').next().unwrap_or("");
            table = match (rest.starts_with('['), name.trim()) {
                (true, "jobs") => {
                    job = Some(job.map_or(0, |n| n + 1));
                    "job"
                }
                (false, "jobs.retention") => {
                    header = header.or((job == Some(nth)).then_some(number + 1));
                    "retention"
                }
                _ => "other",
            };
            continue;
        }
        if job != Some(nth) {
            continue;
        }
        let name = line.split('=').next().unwrap_or("").trim();
        match table {
            "job" if name == "retention" => return Some(number + 1),
            "retention" if !key.is_empty() && name == key => return Some(number + 1),
            _ => {}
        }
    }
    header
}

/// Local repository paths in the config are relative to the config file.
fn resolve_repo(repo: &str, base: &Path) -> String {
    let path = Path::new(repo.strip_prefix("local:").unwrap_or(repo));
    if path.is_relative() && !repo.contains(':') {
        base.join(path).to_string_lossy().into_owned()
    } else {
        repo.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, true)
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let config = parse(
            "repository = \"repo\"\n[[jobs]]\nname = \"app\"\nsources = [{ sqlite = \"app.db\" }, { dir = \"/srv/up\", exclude = [\"*.tmp\"] }]\n",
        )
        .unwrap();
        assert!(Path::new(config.repository_location().unwrap()).is_absolute());
        let specs = config.job("app").unwrap().specs().unwrap();
        assert!(matches!(&specs[0], SourceSpec::Sqlite { path, .. } if path.is_absolute()));
        assert!(
            matches!(&specs[1], SourceSpec::Directory { exclude, .. } if exclude == &["*.tmp"])
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse("[[jobs]]\nname = \"a\"\nsources = [{ sqlite = \"x\", dir = \"y\" }]\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("exactly one of"), "{err:#}");
        let err = parse("repositroy = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("repositroy"), "{err:#}");
        let err = parse("[[jobs]]\nname = \"a\"\nsources = []\n").unwrap_err();
        assert!(format!("{err:#}").contains("no sources"), "{err:#}");
        assert!(parse("").unwrap().job("x").is_err());
    }

    #[test]
    fn retention_is_read_from_either_table_form() {
        let config = parse(
            "[[jobs]]\nname = \"a\"\nsources = [{ sqlite = \"x\" }]\n\
             retention = { keep-last = 3, keep-within = \"1y6m\" }\n\n\
             [[jobs]]\nname = \"b\"\nsources = [{ sqlite = \"y\" }]\n\n\
             [[jobs]]\nname = \"c\"\nsources = [{ sqlite = \"z\" }]\n\
             [jobs.retention]\nkeep-daily = 7\nkeep-tag = [\"release\"]\n",
        )
        .unwrap();
        let policy = |name: &str| config.job(name).unwrap().policy.clone();
        assert_eq!(
            policy("a").unwrap().to_string(),
            "keep-last 3, keep-within 1y6m"
        );
        assert_eq!(policy("b"), None, "no table: every snapshot stays");
        assert_eq!(
            policy("c").unwrap().to_string(),
            "keep-daily 7, keep-tag release"
        );
    }

    #[test]
    fn retention_mistakes_name_their_line() {
        let job = |n: &str| format!("[[jobs]]\nname = \"{n}\"\nsources = [{{ sqlite = \"x\" }}]\n");
        let cases = [
            (
                format!(
                    "{}{}[jobs.retention]\nkeep-last = 2\nkeep-within = \"3x\"\n",
                    job("a"),
                    job("b")
                ),
                "line 9",
                "like 30d, 2w or 1y6m",
            ),
            (
                format!("{}retention = {{ keep-daily = -1 }}\n", job("a")),
                "line 4",
                "1 or more",
            ),
            (
                format!("{}[jobs.retention]\n", job("a")),
                "line 4",
                "empty retention table",
            ),
            (
                format!("{}[jobs.retention]\nkeep-dayly = 7\n", job("a")),
                "line 5",
                "unknown field `keep-dayly`",
            ),
            (
                format!("{}retention = {{ keep-tag = [\"\"] }}\n", job("a")),
                "line 4",
                "give the tag",
            ),
        ];
        for (text, line, words) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(line) && err.contains(words), "{text}\n{err}");
        }
    }

    #[test]
    fn repository_table_and_s3_settings() {
        let config = parse(
            "[repository]\nlocation = \"s3:https://s3.example.net/backups/app\"\n[repository.s3]\nregion = \"eu-west-1\"\nstorage_class = \"STANDARD_IA\"\n",
        )
        .unwrap();
        assert_eq!(
            config.repository_location(),
            Some("s3:https://s3.example.net/backups/app")
        );
        assert_eq!(config.s3_options().region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn errors_point_at_the_line() {
        let err = parse("[repository]\nlocation = \"s3:x\"\n\n[repository.s3]\nregion = \"eu\"\nencryption = \"aws:kms\"\n")
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("line 2") && text.contains("not a valid bucket"),
            "{text}"
        );
        let err = parse("[repository]\nlocation = \"s3:bucket-ok\"\n\n[repository.s3]\nregion = \"eu\"\nencryption = \"aws:kms\"\n")
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("line 4") && text.contains("kms_key_id"),
            "{text}"
        );
        let err = parse("[[jobs]]\nname = \"a\"\nsources = [{ sqlite = \"x\" }]\n[[jobs]]\nname = \"a\"\nsources = [{ sqlite = \"y\" }]\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("line 5"), "{err:#}");
        let err = parse("[repository.s3]\nconnections = \"many\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        // Bucket settings point at their own line, in a sub-table or inline.
        let err = parse(
            "[bucket]\nversioning = true\nobject_lock = { mode = \"governance\", days = 30 }\n\n[bucket.lifecycle]\nnoncurrent_expire_days = 7\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("line 6"), "{err:#}");
        let err = parse(
            "[bucket]\nversioning = false\nobject_lock = { mode = \"governance\", days = 30 }\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
        // A database source with a URL that is not one names the job's line.
        let err = parse("[[jobs]]\nname = \"a\"\nsources = [{ postgres = \"localhost:5432\" }]\n")
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("line 3") && text.contains("postgresql://"),
            "{text}"
        );
        // A syntax error on a secret's line names the line, never the value.
        let err = parse("[repository.s3]\nsecret_access_key = 12345SecretValue\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("line 2") && !text.contains("12345SecretValue"),
            "{text}"
        );
    }

    #[test]
    fn gateway_section_is_read_and_its_mistakes_name_their_line() {
        let config = parse(
            "[gateway]\nupstreams = [\"http://127.0.0.1:3000\"]\nhosts = [\"shop.example\"]\n\
             [[gateway.tls.certificates]]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\
             [gateway.security_txt]\ncontact = [\"mailto:s@shop.example\"]\n\
             expires = \"2030-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        let gateway = config.gateway.unwrap();
        assert_eq!(gateway.hosts, ["shop.example"]);
        let cert = &gateway.tls.certificates[0].cert;
        assert!(
            cert.is_absolute() && cert.ends_with("tls/cert.pem"),
            "{}",
            cert.display()
        );
        let cases = [
            ("[gateway]\nupstreams = []\n", "line 2", "no upstream"),
            (
                "[gateway]\nupstreams = [\"http://a:1\"]\n[gateway.headers]\nhsts_max_age = 60\n",
                "line 4",
                "two years",
            ),
            (
                "[gateway]\nupstreams = [\"http://a:1\"]\nheaders = { hsts_max_age = 60 }\n",
                "line 3",
                "two years",
            ),
            (
                "[gateway]\nupstreams = [\"http://a:1\"]\n[gateway.security_txt]\ncontact = []\nexpires = \"x\"\n",
                "line 4",
                "contact",
            ),
            (
                "[gateway]\nupstreams = [\"http://a:1\"]\nlisten = \"nowhere\"\n",
                "line 3",
                "not an IP address and port; write it like 0.0.0.0:443",
            ),
            (
                "[gateway]\nupstream = [\"http://a:1\"]\n",
                "line 2",
                "unknown field",
            ),
            (
                "[gateway]\nupstreams = [\"http://a:1\"]\n[[gateway.routes]]\nprefix = \"/a\"\n\
                 [[gateway.routes]]\nprefix = \"/b\"\nheaders = { hsts_max_age = 5 }\n",
                "line 7",
                "routes[1].headers.hsts_max_age",
            ),
        ];
        for (text, line, words) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(line) && err.contains(words), "{text}\n{err}");
        }
    }
}
