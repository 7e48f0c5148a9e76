//! TLS: the rustls server configuration for a profile, certificates chosen by SNI and reread on
//! demand without touching open connections, and self-signed development certificates.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    ServerConfig, SupportedCipherSuite,
    crypto::{CryptoProvider, ring},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use crate::{
    Error,
    options::{CertificateFiles, TlsProfile},
};

/// TLS 1.3 suites: all AEAD, all forward secret.
const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// TLS 1.2 suites of Mozilla's intermediate profile: ECDHE with AES-GCM or ChaCha20-Poly1305.
const TLS12_SUITES: [SupportedCipherSuite; 6] = [
    ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The crypto provider for `profile`: only its suites, and X25519, P-256 and P-384.
pub fn provider(profile: TlsProfile) -> CryptoProvider {
    let mut suites = TLS13_SUITES.to_vec();
    if profile == TlsProfile::Intermediate {
        suites.extend(TLS12_SUITES);
    }
    CryptoProvider {
        cipher_suites: suites,
        kx_groups: vec![
            ring::kx_group::X25519,
            ring::kx_group::SECP256R1,
            ring::kx_group::SECP384R1,
        ],
        ..ring::default_provider()
    }
}

/// The server configuration: `profile`'s versions and suites, certificates from `store`, ALPN
/// `h2` and `http/1.1`.
pub fn server_config(profile: TlsProfile, store: Arc<CertStore>) -> Result<ServerConfig, Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = match profile {
        TlsProfile::Intermediate => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsProfile::Modern => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider(profile)))
        .with_protocol_versions(versions)
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Where a certificate comes from.
#[derive(Clone)]
pub enum CertSource {
    /// PEM files, reread on every reload.
    Files(CertificateFiles),
    /// PEM text held in memory (a self-signed certificate made at start-up).
    Pem(SelfSigned),
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Files(files) => write!(f, "Files({})", files.cert.display()),
            Self::Pem(_) => f.write_str("Pem(self-signed)"),
        }
    }
}

/// The certificates in use, swapped whole by [`CertStore::reload`]; a handshake in progress
/// keeps the set it started with, and established connections are never touched.
#[derive(Debug)]
pub struct CertStore {
    sources: Vec<CertSource>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Vec<Arc<CertifiedKey>>>>,
    /// The files' stamps as they were before the certificates in use were read.
    loaded: std::sync::Mutex<Vec<Stamp>>,
}

/// A file's inode, modification time and length, or `None` when it cannot be read.
type Stamp = Option<(u64, std::time::SystemTime, u64)>;

impl CertStore {
    /// Loads every source; any failure is an error.
    pub fn new(sources: Vec<CertSource>, profile: TlsProfile) -> Result<Self, Error> {
        if sources.is_empty() {
            return Err(Error::NoCertificate);
        }
        let provider = Arc::new(provider(profile));
        let stamps = file_stamps(&sources);
        let loaded = load_all(&sources, &provider)?;
        Ok(Self {
            sources,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            loaded: std::sync::Mutex::new(stamps),
        })
    }

    /// Rereads every source; on any failure the certificates in use stay and the error is
    /// returned. Gives the number of certificates loaded.
    pub fn reload(&self) -> Result<usize, Error> {
        let stamps = file_stamps(&self.sources);
        let loaded = load_all(&self.sources, &self.provider)?;
        let count = loaded.len();
        *self.current.write().expect("certificate lock poisoned") = Arc::new(loaded);
        *self.loaded.lock().expect("stamp lock poisoned") = stamps;
        Ok(count)
    }

    /// Rereads the certificates whenever their files change, checking every `interval`. A
    /// change that does not load (a key written before its certificate, say) is tried again at
    /// the next check; the certificates in use stay until one loads.
    pub async fn watch(self: Arc<Self>, interval: std::time::Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = None;
        loop {
            ticks.tick().await;
            let stamps = file_stamps(&self.sources);
            if stamps == *self.loaded.lock().expect("stamp lock poisoned") {
                continue;
            }
            match self.reload() {
                Ok(count) => {
                    tracing::info!(target: "palisade::gateway", count, "certificate files changed; reloaded");
                }
                // Once per state of the files, not at every check.
                Err(err) if reported.as_ref() != Some(&stamps) => {
                    tracing::warn!(target: "palisade::gateway", error = %err, "certificate files changed but do not load; the ones in use stay");
                    reported = Some(stamps);
                }
                Err(_) => {}
            }
        }
    }

    fn current(&self) -> Arc<Vec<Arc<CertifiedKey>>> {
        self.current
            .read()
            .expect("certificate lock poisoned")
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current();
        let wanted = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name.to_string()).ok());
        let matching = wanted.and_then(|name| {
            certs.iter().find(|key| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        matching.or_else(|| certs.first()).cloned()
    }
}

/// The stamp of every certificate and key file: a file replaced by a rename (or a symlink
/// pointed elsewhere, as certbot does) is a new inode even when written within the file
/// system's timestamp granularity.
fn file_stamps(sources: &[CertSource]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.ino(), meta.modified().ok()?, meta.len()))
    };
    sources
        .iter()
        .filter_map(|source| match source {
            CertSource::Files(files) => {
                let ocsp = files.ocsp.as_deref().map(stamp);
                Some([Some(stamp(&files.cert)), Some(stamp(&files.key)), ocsp])
            }
            CertSource::Pem(_) => None,
        })
        .flatten()
        .flatten()
        .collect()
}

fn load_all(
    sources: &[CertSource],
    provider: &CryptoProvider,
) -> Result<Vec<Arc<CertifiedKey>>, Error> {
    sources
        .iter()
        .map(|source| load(source, provider).map(Arc::new))
        .collect()
}

fn load(source: &CertSource, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let (certs, key, path, ocsp) = match source {
        CertSource::Files(files) => {
            let certs = read_certs(&files.cert)?;
            let key =
                PrivateKeyDer::from_pem_file(&files.key).map_err(|err| Error::Certificate {
                    path: files.key.clone(),
                    message: format!("cannot read a PEM private key: {err}"),
                })?;
            let ocsp = files.ocsp.as_deref().map(read_ocsp).transpose()?;
            (certs, key, files.cert.clone(), ocsp)
        }
        CertSource::Pem(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| pem_error("self-signed certificate", err))?;
            let key = PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes())
                .map_err(|err| pem_error("self-signed key", err))?;
            (certs, key, PathBuf::from("(self-signed)"), None)
        }
    };
    let mut certified =
        CertifiedKey::from_der(certs, key, provider).map_err(|err| Error::Certificate {
            path,
            message: format!(
                "the key does not fit the certificate, or is of an unsupported type: {err}"
            ),
        })?;
    certified.ocsp = ocsp;
    Ok(certified)
}

fn read_ocsp(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|err| Error::Certificate {
        path: path.to_path_buf(),
        message: format!("cannot read the OCSP response: {err}"),
    })?;
    // A DER OCSPResponse is a SEQUENCE; PEM or text here would be sent and refused by clients.
    if bytes.first() != Some(&0x30) {
        return Err(Error::Certificate {
            path: path.to_path_buf(),
            message: "is not a DER OCSP response (as `openssl ocsp -respout` writes)".into(),
        });
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |message: String| Error::Certificate {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| bad(format!("cannot read: {err}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(format!("not a PEM certificate chain: {err}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate; give the chain in PEM, leaf first".into(),
        ));
    }
    Ok(certs)
}

fn pem_error(what: &str, err: rustls_pki_types::pem::Error) -> Error {
    Error::Certificate {
        path: PathBuf::from(what),
        message: err.to_string(),
    }
}

/// A self-signed certificate and its key, as PEM; for development only. The key's text is
/// wiped from memory when this is dropped.
#[derive(Clone)]
pub struct SelfSigned {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pem);
    }
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfSigned { key: <redacted> }")
    }
}

impl SelfSigned {
    /// A new certificate for `hosts` (DNS names or IP addresses) with a fresh P-256 key.
    pub fn generate(hosts: &[String]) -> Result<Self, Error> {
        let certified =
            rcgen::generate_simple_self_signed(hosts.to_vec()).map_err(Error::SelfSigned)?;
        Ok(Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// Writes `cert.pem` and `key.pem` (mode 0600) into `dir`, refusing to replace either.
    pub fn write(&self, dir: &Path) -> Result<CertificateFiles, Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|err| write_error(dir, err))?;
        let files = CertificateFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ocsp: None,
        };
        // Neither file is written when either exists: a new key beside an old certificate
        // would be a pair that does not match.
        for path in [&files.key, &files.cert] {
            if path.exists() {
                return Err(write_error(
                    path,
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ));
            }
        }
        let mut written = Vec::new();
        for (path, text, mode) in [
            (&files.key, &self.key_pem, 0o600),
            (&files.cert, &self.cert_pem, 0o644),
        ] {
            let result = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .and_then(|mut file| file.write_all(text.as_bytes()));
            if let Err(err) = result {
                // Take back what this call wrote (a half-written pair is of no use).
                for done in &written {
                    let _ = std::fs::remove_file(done);
                }
                return Err(write_error(path, err));
            }
            written.push(path.clone());
        }
        Ok(files)
    }
}

fn write_error(path: &Path, err: std::io::Error) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        source: err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_offer_only_aead_forward_secret_suites() {
        let modern = provider(TlsProfile::Modern);
        assert!(modern.cipher_suites.iter().all(|s| s.tls13().is_some()));
        let intermediate = provider(TlsProfile::Intermediate);
        assert_eq!(intermediate.cipher_suites.len(), 9);
        for suite in &intermediate.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
            assert!(
                name.starts_with("TLS13") || name.contains("ECDHE"),
                "{name}"
            );
        }
    }

    #[test]
    fn self_signed_certificates_load_and_the_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = SelfSigned::generate(&["localhost".into()])
            .unwrap()
            .write(dir.path())
            .unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let store = CertStore::new(
            vec![CertSource::Files(files.clone())],
            TlsProfile::Intermediate,
        );
        assert_eq!(store.unwrap().reload().unwrap(), 1);
        let again = SelfSigned::generate(&["localhost".into()])
            .unwrap()
            .write(dir.path());
        assert!(
            matches!(again, Err(Error::Write { .. })),
            "replaced an existing key"
        );

        // Only the certificate left: nothing is written, so no new key beside the old cert.
        std::fs::remove_file(&files.key).unwrap();
        let cert = std::fs::read(&files.cert).unwrap();
        let again = SelfSigned::generate(&["localhost".into()])
            .unwrap()
            .write(dir.path());
        assert!(
            matches!(&again, Err(Error::Write { path, .. }) if path == &files.cert),
            "{again:?}"
        );
        assert!(
            !files.key.exists(),
            "a key was written beside the old certificate"
        );
        assert_eq!(std::fs::read(&files.cert).unwrap(), cert);
    }

    #[test]
    fn a_key_that_does_not_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SelfSigned::generate(&["a.test".into()])
            .unwrap()
            .write(&dir.path().join("a"))
            .unwrap();
        let b = SelfSigned::generate(&["b.test".into()])
            .unwrap()
            .write(&dir.path().join("b"))
            .unwrap();
        let mixed = CertificateFiles {
            cert: a.cert,
            key: b.key,
            ocsp: None,
        };
        let err =
            CertStore::new(vec![CertSource::Files(mixed)], TlsProfile::Intermediate).unwrap_err();
        assert!(matches!(err, Error::Certificate { .. }), "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY"));
    }
}
