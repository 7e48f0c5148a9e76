//! The `palisade.toml` config file: the default repository and the backup jobs.
//!
//! Relative paths in the file are taken relative to the file's own folder, so a config works
//! the same from any working directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use palisade_backup::SourceSpec;
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default repository for every job.
    pub repository: Option<String>,
    /// File whose first line is the repository password.
    pub password_file: Option<PathBuf>,
    /// Where database copies and streams wait while they are archived (default: the system's
    /// temporary folder).
    pub temp_dir: Option<PathBuf>,
    /// Backup jobs.
    #[serde(default)]
    pub jobs: Vec<Job>,
}

/// One backup job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Unique name; the snapshot label.
    pub name: String,
    /// Repository for this job, instead of the default.
    pub repository: Option<String>,
    /// Password file for this job's repository.
    pub password_file: Option<PathBuf>,
    /// What to back up.
    pub sources: Vec<Source>,
    /// Extra snapshot tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One source of a job: exactly one of `sqlite` or `dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// An SQLite database file.
    pub sqlite: Option<PathBuf>,
    /// A directory.
    pub dir: Option<PathBuf>,
    /// Item name in the snapshot (default: the file or folder name).
    pub name: Option<String>,
    /// Globs to leave out of a directory.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Config {
    /// Reads `path`; a missing file gives the empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read config {}", path.display()));
            }
        };
        let mut config: Self = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve(base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.password_file.as_mut().map(fix);
        self.temp_dir.as_mut().map(fix);
        if let Some(repo) = &mut self.repository {
            *repo = resolve_repo(repo, base);
        }
        for job in &mut self.jobs {
            job.password_file.as_mut().map(fix);
            if let Some(repo) = &mut job.repository {
                *repo = resolve_repo(repo, base);
            }
            for source in &mut job.sources {
                source.sqlite.as_mut().map(fix);
                source.dir.as_mut().map(fix);
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for job in &self.jobs {
            if !names.insert(job.name.as_str()) {
                bail!(
                    "config {}: two jobs are named `{}`; job names must be unique",
                    path.display(),
                    job.name
                );
            }
            if job.sources.is_empty() {
                bail!(
                    "config {}: job `{}` has no sources; add `sources = [{{ sqlite = \"app.db\" }}]` or similar",
                    path.display(),
                    job.name
                );
            }
            for source in &job.sources {
                if source.sqlite.is_some() == source.dir.is_some() {
                    bail!(
                        "config {}: each source of job `{}` needs exactly one of `sqlite` or `dir`",
                        path.display(),
                        job.name
                    );
                }
                if source.sqlite.is_some() && !source.exclude.is_empty() {
                    bail!(
                        "config {}: `exclude` only applies to `dir` sources (job `{}`)",
                        path.display(),
                        job.name
                    );
                }
            }
        }
        Ok(())
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Result<&Job> {
        self.jobs.iter().find(|j| j.name == name).with_context(|| {
            let known: Vec<_> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            format!(
                "no job named `{name}` in the config; jobs: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

impl Job {
    /// The job's sources as engine specs.
    pub fn specs(&self) -> Vec<SourceSpec> {
        self.sources
            .iter()
            .map(|s| match (&s.sqlite, &s.dir) {
                (Some(path), _) => SourceSpec::Sqlite {
                    path: path.clone(),
                    name: s.name.clone(),
                },
                (None, dir) => SourceSpec::Directory {
                    path: dir.clone().unwrap_or_default(),
                    name: s.name.clone(),
                    exclude: s.exclude.clone(),
                },
            })
            .collect()
    }
}

/// Local repository paths in the config are relative to the config file.
fn resolve_repo(repo: &str, base: &Path) -> String {
    let path = Path::new(repo.strip_prefix("local:").unwrap_or(repo));
    if path.is_relative() && !repo.contains(':') {
        base.join(path).to_string_lossy().into_owned()
    } else {
        repo.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, true)
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let config = parse(
            "repository = \"repo\"\n[[jobs]]\nname = \"app\"\nsources = [{ sqlite = \"app.db\" }, { dir = \"/srv/up\", exclude = [\"*.tmp\"] }]\n",
        )
        .unwrap();
        assert!(Path::new(config.repository.as_deref().unwrap()).is_absolute());
        let specs = config.job("app").unwrap().specs();
        assert!(matches!(&specs[0], SourceSpec::Sqlite { path, .. } if path.is_absolute()));
        assert!(
            matches!(&specs[1], SourceSpec::Directory { exclude, .. } if exclude == &["*.tmp"])
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse("[[jobs]]\nname = \"a\"\nsources = [{ sqlite = \"x\", dir = \"y\" }]\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("exactly one of"), "{err:#}");
        let err = parse("repositroy = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("repositroy"), "{err:#}");
        let err = parse("[[jobs]]\nname = \"a\"\nsources = []\n").unwrap_err();
        assert!(format!("{err:#}").contains("no sources"), "{err:#}");
        assert!(parse("").unwrap().job("x").is_err());
    }
}
