//! A client for ClamAV's daemon: one `zINSTREAM` scan per file over its Unix socket or TCP,
//! with a time limit, answering clean, found (with the signature's name) or an error.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where clamd listens, how long a scan may take, and what happens when it cannot answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClamavOptions {
    /// clamd's Unix socket (its `LocalSocket`), like `/run/clamav/clamd.ctl`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// clamd's TCP address (its `TCPAddr` and `TCPSocket`), like `127.0.0.1:3310`.
    #[serde(default)]
    pub address: Option<String>,
    /// The longest one file's scan may take, connecting included.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::settings::duration"
    )]
    pub timeout: Duration,
    /// What an upload gets when clamd is down, too slow, or refuses to scan.
    #[serde(default)]
    pub when_unavailable: WhenUnavailable,
}

/// What an upload gets when it cannot be scanned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUnavailable {
    /// Refused with 503 (`scan_unavailable`, rule `clamav-unavailable`).
    #[default]
    Refuse,
    /// Passed on unscanned, with a `scan_unavailable` event (action `log`).
    DangerPass,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A setting of [`ClamavOptions`] that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BadClamavSetting {
    /// The setting, like `socket`.
    pub setting: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ClamavOptions {
    /// Options for clamd's Unix socket at `socket`, with the defaults.
    pub fn socket(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: Some(socket.into()),
            address: None,
            timeout: default_timeout(),
            when_unavailable: WhenUnavailable::default(),
        }
    }

    /// Options for clamd's TCP `address` (`HOST:PORT`), with the defaults.
    pub fn address(address: impl Into<String>) -> Self {
        Self {
            socket: None,
            address: Some(address.into()),
            ..Self::socket("")
        }
    }

    /// Checks that exactly one place to reach clamd is given and the timeout is not zero.
    pub fn validate(&self) -> Result<(), BadClamavSetting> {
        self.target().map(|_| ())
    }

    fn target(&self) -> Result<Target, BadClamavSetting> {
        let bad = |setting, message: &str| BadClamavSetting {
            setting,
            message: message.to_string(),
        };
        if self.timeout.is_zero() {
            return Err(bad("timeout", "must be longer than zero, like \"30s\""));
        }
        match (&self.socket, &self.address) {
            (Some(path), None) => Ok(Target::Unix(path.clone())),
            (None, Some(address))
                if address
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(Target::Tcp(address.clone()))
            }
            (None, Some(_)) => Err(bad(
                "address",
                "is not HOST:PORT; write it like \"127.0.0.1:3310\"",
            )),
            (Some(_), Some(_)) => Err(bad("socket", "give either socket or address, not both")),
            (None, None) => Err(bad(
                "socket",
                "clamd needs a place to be reached: socket = \"/run/clamav/clamd.ctl\" or \
                 address = \"127.0.0.1:3310\"",
            )),
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// What clamd said about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No signature matched.
    Clean,
    /// A signature matched: its name, like `Win.Test.EICAR_HDB-1`.
    Found(String),
}

/// Why a file could not be scanned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// clamd could not be reached or the connection broke.
    #[error("clamd could not be reached: {0}")]
    Io(#[from] std::io::Error),
    /// clamd did not answer within the timeout.
    #[error("clamd did not answer within the timeout")]
    Timeout,
    /// clamd answered with an error (a file over its `StreamMaxLength`, say).
    #[error("clamd refused the scan: {0}")]
    Refused(String),
}

/// A clamd client; each scan opens its own connection.
#[derive(Debug, Clone)]
pub struct Clamd {
    target: Target,
    timeout: Duration,
}

/// The most bytes sent in one INSTREAM chunk.
const CHUNK: usize = 64 * 1024;

impl Clamd {
    /// A client for the clamd `options` name.
    pub fn new(options: &ClamavOptions) -> Result<Self, BadClamavSetting> {
        Ok(Self {
            target: options.target()?,
            timeout: options.timeout,
        })
    }

    /// Scans `data`.
    pub async fn scan(&self, data: &[u8]) -> Result<Verdict, ScanError> {
        let exchange = async {
            match &self.target {
                Target::Unix(path) => {
                    instream(tokio::net::UnixStream::connect(path).await?, data).await
                }
                Target::Tcp(address) => {
                    instream(tokio::net::TcpStream::connect(address).await?, data).await
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ScanError::Timeout)?
    }
}

/// One `zINSTREAM` exchange: the command, the data in length-prefixed chunks, an empty chunk,
/// then the answer up to its NUL.
async fn instream<S>(mut stream: S, data: &[u8]) -> Result<Verdict, ScanError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(b"zINSTREAM\0").await?;
    for chunk in data.chunks(CHUNK) {
        let length = u32::try_from(chunk.len()).expect("a chunk is at most 64 KiB");
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(chunk).await?;
    }
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut limited = stream.take(4096);
    let mut byte = [0u8; 1];
    while limited.read(&mut byte).await? == 1 && byte[0] != 0 {
        answer.push(byte[0]);
    }
    parse_answer(&answer)
}

/// `stream: OK`, `stream: NAME FOUND`, or an error such as `INSTREAM size limit exceeded.
/// ERROR`.
fn parse_answer(answer: &[u8]) -> Result<Verdict, ScanError> {
    let text = String::from_utf8_lossy(answer);
    let text = text.trim();
    let body = text.strip_prefix("stream:").map_or(text, str::trim);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        let name: String = name
            .trim()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(128)
            .collect();
        return Ok(Verdict::Found(name));
    }
    let shown: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    if shown.is_empty() {
        return Err(ScanError::Refused("no answer".into()));
    }
    Err(ScanError::Refused(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        assert_eq!(parse_answer(b"stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_answer(b"stream: Eicar-Test.UNOFFICIAL FOUND").unwrap(),
            Verdict::Found("Eicar-Test.UNOFFICIAL".into())
        );
        let err = parse_answer(b"INSTREAM size limit exceeded. ERROR").unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn exactly_one_place_to_reach_clamd() {
        let read = |toml: &str| serde_json::from_str::<ClamavOptions>(toml).unwrap();
        assert!(
            read(r#"{"socket": "/run/clamav/clamd.ctl"}"#)
                .validate()
                .is_ok()
        );
        assert!(read(r#"{"address": "127.0.0.1:3310"}"#).validate().is_ok());
        let err = read(r#"{"address": "localhost"}"#).validate().unwrap_err();
        assert_eq!(err.setting, "address");
        assert!(
            read("{}")
                .validate()
                .unwrap_err()
                .message
                .contains("socket =")
        );
        let both = read(r#"{"socket": "/s", "address": "a:1"}"#);
        assert!(both.validate().is_err());
        let options =
            read(r#"{"socket": "/s", "timeout": "2s", "when_unavailable": "danger-pass"}"#);
        assert_eq!(options.timeout, Duration::from_secs(2));
        assert_eq!(options.when_unavailable, WhenUnavailable::DangerPass);
        assert!(
            serde_json::from_str::<ClamavOptions>(r#"{"socket": "/s", "timeout": "soon"}"#)
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_closed_socket_is_an_error_not_a_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let clamd = Clamd::new(&ClamavOptions::socket(dir.path().join("none.sock"))).unwrap();
        assert!(matches!(clamd.scan(b"x").await, Err(ScanError::Io(_))));
    }
}
