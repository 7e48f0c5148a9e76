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
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Plain-HTTP address that redirects to HTTPS (only the --host names are redirected).
    #[arg(long, value_name = "ADDR")]
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
    let options = options(config.gateway, args)?;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the gateway's runtime")?;
    runtime.block_on(serve(options, self_signed, global.quiet))?;
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
    Ok(options)
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
/// near its end is a warning.
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
    Ok(())
}
