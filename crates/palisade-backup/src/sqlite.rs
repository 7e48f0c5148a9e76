//! SQLite sources: a consistent online copy through SQLite's backup API, and the checks run on
//! a copy (row counts, integrity).

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, backup::Backup};

use crate::{Error, Result};

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// How long the copy waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A consistent copy of a live database, in a private temporary directory that is removed when
/// this value is dropped.
#[derive(Debug)]
pub struct SqliteCopy {
    dir: tempfile::TempDir,
    file: PathBuf,
    /// Row counts per table, read from the copy.
    pub tables: BTreeMap<String, u64>,
    /// The SQLite library version that made the copy.
    pub sqlite_version: String,
}

impl SqliteCopy {
    /// The copy's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The private directory holding the copy.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A fresh scratch directory under `root` that only its owner can enter (mode 0700), removed
/// when the returned value is dropped.
pub(crate) fn private_tempdir(prefix: &str, root: &Path) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .prefix(prefix)
        .tempdir_in(root)
        .map_err(|err| Error::io(root, err))
}

/// Fails with a clear error unless `path` is an SQLite 3 database file; returns whether the
/// database is in WAL mode (header bytes 18 and 19 are 2).
pub fn ensure_sqlite(path: &Path) -> Result<bool> {
    let mut header = [0u8; 20];
    let kind = std::fs::metadata(path).map_err(|err| Error::BadSource {
        path: path.into(),
        reason: format!("cannot read it: {err}"),
    })?;
    if !kind.is_file() {
        return Err(Error::BadSource {
            path: path.into(),
            reason: "not a regular file; pass the database file itself to --sqlite (a folder \
                     goes to --dir)"
                .into(),
        });
    }
    let mut file = std::fs::File::open(path).map_err(|err| Error::BadSource {
        path: path.into(),
        reason: format!("cannot open the database file: {err}"),
    })?;
    let read = file.read(&mut header).map_err(|err| Error::io(path, err))?;
    if read < header.len() || &header[..16] != SQLITE_MAGIC {
        return Err(Error::NotSqlite {
            path: path.into(),
            reason: "its header is not `SQLite format 3`".into(),
        });
    }
    Ok(header[18] == 2 || header[19] == 2)
}

/// Copies the database at `path` while it stays in use, into a fresh private temp directory
/// under `temp_root`.
///
/// Both ways of copying happen inside one read transaction, so the copy is a consistent
/// snapshot even while other connections write:
/// - a database in rollback-journal mode is copied byte for byte while the transaction's shared
///   lock keeps writers from committing (they wait, as they would for any reader);
/// - a database in WAL mode, whose latest pages may live in the `-wal` file, goes through one
///   step of SQLite's backup API; writers are not blocked at all. The copy then differs from the
///   file on disk in its header's change counters, not in content.
pub fn copy_online(path: &Path, name: &str, temp_root: &Path) -> Result<SqliteCopy> {
    let wal = ensure_sqlite(path)?;
    let sqlite_err = |err: rusqlite::Error| Error::Sqlite {
        path: path.into(),
        reason: err.to_string(),
    };

    let source = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err)?;
    source.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;

    let dir = private_tempdir("palisade-sqlite-", temp_root)?;
    let file = dir.path().join(name);
    let not_a_database = |err: rusqlite::Error| match err {
        rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::NotADatabase => {
            Error::NotSqlite {
                path: path.into(),
                reason: "SQLite cannot read it as a database".into(),
            }
        }
        other => sqlite_err(other),
    };
    if wal {
        let mut dest = Connection::open(&file).map_err(sqlite_err)?;
        run_backup(&source, &mut dest).map_err(not_a_database)?;
    } else {
        copy_locked(&source, path, &file).map_err(not_a_database)?;
    }
    drop(source);

    let tables = row_counts(&file).map_err(sqlite_err)?;
    Ok(SqliteCopy {
        dir,
        file,
        tables,
        sqlite_version: rusqlite::version().to_string(),
    })
}

/// Copies the file's bytes while a read transaction holds SQLite's shared lock on it.
fn copy_locked(source: &Connection, path: &Path, dest: &Path) -> rusqlite::Result<()> {
    source.execute_batch("BEGIN")?;
    // The first read takes the shared lock, which lasts until the transaction ends.
    source.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })?;
    let copied = std::fs::copy(path, dest);
    source.execute_batch("COMMIT")?;
    copied.map(|_| ()).map_err(|err| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(format!("copying the file failed: {err}")),
        )
    })
}

/// Copies every page in one step, retrying while another connection holds a conflicting lock.
fn run_backup(source: &Connection, dest: &mut Connection) -> rusqlite::Result<()> {
    let backup = Backup::new(source, dest)?;
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match backup.step(-1)? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            rusqlite::backup::StepResult::More => {}
            _ if std::time::Instant::now() > deadline => {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("the database stayed locked for a minute".into()),
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Counts the rows of every table of the database at `path`.
pub fn row_counts(path: &Path) -> rusqlite::Result<BTreeMap<String, u64>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             ORDER BY name",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut counts = BTreeMap::new();
    for name in names {
        let quoted = name.replace('"', "\"\"");
        let count: i64 =
            conn.query_row(&format!("SELECT count(*) FROM \"{quoted}\""), [], |r| {
                r.get(0)
            })?;
        counts.insert(name, u64::try_from(count).unwrap_or_default());
    }
    Ok(counts)
}

/// The outcome of SQLite's own consistency checks on a database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Lines from `PRAGMA integrity_check` other than `ok`.
    pub integrity: Vec<String>,
    /// Rows from `PRAGMA foreign_key_check`, as `table(rowid) -> parent`.
    pub foreign_keys: Vec<String>,
}

impl IntegrityReport {
    /// Whether both checks passed.
    pub fn is_ok(&self) -> bool {
        self.integrity.is_empty() && self.foreign_keys.is_empty()
    }
}

/// Runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check` on the database at `path`.
pub fn integrity(path: &Path) -> rusqlite::Result<IntegrityReport> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let integrity = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get::<_, String>(0))?
        .filter(|line| !matches!(line.as_deref(), Ok("ok")))
        .collect::<rusqlite::Result<_>>()?;
    let foreign_keys = conn
        .prepare("PRAGMA foreign_key_check")?
        .query_map([], |row| {
            let table: String = row.get(0)?;
            let rowid: Option<i64> = row.get(1)?;
            let parent: String = row.get(2)?;
            Ok(format!(
                "{table}({}) -> {parent}",
                rowid.unwrap_or_default()
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(IntegrityReport {
        integrity,
        foreign_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_file_is_not_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.db");
        std::fs::write(&path, "just some notes, long enough to fill a header").unwrap();
        let err = copy_online(&path, "notes.db", dir.path()).unwrap_err();
        assert!(matches!(err, Error::NotSqlite { .. }), "{err}");
        assert!(err.to_string().contains("notes.db"), "{err}");
    }

    #[test]
    fn a_rollback_journal_database_is_copied_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
        let copy = copy_online(&path, "shop.db", dir.path()).unwrap();
        assert_eq!(
            std::fs::read(copy.path()).unwrap(),
            std::fs::read(&path).unwrap()
        );
        assert_eq!(copy.tables.get("t"), Some(&3));
    }

    #[test]
    fn copy_counts_rows_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE \"odd \"\"name\"(x); \
             INSERT INTO \"odd \"\"name\" VALUES (1), (2);",
        )
        .unwrap();
        let copy = copy_online(&path, "app.db", dir.path()).unwrap();
        assert_eq!(copy.tables.get("odd \"name"), Some(&2));
        assert!(integrity(copy.path()).unwrap().is_ok());
        let private = copy.dir().to_path_buf();
        drop(copy);
        assert!(!private.exists());
    }
}
