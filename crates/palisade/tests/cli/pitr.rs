//! PostgreSQL point-in-time recovery end to end: a real server archives its WAL through this
//! binary, a base backup is taken, and restores to a time and to an LSN replay to exactly there.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use palisade_testkit::{os_user::OsUser, postgres::PgServer};

use crate::common::*;

/// A test's repository, config and palisade binary, all usable by the server's OS account
/// (its archive_command and restore_command run as that account).
struct Archive {
    env: Env,
    exe: PathBuf,
    config: PathBuf,
    user: OsUser,
}

impl Archive {
    fn new() -> Self {
        let env = Env::new();
        // The build's binary may sit below a home directory the server's account cannot enter.
        let exe = env.path("palisade");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_palisade"), &exe).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_palisade"), &exe).unwrap();
        }
        let config = env.path("palisade.toml");
        std::fs::write(
            &config,
            "repository = \"repo\"\npassword_file = \"key\"\n\n[pitr]\ncache_dir = \"cache\"\n",
        )
        .unwrap();
        let user = OsUser::unprivileged("postgres");
        user.chown_tree(env.dir.path());
        let archive = Self {
            env,
            exe,
            config,
            user,
        };
        archive.ok(&["init"]);
        archive
    }

    /// A server that archives every WAL file through `palisade pg archive-push`.
    fn server(&self) -> PgServer {
        let push = format!(
            "{} --config {} pg archive-push %p",
            self.exe.display(),
            self.config.display()
        );
        PgServer::start_with(&[("archive_mode", "on"), ("archive_command", &push)])
    }

    /// An archiving server with a `shop` database whose `events` table holds the rows of stage
    /// `t1`, written after a base backup and archived.
    fn shop_with_base_backup(&self) -> PgServer {
        let server = self.server();
        server.psql("postgres", "CREATE DATABASE shop");
        server.psql("shop", "CREATE TABLE events (stage text, n int)");
        self.ok(&[
            "pg",
            "base-backup",
            "--postgres",
            &server.url("postgres"),
            "--fast-checkpoint",
        ]);
        insert(&server, "t1");
        switch_and_wait(&server);
        server
    }

    /// `palisade --config FILE ARGS` as the server's account.
    fn palisade(&self, args: &[&str]) -> Output {
        self.palisade_with(&self.config, args)
    }

    /// `palisade --config CONFIG ARGS` as the server's account.
    fn palisade_with(&self, config: &Path, args: &[&str]) -> Output {
        let mut cmd = self.user.command(&self.exe);
        clean(&mut cmd, self.env.dir.path());
        cmd.arg("--config").arg(config).args(args);
        cmd.output().expect("run palisade")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.palisade(args);
        assert_status(&out, 0, &format!("palisade {args:?}"));
        out
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.palisade(args);
        assert_status(&out, 1, &format!("palisade {args:?}"));
        stderr(&out)
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["--json", "snapshots"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The id of the snapshot holding the archived WAL file `name`.
    fn wal_snapshot(&self, name: &str) -> String {
        let tag = format!("pg-wal:{name}");
        self.snapshots()
            .iter()
            .find(|s| s["tags"].as_array().unwrap().iter().any(|t| t == &*tag))
            .unwrap_or_else(|| panic!("{name} is not archived"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// No PALISADE_* settings from the test's environment, scratch files in the test's folder.
fn clean(cmd: &mut Command, dir: &Path) {
    for (name, _) in std::env::vars() {
        if name.starts_with("PALISADE_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(dir)
        .env("TMPDIR", dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(std::process::Stdio::null());
}

/// Ends the current WAL segment and waits until PostgreSQL has archived it.
fn switch_and_wait(server: &PgServer) -> String {
    let segment = server.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    server.wait_for(
        "postgres",
        &format!("SELECT coalesce(last_archived_wal >= '{segment}', false) FROM pg_stat_archiver"),
        "t",
    );
    segment
}

fn insert(server: &PgServer, stage: &str) {
    server.psql(
        "shop",
        &format!("INSERT INTO events SELECT '{stage}', n FROM generate_series(1, 3) n"),
    );
}

fn stages(server: &PgServer) -> String {
    server.psql(
        "shop",
        "SELECT stage || ':' || count(*) FROM events GROUP BY stage ORDER BY stage",
    )
}

/// Starts PostgreSQL on a restored data directory and waits until it has promoted.
fn recover(archive: &Archive, data_dir: &Path) -> PgServer {
    archive.user.chown_tree(data_dir);
    // The restored server must not archive into the test's repository alongside the original.
    let server = PgServer::open(data_dir, &[("archive_mode", "off")]);
    server.wait_for("postgres", "SELECT pg_is_in_recovery()", "f");
    server
}

#[test]
fn pitr_restores_to_a_time_and_an_lsn_and_reports_a_gap() {
    let archive = Archive::new();
    let server = archive.server();
    server.psql("postgres", "CREATE DATABASE shop");
    server.psql("shop", "CREATE TABLE events (stage text, n int)");
    let base = archive.ok(&[
        "--json",
        "pg",
        "base-backup",
        "--postgres",
        &server.url("postgres"),
        "--fast-checkpoint",
    ]);
    let base: serde_json::Value = serde_json::from_slice(&base.stdout).unwrap();
    let recorded = &base["catalog"]["items"][0]["pg_base_backup"];
    assert_eq!(recorded["timeline"], 1, "{base}");
    assert!(
        recorded["server_version"]
            .as_str()
            .unwrap()
            .starts_with(&server.psql("postgres", "SHOW server_version")[..2])
    );

    insert(&server, "t1");
    let lsn_after_t1 = server.psql("postgres", "SELECT pg_current_wal_lsn()");
    switch_and_wait(&server);
    insert(&server, "t2");
    let t2_segment = server.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let after_t2 = server.psql("postgres", "SELECT clock_timestamp()");
    switch_and_wait(&server);
    insert(&server, "t3");
    switch_and_wait(&server);
    assert_eq!(stages(&server), "t1:3\nt2:3\nt3:3");
    archive.ok(&["pg", "wal-check"]);

    // To a time: exactly t1 and t2.
    let by_time = archive.env.path("by-time");
    archive.ok(&[
        "pg",
        "restore",
        "--target-time",
        &after_t2,
        "--data-dir",
        by_time.to_str().unwrap(),
    ]);
    let auto_conf = std::fs::read_to_string(by_time.join("postgresql.auto.conf")).unwrap();
    assert!(auto_conf.contains("pg archive-get %f %p"), "{auto_conf}");
    assert!(by_time.join("recovery.signal").is_file());
    let restored = recover(&archive, &by_time);
    assert_eq!(stages(&restored), "t1:3\nt2:3");
    drop(restored);

    // To an LSN: exactly t1.
    let by_lsn = archive.env.path("by-lsn");
    archive.ok(&[
        "pg",
        "restore",
        "--target-lsn",
        &lsn_after_t1,
        "--data-dir",
        by_lsn.to_str().unwrap(),
    ]);
    let restored = recover(&archive, &by_lsn);
    assert_eq!(stages(&restored), "t1:3");
    drop(restored);

    // A target before the base backup is consistent cannot be reached.
    let message = archive.fails(&[
        "pg",
        "restore",
        "--target-lsn",
        "0/1000000",
        "--data-dir",
        archive.env.path("too-early").to_str().unwrap(),
    ]);
    assert!(
        message.contains("lies before the earliest base backup"),
        "{message}"
    );

    // A non-empty data directory is refused.
    let message = archive.fails(&[
        "pg",
        "restore",
        "--latest",
        "--data-dir",
        by_lsn.to_str().unwrap(),
    ]);
    assert!(message.contains("is not empty"), "{message}");

    // Take t2's segment out of the archive (restic forgets its snapshot): wal-check names the
    // gap, and a restore to a time past it fails before writing anything.
    let id = archive.wal_snapshot(&t2_segment);
    archive.env.restic(&["forget", &id]);
    let out = archive.palisade(&["pg", "wal-check"]);
    assert_status(&out, 1, "pg wal-check with a gap");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("1 missing: {t2_segment}")),
        "{report}"
    );
    let past_gap = archive.env.path("past-gap");
    let message = archive.fails(&[
        "pg",
        "restore",
        "--target-time",
        &after_t2,
        "--data-dir",
        past_gap.to_str().unwrap(),
    ]);
    assert!(
        message.contains(&format!(
            "WAL segment {t2_segment} is missing from the archive"
        )),
        "{message}"
    );
    assert!(!past_gap.exists());
}

/// docs/runbooks/pitr-bad-migration.md as written: its `sh` blocks, run as the server's account
/// after a "migration" dropped a table, recover the cluster to just before it on a second
/// server and dump the table as it was.
#[test]
fn the_pitr_runbook_recovers_a_table_a_migration_dropped() {
    let archive = Archive::new();
    let server = archive.shop_with_base_backup();
    let before = server.psql("postgres", "SELECT clock_timestamp()");
    server.psql("shop", "DROP TABLE events");
    switch_and_wait(&server);

    let markdown = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks/pitr-bad-migration.md"),
    )
    .unwrap();
    let script = crate::runbooks::sh_blocks(&markdown);
    let sockets = archive.env.path("sockets");
    std::fs::create_dir(&sockets).unwrap();
    archive.user.chown_tree(&sockets);
    let recovered = archive.env.path("recovered");
    let pg_bin = palisade_testkit::postgres::bin_dir();
    let path = format!(
        "{}:{}:{}",
        archive.env.dir.path().display(),
        pg_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = archive.user.command("bash");
    clean(&mut cmd, archive.env.dir.path());
    let out = cmd
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("PALISADE_CONFIG", &archive.config)
        .env("TARGET_TIME", &before)
        .env("RECOVERED", &recovered)
        .env("DB", "shop")
        .env("TABLE", "events")
        .env("PGBIN", &pg_bin)
        .env("PORT", palisade_testkit::free_port().to_string())
        .env("SOCKETS", &sockets)
        .output()
        .unwrap();
    // Whatever happened, the recovered server is stopped.
    let mut stop = archive.user.command(pg_bin.join("pg_ctl"));
    stop.args(["-D"])
        .arg(&recovered)
        .args(["-m", "immediate", "stop"]);
    let stopped = stop.output().unwrap();
    assert_status(
        &out,
        0,
        &format!("the sh blocks of the PITR runbook:\n{script}"),
    );
    assert_status(&stopped, 0, "pg_ctl stop on the recovered cluster");
    let dump = std::fs::read_to_string(archive.env.dir.path().join("events-before-migration.sql"))
        .unwrap();
    assert!(dump.contains("CREATE TABLE public.events"), "{dump}");
    assert_eq!(dump.matches("\nt1\t").count(), 3, "{dump}");
    // The count the runbook's last step prints: the three rows from before the migration.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.lines().any(|l| l.trim() == "3"), "{printed}");
}

#[test]
fn archive_push_takes_the_same_file_twice_and_refuses_other_content() {
    let archive = Archive::new();
    let wal = archive.env.path("pg_wal");
    std::fs::create_dir(&wal).unwrap();
    let segment = wal.join("000000010000000000000042");
    std::fs::write(&segment, noise(42, 1 << 20)).unwrap();
    archive.user.chown_tree(&wal);
    let path = segment.to_str().unwrap();

    archive.ok(&["pg", "archive-push", path]);
    let count = archive.snapshots().len();
    let again = archive.ok(&["pg", "archive-push", path]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already archived with the same content")
    );
    assert_eq!(
        archive.snapshots().len(),
        count,
        "the retry wrote a snapshot"
    );

    // archive-get writes it back; a name the archive lacks exits 1, as PostgreSQL expects.
    let back = archive.env.path("back");
    archive.ok(&[
        "pg",
        "archive-get",
        "000000010000000000000042",
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&segment).unwrap());
    let message = archive.fails(&["pg", "archive-get", "000000010000000000000043", "x"]);
    assert!(message.contains("not in the WAL archive"), "{message}");

    let archived = sha256_file(&segment);
    std::fs::write(&segment, noise(43, 1 << 20)).unwrap();
    let offered = sha256_file(&segment);
    let message = archive.fails(&["pg", "archive-push", path]);
    assert!(
        message.contains(&archived) && message.contains(&offered),
        "{message}"
    );
    assert_eq!(archive.snapshots().len(), count);
}

#[test]
fn pitr_bad_input_gets_one_clear_sentence() {
    let archive = Archive::new();
    let one_line = |message: &str| {
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
        assert!(message.starts_with("palisade: "), "{message}");
    };

    let nowhere = format!(
        "postgresql:///postgres?host={}&port=1&user=postgres",
        archive.env.path("no-server").display()
    );
    let message = archive.fails(&["pg", "base-backup", "--postgres", &nowhere]);
    one_line(&message);
    assert!(
        message.contains("cannot connect to PostgreSQL at"),
        "{message}"
    );

    let empty_bin = archive.env.path("empty-bin");
    std::fs::create_dir(&empty_bin).unwrap();
    let config = archive.env.path("no-tools.toml");
    std::fs::write(
        &config,
        format!(
            "repository = \"repo\"\npassword_file = \"key\"\n[pitr]\nbin_dir = \"{}\"\n",
            empty_bin.display()
        ),
    )
    .unwrap();
    archive.user.chown_tree(archive.env.dir.path());
    let out = archive.palisade_with(&config, &["pg", "base-backup", "--postgres", &nowhere]);
    assert_status(&out, 1, "base-backup without pg_basebackup");
    let message = stderr(&out);
    one_line(&message);
    assert!(message.contains("pg_basebackup was not found"), "{message}");

    let target = archive.env.path("never");
    let message = archive.fails(&[
        "pg",
        "restore",
        "--target-time",
        "yesterday at noon",
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    one_line(&message);
    assert!(
        message.contains("`yesterday at noon` is not a time"),
        "{message}"
    );

    let message = archive.fails(&[
        "pg",
        "restore",
        "--latest",
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    one_line(&message);
    assert!(
        message.contains("holds no PostgreSQL base backup"),
        "{message}"
    );
}

#[test]
fn wal_check_reports_timelines_without_history_or_parent() {
    let archive = Archive::new();
    let wal = archive.env.path("pg_wal");
    std::fs::create_dir(&wal).unwrap();
    // Timeline 1 whole; timeline 3 says it branched from timeline 2, which has no WAL; timeline
    // 4 has a segment and no history file.
    let files: [(&str, &[u8]); 4] = [
        ("000000010000000000000001", b"one"),
        ("000000010000000000000002", b"two"),
        (
            "00000003.history",
            b"1\t0/2000000\tno recovery target specified\n2\t0/2800000\tx\n",
        ),
        ("000000040000000000000003", b"four"),
    ];
    for (name, content) in files {
        std::fs::write(wal.join(name), content).unwrap();
    }
    archive.user.chown_tree(&wal);
    for (name, _) in files {
        archive.ok(&["pg", "archive-push", wal.join(name).to_str().unwrap()]);
    }
    let out = archive.palisade(&["pg", "wal-check"]);
    assert_status(&out, 1, "pg wal-check with timeline problems");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(
            "timeline 1: 2 segment(s), 000000010000000000000001 to 000000010000000000000002"
        ),
        "{report}"
    );
    assert!(
        report.contains("branched from timeline 2, which has no archived WAL"),
        "{report}"
    );
    assert!(
        report.contains("timeline 4 has archived segments but no history file 00000004.history"),
        "{report}"
    );
}

#[test]
fn restore_test_replays_the_archive_to_its_end_on_a_private_server() {
    let archive = Archive::new();
    let _server = archive.shop_with_base_backup();

    // As the server's account: the non-root path, where the private server runs as the caller.
    let out = archive.ok(&["--json", "restore-test", "--job", "pitr"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let test = &report["tests"][0];
    assert_eq!(test["name"], "pitr", "{report}");
    assert_eq!(test["passed"], true, "{report}");
    let check = &test["checks"][0];
    assert!(
        check["rows"].as_u64().unwrap() >= 2,
        "segments replayed: {check}"
    );
    assert!(
        check["tables"].as_u64().unwrap() >= 2,
        "databases seen: {check}"
    );

    // As root (as CI runs the tests): the private server runs as the `postgres` account, in a
    // scratch directory it can enter but not list.
    if palisade_testkit::os_user::is_root() {
        let mut cmd = Command::new(&archive.exe);
        clean(&mut cmd, archive.env.dir.path());
        let out = cmd
            .arg("--config")
            .arg(&archive.config)
            .args(["--json", "restore-test", "--job", "pitr"])
            .output()
            .unwrap();
        assert_status(&out, 0, "restore-test --job pitr as root");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["tests"][0]["passed"], true, "{report}");
    }
    let left: Vec<_> = std::fs::read_dir(archive.env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("palisade-run-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
