//! A private PostgreSQL server per test: initdb in a temp dir, Unix socket only, stopped and
//! deleted on drop. As root, the server runs as the `postgres` account (initdb refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::os_user::OsUser;

/// The superuser every private server is made with.
pub const SUPERUSER: &str = "postgres";

/// A running PostgreSQL server that listens only on a Unix socket in its own temp dir.
#[derive(Debug)]
pub struct PgServer {
    /// Socket, log, and (for [`PgServer::start`]) the data directory; owned by the server user.
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    user: OsUser,
    running: bool,
}

impl PgServer {
    /// A new cluster with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A new cluster with `settings` added to its postgresql.conf, such as
    /// `("archive_mode", "on")`.
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let user = OsUser::unprivileged("postgres");
        let dir = server_dir(&user);
        let data = dir.path().join("data");
        let out = user
            .command(bin("initdb"))
            .current_dir(dir.path())
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        append_settings(&data, settings);
        let mut server = Self {
            dir,
            data,
            port: crate::free_port(),
            user,
            running: false,
        };
        server.start_again();
        server
    }

    /// A server on an existing data directory (a restored backup, say), with `settings` added
    /// to its postgresql.conf. The directory is given to the server user with mode 0700, and is
    /// left in place on drop.
    pub fn open(data_dir: &Path, settings: &[(&str, &str)]) -> Self {
        Self::try_open(data_dir, settings).unwrap_or_else(|log| {
            panic!(
                "PostgreSQL did not start on {}; its log:\n{log}",
                data_dir.display()
            )
        })
    }

    /// Like [`PgServer::open`], but gives back the server's log when it does not start (a
    /// recovery that fails, say).
    pub fn try_open(data_dir: &Path, settings: &[(&str, &str)]) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let user = OsUser::unprivileged("postgres");
        user.chown_tree(data_dir);
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .expect("set the data directory's mode");
        append_settings(data_dir, settings);
        let mut server = Self {
            dir: server_dir(&user),
            data: data_dir.to_path_buf(),
            port: crate::free_port(),
            user,
            running: false,
        };
        server.try_start()?;
        Ok(server)
    }

    /// `postgresql:///DB?host=SOCKET_DIR&port=PORT&user=postgres`
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql:///{db}?host={}&port={}&user={SUPERUSER}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The port number in the socket's name (`.s.PGSQL.PORT`); nothing listens on TCP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The OS account the server runs as (its `archive_command` and `restore_command` too).
    pub fn user(&self) -> &OsUser {
        &self.user
    }

    /// A command that runs `program` as the server's OS account, in the server's temp dir.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.user.command(program);
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Runs `sql` in database `db` with psql and gives back its unaligned, tuples-only output
    /// (trimmed); panics with psql's error when a statement fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|err| panic!("psql failed on `{sql}`: {err}"))
    }

    /// Like [`PgServer::psql`], giving back the error instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self.psql_command(db).arg("-c").arg(sql).output();
        psql_result(out)
    }

    /// Runs an SQL script file in database `db`; panics with psql's error when it fails.
    pub fn psql_file(&self, db: &str, script: &Path) -> String {
        let out = self.psql_command(db).arg("-f").arg(script).output();
        psql_result(out).unwrap_or_else(|err| panic!("psql failed on {}: {err}", script.display()))
    }

    /// Polls `sql` until it prints `want`; panics after 60 s with the last answer and the log.
    pub fn wait_for(&self, db: &str, sql: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.try_psql(db, sql);
            if got.as_deref() == Ok(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{sql}` never gave `{want}` (last: {got:?}); server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Loads the Chinook sample database (database `chinook`) and gives back its name.
    pub fn load_chinook(&self) -> &'static str {
        self.psql_file("postgres", &crate::chinook_sql("Chinook_PostgreSql.sql"));
        "chinook"
    }

    /// Everything the server wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`); the data directory stays.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Starts the server again on the same data directory, socket and port.
    pub fn start_again(&mut self) {
        if let Err(log) = self.try_start() {
            panic!(
                "PostgreSQL did not start on {}; its log:\n{log}",
                self.data.display()
            );
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=''",
            self.port,
            self.dir.path().display()
        );
        let mut cmd = self.command(bin("pg_ctl"));
        clean_env(&mut cmd);
        let out = cmd
            .args(["-w", "-t", "120", "-o", &options, "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("-D")
            .arg(&self.data)
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ));
        }
        self.running = true;
        Ok(())
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = self
            .command(bin("pg_ctl"))
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdin(Stdio::null())
            .output();
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(bin("psql"));
        clean_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
            .env("PGCLIENTENCODING", "UTF8")
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}

/// A PostgreSQL program from the newest `/usr/lib/postgresql/NN/bin` (or `PALISADE_PG_BINDIR`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The PostgreSQL binaries' directory: `PALISADE_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/NN/bin`. Panics when there is none: these tests never skip silently.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PALISADE_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "the PostgreSQL tests need a server in /usr/lib/postgresql/NN/bin and found none; \
             install it with `apt-get install postgresql` (scripts/test does) or set \
             PALISADE_PG_BINDIR"
        )
    })
}

/// A temp dir the server user owns, for the socket, the log and maybe the data.
fn server_dir(user: &OsUser) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("palisade-pg-")
        .tempdir()
        .expect("temp dir");
    user.chown_tree(dir.path());
    dir
}

/// Appends `name = 'value'` lines to the data directory's postgresql.conf.
fn append_settings(data: &Path, settings: &[(&str, &str)]) {
    use std::io::Write;
    if settings.is_empty() {
        return;
    }
    let path = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut text = String::from("\n# added by palisade-testkit\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    file.write_all(text.as_bytes())
        .expect("write postgresql.conf");
}

/// No PALISADE_* or libpq settings from the caller's environment reach the server or psql.
fn clean_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("PALISADE_") || name.starts_with("PG") {
            cmd.env_remove(&*name);
        }
    }
    cmd.env("LC_ALL", "C");
}

fn psql_result(out: std::io::Result<Output>) -> Result<String, String> {
    let out = out.map_err(|e| format!("cannot run psql: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
