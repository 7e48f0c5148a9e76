//! TLS: versions, suites, ALPN, SNI and reloads, checked with curl (OpenSSL) and rustls.

use std::time::Duration;

use http::StatusCode;
use palisade_gateway::{CertificateFiles, SelfSigned, TlsProfile};

use crate::support::{TestGateway, Upstream, get, options, send_over, tls_connect};

fn ok(output: &std::process::Output) -> bool {
    output.status.success()
}

#[tokio::test]
async fn curl_negotiates_http2_through_alpn() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let output = gateway
        .curl(&[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &gateway.url("/"),
        ])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "2 200",
        "{output:?}"
    );
    let output = gateway
        .curl(&[
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &gateway.url("/"),
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1.1", "{output:?}");
    // Over HTTP/2 the upstream still gets a Host header.
    assert_eq!(
        upstream.received()[0].headers["host"],
        format!("localhost:{}", gateway.addr.port())
    );
}

#[tokio::test]
async fn intermediate_accepts_tls12_and_13_and_refuses_older() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let url = gateway.url("/");
    // SECLEVEL=0 makes OpenSSL offer TLS 1.0 and 1.1 at all, so the refusal is the gateway's.
    let old = ["--ciphers", "DEFAULT@SECLEVEL=0", "-o", "/dev/null"];
    for version in ["1.0", "1.1"] {
        let min = format!("--tlsv{version}");
        let output = gateway
            .curl(&[&old[..], &[&min, "--tls-max", version, &url]].concat())
            .await;
        assert!(!ok(&output), "TLS {version} was accepted");
    }
    for version in ["1.2", "1.3"] {
        let min = format!("--tlsv{version}");
        let output = gateway
            .curl(&["-o", "/dev/null", &min, "--tls-max", version, &url])
            .await;
        assert!(ok(&output), "TLS {version} refused: {output:?}");
    }
}

#[tokio::test]
async fn suites_without_forward_secrecy_or_aead_are_refused() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let url = gateway.url("/");
    let tls12 = [
        "-o",
        "/dev/null",
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--ciphers",
    ];
    for suite in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-GCM-SHA256",
    ] {
        let output = gateway.curl(&[&tls12[..], &[suite, &url]].concat()).await;
        assert!(!ok(&output), "{suite} was accepted");
    }
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let output = gateway.curl(&[&tls12[..], &[suite, &url]].concat()).await;
        assert!(ok(&output), "{suite} refused: {output:?}");
    }
}

#[tokio::test]
async fn modern_is_tls13_only() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.tls.profile = TlsProfile::Modern;
    let gateway = TestGateway::start(options).await;
    let url = gateway.url("/");
    let output = gateway
        .curl(&["-o", "/dev/null", "--tlsv1.2", "--tls-max", "1.2", &url])
        .await;
    assert!(!ok(&output), "TLS 1.2 accepted by the modern profile");
    let output = gateway.curl(&["-o", "/dev/null", "--tlsv1.3", &url]).await;
    assert!(ok(&output), "{output:?}");
}

fn certificate(dir: &std::path::Path, host: &str) -> CertificateFiles {
    SelfSigned::generate(&[host.to_string()])
        .unwrap()
        .write(&dir.join(host))
        .unwrap()
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        certificate(dir.path(), "a.test"),
        certificate(dir.path(), "b.test"),
    );
    let mut options = options(&upstream);
    options.tls.certificates = vec![a.clone(), b.clone()];
    let gateway = TestGateway::start(options).await;
    // Each name verifies against its own certificate only (tls_connect panics otherwise).
    let stream = tls_connect(gateway.addr, &b.cert, "b.test").await;
    let mut request = get("/");
    request
        .headers_mut()
        .insert("host", "b.test".parse().unwrap());
    assert_eq!(send_over(stream, request).await.0.status(), StatusCode::OK);
    tls_connect(gateway.addr, &a.cert, "a.test").await;
    // An unknown name gets the first certificate.
    tls_connect(gateway.addr, &a.cert, "a.test").await;
}

#[tokio::test]
async fn a_reload_swaps_certificates_and_keeps_open_connections() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path(), "localhost");
    let mut options = options(&upstream);
    options.tls.certificates = vec![first.clone()];
    let gateway = TestGateway::start(options).await;

    let io = hyper_util::rt::TokioIo::new(gateway.tls().await);
    let (mut open, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(
        open.send_request(get("/")).await.unwrap().status(),
        StatusCode::OK
    );

    // Replace the files as a certificate renewal would, then reload.
    let renewed = SelfSigned::generate(&["localhost".into()]).unwrap();
    let staging = dir.path().join("renewed");
    let files = renewed.write(&staging).unwrap();
    std::fs::rename(&files.cert, &first.cert).unwrap();
    std::fs::rename(&files.key, &first.key).unwrap();
    assert_eq!(gateway.reloader.reload().unwrap(), 1);

    // New handshakes present the renewed certificate; the open connection still works.
    let fresh = tls_connect(gateway.addr, &first.cert, "localhost").await;
    assert_eq!(send_over(fresh, get("/")).await.0.status(), StatusCode::OK);
    let answer = tokio::time::timeout(Duration::from_secs(5), open.send_request(get("/")));
    assert_eq!(answer.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_without_a_signal() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path(), "localhost");
    let mut options = options(&upstream);
    options.tls.certificates = vec![first.clone()];
    options.tls.watch_interval = Duration::from_millis(100);
    let gateway = TestGateway::start(options).await;
    let old_ca = dir.path().join("old-cert.pem");
    std::fs::copy(&first.cert, &old_ca).unwrap();

    let renewed = SelfSigned::generate(&["localhost".into()]).unwrap();
    let files = renewed.write(&dir.path().join("renewed")).unwrap();
    std::fs::rename(&files.key, &first.key).unwrap();
    std::fs::rename(&files.cert, &first.cert).unwrap();

    // Within a few checks, new handshakes present the renewed certificate.
    let start = std::time::Instant::now();
    loop {
        let presented = presented_certificate(gateway.addr).await;
        if presented == std::fs::read(&first.cert).map(|pem| der_of(&pem)).unwrap() {
            break;
        }
        assert_eq!(presented, der_of(&std::fs::read(&old_ca).unwrap()));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the renewed files were not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn der_of(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

/// The leaf certificate the gateway presents, read without verifying it.
async fn presented_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    handshake(addr, None).await.0
}

/// The leaf certificate and the stapled OCSP response of a handshake (TLS 1.2 or 1.3).
async fn handshake(
    addr: std::net::SocketAddr,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> (Vec<u8>, Vec<u8>) {
    #[derive(Debug)]
    struct AcceptAny(
        std::sync::Arc<rustls::crypto::CryptoProvider>,
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    );
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            ocsp: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.1.lock().unwrap() = ocsp.to_vec();
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let stapled = std::sync::Arc::default();
    let versions = match version {
        Some(version) => vec![version],
        None => rustls::DEFAULT_VERSIONS.to_vec(),
    };
    let verifier = AcceptAny(provider.clone(), std::sync::Arc::clone(&stapled));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let ocsp = stapled.lock().unwrap().clone();
    (leaf, ocsp)
}

#[tokio::test]
async fn a_configured_ocsp_response_is_stapled() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = certificate(dir.path(), "localhost");
    // The gateway staples the bytes as given; a DER SEQUENCE stands in for a CA's response.
    let response = [0x30, 0x03, 0x0a, 0x01, 0x00];
    let path = dir.path().join("ocsp.der");
    std::fs::write(&path, response).unwrap();
    files.ocsp = Some(path);
    let mut options = options(&upstream);
    options.tls.certificates = vec![files];
    let gateway = TestGateway::start(options).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (_, stapled) = handshake(gateway.addr, Some(version)).await;
        assert_eq!(stapled, response, "{version:?}");
    }
}

#[tokio::test]
async fn an_ocsp_file_that_is_not_der_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = certificate(dir.path(), "localhost");
    let path = dir.path().join("ocsp.pem");
    std::fs::write(&path, "-----BEGIN OCSP RESPONSE-----").unwrap();
    files.ocsp = Some(path);
    let mut options = palisade_gateway::GatewayOptions::new("http://127.0.0.1:1");
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.tls.certificates = vec![files];
    let err = palisade_gateway::Gateway::bind(options, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a DER OCSP response"), "{err}");
}

#[tokio::test]
async fn a_failed_reload_keeps_the_certificates_in_use() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path(), "localhost");
    let mut options = options(&upstream);
    options.tls.certificates = vec![first.clone()];
    let gateway = TestGateway::start(options).await;
    std::fs::write(&first.key, "not a key").unwrap();
    let err = gateway.reloader.reload().unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
    let stream = tls_connect(gateway.addr, &first.cert, "localhost").await;
    assert_eq!(send_over(stream, get("/")).await.0.status(), StatusCode::OK);
}
