//! GoTestWAF's payloads × encoders × placeholders through the gateway and through the anchor,
//! Debian's nginx with ModSecurity and the same CRS setup, at the same paranoia level: a
//! request is blocked when it never reaches the upstream. Checks the floor (the gateway
//! blocks at least as many attacks as the anchor, with no more false positives) and prints
//! both, with the CRS alone (no normalisation) beside them.
//! A test binary of its own: it starts nginx, and reads shared/data beside the repository.

#![cfg(feature = "modsecurity")]

#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine as _;
use palisade_waf::WafOptions;
use serde_yaml::Value;
use support::{TestGateway, Upstream, options, tls_connect};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Where the suite is: in `../shared/data` beside the repository, or `PALISADE_SHARED_DATA`
/// (a git worktree one level deeper than the clone, say).
fn suite() -> std::path::PathBuf {
    let shared = std::env::var_os("PALISADE_SHARED_DATA").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")),
        std::path::PathBuf::from,
    );
    shared.join("gotestwaf/testcases")
}

/// The sets compared: attacks, and the benign texts that should pass.
const SETS: [&str; 3] = ["owasp", "community", "false-pos"];

/// One request to replay.
struct Replay {
    set: &'static str,
    encoder: String,
    bytes: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_blocks_at_least_what_nginx_with_modsecurity_blocks() {
    let (replays, unsendable) = load(&suite());
    let upstream = Upstream::start().await;
    let waf = WafOptions {
        enabled: true,
        ..Default::default()
    };

    let started = Instant::now();
    let anchor = Nginx::start(&upstream, &waf).await;
    let nginx = replay(&replays, &upstream, Target::Plain(anchor.addr), "nginx").await;
    drop(anchor);
    let mut results = vec![("nginx + ModSecurity 3.0.9", nginx)];
    for (label, normalize) in [("Palisade, CRS only", false), ("Palisade (default)", true)] {
        let mut options = options(&upstream);
        // Detection is compared: the CSRF check (which nginx does not have) stays out of it.
        options.csrf.mode = palisade_guard::CsrfMode::Off;
        options.waf = WafOptions {
            normalize,
            ..waf.clone()
        };
        let gateway = TestGateway::start(options).await;
        let target = Target::Tls(gateway.addr, gateway.ca.clone());
        results.push((label, replay(&replays, &upstream, target, label).await));
    }

    let count = |set: &str| replays.iter().filter(|r| r.set == set).count();
    let by_set = |blocked: &HashSet<usize>| {
        let mut sets = BTreeMap::new();
        for i in blocked {
            *sets.entry(replays[*i].set).or_insert(0) += 1;
        }
        sets
    };
    let default = &results[2].1;
    let mut extra: Vec<_> = default.difference(&results[1].1).copied().collect();
    extra.sort();
    for i in extra.iter().filter(|i| replays[**i].set == "false-pos") {
        println!(
            "benign text blocked only normalised: {}",
            String::from_utf8_lossy(&replays[*i].bytes)
        );
    }
    let mut gained: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for i in &extra {
        *gained
            .entry((replays[*i].set, replays[*i].encoder.as_str()))
            .or_insert(0) += 1;
    }
    println!("blocked only with normalisation, by set and encoder: {gained:?}");
    let results: Vec<(&str, BTreeMap<&str, usize>)> = results
        .iter()
        .map(|(label, blocked)| (*label, by_set(blocked)))
        .collect();
    println!(
        "\nparanoia level 1, threshold 5; {unsendable} requests no HTTP client can send left out"
    );
    println!(
        "\n| set | requests | {} |",
        results.iter().map(|r| r.0).collect::<Vec<_>>().join(" | ")
    );
    println!("| --- | ---: |{}", " ---: |".repeat(results.len()));
    for set in SETS {
        let cells: Vec<String> = results
            .iter()
            .map(|(_, blocked)| {
                let n = blocked.get(set).copied().unwrap_or(0);
                format!("{n} ({:.1}%)", 100.0 * n as f64 / count(set) as f64)
            })
            .collect();
        println!("| {set} blocked | {} | {} |", count(set), cells.join(" | "));
    }
    println!("\nreplayed in {:.1} s", started.elapsed().as_secs_f64());

    let blocked = |i: usize, set: &str| results[i].1.get(set).copied().unwrap_or(0);
    let attacks = |i: usize| blocked(i, "owasp") + blocked(i, "community");
    assert!(
        attacks(0) > 0,
        "nginx blocked nothing: is its ModSecurity module loaded?"
    );
    assert!(
        attacks(2) >= attacks(0),
        "the gateway blocks fewer attacks than nginx"
    );
    assert!(
        blocked(2, "false-pos") <= blocked(0, "false-pos"),
        "the gateway blocks more benign texts than nginx"
    );
}

/// Where requests go.
enum Target {
    Tls(SocketAddr, std::path::PathBuf),
    Plain(SocketAddr),
}

/// Sends every request, one at a time; how many of each set never reached the upstream.
async fn replay(
    replays: &[Replay],
    upstream: &Upstream,
    target: Target,
    label: &str,
) -> HashSet<usize> {
    let marker = |i: usize| format!("{label}-{i}");
    for (i, replay) in replays.iter().enumerate() {
        let bytes = with_marker(&replay.bytes, &marker(i));
        match &target {
            Target::Tls(addr, ca) => {
                exchange(tls_connect(*addr, ca, "localhost").await, &bytes).await
            }
            Target::Plain(addr) => exchange(TcpStream::connect(addr).await.unwrap(), &bytes).await,
        }
    }
    let reached: HashSet<String> = upstream
        .received()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("x-replay")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .collect();
    (0..replays.len())
        .filter(|i| !reached.contains(&marker(*i)))
        .collect()
}

/// The request with an `X-Replay` header after its request line, to find it upstream.
fn with_marker(bytes: &[u8], marker: &str) -> Vec<u8> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut out = bytes[..line_end].to_vec();
    out.extend(format!("X-Replay: {marker}\r\n").as_bytes());
    out.extend(&bytes[line_end..]);
    out
}

/// Writes the request and reads until the peer closes (or four seconds pass).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), stream.read_to_end(&mut sink)).await;
}

/// Every request of the three sets, and how many were left out because no HTTP client would
/// send them (a header value with a line break).
fn load(suite: &Path) -> (Vec<Replay>, usize) {
    assert!(
        suite.is_dir(),
        "GoTestWAF's test cases are not at {}: the tests read ../shared/data beside the \
         repository (or PALISADE_SHARED_DATA)",
        suite.display()
    );
    let (mut replays, mut unsendable) = (Vec::new(), 0);
    for set in SETS {
        let mut files: Vec<_> = std::fs::read_dir(suite.join(set))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let doc = lenient_yaml(&std::fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
            let list = |key: &str| doc[key].as_sequence().cloned().unwrap_or_default();
            for payload in list("payload") {
                let payload = payload
                    .as_str()
                    .map_or_else(|| format!("{payload:?}"), str::to_string);
                for encoder in list("encoder") {
                    let encoded = encode(encoder.as_str().unwrap_or("Plain"), &payload);
                    for placeholder in list("placeholder") {
                        match request(&placeholder, &encoded, replays.len()) {
                            Some(bytes) => replays.push(Replay {
                                set,
                                encoder: encoder.as_str().unwrap_or("Plain").to_string(),
                                bytes,
                            }),
                            None => unsendable += 1,
                        }
                    }
                }
            }
        }
    }
    (replays, unsendable)
}

/// YAML, read leniently: a few of GoTestWAF's files have escapes in double-quoted strings that
/// YAML does not define (`"\'"`); such a backslash is taken literally, as GoTestWAF's own
/// reader does.
fn lenient_yaml(text: &str) -> Result<Value, serde_yaml::Error> {
    serde_yaml::from_str(text).or_else(|_| serde_yaml::from_str(&literal_backslashes(text)))
}

fn literal_backslashes(text: &str) -> String {
    const ESCAPES: &str = "0abtnvfre \"/\\N_LPxuU\t";
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let start = line
            .find("- \"")
            .map(|at| at + 3)
            .or_else(|| line.find(": \"").map(|at| at + 3));
        let Some(start) = start else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        out.push_str(&line[..start]);
        let mut chars = line[start..].chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.peek() {
                Some(next) if ESCAPES.contains(*next) => {
                    out.push('\\');
                    out.push(chars.next().unwrap());
                }
                Some('\'') => {}
                _ => out.push_str("\\\\"),
            }
        }
        out.push('\n');
    }
    out
}

/// GoTestWAF's encoders.
fn encode(encoder: &str, payload: &str) -> String {
    match encoder {
        "URL" => query_escape(payload),
        "Base64" => base64::engine::general_purpose::STANDARD.encode(payload),
        "Base64Flat" => base64::engine::general_purpose::STANDARD_NO_PAD.encode(payload),
        "JSUnicode" => js_unicode(payload),
        "XMLEntity" => payload
            .chars()
            .map(|c| format!("&#x{:x};", c as u32))
            .collect(),
        _ => payload.to_string(),
    }
}

/// Go's `url.QueryEscape`: unreserved bytes stay, space is `+`, the rest `%XX`.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn js_unicode(text: &str) -> String {
    text.encode_utf16()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect()
}

/// The request GoTestWAF's placeholder builds for `payload`, as bytes; `None` for one no HTTP
/// client sends.
fn request(placeholder: &Value, payload: &str, n: usize) -> Option<Vec<u8>> {
    let name = format!(
        "{:010x}",
        (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24
    );
    let form = "application/x-www-form-urlencoded";
    if let Some(raw) = placeholder.get("RawRequest") {
        let fill = |v: &Value| {
            v.as_str()
                .unwrap_or_default()
                .replace("{{payload}}", payload)
        };
        let mut headers = Vec::new();
        for (key, value) in raw["headers"].as_mapping().cloned().unwrap_or_default() {
            headers.push((fill(&key), fill(&value)));
        }
        let body = fill(&raw["body"]);
        return build(
            &fill(&raw["method"]),
            &target(&fill(&raw["path"])),
            headers,
            &body,
        );
    }
    let header = |n: &str, v: &str| vec![(n.to_string(), v.to_string())];
    match placeholder.as_str().unwrap_or_default() {
        "URLPath" => build("GET", &target(&format!("/{payload}")), vec![], ""),
        "URLParam" => build("GET", &target(&format!("/?{name}={payload}")), vec![], ""),
        "Header" => build("GET", "/", header(&format!("X-{name}"), payload), ""),
        "UserAgent" => build("GET", "/", header("User-Agent", payload), ""),
        "HTMLForm" => build(
            "POST",
            "/",
            header("Content-Type", form),
            &format!("{name}={payload}"),
        ),
        "HTMLMultipartForm" => {
            let boundary = format!("{name}{name}");
            let body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{payload}\r\n--{boundary}--\r\n"
            );
            let content_type = format!("multipart/form-data; boundary={boundary}");
            build("POST", "/", header("Content-Type", &content_type), &body)
        }
        "JSONRequest" => {
            let body = format!("{{\"test\":true, \"{name}\": \"{}\"}}", js_unicode(payload));
            build(
                "POST",
                "/",
                header("Content-Type", "application/json"),
                &body,
            )
        }
        "JSONBody" => build(
            "POST",
            "/",
            header("Content-Type", "application/json"),
            payload,
        ),
        "XMLBody" => build("POST", "/", header("Content-Type", "text/xml"), payload),
        "RequestBody" => build("POST", "/", vec![], payload),
        other => panic!("placeholder {other} is not replayed"),
    }
}

/// A request target as Go's client sends it: bytes that cannot appear in one are
/// percent-encoded.
fn target(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            0x21..=0x7e => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn build(
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
    body: &str,
) -> Option<Vec<u8>> {
    if headers
        .iter()
        .any(|(n, v)| v.contains(['\r', '\n', '\0']) || n.contains(['\r', '\n', ':']))
    {
        return None;
    }
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        request.push_str("User-Agent: Mozilla/5.0 (X11; Linux x86_64) GoTestWAF-replay\r\n");
    }
    request.push_str("Accept: */*\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    request.push_str(body);
    Some(request.into_bytes())
}

/// Debian's nginx with its ModSecurity module, on a free loopback port in front of the test
/// upstream, loading the same ModSecurity configuration the gateway generates; stopped on drop.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(upstream: &Upstream, waf: &WafOptions) -> Self {
        let module = "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so";
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or("nginx");
        assert!(
            Path::new(module).exists() && (binary != "nginx" || which("nginx")),
            "the anchor needs Debian's nginx and its ModSecurity module: apt-get install nginx \
             libnginx-mod-http-modsecurity"
        );
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("modsecurity.conf");
        std::fs::write(&rules, waf.modsecurity_config(10 * 1024 * 1024).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = format!(
            "load_module {module};\nmaster_process off;\ndaemon off;\nworker_processes 1;\n\
             error_log {dir}/error.log;\npid {dir}/nginx.pid;\nevents {{}}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {dir}/body;\nproxy_temp_path {dir}/proxy;\n\
             client_max_body_size 10m;\n\
             server {{\nlisten {addr};\nmodsecurity on;\nmodsecurity_rules_file {rules};\n\
             location / {{ proxy_pass {upstream}; proxy_http_version 1.1; \
             proxy_set_header Host $host; }}\n}}\n}}\n",
            dir = dir.path().display(),
            rules = rules.display(),
            upstream = upstream.url(),
        );
        let conf_file = dir.path().join("nginx.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let nginx = Self {
            addr,
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx did not start listening on {addr}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
