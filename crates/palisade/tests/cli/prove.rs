//! Proof commands on real data: `restore-test` restores Chinook (SQLite, PostgreSQL, MariaDB)
//! into private servers and checks it, catches a catalog that lies, refuses when the scratch
//! file system is too small, and always removes its scratch directory and stops its servers.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use palisade_testkit::{mariadb::MariaDb, postgres::PgServer};

use crate::common::*;

/// A test folder the private servers' accounts may pass through (they run as `postgres` and
/// `mysql` when the tests run as root), with a config file.
fn proof_env(config: &str) -> (Env, PathBuf) {
    let env = Env::init();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = env.path("palisade.toml");
    std::fs::write(&path, config).unwrap();
    (env, path)
}

/// `palisade --config CONFIG ARGS` in `env`, with its exit code checked.
fn run(env: &Env, config: &Path, args: &[&str], code: i32) -> std::process::Output {
    let out = env
        .palisade()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert_status(&out, code, &format!("palisade {args:?}"));
    out
}

/// Scratch directories left in the test's temp dir.
fn leftovers(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("palisade-run-"))
        .collect()
}

/// Processes whose command line mentions the test's folder (a private server left running).
fn servers_left(env: &Env) -> Vec<String> {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(env.dir.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("postgres") || l.contains("mariadbd"))
        .map(str::to_string)
        .collect()
}

fn chinook_job(pg: &PgServer, maria: &MariaDb, extra_assert: &str) -> String {
    format!(
        "[[jobs]]\nname = \"shop\"\nsources = [\n\
         {{ sqlite = \"{}\" }},\n\
         {{ dir = \"site\" }},\n\
         {{ postgres = \"{}\", databases = [\"chinook\"], assert = [\"SELECT count(*) = 275 FROM artist\"{extra_assert}] }},\n\
         {{ mysql = \"mysql://root@localhost/?socket={}\", databases = [\"Chinook\"], assert = [\"SELECT count(*) > 0 FROM Album\"] }},\n]\n",
        chinook().display(),
        pg.url("postgres"),
        maria.socket().display()
    )
}

#[test]
fn restore_test_passes_on_a_healthy_chinook_backup_in_every_engine() {
    let pg = PgServer::start();
    pg.load_chinook();
    let maria = MariaDb::start();
    maria.load_chinook();
    let (env, config) = proof_env(&chinook_job(&pg, &maria, ""));
    std::fs::create_dir_all(env.path("site/img")).unwrap();
    std::fs::write(env.path("site/index.html"), "<h1>shop</h1>\n").unwrap();
    std::fs::write(env.path("site/img/logo.svg"), noise(3, 5000)).unwrap();
    run(&env, &config, &["backup", "--job", "shop"], 0);

    let out = run(&env, &config, &["--json", "restore-test"], 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let test = &report["tests"][0];
    assert_eq!(test["name"], "shop");
    let check = |item: &str| {
        test["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["item"] == item)
            .unwrap_or_else(|| panic!("no check of {item} in {test}"))
            .clone()
    };
    let sqlite = check("databases/Chinook_Sqlite.sqlite");
    assert_eq!(
        (sqlite["tables"].as_u64(), sqlite["rows"].as_u64()),
        (Some(11), Some(15607))
    );
    let postgres = check("postgres/chinook.dump");
    assert_eq!(postgres["tables"], 11, "{postgres}");
    assert_eq!(postgres["assertions"], 1, "{postgres}");
    let mysql = check("mysql/Chinook.sql");
    assert_eq!(mysql["rows"], 15607, "{mysql}");
    assert_eq!(mysql["assertions"], 1, "{mysql}");
    assert_eq!(check("files/site")["passed"], true);
    assert!(test["seconds"].as_f64().unwrap() > 0.0);
    assert!(test["scratch_needed"].as_u64().unwrap() < test["scratch_free"].as_u64().unwrap());
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
    assert!(servers_left(&env).is_empty(), "{:?}", servers_left(&env));
}

#[test]
fn restore_test_names_the_table_whose_catalog_count_lies() {
    let (env, config) = proof_env("");
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    // Rewrite the snapshot with restic, the catalog claiming one more album than was stored.
    let copy = env.path("copy");
    env.restic(&["restore", "latest", "--target", copy.to_str().unwrap()]);
    let catalog_path = copy.join("palisade/catalog.json");
    let mut catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&catalog_path).unwrap()).unwrap();
    catalog["items"][0]["tables"]["Album"] = 348.into();
    std::fs::write(&catalog_path, serde_json::to_vec(&catalog).unwrap()).unwrap();
    let out = Command::new("restic")
        .current_dir(&copy)
        .args(["-r", env.repo.to_str().unwrap(), "--password-file"])
        .arg(&env.key)
        .args(["--no-cache", "--json", "backup", "databases", "palisade"])
        .output()
        .unwrap();
    assert_status(&out, 0, "restic backup");
    let tampered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["snapshot_id"].as_str().map(str::to_string)
        })
        .unwrap();

    let out = run(&env, &config, &["restore-test", &tampered], 1);
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("Album: catalog 348, restored 347"),
        "{message}"
    );
    assert!(
        message.contains("databases/Chinook_Sqlite.sqlite"),
        "{message}"
    );
    assert!(leftovers(&env).is_empty());
}

#[test]
fn restore_test_refuses_a_scratch_file_system_too_small_and_names_the_size() {
    let (env, config) = proof_env("");
    let small = env.path("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "these tests run as root and may mount a tmpfs"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    std::fs::write(&config, format!("temp_dir = \"{}\"\n", small.display())).unwrap();

    let out = run(&env, &config, &["restore-test"], 1);
    let message = stderr(&out);
    assert!(message.contains("not enough free space"), "{message}");
    assert!(message.contains("needs about 984.0 KiB"), "{message}");
    assert!(message.contains("set temp_dir"), "{message}");
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "scratch left on the tmpfs"
    );
}

#[test]
fn restore_test_reports_missing_server_programs_and_bad_assertions_and_cleans_up() {
    let pg = PgServer::start();
    pg.load_chinook();
    let job = |bin_dir: &str, assert: &str| {
        format!(
            "[[jobs]]\nname = \"shop\"\nsources = [{{ postgres = \"{}\", databases = \
             [\"chinook\"]{bin_dir}, assert = [\"{assert}\"] }}]\n",
            pg.url("postgres")
        )
    };
    let (env, config) = proof_env(&job("", "SELEC count(*) FROM artist"));
    run(&env, &config, &["backup", "--job", "shop"], 0);

    // An assertion that is not SQL: PostgreSQL's own message, and the test fails.
    let out = run(&env, &config, &["restore-test"], 1);
    let message = stderr(&out);
    assert!(
        message.contains("assertion `SELEC count(*) FROM artist`"),
        "{message}"
    );
    assert!(message.contains("syntax error"), "{message}");
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
    assert!(servers_left(&env).is_empty(), "{:?}", servers_left(&env));

    // An assertion that is false names what it returned.
    std::fs::write(&config, job("", "SELECT count(*) = 1 FROM artist")).unwrap();
    let message = stderr(&run(&env, &config, &["restore-test"], 1));
    assert!(message.contains("returned `f`, not true"), "{message}");

    // No server programs where the source says they are.
    let empty = env.path("no-postgres-here");
    std::fs::create_dir(&empty).unwrap();
    let bin_dir = format!(", bin_dir = \"{}\"", empty.display());
    std::fs::write(&config, job(&bin_dir, "SELECT true")).unwrap();
    let message = stderr(&run(&env, &config, &["restore-test", "--job", "shop"], 1));
    assert!(message.contains("initdb was not found in"), "{message}");
    assert!(message.contains("apt-get install postgresql"), "{message}");
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

#[test]
fn an_interrupted_restore_test_stops_its_server_and_removes_its_scratch() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE big");
    pg.psql(
        "big",
        "CREATE TABLE t AS SELECT n, md5(n::text) AS h FROM generate_series(1, 400000) n",
    );
    let config = format!(
        "[[jobs]]\nname = \"big\"\nsources = [{{ postgres = \"{}\", databases = [\"big\"], \
         globals = false }}]\n",
        pg.url("postgres")
    );
    let (env, config) = proof_env(&config);
    run(&env, &config, &["backup", "--job", "big"], 0);
    let child = env
        .palisade()
        .arg("--config")
        .arg(&config)
        .arg("restore-test")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the private server", || {
        (!servers_left(&env).is_empty()).then_some(())
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
    wait_for("the server to stop", || {
        servers_left(&env).is_empty().then_some(())
    });
}

/// A repository holding Chinook and a small site, with a config whose state_dir is its own.
fn verified_env() -> (Env, PathBuf) {
    let (env, config) = proof_env("");
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\n", env.path("state").display()),
    )
    .unwrap();
    std::fs::create_dir_all(env.path("site")).unwrap();
    std::fs::write(env.path("site/page.html"), noise(7, 20_000)).unwrap();
    env.backup(&[
        "--sqlite",
        chinook().to_str().unwrap(),
        "--dir",
        env.path("site").to_str().unwrap(),
    ]);
    run(&env, &config, &["verify", "--read-data-subset", "100"], 0);
    (env, config)
}

/// The files below `dir`, largest first.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walk(dir).into_iter().filter(|p| p.is_file()).collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn verify_names_a_pack_with_one_flipped_byte() {
    let (env, config) = verified_env();
    let pack = files_in(&env.repo.join("data")).remove(0);
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    let message = stderr(&run(
        &env,
        &config,
        &["verify", "--read-data-subset", "100"],
        1,
    ));
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains(&name(&pack)), "{message}");
}

#[test]
fn verify_names_a_deleted_pack() {
    let (env, config) = verified_env();
    let pack = files_in(&env.repo.join("data")).remove(0);
    std::fs::remove_file(&pack).unwrap();
    let message = stderr(&run(
        &env,
        &config,
        &["verify", "--read-data-subset", "100"],
        1,
    ));
    assert!(message.contains(&name(&pack)), "{message}");
}

#[test]
fn verify_names_a_truncated_index() {
    let (env, config) = verified_env();
    let index = files_in(&env.repo.join("index")).remove(0);
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 2]).unwrap();
    let message = stderr(&run(
        &env,
        &config,
        &["verify", "--read-data-subset", "100"],
        1,
    ));
    assert!(message.contains(&name(&index)), "{message}");
}

#[test]
fn verify_rotates_through_the_data_and_keeps_its_cursor_in_the_state_dir() {
    let (env, config) = verified_env();
    let json = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = json(run(
        &env,
        &config,
        &["--json", "verify", "--read-data-subset", "50"],
        0,
    ));
    assert_eq!(first["parts"], serde_json::json!(["1/2"]), "{first}");
    let second = json(run(
        &env,
        &config,
        &["--json", "verify", "--read-data-subset", "50"],
        0,
    ));
    assert_eq!(second["parts"], serde_json::json!(["2/2"]), "{second}");
    assert_eq!(second["cursor"]["next"], 1);
    // Two halves together hashed every item once, whichever half each snapshot fell into.
    let items = first["items"].as_u64().unwrap() + second["items"].as_u64().unwrap();
    assert_eq!(items, 2, "{first}\n{second}");
    let cursor_file = second["cursor_file"].as_str().unwrap();
    assert!(
        cursor_file.starts_with(env.path("state").to_str().unwrap()),
        "{cursor_file}"
    );
    let whole = json(run(
        &env,
        &config,
        &["--json", "verify", "--max-duration", "10m"],
        0,
    ));
    assert_eq!(whole["parts"].as_array().unwrap().len(), 28, "{whole}");
}

#[test]
fn the_drill_recovers_every_job_from_a_fresh_empty_state_and_writes_its_report() {
    let (env, _) = proof_env("");
    std::fs::create_dir_all(env.path("site")).unwrap();
    std::fs::write(env.path("site/index.html"), "<h1>shop</h1>\n").unwrap();
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    env.backup(&["--dir", env.path("site").to_str().unwrap()]);
    // A new host: an empty home, no config, no cache, no state; only the address and the key.
    let home = env.path("new-host");
    std::fs::create_dir(&home).unwrap();
    let out = env
        .palisade()
        .current_dir(&home)
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_STATE_HOME")
        .args(["--json", "drill", "--output", "report"])
        .output()
        .unwrap();
    assert_status(&out, 0, "palisade drill");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let job = &report["jobs"][0];
    assert_eq!(job["label"], "");
    assert!(job["rto_seconds"].as_f64().unwrap() > 0.0, "{job}");
    assert!(job["rpo_seconds"].as_f64().unwrap() >= 0.0, "{job}");
    // The newest ad-hoc snapshot holds the site; its check hashed it.
    assert_eq!(job["test"]["checks"][0]["item"], "files/site", "{job}");
    let written: Vec<String> = std::fs::read_dir(home.join("report"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(written.iter().any(|n| n.ends_with(".md")), "{written:?}");
    assert!(written.iter().any(|n| n.ends_with(".json")), "{written:?}");
    let markdown = std::fs::read_to_string(
        home.join("report")
            .join(written.iter().find(|n| n.ends_with(".md")).unwrap()),
    )
    .unwrap();
    assert!(
        markdown.contains("| (no job) |") && markdown.contains("RTO"),
        "{markdown}"
    );
    // Nothing but the report was left on the new host.
    let entries: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(leftovers(&env).is_empty());
}
