//! A private MariaDB server per test: mariadb-install-db in a temp dir, a Unix socket and no
//! TCP, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account with every privilege; it logs in over the socket without a password.
pub const ROOT_USER: &str = "root";

/// A running `mariadbd` that listens only on `DIR/mysqld.sock`.
#[derive(Debug)]
pub struct MariaDb {
    dir: tempfile::TempDir,
    child: Child,
}

impl MariaDb {
    /// Installs the system tables into a fresh data directory and starts the server.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("palisade-mariadb-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let mut install = Command::new(program("mariadb-install-db"));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null());
        if crate::os_user::is_root() {
            install.arg("--user=root");
        }
        let out = install.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let child = spawn(dir.path(), &data);
        let server = Self { dir, child };
        server.wait_until_answering();
        server
    }

    /// The server's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// The user with every privilege, which logs in without a password.
    pub fn root_user(&self) -> &'static str {
        ROOT_USER
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `sql` as root in database `db` (empty for none) and gives back the output of
    /// `mariadb --batch --skip-column-names` (trimmed); panics with the client's error.
    pub fn client(&self, db: &str, sql: &str) -> String {
        self.try_client(db, sql)
            .unwrap_or_else(|err| panic!("mariadb failed on `{sql}`: {err}"))
    }

    /// Like [`MariaDb::client`], giving back the error instead of panicking.
    pub fn try_client(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .client_command(db)
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mariadb: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs an SQL script file as root; panics with the client's error when it fails.
    pub fn client_file(&self, script: &Path) {
        let input = std::fs::File::open(script)
            .unwrap_or_else(|e| panic!("open {}: {e}", script.display()));
        let out = self
            .client_command("")
            .stdin(input)
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "mariadb failed on {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Loads the Chinook sample database (database `Chinook`) and gives back its name.
    pub fn load_chinook(&self) -> &'static str {
        self.client_file(&crate::chinook_sql("Chinook_MySql.sql"));
        "Chinook"
    }

    /// Everything the server wrote to its error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// A `mariadb` client command for root on the server's socket, with no option files read.
    pub fn client_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(program("mariadb"));
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user", ROOT_USER, "--batch", "--skip-column-names"])
            .args(["--default-character-set=utf8mb4"]);
        if !db.is_empty() {
            cmd.arg(db);
        }
        cmd
    }

    /// Polls `SELECT 1` until the server answers; panics with its log when it exits first or
    /// after 60 s.
    fn wait_until_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.try_client("", "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not answer within 60 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, data: &Path) -> Child {
    let mut cmd = Command::new(program("mariadbd"));
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
        .arg(format!("--log-error={}", dir.join("error.log").display()))
        .arg("--skip-networking")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if crate::os_user::is_root() {
        cmd.arg("--user=root");
    }
    cmd.spawn()
        .expect("start mariadbd (apt-get install mariadb-server)")
}

/// A MariaDB program: on PATH, or in /usr/sbin (where Debian puts mariadbd).
fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "the MariaDB tests need {name} and found none on PATH or in /usr/sbin; install it \
             with `apt-get install mariadb-server mariadb-client` (scripts/test does)"
        )
    })
}
