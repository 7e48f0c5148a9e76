//! The harness: a temp dir with a key file and a repository, and helpers that run `palisade`,
//! `restic` and `sqlite3` on it.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use sha2::{Digest, Sha256};

/// The shared real-world inputs (`../shared/data` beside the repository, or
/// `PALISADE_SHARED_DATA`).
pub fn shared_data() -> PathBuf {
    palisade_testkit::shared_data()
}

/// The Chinook sample database.
pub fn chinook() -> PathBuf {
    shared_data().join("chinook/Chinook_Sqlite.sqlite")
}

/// Where a test's repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A directory in the test's temp dir.
    Local,
    /// A bucket on a private moto server.
    S3,
}

/// The secret key the S3 tests use: it must never show up in any output.
pub const S3_SECRET: &str = "test-secret-never-printed-7f3a9c";

/// A test's own moto server, the bucket and prefix its repository is under.
pub struct S3Repo {
    pub moto: crate::s3support::Moto,
    pub bucket: String,
    pub prefix: String,
}

/// A test's own folder, password and repository.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The local repository's directory (unused on S3).
    pub repo: PathBuf,
    pub key: PathBuf,
    /// What `--repo` gets.
    pub location: String,
    pub s3: Option<S3Repo>,
}

/// Generates `NAME::local` and `NAME::s3` tests from one body that takes the backend.
macro_rules! on_local_and_s3 {
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: $crate::common::Backend) $body

            #[test]
            fn local() {
                run($crate::common::Backend::Local)
            }

            #[test]
            fn s3() {
                run($crate::common::Backend::S3)
            }
        }
    };
}

/// Sets the AWS environment for a test's S3 server on `cmd`, and nothing from the host's.
pub fn aws_env(cmd: &mut Command, dir: &Path) {
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        );
}

impl Env {
    /// A folder with a key file; no repository yet.
    pub fn new() -> Self {
        Self::new_on(Backend::Local)
    }

    /// A folder with a key file; on S3, a moto server with an empty bucket. No repository yet.
    pub fn new_on(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key");
        std::fs::write(&key, "correct horse battery staple\n").unwrap();
        let repo = dir.path().join("repo");
        let (location, s3) = match backend {
            Backend::Local => (repo.to_string_lossy().into_owned(), None),
            Backend::S3 => {
                let moto = crate::s3support::Moto::start();
                let bucket = "palisade-test".to_string();
                moto.create_bucket(&bucket);
                let prefix = "app/repo".to_string();
                let location = format!("s3:{}/{bucket}/{prefix}", moto.endpoint);
                (
                    location,
                    Some(S3Repo {
                        moto,
                        bucket,
                        prefix,
                    }),
                )
            }
        };
        Self {
            dir,
            repo,
            key,
            location,
            s3,
        }
    }

    /// A folder with a key file and an initialised repository.
    pub fn init() -> Self {
        Self::init_on(Backend::Local)
    }

    /// [`Env::new_on`] plus `palisade init`.
    pub fn init_on(backend: Backend) -> Self {
        let env = Self::new_on(backend);
        env.ok(&["init"]);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `palisade` with this env's repository and password, and no ambient PALISADE_* settings.
    pub fn palisade(&self) -> Command {
        self.palisade_with_key(&self.key)
    }

    /// `palisade` with this env's repository and another password file.
    pub fn palisade_with_key(&self, key: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
        for (name, _) in std::env::vars() {
            if name.starts_with("PALISADE_") {
                cmd.env_remove(name);
            }
        }
        aws_env(&mut cmd, self.dir.path());
        cmd.current_dir(self.dir.path())
            .arg("--repo")
            .arg(&self.location)
            .arg("--password-file")
            .arg(key)
            .env("TMPDIR", self.dir.path())
            .env("PALISADE_STATE_DIR", self.dir.path().join("state"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs palisade and asserts exit code 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        self.expect(args, 0)
    }

    /// Runs palisade and asserts the exit code.
    pub fn expect(&self, args: &[&str], code: i32) -> Output {
        let out = self.palisade().args(args).output().expect("run palisade");
        assert_status(&out, code, &format!("palisade {args:?}"));
        out
    }

    /// Runs palisade with `--json` and parses standard output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!("{err}: {}", String::from_utf8_lossy(&out.stdout));
        })
    }

    /// Backs up `args` (after `backup`) and returns the report of the one snapshot made.
    pub fn backup(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["backup"];
        all.extend_from_slice(args);
        let reports = self.json(&all);
        reports[0].clone()
    }

    /// Backs up bytes from standard input under `name`.
    pub fn backup_stdin(&self, name: &str, bytes: &[u8]) -> serde_json::Value {
        let mut child = self
            .palisade()
            .args(["--json", "backup", "--stdin", "--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut stdin, &bytes).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert_status(&out, 0, "palisade backup --stdin");
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        reports[0].clone()
    }

    /// Starts `palisade backup --stdin --name NAME`, writes `first` to it and leaves the pipe
    /// open, so that the backup waits for the rest.
    pub fn start_stream(
        &self,
        name: &str,
        first: &[u8],
    ) -> (std::process::Child, std::process::ChildStdin) {
        let mut child = self
            .palisade()
            .args(["backup", "--stdin", "--name", name])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, first).unwrap();
        (child, stdin)
    }

    /// Restores `snapshot` into a fresh folder `name` and returns its path.
    pub fn restore(&self, snapshot: &str, name: &str) -> PathBuf {
        let target = self.path(name);
        self.ok(&["restore", snapshot, "--target", target.to_str().unwrap()]);
        target
    }

    /// `restic` on this env's repository.
    pub fn restic(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("restic");
        aws_env(&mut cmd, self.dir.path());
        let out = cmd
            .arg("-r")
            .arg(&self.location)
            .arg("--password-file")
            .arg(&self.key)
            .arg("--no-cache")
            .args(args)
            .output()
            .expect("restic is installed (apt-get install restic)");
        assert_status(&out, 0, &format!("restic {args:?}"));
        out
    }

    /// Every file below the repository with its size, for before/after comparisons.
    pub fn repo_files(&self) -> BTreeMap<PathBuf, u64> {
        if let Some(s3) = &self.s3 {
            let prefix = format!("{}/", s3.prefix);
            return s3
                .moto
                .list_keys(&s3.bucket, &prefix)
                .into_iter()
                .map(|key| {
                    let size = s3.moto.head(&s3.bucket, &key).map_or(0, |head| head.size);
                    (PathBuf::from(key), size)
                })
                .collect();
        }
        walk(&self.repo)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                let size = std::fs::metadata(&p).unwrap().len();
                (p, size)
            })
            .collect()
    }
}

pub fn assert_status(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// All paths below `root` (not following symlinks), sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

pub fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Asserts that two trees hold the same entries: types, contents, link targets, permissions.
pub fn assert_same_tree(original: &Path, restored: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let relative = |root: &Path| -> Vec<PathBuf> {
        walk(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect()
    };
    assert_eq!(relative(original), relative(restored), "entry lists differ");
    for rel in relative(original) {
        let (a, b) = (original.join(&rel), restored.join(&rel));
        let (ma, mb) = (a.symlink_metadata().unwrap(), b.symlink_metadata().unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?} changed type");
        assert_eq!(
            ma.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "{rel:?} changed mode"
        );
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&a).unwrap(),
                std::fs::read_link(&b).unwrap()
            );
        } else if ma.is_file() {
            assert_eq!(sha256_file(&a), sha256_file(&b), "{rel:?} changed content");
            assert_eq!(
                ma.modified().unwrap(),
                mb.modified().unwrap(),
                "{rel:?} changed mtime"
            );
        }
    }
}

/// Row counts per table as Debian's `sqlite3` shell reports them.
pub fn sqlite3_counts(db: &Path) -> BTreeMap<String, u64> {
    let sqlite3 = |sql: &str| -> String {
        let out = Command::new("sqlite3")
            .arg("-readonly")
            .arg(db)
            .arg(sql)
            .output()
            .expect("sqlite3 is installed (apt-get install sqlite3)");
        assert_status(&out, 0, "sqlite3");
        String::from_utf8(out.stdout).unwrap()
    };
    let tables = sqlite3(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%';",
    );
    tables
        .lines()
        .map(|name| {
            let count = sqlite3(&format!("SELECT count(*) FROM \"{name}\";"));
            (name.to_string(), count.trim().parse().unwrap())
        })
        .collect()
}

/// The catalog item called `name` in a backup report.
pub fn item<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["catalog"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no item {name} in {report}"))
}

pub fn snapshot_id(report: &serde_json::Value) -> String {
    report["snapshot"].as_str().unwrap().to_string()
}

/// Polls `found` every 20 ms until it gives a value; fails after 30 s, saying `what` never came.
pub fn wait_for<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Deterministic, poorly compressible bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
