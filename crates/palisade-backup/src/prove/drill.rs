//! `drill`: a recovery rehearsal from nothing but the repository — what can be recovered, every
//! label's newest snapshot restored and checked in scratch, and the measured recovery time
//! (RTO) and recovery point (RPO) per job.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use rustic_core::jiff::Timestamp;
use serde::Serialize;

use crate::{
    Repo, Result,
    prove::{
        Assertion, RestoreTest, RestoreTestRequest, display_name, has_base_backup, pitr_test,
        restore_test, targets,
    },
};

/// What the drill needs besides the repository; all of it optional.
#[derive(Debug, Clone, Default)]
pub struct DrillRequest {
    /// A private folder for the restores, removed by the caller.
    pub scratch: PathBuf,
    /// Seconds it took to reach and open the repository (part of every job's RTO).
    pub open_seconds: f64,
    /// Assertions per label, when a config file is at hand.
    pub assertions: BTreeMap<String, Vec<Assertion>>,
    /// Folder of PostgreSQL's server programs.
    pub pg_bin_dir: Option<PathBuf>,
    /// Folder of MariaDB's server programs.
    pub mysql_bin_dir: Option<PathBuf>,
}

/// One job of the drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillJob {
    /// The label (`pitr` for the point-in-time recovery).
    pub label: String,
    /// Items the newest snapshot holds, as snapshot paths.
    pub items: Vec<String>,
    /// Snapshots of this label in the repository.
    pub snapshots: usize,
    /// Seconds from the start of the drill's repository access to this job's verified restore:
    /// opening the repository, listing it, and this job's restore and checks.
    pub rto_seconds: f64,
    /// Age in seconds of the newest verified recovery point, at the end of its test; `None`
    /// when the restore failed.
    pub rpo_seconds: Option<f64>,
    /// The restore test itself.
    pub test: RestoreTest,
}

/// The drill's report, written as JSON and markdown; the record for a run store.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// When the drill started (RFC 3339).
    pub started: String,
    /// The repository, as its location.
    pub repository: String,
    /// Seconds the whole drill took.
    pub seconds: f64,
    /// Seconds to open the repository and list what it holds.
    pub discovery_seconds: f64,
    /// Whether every job recovered.
    pub passed: bool,
    /// The first failure, in one line.
    pub failure: Option<String>,
    /// Snapshots in the repository.
    pub snapshots: usize,
    /// One entry per label, then PITR.
    pub jobs: Vec<DrillJob>,
}

/// Lists what the repository can recover, then restores and checks each label's newest
/// snapshot (and a point-in-time recovery when there are base backups) one after another.
pub fn drill(repo: &Repo, request: &DrillRequest) -> Result<DrillReport> {
    let started = Instant::now();
    let start_time = Timestamp::now();
    let snaps = crate::snapshots(repo)?;
    let found = targets(repo, &[])?;
    let pitr = has_base_backup(repo)?;
    let discovery = request.open_seconds + started.elapsed().as_secs_f64();

    let mut jobs = Vec::new();
    for (n, target) in found.iter().enumerate() {
        let dir = request.scratch.join(format!("job-{n}"));
        std::fs::create_dir(&dir).map_err(|err| crate::Error::io(&dir, err))?;
        let test_request = RestoreTestRequest {
            name: target.label.clone(),
            snapshot: target.snapshot.clone(),
            scratch: dir.clone(),
            assertions: request
                .assertions
                .get(&target.label)
                .cloned()
                .unwrap_or_default(),
            pg_bin_dir: request.pg_bin_dir.clone(),
            mysql_bin_dir: request.mysql_bin_dir.clone(),
        };
        let test = restore_test(repo, &test_request).unwrap_or_else(|err| {
            RestoreTest::failed(&target.label, &target.snapshot, &err.to_string())
        });
        let _ = std::fs::remove_dir_all(&dir);
        let items = crate::snapshot::catalog(repo, &target.snapshot)
            .map(|c| c.items.into_iter().map(|i| i.path).collect())
            .unwrap_or_default();
        let count = snaps.iter().filter(|s| s.label == target.label).count();
        jobs.push(job(&target.label, items, count, discovery, test));
    }
    if pitr {
        let dir = request.scratch.join("pitr");
        std::fs::create_dir(&dir).map_err(|err| crate::Error::io(&dir, err))?;
        let test = pitr_test(repo, &dir, request.pg_bin_dir.as_deref())
            .unwrap_or_else(|err| RestoreTest::failed("pitr", "", &err.to_string()));
        let _ = std::fs::remove_dir_all(&dir);
        let bases = snaps
            .iter()
            .filter(|s| s.tags.iter().any(|t| t == crate::pg::BASE_TAG))
            .count();
        jobs.push(job(
            "pitr",
            vec!["base backup + WAL".into()],
            bases,
            discovery,
            test,
        ));
    }

    let failure = jobs.iter().find_map(|j| {
        j.test
            .failure
            .as_ref()
            .map(|f| format!("{}: {f}", display_name(&j.label)))
    });
    Ok(DrillReport {
        started: start_time.to_string(),
        repository: repo.location().to_string(),
        seconds: request.open_seconds + started.elapsed().as_secs_f64(),
        discovery_seconds: discovery,
        passed: failure.is_none() && !jobs.is_empty(),
        failure: failure.or_else(|| {
            jobs.is_empty()
                .then(|| "the repository holds nothing to recover".to_string())
        }),
        snapshots: snaps.len(),
        jobs,
    })
}

fn job(
    label: &str,
    items: Vec<String>,
    snapshots: usize,
    discovery: f64,
    test: RestoreTest,
) -> DrillJob {
    let rpo = test.passed.then(|| {
        test.snapshot_time
            .parse::<Timestamp>()
            .map(|t| {
                (Timestamp::now() - t)
                    .total(rustic_core::jiff::Unit::Second)
                    .unwrap_or(0.0)
            })
            .unwrap_or(0.0)
    });
    DrillJob {
        label: label.into(),
        items,
        snapshots,
        rto_seconds: discovery + test.seconds,
        rpo_seconds: rpo,
        test,
    }
}

impl DrillReport {
    /// The report as a short markdown document for people.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Recovery drill {}\n\nRepository: `{}`  \nResult: **{}**{}  \nSnapshots: {}; \
             repository opened and listed in {:.1} s; drill took {:.1} s.\n\n\
             | job | snapshot | taken | items | RTO | RPO | result |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
            self.started,
            self.repository,
            if self.passed { "recovered" } else { "FAILED" },
            self.failure
                .as_ref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default(),
            self.snapshots,
            self.discovery_seconds,
            self.seconds
        );
        for job in &self.jobs {
            out.push_str(&format!(
                "| {} | `{}` | {} | {} | {:.1} s | {} | {} |\n",
                display_name(&job.label),
                job.test.snapshot.get(..8).unwrap_or(&job.test.snapshot),
                job.test
                    .snapshot_time
                    .get(..19)
                    .unwrap_or(&job.test.snapshot_time),
                job.items.len(),
                job.rto_seconds,
                job.rpo_seconds
                    .map_or_else(|| "—".into(), |s| format!("{:.0} s", s)),
                if job.test.passed { "ok" } else { "FAILED" }
            ));
        }
        for job in &self.jobs {
            out.push_str(&format!("\n## {}\n\n", display_name(&job.label)));
            for check in &job.test.checks {
                out.push_str(&format!(
                    "- `{}` ({}): {}, {} bytes, {} table(s), {} row(s), {:.1} s\n",
                    check.item,
                    check.kind,
                    if check.passed { "ok" } else { "FAILED" },
                    check.bytes,
                    check.tables,
                    check.rows,
                    check.seconds
                ));
                for problem in &check.problems {
                    out.push_str(&format!("  - {problem}\n"));
                }
            }
            if let (true, Some(failure)) = (job.test.checks.is_empty(), &job.test.failure) {
                out.push_str(&format!("- {failure}\n"));
            }
        }
        out
    }
}
