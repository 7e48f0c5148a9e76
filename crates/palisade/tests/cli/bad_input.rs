//! Bad input and faults: clear errors, nothing lost, nothing half-written left visible.

use std::{process::Stdio, time::Duration};

use crate::common::*;

#[test]
fn a_wrong_password_is_named_and_nothing_is_written() {
    let env = Env::init();
    let before = env.repo_files();
    let wrong = env.path("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let out = env
        .palisade_with_key(&wrong)
        .args(["backup", "--sqlite"])
        .arg(chinook())
        .output()
        .unwrap();
    assert_status(&out, 1, "backup with a wrong password");
    assert!(
        stderr(&out).contains("wrong password or key file"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not the password"),
        "the password leaked"
    );
    assert_eq!(env.repo_files(), before);
}

#[test]
fn a_missing_repository_says_how_to_create_one() {
    let env = Env::new();
    let out = env.expect(&["snapshots"], 1);
    assert!(
        stderr(&out).contains("no repository at"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("palisade init"), "{}", stderr(&out));

    // A directory that exists but holds no repository says the same.
    std::fs::create_dir_all(&env.repo).unwrap();
    let out = env.expect(&["snapshots"], 1);
    assert!(stderr(&out).contains("palisade init"), "{}", stderr(&out));
}

#[test]
fn a_non_sqlite_file_is_named() {
    let env = Env::init();
    let fake = env.path("notes.db");
    std::fs::write(
        &fake,
        "these are notes, not a database, however long they are",
    )
    .unwrap();
    let out = env.expect(&["backup", "--sqlite", fake.to_str().unwrap()], 1);
    assert!(stderr(&out).contains("notes.db"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an SQLite database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
}

#[test]
fn init_twice_is_refused() {
    let env = Env::init();
    let out = env.expect(&["init"], 1);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

/// Pack files of the repository.
fn packs(env: &Env) -> Vec<std::path::PathBuf> {
    walk(&env.repo.join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn a_corrupted_pack_is_named_by_check_and_fails_only_the_items_that_need_it() {
    let env = Env::init();
    let site = env.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("page.html"),
        "<p>kept safe in the first pack</p>\n".repeat(500),
    )
    .unwrap();
    env.backup(&["--dir", site.to_str().unwrap()]);
    let old = packs(&env);

    // The second snapshot's database lands in a new pack; the site deduplicates into the old one.
    let report = env.backup(&[
        "--dir",
        site.to_str().unwrap(),
        "--sqlite",
        chinook().to_str().unwrap(),
    ]);
    let new: Vec<_> = packs(&env)
        .into_iter()
        .filter(|p| !old.contains(p))
        .collect();
    let data_pack = new
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(data_pack).unwrap();
    for b in &mut bytes[1000..1100] {
        *b ^= 0x5a;
    }
    std::fs::write(data_pack, bytes).unwrap();
    let pack_id = data_pack.file_name().unwrap().to_str().unwrap().to_string();

    let out = env.expect(&["check", "--read-data"], 1);
    assert!(
        stderr(&out).contains(&pack_id),
        "check did not name {pack_id}:\n{}",
        stderr(&out)
    );

    let target = env.path("out");
    let out = env.expect(
        &[
            "restore",
            &snapshot_id(&report),
            "--target",
            target.to_str().unwrap(),
        ],
        1,
    );
    assert!(
        stderr(&out).contains("databases/Chinook_Sqlite.sqlite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(target.join("files/site/page.html")).unwrap(),
        std::fs::read(site.join("page.html")).unwrap(),
        "the undamaged item must still restore"
    );
}

#[test]
fn a_backup_killed_mid_run_leaves_no_snapshot_and_a_clean_repository() {
    let env = Env::init();
    let big = env.path("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    for n in 0..12 {
        let bytes: Vec<u8> = (0..16 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(big.join(format!("blob-{n}")), bytes).unwrap();
    }

    let mut child = env
        .palisade()
        .args(["backup", "--dir", big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as it has written pack data, well before it can finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while packs(&env).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no pack was ever written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    env.ok(&["check"]);
    env.restic(&["check"]);

    let report = env.backup(&["--dir", big.to_str().unwrap()]);
    let target = env.restore(&snapshot_id(&report), "out");
    assert_same_tree(&big, &target.join("files/big"));
    env.ok(&["check", "--read-data"]);
}

#[test]
fn a_password_on_the_command_line_is_not_accepted() {
    let env = Env::init();
    let out = env.expect(&["snapshots", "--password", "hunter2"], 2);
    assert!(stderr(&out).contains("--password"), "{}", stderr(&out));
}

#[test]
fn an_interrupted_backup_removes_its_scratch_files_and_saves_nothing() {
    let env = Env::init();
    let (child, stdin) = env.start_stream("slow.sql", &vec![b'x'; 1 << 20]);
    // The stream is being spooled: its scratch directory exists.
    let scratch = || -> Vec<_> {
        std::fs::read_dir(env.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("palisade-run-"))
            .collect()
    };
    wait_for("a scratch directory", || {
        (!scratch().is_empty()).then_some(())
    });
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    assert!(scratch().is_empty(), "left behind: {:?}", scratch());
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
}

#[test]
fn an_empty_password_file_is_refused() {
    let env = Env::new();
    let empty = env.path("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let out = env.palisade_with_key(&empty).arg("init").output().unwrap();
    assert_status(&out, 1, "init with an empty password");
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    assert!(!env.repo.exists(), "a repository was created");
}

#[test]
fn a_password_file_is_read_as_restic_reads_it() {
    // Trailing white space is not part of the password, for Palisade as for restic.
    let env = Env::new();
    std::fs::write(&env.key, "secret with spaces inside  \n\n").unwrap();
    env.ok(&["init"]);
    env.restic(&["snapshots"]);
}

#[test]
fn a_directory_or_fifo_given_as_sqlite_is_named() {
    let env = Env::init();
    let out = env.expect(&["backup", "--sqlite", env.dir.path().to_str().unwrap()], 1);
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    let fifo = env.path("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = env.expect(&["backup", "--sqlite", fifo.to_str().unwrap()], 1);
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_stream_never_reaches_the_disk_outside_the_repository() {
    // A recognisable, poorly compressible payload, larger than the pipe's buffer.
    let payload = noise(77, 4 << 20);
    let env = Env::init();
    let (child, mut stdin) = env.start_stream("private.sql", &payload);
    // The payload is in the process (written in full through the pipe); the stream is still
    // open, so a spooling backup would hold it in a file now.
    let marker = &payload[..64];
    let holders: Vec<_> = walk(env.dir.path())
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| {
            std::fs::read(p).is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker))
        })
        .collect();
    assert!(
        holders.is_empty(),
        "plaintext of the stream on disk: {holders:?}"
    );
    std::io::Write::write_all(&mut stdin, b"the end").unwrap();
    drop(stdin);
    assert_status(
        &child.wait_with_output().unwrap(),
        0,
        "backup of the stream",
    );
    let target = env.restore("latest", "out");
    let mut expected = payload.clone();
    expected.extend_from_slice(b"the end");
    assert!(std::fs::read(target.join("dumps/private.sql")).unwrap() == expected);
}
