//! A small HTTP receiver on loopback that records every request (for webhook, Slack and ping
//! channels) and answers with statuses a test chooses.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, say.
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

#[derive(Debug, Default)]
struct Shared {
    received: Vec<Received>,
    statuses: VecDeque<u16>,
}

/// The receiver; it stops listening when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    port: u16,
}

impl WebhookReceiver {
    /// Listens on a free loopback port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (state, stopped) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = handle(stream, &state);
                }
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            shared,
            stop,
            port,
        }
    }

    /// The next `n` requests are answered with `status` (instead of 200).
    pub fn answer_next(&self, n: usize, status: u16) {
        let mut shared = self.shared.lock().unwrap();
        shared.statuses.extend(std::iter::repeat_n(status, n));
    }

    /// Every request so far, including those answered with an error.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// Waits (polling, up to 60 s) until `done` holds for the requests received; panics with
    /// them otherwise.
    pub fn wait_until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never happened; received: {received:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(stream: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            }
            headers.push((name, value));
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let status = {
        let mut shared = shared.lock().unwrap();
        shared.received.push(Received {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        shared.statuses.pop_front().unwrap_or(200)
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )?;
    stream.flush()
}
