//! A private, throwaway PostgreSQL server for restore tests: initdb (or a restored data
//! directory) inside the scratch directory, a Unix socket there and no TCP, stopped when dropped.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::{
    DbUrl, Error, Result,
    prove::{
        ProveError,
        account::{self, Account},
        tail,
    },
};

/// The superuser of every cluster this module makes.
const SUPERUSER: &str = "postgres";

/// The programs a restore test runs, all from one folder.
const PROGRAMS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "pg_restore", "psql"];

/// Debian's `/usr/lib/postgresql/NN/bin` folders, newest first.
fn debian_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.into_iter().rev().map(|(_, dir)| dir).collect()
}

/// How long a server may take to start (a recovery replays WAL first).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// The server programs: `bin_dir` when given, else PATH and the newest
/// `/usr/lib/postgresql/NN/bin` (where Debian puts them).
#[derive(Debug, Clone)]
pub(crate) struct PgBin {
    pub(crate) dir: PathBuf,
}

impl PgBin {
    /// Finds initdb, pg_ctl, postgres, pg_restore and psql in one folder (following symlinks,
    /// so a link on PATH leads to the real folder), or names the package to install.
    pub(crate) fn find(bin_dir: Option<&Path>) -> Result<Self> {
        let mut dirs: Vec<PathBuf> = match bin_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        };
        if bin_dir.is_none() {
            dirs.extend(debian_dirs());
        }
        let mut missing_from = None;
        for dir in &dirs {
            let Ok(initdb) = dir.join("initdb").canonicalize() else {
                continue;
            };
            let real = initdb.parent().unwrap_or(Path::new("/")).to_path_buf();
            match PROGRAMS.iter().find(|p| !real.join(p).is_file()) {
                None => return Ok(Self { dir: real }),
                Some(program) => missing_from = missing_from.or(Some((*program, real))),
            }
        }
        Err(match missing_from {
            Some((program, dir)) => missing(program, Some(&dir)),
            None => missing("initdb", bin_dir),
        })
    }

    pub(crate) fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The major version of these programs (`postgres --version`).
    pub(crate) fn major(&self) -> u32 {
        let out = std::process::Command::new(self.program("postgres"))
            .arg("--version")
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.split(')')
            .nth(1)
            .and_then(|rest| rest.trim().split(['.', ' ']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

fn missing(program: &str, dir: Option<&Path>) -> Error {
    ProveError::MissingServer {
        program: program.into(),
        place: dir.map_or_else(
            || "on PATH or in /usr/lib/postgresql/NN/bin".into(),
            |d| format!("in {}", d.display()),
        ),
        install: "install the PostgreSQL server (Debian: apt-get install postgresql), or set \
                  the source's `bin_dir` to its bin folder"
            .into(),
    }
    .into()
}

/// A running private PostgreSQL server.
#[derive(Debug)]
pub(crate) struct PgServer {
    bin: PgBin,
    /// Socket, log and configuration; owned by the server's account.
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    account: Account,
    token: Option<u64>,
}

impl PgServer {
    /// A new, empty cluster in a fresh folder under `root`.
    pub(crate) fn init(bin: &PgBin, root: &Path) -> Result<Self> {
        let account = Account::for_server("postgres")?;
        let dir = server_dir(root, "postgres-", &account)?;
        let data = dir.join("data");
        let out = account
            .command(bin.program("initdb"))
            .current_dir(&dir)
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| Error::io(bin.program("initdb"), err))?;
        if !out.status.success() {
            return Err(ProveError::ServerFailed {
                server: "PostgreSQL (initdb)".into(),
                reason: tail(&String::from_utf8_lossy(&out.stderr)),
            }
            .into());
        }
        let mut server = Self::new(bin, dir, data, account);
        server.start()?;
        Ok(server)
    }

    /// A server on a restored data directory (a base backup set to recover), which is given to
    /// the server's account with mode 0700.
    pub(crate) fn open(bin: &PgBin, root: &Path, data: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let account = Account::for_server("postgres")?;
        let dir = server_dir(root, "postgres-", &account)?;
        account.give(data)?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
            .map_err(|err| Error::io(data, err))?;
        let mut server = Self::new(bin, dir, data.to_path_buf(), account);
        server.start()?;
        Ok(server)
    }

    fn new(bin: &PgBin, dir: PathBuf, data: PathBuf, account: Account) -> Self {
        Self {
            bin: bin.clone(),
            dir,
            data,
            port: rand::random_range(20_000..60_000),
            account,
            token: None,
        }
    }

    /// `postgresql:///DB?host=SOCKET_DIR&port=PORT&user=postgres`
    pub(crate) fn url(&self, db: &str) -> DbUrl {
        let text = format!(
            "postgresql:///{db}?host={}&port={}&user={SUPERUSER}",
            self.dir.display(),
            self.port
        );
        DbUrl::parse(&text, crate::postgres::SCHEMES).expect("a socket URL parses")
    }

    /// Runs one statement with psql and gives back its unaligned, tuples-only output.
    pub(crate) fn query(&self, db: &str, sql: &str) -> std::result::Result<String, String> {
        let out = std::process::Command::new(self.bin.program("psql"))
            .env("LC_ALL", "C")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.url(db).url().as_str())
            .stdin(Stdio::null())
            .output()
            .map_err(|err| err.to_string())?;
        if !out.status.success() {
            return Err(psql_error(&String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Waits until a recovering server has promoted (replayed all WAL it was given).
    pub(crate) fn wait_promoted(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.query("postgres", "SELECT pg_is_in_recovery()") {
                Ok(answer) if answer == "f" => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(ProveError::ServerFailed {
                        server: "PostgreSQL".into(),
                        reason: format!("recovery did not finish: {}", tail(&self.log())),
                    }
                    .into());
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Everything the server wrote to its log.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Starts the server with settings that keep it private: no TCP, a socket in its own
    /// folder, no archiving, and a pg_hba.conf of its own that trusts local connections.
    fn start(&mut self) -> Result<()> {
        let hba = self.dir.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\n").map_err(|err| Error::io(&hba, err))?;
        self.account.give(&hba)?;
        for path in [&self.dir, &self.data] {
            if path.to_string_lossy().contains('\'') {
                return Err(Error::BadSource {
                    path: path.clone(),
                    reason: "a scratch path with a single quote cannot be handed to pg_ctl; set \
                             temp_dir to another folder"
                        .into(),
                });
            }
        }
        let options = format!(
            "-p {} -k '{}' -c listen_addresses='' -c archive_mode=off -c hba_file='{}' \
             -c fsync=off",
            self.port,
            self.dir.display(),
            hba.display()
        );
        let pg_ctl = self.bin.program("pg_ctl");
        let out = self
            .account
            .command(&pg_ctl)
            .current_dir(&self.dir)
            .args([
                "-w",
                "-t",
                &START_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "-l",
            ])
            .arg(self.dir.join("server.log"))
            .arg("-D")
            .arg(&self.data)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|err| Error::io(&pg_ctl, err))?;
        let stop = self.stop_command();
        self.token = Some(account::register(Box::new(move || {
            let _ = std::process::Command::new(&stop[0])
                .args(&stop[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        })));
        if !out.status.success() {
            return Err(ProveError::ServerFailed {
                server: "PostgreSQL".into(),
                reason: tail(&format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                )),
            }
            .into());
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate`'s arguments.
    fn stop_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = ["-w", "-t", "60", "-m", "immediate", "-D"]
            .map(Into::into)
            .to_vec();
        args.push(self.data.clone().into_os_string());
        args.push("stop".into());
        args
    }

    /// The whole stop command as words, for the registry (which runs it from a signal handler).
    fn stop_command(&self) -> Vec<std::ffi::OsString> {
        let cmd = self.account.command(self.bin.program("pg_ctl"));
        let mut words = vec![cmd.get_program().to_os_string()];
        words.extend(cmd.get_args().map(std::ffi::OsStr::to_os_string));
        words.extend(self.stop_args());
        words
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let _ = self
                .account
                .command(self.bin.program("pg_ctl"))
                .args(self.stop_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            account::unregister(token);
        }
    }
}

/// psql's `ERROR:` (or `FATAL:`) line, without the prefix; its last line otherwise.
fn psql_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let found = lines
        .iter()
        .find_map(|l| l.split_once("ERROR:").or_else(|| l.split_once("FATAL:")))
        .map(|(_, rest)| rest.trim().to_string());
    found.unwrap_or_else(|| tail(stderr))
}

/// A fresh folder under `root` for one server, owned by its account.
pub(crate) fn server_dir(root: &Path, prefix: &str, account: &Account) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .map_err(|err| Error::io(root, err))?
        .keep();
    account.give(&dir)?;
    account.ensure_reaches(&dir)?;
    Ok(dir)
}
