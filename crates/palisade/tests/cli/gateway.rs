//! `palisade gateway`: the quick start in front of a tiny upstream, `cert self-signed`, and
//! `config check` on a `[gateway]` section.

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    common::{Env, assert_status, stderr},
    daemon::bare,
};

/// An upstream that answers every connection with one fixed response, from a thread.
fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nServer: tiny/1\r\nX-Powered-By: PHP/5\r\n\
                  Set-Cookie: sid=1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
    });
    format!("http://{addr}")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to ten seconds for `ready`.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(port: u16, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "5",
            "--insecure",
            "--include",
        ])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap()
}

#[test]
fn quick_start_serves_hardened_https_with_a_self_signed_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let port = free_port();
    let log = env.path("gateway.log");
    let child = bare(&env)
        .args([
            "gateway",
            "--upstream",
            &upstream(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--host", "localhost", "--host", "127.0.0.1"])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut running = Running(child);
    wait_until("the gateway to serve", || curl(port, &[]).status.success());

    let out = curl(port, &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 200") || text.starts_with("http/2 200"),
        "{text}"
    );
    assert!(
        text.contains("strict-transport-security: max-age=63072000; includesubdomains"),
        "{text}"
    );
    assert!(
        text.contains("set-cookie: sid=1; secure; httponly; samesite=lax"),
        "{text}"
    );
    assert!(
        !text.contains("server:") && !text.contains("x-powered-by"),
        "{text}"
    );
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("self-signed"), "{written}");
    // The CSRF key is made in the state directory, readable by its owner only.
    let key = env.path("state/csrf.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());

    // A request that carries a cookie and changes state needs the page's CSRF token.
    let forged = curl(port, &["--http1.1", "-X", "POST", "-H", "Cookie: sid=1"]);
    let text = String::from_utf8_lossy(&forged.stdout);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");

    // A refused request is a response, and its security event reaches the log.
    let forged = curl(port, &["--http1.1", "--header", "Host: evil.example"]);
    let text = String::from_utf8_lossy(&forged.stdout);
    assert!(
        text.starts_with("HTTP/1.1 421") || text.starts_with("HTTP/2 421"),
        "{text}"
    );
    wait_until("the security event in the log", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("unknown_host")
    });

    // SIGHUP keeps it running; SIGTERM stops it with success.
    let pid = running.0.id().to_string();
    assert_status(
        &Command::new("kill")
            .args(["-s", "HUP", &pid])
            .output()
            .unwrap(),
        0,
        "kill",
    );
    assert!(curl(port, &[]).status.success());
    assert_status(
        &Command::new("kill")
            .args(["-s", "TERM", &pid])
            .output()
            .unwrap(),
        0,
        "kill",
    );
    let mut status = None;
    wait_until("the gateway to exit", || {
        status = running.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(
        status.unwrap().code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

#[test]
fn cert_self_signed_writes_a_private_key_and_never_replaces_one() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let args = [
        "gateway",
        "cert",
        "self-signed",
        "--host",
        "localhost",
        "--out",
        "tls",
    ];
    let out = bare(&env).args(args).output().unwrap();
    assert_status(&out, 0, "cert self-signed");
    let mode = std::fs::metadata(env.path("tls/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(env.path("tls/cert.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let out = bare(&env).args(args).output().unwrap();
    assert_status(&out, 1, "cert self-signed again");
    assert!(stderr(&out).contains("key.pem"), "{}", stderr(&out));
}

#[test]
fn config_check_reads_the_gateway_section() {
    let env = Env::new();
    let out = bare(&env)
        .args([
            "gateway",
            "cert",
            "self-signed",
            "--host",
            "localhost",
            "--out",
            "tls",
        ])
        .output()
        .unwrap();
    assert_status(&out, 0, "cert self-signed");
    let good = "[gateway]\nupstreams = [\"http://127.0.0.1:3000\"]\n\
                [[gateway.tls.certificates]]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\
                [gateway.security_txt]\ncontact = [\"mailto:s@example.com\"]\n\
                expires = \"2020-01-01T00:00:00Z\"\n";
    std::fs::write(env.path("palisade.toml"), good).unwrap();
    let out = bare(&env).args(["config", "check"]).output().unwrap();
    assert_status(&out, 0, good);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[gateway] settings"));
    assert!(
        stderr(&out).contains("security.txt expired"),
        "{}",
        stderr(&out)
    );

    let cases = [
        (
            "[gateway]\nupstreams = [\"http://a:1\"]\n\n[gateway.headers]\nhsts_max_age = 60\n",
            "line 5",
            "two years",
        ),
        (
            "[gateway]\nupstreams = [\"http://a:1\"]\nhsts = 1\n",
            "line 3",
            "unknown field",
        ),
        (
            "[gateway]\nupstreams = [\"https://a/app\"]\n",
            "line 2",
            "has a path; give only https://HOST:PORT",
        ),
        (
            "[gateway]\nupstreams = [\"http://a:1\"]\n[gateway.csrf]\nmode = \"log-only\"\ncookie_name = \"csrf\"\n",
            "line 5",
            "__Host- prefix",
        ),
        (
            "[gateway]\nupstreams = [\"http://a:1\"]\n[[gateway.routes]]\nprefix = \"/hooks\"\ncsrf = { mode = \"exempt\" }\n",
            "line 5",
            "unknown variant `exempt`",
        ),
        (
            "[gateway]\nupstreams = [\"http://a:1\"]\n[[gateway.routes]]\nprefix = \"/api\"\nvalidate = { methods = [\"GE T\"] }\n",
            "line 5",
            "`GE T` is not a method",
        ),
        (
            "[gateway]\nupstreams = [\"http://a:1\"]\n[[gateway.tls.certificates]]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n",
            "",
            "nope.pem",
        ),
    ];
    for (config, line, message) in cases {
        std::fs::write(env.path("palisade.toml"), config).unwrap();
        let out = bare(&env).args(["config", "check"]).output().unwrap();
        assert_status(&out, 1, config);
        let err = stderr(&out);
        assert!(
            err.contains(line) && err.contains(message),
            "{config}\n{err}"
        );
    }
}

#[test]
fn config_check_names_upload_and_rich_text_mistakes() {
    let env = Env::new();
    let route =
        "[gateway]\nupstreams = [\"http://a:1\"]\n[[gateway.routes]]\nprefix = \"/account\"\n";
    let cases = [
        (
            "upload = { allow = [\"png\", \"jpgg\"], scan = false }\n",
            "routes[0].upload.allow",
            "Did you mean \"jpeg\"?",
        ),
        (
            "upload = { allow = [\"png\"] }\n",
            "routes[0].upload.scan",
            "add [gateway.clamav]",
        ),
        (
            "rich_text = { fields = [\"bio\"], allow = { tags = [\"p\", \"iframe\"] } }\n",
            "routes[0].rich_text.allow.tags",
            "`iframe` can load or run content",
        ),
        (
            "upload = { allow = [\"png\"] }\n[gateway.clamav]\nsocket = \"a\"\naddress = \"b:1\"\n",
            "clamav.socket",
            "not both",
        ),
    ];
    for (rest, setting, message) in cases {
        let config = format!("{route}{rest}");
        std::fs::write(env.path("palisade.toml"), &config).unwrap();
        let out = bare(&env).args(["config", "check"]).output().unwrap();
        assert_status(&out, 1, &config);
        let err = stderr(&out);
        assert!(
            err.contains(setting) && err.contains(message),
            "{config}\n{err}"
        );
    }
    // A valid section whose clamd is not running: a warning, not an error.
    let config = format!("{route}upload = {{}}\n[gateway.clamav]\nsocket = \"clamd.sock\"\n");
    std::fs::write(env.path("palisade.toml"), &config).unwrap();
    let out = bare(&env).args(["config", "check"]).output().unwrap();
    assert_status(&out, 0, &config);
    assert!(
        stderr(&out).contains("clamd cannot be reached"),
        "{}",
        stderr(&out)
    );
}

/// Ten failed logins of `account` from `source` into the gateway's state file: a lockout,
/// with the default settings.
fn lock_out(path: &std::path::Path, account: &str, source: &str) {
    use palisade_guard::{AttemptStore, SqliteAttempts, attempts::Attempt};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteAttempts::open(path).unwrap();
    let attempt = Attempt {
        account: account.into(),
        source: source.parse().unwrap(),
    };
    let policy = policy();
    for _ in 0..10 {
        runtime
            .block_on(store.failed(&attempt, &policy, std::time::SystemTime::now()))
            .unwrap();
    }
    assert!(locked(path, account, source));
}

fn policy() -> palisade_guard::attempts::Policy {
    palisade_guard::attempts::Policy {
        half_life: std::time::Duration::from_secs(900),
        lockout_after: 10,
        challenge_after: 5,
        lockout: std::time::Duration::from_secs(900),
        stuffing_accounts: 10,
        stuffing_sources: 10,
        stuffing_window: std::time::Duration::from_secs(600),
    }
}

fn locked(path: &std::path::Path, account: &str, source: &str) -> bool {
    use palisade_guard::{AttemptStore, SqliteAttempts, attempts::Attempt};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteAttempts::open(path).unwrap();
    let attempt = Attempt {
        account: account.into(),
        source: source.parse().unwrap(),
    };
    runtime
        .block_on(store.standing(&attempt, &policy(), std::time::SystemTime::now()))
        .unwrap()
        .locked_until
        .is_some()
}

#[test]
fn unlock_lifts_lockouts_of_an_account_or_an_address_in_the_state_file() {
    let env = Env::new();
    std::fs::write(
        env.path("palisade.toml"),
        "[gateway]\nupstreams = [\"http://127.0.0.1:3000\"]\n\
         [[gateway.brute_force.logins]]\npath = \"/signin\"\n",
    )
    .unwrap();
    let state = env.path("state/gateway.sqlite");
    std::fs::create_dir_all(env.path("state")).unwrap();
    lock_out(&state, "alice", "192.0.2.1");
    lock_out(&state, "alice", "192.0.2.2");
    lock_out(&state, "bob", "2001:db8:1:2::");
    lock_out(&state, "carol", "192.0.2.3");

    // An account, however it is capitalised, from every address.
    let out = bare(&env)
        .args(["gateway", "unlock", "Alice"])
        .output()
        .unwrap();
    assert_status(&out, 0, "unlock Alice");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("account alice: unlocked ("), "{said}");
    assert!(!locked(&state, "alice", "192.0.2.1"));
    assert!(!locked(&state, "alice", "192.0.2.2"));
    assert!(locked(&state, "carol", "192.0.2.3"));

    // Any address of an IPv6 /64 is the /64.
    let out = bare(&env)
        .args(["gateway", "unlock", "2001:db8:1:2:aaaa::77"])
        .output()
        .unwrap();
    assert_status(&out, 0, "unlock an IPv6 address");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("address range 2001:db8:1:2::/64: unlocked"),
        "{said}"
    );
    assert!(!locked(&state, "bob", "2001:db8:1:2::"));

    // An address read as an account name only when asked.
    let out = bare(&env)
        .args(["gateway", "unlock", "--account", "192.0.2.3"])
        .output()
        .unwrap();
    assert_status(&out, 0, "unlock --account");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing was locked"));
    assert!(locked(&state, "carol", "192.0.2.3"));
    let out = bare(&env)
        .args(["gateway", "unlock", "192.0.2.3"])
        .output()
        .unwrap();
    assert_status(&out, 0, "unlock an address");
    assert!(!locked(&state, "carol", "192.0.2.3"));

    let out = bare(&env)
        .args(["gateway", "unlock", "--address", "carol"])
        .output()
        .unwrap();
    assert_status(&out, 1, "unlock --address carol");
    assert!(
        stderr(&out).contains("not an IP address"),
        "{}",
        stderr(&out)
    );

    // An empty name is no account (the sources' own counts are kept under it).
    let out = bare(&env)
        .args(["gateway", "unlock", " "])
        .output()
        .unwrap();
    assert_status(&out, 1, "unlock an empty name");
    assert!(
        stderr(&out).contains("give the account name"),
        "{}",
        stderr(&out)
    );

    // The file is its owner's only: it holds what people typed as account names.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Another state directory (a wrong config, another user) has no state: an error, and
    // nothing made there.
    std::fs::write(
        env.path("other.toml"),
        format!(
            "state_dir = \"{}\"\n[gateway]\nupstreams = [\"http://127.0.0.1:3000\"]\n",
            env.path("elsewhere").display()
        ),
    )
    .unwrap();
    let out = bare(&env)
        .args(["--config", "other.toml", "gateway", "unlock", "alice"])
        .output()
        .unwrap();
    assert_status(&out, 1, "unlock with another state_dir");
    assert!(
        stderr(&out).contains("no gateway state at"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("elsewhere/gateway.sqlite").exists());

    std::fs::write(env.path("palisade.toml"), "").unwrap();
    let out = bare(&env)
        .args(["gateway", "unlock", "alice"])
        .output()
        .unwrap();
    assert_status(&out, 1, "unlock without [gateway]");
    assert!(
        stderr(&out).contains("no [gateway] section"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unlock_reaches_the_lockouts_kept_in_redis() {
    use palisade_guard::{AttemptStore, RedisState, attempts::Attempt};
    let redis = palisade_testkit::redis::RedisServer::start();
    let env = Env::new();
    std::fs::write(
        env.path("palisade.toml"),
        format!(
            "[gateway]\nupstreams = [\"http://127.0.0.1:3000\"]\n\
             [[gateway.brute_force.logins]]\npath = \"/signin\"\n\
             [gateway.state]\nredis = \"{}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let attempt = Attempt {
        account: "alice".into(),
        source: "192.0.2.1".parse().unwrap(),
    };
    let locked = |state: &RedisState| {
        runtime
            .block_on(state.standing(&attempt, &policy(), std::time::SystemTime::now()))
            .unwrap()
            .locked_until
            .is_some()
    };
    let state = {
        let _inside = runtime.enter();
        RedisState::new(&redis.url()).unwrap()
    };
    for _ in 0..10 {
        runtime
            .block_on(state.failed(&attempt, &policy(), std::time::SystemTime::now()))
            .unwrap();
    }
    assert!(locked(&state));
    let out = bare(&env)
        .args(["gateway", "unlock", "alice"])
        .output()
        .unwrap();
    assert_status(&out, 0, "unlock with Redis");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("account alice: unlocked ("),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!locked(&state));
}
