//! The gateway's challenges: signed with a key derived from the CSRF key, spent ones kept in
//! the gateway's state store, and a CAPTCHA provider's secret read from its file.

use std::sync::Arc;

use palisade_guard::{ChallengeOptions, ChallengeProvider, Challenges, CsrfKey, SpentChallenges};
use zeroize::Zeroizing;

use crate::Error;

/// The label the challenge key is derived from the CSRF key with; a new label would make
/// every challenge and pass in flight worthless.
pub const KEY_LABEL: &str = "palisade challenge v1";

/// The challenges for `options`, signed with a key derived from `csrf_key`, spent in `spent`.
pub fn build(
    options: &ChallengeOptions,
    csrf_key: &CsrfKey,
    spent: Arc<dyn SpentChallenges>,
) -> Result<Challenges, Error> {
    let secret = read_secret(options)?.map(|s| s.to_string());
    Challenges::new(options, csrf_key.derive(KEY_LABEL), spent, secret).map_err(|err| {
        Error::BadSetting {
            setting: format!("challenge.{}", err.setting),
            message: err.message,
        }
    })
}

/// The CAPTCHA provider's secret from `secret_file`, trimmed; `None` for the proof of work.
/// Errors name the file and what is wrong with it, never what it holds.
pub fn read_secret(options: &ChallengeOptions) -> Result<Option<Zeroizing<String>>, Error> {
    if options.provider == ChallengeProvider::Pow {
        return Ok(None);
    }
    let bad = |message: String| Error::BadSetting {
        setting: "challenge.secret_file".into(),
        message,
    };
    let Some(path) = &options.secret_file else {
        return Err(bad(format!(
            "{} needs its secret key in a file; name it, like secret_file = \"/etc/palisade/{}.secret\"",
            options.provider, options.provider
        )));
    };
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|err| bad(format!("cannot read {}: {err}", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(bad(format!(
            "{} is empty; put the secret key from the provider's dashboard in it",
            path.display()
        )));
    }
    Ok(Some(Zeroizing::new(secret.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent() -> Arc<dyn SpentChallenges> {
        Arc::new(palisade_guard::MemorySpent::new(16))
    }

    fn turnstile(secret_file: std::path::PathBuf) -> ChallengeOptions {
        ChallengeOptions {
            provider: ChallengeProvider::Turnstile,
            site_key: Some("0x4AAAAAAAsitekey".into()),
            secret_file: Some(secret_file),
            ..ChallengeOptions::default()
        }
    }

    #[test]
    fn the_secret_is_read_trimmed_and_never_shown_in_errors_or_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turnstile.secret");
        std::fs::write(&path, "0x4AAAAAAA-secret\n").unwrap();
        let options = turnstile(path.clone());
        let secret = read_secret(&options).unwrap().unwrap();
        assert_eq!(secret.as_str(), "0x4AAAAAAA-secret");
        let challenges = build(&options, &CsrfKey::generate(), spent()).unwrap();
        assert!(!format!("{challenges:?}").contains("0x4AAAAAAA-secret"));

        std::fs::write(&path, " \n").unwrap();
        let err = read_secret(&options).unwrap_err().to_string();
        assert!(err.starts_with("challenge.secret_file: "), "{err}");
        assert!(err.contains("is empty"), "{err}");
        let err = read_secret(&turnstile(dir.path().join("missing")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn the_proof_of_work_needs_no_secret() {
        assert!(read_secret(&ChallengeOptions::default()).unwrap().is_none());
        assert!(build(&ChallengeOptions::default(), &CsrfKey::generate(), spent()).is_ok());
    }
}
