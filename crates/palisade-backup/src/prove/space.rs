//! Free space on the file system of the scratch directory, asked before a restore starts.

use std::{path::Path, process::Command};

use crate::{Result, prove::ProveError};

/// Bytes available to this user on the file system holding `dir` (`df`'s `avail`).
pub fn free_space(dir: &Path) -> Result<u64> {
    let failed = |reason: String| ProveError::FreeSpace {
        dir: dir.into(),
        reason,
    };
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|err| failed(format!("cannot run df: {err}")))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()).into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| failed("df printed no number".into()).into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temp_dir_has_some_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::free_space(dir.path()).unwrap() > 0);
    }
}
