//! PostgreSQL: each database dumped by `pg_dump` in the very snapshot its row counts are read
//! from, the server's roles by `pg_dumpall --globals-only`, and restores through `pg_restore`
//! into a database of the user's choosing, checked against the catalog.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::Arc,
    thread::JoinHandle,
};

use crate::{
    Error, Result,
    catalog::ItemKind,
    dbrestore::{self, DatabaseRestoreReport, DatabaseRestored},
    dump::{DbUrl, DumpFacts, DumpItem, Tool, collect_stderr, find_tool, stderr_tail},
    snapshot::OpenSnapshot,
    source::validate_name,
};

/// The URL schemes libpq accepts.
pub const SCHEMES: &[&str] = &["postgresql", "postgres"];

const INSTALL: &str = "install PostgreSQL's client tools for the server's version (Debian: \
                       apt-get install postgresql-client), or set `bin_dir` to the folder that \
                       holds them";

/// The name of the item that holds the server's roles and tablespaces.
pub const GLOBALS: &str = "globals.sql";

/// A PostgreSQL server to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSource {
    /// The server; its database (default `postgres`) is where Palisade connects to look around.
    pub url: DbUrl,
    /// Databases to dump; empty for every database that accepts connections.
    pub databases: Vec<String>,
    /// Also dump roles and tablespaces (`pg_dumpall --globals-only`; needs a superuser).
    pub globals: bool,
    /// Folder of `pg_dump`, `pg_dumpall` and `psql`, instead of PATH.
    pub bin_dir: Option<PathBuf>,
}

/// The PostgreSQL tools and the server they talk to.
#[derive(Clone)]
struct Client {
    url: DbUrl,
    bin_dir: Option<PathBuf>,
    psql: PathBuf,
}

impl Client {
    fn new(url: &DbUrl, bin_dir: Option<&Path>) -> Result<Self> {
        Ok(Self {
            url: url.clone(),
            bin_dir: bin_dir.map(Path::to_path_buf),
            psql: find_tool(&["psql"], bin_dir, INSTALL)?,
        })
    }

    fn tool(&self, name: &str) -> Result<PathBuf> {
        find_tool(&[name], self.bin_dir.as_deref(), INSTALL)
    }

    /// The database Palisade connects to for its own queries.
    fn home(&self) -> String {
        self.url.database().unwrap_or_else(|| "postgres".into())
    }

    fn server(&self) -> String {
        self.url.shown()
    }

    /// Where to connect to create, rename or drop `target`: never `target` itself.
    fn maintenance_db(&self, target: &str) -> String {
        let home = self.home();
        if home == target {
            "template1".into()
        } else {
            home
        }
    }

    /// A libpq tool with the connection settings and password in its environment.
    fn with_password(&self, tool: Tool) -> Tool {
        match self.url.password() {
            Some(password) => tool.env("PGPASSWORD", password),
            None => tool,
        }
    }

    fn psql_tool(&self, database: &str) -> Tool {
        self.with_password(
            Tool::new(&self.psql, format!("psql on database {database}"))
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--no-password",
                ])
                .arg("--dbname")
                .arg(self.url.for_database(database).as_str()),
        )
    }

    /// Runs `sql` (psql's script syntax) in `database`; returns the output lines.
    fn query(&self, database: &str, sql: &str, vars: &[(&str, &str)]) -> Result<Vec<String>> {
        let mut tool = self.psql_tool(database);
        for (name, value) in vars {
            tool = tool.arg("-v").arg(format!("{name}={value}"));
        }
        tool.output(sql.as_bytes())
            .map(|out| out.lines().map(str::to_string).collect())
            .map_err(|err| self.error(&err.to_string()))
    }

    /// The engine error for what a tool printed, with the fix for the usual causes.
    fn error(&self, text: &str) -> Error {
        Error::Database {
            server: format!("PostgreSQL at {}", self.server()),
            reason: explain(text),
        }
    }

    fn server_version(&self) -> Result<(String, u32)> {
        let lines = self.query(
            &self.home(),
            "SELECT current_setting('server_version') || '|' || current_setting('server_version_num');",
            &[],
        )?;
        let line = lines.first().cloned().unwrap_or_default();
        let (text, num) = line.rsplit_once('|').unwrap_or((&line, "0"));
        let major = num.trim().parse::<u32>().unwrap_or(0) / 10_000;
        Ok((text.to_string(), major))
    }

    /// The exact row count of every table of `database`.
    fn count_rows(&self, database: &str) -> Result<BTreeMap<String, u64>> {
        let lines = self.query(database, COUNT_ROWS, &[])?;
        parse_counts(&lines).map_err(|err| self.error(&err.to_string()))
    }
}

/// A `format()` query that writes one `SELECT` per table, which `\gexec` runs: each prints the
/// table's `schema.name` and exact row count as one JSON object.
const COUNT_ROWS: &str = "SELECT format('SELECT json_build_object(''t'', %L, ''n'', count(*)) \
     FROM ONLY %I.%I', format('%I.%I', n.nspname, c.relname), n.nspname, c.relname) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' \
     AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1 \\gexec\n";

/// User relations of a database: more than none means it is not empty.
const RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n \
     ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
     AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%';\n";

fn parse_counts(lines: &[String]) -> io::Result<BTreeMap<String, u64>> {
    #[derive(serde::Deserialize)]
    struct Row {
        t: String,
        n: u64,
    }
    let mut counts = BTreeMap::new();
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let row: Row = serde_json::from_str(line).map_err(|err| {
            io::Error::other(format!("unexpected row count output `{line}`: {err}"))
        })?;
        counts.insert(row.t, row.n);
    }
    Ok(counts)
}

/// Says what to fix for the failures people meet most; otherwise quotes the tool.
fn explain(text: &str) -> String {
    let lower = text.to_lowercase();
    if lower.contains("password authentication failed")
        || lower.contains("no password supplied")
        || lower.contains("peer authentication failed")
    {
        format!(
            "the server refused the credentials ({text}); check the user in the URL and the \
             password (PGPASSWORD, ~/.pgpass, or the URL)"
        )
    } else if lower.contains("connection refused")
        || lower.contains("no such file or directory")
        || lower.contains("could not translate host name")
        || lower.contains("timeout expired")
        || lower.contains("could not connect")
    {
        format!(
            "cannot reach the server ({text}); check the host and port (or the socket folder, \
             `?host=/run/postgresql`) in the URL, and that PostgreSQL is running"
        )
    } else if lower.contains("does not exist") && lower.contains("database") {
        format!("{text}; list the server's databases with `psql -l` and fix the name")
    } else if lower.contains("permission denied for table pg_authid") {
        format!(
            "{text}; the roles and tablespaces (pg_dumpall --globals-only) need a superuser or \
             pg_read_all_data: back up as one, or set `globals = false` (--no-globals)"
        )
    } else if lower.contains("server version mismatch") {
        format!("{text}; install the client tools of the server's version, or set `bin_dir`")
    } else {
        text.to_string()
    }
}

/// The major version `pg_dump --version` and friends print (`pg_dump (PostgreSQL) 15.8 ...`).
fn tool_version(program: &Path) -> Result<(String, u32)> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .map_err(|err| Error::Read {
            what: program.display().to_string(),
            source: err,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = text
        .split(')')
        .nth(1)
        .and_then(|rest| rest.trim().split(['.', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((text, major))
}

/// Expands a server into one dump item per database (and one for its globals).
pub(crate) fn plan(source: &PostgresSource) -> Result<Vec<DumpItem>> {
    let client = Client::new(&source.url, source.bin_dir.as_deref())?;
    let pg_dump = client.tool("pg_dump")?;
    let (server_version, server_major) = client.server_version()?;
    let (dumped_by, dump_major) = tool_version(&pg_dump)?;
    if dump_major != 0 && server_major != 0 && dump_major < server_major {
        return Err(client.error(&format!(
            "{} is {dump_major}, older than the server's PostgreSQL {server_major}, and cannot \
             dump it; install PostgreSQL {server_major}'s client tools (Debian: apt-get install \
             postgresql-client-{server_major}) or set `bin_dir` to them",
            pg_dump.display()
        )));
    }
    let existing = client.query(
        &client.home(),
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1;",
        &[],
    )?;
    let databases = if source.databases.is_empty() {
        existing
    } else {
        let missing: Vec<&str> = source
            .databases
            .iter()
            .filter(|d| !existing.contains(d))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(client.error(&format!(
                "no database {} that accepts connections; the server has: {}",
                missing.join(", "),
                existing.join(", ")
            )));
        }
        source.databases.clone()
    };

    let mut items = Vec::new();
    for database in databases {
        let name = validate_name(&crate::dump::dump_item_name(&database, "dump"))?;
        let facts = DumpFacts {
            database: Some(database.clone()),
            server_version: Some(server_version.clone()),
            dumped_by: Some(dumped_by.clone()),
            tables: Arc::default(),
        };
        let start = database_dump(client.clone(), pg_dump.clone(), database.clone(), &facts);
        items.push(DumpItem {
            kind: ItemKind::Postgres,
            name,
            source: client.url.for_database(&database).to_string(),
            facts,
            start,
        });
    }
    if source.globals {
        let pg_dumpall = client.tool("pg_dumpall")?;
        let (dumpall_version, _) = tool_version(&pg_dumpall)?;
        let tool = client.with_password(
            Tool::new(&pg_dumpall, "pg_dumpall --globals-only")
                .args(["--globals-only", "--no-password", "--dbname"])
                .arg(client.url.for_database(&client.home()).as_str()),
        );
        items.push(DumpItem {
            kind: ItemKind::Postgres,
            name: GLOBALS.into(),
            source: client.server(),
            facts: DumpFacts {
                database: None,
                server_version: Some(server_version.clone()),
                dumped_by: Some(dumpall_version),
                tables: Arc::default(),
            },
            start: Box::new(move || Ok(Box::new(tool.spawn_reader()?) as Box<dyn Read + Send>)),
        });
    }
    Ok(items)
}

/// Starts one database's dump: a session exports a snapshot, `pg_dump` dumps exactly that
/// snapshot, and once the dump is whole the same session counts every table's rows in it.
fn database_dump(
    client: Client,
    pg_dump: PathBuf,
    database: String,
    facts: &DumpFacts,
) -> crate::dump::Start {
    let tables = facts.tables.clone();
    Box::new(move || {
        let mut session = Session::open(&client, &database)?;
        let snapshot = session
            .query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();",
            )?
            .into_iter()
            .find(|line| !line.trim().is_empty())
            .ok_or_else(|| io::Error::other("PostgreSQL exported no snapshot"))?;
        let tool = client.with_password(
            Tool::new(&pg_dump, format!("pg_dump of database {database}"))
                .args([
                    "--format=custom",
                    "--compress=0",
                    "--blobs",
                    "--no-password",
                ])
                .arg(format!("--snapshot={}", snapshot.trim()))
                .arg("--dbname")
                .arg(client.url.for_database(&database).as_str()),
        );
        let reader = tool.spawn_reader()?;
        Ok(Box::new(reader.on_success(Box::new(move || {
            let lines = session.query(COUNT_ROWS.trim_end())?;
            let counts = parse_counts(&lines)?;
            session.close()?;
            *tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(counts);
            Ok(())
        }))) as Box<dyn Read + Send>)
    })
}

/// A psql process kept open to hold a transaction (and so its snapshot) while pg_dump runs.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    what: String,
}

/// Printed after each query, so that the reader knows where its output ends.
const END: &str = "__palisade_end_of_output__";

impl Session {
    fn open(client: &Client, database: &str) -> io::Result<Self> {
        let tool = client.psql_tool(database);
        let mut child = tool
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let stderr = Some(collect_stderr(&mut child));
        Ok(Self {
            child,
            stdin,
            stdout,
            stderr,
            what: format!("the snapshot session on database {database}"),
        })
    }

    fn query(&mut self, sql: &str) -> io::Result<Vec<String>> {
        writeln!(self.stdin, "{sql}\n\\echo {END}")?;
        self.stdin.flush()?;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(self.failed());
            }
            let line = line.trim_end_matches('\n');
            if line == END {
                return Ok(lines);
            }
            lines.push(line.to_string());
        }
    }

    fn close(mut self) -> io::Result<()> {
        writeln!(self.stdin, "COMMIT;\n\\q")?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(self.failed());
        }
        Ok(())
    }

    fn failed(&mut self) -> io::Error {
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        io::Error::other(format!(
            "{} ended: {}",
            self.what,
            explain(&stderr_tail(&stderr))
        ))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to restore into a PostgreSQL server.
#[derive(Debug, Clone)]
pub struct PostgresRestore {
    /// Snapshot id, prefix or `latest`.
    pub snapshot: String,
    /// The server to restore into (its database is where Palisade connects to create others).
    pub url: DbUrl,
    /// Restore only this database of the snapshot.
    pub database: Option<String>,
    /// Restore under this name instead (one database only).
    pub rename: Option<String>,
    /// Drop and recreate a target database that already holds tables.
    pub clean: bool,
    /// Leave object ownership to the restoring user (for a server without the dump's roles).
    pub no_owner: bool,
    /// Also apply the snapshot's roles and tablespaces first.
    pub globals: bool,
    /// Folder of `pg_restore` and `psql`, instead of PATH.
    pub bin_dir: Option<PathBuf>,
}

/// Restores PostgreSQL databases from a snapshot and checks every table's row count.
pub fn restore(repo: &crate::Repo, request: &PostgresRestore) -> Result<DatabaseRestoreReport> {
    let client = Client::new(&request.url, request.bin_dir.as_deref())?;
    let pg_restore = client.tool("pg_restore")?;
    let open = OpenSnapshot::open(repo, &request.snapshot)?;
    let catalog = open.catalog()?.ok_or_else(|| Error::NoCatalog {
        id: open.id(),
        path: crate::CATALOG_PATH.into(),
    })?;
    let chosen = dbrestore::select(
        &open,
        &catalog.items,
        ItemKind::Postgres,
        request.database.as_deref(),
        request.rename.is_some(),
    )?;
    let mut report = DatabaseRestoreReport {
        snapshot: open.id(),
        server: client.server(),
        databases: Vec::new(),
        warnings: Vec::new(),
    };
    // Check every target first, so that a refusal happens before anything is written.
    let mut targets = Vec::new();
    for item in &chosen {
        let source = item.database.clone().unwrap_or_default();
        let target = request.rename.clone().unwrap_or_else(|| source.clone());
        let exists = !client
            .query(
                &client.home(),
                "SELECT 1 FROM pg_database WHERE datname = :'target';\n",
                &[("target", &target)],
            )?
            .is_empty();
        if exists && !request.clean {
            let relations = client
                .query(&target, RELATIONS, &[])?
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

    let globals = catalog
        .items
        .iter()
        .find(|i| i.kind == ItemKind::Postgres && i.name == GLOBALS);
    if request.globals && globals.is_none() {
        return Err(Error::Database {
            server: format!("snapshot {}", open.id()),
            reason: "it holds no PostgreSQL roles and tablespaces (it was made with \
                     --no-globals or `globals = false`); restore without --globals"
                .into(),
        });
    }
    if request.globals
        && let Some(globals) = globals
    {
        // Roles that exist already fail to be created again; those errors are reported, not
        // fatal.
        let tool = client.with_password(
            Tool::new(&client.psql, "psql applying the globals")
                .args(["-X", "-q", "--no-password", "--dbname"])
                .arg(client.url.for_database(&client.home()).as_str()),
        );
        let (warnings, _) = feed_collecting(&open, globals, tool)?;
        report.warnings.extend(warnings);
    }

    for (item, source, target, exists) in targets {
        // With --clean, the snapshot is restored and checked under a temporary name first, and
        // only then takes the old database's place: a restore that fails leaves it untouched.
        let replace = exists && request.clean;
        let into = if replace {
            temporary_name(&target)
        } else {
            target.clone()
        };
        let maintenance = client.maintenance_db(&target);
        let created = !exists || replace;
        if created {
            client.query(
                &maintenance,
                "CREATE DATABASE :\"target\" TEMPLATE template0;\n",
                &[("target", &into)],
            )?;
        }
        let restored = restore_one(&client, &pg_restore, &open, item, &into, request.no_owner);
        let (bytes, tables, rows) = match restored {
            Ok(done) => done,
            Err(err) => {
                if created {
                    // Made for this restore: take it away again.
                    let _ = client.query(
                        &maintenance,
                        "DROP DATABASE IF EXISTS :\"target\" WITH (FORCE);\n",
                        &[("target", &into)],
                    );
                }
                return Err(err);
            }
        };
        if replace {
            let old = temporary_name(&target);
            client.query(
                &maintenance,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = \
                 :'target' AND pid <> pg_backend_pid();\n\
                 ALTER DATABASE :\"target\" RENAME TO :\"old\";\n\
                 ALTER DATABASE :\"into\" RENAME TO :\"target\";\n\
                 DROP DATABASE :\"old\" WITH (FORCE);\n",
                &[("target", &target), ("old", &old), ("into", &into)],
            )?;
        }
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

/// A name for a database that exists only during a restore (63 bytes at most, as PostgreSQL
/// allows).
fn temporary_name(target: &str) -> String {
    use rand::Rng;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(8)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    let mut base: String = String::new();
    for c in target.chars() {
        if base.len() + c.len_utf8() > 63 - 19 {
            break;
        }
        base.push(c);
    }
    format!("{base}_palisade_{suffix}")
}

/// Streams one dump into `database` and compares its row counts with the catalog's.
fn restore_one(
    client: &Client,
    pg_restore: &Path,
    open: &OpenSnapshot,
    item: &crate::CatalogItem,
    database: &str,
    no_owner: bool,
) -> Result<(u64, usize, u64)> {
    let mut tool = client.with_password(
        Tool::new(pg_restore, format!("pg_restore into database {database}")).args([
            "--exit-on-error",
            "--single-transaction",
            "--no-password",
        ]),
    );
    if no_owner {
        // Without the dump's roles, neither their ownership nor their grants can be applied.
        tool = tool.args(["--no-owner", "--no-privileges"]);
    }
    let tool = tool
        .arg("--dbname")
        .arg(client.url.for_database(database).as_str());
    let bytes = dbrestore::feed(open, item, tool.command(), &tool.what)?;
    let found = client.count_rows(database)?;
    let name = item.database.as_deref().unwrap_or(database);
    let (tables, rows) = dbrestore::compare_counts(name, item.tables.as_ref(), &found)?;
    Ok((bytes, tables, rows))
}

/// Feeds the globals script to psql, keeping what it printed as warnings.
fn feed_collecting(
    open: &OpenSnapshot,
    item: &crate::CatalogItem,
    tool: Tool,
) -> Result<(Vec<String>, u64)> {
    let mut bytes = Vec::new();
    open.repo
        .dump(
            &open
                .entries
                .iter()
                .find(|(path, _)| path == Path::new(&item.path))
                .map(|(_, node)| node.clone())
                .ok_or_else(|| Error::NoSuchItem {
                    id: open.id(),
                    item: item.path.clone(),
                })?,
            &mut bytes,
        )
        .map_err(|err| Error::repo("reading the globals from the snapshot", err))?;
    let mut child = tool
        .command()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| Error::Read {
            what: tool.what.clone(),
            source: err,
        })?;
    let stderr = collect_stderr(&mut child);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(&bytes);
    drop(stdin);
    let _ = child.wait();
    written.map_err(|err| Error::Read {
        what: tool.what.clone(),
        source: err,
    })?;
    let warnings = stderr
        .join()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    Ok((warnings, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_are_read_from_json_lines() {
        let lines = vec![
            r#"{"t" : "public.album", "n" : 347}"#.to_string(),
            String::new(),
            r#"{"t" : "odd|schema.x\ny", "n" : 0}"#.to_string(),
        ];
        let counts = parse_counts(&lines).unwrap();
        assert_eq!(counts["public.album"], 347);
        assert_eq!(counts["odd|schema.x\ny"], 0);
        assert!(parse_counts(&["garbage".to_string()]).is_err());
    }

    #[test]
    fn usual_failures_name_their_fix() {
        let text = explain(
            "psql: error: connection to server on socket \"/tmp/.s.PGSQL.1\" failed: No such \
             file or directory",
        );
        assert!(text.contains("check the host and port"), "{text}");
        let text = explain("FATAL: password authentication failed for user \"app\"");
        assert!(text.contains("PGPASSWORD"), "{text}");
    }
}
