//! Repository-wide reports: `check` (structure and data) and `stats` (sizes and deduplication).

use rustic_core::{
    CheckOptions, ReadBackend, ReadSubsetOption, repofile::BlobType, repofile::FileType,
};
use serde::Serialize;

use crate::{Error, Repo, Result};

/// How much pack data `check` reads back and verifies.
#[derive(Debug, Clone, Copy)]
pub enum ReadData {
    /// Structure only: index, snapshots and trees.
    None,
    /// Every pack.
    All,
    /// Some packs, as restic's `--read-data-subset` chooses them.
    Subset(ReadSubsetOption),
}

impl ReadData {
    /// Parses a subset as restic writes it: a percentage (`10` or `10%`), `n/m` (the n-th of m
    /// parts, so that m runs cover every pack) or a size (`500M`).
    pub fn subset(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || Error::BadSubset { value: text.into() };
        let number = text.strip_suffix('%').unwrap_or(text);
        if let Ok(percent) = number.parse::<f64>() {
            return if percent > 0.0 && percent <= 100.0 {
                Ok(Self::Subset(ReadSubsetOption::Percentage(percent)))
            } else {
                Err(bad())
            };
        }
        // rustic_core takes any n of n/m modulo m; restic wants 1 <= n <= m, and so does this.
        if let Some((n, m)) = text.split_once('/')
            && let (Ok(n), Ok(m)) = (n.parse::<u32>(), m.parse::<u32>())
            && (n == 0 || n > m)
        {
            return Err(bad());
        }
        text.parse::<ReadSubsetOption>()
            .map(Self::Subset)
            .map_err(|_| bad())
    }
}

/// The outcome of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Problems that damage the repository.
    pub errors: Vec<String>,
    /// Oddities that do not endanger data.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Whether no error was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the repository's structure and, as asked, re-reads pack data.
pub fn check(repo: &Repo, read_data: ReadData) -> Result<CheckReport> {
    let opts = match read_data {
        ReadData::None => CheckOptions::default(),
        ReadData::All => CheckOptions::default().read_data(true),
        ReadData::Subset(subset) => CheckOptions::default()
            .read_data(true)
            .read_data_subset(subset),
    };
    let handle = repo.reopen()?;
    // rustic_core's checker can panic in its worker threads on damaged trees; that is a finding
    // about the repository, reported as such, not a crash.
    let outcome = {
        let _quiet = crate::restore::QuietEnginePanics::start();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle.check(opts)))
    };
    let results = match outcome {
        Ok(results) => results.map_err(|err| Error::repo("checking the repository", err))?,
        Err(_) => {
            return Ok(CheckReport {
                errors: vec![
                    "the checker stopped on damaged repository data (a tree or index it could \
                     not decode); `palisade check --read-data` names damaged packs"
                        .into(),
                ],
                warnings: Vec::new(),
            });
        }
    };
    let mut report = CheckReport {
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for (level, problem) in &results.0 {
        // The level type is not exported by rustic_core; its Debug form names it.
        let text = full_ids(&condense(&problem.to_string()), &format!("{problem:?}"));
        if format!("{level:?}") == "Warn" {
            report.warnings.push(text);
        } else {
            report.errors.push(text);
        }
    }
    Ok(report)
}

/// rustic_core's messages run over many lines (kind, message, context, links); keep the first
/// line and the message, and point at restic's commands rather than rustic's.
fn condense(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines.first().copied().unwrap_or_default();
    let message = lines
        .iter()
        .position(|l| *l == "Message:")
        .and_then(|at| lines.get(at + 1));
    let line = match (message, first.split_once(" : ")) {
        (Some(message), Some((head, _))) => format!("{head}: {message}"),
        (Some(message), None) => format!("{first} {message}"),
        (None, _) => first.to_string(),
    };
    line.replace("'rustic repair index'", "`restic prune`")
}

/// rustic_core's messages shorten ids to 8 hex digits; put back the full ids found in the
/// problem's debug form, so that a damaged pack can be found by its file name.
fn full_ids(text: &str, debug: &str) -> String {
    let mut text = text.to_string();
    let hex = |c: char| c.is_ascii_hexdigit();
    for token in debug.split(|c: char| !hex(c)).filter(|t| t.len() == 64) {
        let short = &token[..8];
        if let Some(at) = text.find(short)
            && !text[at + 8..].starts_with(hex)
        {
            text.replace_range(at..at + 8, token);
        }
    }
    text
}

/// Repository sizes, as `stats` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Number of snapshots.
    pub snapshots: u64,
    /// Bytes read by all backups together: what restoring every snapshot would write.
    pub total_restore_size: u64,
    /// Distinct data bytes, before compression.
    pub unique_data: u64,
    /// Bytes of pack files on storage.
    pub stored: u64,
    /// Bytes of all repository files on storage (packs, index, snapshots, keys, config).
    pub stored_total: u64,
    /// Data blobs (chunks).
    pub data_blobs: u64,
    /// Tree blobs (directories).
    pub tree_blobs: u64,
    /// `total_restore_size / stored_total`.
    pub dedup_ratio: f64,
}

/// Sizes and blob counts of the whole repository.
pub fn stats(repo: &Repo) -> Result<Stats> {
    let snaps = repo
        .inner
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing snapshots", err))?;
    let total_restore_size = snaps
        .iter()
        .filter_map(|s| s.summary.as_ref())
        .map(|s| s.total_bytes_processed)
        .sum();
    let index = repo
        .inner
        .infos_index()
        .map_err(|err| Error::repo("reading the index", err))?;
    let files = repo
        .inner
        .infos_files()
        .map_err(|err| Error::repo("listing repository files", err))?;
    let blob = |tpe: BlobType| index.blobs.iter().filter(move |b| b.blob_type == tpe);
    let stored: u64 = files
        .repo
        .iter()
        .filter(|f| f.tpe == FileType::Pack)
        .map(|f| f.size)
        .sum();
    // rustic_core's file listing leaves out the config file; count it from the backend.
    let config: u64 = repo
        .backend
        .list_with_size(FileType::Config)
        .map_err(|err| Error::repo("reading the config file", err))?
        .iter()
        .map(|(_, size)| u64::from(*size))
        .sum();
    let stored_total: u64 = files.repo.iter().map(|f| f.size).sum::<u64>() + config;
    Ok(Stats {
        snapshots: snaps.len() as u64,
        total_restore_size,
        unique_data: blob(BlobType::Data).map(|b| b.data_size).sum(),
        stored,
        stored_total,
        data_blobs: blob(BlobType::Data).map(|b| b.count).sum(),
        tree_blobs: blob(BlobType::Tree).map(|b| b.count).sum(),
        dedup_ratio: if stored_total == 0 {
            0.0
        } else {
            total_restore_size as f64 / stored_total as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use super::ReadData;

    #[test]
    fn subsets_are_read_as_restic_writes_them() {
        for good in ["10", "10%", "0.5%", "100", "1/5", "5/5", "500M"] {
            assert!(ReadData::subset(good).is_ok(), "{good}");
        }
        for bad in ["0", "150", "-3%", "abc", "6/5", ""] {
            assert!(ReadData::subset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_engine_messages_become_one_line() {
        let text = "error checking pack 92cd5c56 : `rustic_core` experienced an error.\n\n\
                    Message:\nData decryption failed, MAC check failed.\n\nContext:\n- nonce";
        assert_eq!(
            super::condense(text),
            "error checking pack 92cd5c56: Data decryption failed, MAC check failed."
        );
    }

    #[test]
    fn short_ids_are_expanded_from_the_debug_form() {
        let full = "92cd5c56960f1e6a174f7e8b001cdf4a64ab036023ecf41ec4d51d449ab89f35";
        let text = super::full_ids(
            "error checking pack 92cd5c56 : mac failed",
            &format!("ErrorCheckingPack {{ id: PackId({full}) }}"),
        );
        assert_eq!(text, format!("error checking pack {full} : mac failed"));
    }
}
