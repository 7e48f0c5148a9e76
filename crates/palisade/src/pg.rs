//! `palisade pg`: PostgreSQL point-in-time recovery — the WAL archive commands PostgreSQL runs,
//! base backups, restores to a time or an LSN, and the archive check.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use clap::{ArgGroup, Args, Subcommand};
use palisade_backup::{
    Repo,
    pg::{
        BaseBackupOptions, PgError, PgPrograms, PgRestoreRequest, RecoveryTarget, TimelineChoice,
    },
};
use serde::Deserialize;

use crate::{Outcome, commands::Session};

/// Exit code of `archive-get` for a failure other than a missing file: above 125, PostgreSQL
/// stops recovery instead of taking the failure for the end of the archive and promoting early.
const ABORT_RECOVERY: i32 = 126;

#[derive(Debug, Subcommand)]
pub enum PgCommand {
    /// Archive one WAL file (PostgreSQL's archive_command: `palisade --config FILE pg
    /// archive-push %p`). The same file twice is fine; another file under the same name fails.
    ArchivePush {
        /// The file (%p).
        path: PathBuf,
    },
    /// Write one archived WAL file to a path (PostgreSQL's restore_command: `palisade --config
    /// FILE pg archive-get %f %p`); exit 1 when the archive does not hold it.
    ArchiveGet {
        /// The file's name (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
    },
    /// Take a physical base backup with pg_basebackup into a new snapshot.
    BaseBackup(BaseBackupArgs),
    /// Restore a base backup into a new data directory, set to replay the archived WAL to a
    /// target time or LSN (or to its end) and promote.
    Restore(RestoreArgs),
    /// List the archived WAL by timeline; report missing segments and timeline problems (exit
    /// 1 when there are any).
    WalCheck(WalCheckArgs),
}

#[derive(Debug, Args)]
pub struct BaseBackupArgs {
    /// The server: a postgresql:// URL or key=value connection string for a role with the
    /// REPLICATION attribute (a password belongs in ~/.pgpass or PGPASSFILE, not here).
    #[arg(long, value_name = "URL")]
    pub postgres: String,
    /// Checkpoint at once instead of spreading it over checkpoint_completion_target.
    #[arg(long)]
    pub fast_checkpoint: bool,
    /// Item name of the tar in the snapshot.
    #[arg(long, value_name = "NAME", default_value = "base.tar")]
    pub name: String,
    /// Tag for the snapshot (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["target_time", "target_lsn", "latest"])))]
pub struct RestoreArgs {
    /// The base backup snapshot; default: the newest one before the target.
    pub snapshot: Option<String>,
    /// Stop at the last commit at or before this time (RFC 3339 with offset, such as
    /// 2026-01-31T14:05:00Z).
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Stop at this WAL position (such as 0/3000060).
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Replay all archived WAL.
    #[arg(long)]
    pub latest: bool,
    /// The new data directory (missing or empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The timeline to follow: latest (PostgreSQL's default), current (the backup's) or a
    /// number.
    #[arg(long, value_name = "TIMELINE", default_value = "latest")]
    pub target_timeline: String,
    /// Leave `archive_mode` as the base backup had it. By default the restored server does
    /// not archive: a copy started for a test or an investigation must not push its own
    /// timeline into the archive of the server it came from. Turn archiving on (or pass this)
    /// once the restored server is the new primary.
    #[arg(long)]
    pub keep_archiving: bool,
}

#[derive(Debug, Args)]
pub struct WalCheckArgs {
    /// The cluster's WAL segment size in bytes; default: the newest base backup's, else 16 MiB.
    #[arg(long, value_name = "BYTES")]
    pub wal_segment_size: Option<u64>,
}

/// The `[pitr]` section of the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PitrConfig {
    /// Where pg_basebackup and psql are (default: PATH, then the newest
    /// /usr/lib/postgresql/NN/bin).
    pub bin_dir: Option<PathBuf>,
    /// rustic's local cache of snapshot and index files for the WAL commands (default:
    /// $XDG_CACHE_HOME/palisade or ~/.cache/palisade of the user running them).
    pub cache_dir: Option<PathBuf>,
}

/// Runs one `pg` subcommand.
pub fn run(ctx: &Session, command: PgCommand) -> Result<Outcome> {
    match command {
        PgCommand::ArchivePush { path } => archive_push(ctx, &path),
        PgCommand::ArchiveGet { name, dest } => archive_get(ctx, &name, &dest),
        PgCommand::BaseBackup(args) => base_backup(ctx, &args),
        PgCommand::Restore(args) => restore(ctx, &args),
        PgCommand::WalCheck(args) => wal_check(ctx, &args),
    }
}

/// The repository, with rustic's local cache: each WAL command is one process per segment.
fn open(ctx: &Session) -> Result<Repo> {
    Ok(Repo::open_with_cache(
        ctx.location(None)?,
        ctx.password(None)?,
        ctx.bars.clone(),
        cache_dir(ctx).as_deref(),
    )?)
}

fn cache_dir(ctx: &Session) -> Option<PathBuf> {
    let configured = ctx.config.pitr.as_ref().and_then(|p| p.cache_dir.clone());
    configured.or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(base.join("palisade"))
    })
}

fn programs(ctx: &Session) -> PgPrograms {
    PgPrograms {
        bin_dir: ctx.config.pitr.as_ref().and_then(|p| p.bin_dir.clone()),
    }
}

fn archive_push(ctx: &Session, path: &Path) -> Result<Outcome> {
    let repo = open(ctx)?;
    let scratch = ctx.scratch()?;
    let report = palisade_backup::pg::push(&repo, path, scratch.path())?;
    ctx.print(&report, |r| {
        if r.written {
            format!("archived {} as snapshot {}", r.name, &r.snapshot[..8])
        } else {
            format!(
                "{} is already archived with the same content (snapshot {})",
                r.name,
                &r.snapshot[..8]
            )
        }
    })
}

/// Missing file: exit 1, which PostgreSQL takes for the end of the archive. Anything else
/// (the repository unreachable, a wrong password): exit 126, which stops the recovery.
fn archive_get(ctx: &Session, name: &str, dest: &Path) -> Result<Outcome> {
    let fetched = open(ctx).and_then(|repo| Ok(palisade_backup::pg::get(&repo, name, dest)?));
    match fetched {
        Ok(()) => Ok(Outcome::Done),
        Err(err) if is_not_archived(&err) => {
            if !ctx.global.quiet {
                eprintln!("palisade: {err}");
            }
            Ok(Outcome::Failed)
        }
        Err(err) => {
            eprintln!(
                "palisade: {}; recovery stops here, start PostgreSQL again once this is fixed",
                crate::render(&err)
            );
            std::process::exit(ABORT_RECOVERY);
        }
    }
}

fn is_not_archived(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<palisade_backup::Error>(),
        Some(palisade_backup::Error::Pg(PgError::NotArchived { .. }))
    )
}

fn base_backup(ctx: &Session, args: &BaseBackupArgs) -> Result<Outcome> {
    let repo = open(ctx)?;
    let scratch = ctx.scratch()?;
    let report = palisade_backup::pg::base_backup(
        &repo,
        &BaseBackupOptions {
            url: palisade_backup::DbUrl::parse(&args.postgres, palisade_backup::postgres::SCHEMES)?,
            programs: programs(ctx),
            fast_checkpoint: args.fast_checkpoint,
            name: args.name.clone(),
            tags: args.tag.clone(),
            temp_dir: scratch.path().to_path_buf(),
        },
    )?;
    ctx.print(&report, |r| {
        let item = &r.catalog.items[0];
        let base = item.pg_base_backup.as_ref().expect("a base backup item");
        format!(
            "base backup saved as snapshot {}: {}, WAL {} to {} on timeline {} (PostgreSQL {})",
            &r.snapshot[..8],
            ByteSize(item.size).display().iec(),
            base.start_lsn,
            base.stop_lsn,
            base.timeline,
            base.server_version
        )
    })
}

fn restore(ctx: &Session, args: &RestoreArgs) -> Result<Outcome> {
    let target = match (&args.target_time, &args.target_lsn) {
        (Some(time), _) => RecoveryTarget::time(time)?,
        (None, Some(lsn)) => RecoveryTarget::lsn(lsn)?,
        (None, None) => RecoveryTarget::Latest,
    };
    let timeline = TimelineChoice::parse(&args.target_timeline)?;
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let repo = open(ctx)?;
    let report = palisade_backup::pg::restore(
        &repo,
        &PgRestoreRequest {
            target,
            timeline,
            data_dir,
            snapshot: args.snapshot.clone(),
            restore_command: restore_command(ctx)?,
            keep_archiving: args.keep_archiving,
        },
    )?;
    ctx.print(&report, |r| {
        format!(
            "restored base backup {} into {}; start PostgreSQL on it: it replays {} archived WAL \
             segment(s) (through {}) on timeline {} up to {}, then promotes",
            &r.snapshot[..8],
            r.data_dir.display(),
            r.segments,
            r.last_segment,
            r.timeline,
            r.target
        )
    })
}

/// This binary's `archive-get` with the repository settings of this run, as absolute paths and
/// quoted for the shell PostgreSQL runs it with. The password itself never goes in.
fn restore_command(ctx: &Session) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let mut parts = vec![shell_quote(&exe.to_string_lossy())];
    let absolute = |path: &Path| -> Result<String> {
        let path = std::path::absolute(path)
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        Ok(shell_quote(&path.to_string_lossy()))
    };
    if ctx.global.config.is_file() {
        parts.extend(["--config".into(), absolute(&ctx.global.config)?]);
    }
    if let Some(repo) = &ctx.global.repo {
        let location = match palisade_backup::Location::parse(repo)? {
            palisade_backup::Location::Local(path) => absolute(&path)?,
            palisade_backup::Location::S3(_) => shell_quote(repo),
        };
        parts.extend(["--repo".into(), location]);
    }
    match &ctx.global.password_file {
        Some(file) => parts.extend(["--password-file".into(), absolute(file)?]),
        None if ctx.config.password_file.is_none() => bail!(
            "PostgreSQL's restore_command needs the repository password from a file, and this \
             run has none; pass --password-file FILE or set password_file in the config \
             (PALISADE_PASSWORD never goes into postgresql.auto.conf)"
        ),
        None => {}
    }
    parts.extend(["pg", "archive-get", "%f", "%p"].map(String::from));
    Ok(parts.join(" "))
}

/// `text` as one shell word: unchanged when it is plain, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=,@%".contains(&b));
    if plain {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn wal_check(ctx: &Session, args: &WalCheckArgs) -> Result<Outcome> {
    if let Some(size) = args.wal_segment_size
        && !palisade_backup::pg::wal::valid_segment_size(size)
    {
        bail!(
            "--wal-segment-size {size} is not a WAL segment size; PostgreSQL's are powers of two \
             from 1048576 (1 MiB) to 1073741824 (1 GiB)"
        );
    }
    let report = palisade_backup::pg::wal_check(&open(ctx)?, args.wal_segment_size)?;
    ctx.list(&report, |r| {
        let mut out = Vec::new();
        for t in &r.timelines {
            out.push(format!(
                "timeline {}: {} segment(s), {} to {}{}",
                t.timeline,
                t.segments,
                t.first,
                t.last,
                if t.missing_count == 0 {
                    String::new()
                } else {
                    format!(", {} missing: {}", t.missing_count, t.missing.join(", "))
                }
            ));
        }
        if r.timelines.is_empty() {
            out.push("the WAL archive is empty".into());
        }
        for problem in &r.problems {
            out.push(format!("problem: {problem}"));
        }
        for name in &r.unknown {
            out.push(format!(
                "problem: {name} is not a WAL file name for {} byte segments",
                r.wal_segment_size
            ));
        }
        if r.is_ok() {
            out.push("no gaps or timeline problems".into());
        }
        out.join("\n")
    })?;
    Ok(if report.is_ok() {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/usr/bin/palisade"), "/usr/bin/palisade");
        assert_eq!(
            shell_quote("/opt/my tools/palisade"),
            "'/opt/my tools/palisade'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm)"), "'$(rm)'");
    }
}
