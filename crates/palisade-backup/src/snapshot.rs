//! Reading snapshots: listing them, walking their trees and loading their catalogs.

use std::path::{Component, Path, PathBuf};

use rustic_core::{
    IndexedFull, LsOptions, Repository,
    repofile::{Node, NodeType, SnapshotFile},
};
use serde::Serialize;

use crate::{
    Error, Repo, Result,
    catalog::{CATALOG_PATH, Catalog},
};

/// A snapshot as `palisade snapshots` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Full id.
    pub id: String,
    /// Short id (first 8 hex digits), as restic prints it.
    pub short_id: String,
    /// When the backup started (RFC 3339).
    pub time: String,
    /// Host that made it.
    pub hostname: String,
    /// Job label, empty for ad-hoc backups.
    pub label: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Source paths.
    pub paths: Vec<String>,
    /// Bytes processed by the backup.
    pub bytes: u64,
    /// Bytes it added to the repository.
    pub bytes_added: u64,
}

impl SnapshotInfo {
    fn from_file(snap: &SnapshotFile) -> Self {
        let id = snap.id.to_hex().to_string();
        let summary = snap.summary.clone().unwrap_or_default();
        Self {
            short_id: id.chars().take(8).collect(),
            id,
            time: snap.time.timestamp().to_string(),
            hostname: snap.hostname.clone(),
            label: snap.label.clone(),
            tags: snap.tags.iter().cloned().collect(),
            paths: snap.paths.iter().cloned().collect(),
            bytes: summary.total_bytes_processed,
            bytes_added: summary.data_added_packed,
        }
    }
}

/// All snapshots, oldest first.
pub fn snapshots(repo: &Repo) -> Result<Vec<SnapshotInfo>> {
    let mut snaps = repo
        .inner
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing snapshots", err))?;
    snaps.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(snaps.iter().map(SnapshotInfo::from_file).collect())
}

/// Finds one snapshot by id prefix or `latest`.
pub(crate) fn find<S: rustic_core::Open>(repo: &Repository<S>, id: &str) -> Result<SnapshotFile> {
    repo.get_snapshot_from_str(id, |_| true)
        .map_err(|_| Error::NoSuchSnapshot { id: id.into() })
}

/// One entry of a snapshot tree, as `palisade ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TreeEntry {
    /// Path inside the snapshot (lossy for names that are not UTF-8).
    pub path: String,
    /// `file`, `dir`, `symlink` or another node type.
    pub kind: String,
    /// Size in bytes (files only).
    pub size: u64,
}

/// A snapshot opened for reading its tree and files.
pub(crate) struct OpenSnapshot {
    pub(crate) repo: Repository<rustic_core::IndexedFullStatus>,
    pub(crate) snap: SnapshotFile,
    /// Every node, in tree order, with its path.
    pub(crate) entries: Vec<(PathBuf, Node)>,
}

impl OpenSnapshot {
    pub(crate) fn open(repo: &Repo, id: &str) -> Result<Self> {
        let full = repo
            .reopen()?
            .to_indexed()
            .map_err(|err| Error::repo("reading the repository index", err))?;
        let snap = find(&full, id)?;
        let root = full
            .node_from_snapshot_and_path(&snap, "")
            .map_err(|err| Error::repo("reading the snapshot tree", err))?;
        let entries = full
            .ls(&root, &LsOptions::default())
            .map_err(|err| Error::repo("reading the snapshot tree", err))?
            .collect::<rustic_core::RusticResult<Vec<_>>>()
            .map_err(|err| Error::repo("reading the snapshot tree", err))?;
        Ok(Self {
            repo: full,
            snap,
            entries,
        })
    }

    pub(crate) fn id(&self) -> String {
        self.snap.id.to_hex().to_string()
    }

    /// The snapshot's catalog, or `None` for a snapshot without one.
    pub(crate) fn catalog(&self) -> Result<Option<Catalog>> {
        let Some((_, node)) = self
            .entries
            .iter()
            .find(|(path, _)| path == Path::new(CATALOG_PATH))
        else {
            return Ok(None);
        };
        let bytes =
            read_node(&self.repo, node).map_err(|err| Error::repo("reading the catalog", err))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| Error::BadCatalog {
                id: self.id(),
                reason: err.to_string(),
            })
    }
}

/// Reads a whole file node into memory.
pub(crate) fn read_node<S: IndexedFull>(
    repo: &Repository<S>,
    node: &Node,
) -> rustic_core::RusticResult<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(node.meta.size).unwrap_or(0));
    repo.dump(node, &mut bytes)?;
    Ok(bytes)
}

/// The catalog of a snapshot.
pub fn catalog(repo: &Repo, id: &str) -> Result<Catalog> {
    let open = OpenSnapshot::open(repo, id)?;
    open.catalog()?.ok_or_else(|| Error::NoCatalog {
        id: open.id(),
        path: CATALOG_PATH.into(),
    })
}

/// Every entry of a snapshot's tree.
pub fn tree(repo: &Repo, id: &str) -> Result<Vec<TreeEntry>> {
    let open = OpenSnapshot::open(repo, id)?;
    Ok(open
        .entries
        .iter()
        .map(|(path, node)| TreeEntry {
            path: path.to_string_lossy().into_owned(),
            kind: node_kind(node).into(),
            size: if node.is_file() { node.meta.size } else { 0 },
        })
        .collect())
}

pub(crate) fn node_kind(node: &Node) -> &'static str {
    match node.node_type {
        NodeType::File => "file",
        NodeType::Dir => "dir",
        NodeType::Symlink { .. } => "symlink",
        NodeType::Dev { .. } => "dev",
        NodeType::Chardev { .. } => "chardev",
        NodeType::Fifo => "fifo",
        NodeType::Socket => "socket",
    }
}

/// Why a tree entry cannot be restored safely, if it cannot.
///
/// Every path must be made of plain names (no `..`, no root, no empty or `.` parts), the node's
/// own name must be exactly the last of them, no path may appear twice, and nothing may sit
/// beneath a symlink.
pub(crate) fn unsafe_entries(entries: &[(PathBuf, Node)]) -> Option<(String, &'static str)> {
    let mut seen = std::collections::HashSet::new();
    let mut links: Vec<&Path> = Vec::new();
    for (path, node) in entries {
        let shown = || path.to_string_lossy().into_owned();
        if path.as_os_str().is_empty()
            || !path.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Some((shown(), "its path leaves the restore target"));
        }
        if path.file_name() != Some(node.name().as_ref()) {
            return Some((shown(), "its name contains a path separator"));
        }
        if !seen.insert(path.clone()) {
            return Some((shown(), "the snapshot holds it twice"));
        }
        if links.iter().any(|link| path.starts_with(link)) {
            return Some((shown(), "it lies beneath a symlink"));
        }
        if matches!(node.node_type, NodeType::Symlink { .. }) {
            links.push(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustic_core::repofile::Metadata;

    fn node(name: &str, node_type: NodeType) -> Node {
        Node::new_node(std::ffi::OsStr::new(name), node_type, Metadata::default())
    }

    #[test]
    fn plain_trees_are_safe() {
        let entries = vec![
            (PathBuf::from("files"), node("files", NodeType::Dir)),
            (PathBuf::from("files/a"), node("a", NodeType::File)),
        ];
        assert_eq!(unsafe_entries(&entries), None);
    }

    #[test]
    fn escapes_and_links_are_refused() {
        let link = NodeType::from_link(Path::new("/tmp"));
        let cases = vec![
            vec![(PathBuf::from("../x"), node("x", NodeType::File))],
            vec![(PathBuf::from("/etc/x"), node("x", NodeType::File))],
            vec![(PathBuf::from("a/b"), node("a/b", NodeType::File))],
            vec![
                (PathBuf::from("l"), node("l", link)),
                (PathBuf::from("l/f"), node("f", NodeType::File)),
            ],
        ];
        for entries in cases {
            assert!(unsafe_entries(&entries).is_some(), "{entries:?}");
        }
    }
}
