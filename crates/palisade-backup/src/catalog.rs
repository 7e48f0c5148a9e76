//! The catalog stored in every snapshot: what each item is, where it came from, its size, hash
//! and (for databases) row counts, as recorded while the backup read it.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

/// The catalog's path inside every snapshot.
///
/// It sorts after every item folder (`databases`, `dumps`, `files`), which lets the engine
/// write it last, once every item has been read.
pub const CATALOG_PATH: &str = "palisade/catalog.json";

/// The catalog format version this build writes and reads.
pub const CATALOG_VERSION: u32 = 1;

/// What kind of source an item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// An SQLite database, copied online through SQLite's backup API.
    Sqlite,
    /// A directory tree.
    Directory,
    /// A byte stream read from standard input (a dump, say).
    Stream,
    /// A PostgreSQL database (`pg_dump`'s custom format) or the server's roles and tablespaces
    /// (`pg_dumpall --globals-only`, plain SQL).
    Postgres,
    /// A MariaDB or MySQL database (`mariadb-dump`/`mysqldump`, plain SQL).
    Mysql,
}

impl ItemKind {
    /// The snapshot folder items of this kind are stored in.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Sqlite => "databases",
            Self::Directory => "files",
            Self::Stream => "dumps",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

/// One item of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// The item's name, unique within the snapshot.
    pub name: String,
    /// The kind of source.
    pub kind: ItemKind,
    /// Where it was read from: a path, or `stdin`.
    pub source: String,
    /// Its path inside the snapshot.
    pub path: String,
    /// Bytes read: the database copy, the stream, or all regular files of a directory.
    pub size: u64,
    /// SHA-256 of the bytes as read. For a directory, SHA-256 of its manifest (see
    /// [`manifest_line`]) over every regular file read, in path order.
    pub sha256: String,
    /// Regular files read (1 for a database or a stream).
    pub files: u64,
    /// For a database: the row count of each table, read from the copy that was stored (for
    /// PostgreSQL, in the very snapshot `pg_dump` read; for MySQL, counted in the dump itself).
    /// PostgreSQL and MySQL names are `schema.table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeMap<String, u64>>,
    /// For a PostgreSQL or MySQL item: the database it holds (`None` for PostgreSQL globals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// For a PostgreSQL or MySQL item: the server's version, as the server reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// For a dump: the tool and version that wrote it (`pg_dump (PostgreSQL) 15.8`, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumped_by: Option<String>,
    /// For a database: the SQLite library version that made the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite_version: Option<String>,
    /// Entries that could not be read and are missing from the snapshot, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// For a PostgreSQL base backup: where its WAL starts and ends (docs/pitr.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_base_backup: Option<crate::pg::PgBaseBackup>,
}

/// An entry left out of a snapshot because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Path of the entry, relative to its item (lossy for names that are not UTF-8).
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// The whole catalog of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version, [`CATALOG_VERSION`].
    pub version: u32,
    /// The Palisade version that wrote it.
    pub palisade: String,
    /// The job this snapshot belongs to, if it came from the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The items, in snapshot order.
    pub items: Vec<CatalogItem>,
}

impl Catalog {
    /// Finds an item by name or by its path in the snapshot.
    pub fn item(&self, name: &str) -> Option<&CatalogItem> {
        self.items_named(name).into_iter().next()
    }

    /// Every item whose name or snapshot path is `name` (a name can recur across kinds).
    pub fn items_named(&self, name: &str) -> Vec<&CatalogItem> {
        let name = name.trim_matches('/');
        if let Some(item) = self.items.iter().find(|i| i.path == name) {
            return vec![item];
        }
        self.items.iter().filter(|i| i.name == name).collect()
    }

    /// Number of entries skipped across all items.
    pub fn skipped(&self) -> usize {
        self.items.iter().map(|i| i.skipped.len()).sum()
    }
}

/// One line of a directory manifest: the file's path relative to its item, its size and the hex
/// SHA-256 of its content. The directory's `sha256` is the SHA-256 of these lines, concatenated
/// in path order (component by component, byte-wise).
pub fn manifest_line(relative: &Path, size: u64, sha256: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut line = relative.as_os_str().as_bytes().to_vec();
    line.push(0);
    line.extend_from_slice(size.to_string().as_bytes());
    line.push(0);
    line.extend_from_slice(sha256.as_bytes());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_round_trips_through_json() {
        let catalog = Catalog {
            version: CATALOG_VERSION,
            palisade: "0.1.0".into(),
            job: Some("app".into()),
            items: vec![CatalogItem {
                name: "app.db".into(),
                kind: ItemKind::Sqlite,
                source: "/srv/app.db".into(),
                path: "databases/app.db".into(),
                size: 4096,
                sha256: "00".repeat(32),
                files: 1,
                tables: Some(BTreeMap::from([("users".into(), 3)])),
                sqlite_version: Some("3.50.0".into()),
                database: None,
                server_version: None,
                dumped_by: None,
                skipped: vec![],
                pg_base_backup: None,
            }],
        };
        let text = serde_json::to_string(&catalog).unwrap();
        assert_eq!(serde_json::from_str::<Catalog>(&text).unwrap(), catalog);
        assert!(catalog.item("databases/app.db").is_some());
        assert!(catalog.item("app.db").is_some());
        assert!(catalog.item("other").is_none());
    }

    #[test]
    fn manifest_lines_keep_raw_name_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"a\nb\xff");
        let line = manifest_line(Path::new(name), 5, "ab");
        assert_eq!(line, b"a\nb\xff\x005\x00ab\n");
    }
}
