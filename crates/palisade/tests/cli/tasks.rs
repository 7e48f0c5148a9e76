//! The daemon's `[[tasks]]` (verify, restore-test, prune on their own schedules) with their run
//! records, alerts and metrics; the run lock that keeps a backup by hand and the daemon's apart;
//! the repository-unreachable alarm; jitter; and the config check's answers to bad tasks.

use palisade_testkit::webhook::WebhookReceiver;

use crate::common::*;
use crate::daemon::{
    RunningDaemon, bare, bare_json, notices, runs, scrape, setup, wait_runs, write_config,
};
use crate::prove::files_in;

const SHOP: &str = "[[jobs]]\nname = \"shop\"\nsources = [{ sqlite = \"shop.db\" }]\n";

/// The state directory's lock file of `kind` (`job`, `repo`) for `name`, as Palisade names it.
fn lock_file(env: &Env, kind: &str, name: &str) -> std::fs::File {
    use sha2::Digest;
    let locks = env.path("state/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    std::fs::File::create(locks.join(format!("{kind}-{}.lock", &id[..16]))).unwrap()
}

/// Waits until the newest `kind` run has finished, and gives it.
fn wait_task(env: &Env, kind: &str, count: usize) -> serde_json::Value {
    wait_for(&format!("{count} finished {kind} run(s)"), || {
        let all = runs(env);
        let done: Vec<_> = all
            .iter()
            .filter(|r| r["kind"] == kind && r["outcome"] != "running")
            .cloned()
            .collect();
        (done.len() >= count).then(|| done[0].clone())
    })
}

/// The scheduled proof: verify, restore-test and prune each run on their own schedule
/// as children of the daemon, land in the run store with their reports, and show in the
/// metrics; once a pack is damaged, the next verify and restore-test fail, each alert once
/// with the reason in one line, and resolve when the damage is repaired.
#[test]
fn scheduled_verify_restore_test_and_prune_are_recorded_and_a_damaged_pack_alerts() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    let hooks = WebhookReceiver::start();
    let metrics = palisade_testkit::free_port();
    setup(
        &env,
        &format!(
            "state_dir = \"state\"\n\
             [daemon]\nmetrics = \"127.0.0.1:{metrics}\"\ncatch_up = false\n\
             [alerting]\nrepeat = \"1d\"\nmissed_factor = 1000\n\
             {SHOP}\
             [[tasks]]\nrun = \"verify\"\nschedule = {{ cron = \"30 * * * *\", timezone = \"UTC\" }}\n\
             read_data_subset = \"100%\"\n\
             [[tasks]]\nrun = \"restore-test\"\njob = \"shop\"\n\
             schedule = {{ cron = \"10 * * * *\", timezone = \"UTC\" }}\n\
             [[tasks]]\nrun = \"prune\"\nschedule = {{ cron = \"20 0 * * *\", timezone = \"UTC\" }}\n\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{}/hook\"\n",
            hooks.url
        ),
    );
    // A backup and a verify by hand: both recorded, the verify as a task of its own kind.
    assert_status(&bare(&env).arg("backup").output().unwrap(), 0, "backup");
    assert_status(
        &bare(&env)
            .args(["verify", "--read-data-subset", "100"])
            .output()
            .unwrap(),
        0,
        "verify by hand",
    );
    let by_hand = runs(&env);
    assert_eq!(by_hand[0]["kind"], "verify");
    assert_eq!(by_hand[0]["trigger"], "command");
    assert_eq!(by_hand[0]["report"]["passed"], true);
    assert_eq!(by_hand[1]["kind"], "backup");

    // Each slot in turn: restore-test at :10, prune at 00:20 (daily), verify at :30.
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    daemon.set_clock("2030-01-01T00:10:00Z");
    let test = wait_task(&env, "restore-test", 1);
    assert_eq!(test["outcome"], "success", "{test}");
    assert_eq!(test["trigger"], "schedule");
    assert_eq!(test["job"], "shop");
    let tests = test["report"]["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 1, "{test}");
    assert!(tests[0]["seconds"].as_f64().is_some());
    assert!(tests[0]["bytes_restored"].as_u64().unwrap() > 100_000);

    daemon.set_clock("2030-01-01T00:20:00Z");
    let prune = wait_task(&env, "prune", 1);
    assert_eq!(prune["outcome"], "success", "{prune}");
    assert!(prune["report"].is_object(), "{prune}");

    daemon.set_clock("2030-01-01T00:30:00Z");
    let verify = wait_task(&env, "verify", 2);
    assert_eq!(verify["outcome"], "success", "{verify}");
    assert_eq!(verify["job"], "");
    assert_eq!(verify["report"]["parts"], serde_json::json!(["1/1"]));
    assert!(verify["bytes_read"].as_u64().unwrap() > 100_000, "{verify}");

    // One flipped byte in the pack holding the database.
    let pack = files_in(&env.path("repo/data")).remove(0);
    let original = std::fs::read(&pack).unwrap();
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();

    daemon.set_clock("2030-01-01T01:10:00Z");
    hooks.wait_until("the restore-test alert", |r| {
        !notices(r, "/hook", "restore-test-failed").is_empty()
    });
    assert_eq!(wait_task(&env, "restore-test", 2)["outcome"], "failed");

    daemon.set_clock("2030-01-01T01:30:00Z");
    let received = hooks.wait_until("the verify alert", |r| {
        !notices(r, "/hook", "verify-failed").is_empty()
    });
    let alert: serde_json::Value = serde_json::from_str(
        &received
            .iter()
            .find(|r| r.body.contains("verify-failed"))
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(alert["kind"], "firing");
    assert_eq!(alert["subject"], "all jobs");
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.starts_with("verify failed: ") && message.contains(&pack_name),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    let failed = wait_task(&env, "verify", 3);
    assert_eq!(failed["outcome"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains(&pack_name),
        "{failed}"
    );
    assert_eq!(failed["report"]["passed"], false);

    let text = scrape(metrics);
    for line in [
        "palisade_task_last_failed{job=\"\",task=\"verify\"} 1",
        "palisade_task_last_failed{job=\"shop\",task=\"restore-test\"} 1",
        "palisade_task_last_failed{job=\"\",task=\"prune\"} 0",
        "palisade_job_snapshots_total{job=\"shop\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        text.contains("palisade_task_last_success_timestamp_seconds{job=\"\",task=\"verify\"}")
    );

    // Repaired: the next restore-test (02:10) and verify (02:30) pass and their alerts
    // resolve, once each.
    std::fs::write(&pack, &original).unwrap();
    daemon.set_clock("2030-01-01T02:30:00Z");
    let received = hooks.wait_until("the resolved alerts", |r| {
        notices(r, "/hook", "verify-failed").len() == 2
            && notices(r, "/hook", "restore-test-failed").len() == 2
    });
    assert_eq!(
        notices(&received, "/hook", "verify-failed"),
        ["firing", "resolved"]
    );
    assert_eq!(
        notices(&received, "/hook", "restore-test-failed"),
        ["firing", "resolved"]
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// The job's run lock: while another process holds it, a backup by hand refuses with a clear
/// message and the daemon's scheduled run is recorded as skipped without an alert; once it is
/// free, both run.
#[test]
fn a_backup_never_runs_beside_another_run_of_the_same_job() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    let hooks = WebhookReceiver::start();
    setup(
        &env,
        &format!(
            "state_dir = \"state\"\n[daemon]\nmetrics = \"off\"\n\
             {SHOP}schedule = {{ cron = \"*/10 * * * *\", timezone = \"UTC\" }}\n\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{}/hook\"\n",
            hooks.url
        ),
    );
    // Another `palisade backup` of the job, as far as the lock can tell.
    let holder = lock_file(&env, "job", "shop");
    holder.lock().unwrap();

    let out = bare(&env)
        .args(["backup", "--job", "shop"])
        .output()
        .unwrap();
    assert_status(&out, 1, "backup while the job is locked");
    assert!(
        stderr(&out).contains("job shop: already running"),
        "{}",
        stderr(&out)
    );
    assert!(runs(&env).is_empty(), "a refused backup is not a run");

    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    daemon.set_clock("2030-01-01T00:10:00Z");
    let skipped = wait_runs(&env, 1);
    assert_eq!(skipped[0]["outcome"], "skipped", "{skipped:?}");
    assert!(
        skipped[0]["error"]
            .as_str()
            .unwrap()
            .contains("another run of the job"),
        "{skipped:?}"
    );

    holder.unlock().unwrap();
    daemon.set_clock("2030-01-01T00:20:00Z");
    let all = wait_runs(&env, 2);
    assert_eq!(all[0]["outcome"], "success", "{all:?}");
    assert_status(&bare(&env).arg("backup").output().unwrap(), 0, "backup");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        hooks
            .received()
            .iter()
            .all(|r| !r.body.contains("run-failed")),
        "a skipped run alerted"
    );
}

/// A prune waits for the backups writing to its repository (it would otherwise mark the packs
/// they are writing, and their snapshots would not restore until the next prune), and a
/// backup waits for a prune; a dry run waits for nothing.
#[test]
fn prune_and_backups_of_one_repository_take_turns() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    setup(&env, &format!("state_dir = \"state\"\n{SHOP}"));
    assert_status(&bare(&env).arg("backup").output().unwrap(), 0, "backup");
    let repo = std::fs::canonicalize(env.path("repo")).unwrap();
    let lock = lock_file(&env, "repo", &repo.display().to_string());

    // A backup is running (it holds the lock shared): prune waits, saying so.
    lock.lock_shared().unwrap();
    assert_status(
        &bare(&env).args(["prune", "--dry-run"]).output().unwrap(),
        0,
        "a dry run does not wait",
    );
    let err = env.path("prune.err");
    let mut prune = bare(&env)
        .arg("prune")
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for("prune to say it waits", || {
        std::fs::read_to_string(&err)
            .unwrap()
            .contains("waiting for the backups running to")
            .then_some(())
    });
    assert!(prune.try_wait().unwrap().is_none(), "prune did not wait");
    lock.unlock().unwrap();
    let status = wait_for("prune to end", || prune.try_wait().unwrap());
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&err).unwrap()
    );

    // A prune is running (it holds the lock exclusively): a backup waits.
    lock.lock().unwrap();
    let mut backup = bare(&env)
        .arg("backup")
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for("the backup to say it waits", || {
        std::fs::read_to_string(&err)
            .unwrap()
            .contains("waiting for the prune of")
            .then_some(())
    });
    assert!(
        backup.try_wait().unwrap().is_none(),
        "the backup did not wait"
    );
    lock.unlock().unwrap();
    let status = wait_for("the backup to end", || backup.try_wait().unwrap());
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&err).unwrap()
    );
    assert_eq!(runs(&env).len(), 3, "two backups and a prune");
}

/// A repository that goes away (an unmounted disk) makes the job fail and the probe fail: the
/// repository-unreachable alert fires once, and resolves when the repository is back.
#[test]
fn an_unreachable_repository_alerts_and_resolves() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    let hooks = WebhookReceiver::start();
    setup(
        &env,
        &format!(
            "state_dir = \"state\"\n[daemon]\nmetrics = \"off\"\n\
             [alerting]\nmissed_factor = 1000\n\
             {SHOP}schedule = {{ cron = \"*/10 * * * *\", timezone = \"UTC\" }}\n\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{}/hook\"\n\
             rules = [\"repository-unreachable\"]\n",
            hooks.url
        ),
    );
    std::fs::rename(env.path("repo"), env.path("repo-away")).unwrap();
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    daemon.set_clock("2030-01-01T00:10:00Z");
    let received = hooks.wait_until("the unreachable alert", |r| {
        !notices(r, "/hook", "repository-unreachable").is_empty()
    });
    let alert: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(alert["kind"], "firing");
    assert!(
        alert["subject"].as_str().unwrap().ends_with("repo"),
        "{alert}"
    );
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("cannot be opened"),
        "{alert}"
    );
    assert_eq!(wait_runs(&env, 1)[0]["outcome"], "failed");

    // Still away at the next slot: no second message (the repeat interval has not passed).
    daemon.set_clock("2030-01-01T00:20:00Z");
    wait_runs(&env, 2);

    std::fs::rename(env.path("repo-away"), env.path("repo")).unwrap();
    daemon.set_clock("2030-01-01T00:30:00Z");
    let received = hooks.wait_until("the resolved message", |r| {
        notices(r, "/hook", "repository-unreachable").len() == 2
    });
    assert_eq!(
        notices(&received, "/hook", "repository-unreachable"),
        ["firing", "resolved"]
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// Jitter moves each run to a random moment after its slot: the planned time is logged, lies
/// within the jitter, and the run starts at it, not at the slot.
#[test]
fn jitter_delays_each_run_within_its_bound() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    setup(
        &env,
        &format!(
            "state_dir = \"state\"\n[daemon]\nmetrics = \"off\"\n\
             {SHOP}schedule = {{ cron = \"0 * * * *\", timezone = \"UTC\", jitter = \"30m\" }}\n"
        ),
    );
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    let planned = wait_for("the planned run", || {
        daemon
            .log()
            .lines()
            .find_map(|l| l.split("job shop: next run at ").nth(1).map(str::to_string))
    });
    let at = chrono::DateTime::parse_from_rfc3339(planned.trim()).unwrap();
    let slot = chrono::DateTime::parse_from_rfc3339("2030-01-01T01:00:00Z").unwrap();
    assert!(
        at > slot && at <= slot + chrono::Duration::minutes(30),
        "planned at {at}, slot {slot}"
    );

    // At the slot itself, and just before the planned time, nothing runs.
    daemon.set_clock("2030-01-01T01:00:00Z");
    let before = (at - chrono::Duration::milliseconds(1)).to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(600));
    daemon.set_clock(&before);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        runs(&env).is_empty(),
        "a run started before its jittered time"
    );
    daemon.set_clock(&at.to_rfc3339());
    let started = wait_runs(&env, 1);
    assert_eq!(started[0]["outcome"], "success", "{started:?}");
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn config_check_names_the_line_of_a_bad_task() {
    let env = Env::new();
    let cases = [
        (
            "[[tasks]]\nrun = \"verify\"\njob = \"nope\"\nschedule = \"0 3 * * *\"\n",
            "line 8",
            "no job named `nope`; jobs: shop",
        ),
        (
            "[[tasks]]\nrun = \"restore-test\"\nschedule = \"0 25 * * *\"\n",
            "line 8",
            "task `restore-test`: schedule `0 25 * * *` is not a valid cron expression",
        ),
        (
            "[[tasks]]\nrun = \"prune\"\nschedule = \"0 3 * * *\"\nread_data_subset = 10\n",
            "line 9",
            "only apply to verify",
        ),
        (
            "[[tasks]]\nrun = \"verify\"\nschedule = \"0 3 * * *\"\nread_data_subset = 0\n",
            "line 9",
            "not a percentage",
        ),
        (
            "[[tasks]]\nrun = \"verify\"\nschedule = \"0 3 * * *\"\nmax_duration = \"soon\"\n",
            "line 9",
            "not a duration",
        ),
        (
            "[[tasks]]\nrun = \"verify\"\nschedule = \"0 3 * * *\"\n\
             [[tasks]]\nrun = \"verify\"\nschedule = \"0 4 * * *\"\n",
            "line 10",
            "two tasks `verify`",
        ),
        (
            "[[tasks]]\nrun = \"vacuum\"\nschedule = \"0 3 * * *\"\n",
            "line 7",
            "unknown variant `vacuum`",
        ),
        (
            "[[tasks]]\nrun = \"prune\"\njob = \"shop\"\nschedule = \"0 3 * * *\"\n",
            "line 8",
            "leave `job` out",
        ),
    ];
    // Without a job, a task works on the default repository: there must be one.
    std::fs::write(
        env.path("palisade.toml"),
        format!(
            "password_file = \"key\"\n{SHOP}[[tasks]]\nrun = \"verify\"\nschedule = \"0 3 * * *\"\n"
        ),
    )
    .unwrap();
    let out = bare(&env).args(["config", "check"]).output().unwrap();
    assert_status(&out, 1, "a task without job or repository");
    assert!(
        stderr(&out).contains("line 6") && stderr(&out).contains("no default `repository`"),
        "{}",
        stderr(&out)
    );
    for (tasks, line, message) in cases {
        write_config(&env, &format!("{SHOP}{tasks}"));
        let out = bare(&env).args(["config", "check"]).output().unwrap();
        assert_status(&out, 1, tasks);
        let err = stderr(&out);
        assert!(
            err.contains(line) && err.contains(message),
            "{tasks}\n{err}"
        );
    }
    // A good one passes, and `schedule` lists it.
    write_config(
        &env,
        &format!(
            "{SHOP}[[tasks]]\nrun = \"verify\"\njob = \"shop\"\n\
             schedule = {{ cron = \"0 3 * * *\", timezone = \"UTC\" }}\n"
        ),
    );
    let check = bare_json(&env, &["config", "check"]);
    assert_eq!(
        check["tasks"],
        serde_json::json!(["verify of shop"]),
        "{check}"
    );
    std::fs::write(env.path("clock"), "2030-01-10T12:00:00Z").unwrap();
    let out = bare(&env)
        .args(["--json", "schedule", "--count", "2"])
        .env("PALISADE_TEST_CLOCK_FILE", env.path("clock"))
        .output()
        .unwrap();
    assert_status(&out, 0, "schedule");
    let planned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(planned[1]["task"], "verify of shop", "{planned}");
    assert_eq!(
        planned[1]["next"],
        serde_json::json!(["2030-01-11T03:00:00+00:00", "2030-01-12T03:00:00+00:00"])
    );
}
