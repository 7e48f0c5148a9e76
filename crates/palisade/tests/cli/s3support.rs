//! S3 test infrastructure: a private moto server, a blocking S3 client for set-up and read-back,
//! and a fault-injecting HTTP/1.1 proxy to put between the two.

use std::{
    future::Future,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    ops::Deref,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_s3::{
    Client,
    config::{Credentials, Region, http::HttpResponse},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::{ByteStream, DateTime},
    types::{
        BucketVersioningStatus, ChecksumMode, DefaultRetention, ObjectLockConfiguration,
        ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockRetention,
        ObjectLockRetentionMode, ObjectLockRule, VersioningConfiguration,
    },
};
use palisade_testkit::MotoServer;
use rand::{Rng, SeedableRng, rngs::StdRng};

// ---------------------------------------------------------------------------------------------
// moto
// ---------------------------------------------------------------------------------------------

/// A private moto S3 server (palisade-testkit's), stopped on drop. Derefs to an [`S3`] client
/// that talks to it directly, for set-up and read-back.
pub struct Moto {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    s3: S3,
    server: MotoServer,
}

impl Moto {
    /// Starts moto and waits until it answers HTTP.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts moto with extra environment variables, such as `INITIAL_NO_AUTH_ACTION_COUNT=0`,
    /// which makes it check credentials (and refuse test/test, so the helpers fail there too).
    pub fn start_with_env(vars: &[(&str, &str)]) -> Self {
        let server = MotoServer::start_with_env(vars);
        Self {
            port: server.port,
            endpoint: server.endpoint.clone(),
            s3: S3::new(&server.endpoint),
            server,
        }
    }

    /// Everything moto printed so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// From now on moto checks signatures against its IAM users, of which there are none.
    pub fn enforce_iam(&self) {
        self.server.enforce_iam();
    }
}

impl Deref for Moto {
    type Target = S3;

    fn deref(&self) -> &S3 {
        &self.s3
    }
}

// ---------------------------------------------------------------------------------------------
// A blocking S3 client
// ---------------------------------------------------------------------------------------------

/// How an [`S3`] client retries and times out.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Attempts per request, the first included (1: no retries).
    pub max_attempts: u32,
    /// The longest one attempt may take; `None` for the SDK's default (none).
    pub attempt_timeout: Option<Duration>,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            attempt_timeout: None,
        }
    }
}

/// A blocking `aws-sdk-s3` client for tests: credentials test/test, region us-east-1,
/// path-style requests to one endpoint (moto or a [`FaultProxy`] in front of it).
pub struct S3 {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

/// A failed S3 request, reduced to what tests assert on.
#[derive(Debug, Clone)]
pub struct S3Failure {
    pub kind: FailureKind,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The S3 error code (`SlowDown`, `AccessDenied`, ...), when the response carried one.
    pub code: Option<String>,
    /// The whole error chain, for assertion messages.
    pub message: String,
}

/// Where a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// S3 answered with an error.
    Service,
    /// An attempt or the connection timed out.
    Timeout,
    /// The request could not be sent or the connection broke before a response.
    Dispatch,
    /// The response could not be read or parsed.
    Response,
    /// The response started but its body broke off.
    Body,
    Other,
}

impl std::fmt::Display for S3Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} failure: {}", self.kind, self.message)
    }
}

impl S3Failure {
    fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let kind = match &err {
            SdkError::ServiceError(_) => FailureKind::Service,
            SdkError::TimeoutError(_) => FailureKind::Timeout,
            SdkError::DispatchFailure(d) if d.is_timeout() => FailureKind::Timeout,
            SdkError::DispatchFailure(_) => FailureKind::Dispatch,
            SdkError::ResponseError(_) => FailureKind::Response,
            _ => FailureKind::Other,
        };
        Self {
            kind,
            status: err.raw_response().map(|r| r.status().as_u16()),
            code: err.code().map(str::to_string),
            message: DisplayErrorContext(&err).to_string(),
        }
    }

    fn body(err: impl std::error::Error) -> Self {
        Self {
            kind: FailureKind::Body,
            status: None,
            code: None,
            message: DisplayErrorContext(&err).to_string(),
        }
    }
}

/// What HeadObject says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    pub size: u64,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    /// `AES256` or `aws:kms` when the object is stored encrypted.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// `None` for STANDARD, which S3 does not name.
    pub storage_class: Option<String>,
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub lock_mode: Option<String>,
    pub lock_until: Option<SystemTime>,
    /// `ON` or `OFF`.
    pub legal_hold: Option<String>,
    pub checksum_sha256: Option<String>,
    pub checksum_crc32: Option<String>,
}

/// One entry of ListObjectVersions: an object version or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    /// 0 for delete markers.
    pub size: u64,
}

impl S3 {
    /// A client with the default options: three attempts, no attempt timeout.
    pub fn new(endpoint: &str) -> Self {
        Self::with_options(endpoint, &S3Options::default())
    }

    pub fn with_options(endpoint: &str, options: &S3Options) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut timeouts = TimeoutConfig::builder();
        if let Some(timeout) = options.attempt_timeout {
            timeouts = timeouts.operation_attempt_timeout(timeout);
        }
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts)
                    .with_initial_backoff(Duration::from_millis(10))
                    .with_max_backoff(Duration::from_millis(100)),
            )
            .timeout_config(timeouts.build())
            .build();
        Self {
            client: Client::from_conf(config),
            runtime,
        }
    }

    /// The SDK client, for requests the helpers below do not cover (run them with [`S3::run`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a future (a request of [`S3::client`]) to completion.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn create_bucket(&self, name: &str) {
        self.run(self.client.create_bucket().bucket(name).send())
            .unwrap_or_else(|e| panic!("create bucket {name}: {}", S3Failure::from_sdk(e)));
    }

    /// A bucket with object lock enabled (and so versioning), without a default retention.
    pub fn create_locked_bucket(&self, name: &str) {
        let request = self
            .client
            .create_bucket()
            .bucket(name)
            .object_lock_enabled_for_bucket(true);
        self.run(request.send())
            .unwrap_or_else(|e| panic!("create locked bucket {name}: {}", S3Failure::from_sdk(e)));
    }

    pub fn enable_versioning(&self, bucket: &str) {
        let versioning = VersioningConfiguration::builder()
            .status(BucketVersioningStatus::Enabled)
            .build();
        let request = self
            .client
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(versioning);
        self.run(request.send()).unwrap_or_else(|e| {
            panic!("enable versioning on {bucket}: {}", S3Failure::from_sdk(e))
        });
    }

    /// Gives every new object of a locked bucket `days` of retention in `mode`. moto, unlike
    /// AWS, takes this only while the bucket is empty.
    pub fn set_default_retention(&self, bucket: &str, mode: ObjectLockRetentionMode, days: i32) {
        let retention = DefaultRetention::builder().mode(mode).days(days).build();
        let config = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(
                ObjectLockRule::builder()
                    .default_retention(retention)
                    .build(),
            )
            .build();
        let request = self
            .client
            .put_object_lock_configuration()
            .bucket(bucket)
            .object_lock_configuration(config);
        self.run(request.send()).unwrap_or_else(|e| {
            panic!("default retention on {bucket}: {}", S3Failure::from_sdk(e))
        });
    }

    /// Locks one version until `until`.
    pub fn lock_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        mode: ObjectLockRetentionMode,
        until: SystemTime,
    ) -> Result<(), S3Failure> {
        let retention = ObjectLockRetention::builder()
            .mode(mode)
            .retain_until_date(DateTime::from(until))
            .build();
        let request = self
            .client
            .put_object_retention()
            .bucket(bucket)
            .key(key)
            .version_id(version_id)
            .retention(retention);
        self.run(request.send()).map_err(S3Failure::from_sdk)?;
        Ok(())
    }

    /// Ends the retention of an object's current version now, as if its lock had run out
    /// (governance mode, with the bypass; moto, unlike AWS, takes a date in the past).
    pub fn end_retention(&self, bucket: &str, key: &str) -> Result<(), S3Failure> {
        let past = SystemTime::now() - Duration::from_secs(3600);
        let retention = ObjectLockRetention::builder()
            .mode(ObjectLockRetentionMode::Governance)
            .retain_until_date(DateTime::from(past))
            .build();
        let request = self
            .client
            .put_object_retention()
            .bucket(bucket)
            .key(key)
            .bypass_governance_retention(true)
            .retention(retention);
        self.run(request.send()).map_err(S3Failure::from_sdk)?;
        Ok(())
    }

    /// Puts a legal hold on an object's current version, or lifts it.
    pub fn legal_hold(&self, bucket: &str, key: &str, on: bool) -> Result<(), S3Failure> {
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        let hold = ObjectLockLegalHold::builder().status(status).build();
        let request = self
            .client
            .put_object_legal_hold()
            .bucket(bucket)
            .key(key)
            .legal_hold(hold);
        self.run(request.send()).map_err(S3Failure::from_sdk)?;
        Ok(())
    }

    /// Uploads `bytes` in one PutObject; gives the new version's id in a versioned bucket.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<Option<String>, S3Failure> {
        let request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes.to_vec()));
        let out = self.run(request.send()).map_err(S3Failure::from_sdk)?;
        Ok(out.version_id().map(str::to_string))
    }

    /// Uploads a file as a streaming body (which the SDK sends aws-chunked).
    pub fn put_file(&self, bucket: &str, key: &str, path: &Path) -> Result<(), S3Failure> {
        self.run(async {
            let body = ByteStream::from_path(path).await.map_err(S3Failure::body)?;
            let request = self.client.put_object().bucket(bucket).key(key).body(body);
            request.send().await.map_err(S3Failure::from_sdk)?;
            Ok(())
        })
    }

    /// The whole object; a body that breaks off is a [`FailureKind::Body`] failure.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Failure> {
        self.run(async {
            let request = self.client.get_object().bucket(bucket).key(key);
            let out = request.send().await.map_err(S3Failure::from_sdk)?;
            let bytes = out.body.collect().await.map_err(S3Failure::body)?;
            Ok(bytes.into_bytes().to_vec())
        })
    }

    /// Every key under `prefix`, in S3's order, across pages.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token);
            let page = self
                .run(request.send())
                .unwrap_or_else(|e| panic!("list {bucket}/{prefix}: {}", S3Failure::from_sdk(e)));
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return keys;
            }
        }
    }

    /// HeadObject (with checksums); `None` when there is no such object.
    pub fn head(&self, bucket: &str, key: &str) -> Option<HeadInfo> {
        let request = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled);
        let out = match self.run(request.send()) {
            Ok(out) => out,
            Err(err) if err.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                return None;
            }
            Err(err) => panic!("head {bucket}/{key}: {}", S3Failure::from_sdk(err)),
        };
        let text = |s: Option<&str>| s.map(str::to_string);
        Some(HeadInfo {
            size: out.content_length().unwrap_or(0).try_into().unwrap(),
            etag: text(out.e_tag()),
            version_id: text(out.version_id()),
            sse: out.server_side_encryption().map(|s| s.as_str().to_string()),
            sse_kms_key_id: text(out.ssekms_key_id()),
            storage_class: out.storage_class().map(|s| s.as_str().to_string()),
            lock_mode: out.object_lock_mode().map(|m| m.as_str().to_string()),
            lock_until: out
                .object_lock_retain_until_date()
                .map(|d| SystemTime::try_from(*d).unwrap()),
            legal_hold: out
                .object_lock_legal_hold_status()
                .map(|s| s.as_str().to_string()),
            checksum_sha256: text(out.checksum_sha256()),
            checksum_crc32: text(out.checksum_crc32()),
        })
    }

    /// Every version and delete marker under `prefix`: versions first, then markers, each in
    /// S3's order, across pages.
    pub fn object_versions(&self, bucket: &str, prefix: &str) -> Vec<VersionInfo> {
        let (mut versions, mut markers) = (Vec::new(), Vec::new());
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let request = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker);
            let page = self.run(request.send()).unwrap_or_else(|e| {
                panic!(
                    "list versions {bucket}/{prefix}: {}",
                    S3Failure::from_sdk(e)
                )
            });
            versions.extend(page.versions().iter().map(|v| VersionInfo {
                key: v.key().unwrap_or_default().to_string(),
                version_id: v.version_id().unwrap_or_default().to_string(),
                is_latest: v.is_latest().unwrap_or(false),
                delete_marker: false,
                size: v.size().unwrap_or(0).try_into().unwrap(),
            }));
            markers.extend(page.delete_markers().iter().map(|m| VersionInfo {
                key: m.key().unwrap_or_default().to_string(),
                version_id: m.version_id().unwrap_or_default().to_string(),
                is_latest: m.is_latest().unwrap_or(false),
                delete_marker: true,
                size: 0,
            }));
            if page.is_truncated() != Some(true) {
                versions.append(&mut markers);
                return versions;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
    }

    /// DeleteObject without a version: in a versioned bucket, gives the new delete marker's id.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<Option<String>, S3Failure> {
        let request = self.client.delete_object().bucket(bucket).key(key);
        let out = self.run(request.send()).map_err(S3Failure::from_sdk)?;
        Ok(out.version_id().map(str::to_string))
    }

    /// DeleteObject of one version, which object lock may refuse.
    pub fn delete_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<(), S3Failure> {
        let request = self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .version_id(version_id);
        self.run(request.send()).map_err(S3Failure::from_sdk)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The fault proxy: rules
// ---------------------------------------------------------------------------------------------

/// What the proxy does to a request a rule fires on.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answers this status with an S3 error body (`SlowDown` for 503, `InternalError` for 500)
    /// without forwarding.
    Status(u16),
    /// Reads the whole request, forwards it upstream or not, and closes the connection without
    /// an answer. Forwarded, the request takes effect; the client cannot know.
    DropBeforeResponse { forward: bool },
    /// Forwards the head and half the body (half the first chunk of a chunked body), then
    /// closes both sides.
    DropMidRequestBody,
    /// Forwards the request, then the response head and half its body, then closes. A
    /// response without a body is forwarded whole before the close.
    DropMidResponseBody,
    /// Holds the request this long after its head arrived, then forwards it as usual.
    Stall(Duration),
}

#[derive(Debug, Clone)]
enum Fire {
    Always,
    First(u64),
    Every(u64),
    Probability(f64, Box<StdRng>),
}

/// Which requests get a fault, and how often. A new rule selects every request and fires on
/// every match; narrow it with the builder methods.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    method: Option<String>,
    path: Option<String>,
    fire: Fire,
}

impl Rule {
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            method: None,
            path: None,
            fire: Fire::Always,
        }
    }

    /// Selects requests with this method (`PUT`, `GET`, ...).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Selects requests whose target (path and query) contains `substring`: `/data/`,
    /// `uploadId`, ...
    pub fn path(mut self, substring: &str) -> Self {
        self.path = Some(substring.to_string());
        self
    }

    /// Fires on the first `n` selected requests only.
    pub fn first(mut self, n: u64) -> Self {
        self.fire = Fire::First(n);
        self
    }

    /// Fires on every `k`-th selected request (the k-th, the 2k-th, ...).
    pub fn every(mut self, k: u64) -> Self {
        assert!(k > 0, "every(0) would never fire");
        self.fire = Fire::Every(k);
        self
    }

    /// Fires on a selected request with probability `p`, drawn from an RNG seeded with `seed`,
    /// so a run can be repeated.
    pub fn probability(mut self, p: f64, seed: u64) -> Self {
        self.fire = Fire::Probability(p, Box::new(StdRng::seed_from_u64(seed)));
        self
    }

    fn selects(&self, method: &str, target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.path.as_deref().is_none_or(|p| target.contains(p))
    }
}

/// A rule added to a proxy, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

/// A request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Every header but `authorization`, in order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The rule that fired on it.
    pub fault: Option<RuleId>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct RuleState {
    rule: Rule,
    active: bool,
    matched: u64,
    injected: u64,
}

impl RuleState {
    /// Counts a selected request and says whether the rule fires on it.
    fn fires(&mut self) -> bool {
        self.matched += 1;
        let fires = match &mut self.rule.fire {
            Fire::Always => true,
            Fire::First(n) => self.matched <= *n,
            Fire::Every(k) => self.matched.is_multiple_of(*k),
            Fire::Probability(p, rng) => rng.random::<f64>() < *p,
        };
        self.injected += u64::from(fires);
        fires
    }
}

#[derive(Default)]
struct State {
    rules: Vec<RuleState>,
    requests: u64,
    connections: u64,
    seen: Vec<Seen>,
    /// Clones of every socket, shut down when the proxy stops.
    sockets: Vec<TcpStream>,
    stopping: bool,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Wakes stalled requests when the proxy stops.
    stop: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request and picks the fault for it: the first active rule, in the order they
    /// were added, that selects and fires. Rules after it do not see the request.
    fn decide(&self, head: &Head) -> Option<Fault> {
        let (method, target) = head.request_line();
        let mut state = self.lock();
        state.requests += 1;
        let mut fired = None;
        for (index, rule) in state.rules.iter_mut().enumerate() {
            if rule.active && rule.rule.selects(method, target) && rule.fires() {
                fired = Some((RuleId(index), rule.rule.fault.clone()));
                break;
            }
        }
        let headers = head
            .headers
            .iter()
            .filter(|(name, _)| name != "authorization")
            .cloned()
            .collect();
        state.seen.push(Seen {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            fault: fired.as_ref().map(|(id, _)| *id),
        });
        fired.map(|(_, fault)| fault)
    }

    /// Waits `duration`, or less when the proxy stops.
    fn stall(&self, duration: Duration) {
        let state = self.lock();
        let _ = self
            .stop
            .wait_timeout_while(state, duration, |s| !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
    }

    fn track(&self, socket: &TcpStream) -> io::Result<()> {
        let clone = socket.try_clone()?;
        let mut state = self.lock();
        if state.stopping {
            return Err(io::Error::other("proxy stopped"));
        }
        state.sockets.push(clone);
        Ok(())
    }
}

/// A TCP proxy on a loopback port in front of an HTTP/1.1 upstream (moto). It passes requests
/// and responses through byte for byte, one upstream connection per client connection, and
/// injects the faults of its rules, which a test may change at any time. (moto answers every
/// request with `Connection: close`, so in front of it each request is one connection.)
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `upstream`: `http://127.0.0.1:PORT` or `127.0.0.1:PORT`.
    pub fn start(upstream: &str) -> Self {
        let address = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = address
            .parse()
            .unwrap_or_else(|e| panic!("upstream {upstream:?} is not IP:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            stop: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept(&listener, &shared))
        };
        Self {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Adds a rule after the existing ones.
    pub fn add(&self, rule: Rule) -> RuleId {
        let mut state = self.shared.lock();
        state.rules.push(RuleState {
            rule,
            active: true,
            matched: 0,
            injected: 0,
        });
        RuleId(state.rules.len() - 1)
    }

    /// Stops a rule firing; its counters stay readable.
    pub fn remove(&self, id: RuleId) {
        self.shared.lock().rules[id.0].active = false;
    }

    /// Stops every rule firing.
    pub fn clear(&self) {
        for rule in &mut self.shared.lock().rules {
            rule.active = false;
        }
    }

    /// Requests seen, faulted or not.
    pub fn requests(&self) -> u64 {
        self.shared.lock().requests
    }

    /// Client connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Requests the rule selected (up to and including those it fired on).
    pub fn matched(&self, id: RuleId) -> u64 {
        self.shared.lock().rules[id.0].matched
    }

    /// Faults the rule injected.
    pub fn injected(&self, id: RuleId) -> u64 {
        self.shared.lock().rules[id.0].injected
    }

    /// Every request seen, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            for socket in state.sockets.drain(..) {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        self.shared.stop.notify_all();
        // Wake the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopping {
            return;
        }
        let Ok(client) = client else { continue };
        shared.lock().connections += 1;
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            if let Ok(mut conn) = Connection::open(&shared, client) {
                // An I/O error ends the connection, as a real peer would see it.
                let _ = conn.run();
                conn.close();
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The fault proxy: one client connection
// ---------------------------------------------------------------------------------------------

/// A request or response head: the raw bytes and the parsed lines.
struct Head {
    raw: Vec<u8>,
    start: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header holds `token` (case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn request_line(&self) -> (&str, &str) {
        let mut parts = self.start.split(' ');
        (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        )
    }

    fn status(&self) -> io::Result<u16> {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {:?}", self.start)))
    }

    fn closes(&self) -> bool {
        let http_1_0 = self.start.starts_with("HTTP/1.0") || self.start.ends_with("HTTP/1.0");
        self.has_token("connection", "close") || http_1_0
    }

    fn expects_continue(&self) -> bool {
        self.has_token("expect", "100-continue")
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn declared_body(head: &Head) -> io::Result<Option<Body>> {
    if head.has_token("transfer-encoding", "chunked") {
        return Ok(Some(Body::Chunked));
    }
    match head.header("content-length") {
        Some(n) => n
            .trim()
            .parse()
            .map(|n| Some(Body::Length(n)))
            .map_err(|_| invalid(format!("bad content-length {n:?}"))),
        None => Ok(None),
    }
}

fn request_body(request: &Head) -> io::Result<Body> {
    Ok(declared_body(request)?.unwrap_or(Body::Empty))
}

fn response_body(request: &Head, response: &Head) -> io::Result<Body> {
    let status = response.status()?;
    if request.request_line().0 == "HEAD" || status < 200 || status == 204 || status == 304 {
        return Ok(Body::Empty);
    }
    Ok(declared_body(response)?.unwrap_or(Body::UntilClose))
}

/// Reads a head up to its blank line; `None` on a clean end of stream before it.
fn read_head(from: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    loop {
        let start = raw.len();
        if from.read_until(b'\n', &mut raw)? == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if raw.len() > 1 << 20 {
            return Err(invalid("head longer than 1 MiB".into()));
        }
        let line = String::from_utf8_lossy(&raw[start..])
            .trim_end()
            .to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut lines = lines.into_iter();
    let start = lines.next().ok_or_else(|| invalid("empty head".into()))?;
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    Ok(Some(Head {
        raw,
        start,
        headers,
    }))
}

fn copy_exact(from: &mut impl BufRead, to: &mut impl Write, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut from.take(n), to)?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Copies a body as it is framed. With `cut`, stops half-way (half a sized body, half the first
/// chunk of a chunked one, one read of a body that ends with the connection). Gives whether the
/// whole body went through.
fn relay(from: &mut impl BufRead, to: &mut impl Write, body: Body, cut: bool) -> io::Result<bool> {
    match body {
        Body::Empty => Ok(true),
        Body::Length(n) if cut => copy_exact(from, to, n / 2).map(|()| false),
        Body::Length(n) => copy_exact(from, to, n).map(|()| true),
        Body::Chunked => relay_chunks(from, to, cut),
        Body::UntilClose if cut => {
            let n = from.fill_buf()?.len();
            copy_exact(from, to, n as u64).map(|()| false)
        }
        Body::UntilClose => io::copy(from, to).map(|_| true),
    }
}

fn relay_chunks(from: &mut impl BufRead, to: &mut impl Write, cut: bool) -> io::Result<bool> {
    loop {
        let mut line = Vec::new();
        if from.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
        if cut {
            copy_exact(from, to, size / 2)?;
            return Ok(false);
        }
        if size == 0 {
            break;
        }
        copy_exact(from, to, size + 2)?;
    }
    // The trailer section, up to its blank line.
    loop {
        let mut line = Vec::new();
        if from.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(&line)?;
        if line == b"\r\n" || line == b"\n" {
            return Ok(true);
        }
    }
}

/// What becomes of the upstream's final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Forward,
    Discard,
    Cut,
}

fn error_body(status: u16) -> (&'static str, String) {
    let (reason, code, message) = match status {
        400 => ("Bad Request", "BadRequest", "Injected by the fault proxy."),
        403 => ("Forbidden", "AccessDenied", "Access Denied"),
        404 => (
            "Not Found",
            "NoSuchKey",
            "The specified key does not exist.",
        ),
        500 => (
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        503 => (
            "Service Unavailable",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        _ => (
            "Injected Fault",
            "InjectedFault",
            "Injected by the fault proxy.",
        ),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>FAULTPROXY</RequestId>\
         <HostId>fault-proxy</HostId></Error>"
    );
    (reason, body)
}

struct Connection {
    shared: Arc<Shared>,
    client_in: BufReader<TcpStream>,
    client_out: TcpStream,
    upstream_in: BufReader<TcpStream>,
    upstream_out: TcpStream,
}

impl Connection {
    fn open(shared: &Arc<Shared>, client: TcpStream) -> io::Result<Self> {
        shared.track(&client)?;
        let upstream = TcpStream::connect(shared.upstream);
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(err) => {
                let _ = client.shutdown(Shutdown::Both);
                return Err(err);
            }
        };
        shared.track(&upstream)?;
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        Ok(Self {
            shared: Arc::clone(shared),
            client_in: BufReader::with_capacity(1 << 16, client.try_clone()?),
            client_out: client,
            upstream_in: BufReader::with_capacity(1 << 16, upstream.try_clone()?),
            upstream_out: upstream,
        })
    }

    fn close(&self) {
        let _ = self.client_out.shutdown(Shutdown::Both);
        let _ = self.upstream_out.shutdown(Shutdown::Both);
    }

    /// Serves requests until either side closes or a fault ends the connection.
    fn run(&mut self) -> io::Result<()> {
        while let Some(request) = read_head(&mut self.client_in)? {
            let keep_alive = match self.shared.decide(&request) {
                None => self.forward(&request, false, Reply::Forward)?,
                Some(Fault::Status(status)) => self.answer(&request, status)?,
                Some(Fault::DropBeforeResponse { forward: true }) => {
                    self.forward(&request, false, Reply::Discard)?;
                    false
                }
                Some(Fault::DropBeforeResponse { forward: false }) => {
                    self.swallow(&request)?;
                    false
                }
                Some(Fault::DropMidRequestBody) => {
                    self.forward(&request, true, Reply::Forward)?;
                    false
                }
                Some(Fault::DropMidResponseBody) => {
                    self.forward(&request, false, Reply::Cut)?;
                    false
                }
                Some(Fault::Stall(duration)) => {
                    self.shared.stall(duration);
                    self.forward(&request, false, Reply::Forward)?
                }
            };
            if !keep_alive {
                break;
            }
        }
        Ok(())
    }

    /// Sends the request upstream (with `cut_body`, only half its body) and deals with the
    /// response as `reply` says. Gives whether the connection may serve another request.
    fn forward(&mut self, request: &Head, cut_body: bool, reply: Reply) -> io::Result<bool> {
        self.upstream_out.write_all(&request.raw)?;
        if request.expects_continue() {
            // The client waits for `100 Continue` before its body; pass interim responses on
            // until it comes. A final answer instead leaves the body's fate unknown: close.
            let response = self.final_response()?;
            if response.status()? != 100 {
                self.respond(request, &response, reply)?;
                return Ok(false);
            }
            self.client_out.write_all(&response.raw)?;
        }
        let body = request_body(request)?;
        if !relay(&mut self.client_in, &mut self.upstream_out, body, cut_body)? {
            return Ok(false);
        }
        let response = self.final_response()?;
        let whole = self.respond(request, &response, reply)?;
        let until_close = response_body(request, &response)? == Body::UntilClose;
        Ok(whole
            && reply == Reply::Forward
            && !until_close
            && !request.closes()
            && !response.closes())
    }

    /// The next upstream response that is final or `100 Continue`; other interim responses go
    /// to the client.
    fn final_response(&mut self) -> io::Result<Head> {
        loop {
            let response = read_head(&mut self.upstream_in)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let status = response.status()?;
            if status == 100 || !(100..200).contains(&status) {
                return Ok(response);
            }
            self.client_out.write_all(&response.raw)?;
        }
    }

    /// Passes the response head and body to the client, drops them, or passes half.
    fn respond(&mut self, request: &Head, response: &Head, reply: Reply) -> io::Result<bool> {
        let body = response_body(request, response)?;
        if reply == Reply::Discard {
            return relay(&mut self.upstream_in, &mut io::sink(), body, false);
        }
        self.client_out.write_all(&response.raw)?;
        let whole = relay(
            &mut self.upstream_in,
            &mut self.client_out,
            body,
            reply == Reply::Cut,
        )?;
        self.client_out.flush()?;
        Ok(whole)
    }

    /// Answers an S3 error without forwarding.
    fn answer(&mut self, request: &Head, status: u16) -> io::Result<bool> {
        // A client waiting for `100 Continue` will not send its body after a final answer.
        let close = request.expects_continue() || request.closes();
        if !request.expects_continue() {
            relay(
                &mut self.client_in,
                &mut io::sink(),
                request_body(request)?,
                false,
            )?;
        }
        let (reason, body) = error_body(status);
        let connection = if close { "close" } else { "keep-alive" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nx-amz-request-id: FAULTPROXY\r\nConnection: {connection}\r\n\r\n",
            body.len()
        );
        self.client_out.write_all(head.as_bytes())?;
        if request.request_line().0 != "HEAD" {
            self.client_out.write_all(body.as_bytes())?;
        }
        self.client_out.flush()?;
        Ok(!close)
    }

    /// Reads the whole request (inviting the body when the client waits for that) and drops it.
    fn swallow(&mut self, request: &Head) -> io::Result<()> {
        if request.expects_continue() {
            self.client_out
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        relay(
            &mut self.client_in,
            &mut io::sink(),
            request_body(request)?,
            false,
        )?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Self-tests
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

fn no_retries() -> S3Options {
    S3Options {
        max_attempts: 1,
        attempt_timeout: None,
    }
}

#[test]
fn s3support_moto_starts_serves_and_frees_its_port() {
    let moto = Moto::start();
    let port = moto.port;
    moto.create_bucket("started");
    moto.put_object("started", "a/one", b"1").unwrap();
    moto.put_object("started", "b/two", b"22").unwrap();
    assert_eq!(moto.list_keys("started", "a/"), ["a/one"]);
    assert_eq!(moto.head("started", "b/two").unwrap().size, 2);
    assert_eq!(moto.head("started", "b/three"), None);
    assert!(
        moto.log().contains("PUT"),
        "moto logs requests:\n{}",
        moto.log()
    );

    drop(moto);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "moto still answers on {port} after drop"
    );
    TcpListener::bind(("127.0.0.1", port)).expect("the port is free after drop");
}

#[test]
fn s3support_moto_takes_environment_variables() {
    let strict = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let request = strict.client().create_bucket().bucket("refused");
    let err = S3Failure::from_sdk(strict.run(request.send()).unwrap_err());
    assert_eq!(err.code.as_deref(), Some("InvalidAccessKeyId"), "{err}");
}

#[test]
fn s3support_proxy_passes_20_mib_through_unchanged() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let s3 = S3::new(&proxy.endpoint());
    s3.create_bucket("bulk");
    let bytes = random_bytes(20 << 20, 1);

    // In memory (one plain PUT) and from a file (aws-chunked, signed chunk by chunk).
    s3.put_object("bulk", "memory", &bytes).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    s3.put_file("bulk", "file", file.path()).unwrap();

    for key in ["memory", "file"] {
        let through_proxy = s3.get_object("bulk", key).unwrap();
        assert!(through_proxy == bytes, "{key} changed through the proxy");
        assert!(
            moto.get_object("bulk", key).unwrap() == bytes,
            "{key} stored changed"
        );
    }
    let seen = proxy.seen();
    assert_eq!(proxy.requests(), 5, "{seen:#?}");
    assert!(seen.iter().all(|s| s.fault.is_none()));
}

#[test]
fn s3support_status_faults_are_answered_counted_and_retried() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    moto.create_bucket("status");
    let slow = proxy.add(
        Rule::new(Fault::Status(503))
            .method("PUT")
            .path("/data/")
            .first(2),
    );

    // Three attempts get past two 503s; the request that was answered 503 never reached moto.
    let s3 = S3::new(&proxy.endpoint());
    s3.put_object("status", "data/a", b"first").unwrap();
    s3.put_object("status", "snapshots/a", b"other path")
        .unwrap();
    assert_eq!(proxy.injected(slow), 2);
    assert_eq!(proxy.matched(slow), 3);
    let puts: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 4);
    assert_eq!(puts[0].fault, Some(slow));
    assert_eq!(puts[1].fault, Some(slow));
    assert_eq!(puts[2].fault, None);
    assert_eq!(moto.get_object("status", "data/a").unwrap(), b"first");

    // Without retries the first 503 is the answer.
    proxy.remove(slow);
    let once = S3::with_options(&proxy.endpoint(), &no_retries());
    let internal = proxy.add(Rule::new(Fault::Status(500)).method("PUT").first(1));
    let err = once.put_object("status", "data/b", b"x").unwrap_err();
    assert_eq!(
        (err.status, err.code.as_deref()),
        (Some(500), Some("InternalError")),
        "{err}"
    );
    proxy.add(Rule::new(Fault::Status(503)).method("GET").first(1));
    let err = once.get_object("status", "data/a").unwrap_err();
    assert_eq!(
        (err.status, err.code.as_deref()),
        (Some(503), Some("SlowDown")),
        "{err}"
    );
    assert_eq!(proxy.injected(internal), 1);
    assert_eq!(moto.head("status", "data/b"), None);

    // The connection stays usable after an injected answer.
    assert_eq!(once.get_object("status", "data/a").unwrap(), b"first");
}

#[test]
fn s3support_every_kth_and_seeded_probability_rules() {
    let moto = Moto::start();
    moto.create_bucket("rates");
    moto.put_object("rates", "k", b"v").unwrap();

    // Which of 30 GETs fail, with a rule built by `rule`.
    let pattern = |rule: Rule| -> (Vec<bool>, u64) {
        let proxy = FaultProxy::start(&moto.endpoint);
        let id = proxy.add(rule);
        let s3 = S3::with_options(&proxy.endpoint(), &no_retries());
        let failed = (0..30)
            .map(|_| s3.get_object("rates", "k").is_err())
            .collect();
        (failed, proxy.injected(id))
    };

    let (every_third, injected) = pattern(Rule::new(Fault::Status(500)).method("GET").every(3));
    let expected: Vec<bool> = (1..=30).map(|i| i % 3 == 0).collect();
    assert_eq!(every_third, expected);
    assert_eq!(injected, 10);

    let (put_only, injected) = pattern(Rule::new(Fault::Status(500)).method("PUT"));
    assert!(put_only.iter().all(|failed| !failed));
    assert_eq!(injected, 0);

    let seeded = |seed| pattern(Rule::new(Fault::Status(503)).probability(0.5, seed));
    let (first, injected) = seeded(7);
    assert_eq!(first.iter().filter(|f| **f).count() as u64, injected);
    assert!(
        (5..=25).contains(&injected),
        "p = 0.5 fired {injected} times of 30"
    );
    assert_eq!(seeded(7).0, first, "the same seed gives the same faults");
    assert_ne!(seeded(8).0, first, "another seed gives other faults");
}

#[test]
fn s3support_drop_before_response_with_and_without_forwarding() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    moto.create_bucket("drops");
    let once = S3::with_options(&proxy.endpoint(), &no_retries());

    let forwarded = proxy.add(
        Rule::new(Fault::DropBeforeResponse { forward: true })
            .method("PUT")
            .first(1),
    );
    let err = once.put_object("drops", "took-effect", b"yes").unwrap_err();
    assert!(
        matches!(err.kind, FailureKind::Dispatch | FailureKind::Response),
        "{err}"
    );
    assert_eq!(proxy.injected(forwarded), 1);
    assert_eq!(moto.get_object("drops", "took-effect").unwrap(), b"yes");

    let swallowed = proxy.add(
        Rule::new(Fault::DropBeforeResponse { forward: false })
            .method("PUT")
            .first(1),
    );
    once.put_object("drops", "never", b"no").unwrap_err();
    assert_eq!(proxy.injected(swallowed), 1);
    assert_eq!(moto.head("drops", "never"), None);

    // With retries the SDK gets past a dropped answer.
    proxy.add(
        Rule::new(Fault::DropBeforeResponse { forward: false })
            .method("PUT")
            .first(1),
    );
    S3::new(&proxy.endpoint())
        .put_object("drops", "retried", b"r")
        .unwrap();
    assert_eq!(moto.get_object("drops", "retried").unwrap(), b"r");
}

#[test]
fn s3support_drop_mid_request_body_stores_nothing() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    moto.create_bucket("halves");
    let bytes = random_bytes(1 << 20, 2);

    let cut = proxy.add(Rule::new(Fault::DropMidRequestBody).method("PUT").first(1));
    let once = S3::with_options(&proxy.endpoint(), &no_retries());
    let err = once.put_object("halves", "cut", &bytes).unwrap_err();
    assert!(
        matches!(err.kind, FailureKind::Dispatch | FailureKind::Response),
        "{err}"
    );
    assert_eq!(proxy.injected(cut), 1);
    assert_eq!(
        moto.head("halves", "cut"),
        None,
        "moto kept a truncated upload"
    );

    let again = proxy.add(Rule::new(Fault::DropMidRequestBody).method("PUT").first(1));
    S3::new(&proxy.endpoint())
        .put_object("halves", "retried", &bytes)
        .unwrap();
    assert_eq!(proxy.injected(again), 1);
    assert!(moto.get_object("halves", "retried").unwrap() == bytes);
}

#[test]
fn s3support_drop_mid_response_body_never_gives_truncated_data() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    moto.create_bucket("reads");
    let bytes = random_bytes(1 << 20, 3);
    moto.put_object("reads", "object", &bytes).unwrap();

    let cut = proxy.add(Rule::new(Fault::DropMidResponseBody).method("GET").first(1));
    let s3 = S3::new(&proxy.endpoint());
    match s3.get_object("reads", "object") {
        // What aws-sdk-s3 does: the body streams after the request returned, outside retries.
        Err(err) => assert_eq!(err.kind, FailureKind::Body, "{err}"),
        Ok(got) => {
            assert!(got == bytes, "a cut body came back as success");
            assert_eq!(proxy.seen().len(), 2, "the cut GET was retried");
        }
    }
    assert_eq!(proxy.injected(cut), 1);
    assert!(s3.get_object("reads", "object").unwrap() == bytes);
}

#[test]
fn s3support_stall_delays_and_trips_a_short_timeout() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    moto.create_bucket("slow");
    moto.put_object("slow", "k", b"v").unwrap();
    let impatient = S3::with_options(
        &proxy.endpoint(),
        &S3Options {
            max_attempts: 1,
            attempt_timeout: Some(Duration::from_millis(500)),
        },
    );

    let stall = proxy.add(
        Rule::new(Fault::Stall(Duration::from_secs(5)))
            .method("GET")
            .first(1),
    );
    let started = Instant::now();
    let err = impatient.get_object("slow", "k").unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.injected(stall), 1);

    // A shorter stall only delays.
    proxy.add(
        Rule::new(Fault::Stall(Duration::from_millis(300)))
            .method("GET")
            .first(1),
    );
    let started = Instant::now();
    assert_eq!(
        S3::new(&proxy.endpoint()).get_object("slow", "k").unwrap(),
        b"v"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// One exchange of the scripted upstream: what it must receive and what it answers.
struct Exchange {
    head: &'static [u8],
    body: &'static [u8],
    /// Whether the upstream sends `100 Continue` between head and body.
    continue_first: bool,
    response: &'static [u8],
}

/// Chunked bodies both ways with extensions and a trailer, `Expect: 100-continue` with a 204,
/// a HEAD answered with a length but no body, and a sized body: one keep-alive connection.
const FRAMING: &[Exchange] = &[
    Exchange {
        head: b"PUT /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        body: b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        continue_first: false,
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    },
    Exchange {
        head:
            b"PUT /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        body: b"body",
        continue_first: true,
        response: b"HTTP/1.1 204 No Content\r\nx: y\r\n\r\n",
    },
    Exchange {
        head: b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n",
        body: b"",
        continue_first: false,
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
    },
    Exchange {
        head: b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n",
        body: b"",
        continue_first: false,
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfive!",
    },
];

/// Reads exactly `expected.len()` bytes and compares them with `expected`.
fn expect_bytes(from: &mut impl Read, expected: &[u8], side: &str) {
    let mut got = vec![0; expected.len()];
    from.read_exact(&mut got).unwrap_or_else(|e| {
        panic!(
            "{side} waited for {:?}: {e}",
            String::from_utf8_lossy(expected)
        )
    });
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "{side} got other bytes"
    );
}

#[test]
fn s3support_proxy_relays_http_framing_byte_for_byte() {
    let timeout = Some(Duration::from_secs(10));

    // The upstream reads exactly what the script says, so a proxy that adds, drops or reorders
    // bytes fails a comparison or times out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let upstream = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(timeout).unwrap();
        for step in FRAMING {
            expect_bytes(&mut conn, step.head, "upstream");
            if step.continue_first {
                conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            }
            expect_bytes(&mut conn, step.body, "upstream");
            conn.write_all(step.response).unwrap();
        }
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "unexpected bytes upstream: {rest:?}");
    });

    let proxy = FaultProxy::start(&upstream_addr.to_string());
    let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    client.set_read_timeout(timeout).unwrap();
    for step in FRAMING {
        client.write_all(step.head).unwrap();
        if step.continue_first {
            expect_bytes(&mut client, b"HTTP/1.1 100 Continue\r\n\r\n", "client");
        }
        client.write_all(step.body).unwrap();
        expect_bytes(&mut client, step.response, "client");
    }
    client.shutdown(Shutdown::Write).unwrap();
    upstream.join().expect("the upstream saw the script");

    assert_eq!(proxy.requests(), 4);
    assert_eq!(proxy.connections(), 1);
    let methods: Vec<_> = proxy.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["PUT", "PUT", "HEAD", "GET"]);
    let chunked = &proxy.seen()[0];
    assert_eq!(chunked.header("Transfer-Encoding"), Some("chunked"));
}

// The probes below pin down what moto and aws-sdk-s3 do, so that an upgrade that changes it
// shows here rather than as a puzzling failure in an S3 test.

#[test]
fn s3support_probe_moto_object_lock() {
    let moto = Moto::start();
    moto.create_locked_bucket("locked");
    let version = moto
        .put_object("locked", "data/k", b"kept")
        .unwrap()
        .unwrap();
    let until = SystemTime::now() + Duration::from_secs(3600);
    moto.lock_version(
        "locked",
        "data/k",
        &version,
        ObjectLockRetentionMode::Compliance,
        until,
    )
    .unwrap();
    let head = moto.head("locked", "data/k").unwrap();
    assert_eq!(head.lock_mode.as_deref(), Some("COMPLIANCE"));
    assert_eq!(head.version_id.as_deref(), Some(version.as_str()));
    let locked_for = head
        .lock_until
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(locked_for > Duration::from_secs(3500), "{locked_for:?}");

    // Deleting the locked version is refused with 403 AccessDenied, message "Access Denied".
    let err = moto
        .delete_version("locked", "data/k", &version)
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_deref()),
        (Some(403), Some("AccessDenied")),
        "{err}"
    );
    assert!(
        !err.message.contains("lock"),
        "moto now names the lock: {err}"
    );

    // A plain delete only stacks a delete marker on top, which may itself be deleted.
    let marker = moto.delete_object("locked", "data/k").unwrap().unwrap();
    assert!(moto.list_keys("locked", "data/").is_empty());
    let versions = moto.object_versions("locked", "data/");
    let summary: Vec<_> = versions
        .iter()
        .map(|v| {
            (
                v.key.as_str(),
                v.version_id.as_str(),
                v.delete_marker,
                v.is_latest,
                v.size,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("data/k", version.as_str(), false, false, 4),
            ("data/k", marker.as_str(), true, true, 0)
        ]
    );
    moto.delete_version("locked", "data/k", &marker).unwrap();
    assert_eq!(moto.get_object("locked", "data/k").unwrap(), b"kept");
}

#[test]
fn s3support_probe_moto_default_retention() {
    let moto = Moto::start();
    moto.create_locked_bucket("defaults");
    moto.set_default_retention("defaults", ObjectLockRetentionMode::Governance, 1);

    // New objects are locked; GOVERNANCE yields to the bypass header.
    let version = moto.put_object("defaults", "new", b"n").unwrap().unwrap();
    let head = moto.head("defaults", "new").unwrap();
    assert_eq!(head.lock_mode.as_deref(), Some("GOVERNANCE"));
    let err = moto
        .delete_version("defaults", "new", &version)
        .unwrap_err();
    assert_eq!(err.code.as_deref(), Some("AccessDenied"), "{err}");
    let bypass = moto
        .client()
        .delete_object()
        .bucket("defaults")
        .key("new")
        .version_id(&version)
        .bypass_governance_retention(true);
    moto.run(bypass.send()).expect("governance bypass");
    assert_eq!(moto.head("defaults", "new"), None);

    // Unlike AWS, moto sets a lock configuration only on an empty bucket.
    moto.put_object("defaults", "again", b"a").unwrap();
    let config = ObjectLockConfiguration::builder()
        .object_lock_enabled(ObjectLockEnabled::Enabled)
        .build();
    let request = moto
        .client()
        .put_object_lock_configuration()
        .bucket("defaults")
        .object_lock_configuration(config);
    let err = S3Failure::from_sdk(moto.run(request.send()).unwrap_err());
    assert_eq!(err.code.as_deref(), Some("InvalidBucket"), "{err}");
}

#[test]
fn s3support_probe_sdk_checksums_and_moto() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let s3 = S3::new(&proxy.endpoint());
    s3.create_bucket("sums");
    s3.enable_versioning("sums");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"streamed").unwrap();
    let put_of = |key: &str| -> Seen {
        let target = format!("/sums/{key}?");
        let seen = proxy.seen();
        seen.iter()
            .find(|s| s.method == "PUT" && s.target.starts_with(&target))
            .unwrap_or_else(|| panic!("no PUT of {key} in {seen:#?}"))
            .clone()
    };

    // A body in memory: a plain PUT with a CRC32 header.
    s3.put_object("sums", "memory", b"in memory").unwrap();
    let put = put_of("memory");
    assert_eq!(put.header("x-amz-sdk-checksum-algorithm"), Some("CRC32"));
    assert!(put.header("x-amz-checksum-crc32").is_some());
    assert_eq!(put.header("content-encoding"), None);
    assert_eq!(put.header("content-length"), Some("9"));

    // A streaming body: aws-chunked with a CRC32 trailer, every chunk signed (plain http).
    s3.put_file("sums", "file", file.path()).unwrap();
    let put = put_of("file");
    assert_eq!(put.header("content-encoding"), Some("aws-chunked"));
    assert_eq!(put.header("x-amz-trailer"), Some("x-amz-checksum-crc32"));
    assert_eq!(put.header("x-amz-decoded-content-length"), Some("8"));
    assert_eq!(
        put.header("x-amz-content-sha256"),
        Some("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
    );
    assert!(put.header("transfer-encoding").is_none());
    assert!(moto.head("sums", "file").unwrap().checksum_crc32.is_some());
    assert_eq!(s3.get_object("sums", "file").unwrap(), b"streamed");

    // moto stores a wrong SHA-256 without checking it and hands it back; the SDK's own check
    // of the download is what catches it.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let request = s3
        .client()
        .put_object()
        .bucket("sums")
        .key("wrong")
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .checksum_sha256(wrong)
        .body(ByteStream::from_static(b"x"));
    s3.run(request.send())
        .expect("moto accepts a wrong checksum");
    assert_eq!(put_of("wrong").header("x-amz-checksum-sha256"), Some(wrong));
    assert_eq!(
        moto.head("sums", "wrong")
            .unwrap()
            .checksum_sha256
            .as_deref(),
        Some(wrong)
    );
    let err = s3.get_object("sums", "wrong").unwrap_err();
    assert_eq!(err.kind, FailureKind::Body, "{err}");
    assert!(err.message.contains("checksum mismatch"), "{err}");
    let get = proxy
        .seen()
        .into_iter()
        .rfind(|s| s.method == "GET")
        .unwrap();
    assert_eq!(get.header("x-amz-checksum-mode"), Some("ENABLED"));

    proxy.clear();
    assert_eq!(moto.object_versions("sums", "").len(), 3);
}
