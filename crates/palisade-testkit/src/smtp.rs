//! A private SMTP server per test: aiosmtpd (from PyPI, installed by scripts/test into the same
//! venv as moto) on a loopback port, optionally offering STARTTLS with a certificate made for
//! the test; every message it receives is read back from its output.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The Python that has aiosmtpd: `PALISADE_AIOSMTPD_PYTHON`, else the `python` beside moto's
/// `moto_server` (the venv scripts/test makes; found as [`crate::moto_binary`] finds moto).
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("PALISADE_AIOSMTPD_PYTHON") {
        return PathBuf::from(path);
    }
    let python = crate::moto_binary()
        .parent()
        .expect("moto_server is in a folder")
        .join("python");
    assert!(
        python.is_file(),
        "no python beside moto_server ({}); run scripts/test, which installs aiosmtpd into \
         moto's venv",
        python.display()
    );
    python
}

/// A running aiosmtpd, stopped when dropped.
#[derive(Debug)]
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA (here: the self-signed server certificate) a client must trust, with STARTTLS.
    pub ca_file: Option<PathBuf>,
    child: Child,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// A server without TLS.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A server that offers STARTTLS with a self-signed certificate for `localhost`.
    pub fn start_tls() -> Self {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = tls.then(|| self_signed(dir.path()));
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("smtpd.log")).unwrap();
        let mut command = Command::new(python());
        command
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if tls {
            command
                .arg("--tlscert")
                .arg(dir.path().join("cert.pem"))
                .arg("--tlskey")
                .arg(dir.path().join("key.pem"));
        }
        let mut child = command.spawn().expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "aiosmtpd exited ({status}); is it installed (pip install aiosmtpd)? its \
                     output:\n{}",
                    std::fs::read_to_string(dir.path().join("smtpd.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            ca_file,
            child,
            dir,
        }
    }

    /// Everything the server printed: the Debugging handler prints each message it receives.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smtpd.log")).unwrap_or_default()
    }

    /// Waits (polling, up to 60 s) until the output holds `n` messages; gives the output.
    pub fn wait_for_messages(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.output();
            if output
                .matches("---------- MESSAGE FOLLOWS ----------")
                .count()
                >= n
            {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd never received {n} message(s); its output:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA (`dir/ca.pem`) and a server certificate it signed for `localhost` and 127.0.0.1
/// (`dir/cert.pem`, key `dir/key.pem`), made with openssl's command line; gives the CA's path.
/// (A single self-signed certificate will not do: webpki refuses a CA certificate as a server's.)
fn self_signed(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=palisade test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    dir.join("ca.pem")
}
