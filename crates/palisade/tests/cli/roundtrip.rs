//! Backups that come back exactly: SQLite (Chinook, and a database under writes), directories
//! with awkward names, links and modes, a real source tree, and deduplication.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::common::*;

on_local_and_s3! {
    fn chinook_restores_byte_identical_with_sqlite3_row_counts_in_the_catalog(backend) {
        let env = Env::init_on(backend);
        let report = env.backup(&["--sqlite", chinook().to_str().unwrap()]);
        let db = item(&report, "Chinook_Sqlite.sqlite");

        let counts: std::collections::BTreeMap<String, u64> =
            serde_json::from_value(db["tables"].clone()).unwrap();
        assert_eq!(counts, sqlite3_counts(&chinook()));
        assert_eq!(counts["Track"], 3503, "Chinook has 3503 tracks");

        let target = env.restore(&snapshot_id(&report), "out");
        let restored = target.join("databases/Chinook_Sqlite.sqlite");
        assert_eq!(
            sha256_file(&restored),
            sha256_file(&chinook()),
            "not byte-identical"
        );
        assert_eq!(db["sha256"], sha256_file(&chinook()));
        assert_eq!(sqlite3_counts(&restored), counts);
    }
}

on_local_and_s3! {
    fn sqlite_copy_is_consistent_while_the_application_writes(backend) {
        let env = Env::init_on(backend);
        let live = env.path("live.db");
        let conn = rusqlite::Connection::open(&live).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);
             CREATE TABLE totals (n INTEGER); INSERT INTO totals VALUES (0);",
        )
        .unwrap();
        drop(conn);

        // A writer that keeps both tables in step, one transaction per row.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, live) = (stop.clone(), live.clone());
            std::thread::spawn(move || {
                let mut conn = rusqlite::Connection::open(&live).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut written = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let tx = conn.transaction().unwrap();
                    tx.execute(
                        "INSERT INTO events (body) VALUES (?1)",
                        [format!("event {written}")],
                    )
                    .unwrap();
                    tx.execute("UPDATE totals SET n = n + 1", []).unwrap();
                    tx.commit().unwrap();
                    written += 1;
                }
                written
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let reports: Vec<_> = (0..3)
            .map(|_| env.backup(&["--sqlite", live.to_str().unwrap()]))
            .collect();
        stop.store(true, Ordering::SeqCst);
        let written = writer.join().unwrap();

        for (n, report) in reports.iter().enumerate() {
            let target = env.restore(&snapshot_id(report), &format!("out{n}"));
            let copy = target.join("databases/live.db");
            let conn = rusqlite::Connection::open(&copy).unwrap();
            let ok: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
            let events: u64 = conn
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap();
            let total: u64 = conn
                .query_row("SELECT n FROM totals", [], |r| r.get(0))
                .unwrap();
            assert_eq!(events, total, "the copy caught a transaction half-way");
            assert!(events > 0 && events <= written);
            assert_eq!(item(report, "live.db")["tables"]["events"], events);
        }
    }
}

/// A directory with everything awkward a file system allows.
fn awkward_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub dir/empty")).unwrap();
    std::fs::write(root.join("plain.txt"), "plain\n").unwrap();
    std::fs::write(root.join("with space.txt"), "space\n").unwrap();
    std::fs::write(root.join("new\nline"), "newline\n").unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), "bytes\n").unwrap();
    std::fs::write(root.join("sub dir/empty-file"), "").unwrap();
    std::fs::write(root.join("script.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("script.sh"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    std::os::unix::fs::symlink("plain.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(root.join("plain.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

on_local_and_s3! {
    fn directories_keep_names_links_modes_and_mtimes(backend) {
        let env = Env::init_on(backend);
        let src = env.path("site");
        awkward_tree(&src);
        let report = env.backup(&["--dir", src.to_str().unwrap()]);
        assert_eq!(item(&report, "site")["files"], 6);

        let target = env.restore(&snapshot_id(&report), "out");
        assert_same_tree(&src, &target.join("files/site"));
        // The links are links, not copies of what they point at.
        assert!(
            target
                .join("files/site/link")
                .symlink_metadata()
                .unwrap()
                .is_symlink()
        );
    }
}

on_local_and_s3! {
    fn excluded_paths_are_left_out(backend) {
        let env = Env::init_on(backend);
        let src = env.path("site");
        std::fs::create_dir_all(src.join("cache")).unwrap();
        std::fs::write(src.join("keep.txt"), "keep").unwrap();
        std::fs::write(src.join("drop.tmp"), "drop").unwrap();
        std::fs::write(src.join("cache/blob"), "drop").unwrap();
        let report = env.backup(&[
            "--dir",
            src.to_str().unwrap(),
            "--exclude",
            "*.tmp",
            "--exclude",
            "cache",
        ]);
        let tree = env.json(&["ls", &snapshot_id(&report), "--tree"]);
        let paths: Vec<&str> = tree
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert!(paths.contains(&"files/site/keep.txt"), "{paths:?}");
        assert!(
            !paths
                .iter()
                .any(|p| p.ends_with(".tmp") || p.contains("cache")),
            "{paths:?}"
        );
    }
}

/// A real source tree that nobody here wrote: rustic_core's own sources from the cargo registry.
fn real_source_tree() -> std::path::PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap()).join(".cargo"));
    let registry = home.join("registry/src");
    std::fs::read_dir(&registry)
        .unwrap()
        .map(|e| e.unwrap().path().join("rustic_core-0.13.0"))
        .find(|p| p.is_dir())
        .expect("rustic_core's sources are in the cargo registry after a build")
}

on_local_and_s3! {
    fn a_real_source_tree_round_trips_and_an_unchanged_rebackup_adds_under_one_percent(backend) {
        let env = Env::init_on(backend);
        let src = env.path("rustic_core");
        copy_tree(&real_source_tree(), &src);

        let first = env.backup(&["--dir", src.to_str().unwrap()]);
        let second = env.backup(&["--dir", src.to_str().unwrap()]);
        let read = second["bytes_read"].as_u64().unwrap();
        let added = second["bytes_added"].as_u64().unwrap();
        assert!(read > 1_000_000, "the tree is over 1 MB ({read})");
        assert!(
            added * 100 < read,
            "unchanged re-backup added {added} of {read} bytes"
        );
        assert_eq!(
            item(&first, "rustic_core")["sha256"],
            item(&second, "rustic_core")["sha256"]
        );

        let target = env.restore("latest", "out");
        assert_same_tree(&src, &target.join("files/rustic_core"));

        let stats = env.json(&["stats"]);
        assert_eq!(stats["snapshots"], 2);
        let on_disk: u64 = env.repo_files().values().sum();
        assert_eq!(stats["stored_total"], on_disk);
        // Restoring both snapshots writes every file twice, plus each snapshot's small catalog.
        let total = stats["total_restore_size"].as_u64().unwrap();
        let twice = 2 * first["bytes_read"].as_u64().unwrap();
        assert!(
            total > twice && total < twice + 20_000,
            "{total} vs {twice}"
        );
        let snaps = env.json(&["snapshots"]);
        let listed: u64 = snaps
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(total, listed);
    }
}

/// Copies a tree (files, dirs, links), keeping mtimes and modes.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&src, &dst);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
            let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
            std::fs::File::options()
                .write(true)
                .open(&dst)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    }
}

#[test]
fn an_unreadable_file_is_reported_skipped_and_exits_3() {
    let env = Env::init();
    let src = env.path("site");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readable.txt"), "fine").unwrap();
    std::fs::write(src.join("secret.txt"), "no access").unwrap();
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();

    // Root reads any file, so as root the backup runs as `nobody` to meet a real EACCES.
    let out = as_unprivileged(&env, &["--json", "backup", "--dir", src.to_str().unwrap()]);
    assert_status(&out, 3, "backup with an unreadable file");
    assert!(stderr(&out).contains("secret.txt"), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let site = item(&report[0], "site");
    assert_eq!(site["files"], 1);
    assert_eq!(site["skipped"][0]["path"], "secret.txt");

    let target = env.restore("latest", "out");
    assert!(target.join("files/site/readable.txt").exists());
    assert!(!target.join("files/site/secret.txt").exists());
}

/// Runs palisade as the `nobody` user when the tests run as root, with the env's files opened up
/// to it; as itself otherwise.
fn as_unprivileged(env: &Env, args: &[&str]) -> std::process::Output {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    if !is_root {
        return env.palisade().args(args).output().unwrap();
    }
    let open_up = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let mut dir = env.dir.path().to_path_buf();
    while dir.parent().is_some() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        open_up(&dir, mode | 0o011);
        dir.pop();
    }
    std::process::Command::new("chown")
        .args(["-R", "nobody"])
        .arg(&env.repo)
        .arg(&env.key)
        .status()
        .unwrap();
    open_up(env.dir.path(), 0o777);
    open_up(&env.path("site"), 0o755);
    open_up(&env.path("site/readable.txt"), 0o644);
    // The test binary lives under root's home, which nobody cannot enter: run a copy.
    let binary = env.path("palisade");
    std::fs::copy(env!("CARGO_BIN_EXE_palisade"), &binary).unwrap();
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", "nobody", "--"])
        .arg(&binary)
        .arg("--repo")
        .arg(&env.repo)
        .arg("--password-file")
        .arg(&env.key)
        .args(args)
        .current_dir(env.dir.path())
        .env("TMPDIR", env.dir.path())
        .env_remove("PALISADE_REPOSITORY")
        .env_remove("PALISADE_PASSWORD");
    let out = cmd.output().unwrap();
    std::process::Command::new("chown")
        .args(["-R", "root"])
        .arg(&env.repo)
        .status()
        .unwrap();
    out
}
