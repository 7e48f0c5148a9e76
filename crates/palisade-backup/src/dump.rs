//! Dumps made by database tools run as child processes: server addresses whose password never
//! reaches a command line, tools found and started when the archiver reaches their item, and
//! readers that fail when the tool does.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    io::{self, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use crate::{Error, Result, catalog::ItemKind};

/// A database server's address as a URL, with its password held apart: the password goes to
/// the tools through their environment or an option file, never into their arguments, a log
/// line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    url: url::Url,
    password: Option<String>,
}

impl DbUrl {
    /// Parses `text`, whose scheme must be one of `schemes` (the first is named in errors).
    pub fn parse(text: &str, schemes: &[&str]) -> Result<Self> {
        let bad = |reason: String| Error::BadDatabaseUrl { reason };
        let example = match schemes.first().copied() {
            Some("mysql") => {
                "mysql://USER@HOST:PORT/DB or mysql://USER@localhost/DB?socket=/run/mysqld/mysqld.sock"
            }
            _ => "postgresql://USER@HOST:PORT/DB or postgresql:///DB?host=/run/postgresql",
        };
        if !text.contains("://") {
            // Never echo the text: a mistyped URL may still hold a password.
            return Err(bad(format!(
                "it does not start with a scheme and `://`; write it as {example}"
            )));
        }
        let (text, mut password) = split_password(text);
        let mut url = url::Url::parse(&text).map_err(|err| {
            bad(format!(
                "it is not a URL ({err}); write it as {example} (the password goes in the \
                 environment or the tool's password file, not necessarily in the URL)"
            ))
        })?;
        if !schemes.contains(&url.scheme()) {
            return Err(bad(format!(
                "the scheme `{}` is not one of {}; write it as {example}",
                url.scheme(),
                schemes.join(", ")
            )));
        }
        // libpq also takes `?password=`; it must not travel with the URL either.
        if url.query_pairs().any(|(key, _)| key == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut kept = url::form_urlencoded::Serializer::new(String::new());
            for (key, value) in pairs {
                if key == "password" {
                    password = Some(value);
                } else {
                    kept.append_pair(&key, &value);
                }
            }
            let kept = kept.finish();
            url.set_query((!kept.is_empty()).then_some(kept.as_str()));
        }
        Ok(Self { url, password })
    }

    /// The URL without its password, as logs and the catalog show it.
    pub fn shown(&self) -> String {
        self.url.to_string()
    }

    /// The URL (without password) for another database on the same server.
    pub(crate) fn for_database(&self, database: &str) -> url::Url {
        let mut url = self.url.clone();
        let encoded: String =
            url::form_urlencoded::byte_serialize(database.as_bytes()).collect::<String>();
        url.set_path(&format!("/{}", encoded.replace('+', "%20")));
        url
    }

    /// The database the URL names, if any.
    pub(crate) fn database(&self) -> Option<String> {
        let path = self.url.path().trim_start_matches('/');
        (!path.is_empty()).then(|| {
            percent_encoding::percent_decode_str(path)
                .decode_utf8_lossy()
                .into_owned()
        })
    }

    pub(crate) fn url(&self) -> &url::Url {
        &self.url
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

/// `text` without the password of its user info, and the password (percent-decoded).
///
/// A user with an empty host (`postgresql://app@/db?host=/run/postgresql`, which libpq reads
/// as a socket connection) moves to a `user=` setting, the form URL parsers accept.
fn split_password(text: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = text.split_once("://") else {
        return (text.to_string(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((info, host)) = authority.rsplit_once('@') else {
        return (text.to_string(), None);
    };
    let (user, password) = match info.split_once(':') {
        Some((user, password)) => (
            user,
            Some(
                percent_encoding::percent_decode_str(password)
                    .decode_utf8_lossy()
                    .into_owned(),
            ),
        ),
        None => (info, None),
    };
    if !host.is_empty() || user.is_empty() {
        return (format!("{scheme}://{user}@{host}{tail}"), password);
    }
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, format!("{query}&user={user}")),
        None => (tail, format!("user={user}")),
    };
    (format!("{scheme}://{path}?{query}"), password)
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shown())
    }
}

/// The item name for a database's dump: the database's name, with `/`, `%` and control
/// characters percent-encoded (an item name is one plain path component), and `extension`.
pub(crate) fn dump_item_name(database: &str, extension: &str) -> String {
    let mut name = String::new();
    for c in database.chars() {
        match c {
            '/' | '%' => name.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    name.push_str(&format!("%{b:02X}"));
                }
            }
            c => name.push(c),
        }
    }
    if name == "." || name == ".." {
        name = name.replace('.', "%2E");
    }
    format!("{name}.{extension}")
}

/// Finds a tool in `bin_dir` (when set) or on PATH, trying each name in turn.
pub(crate) fn find_tool(names: &[&str], bin_dir: Option<&Path>, install: &str) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = match bin_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).collect())
            .unwrap_or_default(),
    };
    for name in names {
        for dir in &dirs {
            let path = dir.join(name);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    let place = match bin_dir {
        Some(dir) => format!("in {}", dir.display()),
        None => "on PATH".to_string(),
    };
    Err(Error::MissingTool {
        tool: names.join(" or "),
        place,
        install: install.into(),
    })
}

/// A command ready to run, with extra environment and the label errors use.
pub(crate) struct Tool {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, String)>,
    /// What the command does, for messages: `pg_dump of database app`, say.
    pub(crate) what: String,
}

impl Tool {
    pub(crate) fn new(program: &Path, what: impl Into<String>) -> Self {
        Self {
            program: program.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            what: what.into(),
        }
    }

    pub(crate) fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs the tool to the end with `input` on its standard input; returns its output.
    pub(crate) fn output(&self, input: &[u8]) -> io::Result<String> {
        use std::io::Write;
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| spawn_error(&self.program, err))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output()?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(tool_failed(
                &self.what,
                out.status,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the tool with its standard output as the returned reader.
    pub(crate) fn spawn_reader(&self) -> io::Result<ChildReader> {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| spawn_error(&self.program, err))?;
        // rustic_core's chunker asks for very small reads; without a buffer each would be a
        // system call on the pipe (measured: one byte per read, 6x slower than stdin).
        let stdout = std::io::BufReader::with_capacity(
            PIPE_BUFFER,
            child.stdout.take().expect("stdout is piped"),
        );
        let stderr = collect_stderr(&mut child);
        Ok(ChildReader {
            what: self.what.clone(),
            child,
            stdout,
            stderr: Some(stderr),
            finish: None,
            done: false,
        })
    }
}

fn spawn_error(program: &Path, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("cannot run {}: {err}", program.display()),
    )
}

/// Reads a child's standard error on a thread of its own, so that a chatty tool never blocks.
pub(crate) fn collect_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// The error for a tool that exited with `status`, quoting the end of what it printed.
pub(crate) fn tool_failed(what: &str, status: ExitStatus, stderr: &str) -> io::Error {
    io::Error::other(format!("{what} failed ({status}): {}", stderr_tail(stderr)))
}

/// The last lines a tool printed, trimmed to one short paragraph.
pub(crate) fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        return "it printed nothing".into();
    }
    let mut tail: String = tail.chars().take(600).collect();
    if tail.len() < lines.join(" / ").len() && !tail.ends_with('…') {
        tail.push('…');
    }
    tail
}

/// How much of a tool's output is read at once.
pub(crate) const PIPE_BUFFER: usize = 1 << 20;

/// Work to do once a tool's output was read in full and the tool succeeded (count rows, close a
/// session); its error fails the read.
pub(crate) type Finish = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// A child's standard output. At its end the child must have exited with success, else the
/// read fails with what the child printed; a reader dropped early kills the child.
pub(crate) struct ChildReader {
    what: String,
    child: Child,
    stdout: std::io::BufReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    finish: Option<Finish>,
    done: bool,
}

impl ChildReader {
    /// Runs `finish` after a successful end.
    pub(crate) fn on_success(mut self, finish: Finish) -> Self {
        self.finish = Some(finish);
        self
    }

    fn end(&mut self) -> io::Result<()> {
        self.done = true;
        let status = self.child.wait()?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(tool_failed(&self.what, status, &stderr));
        }
        if !stderr.trim().is_empty() {
            log::info!("{}: {}", self.what, stderr_tail(&stderr));
        }
        match self.finish.take() {
            Some(finish) => finish(),
            None => Ok(()),
        }
    }
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.end()?;
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a dump item knows about itself, partly before it runs and partly once it was read.
#[derive(Debug, Clone, Default)]
pub(crate) struct DumpFacts {
    pub(crate) database: Option<String>,
    pub(crate) server_version: Option<String>,
    pub(crate) dumped_by: Option<String>,
    /// Row counts per table, filled in when the dump has been read in full.
    pub(crate) tables: Arc<Mutex<Option<BTreeMap<String, u64>>>>,
}

/// Starts a dump's producer; called once, when the archiver opens the item.
pub(crate) type Start = Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>;

/// One item whose bytes a tool produces while the archive reads them.
pub(crate) struct DumpItem {
    pub(crate) kind: ItemKind,
    pub(crate) name: String,
    /// Where it comes from, as the catalog records it (never with a password).
    pub(crate) source: String,
    pub(crate) facts: DumpFacts,
    pub(crate) start: Start,
}

impl fmt::Debug for DumpItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DumpItem")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_held_apart_from_the_url() {
        let url = DbUrl::parse(
            "postgresql://app:s%40cret@db.internal:5433/shop?sslmode=require",
            &["postgresql", "postgres"],
        )
        .unwrap();
        assert_eq!(url.password(), Some("s@cret"));
        assert!(!url.shown().contains("cret"), "{}", url.shown());
        assert!(!format!("{url:?}").contains("cret"));
        assert_eq!(url.database().as_deref(), Some("shop"));
        let other = url.for_database("my db");
        assert_eq!(other.path(), "/my%20db");
        assert_eq!(other.query(), Some("sslmode=require"));
    }

    #[test]
    fn a_password_without_a_host_is_held_apart_too() {
        let url = DbUrl::parse(
            "postgresql://postgres:pw@/app?host=/run/postgresql",
            &["postgresql"],
        )
        .unwrap();
        assert_eq!(url.password(), Some("pw"));
        assert!(!url.shown().contains("pw"), "{}", url.shown());
        assert!(url.shown().contains("user=postgres"), "{}", url.shown());
        let url = DbUrl::parse(
            "postgresql://db/app?password=s3&sslmode=require",
            &["postgresql"],
        )
        .unwrap();
        assert_eq!(url.password(), Some("s3"));
        assert_eq!(url.url().query(), Some("sslmode=require"));
    }

    #[test]
    fn odd_database_names_become_plain_item_names() {
        assert_eq!(dump_item_name("shop", "dump"), "shop.dump");
        assert_eq!(dump_item_name("a/b", "sql"), "a%2Fb.sql");
        assert_eq!(dump_item_name("100%", "sql"), "100%25.sql");
        assert_eq!(dump_item_name("new\nline", "sql"), "new%0Aline.sql");
        assert!(crate::source::validate_name(&dump_item_name("x/../y", "dump")).is_ok());
    }

    #[test]
    fn a_mistyped_url_is_never_echoed() {
        let err = DbUrl::parse("postgres:/x:secretXYZ@foo", &["postgresql", "postgres"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretXYZ"), "{err}");
    }

    #[test]
    fn bad_urls_say_how_to_write_one() {
        let err = DbUrl::parse("localhost:5432", &["postgresql", "postgres"]).unwrap_err();
        assert!(err.to_string().contains("postgresql://"), "{err}");
        let err = DbUrl::parse("http://x/y", &["mysql"]).unwrap_err();
        assert!(err.to_string().contains("mysql://"), "{err}");
    }

    #[test]
    fn a_failing_tool_fails_the_read_with_its_message() {
        let tool = Tool::new(Path::new("/bin/sh"), "test dump")
            .arg("-c")
            .arg("printf partial; echo 'out of disk' >&2; exit 3");
        let mut reader = tool.spawn_reader().unwrap();
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, b"partial");
        let text = err.to_string();
        assert!(text.contains("test dump failed"), "{text}");
        assert!(text.contains("out of disk"), "{text}");
    }

    #[test]
    fn a_missing_tool_names_the_fix() {
        let err = find_tool(
            &["pg_dump_nonexistent"],
            Some(Path::new("/nonexistent")),
            "install it",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pg_dump_nonexistent"), "{text}");
        assert!(text.contains("install it"), "{text}");
    }
}
