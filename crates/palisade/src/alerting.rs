//! The `[alerting]` settings and `[[alerts]]` channels of the config, turned into the events
//! crate's channels, and `palisade alert test`. See docs/alerts.md.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use palisade_events::{Channel, ChannelKind, EmailOptions, Notice, Rule, Secret, SmtpTls};
use serde::{Deserialize, Serialize};

use crate::{Outcome, commands::Session, config::Config};

/// How long an open alert waits before it is sent again, by default.
pub const DEFAULT_REPEAT: Duration = Duration::from_secs(4 * 3600);
/// A job with no successful backup for this many of its intervals raises `missed-backup`.
pub const DEFAULT_MISSED_FACTOR: f64 = 2.0;

/// `[alerting]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Send an open alert again after this long (default 4h).
    pub repeat: Option<String>,
    /// Raise `missed-backup` after this many of a job's intervals without a successful backup
    /// (default 2).
    pub missed_factor: Option<f64>,
}

/// One `[[alerts]]` channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// `webhook`, `slack`, `email` or `ping`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The webhook or ping URL (a secret: it usually holds a token).
    pub url: Option<Secret>,
    /// File whose first line is the URL, instead of `url`.
    pub url_file: Option<PathBuf>,
    /// Rules this channel is told about (default: all).
    pub rules: Option<Vec<String>>,
    /// Jobs this channel is told about (default: all).
    pub jobs: Option<Vec<String>>,
    /// Email: the SMTP server.
    pub host: Option<String>,
    /// Email: its port.
    pub port: Option<u16>,
    /// Email: `starttls` (default), `tls`, or `danger-plaintext`.
    pub tls: Option<String>,
    /// Email: SMTP user.
    pub username: Option<String>,
    /// Email: SMTP password (better: `password_file`).
    pub password: Option<Secret>,
    /// Email: file whose first line is the SMTP password.
    pub password_file: Option<PathBuf>,
    /// Email: sender.
    pub from: Option<String>,
    /// Email: recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Email: a CA certificate (PEM) to trust for the server.
    pub ca_file: Option<PathBuf>,
}

impl AlertConfig {
    /// Makes file paths relative to the config's folder absolute.
    pub fn resolve(&mut self, base: &Path) {
        for path in [
            &mut self.url_file,
            &mut self.password_file,
            &mut self.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The channel this entry describes (`index` counts from 0); the error says what is wrong.
    fn channel(&self, index: usize) -> Result<Channel, (&'static str, String)> {
        let name = format!("alerts[{}] ({})", index + 1, self.kind);
        let rules = match &self.rules {
            None => Rule::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|rule| {
                    Rule::parse(rule).ok_or_else(|| {
                        let known: Vec<_> = Rule::ALL.iter().map(|r| r.as_str()).collect();
                        (
                            "rules",
                            format!("{name}: unknown rule `{rule}`; rules: {}", known.join(", ")),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let kind = match self.kind.as_str() {
            "webhook" => ChannelKind::Webhook {
                url: self.url(&name)?,
            },
            "slack" => ChannelKind::Slack {
                url: self.url(&name)?,
            },
            "ping" => ChannelKind::Ping {
                url: self.url(&name)?,
            },
            "email" => ChannelKind::Email(self.email(&name)?),
            other => {
                return Err((
                    "type",
                    format!(
                        "alerts[{}]: unknown type `{other}`; use webhook, slack, email or ping",
                        index + 1
                    ),
                ));
            }
        };
        Ok(Channel {
            name,
            kind,
            rules,
            jobs: self.jobs.clone(),
        })
    }

    fn url(&self, name: &str) -> Result<Secret, (&'static str, String)> {
        let url = match (&self.url, &self.url_file) {
            (Some(url), None) => url.clone(),
            (None, Some(path)) => {
                Secret::new(first_line(path).map_err(|err| ("url_file", format!("{name}: {err}")))?)
            }
            _ => return Err(("url", format!("{name} needs one of `url` or `url_file`"))),
        };
        let text = url.expose();
        if !(text.starts_with("http://") || text.starts_with("https://"))
            || text.contains(char::is_whitespace)
        {
            // The URL is a secret: say what is wrong without repeating it.
            return Err((
                "url",
                format!("{name}: the URL must start with https:// (or http://)"),
            ));
        }
        Ok(url)
    }

    fn email(&self, name: &str) -> Result<EmailOptions, (&'static str, String)> {
        let need = |value: &Option<String>, key: &'static str| {
            value.clone().ok_or((key, format!("{name} needs `{key}`")))
        };
        let tls = match self.tls.as_deref() {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Tls,
            Some("danger-plaintext") => SmtpTls::DangerPlaintext,
            Some(other) => {
                return Err((
                    "tls",
                    format!(
                        "{name}: `tls = \"{other}\"` is unknown; use starttls, tls or danger-plaintext"
                    ),
                ));
            }
        };
        let password = match (&self.password, &self.password_file) {
            (Some(password), None) => Some(password.clone()),
            (None, Some(path)) => {
                Some(Secret::new(first_line(path).map_err(|err| {
                    ("password_file", format!("{name}: {err}"))
                })?))
            }
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err((
                    "password",
                    format!("{name}: set `password` or `password_file`, not both"),
                ));
            }
        };
        let options = EmailOptions {
            host: need(&self.host, "host")?,
            port: self.port,
            tls,
            username: self.username.clone(),
            password,
            from: need(&self.from, "from")?,
            to: self.to.clone(),
            ca_file: self.ca_file.clone(),
        };
        options
            .validate()
            .map_err(|err| ("to", format!("{name}: {err}")))?;
        Ok(options)
    }
}

fn first_line(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line)
}

/// Checks `[alerting]` and every `[[alerts]]` entry; the error names the line.
pub fn validate(config: &Config, text: &str) -> Result<(), (Option<usize>, String)> {
    if let Some(alerting) = &config.alerting {
        if let Some(repeat) = &alerting.repeat {
            crate::schedule::parse_duration(repeat).map_err(|err| {
                (
                    crate::config::line_of(text, "alerting", 0, "repeat"),
                    format!("[alerting] repeat: {err}"),
                )
            })?;
        }
        if alerting
            .missed_factor
            .is_some_and(|f| !(f.is_finite() && f > 0.0))
        {
            return Err((
                crate::config::line_of(text, "alerting", 0, "missed_factor"),
                "[alerting] missed_factor must be a number above 0 (2 means two intervals)".into(),
            ));
        }
    }
    for (index, alert) in config.alerts.iter().enumerate() {
        let at = |key: &str| {
            crate::config::line_of(text, "alerts", index, key)
                .or_else(|| crate::config::line_of(text, "alerts", index, ""))
        };
        alert
            .channel(index)
            .map_err(|(key, message)| (at(key), message))?;
        for job in alert.jobs.iter().flatten() {
            if config.jobs.iter().all(|j| &j.name != job) {
                let known: Vec<_> = config.jobs.iter().map(|j| j.name.as_str()).collect();
                return Err((
                    at("jobs"),
                    format!(
                        "alerts[{}] names job `{job}`, which is not in [[jobs]]; jobs: {}",
                        index + 1,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The config's channels (the config was validated, so each entry builds).
pub fn channels(config: &Config) -> Result<Vec<Channel>> {
    config
        .alerts
        .iter()
        .enumerate()
        .map(|(index, alert)| {
            alert
                .channel(index)
                .map_err(|(_, message)| anyhow::anyhow!(message))
        })
        .collect()
}

/// Connects to every email channel's server (with its TLS); the error names the entry's line
/// in `path`.
pub fn check_reachable(path: &Path, config: &Config) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for (index, channel) in channels(config)?.iter().enumerate() {
        if let Err(err) = channel.check() {
            let line = crate::config::line_of(&text, "alerts", index, "host")
                .or_else(|| crate::config::line_of(&text, "alerts", index, ""));
            let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
            anyhow::bail!(
                "config {}{at}: {err}; check host, port and tls, or that the server is up",
                path.display()
            );
        }
    }
    Ok(())
}

/// The repeat interval and missed-backup factor in force.
pub fn settings(config: &Config) -> (Duration, f64) {
    let alerting = config.alerting.clone().unwrap_or_default();
    let repeat = alerting
        .repeat
        .and_then(|text| crate::schedule::parse_duration(&text).ok())
        .unwrap_or(DEFAULT_REPEAT);
    (
        repeat,
        alerting.missed_factor.unwrap_or(DEFAULT_MISSED_FACTOR),
    )
}

/// `palisade alert ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AlertCommand {
    /// Send a test message through every `[[alerts]]` channel (ping channels get a `/log`
    /// event, which changes no check's state); exit 1 if any channel failed.
    Test,
}

/// Runs an `alert` subcommand.
pub fn run(session: &Session, command: AlertCommand) -> Result<Outcome> {
    let AlertCommand::Test = command;
    let channels = channels(&session.config)?;
    if channels.is_empty() {
        anyhow::bail!(
            "no [[alerts]] channels in {}; add one (see docs/alerts.md)",
            session.global.config.display()
        );
    }
    #[derive(Serialize)]
    struct Sent {
        channel: String,
        ok: bool,
        error: Option<String>,
    }
    let notice = Notice::test(crate::daemon::clock().now());
    let sent: Vec<Sent> = channels
        .iter()
        .map(|channel| {
            let result = channel.send(&notice);
            Sent {
                channel: channel.name.clone(),
                ok: result.is_ok(),
                error: result.err().map(|err| err.to_string()),
            }
        })
        .collect();
    let failed = sent.iter().filter(|s| !s.ok).count();
    session.list(&sent, |sent| {
        sent.iter()
            .map(|s| match &s.error {
                None => format!("{}: sent", s.channel),
                Some(err) => format!("{}: FAILED: {err}", s.channel),
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if failed > 0 {
        eprintln!("palisade: {failed} of {} channel(s) failed", sent.len());
        return Ok(Outcome::Failed);
    }
    Ok(Outcome::Done)
}

/// Reads the config file as `palisade daemon` does at start-up and on SIGHUP.
pub fn load_checked(path: &Path) -> Result<(Config, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let config = Config::parse(&text, path)?;
    check_reachable(path, &config)?;
    Ok((config, text))
}
