//! A private moto S3 server per test (palisade-testkit's), with clients of this crate for it
//! and IAM users for tests that switch moto's permission checks on.

use std::future::Future;

use palisade_s3::{S3Client, S3Location, S3Options};
use palisade_testkit::MotoServer;
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
    server: MotoServer,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers.
    pub fn start() -> Self {
        Self {
            server: MotoServer::start(),
        }
    }

    /// `s3:http://127.0.0.1:PORT/BUCKET_AND_PREFIX`.
    pub fn location(&self, bucket_and_prefix: &str) -> S3Location {
        S3Location::parse(&format!("s3:{}/{bucket_and_prefix}", self.server.endpoint))
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
        S3Client::new(location, &options_as(region, key, secret))
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
        self.server.enforce_iam();
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
        let (status, text) = self.server.http("POST", "/", &headers, &body);
        assert_eq!(status, 200, "IAM {params:?} failed: {text}");
        text
    }

    /// A plain GET to the server, for answers the SDK cannot read.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.server.http("GET", path, &[], "")
    }
}

/// Settings with explicit credentials and few retries.
pub fn options_as(region: &str, key: &str, secret: &str) -> S3Options {
    S3Options {
        region: Some(region.into()),
        credentials_in_config: true,
        access_key_id: Some(key.into()),
        secret_access_key: Some(secret.into()),
        max_attempts: 2,
        ..S3Options::default()
    }
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
