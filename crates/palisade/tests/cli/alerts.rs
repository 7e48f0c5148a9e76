//! `[[alerts]]` channels against real receivers: `palisade alert test` through a webhook, a
//! Slack-compatible webhook, a ping URL and email over STARTTLS (aiosmtpd); the config check's
//! answers to bad schedules, unknown jobs and unreachable SMTP servers; secrets kept out of
//! every output.

use palisade_testkit::{smtp::SmtpServer, webhook::WebhookReceiver};

use crate::common::*;
use crate::daemon::{bare, write_config};

const JOB: &str = "[[jobs]]\nname = \"shop\"\nsources = [{ sqlite = \"shop.db\" }]\n";

#[test]
fn alert_test_sends_through_every_channel() {
    let env = Env::new();
    let hooks = WebhookReceiver::start();
    let smtp = SmtpServer::start_tls();
    write_config(
        &env,
        &format!(
            "{JOB}\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{url}/hook/t0ken\"\n\
             [[alerts]]\ntype = \"slack\"\nurl_file = \"slack-url\"\n\
             [[alerts]]\ntype = \"ping\"\nurl = \"{url}/ping/abc\"\n\
             [[alerts]]\ntype = \"email\"\nhost = \"localhost\"\nport = {port}\n\
             from = \"Palisade <palisade@example.org>\"\nto = [\"ops@example.org\", \"dev@example.org\"]\n\
             ca_file = \"{ca}\"\n",
            url = hooks.url,
            port = smtp.port,
            ca = smtp.ca_file.as_ref().unwrap().display()
        ),
    );
    std::fs::write(
        env.path("slack-url"),
        format!("{}/services/T/B/x\n", hooks.url),
    )
    .unwrap();
    let out = bare(&env)
        .args(["--json", "alert", "test"])
        .output()
        .unwrap();
    assert_status(&out, 0, "alert test");
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent.as_array().unwrap().len(), 4);
    assert!(
        sent.as_array().unwrap().iter().all(|s| s["ok"] == true),
        "{sent}"
    );

    let received = hooks.received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/hook/t0ken", "/services/T/B/x", "/ping/abc/log"]);
    let hook: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(hook["kind"], "test");
    assert_eq!(hook["title"], "[palisade] TEST test: palisade alert test");
    let slack: serde_json::Value = serde_json::from_str(&received[1].body).unwrap();
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .starts_with("[palisade] TEST")
    );
    assert!(
        received[0]
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json")
    );

    let mail = smtp.wait_for_messages(1);
    assert!(
        mail.contains("Subject: [palisade] TEST test: palisade alert test")
            && mail.contains("To: ops@example.org, dev@example.org"),
        "{mail}"
    );
}

#[test]
fn a_failing_channel_is_reported_without_its_secrets() {
    let env = Env::new();
    let hooks = WebhookReceiver::start();
    hooks.answer_next(1, 503);
    let smtp = SmtpServer::start();
    write_config(
        &env,
        &format!(
            "{JOB}\
             [[alerts]]\ntype = \"webhook\"\nurl = \"{url}/hook/t0ken-secret\"\n\
             [[alerts]]\ntype = \"email\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"danger-plaintext\"\n\
             username = \"palisade\"\npassword = \"smtp-pa55word\"\n\
             from = \"palisade@example.org\"\nto = [\"ops@example.org\"]\n",
            url = hooks.url,
            port = smtp.port,
        ),
    );
    for json in [false, true] {
        let mut cmd = bare(&env);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.args(["-vv", "alert", "test"]).output().unwrap();
        assert_status(&out, 1, "alert test with failing channels");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(text.contains("alerts[1] (webhook)"), "{text}");
        assert!(text.contains("alerts[2] (email)"), "{text}");
        assert!(
            !text.contains("t0ken-secret") && !text.contains("smtp-pa55word"),
            "a secret leaked:\n{text}"
        );
        hooks.answer_next(1, 503);
    }
}

#[test]
fn config_check_names_the_line_of_bad_schedules_jobs_rules_and_smtp_servers() {
    let env = Env::new();
    let closed = palisade_testkit::free_port();
    let cases = [
        (
            format!("{JOB}schedule = \"61 * * * *\"\n"),
            "line 4",
            "not a valid cron expression",
        ),
        (
            format!("{JOB}schedule = {{ cron = \"0 3 * * *\", timezone = \"Mars/Base\" }}\n"),
            "line 4",
            "Mars/Base",
        ),
        (
            format!("{JOB}schedule = {{ cron = \"0 3 * * *\", timeout = \"soon\" }}\n"),
            "line 4",
            "not a duration",
        ),
        (
            format!(
                "{JOB}\n[[alerts]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\n\
                 jobs = [\"shop\", \"nope\"]\n"
            ),
            "line 8",
            "names job `nope`, which is not in [[jobs]]; jobs: shop",
        ),
        (
            format!(
                "{JOB}\n[[alerts]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\n\
                 rules = [\"run-failed\", \"disk-full\"]\n"
            ),
            "line 8",
            "unknown rule `disk-full`",
        ),
        (
            format!("{JOB}\n[[alerts]]\ntype = \"webhook\"\nurl = \"ftp://host/t0ken\"\n"),
            "line 7",
            "must start with https://",
        ),
        (
            format!(
                "{JOB}\n[[alerts]]\ntype = \"email\"\nhost = \"127.0.0.1\"\nport = {closed}\n\
                 from = \"a@example.org\"\nto = [\"b@example.org\"]\nusername = \"u\"\n\
                 password = \"smtp-pa55word\"\n"
            ),
            "line 7",
            "alerts[1] (email): SMTP 127.0.0.1",
        ),
    ];
    for (config, line, message) in cases {
        std::fs::write(env.path("palisade.toml"), &config).unwrap();
        let out = bare(&env).args(["config", "check"]).output().unwrap();
        assert_status(&out, 1, &config);
        let err = stderr(&out);
        assert!(
            err.contains(line) && err.contains(message),
            "{config}\n{err}"
        );
        assert!(
            !err.contains("t0ken") && !err.contains("smtp-pa55word"),
            "{err}"
        );
    }

    // The daemon refuses to start on the unreachable SMTP server, naming the line.
    let out = bare(&env)
        .args(["--config", "palisade.toml", "daemon"])
        .output()
        .unwrap();
    assert_status(&out, 1, "daemon with an unreachable SMTP server");
    assert!(stderr(&out).contains("line 7"), "{}", stderr(&out));
}
