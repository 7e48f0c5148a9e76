//! `palisade daemon`, `schedule` and `runs`: schedules driven through time by a clock file (no
//! sleeping for time), run records, SIGHUP reloads, SIGTERM shutdowns, catch-up runs, the
//! missed-backup alarm and the metrics endpoint.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use palisade_testkit::webhook::{Received, WebhookReceiver};

use crate::common::*;

/// A `palisade -v daemon` started in an env's folder with its clock file; stopped on drop.
pub struct RunningDaemon {
    child: Option<Child>,
    log: PathBuf,
    clock: PathBuf,
}

impl RunningDaemon {
    /// Starts the daemon on `env`'s `palisade.toml` with the clock at `now`.
    pub fn start(env: &Env, now: &str) -> Self {
        let clock = env.path("clock");
        std::fs::write(&clock, now).unwrap();
        let log = env.path(&format!("daemon-{}.log", rand_suffix()));
        let child = bare(env)
            .args(["-v", "--config", "palisade.toml", "daemon"])
            .env("PALISADE_TEST_CLOCK_FILE", &clock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self {
            child: Some(child),
            log,
            clock,
        };
        // The daemon reads the clock when it plans: move it only after that.
        daemon.wait_log("palisade daemon: ");
        daemon
    }

    /// Moves the daemon's clock.
    pub fn set_clock(&self, now: &str) {
        let temp = self.clock.with_extension("new");
        std::fs::write(&temp, now).unwrap();
        std::fs::rename(&temp, &self.clock).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, text: &str) {
        wait_for(&format!("`{text}` in the daemon's log"), || {
            self.log().contains(text).then_some(())
        });
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let out = Command::new("kill")
            .args(["-s", name, &pid])
            .output()
            .unwrap();
        assert_status(&out, 0, "kill");
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> (i32, String) {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let status = wait_for("the daemon to exit", || child.try_wait().unwrap());
        (status.code().unwrap_or(-1), self.log())
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the daemon's log:\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// palisade run from the env's folder with only its config file (and the env's state dir).
pub fn bare(env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PALISADE_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(env.dir.path())
        .env("TMPDIR", env.dir.path())
        .env("PALISADE_STATE_DIR", env.path("state"))
        .stdin(Stdio::null());
    cmd
}

/// `palisade --json ARGS` from the env's folder, parsed.
pub fn bare_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let out = bare(env).arg("--json").args(args).output().unwrap();
    assert_status(&out, 0, &format!("palisade {args:?}"));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The recorded runs, newest first (read with an empty config, so that a broken
/// `palisade.toml` does not stop the test reading them; the state dir is the env's).
pub fn runs(env: &Env) -> Vec<serde_json::Value> {
    let empty = env.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    bare_json(env, &["--config", empty.to_str().unwrap(), "runs"])
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `n` runs have finished.
pub fn wait_runs(env: &Env, n: usize) -> Vec<serde_json::Value> {
    wait_for(&format!("{n} finished run(s)"), || {
        let runs = runs(env);
        let done = runs.iter().filter(|r| r["outcome"] != "running").count();
        (done >= n).then_some(runs)
    })
}

/// Writes `palisade.toml` (repository, key and the given rest) and initialises the repository.
pub fn setup(env: &Env, rest: &str) {
    write_config(env, rest);
    assert_status(&bare(env).arg("init").output().unwrap(), 0, "init");
}

pub fn write_config(env: &Env, rest: &str) {
    std::fs::write(
        env.path("palisade.toml"),
        format!("repository = \"repo\"\npassword_file = \"key\"\n{rest}"),
    )
    .unwrap();
}

/// The webhook notices received with `rule`, as (kind, body).
pub fn notices(received: &[Received], path: &str, rule: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .filter(|body| body["rule"] == rule)
        .map(|body| body["kind"].as_str().unwrap().to_string())
        .collect()
}

/// `GET /metrics` of the daemon's endpoint on `port`.
pub fn scrape(port: u16) -> String {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap()
}

#[test]
fn schedule_lists_the_next_runs_in_the_jobs_time_zone() {
    let env = Env::new();
    write_config(
        &env,
        "[[jobs]]\nname = \"db\"\nsources = [{ sqlite = \"db.sqlite\" }]\n\
         schedule = { cron = \"0 3 * * *\", timezone = \"Europe/Berlin\" }\n\n\
         [[jobs]]\nname = \"by-hand\"\nsources = [{ dir = \"site\" }]\n",
    );
    std::fs::write(env.path("clock"), "2030-01-10T12:00:00Z").unwrap();
    let out = bare(&env)
        .args(["--json", "schedule", "--count", "3"])
        .env("PALISADE_TEST_CLOCK_FILE", env.path("clock"))
        .output()
        .unwrap();
    assert_status(&out, 0, "schedule");
    let planned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        planned[0]["next"],
        serde_json::json!([
            "2030-01-11T03:00:00+01:00",
            "2030-01-12T03:00:00+01:00",
            "2030-01-13T03:00:00+01:00"
        ])
    );
    assert!(planned[1]["cron"].is_null());

    let out = bare(&env)
        .arg("schedule")
        .env("PALISADE_TEST_CLOCK_FILE", env.path("clock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("db: 0 3 * * * (Europe/Berlin)") && text.contains("by-hand: not scheduled"),
        "{text}"
    );
}

#[test]
fn backup_records_its_runs_and_runs_shows_them() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    setup(
        &env,
        "[[jobs]]\nname = \"shop\"\nsources = [{ sqlite = \"shop.db\" }]\n\n\
         [[jobs]]\nname = \"gone\"\nsources = [{ sqlite = \"missing.db\" }]\n",
    );
    let out = bare(&env).arg("backup").output().unwrap();
    assert_status(&out, 1, "one job fails");

    let all = runs(&env);
    assert_eq!(all.len(), 2, "{all:?}");
    let shop = all.iter().find(|r| r["job"] == "shop").unwrap();
    assert_eq!(shop["outcome"], "success");
    assert_eq!(shop["trigger"], "command");
    assert!(shop["bytes_read"].as_u64().unwrap() > 100_000);
    assert_eq!(shop["snapshot"].as_str().unwrap().len(), 64);
    let gone = all.iter().find(|r| r["job"] == "gone").unwrap();
    assert_eq!(gone["outcome"], "failed");
    assert!(
        gone["error"].as_str().unwrap().contains("missing.db"),
        "{gone}"
    );

    let only = bare_json(&env, &["runs", "--job", "gone"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    let out = bare(&env).arg("runs").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("success") && text.contains("2 run(s)"),
        "{text}"
    );
}

/// The acceptance test: a scheduled job that fails because its database is missing
/// gives exactly one alert, one repeat after the interval, and one "resolved" once it
/// succeeds again — on the webhook and by email (STARTTLS) — while the ping channel sees every
/// run, and the metrics count it all.
#[test]
fn a_failing_scheduled_job_alerts_once_repeats_once_and_resolves_once() {
    let env = Env::new();
    let hooks = WebhookReceiver::start();
    let smtp = palisade_testkit::smtp::SmtpServer::start_tls();
    let metrics = palisade_testkit::free_port();
    setup(
        &env,
        &format!(
            "state_dir = \"state\"\n\
             [daemon]\nmetrics = \"127.0.0.1:{metrics}\"\n\
             [alerting]\nrepeat = \"1h\"\nmissed_factor = 1000\n\
             [[jobs]]\nname = \"shop\"\nsources = [{{ sqlite = \"shop.db\" }}]\n\
             schedule = {{ cron = \"*/10 * * * *\", timezone = \"UTC\" }}\n\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{url}/hook/s3cr3t-token\"\n\
             [[alerts]]\ntype = \"email\"\nhost = \"localhost\"\nport = {port}\n\
             from = \"palisade@example.org\"\nto = [\"ops@example.org\"]\nca_file = \"{ca}\"\n\
             rules = [\"run-failed\"]\n\
             [[alerts]]\ntype = \"ping\"\nurl = \"{url}/ping/uuid-s3cr3t\"\njobs = [\"shop\"]\n",
            url = hooks.url,
            port = smtp.port,
            ca = smtp.ca_file.as_ref().unwrap().display(),
        ),
    );
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    daemon.wait_log("metrics on");

    // 00:10, 00:20: two failed runs, one alert.
    daemon.set_clock("2030-01-01T00:10:00Z");
    hooks.wait_until("the first alert", |r| {
        notices(r, "/hook/s3cr3t-token", "run-failed").len() == 1
    });
    daemon.set_clock("2030-01-01T00:20:00Z");
    wait_runs(&env, 2);

    // An hour after the alert, the slot at 01:10 fails again and the alert repeats.
    daemon.set_clock("2030-01-01T01:10:01Z");
    hooks.wait_until("the repeat", |r| {
        notices(r, "/hook/s3cr3t-token", "run-failed").len() == 2
    });
    wait_runs(&env, 3);

    // The database is back: the next run succeeds and the alert resolves.
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    daemon.set_clock("2030-01-01T01:20:00Z");
    let received = hooks.wait_until("the resolved message", |r| {
        notices(r, "/hook/s3cr3t-token", "run-failed").len() == 3
    });
    assert_eq!(
        notices(&received, "/hook/s3cr3t-token", "run-failed"),
        ["firing", "repeat", "resolved"]
    );
    let first = received
        .iter()
        .find(|r| r.path == "/hook/s3cr3t-token")
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(first["job"], "shop");
    assert!(
        first["message"].as_str().unwrap().contains("shop.db"),
        "{first}"
    );

    // The same three by email, over STARTTLS.
    let mail = smtp.wait_for_messages(3);
    let subjects: Vec<&str> = mail.lines().filter(|l| l.starts_with("Subject:")).collect();
    assert_eq!(
        subjects,
        [
            "Subject: [palisade] FIRING run-failed: shop",
            "Subject: [palisade] STILL FIRING run-failed: shop",
            "Subject: [palisade] RESOLVED run-failed: shop"
        ],
        "{mail}"
    );

    // The ping channel saw four starts, three failures and one success.
    let received = hooks.wait_until("the success ping", |r| {
        r.iter().any(|r| r.path == "/ping/uuid-s3cr3t")
    });
    let count = |path: &str| received.iter().filter(|r| r.path == path).count();
    assert_eq!(count("/ping/uuid-s3cr3t/start"), 4);
    assert_eq!(count("/ping/uuid-s3cr3t/fail"), 3);
    assert_eq!(count("/ping/uuid-s3cr3t"), 1);

    // Metrics, scraped over HTTP.
    let text = scrape(metrics);
    for line in [
        "palisade_job_failures_total{job=\"shop\"} 3",
        "palisade_job_snapshots_total{job=\"shop\"} 1",
        "palisade_job_running{job=\"shop\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let success = text
        .lines()
        .find(|l| l.starts_with("palisade_job_last_success_timestamp_seconds{job=\"shop\"}"))
        .unwrap();
    assert!(success.ends_with(" 1893460800"), "{success}");
    assert!(text.contains("palisade_job_last_duration_seconds{job=\"shop\"}"));
    assert!(text.contains("palisade_job_bytes_added_total{job=\"shop\"}"));

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    // The URLs' tokens never appear in the log or the JSON.
    let json = bare(&env).args(["--json", "runs"]).output().unwrap();
    let check = bare(&env)
        .args(["--json", "config", "check"])
        .output()
        .unwrap();
    for text in [
        log,
        String::from_utf8_lossy(&json.stdout).into_owned(),
        String::from_utf8_lossy(&check.stdout).into_owned(),
    ] {
        assert!(!text.contains("s3cr3t"), "a secret leaked:\n{text}");
    }
}

#[test]
fn a_channel_that_fails_is_retried_and_backups_go_on() {
    let env = Env::new();
    let hooks = WebhookReceiver::start();
    hooks.answer_next(2, 500);
    setup(
        &env,
        &format!(
            "[daemon]\nmetrics = \"off\"\n\
             [[jobs]]\nname = \"shop\"\nsources = [{{ sqlite = \"shop.db\" }}]\n\
             schedule = {{ cron = \"*/10 * * * *\", timezone = \"UTC\" }}\n\
             [[alerts]]\ntype = \"slack\"\nurl = \"{}/services/T0/B0/s3cr3t\"\n\
             rules = [\"run-failed\"]\n",
            hooks.url
        ),
    );
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    daemon.set_clock("2030-01-01T00:10:00Z");
    hooks.wait_until("the first attempt", |r| r.len() == 1);
    daemon.wait_log("could not deliver an alert (attempt 1");

    // Retries follow the daemon's clock: 30 s, then 60 s more.
    daemon.set_clock("2030-01-01T00:10:31Z");
    hooks.wait_until("the second attempt", |r| r.len() == 2);
    daemon.set_clock("2030-01-01T00:11:32Z");
    let received = hooks.wait_until("the delivery", |r| r.len() == 3);
    let body: serde_json::Value = serde_json::from_str(&received[2].body).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("[palisade] FIRING run-failed: shop"),
        "{body}"
    );

    // The failing channel held nothing up: the next slot ran.
    daemon.set_clock("2030-01-01T00:20:00Z");
    wait_runs(&env, 2);
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("answered HTTP 500") && !log.contains("s3cr3t"),
        "{log}"
    );
}

#[test]
fn a_restart_after_downtime_catches_up_and_the_missed_backup_alarm_fires_and_resolves() {
    let env = Env::new();
    let hooks = WebhookReceiver::start();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    setup(
        &env,
        &format!(
            "[daemon]\nmetrics = \"off\"\n[alerting]\nmissed_factor = 2\n\
             [[jobs]]\nname = \"shop\"\nsources = [{{ sqlite = \"shop.db\" }}]\n\
             schedule = {{ cron = \"*/10 * * * *\", timezone = \"UTC\" }}\n\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{}/hook\"\n",
            hooks.url
        ),
    );
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    daemon.set_clock("2030-01-01T00:10:00Z");
    wait_runs(&env, 1);
    assert_eq!(daemon.stop().0, 0);

    // Down for 50 minutes: five slots missed, more than 2 × 10 minutes without a backup.
    let daemon = RunningDaemon::start(&env, "2030-01-01T01:00:30Z");
    let received = hooks.wait_until("missed-backup firing and resolved", |r| {
        notices(r, "/hook", "missed-backup").len() == 2
    });
    assert_eq!(
        notices(&received, "/hook", "missed-backup"),
        ["firing", "resolved"]
    );
    let all = wait_runs(&env, 2);
    assert_eq!(all[0]["trigger"], "catch-up");
    assert_eq!(all[0]["outcome"], "success");
    assert_eq!(all.len(), 2, "one catch-up run for five missed slots");
    assert_eq!(daemon.stop().0, 0);
}

#[test]
fn the_daemon_applies_each_jobs_retention_after_its_backups() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    setup(
        &env,
        "[daemon]\nmetrics = \"off\"\n\
         [[jobs]]\nname = \"shop\"\nsources = [{ sqlite = \"shop.db\" }]\n\
         schedule = { cron = \"*/10 * * * *\", timezone = \"UTC\" }\n\
         retention = { keep-last = 2 }\n",
    );
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:05:00Z");
    for (n, at) in ["00:10", "00:20", "00:30", "00:40"].iter().enumerate() {
        daemon.set_clock(&format!("2030-01-01T{at}:00Z"));
        wait_runs(&env, n + 1);
        // Each backup is followed by `forget --job shop`; the job runs again only after it.
        wait_for("retention after the backup", || {
            (daemon.log().matches("retention applied").count() == n + 1).then_some(())
        });
    }
    let snapshots = bare_json(&env, &["snapshots"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 2, "{snapshots}");
    assert_eq!(daemon.stop().0, 0);
}

#[test]
fn sighup_with_a_bad_config_keeps_the_old_one_and_a_good_one_replaces_it() {
    let env = Env::new();
    std::fs::copy(chinook(), env.path("shop.db")).unwrap();
    let good = |name: &str| {
        format!(
            "[daemon]\nmetrics = \"off\"\n\
             [[jobs]]\nname = \"{name}\"\nsources = [{{ sqlite = \"shop.db\" }}]\n\
             schedule = {{ cron = \"* * * * * *\", timezone = \"UTC\" }}\n"
        )
    };
    setup(&env, &good("shop"));
    // The real clock: this job runs every second.
    let daemon = {
        let log = env.path("daemon.log");
        let child = bare(&env)
            .args(["-v", "--config", "palisade.toml", "daemon"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        RunningDaemon {
            child: Some(child),
            log,
            clock: env.path("unused-clock"),
        }
    };
    wait_runs(&env, 1);

    write_config(
        &env,
        "[[jobs]]\nname = \"shop\"\nsources = [{ sqlite = \"shop.db\" }]\nschedule = \"every day\"\n",
    );
    daemon.signal("HUP");
    daemon.wait_log("config reload rejected, the previous config stays in force");
    assert!(daemon.log().contains("line 6"), "{}", daemon.log());
    let successes = |env: &Env| {
        runs(env)
            .iter()
            .filter(|r| r["outcome"] == "success")
            .count()
    };
    let before = successes(&env);
    wait_for("more runs under the old config", || {
        (successes(&env) > before).then_some(())
    });

    write_config(&env, &good("renamed"));
    daemon.signal("HUP");
    daemon.wait_log("config reloaded: 1 job(s), 1 scheduled");
    wait_for("a run of the new job", || {
        runs(&env)
            .iter()
            .any(|r| r["job"] == "renamed" && r["outcome"] == "success")
            .then_some(())
    });
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
}

/// A backup that hangs (its PostgreSQL server accepts connections and never answers) is
/// stopped by its timeout, and on SIGTERM abandoned: no snapshot, a clean repository, no
/// scratch directory left.
#[test]
fn timeouts_and_sigterm_stop_a_hanging_backup_without_a_snapshot() {
    let env = Env::new();
    let hooks = WebhookReceiver::start();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    setup(
        &env,
        &format!(
            "[daemon]\nmetrics = \"off\"\nshutdown_grace = \"0s\"\n\
             [[jobs]]\nname = \"pg\"\nsources = [{{ postgres = \"postgresql://app@127.0.0.1:{port}/app\" }}]\n\
             schedule = {{ cron = \"0 * * * * *\", timezone = \"UTC\", timeout = \"30s\" }}\n\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{}/hook\"\nrules = [\"run-failed\"]\n",
            hooks.url
        ),
    );
    let daemon = RunningDaemon::start(&env, "2030-01-01T00:00:30Z");
    daemon.set_clock("2030-01-01T00:01:00Z");
    daemon.wait_log("job pg: started");
    daemon.set_clock("2030-01-01T00:01:31Z");
    let received = hooks.wait_until("the timeout alert", |r| !r.is_empty());
    assert!(received[0].body.contains("timeout"), "{}", received[0].body);
    let all = wait_runs(&env, 1);
    assert_eq!(all[0]["outcome"], "timeout");

    daemon.set_clock("2030-01-01T00:02:00Z");
    wait_for("the second run to start", || {
        (runs(&env).first().unwrap()["outcome"] == "running").then_some(())
    });
    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{log}");
    let all = runs(&env);
    assert_eq!(all[0]["outcome"], "abandoned", "{all:?}");

    assert!(
        bare_json(&env, &["snapshots"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_status(&bare(&env).arg("check").output().unwrap(), 0, "check");
    let scratch: Vec<PathBuf> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_scratch(p))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    drop(silent);
}

fn is_scratch(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("palisade-run-"))
}
