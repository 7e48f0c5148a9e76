//! External graders on the gateway's defaults: sslyze's check against Mozilla's intermediate
//! TLS configuration, and the MDN HTTP Observatory. `scripts/test` installs them and names them
//! in `PALISADE_SSLYZE` and `PALISADE_OBSERVATORY` (the scanner's `src/scan.js`); a test whose
//! grader is not named fails and says how to get it, as every test whose server is missing.

#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};

use palisade_gateway::CertificateFiles;
use support::{TestGateway, Upstream, options};

/// A test CA and a `localhost` certificate it signed, as graders want a chain they can verify.
fn ca_and_leaf(dir: &Path) -> (PathBuf, CertificateFiles) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "Palisade test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    // A chain as a public CA issues it: authority key identifier, a validity of months.
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    let today = jiff::Zoned::now().date();
    let day = |date: jiff::civil::Date| {
        rcgen::date_time_ymd(date.year().into(), date.month() as u8, date.day() as u8)
    };
    leaf.not_before = day(today.yesterday().unwrap());
    leaf.not_after = day(today.checked_add(jiff::Span::new().days(90)).unwrap());
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let files = CertificateFiles {
        cert: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
        ocsp: None,
    };
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    (ca_path, files)
}

/// The grader named by `variable`; these tests never skip silently.
fn grader(variable: &str) -> PathBuf {
    std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{variable} is not set: run the tests with scripts/test, which installs the grader and sets it")
    })
}

async fn start(dir: &Path) -> (Upstream, TestGateway, PathBuf) {
    let upstream = Upstream::start_with_page_at_root().await;
    let (ca, files) = ca_and_leaf(dir);
    let mut options = options(&upstream);
    options.tls.certificates = vec![files];
    let gateway = TestGateway::start(options).await;
    (upstream, gateway, ca)
}

#[tokio::test(flavor = "multi_thread")]
async fn sslyze_finds_the_defaults_compliant_with_mozilla_intermediate() {
    let sslyze = grader("PALISADE_SSLYZE");
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, gateway, ca) = start(dir.path()).await;
    let output = tokio::process::Command::new(sslyze)
        .arg("--mozilla_config=intermediate")
        .arg(format!("--certinfo_ca_file={}", ca.display()))
        .arg(format!("localhost:{}", gateway.addr.port()))
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("OK - Compliant"), "{report}");
}

/// The Observatory's JSON verdict on the gateway.
async fn observatory(scan: &Path, ca: &Path, port: u16) -> serde_json::Value {
    let output = tokio::process::Command::new("node")
        .arg(scan)
        .arg(format!("localhost:{port}"))
        .env("NODE_EXTRA_CA_CERTS", ca)
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_observatory_grades_the_defaults_a_plus() {
    let scan = grader("PALISADE_OBSERVATORY");
    let dir = tempfile::tempdir().unwrap();
    let (upstream, gateway, ca) = start(dir.path()).await;
    let verdict = observatory(&scan, &ca, gateway.addr.port()).await;
    assert_eq!(verdict["scan"]["grade"], "A+", "{verdict:#}");
    assert_eq!(verdict["scan"]["testsFailed"], 0, "{verdict:#}");
    // It graded the page with inline code, whose policy carried a nonce.
    let csp = &verdict["tests"]["content-security-policy"];
    assert_eq!(
        csp["result"], "csp-implemented-with-no-unsafe",
        "{verdict:#}"
    );
    let script_src = csp["data"]["script-src"].to_string();
    assert!(script_src.contains("'nonce-"), "{verdict:#}");
    assert!(
        upstream.received().iter().any(|r| r.target == "/"),
        "the scanner fetched the page"
    );
}
