//! The hardening gateway: TLS termination, strict HTTP parsing and limits, and reverse
//! proxying to the application's upstreams, composed with `palisade-guard`'s layers.
//!
//! The gateway takes typed [`GatewayOptions`] and never reads the environment or a config
//! file; `docs/gateway.md` describes what it does and why.

mod body_timeout;
mod challenge;
mod csrf_key;
mod framing;
mod idle;
pub mod options;
pub mod proxy;
mod server;
pub mod state;
pub mod strict;
pub mod tls;
pub mod upstream;

use std::{net::SocketAddr, path::PathBuf};

pub use options::{
    CertificateFiles, GatewayOptions, HostHeader, Limits, RouteOptions, StateOptions, Timeouts,
    TlsProfile, UpstreamProtocol, UpstreamTlsOptions,
};
pub use server::{CertReloader, Gateway};
pub use tls::SelfSigned;

/// What can go wrong setting the gateway up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option that cannot be used.
    #[error("{setting}: {message}")]
    BadSetting {
        /// The option, dotted from `[gateway]`: `headers.hsts_max_age`.
        setting: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A listener could not be opened.
    #[error(
        "cannot listen on {addr}: {source}; is another server using it, or is the port below 1024 without the right to bind it?"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key file that cannot be used.
    #[error("certificate {}: {message}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No certificate was given.
    #[error(
        "no TLS certificate; set [[gateway.tls.certificates]] cert and key, or make a \
         development one with `palisade gateway cert self-signed`"
    )]
    NoCertificate,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
    /// rcgen could not make a certificate.
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
