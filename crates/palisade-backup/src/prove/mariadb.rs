//! A private, throwaway MariaDB server for restore tests: mariadb-install-db inside the scratch
//! directory, a Unix socket there and no networking, killed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    DbUrl, Error, Result,
    prove::{
        ProveError,
        account::{self, Account},
        pgserver::server_dir,
        tail,
    },
};

/// How long a fresh server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The server programs: `bin_dir` when given, else PATH, /usr/sbin and /usr/bin.
#[derive(Debug, Clone)]
pub(crate) struct MariaBin {
    install_db: PathBuf,
    server: PathBuf,
    client: PathBuf,
}

impl MariaBin {
    /// Finds mariadb-install-db, mariadbd and the client, or names the package to install.
    pub(crate) fn find(bin_dir: Option<&Path>) -> Result<Self> {
        let dirs: Vec<PathBuf> = match bin_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
                .collect(),
        };
        let find = |names: &[&str]| -> Result<PathBuf> {
            names
                .iter()
                .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
                .find(|path| path.is_file())
                .ok_or_else(|| {
                    ProveError::MissingServer {
                        program: names.join(" or "),
                        place: bin_dir.map_or_else(
                            || "on PATH or in /usr/sbin".into(),
                            |d| format!("in {}", d.display()),
                        ),
                        install: "install the MariaDB server (Debian: apt-get install \
                                  mariadb-server), or set the source's `bin_dir` to the folder \
                                  that holds it"
                            .into(),
                    }
                    .into()
                })
        };
        Ok(Self {
            install_db: find(&["mariadb-install-db", "mysql_install_db"])?,
            server: find(&["mariadbd", "mysqld"])?,
            client: find(&["mariadb", "mysql"])?,
        })
    }
}

/// A running private `mariadbd` listening only on `DIR/mysqld.sock`.
#[derive(Debug)]
pub(crate) struct MariaServer {
    dir: PathBuf,
    client: PathBuf,
    child: Child,
    token: u64,
}

impl MariaServer {
    /// Installs the system tables into a fresh folder under `root` and starts the server.
    pub(crate) fn start(bin: &MariaBin, root: &Path) -> Result<Self> {
        let account = Account::for_server("mysql")?;
        let dir = server_dir(root, "mariadb-", &account)?;
        let data = dir.join("data");
        let mut install = Command::new(&bin.install_db);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            // Native AIO contexts are a host-wide limit that servers running side by side
            // exhaust; a throwaway server does not need them.
            .arg("--innodb-use-native-aio=0")
            .arg(format!("--tmpdir={}", dir.display()))
            .stdin(Stdio::null());
        if account.switches() {
            install.arg("--user=mysql");
        }
        let out = install
            .output()
            .map_err(|err| Error::io(&bin.install_db, err))?;
        if !out.status.success() {
            return Err(ProveError::ServerFailed {
                server: "MariaDB (mariadb-install-db)".into(),
                reason: tail(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
            .into());
        }
        account.give(&dir)?;
        let mut server = Command::new(&bin.server);
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args(["--skip-networking", "--innodb-flush-log-at-trx-commit=0"])
            .arg("--innodb-use-native-aio=0")
            .arg(format!("--tmpdir={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if account.switches() {
            server.arg("--user=mysql");
        }
        let child = server.spawn().map_err(|err| Error::io(&bin.server, err))?;
        let pid = child.id().to_string();
        let token = account::register(Box::new(move || {
            let _ = Command::new("kill")
                .args(["-KILL", &pid])
                .stderr(Stdio::null())
                .status();
        }));
        let mut server = Self {
            dir,
            client: bin.client.clone(),
            child,
            token,
        };
        server.wait_until_answering()?;
        Ok(server)
    }

    /// `mysql://root@localhost/?socket=DIR/mysqld.sock`
    pub(crate) fn url(&self) -> DbUrl {
        let text = format!(
            "mysql://root@localhost/?socket={}",
            self.dir.join("mysqld.sock").display()
        );
        DbUrl::parse(&text, crate::mysql::SCHEMES).expect("a socket URL parses")
    }

    /// Runs `sql` as root in `db` and gives back the output (batch, no column names).
    pub(crate) fn query(&self, db: &str, sql: &str) -> std::result::Result<String, String> {
        let out = Command::new(&self.client)
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .args([
                "--user=root",
                "--batch",
                "--skip-column-names",
                "--database",
                db,
            ])
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| err.to_string())?;
        if !out.status.success() {
            return Err(tail(&String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn wait_until_answering(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.query("mysql", "SELECT 1").is_ok() {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                return Err(ProveError::ServerFailed {
                    server: "MariaDB".into(),
                    reason: tail(&self.log()),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        account::unregister(self.token);
    }
}
