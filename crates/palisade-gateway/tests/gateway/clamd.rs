//! A private ClamAV daemon per test: Debian's clamd with a database of one signature of our
//! own for the EICAR test string (signature downloads are not available here), on a Unix
//! socket in a temporary directory.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The name clamd reports for the test signature (`.UNOFFICIAL` marks a database of one's own).
pub const SIGNATURE: &str = "Palisade-Test-EICAR.UNOFFICIAL";

/// The EICAR anti-virus test string, put together at run time so that no scanner flags this
/// source file.
pub fn eicar() -> Vec<u8> {
    let halves = [
        "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ];
    halves.concat().into_bytes()
}

/// A running clamd, on a Unix socket and on a loopback TCP port; stopped when dropped.
pub struct ClamdServer {
    pub socket: PathBuf,
    /// `127.0.0.1:PORT`.
    pub address: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// clamd: `$PALISADE_CLAMD`, else Debian's `/usr/sbin/clamd`, else `clamd` on `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PALISADE_CLAMD") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/sbin/clamd");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("clamd")
}

impl ClamdServer {
    /// Starts clamd and waits until its socket answers (well under a second with one
    /// signature).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        let hex: String = eicar().iter().map(|b| format!("{b:02x}")).collect();
        let name = SIGNATURE.trim_end_matches(".UNOFFICIAL");
        // An extended signature (.ndb): any file type, at any offset.
        std::fs::write(db.join("palisade-test.ndb"), format!("{name}:0:*:{hex}\n")).unwrap();
        let socket = dir.path().join("clamd.sock");
        // A port that was free a moment ago.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("clamd.log");
        let config = format!(
            "DatabaseDirectory {}\nLocalSocket {}\nLogFile {}\nTemporaryDirectory {}\n\
             TCPSocket {port}\nTCPAddr 127.0.0.1\nForeground yes\nStreamMaxLength 1M\n",
            db.display(),
            socket.display(),
            log.display(),
            dir.path().display(),
        );
        let conf = dir.path().join("clamd.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start clamd ({err}); install Debian's clamav-daemon \
                     (apt-get install clamav-daemon) or set PALISADE_CLAMD"
                )
            });
        let mut server = Self {
            socket,
            address: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        server.wait_ready(&log);
        server
    }

    fn wait_ready(&mut self, log: &std::path::Path) {
        let start = Instant::now();
        let listening = |server: &Self| {
            server.socket.exists() && std::net::TcpStream::connect(&server.address).is_ok()
        };
        while !listening(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("clamd exited with {status}:\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "clamd did not open its sockets within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills clamd the hard way, as a crash would: its socket file stays, and nobody answers
    /// on it.
    pub fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ClamdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
