//! Test support shared by Palisade's crates: private moto S3, PostgreSQL, MariaDB, Redis and SMTP servers
//! and a webhook receiver per test, each started in its own temp dir, awaited, and stopped on
//! drop.
//!
//! moto lives here; [`postgres::PgServer`] and [`mariadb::MariaDb`] in their modules.

pub mod mariadb;
pub mod os_user;
pub mod postgres;
pub mod redis;
pub mod smtp;
pub mod webhook;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The moto server to run: `PALISADE_MOTO_SERVER`, then the venv `scripts/test` makes, then
/// `moto_server` on PATH. Panics when there is none: S3 tests never skip silently.
pub fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PALISADE_MOTO_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PALISADE_MOTO_SERVER names {}, which does not exist; unset it or run scripts/test, \
             which installs moto",
            path.display()
        );
        return path;
    }
    let venv = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cache/palisade-ci/moto/bin/moto_server"));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("moto_server"));
    venv.into_iter()
        .chain(on_path)
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need moto's moto_server and found none (not in \
                 $PALISADE_MOTO_SERVER, ~/.cache/palisade-ci/moto/bin or PATH); run scripts/test, \
                 which installs it"
            )
        })
}

/// The shared real-world samples: `../shared/data` beside the repository, read in place and
/// never copied into it. `PALISADE_SHARED_DATA` points elsewhere (a git worktree one level
/// deeper than the clone, say).
pub fn shared_data() -> PathBuf {
    match std::env::var_os("PALISADE_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")),
    }
}

/// A Chinook sample script, such as `Chinook_PostgreSql.sql`, from [`shared_data`].
pub fn chinook_sql(name: &str) -> PathBuf {
    let path = shared_data().join("chinook").join(name);
    assert!(
        path.is_file(),
        "the sample {} is missing; the tests read ../shared/data beside the repository (or \
         PALISADE_SHARED_DATA)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

/// A running `moto_server` on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct MotoServer {
    /// The port it listens on.
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts moto and waits until it answers HTTP.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts moto with extra environment variables, such as `INITIAL_NO_AUTH_ACTION_COUNT=0`,
    /// which makes it check credentials.
    pub fn start_with_env(vars: &[(&str, &str)]) -> Self {
        let binary = moto_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        // Another process may take the port between `free_port` and moto's bind: try again.
        for attempt in 1.. {
            let port = free_port();
            let log = dir.path().join(format!("moto-{port}.log"));
            let mut child = spawn(&binary, port, &log, vars);
            match wait_until_serving(&mut child, port, &log) {
                Ok(()) => {
                    return Self {
                        port,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        child,
                        dir,
                    };
                }
                Err(log_text) if attempt < 3 && log_text.contains("in use") => continue,
                Err(log_text) => panic!(
                    "moto ({}) exited before serving on port {port}; its output:\n{log_text}",
                    binary.display()
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Everything moto printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("moto-{}.log", self.port)))
            .unwrap_or_default()
    }

    /// One plain HTTP request to moto (for its control API and answers the SDK cannot read):
    /// the status and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        request(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} to moto failed: {e}"))
    }

    /// From now on moto checks signatures against its IAM users and their policies; keys it
    /// does not know (all of them, until users are made) are refused as AWS refuses them.
    pub fn enforce_iam(&self) {
        let (status, body) = self.http("POST", "/moto-api/reset-auth", &[], "0");
        assert_eq!(status, 200, "moto refused to enforce IAM: {body}");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(binary: &Path, port: u16, log: &Path, vars: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).expect("create the moto log");
    let err = out.try_clone().unwrap();
    Command::new(binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// Polls `GET /` until moto answers: 200 as a rule, but any status counts (with credential
/// checks on, moto answers an unsigned request 500). Gives back moto's output when it exits
/// first; panics with it after 60 s.
fn wait_until_serving(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if child.try_wait().expect("poll moto").is_some() {
            return Err(read_log());
        }
        if request(port, "GET", "/", &[], "").is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "moto did not answer on port {port} within 60 s; its output:\n{}",
                read_log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok((status, body.to_string()))
}
