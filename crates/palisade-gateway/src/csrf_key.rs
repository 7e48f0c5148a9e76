//! The CSRF signing key: read from its file, generated there when the file is missing, or
//! generated for this run only when no file is configured.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use palisade_guard::{CsrfKey, CsrfMode, CsrfOptions};

use crate::Error;

/// The key for `options`: see the module documentation.
pub fn load(options: &CsrfOptions) -> Result<CsrfKey, Error> {
    let Some(path) = options.key_file.as_deref() else {
        if options.mode != CsrfMode::Off {
            tracing::warn!(target: "palisade::gateway", "no csrf.key_file: CSRF tokens are signed with a key for this run only, so pages loaded before a restart will need a reload");
        }
        return Ok(CsrfKey::generate());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).ok_or_else(|| Error::BadSetting {
            setting: "csrf.key_file".into(),
            message: format!(
                "{} does not hold a CSRF key ({} bytes in base64); delete it to have a new one made",
                path.display(),
                CsrfKey::LEN
            ),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(Error::BadSetting {
            setting: "csrf.key_file".into(),
            message: format!("cannot read {}: {source}", path.display()),
        }),
    }
}

fn parse(text: &str) -> Option<CsrfKey> {
    CsrfKey::from_bytes(&STANDARD.decode(text.trim()).ok()?)
}

/// Makes a key and keeps it in a new file only its owner can read.
fn create(path: &Path) -> Result<CsrfKey, Error> {
    let failed = |source| Error::Write {
        path: PathBuf::from(path),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let key = CsrfKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another gateway made it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(failed)?;
            return parse(&text).ok_or_else(|| failed(std::io::Error::other("not a CSRF key")));
        }
        Err(err) => return Err(failed(err)),
    };
    writeln!(file, "{}", STANDARD.encode(key.as_bytes())).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    tracing::info!(target: "palisade::gateway", path = %path.display(), "made a new CSRF key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/csrf.key");
        let options = CsrfOptions {
            key_file: Some(path.clone()),
            ..CsrfOptions::default()
        };
        let first = load(&options).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load(&options).unwrap();
        assert_eq!(first.as_bytes(), again.as_bytes());
    }

    #[test]
    fn a_file_that_holds_no_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csrf.key");
        std::fs::write(&path, "not a key").unwrap();
        let options = CsrfOptions {
            key_file: Some(path.clone()),
            ..CsrfOptions::default()
        };
        let err = load(&options).unwrap_err().to_string();
        assert!(err.starts_with("csrf.key_file:"), "{err}");
        assert!(err.contains("delete it"), "{err}");
        // Nothing is lost: the file is left as it was.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
