//! The command line: global options and one subcommand per task, named as restic names them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use palisade_backup::{RetentionPolicy, Within};
use rustic_core::jiff::{SignedDuration, Timestamp};

/// Encrypted, deduplicated, verified backups of a web application's data, in restic's
/// repository format.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success, 1 failure, 2 bad usage, 3 partial (some files \
                  could not be read and were left out), 128+N stopped by signal N (130 for \
                  Ctrl-C)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Repository location: a directory, or s3:https://HOST/BUCKET/PREFIX or s3:BUCKET/PREFIX
    /// (AWS); overrides the config file.
    #[arg(long, short = 'r', global = true, env = "PALISADE_REPOSITORY")]
    pub repo: Option<String>,

    /// File whose first line is the repository password (PALISADE_PASSWORD_FILE also works;
    /// PALISADE_PASSWORD holds the password itself).
    #[arg(long, global = true, env = "PALISADE_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// Config file; read when it exists.
    #[arg(
        long,
        global = true,
        default_value = "palisade.toml",
        env = "PALISADE_CONFIG"
    )]
    pub config: PathBuf,

    /// Print machine-readable JSON on standard output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only errors and what a listing command (snapshots, ls, stats, key list) was asked
    /// for.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print more about what happens (twice for debugging output).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Set by `palisade daemon` for its child processes: the config text comes on standard
    /// input, and the daemon records the run.
    #[arg(long, global = true, hide = true)]
    pub daemon_child: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up databases, directories or a stream into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots,
    /// List the items of a snapshot (or, with --tree, every entry).
    Ls(LsArgs),
    /// Restore a snapshot into a directory and verify it against its catalog.
    Restore(RestoreArgs),
    /// Check the repository's structure and, optionally, re-read its data.
    Check(CheckArgs),
    /// Restore each job's newest snapshot into a scratch directory with private database
    /// servers and check it: hashes, integrity, row counts, assertions, PITR (docs/proof.md).
    RestoreTest(crate::prove::RestoreTestArgs),
    /// Check the repository's structure and re-read a rotating part of its data, hashing every
    /// item against its catalog; successive runs cover everything (docs/proof.md).
    Verify(crate::prove::VerifyArgs),
    /// Rehearse a recovery from only the repository and its key: list what can be recovered,
    /// restore and check every job's newest snapshot, write a report with RTO and RPO.
    Drill(crate::prove::DrillArgs),
    /// Remove the snapshots no retention rule keeps, each job by its own rules (docs/retention.md).
    Forget(ForgetArgs),
    /// Remove data no snapshot needs: unused packs are marked, and deleted by a prune 23 hours or
    /// more later.
    Prune(PruneArgs),
    /// Show repository sizes and deduplication.
    Stats,
    /// Manage the repository's keys (passwords).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Set up, audit or print IAM policies for the repository's S3 bucket.
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Validate the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// PostgreSQL point-in-time recovery: WAL archive, base backups, restores to a time or LSN.
    #[command(subcommand)]
    Pg(crate::pg::PgCommand),
    /// Try Palisade on a demo application: back up, restore and verify, with no server needed.
    Quickstart(QuickstartArgs),
    /// Run every job on its schedule; record runs, send alerts, serve metrics (docs/daemon.md).
    Daemon(crate::daemon::DaemonArgs),
    /// List the next scheduled runs of each job and task.
    Schedule(crate::schedule::ScheduleArgs),
    /// Show the recorded runs (backups, prunes, verifies, restore tests), newest first.
    Runs(crate::state::RunsArgs),
    /// Alert channels (docs/alerts.md).
    #[command(subcommand)]
    Alert(crate::alerting::AlertCommand),
    /// Run the hardening gateway in front of a web application: TLS, HTTPS redirect, security
    /// headers, strict parsing and limits (docs/gateway.md).
    Gateway(crate::gateway::GatewayArgs),
}

#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Create the bucket (or adopt an existing one) and apply the [bucket] settings: default
    /// encryption, versioning, public access block, TLS-only policy, lifecycle rules and
    /// object lock. Running it again changes nothing.
    Setup,
    /// Compare the bucket's settings with [bucket] (ok / drift / missing); exit 1 on any drift.
    Check,
    /// Print a least-privilege IAM policy for one role.
    Policy {
        /// writer (the application host: put and read, never delete), pruner (also deletes
        /// old objects) or admin (also runs `bucket setup`).
        #[arg(long, value_name = "ROLE", value_parser = ["writer", "pruner", "admin"])]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read the whole config file and report the first mistake with its line.
    Check,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Average chunk size in bytes (a power of two).
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
    /// Smallest chunk in bytes.
    #[arg(long, value_name = "BYTES")]
    pub chunk_min_size: Option<u64>,
    /// Largest chunk in bytes.
    #[arg(long, value_name = "BYTES")]
    pub chunk_max_size: Option<u64>,
    /// zstd compression level, 1 to 22 (higher is smaller and slower).
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression: Option<i32>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// SQLite database to copy online (repeatable).
    #[arg(long, value_name = "FILE")]
    pub sqlite: Vec<PathBuf>,
    /// Directory to back up (repeatable).
    #[arg(long, value_name = "DIR")]
    pub dir: Vec<PathBuf>,
    /// Glob of paths to leave out of --dir directories (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// PostgreSQL server to dump: postgresql://USER@HOST:PORT/DB or
    /// postgresql:///DB?host=/run/postgresql. Every database, unless --database is given. Keep
    /// the password in PGPASSWORD or ~/.pgpass, not on the command line.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// MariaDB or MySQL server to dump: mysql://USER@HOST:PORT/ or
    /// mysql://USER@localhost/?socket=PATH. Every database, unless --database is given.
    #[arg(long, value_name = "URL")]
    pub mysql: Option<String>,
    /// Database of the --postgres or --mysql server to dump (repeatable).
    #[arg(long, value_name = "NAME")]
    pub database: Vec<String>,
    /// Leave out PostgreSQL's roles and tablespaces (pg_dumpall --globals-only needs a
    /// superuser).
    #[arg(long, requires = "postgres")]
    pub no_globals: bool,
    /// Read a stream (a dump, say) from standard input.
    #[arg(long, requires = "name")]
    pub stdin: bool,
    /// Name to store the stream under.
    #[arg(long, value_name = "NAME", requires = "stdin")]
    pub name: Option<String>,
    /// Run only this job from the config file.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["sqlite", "dir", "stdin", "postgres", "mysql"])]
    pub job: Option<String>,
    /// Tag for the snapshot (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// The snapshot's time instead of now (RFC 3339), for tests and imports: retention goes by it.
    #[arg(long, value_name = "RFC3339", hide = true, value_parser = parse_time)]
    pub time: Option<Timestamp>,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Only this job: its `retention` table, or the --keep-* flags instead. Without it, every
    /// job that has a `retention` table.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Show what would be kept and removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune afterwards, so that the data only the removed snapshots used goes too.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// With --prune: how long marked packs wait before they are deleted (default 23h, as
    /// 30m, 2h). Shorter breaks a backup that runs meanwhile and reuses their data.
    #[arg(long, value_name = "DURATION", requires = "prune", value_parser = parse_keep_delete)]
    pub danger_keep_delete: Option<SignedDuration>,
}

/// Retention rules given on the command line; together they replace the job's table.
#[derive(Debug, Args)]
pub struct KeepArgs {
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = |s: &str| parse_count("--keep-last", s))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = |s: &str| parse_count("--keep-hourly", s))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = |s: &str| parse_count("--keep-daily", s))]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = |s: &str| parse_count("--keep-weekly", s))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = |s: &str| parse_count("--keep-monthly", s))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = |s: &str| parse_count("--keep-yearly", s))]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot this close to the job's newest: 30d, 2w, 1y6m (y years, m months,
    /// w weeks, d days, h hours).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_within)]
    pub keep_within: Option<Within>,
    /// Keep the snapshots with this tag (repeatable; a,b keeps those with both).
    #[arg(long, value_name = "TAG", value_parser = parse_tag)]
    pub keep_tag: Vec<String>,
}

impl KeepArgs {
    /// The rules given, or `None` when no --keep-* flag was.
    pub fn policy(&self) -> Option<RetentionPolicy> {
        let policy = RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
            keep_tag: self.keep_tag.clone(),
        };
        (!policy.is_empty()).then_some(policy)
    }
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Prune this job's repository instead of the default one.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Show what would be marked, repacked and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long marked packs wait before they are deleted (default 23h, as 30m, 2h). Shorter
    /// breaks a backup that runs meanwhile and reuses their data.
    #[arg(long, value_name = "DURATION", value_parser = parse_keep_delete)]
    pub danger_keep_delete: Option<SignedDuration>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id (or a prefix of it), or `latest`.
    pub snapshot: String,
    /// List every file and directory instead of the items.
    #[arg(long)]
    pub tree: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id (or a prefix of it), or `latest`.
    pub snapshot: String,
    /// Directory to restore into (created when missing).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["postgres", "mysql"], conflicts_with_all = ["postgres", "mysql"])]
    pub target: Option<PathBuf>,
    /// Restore the snapshot's PostgreSQL databases into this server instead (its URL's database
    /// is where Palisade connects to create the others).
    #[arg(long, value_name = "URL", conflicts_with = "mysql")]
    pub postgres: Option<String>,
    /// Restore the snapshot's MariaDB/MySQL databases into this server instead.
    #[arg(long, value_name = "URL")]
    pub mysql: Option<String>,
    /// Restore only this database of the snapshot.
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Restore the database under this name instead of its own.
    #[arg(long = "as", value_name = "NEWNAME")]
    pub rename: Option<String>,
    /// Drop and recreate a target database that already holds tables.
    #[arg(long)]
    pub clean: bool,
    /// PostgreSQL: make the restoring user the owner of every object (for a server without
    /// the dump's roles).
    #[arg(long, requires = "postgres")]
    pub no_owner: bool,
    /// PostgreSQL: apply the snapshot's roles and tablespaces first; roles that already exist
    /// are reported, not fatal.
    #[arg(long, requires = "postgres")]
    pub globals: bool,
    /// Restore only this item (name or snapshot path; repeatable).
    #[arg(long, value_name = "ITEM")]
    pub include: Vec<String>,
    /// Replace existing files that differ from the snapshot.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Re-read and verify every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Re-read and verify some packs: a percentage (10 or 10%), n/m for the n-th of m parts
    /// (1/5 on five days covers everything), or a size (500M).
    #[arg(long, value_name = "SUBSET", value_parser = parse_subset)]
    pub read_data_subset: Option<palisade_backup::ReadData>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a key for another password.
    Add(NewPassword),
    /// List the keys.
    List,
    /// Remove a key (not the one in use).
    Remove {
        /// Key id, or a unique prefix of it.
        id: String,
    },
    /// Replace the key in use by one for a new password.
    Passwd(NewPassword),
}

#[derive(Debug, Args)]
pub struct NewPassword {
    /// File whose first line is the new password (PALISADE_NEW_PASSWORD holds it directly).
    #[arg(long, value_name = "FILE", env = "PALISADE_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Folder for the demo application, its config, key and repository.
    #[arg(long, value_name = "DIR", default_value = "palisade-demo")]
    pub dir: PathBuf,
}

fn parse_subset(text: &str) -> Result<palisade_backup::ReadData, String> {
    palisade_backup::ReadData::subset(text).map_err(|err| err.to_string())
}

/// A retention error without its `key = value` head, which clap's own message already names.
fn fix_only(err: palisade_backup::Error) -> String {
    match err {
        palisade_backup::Error::BadRetention { fix, .. } => fix,
        other => other.to_string(),
    }
}

fn parse_count(flag: &str, text: &str) -> Result<u32, String> {
    let number: i64 = text.trim().parse().map_err(|_| {
        format!("not a number; give a whole number of snapshots, 1 or more, or leave {flag} out")
    })?;
    RetentionPolicy::count(flag, number).map_err(fix_only)
}

fn parse_within(text: &str) -> Result<Within, String> {
    text.parse().map_err(fix_only)
}

fn parse_tag(text: &str) -> Result<String, String> {
    RetentionPolicy::tag(text).map_err(fix_only)
}

fn parse_keep_delete(text: &str) -> Result<SignedDuration, String> {
    let bad = || "not a duration; give hours, minutes or seconds, like 23h, 30m or 0s".to_string();
    let duration: SignedDuration = text.trim().parse().map_err(|_| bad())?;
    if duration.is_negative() {
        return Err(bad());
    }
    Ok(duration)
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.trim()
        .parse()
        .map_err(|_| "not a time; write RFC 3339, like 2024-03-12T20:00:00Z".to_string())
}
