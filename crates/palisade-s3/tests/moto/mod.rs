//! A private moto S3 server per test: found, started on a free port, awaited, killed on drop;
//! plus IAM users for tests that switch moto's permission checks on.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_s3::{S3Client, S3Location, S3Options};
use serde_json::Value;

/// Runs a test body on a runtime of its own (tests run in parallel threads).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}

/// A running `moto_server`, stopped when dropped.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers.
    pub fn start() -> Self {
        let binary = moto_binary();
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("palisade-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("the moto log file can be created");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .expect("the log file handle can be cloned"),
            )
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut moto = Self { child, port, log };
        moto.wait_until_ready();
        moto
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("the moto process can be polled")
            {
                panic!("moto_server exited with {status}:\n{}", self.log_text());
            }
            if let Ok((200, _)) = self.try_http("GET", "/moto-api/data.json", &[], "") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not answer within 60 s:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `s3:http://127.0.0.1:PORT/BUCKET_AND_PREFIX`.
    pub fn location(&self, bucket_and_prefix: &str) -> S3Location {
        S3Location::parse(&format!(
            "s3:http://127.0.0.1:{}/{bucket_and_prefix}",
            self.port
        ))
        .expect("the test location parses")
    }

    /// A client with explicit credentials (never the process environment, which parallel tests
    /// would share).
    pub async fn client_as(
        &self,
        location: &S3Location,
        region: &str,
        key: &str,
        secret: &str,
    ) -> S3Client {
        let options = S3Options {
            region: Some(region.into()),
            credentials_in_config: true,
            access_key_id: Some(key.into()),
            secret_access_key: Some(secret.into()),
            max_attempts: 2,
            ..S3Options::default()
        };
        S3Client::new(location, &options)
            .await
            .expect("the client builds")
    }

    /// A client with moto's usual test credentials in us-east-1.
    pub async fn client(&self, location: &S3Location) -> S3Client {
        self.client_as(location, "us-east-1", "test", "test").await
    }

    /// Creates an IAM user with `policy` inline and returns its access key and secret. Only
    /// before [`enforce_iam`](Self::enforce_iam): moto checks nothing until then.
    pub fn iam_user(&self, name: &str, policy: &Value) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)]);
        let policy = policy.to_string();
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "palisade"),
            ("PolicyDocument", &policy),
        ]);
        let created = self.iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        (
            xml_field(&created, "AccessKeyId"),
            xml_field(&created, "SecretAccessKey"),
        )
    }

    /// From now on moto checks signatures against its IAM users and their policies.
    pub fn enforce_iam(&self) {
        let (status, body) = self.http("POST", "/moto-api/reset-auth", &[], "0");
        assert_eq!(status, 200, "moto refused to enforce IAM: {body}");
    }

    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut body = String::from("Version=2010-05-08");
        for (name, value) in params {
            body.push_str(&format!("&{name}={}", form_encode(value)));
        }
        // moto routes by the service in the credential scope; the signature is not checked
        // before `enforce_iam`.
        let authorization = "AWS4-HMAC-SHA256 Credential=bootstrap/20250101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
        let headers = [
            ("Authorization", authorization),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let (status, text) = self.http("POST", "/", &headers, &body);
        assert_eq!(status, 200, "IAM {params:?} failed: {text}");
        text
    }

    /// A plain GET to the server, for answers the SDK cannot read.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, &[], "")
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        self.try_http(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} to moto failed: {e}"))
    }

    fn try_http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        Ok((status, body.to_string()))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `PALISADE_MOTO_SERVER`, then the copy `scripts/test` installs, then `moto_server` on PATH.
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PALISADE_MOTO_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PALISADE_MOTO_SERVER is {} but there is no file there",
            path.display()
        );
        return path;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let path = PathBuf::from(home).join(".cache/palisade-ci/moto/bin/moto_server");
        if path.is_file() {
            return path;
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|path| path.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "moto_server not found: the S3 bucket tests need a moto S3 server; run scripts/test, which installs it into ~/.cache/palisade-ci/moto, or set PALISADE_MOTO_SERVER to a moto_server binary"
        )
    })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port exists");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

fn form_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn xml_field(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open).map(|at| at + open.len());
    let value = start.and_then(|start| Some(&xml[start..start + xml[start..].find(&close)?]));
    value
        .unwrap_or_else(|| panic!("no <{name}> in the IAM answer: {xml}"))
        .to_string()
}
