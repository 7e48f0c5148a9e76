//! What restoring into a database server shares between PostgreSQL and MySQL: choosing the
//! snapshot's database items, streaming an item into a tool's standard input with its hash
//! checked, and comparing row counts with the catalog.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::Path,
    process::{ChildStdin, Command, Stdio},
};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    Error, Result,
    catalog::{CatalogItem, ItemKind},
    dump::{collect_stderr, tool_failed},
    snapshot::OpenSnapshot,
};

/// One database restored.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRestored {
    /// The database's name in the snapshot.
    pub database: String,
    /// The database it was restored into.
    pub target: String,
    /// Bytes of the dump fed to the server.
    pub bytes: u64,
    /// Tables compared with the catalog.
    pub tables: usize,
    /// Rows in those tables.
    pub rows: u64,
}

/// The result of restoring into a database server.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRestoreReport {
    /// The snapshot restored.
    pub snapshot: String,
    /// The server, as its URL without a password.
    pub server: String,
    /// Each database restored, in order.
    pub databases: Vec<DatabaseRestored>,
    /// What the server printed about statements it could not apply when they are allowed to
    /// fail (the roles of PostgreSQL globals that already exist, say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The database items of `kind` to restore: the one named `database`, or all of them.
pub(crate) fn select<'a>(
    open: &OpenSnapshot,
    items: &'a [CatalogItem],
    kind: ItemKind,
    database: Option<&str>,
    renamed: bool,
) -> Result<Vec<&'a CatalogItem>> {
    let all: Vec<&CatalogItem> = items
        .iter()
        .filter(|i| i.kind == kind && i.database.is_some())
        .collect();
    let server = match kind {
        ItemKind::Postgres => "PostgreSQL",
        _ => "MariaDB/MySQL",
    };
    let names = || {
        all.iter()
            .filter_map(|i| i.database.as_deref())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if all.is_empty() {
        return Err(Error::NoSuchItem {
            id: open.id(),
            item: format!("{server} database"),
        });
    }
    let chosen: Vec<&CatalogItem> = match database {
        Some(name) => all
            .iter()
            .copied()
            .filter(|i| i.database.as_deref() == Some(name))
            .collect(),
        None => all.clone(),
    };
    if chosen.is_empty() {
        return Err(Error::Database {
            server: format!("snapshot {}", open.id()),
            reason: format!(
                "it holds no {server} database `{}`; it holds: {}",
                database.unwrap_or_default(),
                names()
            ),
        });
    }
    if renamed && chosen.len() > 1 {
        return Err(Error::Database {
            server: format!("snapshot {}", open.id()),
            reason: format!(
                "--as renames one database, and the snapshot holds several ({}); choose one \
                 with --database NAME",
                names()
            ),
        });
    }
    Ok(chosen)
}

/// Streams `item` from the snapshot into `command`'s standard input and waits for it; fails
/// when the tool fails or the bytes differ from the catalog's.
pub(crate) fn feed(
    open: &OpenSnapshot,
    item: &CatalogItem,
    mut command: Command,
    what: &str,
) -> Result<u64> {
    let node = open
        .entries
        .iter()
        .find(|(path, _)| path == Path::new(&item.path))
        .map(|(_, node)| node.clone())
        .ok_or_else(|| Error::NoSuchItem {
            id: open.id(),
            item: item.path.clone(),
        })?;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| Error::Read {
            what: what.into(),
            source: err,
        })?;
    let stderr = collect_stderr(&mut child);
    let stdin = child.stdin.take().expect("stdin is piped");
    // A bar on a terminal, nothing otherwise (the caller prints one line per database).
    let progress = open
        .repo
        .progress_bytes(&format!("restoring {}", item.path));
    progress.set_length(item.size);
    let mut writer = HashingWriter {
        inner: stdin,
        hasher: Sha256::new(),
        size: 0,
        progress,
    };
    let dumped = open.repo.dump(&node, &mut writer);
    let HashingWriter {
        inner,
        hasher,
        size,
        progress,
    } = writer;
    progress.finish();
    drop(inner);
    let status = child.wait().map_err(|err| Error::Read {
        what: what.into(),
        source: err,
    })?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Read {
            what: what.into(),
            source: tool_failed(what, status, &stderr),
        });
    }
    if !stderr.trim().is_empty() {
        log::info!("{what}: {}", crate::dump::stderr_tail(&stderr));
    }
    dumped.map_err(|err| Error::repo(format!("reading {} from the snapshot", item.path), err))?;
    let sha256 = hex::encode(hasher.finalize());
    if size != item.size || sha256 != item.sha256 {
        return Err(Error::RestoreIncomplete {
            failed: 1,
            total: 1,
            first: format!(
                "{}: the dump read back ({size} bytes, SHA-256 {sha256}) differs from the \
                 catalog ({} bytes, {}); run `palisade check --read-data`",
                item.path, item.size, item.sha256
            ),
        });
    }
    Ok(size)
}

struct HashingWriter {
    inner: ChildStdin,
    hasher: Sha256,
    size: u64,
    progress: rustic_core::Progress,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compares restored row counts with the catalog's; the error lists the first differences.
pub(crate) fn compare_counts(
    database: &str,
    expected: Option<&BTreeMap<String, u64>>,
    found: &BTreeMap<String, u64>,
) -> Result<(usize, u64)> {
    let Some(expected) = expected else {
        return Ok((found.len(), found.values().sum()));
    };
    let mut differences = Vec::new();
    for (table, rows) in expected {
        match found.get(table) {
            Some(n) if n == rows => {}
            Some(n) => differences.push(format!("{table}: catalog {rows}, restored {n}")),
            None => differences.push(format!("{table}: catalog {rows}, missing after restore")),
        }
    }
    for (table, n) in found {
        if !expected.contains_key(table) {
            differences.push(format!("{table}: not in the catalog, restored {n}"));
        }
    }
    if differences.is_empty() {
        return Ok((expected.len(), expected.values().sum()));
    }
    let total = differences.len();
    differences.truncate(5);
    let mut text = differences.join("; ");
    if total > 5 {
        text.push_str(&format!(" (and {} more)", total - 5));
    }
    Err(Error::RowCountMismatch {
        database: database.into(),
        differences: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_differences_are_named() {
        let expected = BTreeMap::from([("public.a".to_string(), 3), ("public.b".to_string(), 1)]);
        let same = expected.clone();
        assert_eq!(
            compare_counts("shop", Some(&expected), &same).unwrap(),
            (2, 4)
        );
        let found = BTreeMap::from([("public.a".to_string(), 2), ("public.c".to_string(), 0)]);
        let err = compare_counts("shop", Some(&expected), &found)
            .unwrap_err()
            .to_string();
        assert!(err.contains("public.a: catalog 3, restored 2"), "{err}");
        assert!(err.contains("public.b: catalog 1, missing"), "{err}");
        assert!(err.contains("public.c: not in the catalog"), "{err}");
    }
}
