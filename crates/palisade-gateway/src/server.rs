//! Listeners and connections: the HTTPS listener with the full layer stack, the plain-HTTP
//! listener that redirects, a cap on open connections, and per-connection timeouts.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use palisade_guard::{
    Body, BoxError, BruteForceLayer, Challenges, ClientIpLayer, CspLayer, CspReportLayer, CsrfKey,
    CsrfLayer, HttpsRedirectLayer, HttpsRedirectOptions, Peer, RateLimitLayer, RejectionKind,
    RichTextLayer, SecurityHeadersLayer, SecurityTxtLayer, UploadLayer, ValidateLayer,
};
use palisade_waf::WafLayer;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::{
    Error, GatewayOptions,
    body_timeout::BodyTimeout,
    challenge, csrf_key,
    framing::{RefuseFlaggedLayer, Verdicts, Watched, Watcher},
    idle::IdleTimeout,
    options::{self, upstream_uri},
    proxy::{Proxy, ProxyOptions},
    state::State,
    tls::{self, CertSource, CertStore, SelfSigned},
    upstream::{self, Connector, Pool},
};

/// How long [`Gateway::run`] waits for open connections after its shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    options: GatewayOptions,
    https: TcpListener,
    http: Option<TcpListener>,
    acceptor: TlsAcceptor,
    certs: Arc<CertStore>,
    pool: Arc<Pool>,
    connector: Connector,
    csrf_key: CsrfKey,
    challenges: Challenges,
    waf: Option<Arc<dyn palisade_waf::RuleEngine>>,
    state: State,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.https.local_addr().ok())
            .field("http_listen", &self.http_local_addr())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// Rereads the certificate files; connections already open keep theirs.
#[derive(Debug, Clone)]
pub struct CertReloader(Arc<CertStore>);

impl CertReloader {
    /// Rereads every certificate; on failure the ones in use stay. Gives how many loaded.
    pub fn reload(&self) -> Result<usize, Error> {
        self.0.reload()
    }
}

impl Gateway {
    /// Checks `options`, loads the certificates and opens the listeners. `self_signed` is used
    /// only when `options.tls.certificates` is empty.
    pub async fn bind(
        options: GatewayOptions,
        self_signed: Option<SelfSigned>,
    ) -> Result<Self, Error> {
        options.validate()?;
        let mut sources: Vec<CertSource> = options
            .tls
            .certificates
            .iter()
            .cloned()
            .map(CertSource::Files)
            .collect();
        if sources.is_empty() {
            sources.extend(self_signed.map(CertSource::Pem));
        }
        let certs = Arc::new(CertStore::new(sources, options.tls.profile)?);
        let config = tls::server_config(options.tls.profile, certs.clone())?;
        let https = bind(options.listen).await?;
        let http = match options.http_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let uris = options
            .upstreams
            .iter()
            .map(|u| upstream_uri(u).expect("validated"))
            .collect();
        let connector = upstream::connector(
            options.upstream_protocol,
            &options.upstream_tls,
            options.timeouts.upstream_connect,
        )?;
        let waf = palisade_waf::engine(&options.waf, options.limits.max_body_bytes)
            .map_err(|err| bad(format!("waf.{}", err.setting()), err.message()))?;
        let csrf_key = csrf_key::load(&options.csrf)?;
        let state = State::open(&options.state)?;
        let challenges = challenge::build(&options.challenge, &csrf_key, state.spent())?;
        Ok(Self {
            waf,
            challenges,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            pool: Arc::new(Pool::new(uris)),
            connector,
            certs,
            csrf_key,
            state,
            https,
            http,
            options,
        })
    }

    /// The HTTPS listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The plain-HTTP listener's address, if there is one.
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The challenges the HTTPS listener serves at `challenge.path`: a layer that must make a
    /// client prove itself (the login brute-force protection) demands one with
    /// [`Challenges::demand`] and lets it through once [`Challenges::has_pass`].
    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }

    /// A handle that rereads the certificate files (on SIGHUP, say).
    pub fn reloader(&self) -> CertReloader {
        CertReloader(self.certs.clone())
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open connections up
    /// to ten seconds to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let options = &self.options;
        let (https_service, http_service) = self.services()?;
        let watch = options
            .tls
            .watch
            .then(|| tokio::spawn(self.certs.clone().watch(options.tls.watch_interval)));
        let health = tokio::spawn(self.pool.clone().check_forever(
            upstream::client(self.connector.clone(), options.upstream_protocol),
            options.health_check.clone(),
        ));
        let permits = Arc::new(Semaphore::new(options.limits.max_connections));
        let listeners = Listeners {
            builder: Arc::new(connection_builder(options)),
            permits: permits.clone(),
            header_read: options.timeouts.header_read,
            idle: options.timeouts.idle,
            max_head: options.limits.max_header_bytes,
            max_headers: options.limits.max_headers,
            body_limit: usize::try_from(options.limits.max_body_bytes).unwrap_or(usize::MAX),
            body_read: options.timeouts.body_read,
        };

        let https = listeners.accept(self.https, Some(self.acceptor.clone()), https_service);
        let http = async {
            match self.http {
                Some(listener) => listeners.accept(listener, None, http_service).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = https => {}
            () = http => {}
            () = shutdown => {}
        }

        health.abort();
        watch.inspect(|task| task.abort());
        let all = u32::try_from(options.limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(DRAIN, permits.acquire_many(all)).await;
        Ok(())
    }

    /// The layer stacks: HTTPS (headers, client address, challenges, security.txt, proxy) and plain HTTP
    /// (headers, client address, redirect, with ACME challenges to the proxy).
    fn services(&self) -> Result<(impl GatewayService, impl GatewayService), Error> {
        let options = &self.options;
        let proxy = Proxy::new(
            self.pool.clone(),
            upstream::client(self.connector.clone(), options.upstream_protocol),
            ProxyOptions {
                limits: options.limits.clone(),
                timeouts: options.timeouts.clone(),
                hosts: options.hosts.clone(),
                host_header: options.host_header,
            },
        );
        let mut headers = SecurityHeadersLayer::new(&options.headers)
            .map_err(|err| bad(format!("headers.{}", err.setting), err.message))?;
        for route in &options.routes {
            headers = headers
                .with_route(&route.prefix, &route.headers)
                .map_err(|err| bad(format!("routes.headers.{}", err.setting), err.message))?;
        }
        let report_uri = options.csp_report.as_ref().map(|r| r.path.as_str());
        let mut csp = CspLayer::new(&options.csp, report_uri)
            .map_err(|err| bad(format!("csp.{}", err.setting), err.message))?;
        for route in &options.routes {
            csp = csp
                .with_route(
                    &route.prefix,
                    route.csp.as_ref().unwrap_or(&options.csp),
                    report_uri,
                )
                .map_err(|err| bad(format!("routes.csp.{}", err.setting), err.message))?;
        }
        let mut csrf = CsrfLayer::new(&options.csrf, self.csrf_key.clone())
            .map_err(|err| bad(format!("csrf.{}", err.setting), err.message))?;
        for route in &options.routes {
            csrf = csrf.with_route(&route.prefix, &route.csrf);
        }
        let mut validate = ValidateLayer::new(std::slice::from_ref(&options.csrf.field));
        for (index, route) in options.routes.iter().enumerate() {
            let Some(rules) = &route.validate else {
                continue;
            };
            let setting = |field: &str| format!("routes[{index}].validate.{field}");
            let schema = options::schema_file(rules)
                .map_err(|message| bad(setting("json_schema_file"), message))?;
            validate = validate
                .with_route(&route.prefix, rules, schema.as_ref())
                .map_err(|err| bad(setting(&err.setting), err.message))?;
        }
        let rate_limit = match self.state.redis() {
            Some(redis) => {
                RateLimitLayer::shared(&options.rate_limit, redis.clone(), options.state.on_failure)
            }
            None => RateLimitLayer::new(&options.rate_limit),
        }
        .map_err(|err| bad(format!("rate_limit.{}", err.setting), err.message))?;
        let rate_limit = (!rate_limit.is_empty()).then_some(rate_limit);
        let security_txt = options
            .security_txt
            .as_ref()
            .map(SecurityTxtLayer::new)
            .transpose()
            .map_err(|err| bad(format!("security_txt.{}", err.setting), err.message))?;
        let upload = self.upload_layer()?;
        let rich_text = self.rich_text_layer()?;
        let https = ServiceBuilder::new()
            .layer(headers.clone())
            .layer(csp)
            .layer(ClientIpLayer::new(options.client_ip.clone()))
            .layer(RefuseFlaggedLayer)
            .option_layer(rate_limit)
            .layer(self.challenges.layer())
            .option_layer(self.brute_force_layer()?)
            .option_layer(security_txt)
            .option_layer(options.csp_report.clone().map(CspReportLayer::new))
            .layer(csrf)
            .layer(validate)
            .option_layer(upload)
            .option_layer(self.waf.clone().map(|engine| {
                WafLayer::new(
                    engine,
                    &options.waf,
                    options.limits.max_body_bytes,
                    self.local_addr(),
                )
            }))
            .option_layer(rich_text)
            .service(proxy.clone());

        let redirect = HttpsRedirectLayer::new(&HttpsRedirectOptions {
            hosts: options.hosts.clone(),
            https_port: self.local_addr().port(),
            acme_passthrough: true,
        });
        let http = ServiceBuilder::new()
            .layer(headers)
            .layer(ClientIpLayer::new(options.client_ip.clone()))
            .layer(RefuseFlaggedLayer)
            .layer(redirect)
            .service(proxy);
        Ok((https, http))
    }
}

impl Gateway {
    /// Brute-force protection, when logins are listed: counts in the state store, challenges
    /// from [`Gateway::challenges`], the rate limits' allow list.
    fn brute_force_layer(&self) -> Result<Option<BruteForceLayer>, Error> {
        let options = &self.options;
        if options.brute_force.logins.is_empty() {
            return Ok(None);
        }
        BruteForceLayer::new(
            &options.brute_force,
            self.state.attempts(),
            Arc::new(self.challenges.clone()),
            options.rate_limit.allow.clone(),
            options.state.on_failure,
            usize::try_from(options.limits.max_body_bytes).unwrap_or(usize::MAX),
        )
        .map(Some)
        .map_err(|err| bad(format!("brute_force.{}", err.setting), err.message))
    }

    /// The upload checks, when a route has `upload` rules.
    fn upload_layer(&self) -> Result<Option<UploadLayer>, Error> {
        let options = &self.options;
        if options.routes.iter().all(|route| route.upload.is_none()) {
            return Ok(None);
        }
        let mut layer = UploadLayer::new(options.clamav.as_ref())
            .map_err(|err| bad(format!("clamav.{}", err.setting), err.message))?;
        for (index, route) in options.routes.iter().enumerate() {
            let Some(upload) = &route.upload else {
                continue;
            };
            layer = layer.with_route(&route.prefix, upload).map_err(|err| {
                bad(
                    format!("routes[{index}].upload.{}", err.setting),
                    err.message,
                )
            })?;
        }
        Ok(Some(layer))
    }

    /// The rich text sanitiser, when a route has `rich_text` fields.
    fn rich_text_layer(&self) -> Result<Option<RichTextLayer>, Error> {
        let routes = &self.options.routes;
        if routes.iter().all(|route| route.rich_text.is_none()) {
            return Ok(None);
        }
        let mut layer = RichTextLayer::new();
        for (index, route) in routes.iter().enumerate() {
            let Some(rich_text) = &route.rich_text else {
                continue;
            };
            layer = layer.with_route(&route.prefix, rich_text).map_err(|err| {
                bad(
                    format!("routes[{index}].rich_text.{}", err.setting),
                    err.message,
                )
            })?;
        }
        Ok(Some(layer))
    }
}

/// The refusal hyper made itself, before any request reached the services: it answers parse
/// errors with 400 or 431 and closes connections whose headers are too slow.
fn hyper_refusal(
    err: &(dyn std::error::Error + 'static),
) -> Option<(RejectionKind, &'static str, &'static str)> {
    let err = err.downcast_ref::<hyper::Error>()?;
    if err.is_timeout() {
        Some((RejectionKind::SlowHeaders, "header-read-timeout", "close"))
    } else if err.is_parse_too_large() {
        Some((RejectionKind::HeadersTooLarge, "max-header-bytes", "reject"))
    } else if err.is_parse() {
        Some((RejectionKind::Malformed, "http-parse-error", "reject"))
    } else {
        None
    }
}

/// What a listener serves: a cloneable service from requests to streaming responses.
trait GatewayService:
    Service<Request<Body>, Response = Response<Body>, Error: Into<BoxError>, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> GatewayService for S where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

fn bad(setting: String, message: String) -> Error {
    Error::BadSetting { setting, message }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// hyper's server settings: HTTP/1.1 and HTTP/2 with the header limits and read timeout.
fn connection_builder(options: &GatewayOptions) -> auto::Builder<TokioExecutor> {
    let limits = &options.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.timeouts.header_read)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(100);
    builder
}

struct Listeners {
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    header_read: Duration,
    idle: Duration,
    max_head: usize,
    max_headers: usize,
    body_limit: usize,
    body_read: Duration,
}

impl Listeners {
    /// Accepts connections forever, each once a connection permit is free.
    async fn accept<S: GatewayService>(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        service: S,
    ) {
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::debug!(target: "palisade::gateway", error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                builder: self.builder.clone(),
                peer: Peer {
                    addr,
                    tls: tls.is_some(),
                },
                idle: self.idle,
                max_head: self.max_head,
                max_headers: self.max_headers,
                header_read: self.header_read,
                body_limit: self.body_limit,
                body_read: self.body_read,
            };
            let (tls, service, header_read) = (tls.clone(), service.clone(), self.header_read);
            tokio::spawn(async move {
                let _permit = permit;
                connection.start(stream, tls, header_read, service).await;
            });
        }
    }
}

struct Connection {
    header_read: Duration,
    builder: Arc<auto::Builder<TokioExecutor>>,
    peer: Peer,
    idle: Duration,
    max_head: usize,
    max_headers: usize,
    body_limit: usize,
    body_read: Duration,
}

impl Connection {
    async fn start<S>(
        self,
        stream: TcpStream,
        tls: Option<TlsAcceptor>,
        handshake: Duration,
        service: S,
    ) where
        S: GatewayService,
    {
        let Some(acceptor) = tls else {
            return self.serve(stream, service).await;
        };
        match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve(stream, service).await,
            Ok(Err(err)) => {
                tracing::debug!(target: "palisade::gateway", peer = %self.peer.addr, error = %err, "TLS handshake failed");
            }
            Err(_) => {
                tracing::debug!(target: "palisade::gateway", peer = %self.peer.addr, "TLS handshake timed out");
            }
        }
    }

    async fn serve<I, S>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Send + 'static,
        S: GatewayService,
    {
        let peer = self.peer;
        let verdicts = Verdicts::default();
        let watcher = Watcher::new(verdicts.clone(), self.max_head, self.max_headers);
        let body_limit = self.body_limit;
        let body_read = self.body_read;
        let service = service.map_request(move |req: Request<Incoming>| {
            // Every layer reads the body through the size limit and the read timeout.
            let (parts, body) = req.into_parts();
            let body = BodyTimeout::new(Limited::new(body, body_limit), body_read);
            let mut req = Request::from_parts(parts, Body::new(body));
            req.extensions_mut().insert(peer);
            // HTTP/1 requests arrive in the order of their heads; HTTP/2 has no verdicts.
            if req.version() <= http::Version::HTTP_11 {
                let verdict = verdicts.lock().expect("verdict lock").pop_front().flatten();
                if let Some(flag) = verdict {
                    req.extensions_mut().insert(flag);
                }
            }
            req
        });
        let io = Watched::new(
            IdleTimeout::new(io, self.idle),
            watcher,
            self.header_read,
            peer.addr.ip(),
        );
        let io = TokioIo::new(Box::pin(io));
        let served = self
            .builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
            .await;
        let Err(err) = served else { return };
        match hyper_refusal(err.as_ref()) {
            Some((kind, rule, action)) => {
                palisade_guard::reject::record(kind, rule, Some(peer.addr.ip()), "", action);
            }
            None => {
                tracing::debug!(target: "palisade::gateway", peer = %peer.addr, error = %err, "connection ended with an error");
            }
        }
    }
}
