//! The config file's jobs, key management, JSON output and the quickstart.

use crate::common::*;

fn write_config(env: &Env) -> std::path::PathBuf {
    let site = env.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>shop</h1>").unwrap();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    let config = env.path("palisade.toml");
    std::fs::write(
        &config,
        "repository = \"repo\"\npassword_file = \"key\"\n\n\
         [[jobs]]\nname = \"db\"\nsources = [{ sqlite = \"shop.db\" }]\n\n\
         [[jobs]]\nname = \"site\"\nsources = [{ dir = \"site\", name = \"www\" }]\ntags = [\"web\"]\n",
    )
    .unwrap();
    config
}

/// palisade run from the env's folder with only its config file to go on.
fn bare(env: &Env) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.current_dir(env.dir.path())
        .env("TMPDIR", env.dir.path())
        .env("PALISADE_STATE_DIR", env.path("state"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PALISADE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn plain_backup_runs_every_job_and_job_runs_one() {
    let env = Env::new();
    write_config(&env);
    assert_status(
        &bare(&env).arg("init").output().unwrap(),
        0,
        "init from config",
    );
    assert_status(
        &bare(&env).arg("backup").output().unwrap(),
        0,
        "backup all jobs",
    );
    assert_status(
        &bare(&env)
            .args(["backup", "--job", "site"])
            .output()
            .unwrap(),
        0,
        "one job",
    );

    let out = bare(&env).args(["--json", "snapshots"]).output().unwrap();
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels.iter().filter(|l| **l == "db").count(),
        1,
        "{labels:?}"
    );
    assert_eq!(
        labels.iter().filter(|l| **l == "site").count(),
        2,
        "{labels:?}"
    );
    let site = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "site")
        .unwrap();
    assert!(site["tags"].as_array().unwrap().iter().any(|t| t == "web"));

    let out = bare(&env)
        .args(["--json", "ls", "latest"])
        .output()
        .unwrap();
    let catalog: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(catalog["job"], "site");
    assert_eq!(catalog["items"][0]["path"], "files/www");

    let out = bare(&env)
        .args(["backup", "--job", "nope"])
        .output()
        .unwrap();
    assert_status(&out, 1, "unknown job");
    assert!(stderr(&out).contains("db, site"), "{}", stderr(&out));
}

#[test]
fn keys_can_be_added_listed_removed_and_changed() {
    let env = Env::init();
    let second = env.path("second");
    std::fs::write(&second, "another password\n").unwrap();
    let added = env.json(&[
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
    ]);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);

    // The new key opens the repository; with it, the original key can be removed.
    let original = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let with_second = |args: &[&str]| env.palisade_with_key(&second).args(args).output().unwrap();
    assert_status(
        &with_second(&["key", "remove", &original[..10]]),
        0,
        "remove the first key",
    );
    assert_status(
        &env.palisade().arg("snapshots").output().unwrap(),
        1,
        "old password after removal",
    );

    let third = env.path("third");
    std::fs::write(&third, "third password\n").unwrap();
    assert_status(
        &with_second(&[
            "key",
            "passwd",
            "--new-password-file",
            third.to_str().unwrap(),
        ]),
        0,
        "passwd",
    );
    assert_status(
        &with_second(&["snapshots"]),
        1,
        "second password after passwd",
    );
    let out = env
        .palisade_with_key(&third)
        .args(["--json", "key", "list"])
        .output()
        .unwrap();
    assert_status(&out, 0, "third password");
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_ne!(keys[0]["id"], added["id"]);

    // The key in use cannot be removed.
    let current = keys[0]["id"].as_str().unwrap();
    let out = env
        .palisade_with_key(&third)
        .args(["key", "remove", current])
        .output()
        .unwrap();
    assert_status(&out, 1, "removing the current key");
}

#[test]
fn quickstart_runs_the_main_job_and_restic_reads_its_repository() {
    let env = Env::new();
    let out = bare(&env).arg("quickstart").output().unwrap();
    assert_status(&out, 0, "quickstart");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verified"), "{text}");
    let demo = env.path("palisade-demo");
    let key = std::fs::metadata(demo.join("palisade.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    // A second run reuses the demo and adds a snapshot; restic checks the repository.
    assert_status(
        &bare(&env).arg("quickstart").output().unwrap(),
        0,
        "quickstart again",
    );
    let out = std::process::Command::new("restic")
        .args(["--no-cache", "-r"])
        .arg(demo.join("repo"))
        .arg("--password-file")
        .arg(demo.join("palisade.key"))
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert_status(&out, 0, "restic check of the quickstart repository");
    let out = bare(&env)
        .current_dir(&demo)
        .args(["--json", "snapshots"])
        .output()
        .unwrap();
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
}

#[test]
fn json_output_never_contains_the_password() {
    let env = Env::init();
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    for args in [
        &["snapshots"][..],
        &["ls", "latest"],
        &["stats"],
        &["key", "list"],
        &["check"],
    ] {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = env.ok(&all);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("correct horse"),
            "{args:?} printed the password"
        );
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }
}
