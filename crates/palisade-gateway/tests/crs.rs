//! The CRS 3.3.4 regression suite replayed through the gateway: each stage's request is sent as
//! raw bytes over TLS to a gateway at paranoia level 4 in front of the test upstream, and the
//! rules its security events name are compared with the stage's `log_contains` and
//! `no_log_contains`. Fails below a 95% pass rate; prints the table per rule family.
//! A test binary of its own, as it installs the process-wide tracing subscriber.

#![cfg(feature = "modsecurity")]

#[path = "waf/recorder.rs"]
#[allow(dead_code)]
mod recorder;
#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use palisade_waf::WafOptions;
use recorder::{Event, Recorder};
use serde_yaml::Value;
use support::{TestGateway, Upstream, options, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the suite is: in `../shared/data` beside the repository, or `PALISADE_SHARED_DATA`
/// (a git worktree one level deeper than the clone, say).
fn suite() -> std::path::PathBuf {
    let shared = std::env::var_os("PALISADE_SHARED_DATA").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")),
        std::path::PathBuf::from,
    );
    shared.join("crs-3.3.4-regression")
}

/// What one stage expects.
#[derive(Debug, Default)]
struct Expected {
    log_contains: Option<u32>,
    no_log_contains: Option<u32>,
    status: Vec<u16>,
    expect_error: bool,
}

/// One stage: the bytes to send and what should happen.
struct Stage {
    request: Vec<u8>,
    expected: Expected,
}

/// One test case of a file.
struct Case {
    family: String,
    title: String,
    stages: Vec<Stage>,
}

/// What the gateway did with one request.
#[derive(Debug, Default)]
struct Outcome {
    status: Option<u16>,
    /// The ids of `attack` events.
    rules: Vec<u32>,
    /// The rule of a refusal made before the WAF (strict parsing, limits), if any.
    refused_before: Option<String>,
}

/// How a stage came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Judgement {
    /// The WAF did what the stage expects.
    Pass,
    /// The stage expects a rule to fire and the gateway refused the request before the WAF,
    /// with an event of its own (ambiguous framing, an unreadable head): the attack is stopped
    /// and reported, by another rule than the CRS's.
    RefusedBefore,
    Fail,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crs_regression_suite_passes_at_paranoia_level_4() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    // The CRS alone is the yardstick of the engine; the gateway's default adds normalisation.
    let plain = replay(&recorder, false).await;
    let normalised = replay(&recorder, true).await;
    assert!(
        plain >= 0.95,
        "without normalisation: pass rate {:.1}% is below 95%",
        plain * 100.0
    );
    assert!(
        normalised >= 0.95,
        "with normalisation: pass rate {:.1}% is below 95%",
        normalised * 100.0
    );
}

/// Replays the suite through a gateway with or without normalisation; the pass rate.
async fn replay(recorder: &Recorder, normalize: bool) -> f64 {
    let suite = suite();
    assert!(
        suite.is_dir(),
        "the CRS regression suite is not at {}: the tests read ../shared/data beside the \
         repository (or PALISADE_SHARED_DATA)",
        suite.display()
    );
    let (cases, disabled, unreadable) = load(&suite);
    assert!(
        unreadable.is_empty(),
        "files that do not parse: {unreadable:?}"
    );
    assert!(cases.len() > 1000, "only {} cases found", cases.len());

    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.timeouts.header_read = Duration::from_secs(2);
    options.timeouts.body_read = Duration::from_secs(1);
    // The rule set alone is measured: the CSRF check would refuse cookie-carrying posts first.
    options.csrf.mode = palisade_guard::CsrfMode::Off;
    options.waf = WafOptions {
        enabled: true,
        paranoia_level: 4,
        // Every scoring match blocks, so each one is named in an event, as the CRS project
        // reads every match from the log.
        inbound_anomaly_threshold: 1,
        normalize,
        ..Default::default()
    };
    let gateway = TestGateway::start(options).await;

    let started = Instant::now();
    let mut table: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    for case in &cases {
        let mut worst = Judgement::Pass;
        for stage in &case.stages {
            let outcome = send(&gateway, recorder, &stage.request).await;
            let judgement = judge(&stage.expected, &outcome);
            if judgement == Judgement::RefusedBefore {
                refused.push(format!("{}: {:?}", case.title, outcome.refused_before));
            }
            if judgement == Judgement::Fail {
                failures.push(format!(
                    "{}: expected {:?}, got {:?}",
                    case.title, stage.expected, outcome
                ));
            }
            worst = worst.max(judgement);
        }
        let row = table.entry(case.family.clone()).or_default();
        row[worst as usize] += 1;
    }

    let total: [usize; 3] = table.values().fold([0; 3], |sum, row| {
        [sum[0] + row[0], sum[1] + row[1], sum[2] + row[2]]
    });
    println!("\nnormalize = {normalize}");
    println!("\n| family | cases | passed | refused before the WAF | failed | pass rate |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (family, row) in table.iter().chain([(&"all".to_string(), &total)]) {
        let cases = row.iter().sum::<usize>();
        let rate = 100.0 * (row[0] + row[1]) as f64 / cases as f64;
        println!(
            "| {family} | {cases} | {} | {} | {} | {rate:.1}% |",
            row[0], row[1], row[2]
        );
    }
    println!(
        "\n{} cases in {:.1} s; {disabled} disabled by their files; failures:",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    for failure in &failures {
        println!("  {failure}");
    }
    println!("refused before the WAF:");
    for case in &refused {
        println!("  {case}");
    }
    let cases_run = total.iter().sum::<usize>();
    (total[0] + total[1]) as f64 / cases_run as f64
}

/// Every enabled case of every file, the count of disabled ones, and the files that do not
/// parse.
fn load(suite: &Path) -> (Vec<Case>, usize, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = Vec::new();
    for family in std::fs::read_dir(suite).unwrap().flatten() {
        if !family.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(family.path()).unwrap().flatten() {
            if file.path().extension().is_some_and(|e| e == "yaml") {
                files.push(file.path());
            }
        }
    }
    files.sort();
    let (mut cases, mut disabled, mut unreadable) = (Vec::new(), 0, Vec::new());
    for file in files {
        let family = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let Ok(doc) = serde_yaml::from_str::<Value>(&text) else {
            unreadable.push(file);
            continue;
        };
        let tests = doc["tests"].as_sequence().cloned().unwrap_or_default();
        if doc["meta"]["enabled"].as_bool() == Some(false) {
            disabled += tests.len();
            continue;
        }
        for test in tests {
            let stages = test["stages"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    if s.get("stage").is_some() {
                        &s["stage"]
                    } else {
                        s
                    }
                })
                .map(stage)
                .collect();
            let title = test["test_title"]
                .as_str()
                .map_or_else(|| format!("{test:?}"), str::to_string);
            cases.push(Case {
                family: family.clone(),
                title,
                stages,
            });
        }
    }
    (cases, disabled, unreadable)
}

fn stage(stage: &Value) -> Stage {
    let input = &stage["input"];
    let output = &stage["output"];
    let request = if let Some(encoded) = input["encoded_request"].as_str() {
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .unwrap()
    } else if let Some(raw) = input["raw_request"].as_str() {
        bytes_of(raw)
    } else {
        build(input)
    };
    let rule = |name: &str| output[name].as_str().and_then(rule_id);
    let status = match &output["status"] {
        Value::Number(n) => vec![n.as_u64().unwrap_or(0) as u16],
        Value::Sequence(list) => list
            .iter()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u16)
            .collect(),
        _ => Vec::new(),
    };
    Stage {
        request,
        expected: Expected {
            log_contains: rule("log_contains"),
            no_log_contains: rule("no_log_contains"),
            status,
            expect_error: output["expect_error"].as_bool().unwrap_or(false),
        },
    }
}

/// `id "942100"` → 942100 (and a bare `930120`).
fn rule_id(pattern: &str) -> Option<u32> {
    let digits: String = pattern
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|_| digits.len() == 6)
}

/// A YAML string as bytes: one byte per character when every character is one (the suite
/// writes raw bytes as `\xNN`), UTF-8 otherwise.
fn bytes_of(text: &str) -> Vec<u8> {
    if text.chars().all(|c| (c as u32) < 0x100) {
        text.chars().map(|c| c as u8).collect()
    } else {
        text.as_bytes().to_vec()
    }
}

/// The request a stage's method, uri, version, headers and data describe, completed as the
/// CRS's test runner (ftw) does: for data, a `Content-Length` and a form `Content-Type` when
/// the stage gives none; `Connection: close`.
fn build(input: &Value) -> Vec<u8> {
    let method = input["method"].as_str().unwrap_or("GET");
    let uri = input["uri"].as_str().unwrap_or("/");
    let version = input["version"].as_str().unwrap_or("HTTP/1.1");
    // A list of lines is one body, the lines joined by CRLF.
    let data = match &input["data"] {
        Value::Sequence(lines) => lines.iter().map(scalar).collect::<Vec<_>>().join("\r\n"),
        other => scalar(other),
    };
    let data = data.into_bytes();
    let mut request = format!("{method} {uri} {version}\r\n").into_bytes();
    let mut names = Vec::new();
    if let Some(headers) = input["headers"].as_mapping() {
        for (name, value) in headers {
            let name = scalar(name);
            names.push(name.to_ascii_lowercase());
            request.extend(name.as_bytes());
            request.extend(b": ");
            request.extend(bytes_of(&scalar(value)));
            request.extend(b"\r\n");
        }
    }
    let has = |name: &str| names.iter().any(|n| n == name);
    if !data.is_empty() && !has("content-length") && !has("transfer-encoding") {
        request.extend(format!("Content-Length: {}\r\n", data.len()).as_bytes());
    }
    if !data.is_empty() && !has("content-type") {
        request.extend(b"Content-Type: application/x-www-form-urlencoded\r\n");
    }
    if !has("connection") {
        request.extend(b"Connection: close\r\n");
    }
    request.extend(b"\r\n");
    request.extend(data);
    request
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

/// Sends one request and gathers what the gateway did: its status and the events it emitted.
async fn send(gateway: &TestGateway, recorder: &Recorder, request: &[u8]) -> Outcome {
    let mut stream = tls_connect(gateway.addr, &gateway.ca, "localhost").await;
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    // Until the gateway closes, or a whole first response is in (a kept-alive connection).
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let left = deadline - Instant::now();
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
        if complete(&answer) {
            break;
        }
    }
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok());
    let events = recorder.take_all().await;
    outcome(status, &events)
}

/// Whether `answer` holds a whole response with a `Content-Length`.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|length| answer.len() >= end + 4 + length)
}

fn outcome(status: Option<u16>, events: &[Event]) -> Outcome {
    let mut outcome = Outcome {
        status,
        ..Outcome::default()
    };
    for event in events {
        if event.get("kind") == "attack" {
            outcome.rules.extend(event.rule_ids());
        } else {
            outcome.refused_before = Some(event.get("rule").to_string());
        }
    }
    outcome
}

fn judge(expected: &Expected, outcome: &Outcome) -> Judgement {
    if let Some(rule) = expected.log_contains {
        if outcome.rules.contains(&rule) {
            return Judgement::Pass;
        }
        if outcome.refused_before.is_some() {
            return Judgement::RefusedBefore;
        }
        return Judgement::Fail;
    }
    if let Some(rule) = expected.no_log_contains {
        return if outcome.rules.contains(&rule) {
            Judgement::Fail
        } else {
            Judgement::Pass
        };
    }
    if expected.expect_error {
        let refused = outcome.status.is_none_or(|s| s == 400) || outcome.refused_before.is_some();
        return if refused {
            Judgement::Pass
        } else {
            Judgement::Fail
        };
    }
    if !expected.status.is_empty() {
        let matched = outcome.status.is_some_and(|s| expected.status.contains(&s));
        return if matched {
            Judgement::Pass
        } else {
            Judgement::Fail
        };
    }
    Judgement::Pass
}
