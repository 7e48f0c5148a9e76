//! Finding PostgreSQL's programs and asking the server a question through psql.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Result, pg::PgError};

/// Where PostgreSQL's client programs are looked for.
#[derive(Debug, Clone, Default)]
pub struct PgPrograms {
    /// A directory to take them from; without it PATH, then the newest
    /// `/usr/lib/postgresql/NN/bin`.
    pub bin_dir: Option<PathBuf>,
}

impl PgPrograms {
    /// The path of `program`, or a message naming where it was looked for.
    pub fn find(&self, program: &str) -> Result<PathBuf> {
        let dirs = self.search_dirs();
        dirs.iter()
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
            .ok_or_else(|| {
                let looked = dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>();
                PgError::MissingProgram {
                    program: program.into(),
                    looked: looked.join(", "),
                }
                .into()
            })
    }

    fn search_dirs(&self) -> Vec<PathBuf> {
        if let Some(dir) = &self.bin_dir {
            return vec![dir.clone()];
        }
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).collect())
            .unwrap_or_default();
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path())))
            .collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev().map(|(_, dir)| dir.join("bin")));
        dirs
    }
}

/// A command for a PostgreSQL program that prints in English whatever the host's locale, so
/// that its messages can be shown as they are.
pub(crate) fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LC_ALL", "C")
        .env("LC_MESSAGES", "C")
        .stdin(Stdio::null());
    cmd
}

/// `cmd` with the URL's password, if it has one, in its environment: never in its arguments.
pub(crate) fn with_password(mut cmd: Command, url: &crate::DbUrl) -> Command {
    if let Some(password) = url.password() {
        cmd.env("PGPASSWORD", password);
    }
    cmd
}

/// Runs one query with psql and gives back its row as fields (unaligned, `|`-separated).
pub(crate) fn query(programs: &PgPrograms, url: &crate::DbUrl, sql: &str) -> Result<Vec<String>> {
    let psql = programs.find("psql")?;
    let out = with_password(command(&psql), url)
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .arg(url.url().as_str())
        .output()
        .map_err(|err| crate::Error::io(&psql, err))?;
    if !out.status.success() {
        return Err(PgError::Connect {
            url: url.shown(),
            reason: first_error(&String::from_utf8_lossy(&out.stderr)),
        }
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().split('|').map(str::to_string).collect())
}

/// The most telling line of a PostgreSQL program's error output, without its program prefix.
pub(crate) fn first_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .find(|l| l.contains("error:") || l.contains("FATAL:"))
        .or(lines.last())
        .copied()
        .unwrap_or("no error output");
    let line = line
        .split_once("error: ")
        .map_or(line, |(_, rest)| rest)
        .trim_end_matches('.');
    line.chars().take(400).collect()
}

/// A connection string with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    let mut text = url.to_string();
    // postgresql://user:secret@host/db
    if let Some(scheme) = text.find("://") {
        let rest = scheme + 3;
        if let Some(at) = text[rest..].find('@').map(|i| rest + i)
            && let Some(colon) = text[rest..at].find(':').map(|i| rest + i)
        {
            text.replace_range(colon + 1..at, "***");
        }
    }
    // password=secret in a query string or a key=value string
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("password=") {
        out.push_str(&rest[..i + "password=".len()]);
        out.push_str("***");
        rest = &rest[i + "password=".len()..];
        let end = rest.find(['&', ' ']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgresql://app:s3cret@db/shop"),
            "postgresql://app:***@db/shop"
        );
        assert_eq!(
            redact("postgresql:///shop?host=/run&password=s3cret&port=5"),
            "postgresql:///shop?host=/run&password=***&port=5"
        );
        assert_eq!(
            redact("host=db password=s3cret user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            redact("postgresql://app@db/shop"),
            "postgresql://app@db/shop"
        );
    }

    #[test]
    fn the_error_line_loses_its_program_prefix() {
        let stderr = "psql: error: connection to server on socket \"/x/.s.PGSQL.1\" failed: \
                      No such file or directory\n\tIs the server running locally?\n";
        assert_eq!(
            first_error(stderr),
            "connection to server on socket \"/x/.s.PGSQL.1\" failed: No such file or directory"
        );
    }
}
