//! PostgreSQL and MariaDB sources on private servers loaded with Chinook: dumps streamed into
//! the repository with row counts in the catalog, restores under a new name that hold exactly
//! the same rows, refusals that protect existing data, and failures that leave no snapshot.

use std::path::Path;

use palisade_testkit::{mariadb::MariaDb, postgres::PgServer};

use crate::common::*;

/// Every table of a PostgreSQL database with a digest of its rows, sorted, for comparison.
fn pg_contents(server: &PgServer, db: &str) -> Vec<(String, String)> {
    let tables = server.psql(
        db,
        "SELECT schemaname || '.' || tablename FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    tables
        .lines()
        .map(|table| {
            let digest = server.psql(
                db,
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY \
                     t::text)), '') FROM {table} t"
                ),
            );
            (table.to_string(), digest)
        })
        .collect()
}

/// Every table of a MariaDB database with its rows in a fixed order.
fn mysql_contents(server: &MariaDb, db: &str) -> Vec<(String, String)> {
    let tables = server.client(
        db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() \
         ORDER BY 1",
    );
    tables
        .lines()
        .map(|table| {
            let columns: usize = server
                .client(
                    db,
                    &format!(
                        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                         DATABASE() AND table_name = '{table}'"
                    ),
                )
                .parse()
                .unwrap();
            let order: Vec<String> = (1..=columns).map(|n| n.to_string()).collect();
            let rows = server.client(
                db,
                &format!("SELECT * FROM `{table}` ORDER BY {}", order.join(", ")),
            );
            (table.to_string(), rows)
        })
        .collect()
}

fn item<'a>(report: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    report["catalog"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == path)
        .unwrap_or_else(|| panic!("no item {path} in {report}"))
}

#[test]
fn postgres_chinook_restores_under_a_new_name_with_every_row() {
    let server = PgServer::start();
    let db = server.load_chinook();
    // Large objects live outside the tables; pg_dump must carry them too.
    server.psql(db, "SELECT lo_from_bytea(4242, 'large object bytes')");
    let env = Env::init();
    let report = env.backup(&["--postgres", &server.url("postgres"), "--database", db]);

    let dump = item(&report, "postgres/chinook.dump");
    assert_eq!(dump["kind"], "postgres");
    assert_eq!(dump["database"], "chinook");
    assert!(
        dump["server_version"].as_str().unwrap().starts_with("15"),
        "{dump}"
    );
    assert!(dump["dumped_by"].as_str().unwrap().contains("pg_dump"));
    assert_eq!(dump["tables"]["public.track"], 3503);
    assert_eq!(dump["tables"]["public.artist"], 275);
    assert_eq!(dump["tables"].as_object().unwrap().len(), 11, "{dump}");
    let globals = item(&report, "postgres/globals.sql");
    assert!(globals["size"].as_u64().unwrap() > 0);

    // restic sees the dump whole: its bytes are the ones the catalog hashed.
    let out = env.path("restic-out");
    env.restic(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let restic_copy = out.join("postgres/chinook.dump");
    let size = std::fs::metadata(&restic_copy).unwrap().len();
    assert_eq!(size, dump["size"].as_u64().unwrap());
    assert_eq!(sha256_file(&restic_copy), dump["sha256"].as_str().unwrap());

    let restored = env.json(&[
        "restore",
        "latest",
        "--postgres",
        &server.url("postgres"),
        "--database",
        db,
        "--as",
        "chinook_copy",
    ]);
    assert_eq!(restored["databases"][0]["target"], "chinook_copy");
    assert_eq!(restored["databases"][0]["tables"], 11);
    assert_eq!(
        pg_contents(&server, db),
        pg_contents(&server, "chinook_copy")
    );

    // Restoring over a database with tables needs --clean; with it, the copy is replaced.
    let refused = env.expect(
        &[
            "restore",
            "latest",
            "--postgres",
            &server.url("postgres"),
            "--as",
            "chinook_copy",
        ],
        1,
    );
    let message = stderr(&refused);
    assert!(message.contains("already holds"), "{message}");
    assert!(message.contains("--clean"), "{message}");
    server.psql("chinook_copy", "DELETE FROM playlist_track");
    env.ok(&[
        "restore",
        "latest",
        "--postgres",
        &server.url("postgres"),
        "--as",
        "chinook_copy",
        "--clean",
    ]);
    assert_eq!(
        pg_contents(&server, db),
        pg_contents(&server, "chinook_copy")
    );
}

#[test]
fn mariadb_chinook_restores_under_a_new_name_with_every_row() {
    let server = MariaDb::start();
    let db = server.load_chinook();
    let url = format!(
        "mysql://root@localhost/?socket={}",
        server.socket().display()
    );
    let env = Env::init();
    let report = env.backup(&["--mysql", &url, "--database", db]);
    let dump = item(&report, "mysql/Chinook.sql");
    assert_eq!(dump["kind"], "mysql");
    assert_eq!(dump["database"], "Chinook");
    assert!(
        dump["server_version"].as_str().unwrap().contains("MariaDB"),
        "{dump}"
    );
    assert_eq!(dump["tables"]["Track"], 3503);
    assert_eq!(dump["tables"]["PlaylistTrack"], 8715);
    assert_eq!(dump["tables"].as_object().unwrap().len(), 11, "{dump}");

    let restored = env.json(&[
        "restore",
        "latest",
        "--mysql",
        &url,
        "--database",
        db,
        "--as",
        "ChinookCopy",
    ]);
    assert_eq!(
        restored["databases"][0]["rows"],
        dump["tables"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    );
    assert_eq!(
        mysql_contents(&server, db),
        mysql_contents(&server, "ChinookCopy")
    );

    let refused = env.expect(
        &["restore", "latest", "--mysql", &url, "--as", "ChinookCopy"],
        1,
    );
    assert!(stderr(&refused).contains("--clean"), "{}", stderr(&refused));
    server.client("ChinookCopy", "DELETE FROM InvoiceLine");
    env.ok(&[
        "restore",
        "latest",
        "--mysql",
        &url,
        "--as",
        "ChinookCopy",
        "--clean",
    ]);
    assert_eq!(
        mysql_contents(&server, db),
        mysql_contents(&server, "ChinookCopy")
    );
}

/// A folder of tools where `pg_dump` is replaced by `script`, and the others are the real ones.
fn fake_pg_tools(env: &Env, script: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.path("pgbin");
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["psql", "pg_dumpall", "pg_restore"] {
        std::os::unix::fs::symlink(palisade_testkit::postgres::bin(tool), dir.join(tool)).unwrap();
    }
    let real = palisade_testkit::postgres::bin("pg_dump");
    let text = format!("#!/bin/sh\nREAL={}\n{script}\n", real.display());
    std::fs::write(dir.join("pg_dump"), text).unwrap();
    std::fs::set_permissions(dir.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn job_config(env: &Env, url: &str, bin_dir: &Path) -> std::path::PathBuf {
    let config = env.path("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "[[jobs]]\nname = \"shop\"\nsources = [{{ postgres = \"{url}\", databases = \
             [\"chinook\"], bin_dir = \"{}\" }}]\n",
            bin_dir.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn a_dump_killed_half_way_leaves_no_snapshot() {
    let server = PgServer::start();
    server.load_chinook();
    let env = Env::init();
    // pg_dump writes part of the dump, then dies.
    let tools = fake_pg_tools(&env, "\"$REAL\" \"$@\" | head -c 20000\nkill -KILL $$");
    let config = job_config(&env, &server.url("postgres"), &tools);
    let out = env.expect(&["--config", config.to_str().unwrap(), "backup"], 1);
    let message = stderr(&out);
    assert!(
        message.contains("pg_dump of database chinook failed"),
        "{message}"
    );
    let snapshots = env.json(&["snapshots"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 0, "{snapshots}");
    env.ok(&["check"]);
}

#[test]
fn the_password_reaches_pg_dump_only_through_its_environment() {
    let server = PgServer::start();
    server.load_chinook();
    let env = Env::init();
    let seen = env.path("seen");
    let tools = fake_pg_tools(
        &env,
        &format!(
            "echo \"args: $*\" >> {seen}\necho \"env: $PGPASSWORD\" >> {seen}\nexec \"$REAL\" \"$@\"",
            seen = seen.display()
        ),
    );
    let url = server.url("postgres").replacen(
        "postgresql:///",
        "postgresql://postgres:Sup3r-s3cret@/",
        1,
    );
    let config = job_config(&env, &url, &tools);
    let out = env.ok(&["--config", config.to_str().unwrap(), "--json", "backup"]);
    let recorded = std::fs::read_to_string(&seen).unwrap();
    let args: Vec<&str> = recorded
        .lines()
        .filter(|l| l.starts_with("args:"))
        .collect();
    assert!(!args.is_empty());
    for line in &args {
        assert!(!line.contains("Sup3r-s3cret"), "{line}");
    }
    assert!(recorded.contains("env: Sup3r-s3cret"), "{recorded}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("Sup3r-s3cret"), "{printed}");
    assert!(!stderr(&out).contains("Sup3r-s3cret"));
}

#[test]
fn a_second_day_of_postgres_stores_only_what_changed() {
    let server = PgServer::start();
    server.psql("postgres", "CREATE DATABASE bench");
    let init = server
        .command(palisade_testkit::postgres::bin("pgbench"))
        .args(["-i", "-s", "2", "-q", "-h"])
        .arg(server.socket_dir())
        .args(["-p", &server.port().to_string(), "-U", "postgres", "bench"])
        .output()
        .unwrap();
    assert_status(&init, 0, "pgbench -i");
    let env = Env::init();
    let args = [
        "--postgres",
        &server.url("postgres"),
        "--database",
        "bench",
        "--no-globals",
    ];
    let first = env.backup(&args);
    let dump = item(&first, "postgres/bench.dump")["size"]
        .as_u64()
        .unwrap();
    assert!(dump > 10 << 20, "the dump is only {dump} bytes");
    // A day of a small shop: a hundred recent rows change, ten are added. (PostgreSQL writes
    // an updated row anew at the table's end, and pg_dump reads tables in that order.)
    server.psql(
        "bench",
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid > 199900; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         SELECT 1, 1, g, 5, now() FROM generate_series(1, 10) g",
    );
    let second = env.backup(&args);
    assert_eq!(
        item(&second, "postgres/bench.dump")["tables"]["public.pgbench_history"],
        10
    );
    let added = second["bytes_added"].as_u64().unwrap();
    assert!(
        added * 10 < first["bytes_added"].as_u64().unwrap(),
        "day 2 added {added} bytes against day 1's {}",
        first["bytes_added"]
    );
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_by_name() {
    let server = PgServer::start();
    let env = Env::init();
    let tools = fake_pg_tools(
        &env,
        "[ \"$1\" = --version ] && { echo 'pg_dump (PostgreSQL) 12.4'; exit 0; }\nexec \"$REAL\" \"$@\"",
    );
    let config = job_config(&env, &server.url("postgres"), &tools);
    let out = env.expect(&["--config", config.to_str().unwrap(), "backup"], 1);
    let message = stderr(&out);
    assert!(message.contains("older than the server"), "{message}");
    assert!(message.contains("postgresql-client-15"), "{message}");
}

#[test]
fn unreachable_servers_and_missing_tools_get_one_clear_sentence() {
    let env = Env::init();
    let gone = env.path("no-server");
    let out = env.expect(
        &[
            "backup",
            "--postgres",
            &format!("postgresql:///app?host={}&port=5999", gone.display()),
        ],
        1,
    );
    let message = stderr(&out);
    assert!(message.contains("cannot reach the server"), "{message}");

    let out = env.expect(
        &[
            "backup",
            "--mysql",
            &format!("mysql://root@localhost/?socket={}", gone.display()),
        ],
        1,
    );
    let message = stderr(&out);
    assert!(message.contains("cannot reach the server"), "{message}");

    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let config = job_config(&env, "postgresql:///app", &empty);
    let out = env.expect(&["--config", config.to_str().unwrap(), "backup"], 1);
    let message = stderr(&out);
    assert!(message.contains("psql was not found in"), "{message}");
    assert!(
        message.contains("apt-get install postgresql-client"),
        "{message}"
    );

    let out = env.expect(&["backup", "--postgres", "localhost:5432"], 1);
    assert!(stderr(&out).contains("postgresql://"), "{}", stderr(&out));
}

#[test]
fn wrong_credentials_name_the_settings_to_fix() {
    let server = MariaDb::start();
    let url = format!(
        "mysql://nobody:wrong@localhost/?socket={}",
        server.socket().display()
    );
    let env = Env::init();
    let out = env.expect(&["backup", "--mysql", &url], 1);
    let message = stderr(&out);
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(!message.contains("wrong@"), "{message}");
}

#[test]
fn a_clean_restore_that_fails_leaves_the_old_database_as_it_was() {
    let server = PgServer::start();
    server.psql("postgres", "CREATE ROLE ghost");
    server.psql("postgres", "CREATE DATABASE shop");
    server.psql(
        "shop",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO ghost",
    );
    let env = Env::init();
    let url = server.url("postgres");
    env.backup(&["--postgres", &url, "--database", "shop", "--no-globals"]);
    // The dump grants to a role the server no longer has: pg_restore must fail.
    server.psql("shop", "REVOKE ALL ON t FROM ghost");
    server.psql("postgres", "DROP ROLE ghost");
    server.psql("postgres", "CREATE DATABASE victim");
    server.psql(
        "victim",
        "CREATE TABLE precious (x int); INSERT INTO precious VALUES (1), (2), (3)",
    );
    let out = env.expect(
        &[
            "restore",
            "latest",
            "--postgres",
            &url,
            "--as",
            "victim",
            "--clean",
        ],
        1,
    );
    assert!(stderr(&out).contains("ghost"), "{}", stderr(&out));
    assert_eq!(server.psql("victim", "SELECT count(*) FROM precious"), "3");
    let leftovers = server.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE '%palisade%'",
    );
    assert_eq!(leftovers, "0");

    // An empty database is used as it is; odd names are stored under a plain item name.
    server.psql("postgres", "CREATE DATABASE trulyempty");
    server.psql("postgres", "CREATE DATABASE \"a/b\"");
    server.psql(
        "a/b",
        "CREATE TABLE y (v text); INSERT INTO y VALUES ('slash')",
    );
    let report = env.backup(&["--postgres", &url, "--database", "a/b", "--no-globals"]);
    assert_eq!(item(&report, "postgres/a%2Fb.dump")["database"], "a/b");
    env.ok(&[
        "restore",
        "latest",
        "--postgres",
        &url,
        "--as",
        "trulyempty",
    ]);
    assert_eq!(server.psql("trulyempty", "SELECT v FROM y"), "slash");
}

#[test]
fn mariadb_routines_and_versioned_tables_restore_with_matching_counts() {
    let server = MariaDb::start();
    server.client(
        "",
        "CREATE DATABASE app; USE app; CREATE TABLE log (x int); \
         CREATE TABLE ver (a int) WITH SYSTEM VERSIONING; INSERT INTO ver VALUES (1), (2); \
         INSERT INTO log VALUES (7)",
    );
    server.client(
        "app",
        "DELIMITER //\nCREATE PROCEDURE p() BEGIN INSERT INTO log VALUES (1),(2),(3); \
         INSERT INTO `ghost` VALUES (1); END //",
    );
    let url = format!(
        "mysql://root@localhost/app?socket={}",
        server.socket().display()
    );
    let env = Env::init();
    let report = env.backup(&["--mysql", &url]);
    let dump = item(&report, "mysql/app.sql");
    assert_eq!(dump["tables"]["log"], 1, "{dump}");
    assert_eq!(dump["tables"]["ver"], 2, "{dump}");
    assert!(dump["tables"].get("ghost").is_none(), "{dump}");
    let restored = env.json(&["restore", "latest", "--mysql", &url, "--as", "app2"]);
    assert_eq!(restored["databases"][0]["rows"], 3);
    assert_eq!(server.client("app2", "SELECT count(*) FROM ver"), "2");
}

#[test]
fn archive_get_stops_recovery_when_it_cannot_even_read_its_config() {
    let env = Env::init();
    let out = env
        .palisade()
        .args([
            "--config",
            "/nonexistent/palisade.toml",
            "pg",
            "archive-get",
        ])
        .args(["000000010000000000000002", "/tmp/never-written"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}
