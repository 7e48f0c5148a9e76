//! Job schedules: the `schedule` setting of a job (cron expression, time zone, jitter,
//! timeout), their next run times, and `palisade schedule`.

use std::{str::FromStr, time::Duration};

use anyhow::Result;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::{Outcome, commands::Session, config::Config};

/// A job's `schedule`: `schedule = "0 3 * * *"`, or a table with the cron expression and its
/// options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Five fields (minute hour day month weekday) or six (seconds first); `@daily` and the
    /// like also work.
    pub cron: String,
    /// IANA time zone the expression is read in (default: the system's).
    pub timezone: Option<String>,
    /// Up to this long a random delay after each slot (`10m`).
    pub jitter: Option<String>,
    /// A run still going after this long is stopped and counts as failed (`2h`).
    pub timeout: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleTable {
    cron: String,
    timezone: Option<String>,
    jitter: Option<String>,
    timeout: Option<String>,
}

impl<'de> serde::Deserialize<'de> for ScheduleConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ScheduleConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a cron expression or a table with `cron`")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(ScheduleConfig {
                    cron: text.to_string(),
                    ..ScheduleConfig::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = <ScheduleTable as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(ScheduleConfig {
                    cron: table.cron,
                    timezone: table.timezone,
                    jitter: table.jitter,
                    timeout: table.timeout,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The zone a cron expression is read in.
#[derive(Debug, Clone, Copy)]
enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    zone: Zone,
    /// The largest random delay after a slot.
    pub jitter: Duration,
    /// How long a run may take.
    pub timeout: Option<Duration>,
}

impl Schedule {
    /// Parses a job's setting; the error says which part is wrong.
    pub fn parse(config: &ScheduleConfig) -> Result<Self, String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(config.cron.trim())
            .map_err(|err| {
                format!(
                    "`{}` is not a valid cron expression ({err}); write five fields (minute \
                     hour day month weekday, e.g. \"0 3 * * *\") or six with seconds first",
                    config.cron
                )
            })?;
        let zone = match &config.timezone {
            None => Zone::Local,
            Some(name) => Zone::Named(chrono_tz::Tz::from_str(name).map_err(|_| {
                format!(
                    "`{name}` is not an IANA time zone; write e.g. \"Europe/Berlin\" or \"UTC\""
                )
            })?),
        };
        let duration = |value: &Option<String>, key: &str| {
            value
                .as_deref()
                .map(|text| parse_duration(text).map_err(|err| format!("`{key}`: {err}")))
                .transpose()
        };
        let schedule = Self {
            cron,
            zone,
            jitter: duration(&config.jitter, "jitter")?.unwrap_or_default(),
            timeout: duration(&config.timeout, "timeout")?,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!("`{}` never matches a time", config.cron));
        }
        Ok(schedule)
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            Zone::Local => next_in(&self.cron, &after.with_timezone(&chrono::Local)),
            Zone::Named(tz) => next_in(&self.cron, &after.with_timezone(&tz)),
        }
    }

    /// The gap between the two slots that follow `now`: the job's interval, for the
    /// missed-backup alarm.
    pub fn interval(&self, now: DateTime<Utc>) -> Duration {
        let first = self.next_after(now);
        let second = first.and_then(|first| self.next_after(first));
        match (first, second) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
            _ => Duration::from_secs(86_400),
        }
    }

    /// `n` slots after `after`, written in the schedule's own zone.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = after;
        for _ in 0..n {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(match self.zone {
                Zone::Local => next.with_timezone(&chrono::Local).to_rfc3339(),
                Zone::Named(tz) => next.with_timezone(&tz).to_rfc3339(),
            });
            at = next;
        }
        out
    }
}

fn next_in<Tz: TimeZone>(cron: &croner::Cron, after: &DateTime<Tz>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(after, false)
        .ok()
        .map(|next| next.with_timezone(&Utc))
}

/// `90s`, `10m`, `2h`, `1d`, or several joined (`1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("`{text}` is not a duration; write e.g. \"30s\", \"10m\", \"2h\" or \"1d\"");
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let value: u64 = number.parse().map_err(|_| bad())?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Checks every job's schedule; the error names the job's `schedule` line.
pub fn validate(config: &Config, text: &str) -> Result<(), (Option<usize>, String)> {
    for (index, job) in config.jobs.iter().enumerate() {
        let Some(schedule) = &job.schedule else {
            continue;
        };
        Schedule::parse(schedule).map_err(|err| {
            (
                crate::config::line_of(text, "jobs", index, "schedule")
                    .or_else(|| crate::config::line_of(text, "jobs", index, "")),
                format!("job `{}`: schedule {err}", job.name),
            )
        })?;
    }
    Ok(())
}

/// Options of `palisade schedule`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// How many runs to list per job.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
}

/// `palisade schedule`: each job's and each task's next runs.
pub fn show(session: &Session, args: &ScheduleArgs) -> Result<Outcome> {
    #[derive(Serialize)]
    struct Planned {
        /// The job, for a job's backups.
        #[serde(skip_serializing_if = "Option::is_none")]
        job: Option<String>,
        /// The task's name, for a `[[tasks]]` entry.
        #[serde(skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        cron: Option<String>,
        timezone: Option<String>,
        next: Vec<String>,
    }
    let now = crate::daemon::clock().now();
    let plan = |config: Option<&ScheduleConfig>| -> Result<_> {
        Ok(match config {
            Some(config) => {
                let schedule = Schedule::parse(config).map_err(anyhow::Error::msg)?;
                (
                    Some(config.cron.clone()),
                    Some(config.timezone.clone().unwrap_or_else(|| "local".into())),
                    schedule.upcoming(now, args.count),
                )
            }
            None => (None, None, Vec::new()),
        })
    };
    let mut planned = Vec::new();
    for job in &session.config.jobs {
        let (cron, timezone, next) = plan(job.schedule.as_ref())?;
        planned.push(Planned {
            job: Some(job.name.clone()),
            task: None,
            cron,
            timezone,
            next,
        });
    }
    for task in &session.config.tasks {
        let (cron, timezone, next) = plan(Some(&task.schedule))?;
        planned.push(Planned {
            job: None,
            task: Some(task.name()),
            cron,
            timezone,
            next,
        });
    }
    session.list(&planned, |planned| {
        let mut out = String::new();
        for entry in planned {
            let name = match (&entry.job, &entry.task) {
                (Some(job), _) => job.clone(),
                (None, task) => format!("task {}", task.as_deref().unwrap_or("")),
            };
            match &entry.cron {
                None => out.push_str(&format!("{name}: not scheduled (no `schedule`)\n")),
                Some(cron) => {
                    out.push_str(&format!(
                        "{name}: {cron} ({})\n",
                        entry.timezone.as_deref().unwrap_or("local")
                    ));
                    for next in &entry.next {
                        out.push_str(&format!("  {next}\n"));
                    }
                }
            }
        }
        if planned.is_empty() {
            out.push_str("no jobs or tasks in the config");
        }
        out.trim_end().to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn next_runs_follow_the_time_zone() {
        let schedule = Schedule::parse(&ScheduleConfig {
            cron: "0 3 * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            ..ScheduleConfig::default()
        })
        .unwrap();
        // 03:00 in Berlin in winter is 02:00 UTC.
        assert_eq!(
            schedule.next_after(at("2030-01-10T12:00:00Z")),
            Some(at("2030-01-11T02:00:00Z"))
        );
        assert_eq!(
            schedule.interval(at("2030-01-10T12:00:00Z")),
            Duration::from_secs(86_400)
        );
        let seconds = Schedule::parse(&ScheduleConfig {
            cron: "*/5 * * * * *".into(),
            timezone: Some("UTC".into()),
            ..ScheduleConfig::default()
        })
        .unwrap();
        assert_eq!(
            seconds.next_after(at("2030-01-10T12:00:01Z")),
            Some(at("2030-01-10T12:00:05Z"))
        );
    }

    #[test]
    fn bad_schedules_and_durations_are_named() {
        let err = Schedule::parse(&ScheduleConfig {
            cron: "61 * * * *".into(),
            ..ScheduleConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("61 * * * *"), "{err}");
        let err = Schedule::parse(&ScheduleConfig {
            cron: "0 3 * * *".into(),
            timezone: Some("Mars/Olympus".into()),
            ..ScheduleConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("10").is_err());
    }
}
