//! `verify`: the repository's structure checked, and a rotating part of its data re-read — the
//! pack files through rustic_core's checker, and every catalog item's content hashed and
//! compared with its catalog — with a cursor so that successive runs cover everything.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rustic_core::{ReadSubsetOption, jiff::Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    CatalogItem, ItemKind, ReadData, Repo, Result, catalog::manifest_line, prove::ProveError,
    snapshot::OpenSnapshot,
};

/// How many parts the data is cut into when a run reads one part (a week of daily runs).
pub const DEFAULT_PARTS: u32 = 7;

/// With a time limit, the data is cut this finely, and a run reads parts until its time is up.
pub const DURATION_PARTS: u32 = 28;

/// How much one run reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VerifyAmount {
    /// The next part of `of` (1 reads everything).
    Parts { of: u32 },
    /// Parts of [`DURATION_PARTS`] until this much time has passed (at least one part).
    Duration(Duration),
}

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// How much data this run re-reads.
    pub amount: VerifyAmount,
    /// Hash only this label's items (packs are shared by all labels and read regardless).
    pub label: Option<String>,
    /// Where the cursor is kept between runs.
    pub state_dir: PathBuf,
}

/// Where the rotation stands, kept in `STATE_DIR/verify-REPOSITORY_ID.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCursor {
    /// The part the next run reads (1-based).
    pub next: u32,
    /// Into how many parts the data is cut.
    pub of: u32,
    /// Full rotations finished so far.
    pub cycles: u64,
    /// When the last full rotation ended (RFC 3339).
    pub last_cycle_end: Option<String>,
}

/// The result of one `verify` run: a record for a run store or an alert.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// When the run started (RFC 3339).
    pub started: String,
    /// Seconds it took.
    pub seconds: f64,
    /// Whether nothing was found wrong.
    pub passed: bool,
    /// The first problem, in one line.
    pub failure: Option<String>,
    /// Problems in the repository's structure or pack data (each names the file concerned).
    pub errors: Vec<String>,
    /// Oddities that do not endanger data.
    pub warnings: Vec<String>,
    /// The parts read, as `n/m`.
    pub parts: Vec<String>,
    /// Snapshots whose items were hashed.
    pub snapshots: usize,
    /// Items hashed.
    pub items: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Items whose content differs from the catalog or could not be read, as `SNAPSHOT ITEM:
    /// REASON`.
    pub item_errors: Vec<String>,
    /// The cursor after this run.
    pub cursor: VerifyCursor,
    /// Where the cursor is kept.
    pub cursor_file: PathBuf,
}

/// Checks the structure, reads this run's parts and hashes their items.
pub fn verify(repo: &Repo, request: &VerifyRequest) -> Result<VerifyReport> {
    let started = Instant::now();
    let cursor_file = request
        .state_dir
        .join(format!("verify-{}.json", &repo.id()[..16]));
    let of = match request.amount {
        VerifyAmount::Parts { of } => of.max(1),
        VerifyAmount::Duration(_) => DURATION_PARTS,
    };
    let mut cursor = load_cursor(&cursor_file, of)?;
    let mut report = VerifyReport {
        started: Timestamp::now().to_string(),
        seconds: 0.0,
        passed: true,
        failure: None,
        errors: Vec::new(),
        warnings: Vec::new(),
        parts: Vec::new(),
        snapshots: 0,
        items: 0,
        bytes: 0,
        item_errors: Vec::new(),
        cursor: cursor.clone(),
        cursor_file: cursor_file.clone(),
    };
    let snaps = crate::snapshots(repo)?;
    loop {
        let part = cursor.next;
        read_part(
            repo,
            &snaps,
            part,
            of,
            request.label.as_deref(),
            &mut report,
        )?;
        cursor.next = part % of + 1;
        if cursor.next == 1 {
            cursor.cycles += 1;
            cursor.last_cycle_end = Some(Timestamp::now().to_string());
        }
        save_cursor(&cursor_file, &cursor)?;
        let more = match request.amount {
            VerifyAmount::Parts { .. } => false,
            VerifyAmount::Duration(limit) => {
                started.elapsed() < limit && report.parts.len() < of as usize
            }
        };
        if !more {
            break;
        }
    }
    report.cursor = cursor;
    report.failure = report
        .errors
        .first()
        .or(report.item_errors.first())
        .cloned();
    report.passed = report.failure.is_none();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Part `part` of `of`: the packs rustic_core assigns to it (with the structure check), and the
/// items of the snapshots whose ids fall into it.
fn read_part(
    repo: &Repo,
    snaps: &[crate::SnapshotInfo],
    part: u32,
    of: u32,
    label: Option<&str>,
    report: &mut VerifyReport,
) -> Result<()> {
    report.parts.push(format!("{part}/{of}"));
    let subset = if of == 1 {
        ReadData::All
    } else {
        ReadData::Subset(ReadSubsetOption::IdSubSet((part, of)))
    };
    let checked = match crate::check(repo, subset) {
        Ok(checked) => checked,
        Err(err) => {
            // The checker stops at a file it cannot read at all (an index cut short, say).
            report.errors.push(full_ids(repo, &err.to_string()));
            return Ok(());
        }
    };
    for error in checked.errors {
        if !report.errors.contains(&error) {
            report.errors.push(error);
        }
    }
    for warning in checked.warnings {
        if !report.warnings.contains(&warning) {
            report.warnings.push(warning);
        }
    }
    let mine = snaps
        .iter()
        .filter(|s| label.is_none_or(|l| s.label == l))
        .filter(|s| snapshot_part(&s.id, of) == part);
    for snap in mine {
        report.snapshots += 1;
        hash_snapshot(repo, &snap.id, report);
    }
    Ok(())
}

/// `text` with every 8-digit short id that names exactly one index or snapshot file replaced by
/// its full id, which is the file's name in the repository.
fn full_ids(repo: &Repo, text: &str) -> String {
    use rustic_core::{ReadBackend, repofile::FileType};
    let mut ids = Vec::new();
    for tpe in [FileType::Index, FileType::Snapshot] {
        ids.extend(repo.backend.list(tpe).unwrap_or_default());
    }
    let mut out = text.to_string();
    let hex = |c: char| c.is_ascii_hexdigit();
    for token in text.split(|c: char| !hex(c)).filter(|t| t.len() == 8) {
        let matching: Vec<String> = ids
            .iter()
            .map(|id| id.to_hex().to_string())
            .filter(|id| id.starts_with(token))
            .collect();
        if let [full] = matching.as_slice() {
            out = out.replace(token, full);
        }
    }
    out
}

/// The part (1-based) a snapshot's items belong to, from its id.
fn snapshot_part(id: &str, of: u32) -> u32 {
    let head = u32::from_str_radix(id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    head % of + 1
}

/// Re-reads every item of one snapshot from the repository and compares its hash.
fn hash_snapshot(repo: &Repo, id: &str, report: &mut VerifyReport) {
    let short = id.get(..8).unwrap_or(id).to_string();
    let open = match OpenSnapshot::open(repo, id) {
        Ok(open) => open,
        Err(err) => {
            report.item_errors.push(format!("snapshot {short}: {err}"));
            return;
        }
    };
    let catalog = match open.catalog() {
        Ok(Some(catalog)) => catalog,
        Ok(None) => return,
        Err(err) => {
            report.item_errors.push(format!("snapshot {short}: {err}"));
            return;
        }
    };
    for item in &catalog.items {
        report.items += 1;
        match item_digest(&open, item) {
            Ok((size, sha256)) if size == item.size && sha256 == item.sha256 => {
                report.bytes += size;
            }
            Ok((size, sha256)) => report.item_errors.push(format!(
                "snapshot {short} {}: the repository holds {size} bytes with SHA-256 {sha256}, \
                 the catalog says {} bytes with {}",
                item.path, item.size, item.sha256
            )),
            Err(reason) => report
                .item_errors
                .push(format!("snapshot {short} {}: {reason}", item.path)),
        }
    }
}

/// Size and SHA-256 of an item as the repository holds it (a directory's manifest digest).
fn item_digest(
    open: &OpenSnapshot,
    item: &CatalogItem,
) -> std::result::Result<(u64, String), String> {
    if item.kind != ItemKind::Directory {
        let node = node(open, Path::new(&item.path))?;
        return hash_node(open, &node);
    }
    let root = Path::new(&item.path);
    let mut files: Vec<_> = open
        .entries
        .iter()
        .filter(|(path, node)| node.is_file() && path.starts_with(root))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut manifest = Sha256::new();
    let mut total = 0;
    for (path, node) in files {
        let (size, sha256) = hash_node(open, node)?;
        let relative = path.strip_prefix(root).unwrap_or(path);
        manifest.update(manifest_line(relative, size, &sha256));
        total += size;
    }
    Ok((total, hex::encode(manifest.finalize())))
}

fn node(
    open: &OpenSnapshot,
    path: &Path,
) -> std::result::Result<rustic_core::repofile::Node, String> {
    open.entries
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, node)| node.clone())
        .ok_or_else(|| "the snapshot's tree does not hold it".to_string())
}

/// Streams one file node out of the repository into a hasher. rustic_core can panic on pack
/// data it cannot decode; that is a finding, not a crash.
fn hash_node(
    open: &OpenSnapshot,
    node: &rustic_core::repofile::Node,
) -> std::result::Result<(u64, String), String> {
    let mut writer = HashingSink::default();
    let outcome = {
        let _quiet = crate::restore::QuietEnginePanics::start();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            open.repo.dump(node, &mut writer)
        }))
    };
    match outcome {
        Ok(Ok(())) => Ok((writer.size, hex::encode(writer.hasher.finalize()))),
        Ok(Err(err)) => Err(format!(
            "its data cannot be read back ({}); `palisade check --read-data` names the damaged \
             pack",
            crate::Error::repo("reading", err)
        )),
        Err(_) => Err(
            "its data cannot be read back (missing or damaged pack); `palisade \
                       check --read-data` names the damaged pack"
                .into(),
        ),
    }
}

#[derive(Default)]
struct HashingSink {
    hasher: Sha256,
    size: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The saved cursor; a fresh one when there is none or the parts changed.
fn load_cursor(path: &Path, of: u32) -> Result<VerifyCursor> {
    let fresh = VerifyCursor {
        next: 1,
        of,
        cycles: 0,
        last_cycle_end: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
        Err(err) => return Err(state_error(path, &err.to_string())),
    };
    let saved: VerifyCursor = serde_json::from_str(&text).unwrap_or_else(|_| fresh.clone());
    if saved.of != of || saved.next == 0 || saved.next > of {
        return Ok(VerifyCursor {
            cycles: saved.cycles,
            ..fresh
        });
    }
    Ok(saved)
}

/// Writes the cursor whole or not at all (temp name, rename).
fn save_cursor(path: &Path, cursor: &VerifyCursor) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|err| state_error(dir, &err.to_string()))?;
    let temp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(cursor).expect("a cursor serializes");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|err| state_error(dir, &err.to_string()))
}

fn state_error(dir: &Path, reason: &str) -> crate::Error {
    ProveError::State {
        dir: dir.into(),
        reason: reason.into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_snapshot_falls_into_one_part() {
        for id in ["00000000ff", "ffffffff00", "1234abcd99"] {
            let part = snapshot_part(id, 7);
            assert!((1..=7).contains(&part), "{id}: {part}");
        }
        assert_eq!(snapshot_part("00000007", 7), 1);
    }

    #[test]
    fn the_cursor_rotates_and_survives_a_change_of_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/verify-x.json");
        let mut cursor = load_cursor(&path, 3).unwrap();
        assert_eq!(cursor.next, 1);
        cursor.next = 3;
        cursor.cycles = 2;
        save_cursor(&path, &cursor).unwrap();
        assert_eq!(load_cursor(&path, 3).unwrap(), cursor);
        let changed = load_cursor(&path, 5).unwrap();
        assert_eq!((changed.next, changed.of, changed.cycles), (1, 5, 2));
    }
}
