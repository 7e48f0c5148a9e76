//! `palisade gateway`: runs the hardening gateway from `[gateway]` and the command line, with
//! SIGHUP rereading the certificates; and `gateway cert self-signed`. See docs/gateway.md.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use palisade_gateway::{CertificateFiles, Gateway, GatewayOptions, SelfSigned};

use crate::{Outcome, cli::Global, config::Config};

/// Where the gateway listens when neither the config nor `--listen` says.
const QUICK_START_LISTEN: &str = "127.0.0.1:8443";

/// Options of `palisade gateway`; each overrides its `[gateway]` setting.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
    /// The application's address, like http://127.0.0.1:3000 (repeatable: round robin).
    #[arg(long, value_name = "URL")]
    pub upstream: Vec<String>,
    /// HTTPS address to listen on (default: [gateway] listen, or 127.0.0.1:8443 without a
    /// [gateway] section).
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    pub listen: Option<SocketAddr>,
    /// Plain-HTTP address that redirects to HTTPS (only the --host names are redirected).
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    pub http_listen: Option<SocketAddr>,
    /// Host name the gateway answers for and redirects (repeatable).
    #[arg(long, value_name = "NAME")]
    pub host: Vec<String>,
    /// Certificate chain (PEM); without one, a self-signed certificate is made at start-up.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Lift the login lockouts of an account (from every address) or of an address (on every
    /// account), and forget their failed logins; works while the gateway runs.
    Unlock {
        /// An account name as the login form sends it, or an IP address.
        target: String,
        /// Read TARGET as an account name even when it looks like an IP address.
        #[arg(long, conflicts_with = "address")]
        account: bool,
        /// Read TARGET as an IP address (an error when it is not one).
        #[arg(long)]
        address: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a self-signed certificate and key (cert.pem, key.pem with mode 0600) for local
    /// development; browsers will warn about it.
    SelfSigned {
        /// Host name or IP address the certificate is for (repeatable).
        #[arg(long, value_name = "NAME", required = true)]
        host: Vec<String>,
        /// Folder to write into (created when missing; existing files are never replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Runs `palisade gateway ...`.
pub fn run(global: &Global, args: &GatewayArgs, config_required: bool) -> Result<Outcome> {
    if let Some(GatewayCommand::Cert(CertCommand::SelfSigned { host, out })) = &args.command {
        return self_signed(global, host, out);
    }
    let config = Config::load(&global.config, config_required)?;
    let state_dir = crate::state::state_dir(&config);
    if let Some(GatewayCommand::Unlock {
        target,
        account,
        address,
    }) = &args.command
    {
        let mut options = config.gateway.context(
            "no [gateway] section in the config: unlock clears the state the gateway keeps, \
             so give the gateway's config with --config",
        )?;
        in_state_dir(&mut options, state_dir.as_deref());
        return unlock(&options, target, *account, *address, global.quiet);
    }
    let mut options = options(config.gateway, args)?;
    in_state_dir(&mut options, state_dir.as_deref());
    let self_signed = if options.tls.certificates.is_empty() {
        let hosts = if options.hosts.is_empty() {
            vec!["localhost".to_string()]
        } else {
            options.hosts.clone()
        };
        log::warn!(
            "no certificate given: using a self-signed one for {}; browsers will warn. Give \
             --cert and --key, or [[gateway.tls.certificates]], for production",
            hosts.join(", ")
        );
        Some(SelfSigned::generate(&hosts)?)
    } else {
        None
    };
    if let Some(warning) = options
        .security_txt
        .as_ref()
        .and_then(|t| t.expiry_warning_now())
    {
        log::warn!("{warning}");
    }
    tracing::subscriber::set_global_default(ToLog)
        .context("cannot route the gateway's events to the log")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the gateway's runtime")?;
    runtime.block_on(serve(options, self_signed, global.quiet))?;
    Ok(Outcome::Done)
}

/// The CSRF key and the login state live in the state directory unless the config names
/// their files (or Redis).
fn in_state_dir(options: &mut GatewayOptions, state_dir: Option<&std::path::Path>) {
    if options.csrf.key_file.is_none() {
        options.csrf.key_file = state_dir.map(|dir| dir.join("csrf.key"));
    }
    if options.state.path.is_none() && options.state.redis.is_none() {
        options.state.path = state_dir.map(|dir| dir.join("gateway.sqlite"));
    }
}

/// `palisade gateway unlock TARGET`: clears the lockouts and failure counts of an account or
/// an address in the gateway's state (its SQLite file, or Redis).
fn unlock(
    options: &GatewayOptions,
    target: &str,
    as_account: bool,
    as_address: bool,
    quiet: bool,
) -> Result<Outcome> {
    use palisade_guard::{Unlock, ratelimit::client_key};
    options.validate()?;
    if options.state.path.is_none() && options.state.redis.is_none() {
        bail!(
            "the gateway keeps its login state in memory only (no state directory and no \
             [gateway.state]), so there is nothing on disk to unlock; restarting the gateway \
             clears it"
        );
    }
    if options.state.redis.is_none()
        && let Some(path) = &options.state.path
        && !path.exists()
    {
        bail!(
            "no gateway state at {}: the gateway this config runs has not kept any yet, or \
             this is not its config (or its state_dir); give the gateway's own config with \
             --config",
            path.display()
        );
    }
    let brute_force = &options.brute_force;
    if target.trim().is_empty() {
        bail!("give the account name or the IP address to unlock");
    }
    let what = match (target.trim().parse::<std::net::IpAddr>(), as_account) {
        (Ok(ip), false) => Unlock::Source(client_key(ip, brute_force.ipv6_prefix)),
        (Err(_), false) if as_address => bail!(
            "`{target}` is not an IP address; write it like 192.0.2.7 or 2001:db8::7, or \
             drop --address to unlock an account"
        ),
        _ => {
            let name = target.trim();
            Unlock::Account(if brute_force.case_sensitive_accounts {
                name.to_string()
            } else {
                name.to_lowercase()
            })
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    // Redis's connection is made inside the runtime that will drive it.
    let state = {
        let _inside = runtime.enter();
        palisade_gateway::state::State::open(&options.state)?
    };
    let removed = runtime
        .block_on(state.attempts().unlock(&what))
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let named = match &what {
        // Shown as typed would let control characters reach the terminal.
        Unlock::Account(name) => format!("account {}", name.escape_debug()),
        Unlock::Source(ip) if ip.is_ipv6() => {
            format!("address range {ip}/{}", brute_force.ipv6_prefix)
        }
        Unlock::Source(ip) => format!("address {ip}"),
    };
    if !quiet {
        if removed == 0 {
            println!("{named}: nothing was locked or counted");
        } else {
            println!("{named}: unlocked ({removed} records cleared)");
        }
    }
    Ok(Outcome::Done)
}

/// `[gateway]` with the command line's settings on top.
fn options(section: Option<GatewayOptions>, args: &GatewayArgs) -> Result<GatewayOptions> {
    let mut options = match (section, args.upstream.first()) {
        (Some(options), _) => options,
        (None, Some(first)) => {
            let mut options = GatewayOptions::new(first.clone());
            options.listen = QUICK_START_LISTEN.parse().expect("a valid address");
            options
        }
        (None, None) => bail!(
            "no upstream: give the application's address with --upstream http://127.0.0.1:3000, \
             or add a [gateway] section to the config (docs/gateway.md)"
        ),
    };
    if !args.upstream.is_empty() {
        options.upstreams = args.upstream.clone();
    }
    if let Some(listen) = args.listen {
        options.listen = listen;
    }
    if let Some(http_listen) = args.http_listen {
        options.http_listen = Some(http_listen);
    }
    if !args.host.is_empty() {
        options.hosts = args.host.clone();
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        options.tls.certificates = vec![CertificateFiles {
            cert: cert.clone(),
            key: key.clone(),
            ocsp: None,
        }];
    }
    options.validate()?;
    if options.http_listen.is_some() && options.hosts.is_empty() {
        log::warn!(
            "the plain-HTTP listener redirects only configured host names, and none is \
             configured: it answers every request with 421; give --host NAME (or [gateway] \
             hosts)"
        );
    }
    Ok(options)
}

/// An IP address and port, with an example when it is not one.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address and port; write it like 127.0.0.1:8443 or [::]:443")
    })
}

async fn serve(
    options: GatewayOptions,
    self_signed: Option<SelfSigned>,
    quiet: bool,
) -> Result<()> {
    let gateway = Gateway::bind(options, self_signed).await?;
    if !quiet {
        let redirect = gateway
            .http_local_addr()
            .map(|addr| format!(", redirecting http://{addr}"))
            .unwrap_or_default();
        eprintln!(
            "palisade gateway: serving https://{}{redirect}",
            gateway.local_addr()
        );
    }
    let reloader = gateway.reloader();
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reloader.reload() {
                Ok(count) => log::info!("SIGHUP: reloaded {count} certificate(s)"),
                Err(err) => log::error!("SIGHUP: {err}; the certificates in use stay"),
            }
        }
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    gateway.run(stop).await?;
    Ok(())
}

/// Hands the gateway's `tracing` events (targets `palisade::...`) to the binary's log, one line
/// each with the event's fields, so that `-v`, `-q` and `PALISADE_LOG` apply to them too.
struct ToLog;

impl tracing::Subscriber for ToLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("palisade")
            && log::log_enabled!(target: "palisade", to_log(*metadata.level()))
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Fields(String::new());
        event.record(&mut line);
        let metadata = event.metadata();
        log::log!(target: metadata.target(), to_log(*metadata.level()), "{}", line.0.trim_start());
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// `message key=value key=value`, in the order the event gives them.
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}

fn to_log(level: tracing::Level) -> log::Level {
    match level {
        tracing::Level::ERROR => log::Level::Error,
        tracing::Level::WARN => log::Level::Warn,
        tracing::Level::INFO => log::Level::Info,
        tracing::Level::DEBUG => log::Level::Debug,
        tracing::Level::TRACE => log::Level::Trace,
    }
}

fn self_signed(global: &Global, hosts: &[String], out: &std::path::Path) -> Result<Outcome> {
    let files = SelfSigned::generate(hosts)?.write(out)?;
    if global.json {
        crate::commands::print_json(&serde_json::json!({
            "cert": files.cert,
            "key": files.key,
            "hosts": hosts,
        }))?;
    } else if !global.quiet {
        println!("wrote {} and {}", files.cert.display(), files.key.display());
    }
    Ok(Outcome::Done)
}

/// `config check`'s look at `[gateway]`: the certificate files must load; a security.txt
/// near its end and a clamd that cannot be reached are warnings.
pub fn check(options: &GatewayOptions) -> Result<()> {
    if !options.tls.certificates.is_empty() {
        let sources = options
            .tls
            .certificates
            .iter()
            .cloned()
            .map(palisade_gateway::tls::CertSource::Files)
            .collect();
        palisade_gateway::tls::CertStore::new(sources, options.tls.profile)
            .context("[gateway.tls]")?;
    }
    if let Some(warning) = options
        .security_txt
        .as_ref()
        .and_then(|t| t.expiry_warning_now())
    {
        eprintln!("palisade: warning: {warning}");
    }
    warn_if_clamd_unreachable(options);
    Ok(())
}

/// A warning when `[gateway.clamav]` names a clamd that does not answer a connection.
fn warn_if_clamd_unreachable(options: &GatewayOptions) {
    if let Some(clamav) = &options.clamav {
        // Opens and closes a connection to clamd, as a scan would.
        let reach = || -> std::io::Result<()> {
            if let Some(socket) = &clamav.socket {
                return std::os::unix::net::UnixStream::connect(socket).map(drop);
            }
            let address = clamav.address.as_deref().unwrap_or_default();
            let mut last = std::io::Error::other("the address names no host");
            for addr in std::net::ToSocketAddrs::to_socket_addrs(address)? {
                match std::net::TcpStream::connect_timeout(&addr, clamav.timeout) {
                    Ok(_) => return Ok(()),
                    Err(err) => last = err,
                }
            }
            Err(last)
        };
        if let Err(err) = reach() {
            eprintln!(
                "palisade: warning: [gateway.clamav]: clamd cannot be reached ({err}); uploads \
                 to routes that scan are refused until it can (is clamav-daemon running?)"
            );
        }
    }
}
