//! Physical base backups: pg_basebackup's tar stream, archived as one stream item, with where
//! its WAL starts and ends recorded in the catalog.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Stdio},
};

use serde::{Deserialize, Serialize};

use crate::{
    BackupReport, BackupRequest, CatalogItem, Error, Repo, Result, SourceSpec, Stream,
    pg::{
        PgError,
        tarscan::{Kept, TarScan},
        tools::{self, PgPrograms},
        wal::Lsn,
    },
};

/// The tag of every base backup's snapshot.
pub const BASE_TAG: &str = "pg-base";

/// What the catalog records about a base backup (the item's `pg_base_backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgBaseBackup {
    /// The server's version (`server_version`).
    pub server_version: String,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// Where replay starts (backup_label's START WAL LOCATION).
    pub start_lsn: String,
    /// Where the copy is consistent: no recovery target may lie before it.
    pub stop_lsn: String,
    /// The server's clock just before the backup started (RFC 3339, UTC).
    pub start_time: String,
    /// The server's clock just after the backup ended (RFC 3339, UTC); no target time may lie
    /// before it.
    pub stop_time: String,
    /// The cluster's WAL segment size in bytes.
    pub wal_segment_size: u64,
}

impl PgBaseBackup {
    /// [`Self::start_lsn`] as an LSN.
    pub fn start(&self) -> Lsn {
        Lsn::parse(&self.start_lsn).unwrap_or(Lsn(0))
    }

    /// [`Self::stop_lsn`] as an LSN.
    pub fn stop(&self) -> Lsn {
        Lsn::parse(&self.stop_lsn).unwrap_or(Lsn(u64::MAX))
    }

    /// [`Self::stop_time`] as a timestamp.
    pub fn stop_timestamp(&self) -> rustic_core::jiff::Timestamp {
        self.stop_time
            .parse()
            .unwrap_or(rustic_core::jiff::Timestamp::MAX)
    }
}

/// How to take a base backup.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    /// The server's URL (a replication-capable role); its password reaches the tools only
    /// through their environment.
    pub url: crate::DbUrl,
    /// Where pg_basebackup and psql are.
    pub programs: PgPrograms,
    /// Ask for an immediate checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// Item name of the tar stream in the snapshot.
    pub name: String,
    /// Extra snapshot tags.
    pub tags: Vec<String>,
    /// Where the stream waits while it is archived.
    pub temp_dir: PathBuf,
}

/// The server clock in UTC, in a form RFC 3339 parsers read.
const NOW_UTC: &str =
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Takes a base backup of the server at `options.url` into one new snapshot.
pub fn base_backup(repo: &Repo, options: &BaseBackupOptions) -> Result<BackupReport> {
    let program = options.programs.find("pg_basebackup")?;
    options.programs.find("psql")?;
    let info = tools::query(
        &options.programs,
        &options.url,
        &format!(
            "SELECT current_setting('server_version'), current_setting('archive_mode'), \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), {NOW_UTC}"
        ),
    )?;
    let [version, archive_mode, segment_size, start_time] = info.as_slice() else {
        return Err(PgError::BadBaseBackup {
            what: format!("server settings (psql printed {info:?})"),
        }
        .into());
    };
    if archive_mode == "off" {
        return Err(PgError::NotArchiving {
            mode: archive_mode.clone(),
        }
        .into());
    }
    let partial = PgBaseBackup {
        server_version: version.clone(),
        timeline: 0,
        start_lsn: String::new(),
        stop_lsn: String::new(),
        start_time: start_time.clone(),
        stop_time: String::new(),
        wal_segment_size: segment_size
            .parse()
            .unwrap_or(crate::pg::DEFAULT_SEGMENT_SIZE),
    };

    let mut cmd = tools::with_password(tools::command(&program), &options.url);
    cmd.arg("-d")
        .arg(options.url.url().as_str())
        .args(["-D", "-", "-F", "tar", "-X", "none", "--label", "palisade"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if options.fast_checkpoint {
        cmd.args(["-c", "fast"]);
    }
    let mut child = cmd.spawn().map_err(|err| Error::io(&program, err))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let (scan, kept) = TarScan::new(stdout, &["backup_label", "backup_manifest"]);
    let finish = Finish {
        child,
        errors,
        kept,
        partial,
        url: options.url.clone(),
        programs: options.programs.clone(),
    };

    let mut tags = vec![BASE_TAG.to_string()];
    tags.extend(options.tags.iter().cloned());
    crate::backup(
        repo,
        BackupRequest {
            sources: vec![SourceSpec::Stream {
                name: options.name.clone(),
            }],
            stream: Some(Stream::Finished(
                Box::new(scan),
                Box::new(move |item| finish.run(item)),
            )),
            job: None,
            tags,
            temp_dir: options.temp_dir.clone(),
            time: None,
        },
    )
}

/// What completes the catalog item once pg_basebackup's stream has been read.
struct Finish {
    child: Child,
    errors: std::thread::JoinHandle<String>,
    kept: Kept,
    partial: PgBaseBackup,
    url: crate::DbUrl,
    programs: PgPrograms,
}

impl Finish {
    fn run(mut self, item: &mut CatalogItem) -> Result<()> {
        let status = self
            .child
            .wait()
            .map_err(|err| Error::io("pg_basebackup", err))?;
        let stderr = self.errors.join().unwrap_or_default();
        if !status.success() {
            return Err(PgError::BaseBackupFailed {
                status: status.to_string(),
                stderr: tools::first_error(&stderr),
            }
            .into());
        }
        let kept = std::mem::take(
            &mut *self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let label = kept
            .get("backup_label")
            .ok_or_else(|| PgError::BadBaseBackup {
                what: "backup_label".into(),
            })?;
        let (start, timeline) = parse_label(&String::from_utf8_lossy(label))?;
        let manifest = kept
            .get("backup_manifest")
            .ok_or_else(|| PgError::BadBaseBackup {
                what: "backup_manifest".into(),
            })?;
        let stop = manifest_stop(manifest)?;
        let now = tools::query(&self.programs, &self.url, &format!("SELECT {NOW_UTC}"))?;
        let mut done = self.partial;
        done.timeline = timeline;
        done.start_lsn = start.to_string();
        done.stop_lsn = stop.to_string();
        done.stop_time = now.into_iter().next().unwrap_or_default();
        item.pg_base_backup = Some(done);
        Ok(())
    }
}

/// START WAL LOCATION and START TIMELINE from a backup_label.
fn parse_label(label: &str) -> Result<(Lsn, u32)> {
    let field = |key: &str| {
        label
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
    };
    let start = field("START WAL LOCATION:")
        .and_then(|v| v.split_whitespace().next())
        .and_then(Lsn::parse);
    let timeline = field("START TIMELINE:").and_then(|v| v.parse().ok());
    match (start, timeline) {
        (Some(start), Some(timeline)) => Ok((start, timeline)),
        _ => Err(PgError::BadBaseBackup {
            what: "START WAL LOCATION and START TIMELINE in backup_label".into(),
        }
        .into()),
    }
}

/// The End-LSN of the last WAL range in a backup_manifest.
fn manifest_stop(manifest: &[u8]) -> Result<Lsn> {
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(rename = "WAL-Ranges")]
        wal_ranges: Vec<Range>,
    }
    #[derive(Deserialize)]
    struct Range {
        #[serde(rename = "End-LSN")]
        end: String,
    }
    serde_json::from_slice::<Manifest>(manifest)
        .ok()
        .and_then(|m| m.wal_ranges.last().and_then(|r| Lsn::parse(&r.end)))
        .ok_or_else(|| {
            PgError::BadBaseBackup {
                what: "WAL-Ranges in backup_manifest".into(),
            }
            .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_manifest_give_the_wal_range() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n";
        assert_eq!(parse_label(label).unwrap(), (Lsn(0x200_0028), 1));
        let manifest = br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
            "WAL-Ranges": [{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }]}"#;
        assert_eq!(manifest_stop(manifest).unwrap(), Lsn(0x200_0100));
        assert!(parse_label("LABEL: x\n").is_err());
        assert!(manifest_stop(b"{}").is_err());
    }
}
