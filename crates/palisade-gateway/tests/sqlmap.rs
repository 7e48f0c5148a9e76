//! sqlmap (Debian's) against a deliberately injectable SQLite endpoint: it finds the injection
//! when it talks to the endpoint directly, and none through the gateway with the WAF on.
//! A test binary of its own: it runs an external scanner for a minute.

#![cfg(feature = "modsecurity")]

#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_waf::WafOptions;
use support::TestGateway;
use tokio::net::TcpListener;

/// An HTTP application on loopback whose `/item?id=` is pasted into SQL unescaped.
async fn injectable_app() -> SocketAddr {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO items (name) VALUES ('lamp'), ('chair'), ('table');
         CREATE TABLE users (id INTEGER PRIMARY KEY, password TEXT);
         INSERT INTO users (password) VALUES ('s3cret');",
    )
    .unwrap();
    let db = Arc::new(Mutex::new(db));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let db = db.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| item(req, db.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The injectable handler: the `id` parameter goes into the query as text.
async fn item(
    req: Request<Incoming>,
    db: Arc<Mutex<rusqlite::Connection>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let query = req.uri().query().unwrap_or("");
    let id = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("id="))
        .unwrap_or("1");
    let id = percent_decode(id);
    let sql = format!("SELECT name FROM items WHERE id = {id}");
    let db = db.lock().unwrap();
    let answer = db.prepare(&sql).and_then(|mut statement| {
        let names = statement.query_map([], |row| row.get::<_, String>(0))?;
        names.collect::<Result<Vec<_>, _>>()
    });
    let (status, body) = match answer {
        Ok(names) => (
            200,
            format!(
                "<html><body><ul>{}</ul></body></html>",
                names
                    .iter()
                    .map(|n| format!("<li>{n}</li>"))
                    .collect::<String>()
            ),
        ),
        Err(err) => (
            500,
            format!("<html><body>database error: {err}</body></html>"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    Ok(response)
}

fn percent_decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    let bytes = spaced.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs sqlmap against `url` with a browser's User-Agent (its own is a scanner's, which the
/// CRS refuses by itself) and `extra` options; whether it reports an injection point, and its
/// output.
async fn sqlmap(url: &str, dir: &Path, extra: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new("sqlmap")
        .args([
            "-u",
            url,
            "--batch",
            "--flush-session",
            "--disable-coloring",
            "--timeout",
            "5",
        ])
        .args(["--random-agent", "--level", "2", "--risk", "2"])
        .args(extra)
        .args([
            "--retries",
            "0",
            "--threads",
            "4",
            "--technique",
            "BEUT",
            "--dbms",
            "SQLite",
        ])
        .arg(format!("--output-dir={}", dir.display()))
        .env("HOME", dir)
        .output()
        .await
        .expect("sqlmap runs (apt-get install sqlmap)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let found = text.contains("identified the following injection point");
    (found, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlmap_finds_the_injection_directly_and_none_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let app = injectable_app().await;

    let (found, output) = sqlmap(&format!("http://{app}/item?id=1"), dir.path(), &[]).await;
    assert!(
        found,
        "sqlmap found no injection in the injectable endpoint itself:\n{output}"
    );

    let mut options = palisade_gateway::GatewayOptions::new(format!("http://{app}"));
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.csrf.mode = palisade_guard::CsrfMode::Off;
    options.waf = WafOptions {
        enabled: true,
        ..Default::default()
    };
    let gateway = TestGateway::start(options).await;
    let url = format!("https://127.0.0.1:{}/item?id=1", gateway.addr.port());
    // Plain, then with sqlmap's evasions against keyword filters.
    for extra in [
        &[][..],
        &["--tamper", "space2comment,between,randomcase,charencode"],
    ] {
        let (found, output) = sqlmap(&url, dir.path(), extra).await;
        println!("sqlmap {extra:?} through the gateway:\n{output}");
        assert!(
            !found,
            "sqlmap found an injection through the gateway:\n{output}"
        );
        // The first request (id=1) reached the application: the block is the injection's.
        assert!(
            output.contains("target URL content is stable")
                && output.contains("not appear to be injectable"),
            "sqlmap did not test the parameter through the gateway:\n{output}"
        );
    }
}
