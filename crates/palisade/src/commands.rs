//! Runs each subcommand: resolves repository and password, calls the engine, prints the result
//! for people or as JSON.

use std::{io::Write, path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use palisade_backup::{
    BackupReport, BackupRequest, ChunkerOptions, DbUrl, ForgetGroupReport, ForgetTarget, Location,
    Password, PruneReport, PruneRequest, ReadData, Repo, RestoreRequest, RetentionPolicy,
    SourceSpec,
};
use palisade_events::RunKind;
use rustic_core::ProgressBars;
use serde::Serialize;

use crate::{
    Outcome, bucket,
    cli::{
        BackupArgs, BucketCommand, CheckArgs, Cli, Command, ConfigCommand, ForgetArgs, Global,
        InitArgs, KeyCommand, LsArgs, NewPassword, PruneArgs,
    },
    config::{Config, Job},
    progress, quickstart,
};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<Outcome> {
    let global = cli.global;
    if let Command::Quickstart(args) = &cli.command {
        return quickstart::run(&args.dir, &global);
    }
    if let Command::Config(ConfigCommand::Check) = &cli.command {
        return check_config(&global);
    }
    if let Command::Daemon(_) = &cli.command {
        return crate::daemon::run(&global);
    }
    if let Command::Gateway(args) = &cli.command {
        return crate::gateway::run(&global, args, config_named(&global));
    }
    let config = if global.daemon_child {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Config::parse(&text, &global.config)?
    } else {
        Config::load(&global.config, config_named(&global))?
    };
    let ctx = Session::new(global, config);
    match cli.command {
        Command::Init(args) => ctx.init(&args),
        Command::Backup(args) => ctx.backup(args),
        Command::Snapshots => ctx.snapshots(),
        Command::Ls(args) => ctx.ls(&args),
        Command::Restore(args) => ctx.restore(args),
        Command::Check(args) => ctx.check(&args),
        Command::RestoreTest(args) => crate::prove::restore_test(&ctx, &args),
        Command::Verify(args) => crate::prove::verify(&ctx, &args),
        Command::Drill(args) => crate::prove::drill(&ctx, &args),
        Command::Forget(args) => ctx.forget(&args),
        Command::Prune(args) => ctx.prune(&args),
        Command::Stats => ctx.stats(),
        Command::Key(command) => ctx.key(command),
        Command::Bucket(command) => ctx.bucket(command),
        Command::Pg(command) => crate::pg::run(&ctx, command),
        Command::Schedule(args) => crate::schedule::show(&ctx, &args),
        Command::Runs(args) => crate::state::show(&ctx, &args),
        Command::Alert(command) => crate::alerting::run(&ctx, command),
        Command::Quickstart(_) | Command::Config(_) | Command::Daemon(_) | Command::Gateway(_) => {
            unreachable!("handled above")
        }
    }
}

/// `config check`: the file must exist; every mistake is reported with its line.
fn check_config(global: &Global) -> Result<Outcome> {
    let config = Config::load(&global.config, true)?;
    crate::alerting::check_reachable(&global.config, &config)?;
    if let Some(gateway) = &config.gateway {
        crate::gateway::check(gateway)?;
    }
    #[derive(Serialize)]
    struct Summary<'a> {
        config: String,
        valid: bool,
        repository: Option<&'a str>,
        jobs: Vec<&'a str>,
        jobs_with_retention: Vec<&'a str>,
        tasks: Vec<String>,
        bucket_section: bool,
        gateway_section: bool,
    }
    let summary = Summary {
        config: global.config.display().to_string(),
        valid: true,
        repository: config.repository_location(),
        jobs: config.jobs.iter().map(|job| job.name.as_str()).collect(),
        jobs_with_retention: config
            .jobs
            .iter()
            .filter(|job| job.policy.is_some())
            .map(|job| job.name.as_str())
            .collect(),
        tasks: config.tasks.iter().map(|task| task.name()).collect(),
        bucket_section: config.bucket.is_some(),
        gateway_section: config.gateway.is_some(),
    };
    if global.json {
        print_json(&summary)?;
    } else if !global.quiet {
        println!(
            "{} is valid: repository {}, {} job(s) ({} with retention), {} task(s){}{}",
            summary.config,
            summary.repository.unwrap_or("(none)"),
            summary.jobs.len(),
            summary.jobs_with_retention.len(),
            summary.tasks.len(),
            if summary.bucket_section {
                ", [bucket] settings"
            } else {
                ""
            },
            if summary.gateway_section {
                ", [gateway] settings"
            } else {
                ""
            }
        );
    }
    Ok(Outcome::Done)
}

/// A config file given explicitly must exist; the default `palisade.toml` is optional.
fn config_named(global: &Global) -> bool {
    global.config != std::path::Path::new("palisade.toml")
}

pub(crate) struct Session {
    pub(crate) global: Global,
    pub(crate) config: Config,
    pub(crate) bars: Arc<dyn ProgressBars>,
}

impl Session {
    fn new(global: Global, config: Config) -> Self {
        let bars = progress::bars(global.quiet, global.json);
        Self {
            global,
            config,
            bars,
        }
    }

    /// The repository location: `--repo`, then the job's, then the config's.
    pub(crate) fn location(&self, job_repo: Option<&str>) -> Result<Location> {
        let text = self
            .global
            .repo
            .as_deref()
            .or(job_repo)
            .or(self.config.repository_location())
            .context(
                "no repository given: pass --repo DIR, set PALISADE_REPOSITORY, or set \
                 `repository` in palisade.toml",
            )?;
        let mut location = Location::parse(text)?;
        if let Location::S3(s3) = &mut location {
            s3.options = self.config.s3_options();
        }
        Ok(location)
    }

    /// The password: `--password-file`, then PALISADE_PASSWORD, then the config's file.
    pub(crate) fn password(&self, job_file: Option<&PathBuf>) -> Result<Password> {
        if let Some(path) = &self.global.password_file {
            return read_password_file(path);
        }
        if let Ok(text) = std::env::var("PALISADE_PASSWORD") {
            return Ok(Password::new(text)?);
        }
        match job_file.or(self.config.password_file.as_ref()) {
            Some(path) => read_password_file(path),
            None => bail!(
                "no password given: pass --password-file FILE, set PALISADE_PASSWORD, or set \
                 `password_file` in palisade.toml"
            ),
        }
    }

    pub(crate) fn open(&self) -> Result<Repo> {
        self.open_for(None)
    }

    /// The repository of `job` (its own, or the default one).
    pub(crate) fn open_for(&self, job: Option<&Job>) -> Result<Repo> {
        Ok(Repo::open(
            self.location(job.and_then(|j| j.repository.as_deref()))?,
            self.password(job.and_then(|j| j.password_file.as_ref()))?,
            self.bars.clone(),
        )?)
    }

    fn bucket(&self, command: BucketCommand) -> Result<Outcome> {
        let location = self.location(None)?;
        let spec = self.config.bucket.clone().unwrap_or_default();
        let (json, quiet) = (self.global.json, self.global.quiet);
        match command {
            BucketCommand::Setup => bucket::setup(location, &spec, json, quiet),
            BucketCommand::Check => bucket::check(location, &spec, json, quiet),
            BucketCommand::Policy { role } => bucket::policy(location, &role),
        }
    }

    fn init(&self, args: &InitArgs) -> Result<Outcome> {
        let defaults = ChunkerOptions::default();
        let chunker = ChunkerOptions {
            average: args.chunk_size.unwrap_or(defaults.average),
            min: args.chunk_min_size.unwrap_or(defaults.min),
            max: args.chunk_max_size.unwrap_or(defaults.max),
            compression: args.compression.unwrap_or(defaults.compression),
        };
        let location = self.location(None)?;
        let repo = Repo::init(
            location.clone(),
            self.password(None)?,
            chunker,
            self.bars.clone(),
        )?;
        #[derive(Serialize)]
        struct Created {
            id: String,
            repository: String,
        }
        self.print(
            &Created {
                id: repo.id(),
                repository: location.to_string(),
            },
            |c| format!("created repository {} at {}", c.id, c.repository),
        )
    }

    fn backup(&self, args: BackupArgs) -> Result<Outcome> {
        let ad_hoc = ad_hoc_sources(&args)?;
        if !ad_hoc.is_empty() {
            let repo = self.open()?;
            let stream = args.stdin.then_some(palisade_backup::Stream::Stdin);
            let scratch = self.scratch()?;
            let mut request = self.request(ad_hoc, stream, None, &args.tag, scratch.path());
            request.time = args.time;
            let report = palisade_backup::backup(&repo, request)?;
            return self.report_backups(&[report]);
        }
        let jobs: Vec<_> = match &args.job {
            Some(_) if self.config.jobs.is_empty() => bail!(
                "no jobs to choose from: {} does not exist or defines no [[jobs]]; see the \
                 README's config file section",
                self.global.config.display()
            ),
            Some(name) => vec![self.config.job(name)?.clone()],
            None if self.config.jobs.is_empty() => bail!(
                "nothing to back up: pass --sqlite FILE, --dir DIR, --postgres URL, --mysql URL \
                 or --stdin --name NAME, or define [[jobs]] in {}",
                self.global.config.display()
            ),
            None => self.config.jobs.clone(),
        };
        let scratch = self.scratch()?;
        let mut reports = Vec::new();
        let mut failures = Vec::new();
        let recorder = crate::state::Recorder::new(self);
        let mut busy = Vec::new();
        for job in &jobs {
            let Ok(_lock) = crate::state::RunLock::job(&self.config, &job.name) else {
                eprintln!(
                    "palisade: job {}: already running (the daemon or another `palisade \
                     backup` is backing it up); skipped",
                    job.name
                );
                busy.push(job.name.clone());
                continue;
            };
            let run = recorder.start(&job.name);
            let outcome = (|| -> Result<BackupReport> {
                let location = self.location(job.repository.as_deref())?;
                let _shared = crate::state::RunLock::repository(&self.config, &location, false);
                let repo = Repo::open(
                    location,
                    self.password(job.password_file.as_ref())?,
                    self.bars.clone(),
                )?;
                let mut tags = job.tags.clone();
                tags.extend(args.tag.iter().cloned());
                let mut request = self.request(
                    job.specs()?,
                    None,
                    Some(job.name.clone()),
                    &tags,
                    scratch.path(),
                );
                request.time = args.time;
                Ok(palisade_backup::backup(&repo, request)?)
            })();
            recorder.finish(run, &outcome);
            match outcome {
                Ok(report) => reports.push(report),
                Err(err) => {
                    eprintln!("palisade: job {}: {}", job.name, crate::render(&err));
                    failures.push(job.name.clone());
                }
            }
        }
        let outcome = self.report_backups(&reports)?;
        if self.global.daemon_child && !busy.is_empty() && failures.is_empty() {
            return Ok(Outcome::Busy);
        }
        failures.extend(busy);
        if !failures.is_empty() {
            bail!(
                "{} of {} job(s) failed: {}",
                failures.len(),
                jobs.len(),
                failures.join(", ")
            );
        }
        Ok(outcome)
    }

    fn request(
        &self,
        sources: Vec<SourceSpec>,
        stream: Option<palisade_backup::Stream>,
        job: Option<String>,
        tags: &[String],
        scratch: &std::path::Path,
    ) -> BackupRequest {
        BackupRequest {
            sources,
            stream,
            job,
            tags: tags.to_vec(),
            temp_dir: scratch.to_path_buf(),
            time: None,
        }
    }

    /// This run's scratch directory under `temp_dir` (default: the system's).
    pub(crate) fn scratch(&self) -> Result<crate::scratch::Scratch> {
        let root = self
            .config
            .temp_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        crate::scratch::Scratch::new(&root)
    }

    fn report_backups(&self, reports: &[BackupReport]) -> Result<Outcome> {
        let partial = reports.iter().any(BackupReport::is_partial);
        if self.global.json {
            print_json(&reports)?;
        }
        for report in reports {
            if !self.global.json && !self.global.quiet {
                println!(
                    "snapshot {} saved: {} item(s), {} file(s), {} read, {} added",
                    &report.snapshot[..report.snapshot.len().min(8)],
                    report.catalog.items.len(),
                    report.files,
                    ByteSize(report.bytes_read).display().iec(),
                    ByteSize(report.bytes_added).display().iec(),
                );
            }
            for item in &report.catalog.items {
                if !self.global.json && !self.global.quiet {
                    println!("  {}", item_line(item));
                }
                if item.kind == palisade_backup::ItemKind::Stream && item.size == 0 {
                    eprintln!(
                        "palisade: warning: the stream {} was empty (0 bytes); check that the \
                         command before `|` wrote its output to the pipe",
                        item.path
                    );
                }
                for skip in &item.skipped {
                    eprintln!(
                        "palisade: skipped {}/{}: {}",
                        item.path, skip.path, skip.reason
                    );
                }
            }
        }
        if partial {
            eprintln!("palisade: some files could not be read and were left out (exit code 3)");
            return Ok(Outcome::Partial);
        }
        Ok(Outcome::Done)
    }

    fn snapshots(&self) -> Result<Outcome> {
        let snaps = palisade_backup::snapshots(&self.open()?)?;
        self.list(&snaps, |snaps| {
            let mut out = format!(
                "{:<8}  {:<19}  {:<12}  {:<10}  {:>10}  paths\n",
                "id", "time", "host", "job", "size"
            );
            for s in snaps {
                out.push_str(&format!(
                    "{:<8}  {:<19}  {:<12}  {:<10}  {:>10}  {}\n",
                    s.short_id,
                    s.time.get(..19).unwrap_or(&s.time).replace('T', " "),
                    s.hostname,
                    s.label,
                    ByteSize(s.bytes).display().iec().to_string(),
                    s.paths.join(", ")
                ));
            }
            out.push_str(&format!("{} snapshot(s)", snaps.len()));
            out
        })
    }

    fn ls(&self, args: &LsArgs) -> Result<Outcome> {
        let repo = self.open()?;
        if args.tree {
            let entries = palisade_backup::tree(&repo, &args.snapshot)?;
            return self.list(&entries, |entries| {
                entries
                    .iter()
                    .map(|e| format!("{:<8} {:>12}  {}", e.kind, e.size, e.path))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        let catalog = palisade_backup::catalog(&repo, &args.snapshot)?;
        self.list(&catalog, |catalog| {
            let mut out = String::new();
            for item in &catalog.items {
                let detail = match &item.tables {
                    Some(tables) => format!(
                        "{} table(s), {} row(s)",
                        tables.len(),
                        tables.values().sum::<u64>()
                    ),
                    None => format!("{} file(s)", item.files),
                };
                out.push_str(&format!(
                    "{:<9} {:>10}  {}  {:<40} {}\n",
                    format!("{:?}", item.kind).to_lowercase(),
                    ByteSize(item.size).display().iec().to_string(),
                    &item.sha256[..item.sha256.len().min(12)],
                    item.path,
                    detail
                ));
            }
            out.trim_end().to_string()
        })
    }

    fn restore(&self, args: crate::cli::RestoreArgs) -> Result<Outcome> {
        if args.postgres.is_some() || args.mysql.is_some() {
            return self.restore_database(args);
        }
        if args.database.is_some() || args.rename.is_some() || args.clean {
            bail!(
                "--database, --as and --clean restore into a database server; add --postgres URL \
                 or --mysql URL (or use --target DIR and --include ITEM for files)"
            );
        }
        let repo = self.open()?;
        let report = palisade_backup::restore(
            &repo,
            &RestoreRequest {
                snapshot: args.snapshot,
                target: args.target.expect("clap requires --target here"),
                include: args.include,
                overwrite: args.overwrite,
            },
        )?;
        self.print(&report, |r| {
            let verified = r.items.iter().filter(|i| i.verified == Some(true)).count();
            format!(
                "restored snapshot {} to {}: {} file(s), {}; {} item(s) verified against the catalog",
                &r.snapshot[..8.min(r.snapshot.len())],
                r.target.display(),
                r.files,
                ByteSize(r.bytes).display().iec(),
                verified
            )
        })
    }

    fn restore_database(&self, args: crate::cli::RestoreArgs) -> Result<Outcome> {
        if !args.include.is_empty() || args.overwrite {
            bail!(
                "--include and --overwrite apply to --target restores; choose a database with --database"
            );
        }
        let repo = self.open()?;
        let scratch = self.scratch()?;
        let report = if let Some(url) = &args.postgres {
            palisade_backup::postgres::restore(
                &repo,
                &palisade_backup::PostgresRestore {
                    snapshot: args.snapshot,
                    url: DbUrl::parse(url, palisade_backup::postgres::SCHEMES)?,
                    database: args.database,
                    rename: args.rename,
                    clean: args.clean,
                    no_owner: args.no_owner,
                    globals: args.globals,
                    bin_dir: None,
                },
            )?
        } else {
            palisade_backup::mysql::restore(
                &repo,
                &palisade_backup::MysqlRestore {
                    snapshot: args.snapshot,
                    url: DbUrl::parse(
                        args.mysql.as_deref().unwrap_or_default(),
                        palisade_backup::mysql::SCHEMES,
                    )?,
                    database: args.database,
                    rename: args.rename,
                    clean: args.clean,
                    bin_dir: None,
                    temp_dir: Some(scratch.path().to_path_buf()),
                },
            )?
        };
        if !self.global.json {
            for warning in &report.warnings {
                eprintln!("palisade: warning: {warning}");
            }
        }
        self.print(&report, |r| {
            let mut out = String::new();
            for db in &r.databases {
                out.push_str(&format!(
                    "restored database {} as {}: {}, {} table(s), {} row(s), row counts match the catalog\n",
                    db.database,
                    db.target,
                    ByteSize(db.bytes).display().iec(),
                    db.tables,
                    db.rows
                ));
            }
            out.push_str(&format!(
                "restored snapshot {} into {}",
                &r.snapshot[..8.min(r.snapshot.len())],
                r.server
            ));
            out
        })
    }

    fn check(&self, args: &CheckArgs) -> Result<Outcome> {
        let read = match (args.read_data, args.read_data_subset) {
            (true, _) => ReadData::All,
            (false, Some(subset)) => subset,
            (false, None) => ReadData::None,
        };
        let report = palisade_backup::check(&self.open()?, read)?;
        if self.global.json {
            print_json(&report)?;
        } else {
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            for error in &report.errors {
                eprintln!("error: {error}");
            }
            if report.is_ok() && !self.global.quiet {
                println!("no errors were found");
            }
        }
        if !report.is_ok() {
            bail!(
                "check found {} error(s) in the repository",
                report.errors.len()
            );
        }
        Ok(Outcome::Done)
    }

    /// `forget`: the targets' decisions, repository by repository (jobs may have their own), then
    /// with `--prune` a prune of each. A repository that fails does not stop the others.
    fn forget(&self, args: &ForgetArgs) -> Result<Outcome> {
        let runs = self.forget_runs(args.job.as_deref(), args.keep.policy())?;
        let mut output = ForgetOutput {
            dry_run: args.dry_run,
            removed: 0,
            groups: Vec::new(),
            prune: Vec::new(),
        };
        let mut failures = Vec::new();
        for run in &runs {
            let repository = run.location.to_string();
            let outcome = (|| -> Result<()> {
                let repo = Repo::open(
                    run.location.clone(),
                    self.password(run.password_file.as_ref())?,
                    self.bars.clone(),
                )?;
                let report = palisade_backup::forget(&repo, &run.targets, args.dry_run)?;
                // A dry run prunes as if the snapshots it would remove were gone.
                let request = PruneRequest {
                    dry_run: args.dry_run,
                    keep_delete: args
                        .danger_keep_delete
                        .unwrap_or(palisade_backup::KEEP_DELETE),
                    forgotten: report.removed_ids(),
                };
                output.removed += report.removed;
                output
                    .groups
                    .extend(report.groups.into_iter().map(|group| RepositoryGroup {
                        repository: repository.clone(),
                        group,
                    }));
                if args.prune {
                    let _exclusive = (!args.dry_run).then(|| {
                        crate::state::RunLock::repository(&self.config, &run.location, true)
                    });
                    let report = palisade_backup::prune(&repo, &request)?;
                    output.prune.push(RepositoryPrune {
                        repository: repository.clone(),
                        report,
                    });
                }
                Ok(())
            })();
            if let Err(err) = outcome {
                eprintln!("palisade: {repository}: {}", crate::render(&err));
                failures.push(repository);
            }
        }
        self.print(&output, forget_text)?;
        if !failures.is_empty() {
            bail!(
                "{} of {} repositories failed: {}",
                failures.len(),
                runs.len(),
                failures.join(", ")
            );
        }
        Ok(Outcome::Done)
    }

    /// Whose snapshots `forget` decides about and by which rules, grouped by repository.
    fn forget_runs(
        &self,
        job: Option<&str>,
        flags: Option<RetentionPolicy>,
    ) -> Result<Vec<ForgetRun>> {
        let mut runs: Vec<ForgetRun> = Vec::new();
        for (job, target) in self.forget_targets(job, flags)? {
            let location = self.location(job.and_then(|job| job.repository.as_deref()))?;
            let password_file = job.and_then(|job| job.password_file.clone());
            let same = |run: &&mut ForgetRun| {
                run.location.to_string() == location.to_string()
                    && run.password_file == password_file
            };
            match runs.iter_mut().find(same) {
                Some(run) => run.targets.push(target),
                None => runs.push(ForgetRun {
                    location,
                    password_file,
                    targets: vec![target],
                }),
            }
        }
        Ok(runs)
    }

    /// Each job `forget` decides about, with its rules. Flags replace a job's table; without
    /// `--job` they apply to every label of a repository whose config has no jobs. Without
    /// flags, every job with a `retention` table.
    fn forget_targets(
        &self,
        job: Option<&str>,
        flags: Option<RetentionPolicy>,
    ) -> Result<Vec<(Option<&Job>, ForgetTarget)>> {
        let config = self.global.config.display();
        let jobs = &self.config.jobs;
        let targets = match (job, flags) {
            (Some(name), Some(policy)) => {
                let job = if jobs.is_empty() {
                    None
                } else {
                    Some(self.config.job(name)?)
                };
                let target = ForgetTarget {
                    job: Some(name.to_string()),
                    policy,
                };
                vec![(job, target)]
            }
            (Some(name), None) => {
                let job = self.config.job(name)?;
                let Some(policy) = job.policy.clone() else {
                    bail!(
                        "job `{name}` has no retention table in {config}, so forget keeps all \
                         its snapshots; add one (`retention = {{ keep-daily = 7 }}` in the job) \
                         or pass --keep-* flags"
                    );
                };
                let target = ForgetTarget {
                    job: Some(name.to_string()),
                    policy,
                };
                vec![(Some(job), target)]
            }
            (None, Some(policy)) if jobs.is_empty() => {
                vec![(None, ForgetTarget { job: None, policy })]
            }
            (None, Some(_)) => bail!(
                "the --keep-* flags replace one job's retention: pass --job NAME (jobs in \
                 {config}: {})",
                jobs.iter()
                    .map(|job| job.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, None) => {
                let targets: Vec<_> = jobs
                    .iter()
                    .filter_map(|job| {
                        let policy = job.policy.clone()?;
                        let target = ForgetTarget {
                            job: Some(job.name.clone()),
                            policy,
                        };
                        Some((Some(job), target))
                    })
                    .collect();
                if targets.is_empty() {
                    bail!(
                        "no retention to apply: no job in {config} has a retention table; add \
                         one (`retention = {{ keep-daily = 7 }}` in a [[jobs]] entry, see \
                         docs/retention.md) or pass --keep-* flags"
                    );
                }
                targets
            }
        };
        Ok(targets)
    }

    fn prune(&self, args: &PruneArgs) -> Result<Outcome> {
        let recorder = crate::state::Recorder::new(self);
        // A dry run changes nothing, and is not a run to remember.
        let run = (!args.dry_run)
            .then(|| recorder.start_task(RunKind::Prune, args.job.as_deref().unwrap_or("")))
            .flatten();
        let report = (|| -> Result<PruneReport> {
            let job = args
                .job
                .as_deref()
                .map(|n| self.config.job(n))
                .transpose()?;
            let request = PruneRequest {
                dry_run: args.dry_run,
                keep_delete: args
                    .danger_keep_delete
                    .unwrap_or(palisade_backup::KEEP_DELETE),
                forgotten: Vec::new(),
            };
            let location = self.location(job.and_then(|j| j.repository.as_deref()))?;
            // A dry run marks nothing, and needs no lock.
            let _exclusive = (!args.dry_run)
                .then(|| crate::state::RunLock::repository(&self.config, &location, true));
            Ok(palisade_backup::prune(&self.open_for(job)?, &request)?)
        })();
        recorder.finish_task(run, &report, |_| None, |_| None);
        self.print(&report?, |r| prune_text(r).join("\n"))
    }

    fn stats(&self) -> Result<Outcome> {
        let stats = palisade_backup::stats(&self.open()?)?;
        self.list(&stats, |s| {
            format!(
                "snapshots:          {}\ntotal restore size: {}\nunique data:        {}\n\
                 stored (packs):     {}\nstored (all files): {}\ndata blobs:         {}\n\
                 tree blobs:         {}\nrestore size/stored: {:.2}x (deduplication and compression)",
                s.snapshots,
                ByteSize(s.total_restore_size).display().iec(),
                ByteSize(s.unique_data).display().iec(),
                ByteSize(s.stored).display().iec(),
                ByteSize(s.stored_total).display().iec(),
                s.data_blobs,
                s.tree_blobs,
                s.dedup_ratio
            )
        })
    }

    fn key(&self, command: KeyCommand) -> Result<Outcome> {
        let repo = self.open()?;
        #[derive(Serialize)]
        struct KeyId {
            id: String,
        }
        match command {
            KeyCommand::List => self.list(&repo.keys()?, |keys| {
                keys.iter()
                    .map(|k| {
                        format!(
                            "{} {:<8}  {:<10}  {:<12}  {}",
                            if k.current { "*" } else { " " },
                            &k.id[..8.min(k.id.len())],
                            k.username,
                            k.hostname,
                            k.created
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            KeyCommand::Add(new) => {
                let id = repo.add_key(&new_password(&new)?)?;
                self.print(&KeyId { id }, |k| format!("added key {}", k.id))
            }
            KeyCommand::Remove { id } => {
                let id = repo.remove_key(&id)?;
                self.print(&KeyId { id }, |k| format!("removed key {}", k.id))
            }
            KeyCommand::Passwd(new) => {
                let id = repo.change_password(&new_password(&new)?)?;
                self.print(&KeyId { id }, |k| {
                    format!(
                        "password changed; the repository now opens with key {}",
                        k.id
                    )
                })
            }
        }
    }

    /// Prints a command's report as JSON with `--json`, else as `human` renders it (nothing
    /// with `-q`).
    pub(crate) fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T) -> String,
    ) -> Result<Outcome> {
        if self.global.json {
            print_json(value)?;
        } else if !self.global.quiet {
            println!("{}", human(value));
        }
        Ok(Outcome::Done)
    }

    /// Prints what a listing command was asked for; `-q` does not hide it.
    pub(crate) fn list<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T) -> String,
    ) -> Result<Outcome> {
        if self.global.json {
            print_json(value)?;
        } else {
            println!("{}", human(value));
        }
        Ok(Outcome::Done)
    }
}

/// The snapshots of one repository that `forget` decides about.
struct ForgetRun {
    location: Location,
    password_file: Option<PathBuf>,
    targets: Vec<ForgetTarget>,
}

/// What `forget --json` prints.
#[derive(Serialize)]
struct ForgetOutput {
    dry_run: bool,
    /// Snapshots removed (in a dry run: that would be).
    removed: usize,
    groups: Vec<RepositoryGroup>,
    /// One report per repository, with `--prune`.
    prune: Vec<RepositoryPrune>,
}

#[derive(Serialize)]
struct RepositoryGroup {
    repository: String,
    #[serde(flatten)]
    group: ForgetGroupReport,
}

#[derive(Serialize)]
struct RepositoryPrune {
    repository: String,
    #[serde(flatten)]
    report: PruneReport,
}

/// Each group with every snapshot, KEEP or REMOVE and the reasons, newest first.
fn forget_text(output: &ForgetOutput) -> String {
    let mut lines = Vec::new();
    for RepositoryGroup { repository, group } in &output.groups {
        let kept = group.snapshots.iter().filter(|s| s.keep).count();
        let job = if group.job.is_empty() {
            "snapshots without a job".to_string()
        } else {
            format!("job {}", group.job)
        };
        lines.push(format!(
            "{job} in {repository} ({}): {} snapshot(s), {kept} kept, {} removed",
            group.policy,
            group.snapshots.len(),
            group.snapshots.len() - kept
        ));
        for snap in &group.snapshots {
            let line = format!(
                "  {:<6}  {}  {}  {}",
                if snap.keep { "KEEP" } else { "REMOVE" },
                snap.short_id,
                snap.time.get(..19).unwrap_or(&snap.time).replace('T', " "),
                snap.reasons.join(", ")
            );
            lines.push(line.trim_end().to_string());
        }
    }
    lines.push(if output.dry_run {
        format!(
            "dry run: {} snapshot(s) would be removed; nothing was changed",
            output.removed
        )
    } else {
        format!("removed {} snapshot(s)", output.removed)
    });
    for RepositoryPrune { repository, report } in &output.prune {
        lines.push(format!("prune {repository}:"));
        lines.extend(
            prune_text(report)
                .into_iter()
                .map(|line| format!("  {line}")),
        );
    }
    lines.join("\n")
}

/// A prune report in a few lines: what was deleted, marked and repacked, what waits, and what
/// object lock kept.
fn prune_text(report: &PruneReport) -> Vec<String> {
    let size = |bytes: u64| ByteSize(bytes).display().iec().to_string();
    let (deleted, marked, repacked) = if report.dry_run {
        ("would delete", "would mark", "would repack")
    } else {
        ("deleted", "marked", "repacked")
    };
    let mut lines = vec![
        format!(
            "{deleted} {} pack(s) ({}) marked by an earlier prune at least {} ago",
            report.packs_deleted,
            size(report.bytes_deleted),
            report.keep_delete
        ),
        format!(
            "{marked} {} unused pack(s) for deletion ({} unused), {repacked} {} pack(s) ({})",
            report.packs_marked,
            size(report.bytes_marked),
            report.packs_repacked,
            size(report.bytes_repacked)
        ),
    ];
    if report.packs_waiting > 0 || report.packs_unindexed > 0 || report.packs_recovered > 0 {
        lines.push(format!(
            "{} marked pack(s) wait until {} have passed; {} pack file(s) no index names were \
             marked; {} marked pack(s) were needed again and recovered",
            report.packs_waiting,
            report.keep_delete,
            report.packs_unindexed,
            report.packs_recovered
        ));
    }
    lines.extend(
        report
            .locked
            .iter()
            .map(|note| format!("object lock: {note}")),
    );
    if report.dry_run {
        lines.push("dry run: nothing was changed".into());
    }
    lines
}

/// One line about a stored item: its path, size, and what the catalog knows of it.
fn item_line(item: &palisade_backup::CatalogItem) -> String {
    let mut line = format!(
        "{}: {}, sha256 {}",
        item.path,
        ByteSize(item.size).display().iec(),
        &item.sha256[..item.sha256.len().min(12)]
    );
    if item.files != 1 || item.kind == palisade_backup::ItemKind::Directory {
        line.push_str(&format!(", {} file(s)", item.files));
    }
    if let Some(tables) = &item.tables {
        let rows: u64 = tables.values().sum();
        line.push_str(&format!(", {} table(s), {rows} row(s)", tables.len()));
    }
    line
}

fn ad_hoc_sources(args: &BackupArgs) -> Result<Vec<SourceSpec>> {
    if !args.database.is_empty() && args.postgres.is_none() && args.mysql.is_none() {
        bail!("--database chooses databases of a --postgres or --mysql server; add one");
    }
    let mut specs: Vec<SourceSpec> = args
        .sqlite
        .iter()
        .map(|path| SourceSpec::Sqlite {
            path: path.clone(),
            name: None,
        })
        .collect();
    specs.extend(args.dir.iter().map(|path| SourceSpec::Directory {
        path: path.clone(),
        name: None,
        exclude: args.exclude.clone(),
    }));
    if let (true, Some(name)) = (args.stdin, &args.name) {
        specs.push(SourceSpec::Stream { name: name.clone() });
    }
    if let Some(url) = &args.postgres {
        specs.push(SourceSpec::Postgres(palisade_backup::PostgresSource {
            url: DbUrl::parse(url, palisade_backup::postgres::SCHEMES)?,
            databases: args.database.clone(),
            globals: !args.no_globals,
            bin_dir: None,
        }));
    }
    if let Some(url) = &args.mysql {
        specs.push(SourceSpec::Mysql(palisade_backup::MysqlSource {
            url: DbUrl::parse(url, palisade_backup::mysql::SCHEMES)?,
            databases: args.database.clone(),
            bin_dir: None,
        }));
    }
    Ok(specs)
}

fn read_password_file(path: &std::path::Path) -> Result<Password> {
    Password::from_file(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))
}

fn new_password(args: &NewPassword) -> Result<Password> {
    if let Some(path) = &args.new_password_file {
        return read_password_file(path);
    }
    match std::env::var("PALISADE_NEW_PASSWORD") {
        Ok(text) => Ok(Password::new(text)?),
        Err(_) => bail!(
            "no new password given: pass --new-password-file FILE or set PALISADE_NEW_PASSWORD"
        ),
    }
}

pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
