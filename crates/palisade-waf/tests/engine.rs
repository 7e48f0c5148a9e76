//! The libmodsecurity engine with Debian's CRS: what it matches, blocks and scores, as
//! received and normalised.

#![cfg(libmodsecurity)]

use bytes::Bytes;
use palisade_waf::{
    RequestView, RuleEngine, WafOptions, layer::inspect, modsecurity::ModSecurityEngine,
};

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> RequestView {
    let mut all = vec![
        ("host", "localhost"),
        ("user-agent", "palisade-test"),
        ("accept", "*/*"),
    ];
    all.extend_from_slice(headers);
    RequestView {
        method: method.into(),
        uri: uri.into(),
        version: "1.1",
        headers: all
            .iter()
            .map(|(n, v)| (Bytes::from(n.to_string()), Bytes::from(v.to_string())))
            .collect(),
        body: Bytes::from(body.to_string()),
        client: "127.0.0.1:40000".parse().unwrap(),
        server: "127.0.0.1:443".parse().unwrap(),
    }
}

fn engine(options: WafOptions) -> ModSecurityEngine {
    ModSecurityEngine::new(&WafOptions {
        enabled: true,
        ..options
    })
    .unwrap()
}

fn form(body: &str) -> RequestView {
    let length = body.len().to_string();
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", length.as_str()),
    ];
    request("POST", "/", &headers, body)
}

#[test]
fn sql_injection_in_a_form_is_blocked_with_its_rule_and_score() {
    let engine = engine(WafOptions::default());
    let verdict = engine.inspect(&form("var=1234 OR 1=1")).unwrap();
    let ids: Vec<u32> = verdict.matches.iter().map(|m| m.id).collect();
    assert!(verdict.block, "{verdict:?}");
    assert!(ids.contains(&942100), "{ids:?}");
    assert!(ids.contains(&949110), "{ids:?}");
    assert!(verdict.anomaly_score.unwrap() >= 5, "{verdict:?}");
    assert!(engine.name().contains("ModSecurity"), "{}", engine.name());
}

#[test]
fn a_benign_request_matches_nothing() {
    let engine = engine(WafOptions::default());
    let verdict = engine
        .inspect(&request("GET", "/products?page=2&sort=price", &[], ""))
        .unwrap();
    assert!(!verdict.block && verdict.matches.is_empty(), "{verdict:?}");
    let verdict = engine
        .inspect(&form("name=Ada+Lovelace&comment=Nice+shop"))
        .unwrap();
    assert!(!verdict.block && verdict.matches.is_empty(), "{verdict:?}");
}

#[test]
fn detect_only_reports_what_it_would_block() {
    let engine = engine(WafOptions {
        detect_only: true,
        ..Default::default()
    });
    let verdict = engine.inspect(&form("var=1234 OR 1=1")).unwrap();
    assert!(verdict.block, "{verdict:?}");
    assert!(
        verdict.matches.iter().any(|m| m.id == 942100),
        "{verdict:?}"
    );
}

#[test]
fn an_excluded_rule_does_not_run() {
    let engine = engine(WafOptions {
        exclusions: vec![942100],
        ..Default::default()
    });
    let verdict = engine.inspect(&form("var=1234 OR 1=1")).unwrap();
    assert!(
        !verdict.matches.iter().any(|m| m.id == 942100),
        "{verdict:?}"
    );
}

#[test]
fn the_threshold_decides_whether_a_match_blocks() {
    // 920350 (Host is an IP address) is a warning: 3 points, below the default 5.
    let host = request("GET", "/", &[], "");
    let mut host = host;
    host.headers[0].1 = Bytes::from_static(b"127.0.0.1");
    let lenient = engine(WafOptions::default()).inspect(&host).unwrap();
    assert!(
        lenient.matches.iter().any(|m| m.id == 920350),
        "{lenient:?}"
    );
    assert!(!lenient.block, "{lenient:?}");
    let strict = engine(WafOptions {
        inbound_anomaly_threshold: 1,
        ..Default::default()
    });
    assert!(strict.inspect(&host).unwrap().block);
}

#[test]
fn a_zero_width_obfuscated_payload_is_caught_only_normalised() {
    let engine = engine(WafOptions::default());
    // `1' UNION SELECT password FROM users--`, zero-width spaces inside the keywords, all
    // percent-encoded twice.
    let uri = "/?q=1%2527%2520UN%25E2%2580%258BION%2520SEL%25E2%2580%258BECT%2520password\
               %2520FROM%2520users--";
    let request = request("GET", uri, &[], "");
    let raw = engine.inspect(&request).unwrap();
    assert!(!raw.block && raw.matches.is_empty(), "{raw:?}");
    let verdict = inspect(&engine, &request, true).unwrap();
    assert!(verdict.block, "{verdict:?}");
    assert!(
        verdict.matches.iter().any(|m| m.id == 942100),
        "{verdict:?}"
    );
    assert!(
        verdict.matches.iter().any(|m| m.id == 949110),
        "{verdict:?}"
    );
    assert!(!inspect(&engine, &request, false).unwrap().block);
}

#[test]
fn a_base64_payload_is_caught_decoded() {
    let engine = engine(WafOptions::default());
    // "' UNION SELECT password FROM users --"
    let payload = "JyBVTklPTiBTRUxFQ1QgcGFzc3dvcmQgRlJPTSB1c2VycyAtLQ==";
    let request = request("GET", &format!("/?token={payload}"), &[], "");
    assert!(!engine.inspect(&request).unwrap().block);
    let verdict = inspect(&engine, &request, true).unwrap();
    assert!(verdict.block, "{verdict:?}");
    assert!(
        verdict.matches.iter().any(|m| m.id / 1000 == 942),
        "{verdict:?}"
    );
}
