//! MariaDB and MySQL: each database dumped by `mariadb-dump`/`mysqldump` in one consistent
//! transaction, its rows counted in the dump as it streams past, and restores through the
//! `mariadb`/`mysql` client into a database of the user's choosing, checked against the catalog.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::{
    Error, Result,
    catalog::ItemKind,
    dbrestore::{self, DatabaseRestoreReport, DatabaseRestored},
    dump::{DbUrl, DumpFacts, DumpItem, Tool, find_tool},
    snapshot::OpenSnapshot,
    source::validate_name,
};

/// The URL scheme of a MariaDB or MySQL server.
pub const SCHEMES: &[&str] = &["mysql", "mariadb"];

const INSTALL: &str = "install the MariaDB or MySQL client (Debian: apt-get install \
                       mariadb-client), or set `bin_dir` to the folder that holds it";

/// Databases every server has and no backup wants.
const SYSTEM: &[&str] = &["information_schema", "performance_schema", "mysql", "sys"];

/// A MariaDB or MySQL server to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlSource {
    /// The server: `mysql://USER@HOST:PORT/` or `mysql://USER@localhost/?socket=PATH`.
    pub url: DbUrl,
    /// Databases to dump; empty for every database but the system ones.
    pub databases: Vec<String>,
    /// Folder of `mariadb-dump` (or `mysqldump`) and `mariadb` (or `mysql`), instead of PATH.
    pub bin_dir: Option<PathBuf>,
}

/// The client tools, and an option file that carries the connection settings and password.
#[derive(Clone)]
struct Client {
    url: DbUrl,
    client: PathBuf,
    /// `[client]` options in a private temporary folder, removed when the last user is done.
    options: Arc<OptionFile>,
}

struct OptionFile {
    dir: tempfile::TempDir,
}

impl OptionFile {
    fn path(&self) -> PathBuf {
        self.dir.path().join("client.cnf")
    }
}

impl Client {
    /// The option file goes into a private folder under `temp_root` (the run's scratch
    /// directory, which is removed even when the run is interrupted).
    fn new(url: &DbUrl, bin_dir: Option<&Path>, temp_root: &Path) -> Result<Self> {
        let client = find_tool(&["mariadb", "mysql"], bin_dir, INSTALL)?;
        let dir = crate::sqlite::private_tempdir("palisade-mysql-", temp_root)?;
        let options = OptionFile { dir };
        let text = option_file(url)?;
        let path = options.path();
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|err| Error::io(&path, err))?;
            file.write_all(text.as_bytes())
                .map_err(|err| Error::io(&path, err))?;
        }
        Ok(Self {
            url: url.clone(),
            client,
            options: Arc::new(options),
        })
    }

    fn server(&self) -> String {
        self.url.shown()
    }

    /// A client tool with the option file as its first argument, as the tools require.
    fn tool(&self, program: &Path, what: impl Into<String>) -> Tool {
        Tool::new(program, what).arg(format!(
            "--defaults-extra-file={}",
            self.options.path().display()
        ))
    }

    /// Runs `sql` and returns the output lines, unescaped (`--raw`).
    fn query(&self, sql: &str) -> Result<Vec<String>> {
        self.tool(&self.client, "the MariaDB/MySQL client")
            .args(["--batch", "--raw", "--skip-column-names"])
            .output(sql.as_bytes())
            .map(|out| out.lines().map(str::to_string).collect())
            .map_err(|err| self.error(&err.to_string()))
    }

    fn error(&self, text: &str) -> Error {
        Error::Database {
            server: format!("MariaDB/MySQL at {}", self.server()),
            reason: explain(text),
        }
    }

    /// Exact row counts of every base table of `database`.
    fn count_rows(&self, database: &str) -> Result<BTreeMap<String, u64>> {
        let tables = self.query(&format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = {} \
             AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY 1;",
            literal(database)
        ))?;
        if tables.is_empty() {
            return Ok(BTreeMap::new());
        }
        let selects: Vec<String> = tables
            .iter()
            .map(|t| {
                format!(
                    "SELECT JSON_OBJECT('t', {}, 'n', COUNT(*)) FROM {}.{}",
                    literal(t),
                    ident(database),
                    ident(t)
                )
            })
            .collect();
        let lines = self.query(&format!("{};", selects.join(" UNION ALL ")))?;
        #[derive(serde::Deserialize)]
        struct Row {
            t: String,
            n: u64,
        }
        let mut counts = BTreeMap::new();
        for line in lines.iter().filter(|l| !l.trim().is_empty()) {
            let row: Row = serde_json::from_str(line).map_err(|err| {
                self.error(&format!("unexpected row count output `{line}`: {err}"))
            })?;
            counts.insert(row.t, row.n);
        }
        Ok(counts)
    }
}

/// Checks that every setting of `url` is one Palisade can pass on to the client tools.
pub fn check_url(url: &DbUrl) -> Result<()> {
    option_file(url).map(|_| ())
}

/// The `[client]` option file for `url`; values are quoted so that any character survives.
fn option_file(url: &DbUrl) -> Result<String> {
    let quote = |value: &str| {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                _ => out.push(c),
            }
        }
        out.push('"');
        out
    };
    let parsed = url.url();
    let mut text = String::from("[client]\n");
    let user = percent_encoding::percent_decode_str(parsed.username()).decode_utf8_lossy();
    if !user.is_empty() {
        text.push_str(&format!("user={}\n", quote(&user)));
    }
    if let Some(password) = url.password() {
        text.push_str(&format!("password={}\n", quote(password)));
    }
    if let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) {
        text.push_str(&format!("host={}\n", quote(host)));
    }
    if let Some(port) = parsed.port() {
        text.push_str(&format!("port={port}\n"));
    }
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "socket" => text.push_str(&format!("socket={}\n", quote(&value))),
            "user" if user.is_empty() => text.push_str(&format!("user={}\n", quote(&value))),
            "ssl-mode" | "ssl_mode" => text.push_str(&format!("ssl-mode={}\n", quote(&value))),
            other => {
                return Err(Error::BadDatabaseUrl {
                    reason: format!(
                        "the setting `{other}` is not one Palisade passes on; use `socket` \
                         (the server's Unix socket) or `ssl-mode`"
                    ),
                });
            }
        }
    }
    Ok(text)
}

/// An SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// An SQL identifier.
fn ident(text: &str) -> String {
    format!("`{}`", text.replace('`', "``"))
}

fn explain(text: &str) -> String {
    let lower = text.to_lowercase();
    if lower.contains("access denied") {
        format!(
            "the server refused the credentials ({text}); check the user and password in the \
             URL (or the [client] section of ~/.my.cnf)"
        )
    } else if lower.contains("can't connect") || lower.contains("unknown mysql server host") {
        format!(
            "cannot reach the server ({text}); check the host and port (or `?socket=PATH`) in \
             the URL, and that the server is running"
        )
    } else if lower.contains("unknown database") {
        format!("{text}; list the server's databases with `mariadb -e 'SHOW DATABASES'`")
    } else {
        text.to_string()
    }
}

/// Expands a server into one dump item per database.
pub(crate) fn plan(source: &MysqlSource, temp_root: &Path) -> Result<Vec<DumpItem>> {
    let client = Client::new(&source.url, source.bin_dir.as_deref(), temp_root)?;
    let dump = find_tool(
        &["mariadb-dump", "mysqldump"],
        source.bin_dir.as_deref(),
        INSTALL,
    )?;
    let server_version = client
        .query("SELECT VERSION();")?
        .into_iter()
        .next()
        .unwrap_or_default();
    let dumped_by = std::process::Command::new(&dump)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let existing: Vec<String> = client
        .query("SHOW DATABASES;")?
        .into_iter()
        .filter(|d| !SYSTEM.contains(&d.as_str()))
        .collect();
    let databases = if source.databases.is_empty() {
        // A database in the URL's path is the one to dump; none means all of them.
        match source.url.database() {
            Some(database) if !existing.contains(&database) => {
                return Err(client.error(&format!(
                    "no database {database}; the server has: {}",
                    existing.join(", ")
                )));
            }
            Some(database) => vec![database],
            None => existing,
        }
    } else {
        let missing: Vec<&str> = source
            .databases
            .iter()
            .filter(|d| !existing.contains(d))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(client.error(&format!(
                "no database {}; the server has: {}",
                missing.join(", "),
                existing.join(", ")
            )));
        }
        source.databases.clone()
    };
    let mut items = Vec::new();
    for database in databases {
        let name = validate_name(&crate::dump::dump_item_name(&database, "sql"))?;
        let facts = DumpFacts {
            database: Some(database.clone()),
            server_version: Some(server_version.clone()),
            dumped_by: Some(dumped_by.clone()),
            tables: Arc::default(),
        };
        // No --databases: the dump then carries no CREATE DATABASE or USE, and restores under
        // any name.
        let tool = client
            .tool(
                &dump,
                format!("{} of database {database}", tool_name(&dump)),
            )
            .args([
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--skip-dump-date",
                "--default-character-set=utf8mb4",
                "--",
            ])
            .arg(&database);
        let tables = facts.tables.clone();
        let keep = client.options.clone();
        let mut source_url = client.url.url().clone();
        source_url.set_path(&format!("/{database}"));
        items.push(DumpItem {
            kind: ItemKind::Mysql,
            name,
            source: source_url.to_string(),
            facts,
            start: Box::new(move || {
                let reader = tool.spawn_reader()?;
                Ok(Box::new(CountingReader {
                    inner: reader,
                    counter: InsertCounter::default(),
                    tables,
                    _options: keep,
                }) as Box<dyn Read + Send>)
            }),
        });
    }
    Ok(items)
}

fn tool_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Passes a dump through while counting the rows of its `INSERT` statements; the counts are
/// published only when the dump ended well.
struct CountingReader<R> {
    inner: R,
    counter: InsertCounter,
    tables: Arc<Mutex<Option<BTreeMap<String, u64>>>>,
    _options: Arc<OptionFile>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let counts = std::mem::take(&mut self.counter.tables);
            *self
                .tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(counts);
        } else {
            self.counter.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// Where the counter is in the dump's text.
#[derive(Debug, Default)]
enum Scan {
    /// At the start of a line, with the bytes of it seen so far.
    #[default]
    LineStart,
    Prefix(Vec<u8>),
    /// Reading a backquoted table name after `INSERT INTO` or `CREATE TABLE`.
    Name {
        insert: bool,
        name: Vec<u8>,
        tick: bool,
    },
    /// After an INSERT's table name, before the first row.
    BeforeValues {
        table: String,
        seen: usize,
    },
    /// Inside an INSERT's rows.
    Values {
        table: String,
        depth: u32,
        quote: Option<u8>,
        escape: bool,
    },
    /// Reading the new delimiter of a `DELIMITER` line.
    Delimiter(Vec<u8>),
    /// Skipping to the end of the line.
    Skip,
}

/// Counts rows per table in `mysqldump`'s output: one per top-level parenthesised tuple of an
/// `INSERT INTO `t` VALUES (...),(...);` line, tables with no rows included through their
/// `CREATE TABLE`. Strings are followed through quotes and backslash escapes.
#[derive(Debug, Default)]
struct InsertCounter {
    scan: Scan,
    tables: BTreeMap<String, u64>,
    /// Inside a `DELIMITER ;;` block: the bodies of routines, triggers and events, whose
    /// statements are not rows of the dump.
    in_routines: bool,
}

const INSERT: &[u8] = b"INSERT INTO `";
const CREATE: &[u8] = b"CREATE TABLE `";
const VALUES: &[u8] = b"VALUES";
const DELIMITER: &[u8] = b"DELIMITER ";

impl InsertCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        let scan = std::mem::take(&mut self.scan);
        self.scan = match scan {
            Scan::LineStart => self.prefix(Vec::new(), b),
            Scan::Prefix(seen) => self.prefix(seen, b),
            Scan::Skip => {
                if b == b'\n' {
                    Scan::LineStart
                } else {
                    Scan::Skip
                }
            }
            Scan::Delimiter(mut delimiter) => {
                if b == b'\n' {
                    self.in_routines = delimiter.trim_ascii() != b";";
                    Scan::LineStart
                } else {
                    delimiter.push(b);
                    Scan::Delimiter(delimiter)
                }
            }
            Scan::Name { insert, name, tick } => {
                Self::name(insert, name, tick, b, &mut self.tables)
            }
            Scan::BeforeValues { table, seen } => {
                if seen == VALUES.len() {
                    // After the keyword: white space (MariaDB puts a line break here), then
                    // the first row.
                    match b {
                        b'(' => {
                            *self.tables.entry(table.clone()).or_default() += 1;
                            Scan::Values {
                                table,
                                depth: 1,
                                quote: None,
                                escape: false,
                            }
                        }
                        b' ' | b'\n' | b'\r' | b'\t' => Scan::BeforeValues { table, seen },
                        _ => Scan::Skip,
                    }
                } else if b == b'\n' {
                    Scan::LineStart
                } else if b == VALUES[seen] {
                    Scan::BeforeValues {
                        table,
                        seen: seen + 1,
                    }
                } else {
                    Scan::BeforeValues {
                        table,
                        seen: usize::from(b == VALUES[0]),
                    }
                }
            }
            Scan::Values {
                table,
                depth,
                quote,
                escape,
            } => self.values(table, depth, quote, escape, b),
        };
    }

    fn prefix(&mut self, mut seen: Vec<u8>, b: u8) -> Scan {
        if b == b'\n' {
            return Scan::LineStart;
        }
        seen.push(b);
        if seen == DELIMITER {
            return Scan::Delimiter(Vec::new());
        }
        if !self.in_routines {
            for (pattern, insert) in [(INSERT, true), (CREATE, false)] {
                if seen == pattern {
                    return Scan::Name {
                        insert,
                        name: Vec::new(),
                        tick: false,
                    };
                }
            }
        }
        let statement =
            !self.in_routines && (INSERT.starts_with(&seen) || CREATE.starts_with(&seen));
        if statement || DELIMITER.starts_with(&seen) {
            Scan::Prefix(seen)
        } else {
            Scan::Skip
        }
    }

    fn name(
        insert: bool,
        mut name: Vec<u8>,
        tick: bool,
        b: u8,
        tables: &mut BTreeMap<String, u64>,
    ) -> Scan {
        match (tick, b) {
            // A doubled backquote is one backquote of the name.
            (false, b'`') => Scan::Name {
                insert,
                name,
                tick: true,
            },
            (true, b'`') => {
                name.push(b'`');
                Scan::Name {
                    insert,
                    name,
                    tick: false,
                }
            }
            (true, _) => {
                let table = String::from_utf8_lossy(&name).into_owned();
                tables.entry(table.clone()).or_default();
                match (insert, b) {
                    (_, b'\n') => Scan::LineStart,
                    (true, _) => Scan::BeforeValues { table, seen: 0 },
                    (false, _) => Scan::Skip,
                }
            }
            (false, b'\n') => Scan::LineStart,
            (false, _) => {
                name.push(b);
                Scan::Name {
                    insert,
                    name,
                    tick: false,
                }
            }
        }
    }

    fn values(
        &mut self,
        table: String,
        depth: u32,
        quote: Option<u8>,
        escape: bool,
        b: u8,
    ) -> Scan {
        let (mut depth, mut quote, mut escape) = (depth, quote, escape);
        if let Some(q) = quote {
            if escape {
                escape = false;
            } else if b == b'\\' {
                escape = true;
            } else if b == q {
                quote = None;
            }
        } else {
            match b {
                b'\'' | b'"' => quote = Some(b),
                b'(' => {
                    if depth == 0 {
                        *self.tables.entry(table.clone()).or_default() += 1;
                    }
                    depth += 1;
                }
                b')' => depth = depth.saturating_sub(1),
                // Rows may be split over lines; only the statement's end ends them.
                b';' if depth == 0 => return Scan::Skip,
                _ => {}
            }
        }
        Scan::Values {
            table,
            depth,
            quote,
            escape,
        }
    }
}

/// What to restore into a MariaDB or MySQL server.
#[derive(Debug, Clone)]
pub struct MysqlRestore {
    /// Snapshot id, prefix or `latest`.
    pub snapshot: String,
    /// The server to restore into.
    pub url: DbUrl,
    /// Restore only this database of the snapshot.
    pub database: Option<String>,
    /// Restore under this name instead (one database only).
    pub rename: Option<String>,
    /// Drop and recreate a target database that already holds tables.
    pub clean: bool,
    /// Folder of `mariadb` (or `mysql`), instead of PATH.
    pub bin_dir: Option<PathBuf>,
    /// Where the client's option file waits (default: the system's temporary folder).
    pub temp_dir: Option<PathBuf>,
}

/// Restores MariaDB/MySQL databases from a snapshot and checks every table's row count.
pub fn restore(repo: &crate::Repo, request: &MysqlRestore) -> Result<DatabaseRestoreReport> {
    let temp_root = request.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let client = Client::new(&request.url, request.bin_dir.as_deref(), &temp_root)?;
    let open = OpenSnapshot::open(repo, &request.snapshot)?;
    let catalog = open.catalog()?.ok_or_else(|| Error::NoCatalog {
        id: open.id(),
        path: crate::CATALOG_PATH.into(),
    })?;
    let chosen = dbrestore::select(
        &open,
        &catalog.items,
        ItemKind::Mysql,
        request.database.as_deref(),
        request.rename.is_some(),
    )?;
    let mut targets = Vec::new();
    for item in &chosen {
        let source = item.database.clone().unwrap_or_default();
        let target = request.rename.clone().unwrap_or_else(|| source.clone());
        let exists = client
            .query(&format!(
                "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = {};",
                literal(&target)
            ))?
            .first()
            .is_some_and(|n| n.trim() != "0");
        if exists && !request.clean {
            let relations = client
                .query(&format!(
                    "SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema \
                     = {0}) + (SELECT COUNT(*) FROM information_schema.routines WHERE \
                     routine_schema = {0}) + (SELECT COUNT(*) FROM information_schema.events \
                     WHERE event_schema = {0});",
                    literal(&target)
                ))?
                .first()
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if relations > 0 {
                return Err(Error::DatabaseNotEmpty {
                    server: client.server(),
                    database: target,
                    relations,
                });
            }
        }
        targets.push((item, source, target, exists));
    }
    let mut report = DatabaseRestoreReport {
        snapshot: open.id(),
        server: client.server(),
        databases: Vec::new(),
        warnings: Vec::new(),
    };
    for (item, source, target, exists) in targets {
        let replace = exists && request.clean;
        if replace {
            // Proved under a temporary name first: the old database is dropped only once the
            // snapshot is known to restore.
            let trial = format!("{}_palisade_check", truncate(&target, 40));
            client.query(&format!(
                "DROP DATABASE IF EXISTS {0};\nCREATE DATABASE {0};",
                ident(&trial)
            ))?;
            let proved = restore_one(&client, &open, item, &trial);
            let _ = client.query(&format!("DROP DATABASE IF EXISTS {};", ident(&trial)));
            proved?;
            client.query(&format!(
                "DROP DATABASE {0};\nCREATE DATABASE {0};",
                ident(&target)
            ))?;
        } else if !exists {
            client.query(&format!("CREATE DATABASE {};", ident(&target)))?;
        }
        let created = !exists || replace;
        let (bytes, tables, rows) = match restore_one(&client, &open, item, &target) {
            Ok(done) => done,
            Err(err) => {
                if created {
                    let _ = client.query(&format!("DROP DATABASE IF EXISTS {};", ident(&target)));
                }
                return Err(err);
            }
        };
        report.databases.push(DatabaseRestored {
            database: source,
            target,
            bytes,
            tables,
            rows,
        });
    }
    Ok(report)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Streams one dump into `database` and compares its row counts with the catalog's.
fn restore_one(
    client: &Client,
    open: &OpenSnapshot,
    item: &crate::CatalogItem,
    database: &str,
) -> Result<(u64, usize, u64)> {
    let tool = client
        .tool(
            &client.client,
            format!("{} into database {database}", tool_name(&client.client)),
        )
        .args(["--binary-mode", "--database"])
        .arg(database);
    let bytes = dbrestore::feed(open, item, tool.command(), &tool.what)?;
    let found = client.count_rows(database)?;
    let name = item.database.as_deref().unwrap_or(database);
    let (tables, rows) = dbrestore::compare_counts(name, item.tables.as_ref(), &found)?;
    Ok((bytes, tables, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(dump: &str) -> BTreeMap<String, u64> {
        let mut counter = InsertCounter::default();
        // Byte by byte, so that no state depends on how reads split the stream.
        for b in dump.as_bytes() {
            counter.feed(std::slice::from_ref(b));
        }
        counter.tables
    }

    #[test]
    fn rows_are_counted_through_strings_and_escapes() {
        let dump = "-- MariaDB dump\n\
            CREATE TABLE `Album` (\n  `AlbumId` int(11) NOT NULL\n);\n\
            CREATE TABLE `Empty` (\n  `x` int\n);\n\
            INSERT INTO `Album` VALUES (1,'For Those (About) To Rock',1),(2,'it\\'s, ok',2);\n\
            INSERT INTO `Album` VALUES\n(3,'a);(b',3),\n(4,'x',4);\n\
            INSERT INTO `we``ird` VALUES (1,\"q\\\"(\"),(0x28,NULL);\n\
            /*!50001 CREATE TABLE `view_like` */;\n\
            DELIMITER ;;\n\
            CREATE PROCEDURE p() BEGIN\n\
            INSERT INTO `Album` VALUES (9,'not a row',9);\n\
            INSERT INTO `ghost` VALUES (1);\n\
            END ;;\n\
            DELIMITER ;\n\
            INSERT INTO `Empty` VALUES (5);\n";
        let tables = count(dump);
        assert_eq!(tables["Album"], 4);
        assert_eq!(tables["Empty"], 1);
        assert!(!tables.contains_key("ghost"), "{tables:?}");
        assert_eq!(tables["we`ird"], 2);
        assert!(!tables.contains_key("view_like"));
    }

    #[test]
    fn option_files_quote_what_they_carry() {
        let url = DbUrl::parse(
            "mysql://app:p%22w%5Cd@localhost:3307/?socket=/run/my%20sql.sock",
            SCHEMES,
        )
        .unwrap();
        let text = option_file(&url).unwrap();
        assert!(text.contains("password=\"p\\\"w\\\\d\"\n"), "{text}");
        assert!(text.contains("socket=\"/run/my sql.sock\""), "{text}");
        assert!(text.contains("port=3307"), "{text}");
        let bad = DbUrl::parse("mysql://a@b/?sslmode=x", SCHEMES).unwrap();
        assert!(
            option_file(&bad)
                .unwrap_err()
                .to_string()
                .contains("socket")
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's \\"), "'it''s \\\\'");
    }
}
