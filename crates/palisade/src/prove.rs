//! `palisade restore-test`, `verify` and `drill`: choosing what to prove from the config and
//! the repository, running the engine's checks in this run's scratch directory, and printing
//! the reports for people or as JSON.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Args;
use palisade_backup::{
    ItemKind, Repo,
    prove::{self, RestoreTest, RestoreTestReport, RestoreTestRequest, display_name},
};
use rustic_core::jiff::Timestamp;

use palisade_events::RunKind;

use crate::{Outcome, commands::Session, config::Job};

/// What `--job` takes to run only the point-in-time recovery test.
const PITR: &str = "pitr";

#[derive(Debug, Args)]
pub struct RestoreTestArgs {
    /// Test only this job's newest snapshot (`pitr`: only the PostgreSQL point-in-time
    /// recovery).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Test this snapshot (id, prefix or `latest`) instead of each job's newest.
    pub snapshot: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Hash only this job's items (pack files are shared and read for every job).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Read this percentage of the data per run, the next part each time: 100 reads everything,
    /// 15 covers it all in 7 runs (default: one seventh).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, conflicts_with = "max_duration")]
    pub read_data_subset: Option<u32>,
    /// Read parts (of 28) until this much time has passed, at least one (as 30m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = crate::schedule::parse_duration)]
    pub max_duration: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Folder for the report (drill-TIME.md and drill-TIME.json); created when missing.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
}

/// A percentage as the number of parts a full rotation takes (10 → 10 parts, 15 → 7).
fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<f64>() {
        Ok(p) if (1.0..=100.0).contains(&p) => Ok((100.0 / p).ceil() as u32),
        _ => Err("give a percentage from 1 to 100, such as 15 or 100".into()),
    }
}

/// One test to run: which repository, which snapshot, with the job's settings.
struct Planned {
    name: String,
    repo: std::rc::Rc<Repo>,
    snapshot: Option<String>,
    job: Option<Job>,
}

/// Runs the restore tests, records the run and prints the report; exit 1 with the first
/// failure in one line.
pub fn restore_test(ctx: &Session, args: &RestoreTestArgs) -> Result<Outcome> {
    let recorder = crate::state::Recorder::new(ctx);
    let run = recorder.start_task(RunKind::RestoreTest, args.job.as_deref().unwrap_or(""));
    let report = run_restore_tests(ctx, args);
    recorder.finish_task(
        run,
        &report,
        |r: &RestoreTestReport| r.failure.clone(),
        |r| Some(r.tests.iter().map(|t| t.bytes_restored).sum()),
    );
    let report = report?;
    ctx.print(&report, report_text)?;
    if let Some(failure) = &report.failure {
        bail!("restore test failed: {failure}");
    }
    Ok(Outcome::Done)
}

fn run_restore_tests(ctx: &Session, args: &RestoreTestArgs) -> Result<RestoreTestReport> {
    let started = Timestamp::now();
    let clock = std::time::Instant::now();
    let (planned, pitr) = plan(ctx, args)?;
    let scratch = proof_scratch(ctx)?;
    let mut tests = Vec::new();
    for (n, test) in planned.iter().enumerate() {
        let dir = scratch.path().join(format!("test-{n}"));
        std::fs::create_dir(&dir)?;
        tests.push(run_one(test, &dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(repo) = pitr {
        let dir = scratch.path().join("pitr");
        std::fs::create_dir(&dir)?;
        let bin_dir = ctx.config.pitr.as_ref().and_then(|p| p.bin_dir.clone());
        tests.push(
            prove::pitr_test(&repo, &dir, bin_dir.as_deref())
                .unwrap_or_else(|err| RestoreTest::failed(PITR, "", &err.to_string())),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(scratch);
    Ok(RestoreTestReport::new(
        started,
        clock.elapsed().as_secs_f64(),
        tests,
    ))
}

/// This run's scratch directory, which the private servers' accounts may pass through (mode
/// 0711: enter, not list) to reach their own 0700 folders inside it.
fn proof_scratch(ctx: &Session) -> Result<crate::scratch::Scratch> {
    use std::os::unix::fs::PermissionsExt;
    let scratch = ctx.scratch()?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(scratch)
}

fn run_one(planned: &Planned, dir: &Path) -> RestoreTest {
    let Some(snapshot) = &planned.snapshot else {
        return RestoreTest::failed(
            &planned.name,
            "",
            &format!(
                "job {} has no snapshot yet; run `palisade backup --job {}` first",
                planned.name, planned.name
            ),
        );
    };
    let job = planned.job.as_ref();
    let request = RestoreTestRequest {
        name: planned.name.clone(),
        snapshot: snapshot.clone(),
        scratch: dir.to_path_buf(),
        assertions: job.map(Job::assertions).unwrap_or_default(),
        pg_bin_dir: job.and_then(|j| j.bin_dir(ItemKind::Postgres)),
        mysql_bin_dir: job.and_then(|j| j.bin_dir(ItemKind::Mysql)),
    };
    prove::restore_test(&planned.repo, &request)
        .unwrap_or_else(|err| RestoreTest::failed(&planned.name, snapshot, &err.to_string()))
}

/// The tests to run, and the repository whose point-in-time recovery to test (if any).
fn plan(
    ctx: &Session,
    args: &RestoreTestArgs,
) -> Result<(Vec<Planned>, Option<std::rc::Rc<Repo>>)> {
    // The default repository, opened only when a test needs it (a job may have its own, and
    // the config no default).
    let opened = std::cell::OnceCell::new();
    let default = || -> Result<std::rc::Rc<Repo>> {
        if let Some(repo) = opened.get() {
            return Ok(std::rc::Rc::clone(repo));
        }
        let repo = std::rc::Rc::new(ctx.open()?);
        let _ = opened.set(repo.clone());
        Ok(repo)
    };
    let only_pitr = args.job.as_deref() == Some(PITR) && ctx.config.job(PITR).is_err();
    let wants_pitr = only_pitr || (args.job.is_none() && args.snapshot.is_none());
    let pitr = match wants_pitr {
        true => {
            let repo = default()?;
            prove::has_base_backup(&repo)?.then_some(repo)
        }
        false => None,
    };
    if only_pitr {
        if pitr.is_none() {
            bail!(
                "the repository holds no PostgreSQL base backup; take one with `palisade pg \
                 base-backup` (docs/pitr.md)"
            );
        }
        return Ok((Vec::new(), pitr));
    }
    if let Some(snapshot) = &args.snapshot {
        let job = args.job.as_deref().map(|n| ctx.config.job(n)).transpose()?;
        return Ok((
            vec![Planned {
                name: job.map_or_else(|| snapshot.clone(), |j| j.name.clone()),
                repo: match job {
                    Some(job) if job.repository.is_some() || job.password_file.is_some() => {
                        std::rc::Rc::new(ctx.open_for(Some(job))?)
                    }
                    _ => default()?,
                },
                snapshot: Some(snapshot.clone()),
                job: job.cloned(),
            }],
            None,
        ));
    }
    let jobs: Vec<&Job> = match &args.job {
        Some(name) => vec![ctx.config.job(name)?],
        None => ctx.config.jobs.iter().collect(),
    };
    if jobs.is_empty() {
        let default = default()?;
        let planned = prove::targets(&default, &[])?
            .into_iter()
            .map(|t| Planned {
                name: t.label.clone(),
                repo: default.clone(),
                snapshot: Some(t.snapshot),
                job: None,
            })
            .collect::<Vec<_>>();
        if planned.is_empty() && pitr.is_none() {
            bail!("the repository holds no snapshot to test; run `palisade backup` first");
        }
        return Ok((planned, pitr));
    }
    let mut planned = Vec::new();
    for job in jobs {
        let repo = match (&job.repository, &job.password_file) {
            (None, None) => default()?,
            _ => std::rc::Rc::new(ctx.open_for(Some(job))?),
        };
        let target = prove::targets(&repo, std::slice::from_ref(&job.name))?;
        planned.push(Planned {
            name: job.name.clone(),
            repo,
            snapshot: target.into_iter().next().map(|t| t.snapshot),
            job: Some(job.clone()),
        });
    }
    Ok((planned, pitr))
}

/// The report for people: one line per test, one per item below it.
fn report_text(report: &RestoreTestReport) -> String {
    let mut lines = Vec::new();
    for test in &report.tests {
        lines.push(format!(
            "{} {}: snapshot {} ({}), {} item(s), {} restored in {:.1} s",
            if test.passed { "PASS" } else { "FAIL" },
            display_name(&test.name),
            short(&test.snapshot),
            test.snapshot_time.get(..19).unwrap_or(&test.snapshot_time),
            test.checks.len(),
            ByteSize(test.bytes_restored).display().iec(),
            test.seconds
        ));
        for check in &test.checks {
            let mut detail = format!("{}, {:.1} s", check.kind, check.seconds);
            if check.tables > 0 {
                detail.push_str(&format!(
                    ", {} table(s), {} row(s)",
                    check.tables, check.rows
                ));
            }
            if check.assertions > 0 {
                detail.push_str(&format!(", {} assertion(s) held", check.assertions));
            }
            lines.push(format!(
                "  {:<4} {}: {detail}",
                if check.passed { "ok" } else { "FAIL" },
                check.item
            ));
            lines.extend(check.problems.iter().map(|p| format!("       {p}")));
        }
        if test.checks.is_empty()
            && let Some(failure) = &test.failure
        {
            lines.push(format!("  {failure}"));
        }
    }
    lines.push(format!(
        "{} of {} restore test(s) passed in {:.1} s",
        report.tests.iter().filter(|t| t.passed).count(),
        report.tests.len(),
        report.seconds
    ));
    lines.join("\n")
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Runs `verify`, records the run and prints its report; exit 1 when anything was found.
pub fn verify(ctx: &Session, args: &VerifyArgs) -> Result<Outcome> {
    let recorder = crate::state::Recorder::new(ctx);
    let run = recorder.start_task(RunKind::Verify, args.job.as_deref().unwrap_or(""));
    let report = run_verify(ctx, args);
    recorder.finish_task(
        run,
        &report,
        |r: &prove::VerifyReport| r.failure.clone(),
        |r| Some(r.bytes),
    );
    let report = report?;
    ctx.print(&report, verify_text)?;
    if let Some(failure) = &report.failure {
        bail!("verify failed: {failure}");
    }
    Ok(Outcome::Done)
}

fn run_verify(ctx: &Session, args: &VerifyArgs) -> Result<prove::VerifyReport> {
    let job = match &args.job {
        Some(name) if !ctx.config.jobs.is_empty() => Some(ctx.config.job(name)?),
        _ => None,
    };
    let amount = match (args.read_data_subset, args.max_duration) {
        (_, Some(limit)) => prove::VerifyAmount::Duration(limit),
        (Some(of), None) => prove::VerifyAmount::Parts { of },
        (None, None) => prove::VerifyAmount::Parts {
            of: prove::DEFAULT_PARTS,
        },
    };
    let Some(state_dir) = state_dir(ctx) else {
        bail!("no state directory: set `state_dir` in the config (or HOME or XDG_STATE_HOME)");
    };
    let repo = ctx.open_for(job)?;
    Ok(prove::verify(
        &repo,
        &prove::VerifyRequest {
            amount,
            label: args.job.clone(),
            state_dir,
        },
    )?)
}

fn verify_text(report: &prove::VerifyReport) -> String {
    let mut lines: Vec<String> = report
        .errors
        .iter()
        .map(|e| format!("error: {e}"))
        .collect();
    lines.extend(report.item_errors.iter().map(|e| format!("error: {e}")));
    lines.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
    let cursor = &report.cursor;
    lines.push(format!(
        "{}: read part(s) {} with the structure check; {} item(s) of {} snapshot(s) hashed ({}); \
         next run reads part {}/{}, {} full rotation(s) so far",
        if report.passed { "verified" } else { "FAILED" },
        report.parts.join(", "),
        report.items,
        report.snapshots,
        ByteSize(report.bytes).display().iec(),
        cursor.next,
        cursor.of,
        cursor.cycles
    ));
    lines.join("\n")
}

/// Where `verify` keeps its cursor: the state directory the run store uses
/// ([`crate::state::state_dir`]).
pub fn state_dir(ctx: &Session) -> Option<PathBuf> {
    crate::state::state_dir(&ctx.config)
}

/// Runs the drill: no cache, no state, only the repository and its key (a config, when there
/// is one, adds assertions). Writes the report files, prints the summary.
pub fn drill(ctx: &Session, args: &DrillArgs) -> Result<Outcome> {
    let clock = std::time::Instant::now();
    let repo = ctx.open()?;
    let open_seconds = clock.elapsed().as_secs_f64();
    let scratch = proof_scratch(ctx)?;
    let mut assertions = std::collections::BTreeMap::new();
    for job in &ctx.config.jobs {
        assertions.insert(job.name.clone(), job.assertions());
    }
    let report = prove::drill(
        &repo,
        &prove::DrillRequest {
            scratch: scratch.path().to_path_buf(),
            open_seconds,
            assertions,
            pg_bin_dir: None,
            mysql_bin_dir: None,
        },
    )?;
    drop(scratch);
    std::fs::create_dir_all(&args.output)?;
    let stamp = report
        .started
        .get(..19)
        .unwrap_or(&report.started)
        .replace(':', "");
    let markdown = args.output.join(format!("drill-{stamp}.md"));
    let json = args.output.join(format!("drill-{stamp}.json"));
    std::fs::write(&markdown, report.markdown())?;
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    ctx.print(&report, |r| {
        let mut lines: Vec<String> = r
            .jobs
            .iter()
            .map(|j| {
                format!(
                    "{} {}: {} item(s), RTO {:.1} s, RPO {}",
                    if j.test.passed { "recovered" } else { "FAILED" },
                    display_name(&j.label),
                    j.items.len(),
                    j.rto_seconds,
                    j.rpo_seconds
                        .map_or_else(|| "none".into(), |s| format!("{s:.0} s"))
                )
            })
            .collect();
        lines.push(format!(
            "report written to {} and {}",
            markdown.display(),
            json.display()
        ));
        lines.join("\n")
    })?;
    if let Some(failure) = &report.failure {
        bail!("drill failed: {failure}");
    }
    Ok(Outcome::Done)
}
