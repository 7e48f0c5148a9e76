//! Restoring a snapshot into a directory: safely, item by item, and verified against the catalog.

use std::{
    io::Read,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use rustic_core::{
    LocalDestination, RestoreOptions,
    repofile::{Node, NodeType},
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    Error, Repo, Result,
    catalog::{CATALOG_PATH, Catalog, CatalogItem, ItemKind, manifest_line},
    snapshot::{OpenSnapshot, unsafe_entries},
};

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Snapshot id, id prefix or `latest`.
    pub snapshot: String,
    /// Directory to restore into; created when missing.
    pub target: PathBuf,
    /// Items to restore (names or snapshot paths); empty for all.
    pub include: Vec<String>,
    /// Replace existing files that differ from the snapshot.
    pub overwrite: bool,
}

/// The outcome for one restored item.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredItem {
    /// Path inside the snapshot (and below the target).
    pub path: String,
    /// Whether its bytes match the catalog (`None` when the snapshot has no catalog).
    pub verified: Option<bool>,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot: String,
    /// Where it went.
    pub target: PathBuf,
    /// Each item restored.
    pub items: Vec<RestoredItem>,
    /// Regular files written or found identical.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

impl RestoreReport {
    fn failures(&self) -> Vec<&RestoredItem> {
        self.items.iter().filter(|i| i.error.is_some()).collect()
    }
}

/// A group of tree entries restored in one pass: one catalog item (or the whole snapshot when
/// it has no catalog).
struct Group<'a> {
    path: String,
    item: Option<&'a CatalogItem>,
}

/// Restores a snapshot; fails after restoring everything it can if any item is damaged.
pub fn restore(repo: &Repo, request: &RestoreRequest) -> Result<RestoreReport> {
    let open = OpenSnapshot::open(repo, &request.snapshot)?;
    let report = restore_open(&open, request)?;
    let failures = report.failures();
    if let Some(first) = failures.first() {
        return Err(Error::RestoreIncomplete {
            failed: failures.len(),
            total: report.items.len(),
            first: format!(
                "{}: {}",
                first.path,
                first.error.as_deref().unwrap_or_default()
            ),
        });
    }
    Ok(report)
}

/// Restores an opened snapshot; an item that fails is recorded in the report with its reason,
/// and the others are still restored.
pub(crate) fn restore_open(open: &OpenSnapshot, request: &RestoreRequest) -> Result<RestoreReport> {
    if let Some((path, reason)) = unsafe_entries(&open.entries) {
        return Err(Error::UnsafeEntry {
            path,
            reason: reason.into(),
        });
    }
    let catalog = open.catalog()?;
    let groups = groups(open, catalog.as_ref(), &request.include)?;
    let selected: Vec<(PathBuf, Node)> = open
        .entries
        .iter()
        .filter(|(path, _)| groups.iter().any(|g| related(path, &g.path)))
        .cloned()
        .collect();

    let dest = destination(&request.target)?;
    guard_links(&request.target, &selected, request.overwrite)?;
    check_overwrite(open, &selected, &dest, request)?;

    let mut report = RestoreReport {
        snapshot: open.id(),
        target: request.target.clone(),
        items: Vec::new(),
        files: 0,
        bytes: 0,
    };
    for group in &groups {
        let entries: Vec<_> = selected
            .iter()
            .filter(|(path, _)| related(path, &group.path))
            .cloned()
            .collect();
        let restored = restore_entries(open, entries.clone(), &dest)
            .and_then(|()| verify(&request.target, &entries, group.item));
        let (verified, error) = match restored {
            Ok(verified) => (verified, None),
            Err(reason) => (Some(false), Some(reason)),
        };
        for (_, node) in entries.iter().filter(|(_, n)| n.is_file()) {
            report.files += 1;
            report.bytes += node.meta.size;
        }
        report.items.push(RestoredItem {
            path: group.path.clone(),
            verified,
            error,
        });
    }
    Ok(report)
}

/// Whether `path` is the group's path, inside it, or one of its parent folders.
fn related(path: &Path, group: &str) -> bool {
    let group = Path::new(group);
    group.as_os_str().is_empty() || path.starts_with(group) || group.starts_with(path)
}

fn groups<'a>(
    open: &OpenSnapshot,
    catalog: Option<&'a Catalog>,
    include: &[String],
) -> Result<Vec<Group<'a>>> {
    let Some(catalog) = catalog else {
        // A snapshot Palisade did not write: restore its tree as it is.
        return Ok(include_paths(open, include)?
            .into_iter()
            .map(|path| Group { path, item: None })
            .collect());
    };
    let mut groups = Vec::new();
    if include.is_empty() {
        groups.extend(catalog.items.iter().map(|item| Group {
            path: item.path.clone(),
            item: Some(item),
        }));
        groups.push(Group {
            path: CATALOG_PATH.into(),
            item: None,
        });
        return Ok(groups);
    }
    for name in include {
        let named = catalog.items_named(name);
        if named.len() > 1 {
            let paths: Vec<_> = named.iter().map(|i| i.path.as_str()).collect();
            return Err(Error::AmbiguousItem {
                item: name.clone(),
                paths: paths.join(", "),
            });
        }
        if let Some(item) = named.first() {
            groups.push(Group {
                path: item.path.clone(),
                item: Some(item),
            });
        } else {
            groups.extend(
                include_paths(open, std::slice::from_ref(name))?
                    .into_iter()
                    .map(|path| Group { path, item: None }),
            );
        }
    }
    Ok(groups)
}

/// Include values that name plain tree paths; all of the tree when there are none.
fn include_paths(open: &OpenSnapshot, include: &[String]) -> Result<Vec<String>> {
    if include.is_empty() {
        return Ok(vec![String::new()]);
    }
    include
        .iter()
        .map(|name| {
            let wanted = name.trim_matches('/');
            if open
                .entries
                .iter()
                .any(|(path, _)| path == Path::new(wanted))
            {
                Ok(wanted.to_string())
            } else {
                Err(Error::NoSuchItem {
                    id: open.id(),
                    item: name.clone(),
                })
            }
        })
        .collect()
}

fn destination(target: &Path) -> Result<LocalDestination> {
    if target.exists() && !target.is_dir() {
        return Err(Error::BadTarget {
            path: target.into(),
        });
    }
    std::fs::create_dir_all(target).map_err(|err| Error::io(target, err))?;
    let mut text = target.to_string_lossy().into_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    LocalDestination::new(&text, true, false)
        .map_err(|err| Error::repo("preparing the restore target", err))
}

fn options() -> RestoreOptions {
    RestoreOptions::default().verify_existing(true)
}

/// Refuses to restore beneath, or onto, a symlink that already exists in the target, since the
/// writes would follow it out of the target. With `overwrite`, such links are removed (the link
/// itself, never what it points at) so that the snapshot's entries take their place.
fn guard_links(target: &Path, selected: &[(PathBuf, Node)], overwrite: bool) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (path, node) in selected {
        let mut prefix = PathBuf::new();
        let depth = path.components().count();
        for (n, part) in path.components().enumerate() {
            prefix.push(part);
            let own_link = n + 1 == depth && matches!(node.node_type, NodeType::Symlink { .. });
            if own_link || !seen.insert(prefix.clone()) {
                continue;
            }
            let on_disk = target.join(&prefix);
            let Ok(meta) = on_disk.symlink_metadata() else {
                break;
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            if !overwrite {
                return Err(Error::LinkInTarget { path: on_disk });
            }
            std::fs::remove_file(&on_disk).map_err(|err| Error::io(&on_disk, err))?;
        }
    }
    Ok(())
}

/// Refuses, before anything is written, to replace existing files that differ.
fn check_overwrite(
    open: &OpenSnapshot,
    selected: &[(PathBuf, Node)],
    dest: &LocalDestination,
    request: &RestoreRequest,
) -> Result<()> {
    if request.overwrite {
        return Ok(());
    }
    let plan = open
        .repo
        .prepare_restore(&options(), selected.iter().cloned().map(Ok), dest, true)
        .map_err(|err| Error::repo("planning the restore", err))?;
    let changed = plan.stats.files.modify;
    if changed == 0 {
        return Ok(());
    }
    let first = selected
        .iter()
        .find(|(path, node)| {
            let existing = request.target.join(path);
            node.is_file()
                && std::fs::symlink_metadata(&existing).is_ok_and(|m| {
                    !m.is_file() || m.len() != node.meta.size || !same_content(&existing, node)
                })
        })
        .map_or_else(String::new, |(path, _)| path.to_string_lossy().into_owned());
    Err(Error::WouldOverwrite {
        target: request.target.clone(),
        count: changed,
        first,
    })
}

/// Cheap check used only to name the first conflicting file: same size and same mtime.
fn same_content(existing: &Path, node: &Node) -> bool {
    let Ok(meta) = std::fs::metadata(existing) else {
        return false;
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| rustic_core::jiff::Timestamp::try_from(t).ok());
    mtime.is_some() && mtime == node.meta.mtime
}

/// Restores one group. rustic_core panics on unreadable pack data; the panic is contained here
/// so that the other groups still restore.
fn restore_entries(
    open: &OpenSnapshot,
    entries: Vec<(PathBuf, Node)>,
    dest: &LocalDestination,
) -> Result<(), String> {
    let run = || -> Result<(), String> {
        let plan = open
            .repo
            .prepare_restore(&options(), entries.iter().cloned().map(Ok), dest, false)
            .map_err(|err| err.display_log())?;
        open.repo
            .restore(plan, &options(), entries.iter().cloned().map(Ok), dest)
            .map_err(|err| err.display_log())
    };
    let outcome = {
        let _quiet = QuietEnginePanics::start();
        catch_unwind(AssertUnwindSafe(run))
    };
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            log::debug!("restore failed inside rustic_core: {}", panic_text(&panic));
            Err(
                "its data could not be read from the repository (missing or damaged pack); \
                 run `palisade check --read-data` to find the damaged pack"
                    .into(),
            )
        }
    }
}

/// While at least one of these lives, panics raised inside rustic_core print nothing (the
/// restore reports them as one line); every other panic prints as usual.
pub(crate) struct QuietEnginePanics;

static QUIET_RESTORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl QuietEnginePanics {
    pub(crate) fn start() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let in_engine = info
                    .location()
                    .is_some_and(|l| l.file().contains("rustic_core"));
                let quiet = QUIET_RESTORES.load(std::sync::atomic::Ordering::SeqCst) > 0;
                if !(quiet && in_engine) {
                    previous(info);
                }
            }));
        });
        QUIET_RESTORES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self
    }
}

impl Drop for QuietEnginePanics {
    fn drop(&mut self) {
        QUIET_RESTORES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "unknown failure".into());
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// Checks restored bytes against the catalog; `Ok(None)` when there is nothing to check against.
fn verify(
    target: &Path,
    entries: &[(PathBuf, Node)],
    item: Option<&CatalogItem>,
) -> Result<Option<bool>, String> {
    let Some(item) = item else { return Ok(None) };
    let (size, sha256) = match item.kind {
        ItemKind::Sqlite | ItemKind::Stream | ItemKind::Postgres | ItemKind::Mysql => {
            hash_file(&target.join(&item.path))?
        }
        ItemKind::Directory => manifest_digest(target, entries, Path::new(&item.path))?,
    };
    if size != item.size || sha256 != item.sha256 {
        return Err(format!(
            "restored bytes differ from the catalog ({size} bytes, sha256 {sha256}; expected \
             {} bytes, sha256 {})",
            item.size, item.sha256
        ));
    }
    Ok(Some(true))
}

/// The directory manifest digest over the restored regular files of one item.
pub(crate) fn manifest_digest(
    target: &Path,
    entries: &[(PathBuf, Node)],
    root: &Path,
) -> Result<(u64, String), String> {
    let mut files: Vec<&PathBuf> = entries
        .iter()
        .filter(|(path, node)| node.is_file() && path.starts_with(root))
        .map(|(path, _)| path)
        .collect();
    files.sort();
    let mut manifest = Sha256::new();
    let mut total = 0;
    for path in files {
        let (size, sha256) = hash_file(&target.join(path))?;
        let relative = path.strip_prefix(root).unwrap_or(path);
        manifest.update(manifest_line(relative, size, &sha256));
        total += size;
    }
    Ok((total, hex::encode(manifest.finalize())))
}

/// Size and hex SHA-256 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), String> {
    let mut file = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|err| format!("{}: {err}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}
