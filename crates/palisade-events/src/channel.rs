//! Alert channels (a JSON webhook, a Slack-compatible incoming webhook, email over SMTP, and a
//! dead-man's-switch ping URL) and the dispatcher that delivers to them from its own thread,
//! retrying what failed, so that a broken channel never holds up a backup.
//!
//! A channel's URL and password are secrets: they are held in [`Secret`], never logged, and
//! removed from every error text before it leaves this module.

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Clock, Error, Notice, Result, Rule};

/// A secret string (a webhook URL with its token, an SMTP password): shown as `<redacted>`
/// by `Debug`, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret itself; keep it out of logs and messages.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption at all: the password and the message cross the network in clear. Only
    /// for a relay on the same host.
    DangerPlaintext,
}

/// Email settings.
#[derive(Debug, Clone)]
pub struct EmailOptions {
    /// The SMTP server's host name (also the name its certificate must carry).
    pub host: String,
    /// Its port (default: 587 for STARTTLS, 465 for TLS, 25 without).
    pub port: Option<u16>,
    /// Connection protection.
    pub tls: SmtpTls,
    /// User name for SMTP AUTH.
    pub username: Option<String>,
    /// Password for SMTP AUTH.
    pub password: Option<Secret>,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// PEM file of a CA to trust besides the built-in roots (a private relay's own CA).
    pub ca_file: Option<PathBuf>,
}

impl EmailOptions {
    /// The port connected to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::DangerPlaintext => 25,
        })
    }

    /// Checks the addresses; the error names the bad one.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for address in std::iter::once(&self.from).chain(&self.to) {
            address
                .parse::<lettre::message::Mailbox>()
                .map_err(|err| format!("`{address}` is not an email address: {err}"))?;
        }
        if self.to.is_empty() {
            return Err("an email channel needs at least one address in `to`".into());
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(
                "set both `username` and `password` (or `password_file`), or neither".into(),
            );
        }
        Ok(())
    }
}

/// Where a channel sends.
#[derive(Debug, Clone)]
pub enum ChannelKind {
    /// POST of the notice as JSON.
    Webhook {
        /// The URL.
        url: Secret,
    },
    /// POST of `{"text": ...}`, as Slack's (and Mattermost's, and others') incoming webhooks
    /// take it.
    Slack {
        /// The URL.
        url: Secret,
    },
    /// An email per notice.
    Email(EmailOptions),
    /// A dead-man's switch (healthchecks.io style): `URL/start` when a run starts, `URL` when
    /// it succeeds, `URL/fail` when it fails. It gets no alerts: the service alerts when the
    /// pings stop.
    Ping {
        /// The check's URL.
        url: Secret,
    },
}

impl ChannelKind {
    /// The kind's name in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Slack { .. } => "slack",
            Self::Email(_) => "email",
            Self::Ping { .. } => "ping",
        }
    }
}

/// One configured channel.
#[derive(Debug, Clone)]
pub struct Channel {
    /// How messages name it: `alerts[1] (webhook)`.
    pub name: String,
    /// Where it sends.
    pub kind: ChannelKind,
    /// The rules it is told about.
    pub rules: Vec<Rule>,
    /// The jobs it is told about (`None`: all).
    pub jobs: Option<Vec<String>>,
}

/// A stage of a run, for ping channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RunPhase {
    /// The run started.
    Start,
    /// It saved a snapshot.
    Success,
    /// It failed.
    Fail,
}

/// The user agent and the timeout of every request.
const TIMEOUT: Duration = Duration::from_secs(15);

impl Channel {
    /// Whether `notice` goes to this channel.
    pub fn wants(&self, notice: &Notice) -> bool {
        if matches!(self.kind, ChannelKind::Ping { .. }) {
            return notice.rule == Rule::Test;
        }
        if notice.rule == Rule::Test {
            return true;
        }
        self.rules.contains(&notice.rule) && self.covers(notice.job.as_deref())
    }

    /// Whether this is a ping channel for `job`.
    pub fn wants_run(&self, job: &str) -> bool {
        matches!(self.kind, ChannelKind::Ping { .. }) && self.covers(Some(job))
    }

    fn covers(&self, job: Option<&str>) -> bool {
        match (&self.jobs, job) {
            (Some(jobs), Some(job)) => jobs.iter().any(|j| j == job),
            _ => true,
        }
    }

    /// Sends `notice` now.
    pub fn send(&self, notice: &Notice) -> Result<()> {
        match &self.kind {
            ChannelKind::Webhook { url } => {
                #[derive(Serialize)]
                struct Body<'a> {
                    palisade: &'a str,
                    title: String,
                    #[serde(flatten)]
                    notice: &'a Notice,
                }
                let body = serde_json::to_string(&Body {
                    palisade: env!("CARGO_PKG_VERSION"),
                    title: notice.title(),
                    notice,
                })
                .expect("a notice serialises");
                self.post(url, "application/json", &body)
            }
            ChannelKind::Slack { url } => {
                let body = serde_json::json!({ "text": notice.text() }).to_string();
                self.post(url, "application/json", &body)
            }
            ChannelKind::Email(options) => self.email(options, notice),
            ChannelKind::Ping { url } => {
                // A test only logs an event (healthchecks' `/log`); it changes no state.
                self.post_to(url, "/log", "text/plain", &notice.text())
            }
        }
    }

    /// Pings a dead-man's switch for one run stage.
    pub fn ping(&self, phase: RunPhase, detail: &str) -> Result<()> {
        let ChannelKind::Ping { url } = &self.kind else {
            return Ok(());
        };
        let suffix = match phase {
            RunPhase::Start => "/start",
            RunPhase::Success => "",
            RunPhase::Fail => "/fail",
        };
        let detail: String = detail.chars().take(10_000).collect();
        self.post_to(url, suffix, "text/plain", &detail)
    }

    /// Checks that the channel can be reached at all: an SMTP connection (with its TLS) for
    /// email; nothing for the HTTP kinds, whose every request is a delivery.
    pub fn check(&self) -> Result<()> {
        let ChannelKind::Email(options) = &self.kind else {
            return Ok(());
        };
        let transport = self.transport(options)?;
        match transport.test_connection() {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.fail(options, "the server did not answer".into())),
            Err(err) => Err(self.fail(options, err.to_string())),
        }
    }

    fn post(&self, url: &Secret, content_type: &str, body: &str) -> Result<()> {
        self.post_to(url, "", content_type, body)
    }

    fn post_to(&self, url: &Secret, suffix: &str, content_type: &str, body: &str) -> Result<()> {
        let target = format!("{}{suffix}", url.expose().trim_end_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        match agent
            .post(&target)
            .content_type(content_type)
            .send(body.as_bytes())
        {
            Ok(_) => Ok(()),
            Err(err) => Err(Error::Send {
                channel: self.name.clone(),
                reason: http_reason(err, url.expose()),
            }),
        }
    }

    fn transport(&self, options: &EmailOptions) -> Result<lettre::SmtpTransport> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let mut params = TlsParameters::builder(options.host.clone());
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|err| Error::Send {
                channel: self.name.clone(),
                reason: format!("cannot read ca_file {}: {err}", path.display()),
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|err| Error::Send {
                channel: self.name.clone(),
                reason: format!("ca_file {} is not a PEM certificate: {err}", path.display()),
            })?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|err| self.fail(options, err.to_string()))?;
        let tls = match options.tls {
            SmtpTls::StartTls => Tls::Required(params),
            SmtpTls::Tls => Tls::Wrapper(params),
            SmtpTls::DangerPlaintext => Tls::None,
        };
        let mut builder = lettre::SmtpTransport::builder_dangerous(options.host.clone())
            .port(options.port())
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if let (Some(user), Some(password)) = (&options.username, &options.password) {
            builder =
                builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                    user.clone(),
                    password.expose().to_string(),
                ));
        }
        Ok(builder.build())
    }

    fn email(&self, options: &EmailOptions, notice: &Notice) -> Result<()> {
        use lettre::Transport;
        let mut message = lettre::Message::builder()
            .from(self.mailbox(options, &options.from)?)
            .subject(notice.title())
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        for to in &options.to {
            message = message.to(self.mailbox(options, to)?);
        }
        let message = message
            .body(notice.text())
            .map_err(|err| self.fail(options, err.to_string()))?;
        self.transport(options)?
            .send(&message)
            .map(|_| ())
            .map_err(|err| self.fail(options, err.to_string()))
    }

    fn mailbox(&self, options: &EmailOptions, text: &str) -> Result<lettre::message::Mailbox> {
        text.parse()
            .map_err(|err| self.fail(options, format!("`{text}`: {err}")))
    }

    /// An email error, the password removed from its text.
    fn fail(&self, options: &EmailOptions, reason: String) -> Error {
        let reason = match &options.password {
            Some(password) => redact(&reason, password.expose()),
            None => reason,
        };
        Error::Send {
            channel: self.name.clone(),
            reason: format!("SMTP {}:{}: {reason}", options.host, options.port()),
        }
    }
}

/// What went wrong with an HTTP request, in words that never contain the URL.
fn http_reason(err: ureq::Error, url: &str) -> String {
    match err {
        ureq::Error::StatusCode(code) => format!("the receiver answered HTTP {code}"),
        ureq::Error::Timeout(_) => format!("no answer within {} s", TIMEOUT.as_secs()),
        ureq::Error::HostNotFound => "the host name does not resolve".into(),
        ureq::Error::ConnectionFailed => "cannot connect to the receiver".into(),
        ureq::Error::Io(err) => format!("cannot reach the receiver: {}", err.kind()),
        other => redact(&other.to_string(), url),
    }
}

/// `text` with `secret`, and the path and query of a secret URL, replaced by `<redacted>`.
fn redact(text: &str, secret: &str) -> String {
    let mut out = text.replace(secret, "<redacted>");
    if let Some(rest) = secret.split_once("://").map(|(_, rest)| rest)
        && let Some((_, path)) = rest.split_once('/')
        && !path.is_empty()
    {
        out = out.replace(path, "<redacted>");
    }
    out
}

/// One message waiting for a channel.
#[derive(Debug)]
enum Outgoing {
    Notice(Notice),
    Ping(RunPhase, String),
}

#[derive(Debug)]
struct Pending {
    channel: Arc<Channel>,
    message: Outgoing,
    attempts: u32,
    due: DateTime<Utc>,
}

enum Command {
    Send(Outgoing, Option<String>),
    Channels(Vec<Channel>),
    Stop,
}

/// Attempts per message before it is given up (the waits between them double from 30 s).
pub const ATTEMPTS: u32 = 8;

/// Delivers notices and pings from its own thread, retrying failed deliveries with a
/// doubling wait; every failure is logged with the channel's name, never its URL.
#[derive(Debug)]
pub struct Dispatcher {
    commands: mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Dispatcher {
    /// Starts the delivery thread for `channels`.
    pub fn start(channels: Vec<Channel>, clock: Arc<dyn Clock>) -> Self {
        let (commands, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("palisade-alerts".into())
            .spawn(move || deliver(channels, clock, inbox))
            .expect("start the alert thread");
        Self {
            commands,
            thread: Some(thread),
        }
    }

    /// Queues `notice` for every channel that wants it.
    pub fn notify(&self, notice: Notice) {
        let _ = self
            .commands
            .send(Command::Send(Outgoing::Notice(notice), None));
    }

    /// Queues a ping about `job`'s run for its ping channels.
    pub fn ping(&self, job: &str, phase: RunPhase, detail: &str) {
        let _ = self.commands.send(Command::Send(
            Outgoing::Ping(phase, detail.to_string()),
            Some(job.to_string()),
        ));
    }

    /// Replaces the channels (after a config reload); queued messages keep their channel.
    pub fn replace(&self, channels: Vec<Channel>) {
        let _ = self.commands.send(Command::Channels(channels));
    }

    /// Tries what is due once more, then stops the thread.
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn deliver(channels: Vec<Channel>, clock: Arc<dyn Clock>, inbox: mpsc::Receiver<Command>) {
    let mut channels: Vec<Arc<Channel>> = channels.into_iter().map(Arc::new).collect();
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let stop = match inbox.recv_timeout(Duration::from_millis(100)) {
            Ok(Command::Send(message, job)) => {
                enqueue(&channels, &mut pending, message, job, clock.now());
                false
            }
            Ok(Command::Channels(new)) => {
                channels = new.into_iter().map(Arc::new).collect();
                false
            }
            Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        };
        attempt_due(&mut pending, clock.now());
        if stop {
            return;
        }
    }
}

fn enqueue(
    channels: &[Arc<Channel>],
    pending: &mut Vec<Pending>,
    message: Outgoing,
    job: Option<String>,
    now: DateTime<Utc>,
) {
    for channel in channels {
        let wanted = match (&message, &job) {
            (Outgoing::Notice(notice), _) => channel.wants(notice),
            (Outgoing::Ping(..), Some(job)) => channel.wants_run(job),
            (Outgoing::Ping(..), None) => false,
        };
        if !wanted {
            continue;
        }
        let message = match &message {
            Outgoing::Notice(notice) => Outgoing::Notice(notice.clone()),
            Outgoing::Ping(phase, detail) => Outgoing::Ping(*phase, detail.clone()),
        };
        pending.push(Pending {
            channel: channel.clone(),
            message,
            attempts: 0,
            due: now,
        });
    }
}

/// Sends every message that is due, in the order they came; keeps the failures for later.
fn attempt_due(pending: &mut Vec<Pending>, now: DateTime<Utc>) {
    let mut kept = Vec::new();
    for mut item in pending.drain(..) {
        if item.due > now {
            kept.push(item);
            continue;
        }
        let result = match &item.message {
            Outgoing::Notice(notice) => item.channel.send(notice),
            Outgoing::Ping(phase, detail) => item.channel.ping(*phase, detail),
        };
        item.attempts += 1;
        match result {
            Ok(()) => log::debug!("delivered to {}", item.channel.name),
            Err(err) if item.attempts >= ATTEMPTS => {
                log::error!(
                    "giving up on a message after {} attempts: {err}",
                    item.attempts
                );
            }
            Err(err) => {
                let wait = chrono::Duration::seconds(30 << (item.attempts - 1).min(7));
                log::warn!(
                    "could not deliver an alert (attempt {} of {ATTEMPTS}, next in {} s): {err}",
                    item.attempts,
                    wait.num_seconds()
                );
                item.due = now + wait;
                kept.push(item);
            }
        }
    }
    *pending = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_debug_and_errors() {
        let url = Secret::new("https://hooks.example.net/services/T0/B0/tok3n");
        assert_eq!(format!("{url:?}"), "<redacted>");
        let text = redact(
            "bad uri hooks.example.net/services/T0/B0/tok3n",
            url.expose(),
        );
        assert!(!text.contains("tok3n"), "{text}");
    }

    #[test]
    fn an_unreachable_webhook_fails_without_naming_its_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let channel = Channel {
            name: "alerts[1] (webhook)".into(),
            kind: ChannelKind::Webhook {
                url: Secret::new(format!("http://127.0.0.1:{port}/hook/s3cr3t-token")),
            },
            rules: Rule::ALL.to_vec(),
            jobs: None,
        };
        let err = channel.send(&Notice::test(Utc::now())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("alerts[1]") && !text.contains("s3cr3t"),
            "{text}"
        );
    }
}
