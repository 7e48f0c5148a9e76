//! `restore-test`: one snapshot restored into the scratch directory and checked item by item —
//! SQLite integrity and row counts, directory and stream hashes, PostgreSQL and MariaDB dumps
//! restored into private servers with their row counts and the user's assertions, and a
//! point-in-time recovery replayed to the end of the archive.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use rustic_core::jiff::Timestamp;
use serde::Serialize;

use crate::{
    CatalogItem, Error, ItemKind, Repo, Result,
    catalog::Catalog,
    dbrestore::compare_counts,
    pg::{BASE_TAG, PgRestoreRequest, RecoveryTarget, TimelineChoice, WAL_TAG, wal::WalFile},
    postgres::GLOBALS,
    prove::{
        ProveError,
        account::Account,
        mariadb::{MariaBin, MariaServer},
        pgserver::{PgBin, PgServer},
        space::free_space,
    },
    restore::{RestoreRequest, restore_open},
    snapshot::OpenSnapshot,
};

/// Room a fresh PostgreSQL cluster takes before any data (initdb's files, with margin).
const PG_CLUSTER: u64 = 64 << 20;
/// Room a fresh MariaDB data directory takes (system tables and InnoDB's files).
const MARIADB_DATADIR: u64 = 160 << 20;
/// A restored database takes about this many times its dump on disk (tables and indexes).
const DATABASE_FACTOR: u64 = 3;

/// A check the user wants to hold on a restored database: one SQL query that must return true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// Which server's databases it runs on (`Postgres` or `Mysql`).
    pub kind: ItemKind,
    /// The databases it runs in; empty for every database of that kind in the snapshot.
    pub databases: Vec<String>,
    /// The query, such as `SELECT count(*) > 0 FROM users`.
    pub sql: String,
}

/// One restore test to run.
#[derive(Debug, Clone)]
pub struct RestoreTestRequest {
    /// What the report calls it: the job's name, say.
    pub name: String,
    /// Snapshot id, prefix or `latest`.
    pub snapshot: String,
    /// A private folder for this test, removed by the caller afterwards.
    pub scratch: PathBuf,
    /// The user's assertions.
    pub assertions: Vec<Assertion>,
    /// Folder of PostgreSQL's server programs (initdb, pg_ctl, postgres, pg_restore).
    pub pg_bin_dir: Option<PathBuf>,
    /// Folder of mariadb-install-db, mariadbd and mariadb.
    pub mysql_bin_dir: Option<PathBuf>,
}

/// The result of checking one item.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The item's path in the snapshot (`pitr` for a point-in-time recovery).
    pub item: String,
    /// `sqlite`, `directory`, `stream`, `postgres`, `mysql` or `pitr`.
    pub kind: String,
    /// Whether every check of the item held.
    pub passed: bool,
    /// Seconds from the start of its restore to the end of its checks.
    pub seconds: f64,
    /// Bytes restored (or fed to the server).
    pub bytes: u64,
    /// Tables whose rows were counted.
    pub tables: usize,
    /// Rows in them.
    pub rows: u64,
    /// User assertions that held.
    pub assertions: usize,
    /// Each difference or failure found, one line each.
    pub problems: Vec<String>,
}

impl Check {
    fn new(item: &str, kind: &str) -> Self {
        Self {
            item: item.into(),
            kind: kind.into(),
            passed: true,
            seconds: 0.0,
            bytes: 0,
            tables: 0,
            rows: 0,
            assertions: 0,
            problems: Vec::new(),
        }
    }

    fn of(item: &CatalogItem) -> Self {
        Self::new(&item.path, kind_name(item.kind))
    }

    fn problem(&mut self, text: impl Into<String>) {
        self.passed = false;
        self.problems.push(one_line(&text.into()));
    }

    fn finish(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self
    }
}

/// The result of one restore test: a report the run store and alerts can record as it is.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreTest {
    /// The job (or `pitr`) tested.
    pub name: String,
    /// The snapshot restored (full id).
    pub snapshot: String,
    /// When that snapshot was taken (RFC 3339).
    pub snapshot_time: String,
    /// When the test started (RFC 3339).
    pub started: String,
    /// Whether every check held.
    pub passed: bool,
    /// The first failure, in one line.
    pub failure: Option<String>,
    /// Seconds from the start of the restore to the end of the last check.
    pub seconds: f64,
    /// Scratch space the test was estimated to need.
    pub scratch_needed: u64,
    /// Scratch space free when it started.
    pub scratch_free: u64,
    /// Bytes restored, all items together.
    pub bytes_restored: u64,
    /// One entry per item.
    pub checks: Vec<Check>,
}

impl RestoreTest {
    fn new(name: &str, snapshot: &str, snapshot_time: String) -> Self {
        Self {
            name: name.into(),
            snapshot: snapshot.into(),
            snapshot_time,
            started: Timestamp::now().to_string(),
            passed: true,
            failure: None,
            seconds: 0.0,
            scratch_needed: 0,
            scratch_free: 0,
            bytes_restored: 0,
            checks: Vec::new(),
        }
    }

    /// A test that could not run at all, with the reason.
    pub fn failed(name: &str, snapshot: &str, reason: &str) -> Self {
        let mut test = Self::new(name, snapshot, String::new());
        test.fail(reason);
        test
    }

    fn fail(&mut self, reason: &str) {
        self.passed = false;
        self.failure.get_or_insert_with(|| one_line(reason));
    }

    fn push(&mut self, check: Check) {
        self.bytes_restored += check.bytes;
        if let Some(problem) = check.problems.first() {
            let reason = format!("{}: {problem}", check.item);
            self.fail(&reason);
        }
        self.checks.push(check);
    }

    fn finish(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self
    }
}

/// One `restore-test` run: every test, in order. This is the record a run store or an alert
/// takes as it is (`passed` and `failure` say what an alert needs).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreTestReport {
    /// When the run started (RFC 3339).
    pub started: String,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// Whether every test passed.
    pub passed: bool,
    /// The first failure, as `NAME: ITEM: REASON`.
    pub failure: Option<String>,
    /// Each test.
    pub tests: Vec<RestoreTest>,
}

impl RestoreTestReport {
    /// Collects finished tests.
    pub fn new(started: Timestamp, seconds: f64, tests: Vec<RestoreTest>) -> Self {
        let failure = tests.iter().find_map(|t| {
            t.failure
                .as_ref()
                .map(|reason| format!("{}: {reason}", display_name(&t.name)))
        });
        Self {
            started: started.to_string(),
            seconds,
            passed: failure.is_none(),
            failure,
            tests,
        }
    }
}

/// A label as people read it: ad-hoc backups have none.
pub fn display_name(label: &str) -> &str {
    if label.is_empty() { "(no job)" } else { label }
}

/// What one restore test is about: the newest snapshot of a label.
#[derive(Debug, Clone, Serialize)]
pub struct TestTarget {
    /// The label (job name), empty for ad-hoc backups.
    pub label: String,
    /// The newest snapshot of it (full id).
    pub snapshot: String,
    /// Its time (RFC 3339).
    pub time: String,
}

/// The newest snapshot of each label, leaving out archived WAL and base backups (which the
/// point-in-time test covers); every label when `labels` is empty. A label without a snapshot
/// is left out.
pub fn targets(repo: &Repo, labels: &[String]) -> Result<Vec<TestTarget>> {
    let snaps = crate::snapshots(repo)?;
    let mut newest: BTreeMap<String, TestTarget> = BTreeMap::new();
    let ordinary = snaps
        .iter()
        .filter(|s| !s.tags.iter().any(|t| t == WAL_TAG || t == BASE_TAG));
    for snap in ordinary {
        if !labels.is_empty() && !labels.contains(&snap.label) {
            continue;
        }
        newest.insert(
            snap.label.clone(),
            TestTarget {
                label: snap.label.clone(),
                snapshot: snap.id.clone(),
                time: snap.time.clone(),
            },
        );
    }
    Ok(newest.into_values().collect())
}

/// Whether the repository holds a PostgreSQL base backup, for the point-in-time test.
pub fn has_base_backup(repo: &Repo) -> Result<bool> {
    Ok(crate::snapshots(repo)?
        .iter()
        .any(|s| s.tags.iter().any(|t| t == BASE_TAG)))
}

/// Restores one snapshot into `request.scratch` and checks every item. Failed checks are in
/// the report; an error means the snapshot could not be read at all.
pub fn restore_test(repo: &Repo, request: &RestoreTestRequest) -> Result<RestoreTest> {
    let started = Instant::now();
    let open = OpenSnapshot::open(repo, &request.snapshot)?;
    let time = open.snap.time.timestamp().to_string();
    let mut test = RestoreTest::new(&request.name, &open.id(), time);
    let Some(catalog) = open.catalog()? else {
        test.fail(&format!(
            "snapshot {} has no Palisade catalog, so there is nothing to check it against",
            open.id()
        ));
        return Ok(test.finish(started));
    };

    open_scratch(&request.scratch)?;
    test.scratch_needed = needed_space(&catalog);
    test.scratch_free = free_space(&request.scratch)?;
    if test.scratch_free < test.scratch_needed {
        test.fail(&not_enough_space(
            &request.scratch,
            test.scratch_needed,
            test.scratch_free,
        ));
        return Ok(test.finish(started));
    }

    for check in file_checks(&open, &catalog, &request.scratch.join("files")) {
        test.push(check);
    }
    for check in postgres_checks(repo, &open.id(), &catalog, request) {
        test.push(check);
    }
    for check in mysql_checks(repo, &open.id(), &catalog, request) {
        test.push(check);
    }
    Ok(test.finish(started))
}

/// As root, the servers run as their own accounts, which must pass through the scratch
/// directory to reach their folders in it: it becomes 0711 (enter, not list); each server's
/// folder stays 0700 and its own.
fn open_scratch(scratch: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !crate::prove::account::is_root() {
        return Ok(());
    }
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o711))
        .map_err(|err| Error::io(scratch, err))
}

fn not_enough_space(dir: &Path, needed: u64, free: u64) -> String {
    format!(
        "not enough free space for the restore test in {}: it needs about {} and {} is free; \
         set temp_dir in the config to a larger file system",
        dir.display(),
        bytesize::ByteSize(needed).display().iec(),
        bytesize::ByteSize(free).display().iec()
    )
}

/// An estimate of the scratch space a restore test of `catalog` takes.
fn needed_space(catalog: &Catalog) -> u64 {
    let sum = |kind: ItemKind| -> u64 {
        catalog
            .items
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.size)
            .sum()
    };
    let files = sum(ItemKind::Sqlite) + sum(ItemKind::Directory) + sum(ItemKind::Stream);
    let has = |kind: ItemKind| catalog.items.iter().any(|i| i.kind == kind);
    let postgres = if has(ItemKind::Postgres) {
        PG_CLUSTER + DATABASE_FACTOR * sum(ItemKind::Postgres)
    } else {
        0
    };
    let mysql = if has(ItemKind::Mysql) {
        MARIADB_DATADIR + DATABASE_FACTOR * sum(ItemKind::Mysql)
    } else {
        0
    };
    files + postgres + mysql
}

/// Restores the SQLite, directory and stream items and checks each: hashes for all of them
/// (the restore compares them with the catalog), SQLite's own checks and row counts for
/// databases.
fn file_checks(open: &OpenSnapshot, catalog: &Catalog, target: &Path) -> Vec<Check> {
    let items: Vec<&CatalogItem> = catalog
        .items
        .iter()
        .filter(|i| {
            matches!(
                i.kind,
                ItemKind::Sqlite | ItemKind::Directory | ItemKind::Stream
            )
        })
        .collect();
    if items.is_empty() {
        return Vec::new();
    }
    let started = Instant::now();
    let request = RestoreRequest {
        snapshot: open.id(),
        target: target.to_path_buf(),
        include: items.iter().map(|i| i.path.clone()).collect(),
        overwrite: false,
    };
    let report = match restore_open(open, &request) {
        Ok(report) => report,
        Err(err) => {
            return items
                .iter()
                .map(|item| {
                    let mut check = Check::of(item);
                    check.problem(err.to_string());
                    check.finish(started)
                })
                .collect();
        }
    };
    items
        .iter()
        .map(|item| {
            let mut check = Check::of(item);
            check.bytes = item.size;
            let restored = report.items.iter().find(|r| r.path == item.path);
            match restored.and_then(|r| r.error.as_ref()) {
                Some(error) => check.problem(error.clone()),
                None if item.kind == ItemKind::Sqlite => {
                    sqlite_check(&target.join(&item.path), item, &mut check);
                }
                None => {}
            }
            check.finish(started)
        })
        .collect()
}

/// `PRAGMA integrity_check`, `PRAGMA foreign_key_check` and row counts against the catalog.
fn sqlite_check(path: &Path, item: &CatalogItem, check: &mut Check) {
    match crate::sqlite::integrity(path) {
        Ok(report) => {
            for line in report.integrity.iter().take(5) {
                check.problem(format!("integrity_check: {line}"));
            }
            for line in report.foreign_keys.iter().take(5) {
                check.problem(format!("foreign_key_check: {line}"));
            }
        }
        Err(err) => check.problem(format!("SQLite cannot read the restored copy: {err}")),
    }
    match crate::sqlite::row_counts(path) {
        Ok(found) => count_rows(&item.name, item.tables.as_ref(), &found, check),
        Err(err) => check.problem(format!("cannot count rows: {err}")),
    }
}

fn count_rows(
    database: &str,
    expected: Option<&BTreeMap<String, u64>>,
    found: &BTreeMap<String, u64>,
    check: &mut Check,
) {
    match compare_counts(database, expected, found) {
        Ok((tables, rows)) => {
            check.tables = tables;
            check.rows = rows;
        }
        Err(err) => check.problem(err.to_string()),
    }
}

/// The database items of `kind` (not PostgreSQL's globals).
fn databases(catalog: &Catalog, kind: ItemKind) -> Vec<&CatalogItem> {
    catalog
        .items
        .iter()
        .filter(|i| i.kind == kind && i.database.is_some())
        .collect()
}

/// Every check of `items` failed for the same reason (the server did not start, say).
fn all_failed(items: &[&CatalogItem], reason: &str) -> Vec<Check> {
    items
        .iter()
        .map(|item| {
            let mut check = Check::of(item);
            check.problem(reason);
            check
        })
        .collect()
}

/// The major version in a server version string (`15.8 (Debian 15.8-0+deb12u1)` → 15).
fn major(version: &str) -> u32 {
    version
        .split(['.', ' '])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn postgres_checks(
    repo: &Repo,
    snapshot: &str,
    catalog: &Catalog,
    request: &RestoreTestRequest,
) -> Vec<Check> {
    let items = databases(catalog, ItemKind::Postgres);
    if items.is_empty() {
        return Vec::new();
    }
    let needed = items
        .iter()
        .filter_map(|i| i.server_version.as_deref())
        .map(major)
        .max()
        .unwrap_or(0);
    let server = PgBin::find(request.pg_bin_dir.as_deref()).and_then(|bin| {
        let found = bin.major();
        if found != 0 && found < needed {
            return Err(Error::Prove(ProveError::MissingServer {
                program: format!("a PostgreSQL {needed} server"),
                place: format!("(found PostgreSQL {found} in {})", bin.dir.display()),
                install: format!(
                    "the dumps come from PostgreSQL {needed}, which an older server cannot \
                         restore; install postgresql-{needed} or set the source's `bin_dir`"
                ),
            }));
        }
        Ok((PgServer::init(&bin, &request.scratch)?, bin))
    });
    let (server, bin) = match server {
        Ok(found) => found,
        Err(err) => return all_failed(&items, &err.to_string()),
    };
    let has_globals = catalog
        .items
        .iter()
        .any(|i| i.kind == ItemKind::Postgres && i.name == GLOBALS);
    let mut checks = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let started = Instant::now();
        let mut check = Check::of(item);
        let database = item.database.clone().unwrap_or_default();
        let restored = crate::postgres::restore(
            repo,
            &crate::PostgresRestore {
                snapshot: snapshot.into(),
                url: server.url("postgres"),
                database: Some(database.clone()),
                rename: None,
                clean: false,
                no_owner: !has_globals,
                globals: has_globals && n == 0,
                bin_dir: Some(bin.dir.clone()),
            },
        );
        match restored {
            Ok(report) => {
                for warning in report.warnings.iter().filter(|w| is_real_error(w)) {
                    check.problem(format!("applying the globals: {warning}"));
                }
                if let Some(db) = report.databases.first() {
                    check.bytes = db.bytes;
                    check.tables = db.tables;
                    check.rows = db.rows;
                }
                let run = |sql: &str| server.query(&database, sql);
                assertions(request, ItemKind::Postgres, &database, "t", run, &mut check);
            }
            Err(err) => check.problem(err.to_string()),
        }
        checks.push(check.finish(started));
    }
    drop(server);
    checks
}

/// A line psql printed while applying the globals that is more than a role or tablespace that
/// exists already (every fresh cluster has the `postgres` role).
fn is_real_error(line: &str) -> bool {
    line.contains("ERROR") && !line.contains("already exists")
}

fn mysql_checks(
    repo: &Repo,
    snapshot: &str,
    catalog: &Catalog,
    request: &RestoreTestRequest,
) -> Vec<Check> {
    let items = databases(catalog, ItemKind::Mysql);
    if items.is_empty() {
        return Vec::new();
    }
    let server = MariaBin::find(request.mysql_bin_dir.as_deref())
        .and_then(|bin| MariaServer::start(&bin, &request.scratch));
    let server = match server {
        Ok(server) => server,
        Err(err) => return all_failed(&items, &err.to_string()),
    };
    let mut checks = Vec::new();
    for item in items {
        let started = Instant::now();
        let mut check = Check::of(item);
        let database = item.database.clone().unwrap_or_default();
        let restored = crate::mysql::restore(
            repo,
            &crate::MysqlRestore {
                snapshot: snapshot.into(),
                url: server.url(),
                database: Some(database.clone()),
                rename: None,
                clean: false,
                bin_dir: request.mysql_bin_dir.clone(),
                temp_dir: Some(request.scratch.clone()),
            },
        );
        match restored {
            Ok(report) => {
                if let Some(db) = report.databases.first() {
                    check.bytes = db.bytes;
                    check.tables = db.tables;
                    check.rows = db.rows;
                }
                let run = |sql: &str| server.query(&database, sql);
                assertions(request, ItemKind::Mysql, &database, "1", run, &mut check);
            }
            Err(err) => check.problem(err.to_string()),
        }
        checks.push(check.finish(started));
    }
    checks
}

/// Runs the assertions that apply to `database`; each must print `truth` (PostgreSQL's `t`,
/// MariaDB's `1`).
fn assertions(
    request: &RestoreTestRequest,
    kind: ItemKind,
    database: &str,
    truth: &str,
    run: impl Fn(&str) -> std::result::Result<String, String>,
    check: &mut Check,
) {
    let applies = |a: &&Assertion| {
        a.kind == kind && (a.databases.is_empty() || a.databases.iter().any(|d| d == database))
    };
    for assertion in request.assertions.iter().filter(applies) {
        match run(&assertion.sql) {
            Ok(answer) if answer == truth => check.assertions += 1,
            Ok(answer) => check.problem(format!(
                "assertion `{}` in database {database} returned `{answer}`, not true",
                assertion.sql
            )),
            Err(error) => check.problem(format!(
                "assertion `{}` in database {database} could not run (is it valid SQL that \
                 returns one boolean?): {error}",
                assertion.sql
            )),
        }
    }
}

/// Restores the newest base backup into the scratch directory with every archived WAL file it
/// needs beside it, starts a private server on it and waits until it has replayed to the end of
/// the archive and promoted.
pub fn pitr_test(repo: &Repo, scratch: &Path, pg_bin_dir: Option<&Path>) -> Result<RestoreTest> {
    let started = Instant::now();
    let full = repo
        .reopen()?
        .to_indexed()
        .map_err(|err| Error::repo("reading the repository index", err))?;
    let snaps = full
        .get_all_snapshots()
        .map_err(|err| Error::repo("listing snapshots", err))?;
    let bases = crate::pg::base_backups(&full, &snaps)?;
    let Some(base) = bases.last() else {
        return Err(ProveError::Nothing {
            reason: "the repository holds no PostgreSQL base backup to test".into(),
        }
        .into());
    };
    let snap = snaps
        .iter()
        .find(|s| s.id.to_hex().to_string() == base.snapshot)
        .map(|s| s.time.timestamp().to_string())
        .unwrap_or_default();
    let mut test = RestoreTest::new("pitr", &base.snapshot, snap);
    let mut check = Check::new("pitr", "pitr");

    // The WAL recovery reads: every segment from the backup's start on, and every history file.
    let size = base.base.wal_segment_size;
    let first = base.base.start().segment(size);
    let wal: Vec<_> = crate::pg::list_archived(&snaps)
        .into_iter()
        .filter(|w| match w.file(size) {
            Some(WalFile::History { .. }) => true,
            Some(WalFile::Segment { segment, .. } | WalFile::Partial { segment, .. }) => {
                segment >= first
            }
            _ => false,
        })
        .collect();
    open_scratch(scratch)?;
    test.scratch_needed = PG_CLUSTER + base.item.size + wal.iter().map(|w| w.size).sum::<u64>();
    test.scratch_free = free_space(scratch)?;
    if test.scratch_free < test.scratch_needed {
        test.fail(&not_enough_space(
            scratch,
            test.scratch_needed,
            test.scratch_free,
        ));
        return Ok(test.finish(started));
    }

    let outcome = (|| -> Result<()> {
        let bin = pitr_bin(pg_bin_dir, &base.base.server_version)?;
        let root = crate::sqlite::private_tempdir("pitr-", scratch)?.keep();
        let (data, wal_dir) = (root.join("data"), root.join("wal"));
        std::fs::create_dir_all(&wal_dir).map_err(|err| Error::io(&wal_dir, err))?;
        let restore_command = format!("cp '{}/%f' '%p'", wal_dir.display());
        let report = crate::pg::restore(
            repo,
            &PgRestoreRequest {
                target: RecoveryTarget::Latest,
                timeline: TimelineChoice::Latest,
                data_dir: data.clone(),
                snapshot: Some(base.snapshot.clone()),
                restore_command,
                keep_archiving: false,
            },
        )?;
        for file in &wal {
            let bytes = crate::pg::read_archived(&full, file)?;
            let path = wal_dir.join(&file.name);
            std::fs::write(&path, &bytes).map_err(|err| Error::io(&path, err))?;
        }
        check.bytes = base.item.size + wal.iter().map(|w| w.size).sum::<u64>();
        Account::for_server("postgres")?.give(&root)?;
        let server = PgServer::open(&bin, &root, &data)?;
        server.wait_promoted()?;
        let listed = server
            .query(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE NOT datistemplate",
            )
            .map_err(|reason| ProveError::ServerFailed {
                server: "PostgreSQL".into(),
                reason,
            })?;
        check.tables = listed.parse().unwrap_or(0);
        check.rows = report.segments;
        Ok(())
    })();
    if let Err(err) = outcome {
        check.problem(err.to_string());
    }
    test.push(check.finish(started));
    Ok(test.finish(started))
}

/// The server programs for a physical restore, which must be of the backup's major version.
fn pitr_bin(bin_dir: Option<&Path>, server_version: &str) -> Result<PgBin> {
    let wanted = major(server_version);
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{wanted}/bin"));
    let dir = bin_dir
        .map(Path::to_path_buf)
        .or_else(|| debian.is_dir().then_some(debian));
    let bin = PgBin::find(dir.as_deref())?;
    let found = bin.major();
    if found != 0 && wanted != 0 && found != wanted {
        return Err(ProveError::MissingServer {
            program: format!("a PostgreSQL {wanted} server"),
            place: format!("(found PostgreSQL {found} in {})", bin.dir.display()),
            install: format!(
                "a base backup starts only on its own major version; install postgresql-{wanted} \
                 or set [pitr] bin_dir"
            ),
        }
        .into());
    }
    Ok(bin)
}

fn kind_name(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Sqlite => "sqlite",
        ItemKind::Directory => "directory",
        ItemKind::Stream => "stream",
        ItemKind::Postgres => "postgres",
        ItemKind::Mysql => "mysql",
    }
}

/// `text` on one line: line breaks become ` / `.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_give_their_major() {
        assert_eq!(major("15.8 (Debian 15.8-0+deb12u1)"), 15);
        assert_eq!(major("10.11.6-MariaDB-0+deb12u1"), 10);
        assert_eq!(major(""), 0);
    }

    #[test]
    fn only_real_errors_in_the_globals_fail_the_test() {
        assert!(!is_real_error(
            "psql:<stdin>:14: ERROR:  role \"postgres\" already exists"
        ));
        assert!(is_real_error(
            "psql:<stdin>:20: ERROR:  syntax error at or near \"x\""
        ));
    }

    #[test]
    fn the_first_problem_becomes_the_tests_failure() {
        let mut test = RestoreTest::new("app", "abc", String::new());
        let mut check = Check::new("databases/app.db", "sqlite");
        check.problem("row counts differ:\nAlbum: catalog 348, restored 347");
        test.push(check);
        assert!(!test.passed);
        assert_eq!(
            test.failure.as_deref(),
            Some("databases/app.db: row counts differ: / Album: catalog 348, restored 347")
        );
    }
}
