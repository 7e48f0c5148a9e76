//! Restore safety: no crafted snapshot makes `restore` write outside its target directory.

// Each test makes its own repository with Palisade, writes snapshots into it with rustic_core
// directly (through a `ReadSource` that puts any node name into any tree), and restores them
// with `palisade_backup::restore` into a target next to directories that must stay untouched.

use std::{
    ffi::OsString,
    fmt,
    io::Cursor,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use palisade_backup::{
    BackupRequest, ChunkerOptions, Error, Location, Password, Repo, RestoreRequest, SourceSpec,
    backup, restore,
};
use rustic_backend::LocalBackend;
use rustic_core::{
    BackupOptions, Credentials, LocalDestination, LsOptions, NoProgressBars, ParentOptions,
    ReadSource, ReadSourceEntry, Repository, RepositoryBackends, RepositoryOptions, RestoreOptions,
    RusticResult, SnapshotOptions,
    repofile::{Metadata, Node, NodeType, SnapshotFile},
};
use tempfile::TempDir;

const PASSWORD: &str = "pw";

/// A test failure: the message of a failed check or the error that stopped the test.
///
/// The tests return `Result` and check with `ensure!` instead of `assert!`: `restore` swaps the
/// process-wide panic hook for a silent one while it runs, so the message of an assertion
/// failing in a test running at the same time could be lost.
struct Fail(String);

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: fmt::Display> From<E> for Fail {
    fn from(err: E) -> Self {
        Self(err.to_string())
    }
}

type TestResult<T = ()> = Result<T, Fail>;

/// Fails the test with a message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Fail(format!($($msg)+)));
        }
    };
}

/// What a crafted entry is.
enum Kind {
    Dir,
    File(&'static [u8]),
    Link(PathBuf),
}

/// One entry of a crafted tree: where the archiver puts it, and the name its node carries.
struct Crafted {
    path: PathBuf,
    name: OsString,
    kind: Kind,
}

/// An entry whose node name is the last component of its path: what an honest source makes.
fn plain(path: &str, kind: Kind) -> Crafted {
    let path = PathBuf::from(path);
    let name = path
        .file_name()
        .expect("a plain entry has a name")
        .to_owned();
    Crafted { path, name, kind }
}

/// An entry placed at `path` (its parent decides the tree) whose node carries `name`.
fn named(path: &str, name: impl Into<OsString>, kind: Kind) -> Crafted {
    Crafted {
        path: PathBuf::from(path),
        name: name.into(),
        kind,
    }
}

/// A `ReadSource` that hands the archiver the crafted entries exactly as they are.
struct CraftedSource(Vec<Crafted>);

type Entry = RusticResult<ReadSourceEntry<Cursor<Vec<u8>>>>;

impl ReadSource for CraftedSource {
    type Open = Cursor<Vec<u8>>;
    type Iter = std::vec::IntoIter<Entry>;

    fn size(&self) -> RusticResult<Option<u64>> {
        let size = self.0.iter().map(|entry| match entry.kind {
            Kind::File(bytes) => bytes.len() as u64,
            Kind::Dir | Kind::Link(_) => 0,
        });
        Ok(Some(size.sum()))
    }

    fn entries(&self) -> Self::Iter {
        let entries: Vec<Entry> = self
            .0
            .iter()
            .map(|entry| {
                let (node_type, mode, size, open) = match &entry.kind {
                    Kind::Dir => (NodeType::Dir, 0o755, 0, None),
                    Kind::File(bytes) => (
                        NodeType::File,
                        0o644,
                        bytes.len() as u64,
                        Some(Cursor::new(bytes.to_vec())),
                    ),
                    Kind::Link(target) => (NodeType::from_link(target), 0o777, 0, None),
                };
                let meta = Metadata {
                    mode: Some(mode),
                    mtime: Some(rustic_core::jiff::Timestamp::now()),
                    size,
                    ..Metadata::default()
                };
                Ok(ReadSourceEntry {
                    path: entry.path.clone(),
                    node: Node::new_node(&entry.name, node_type, meta),
                    open,
                })
            })
            .collect();
        entries.into_iter()
    }
}

/// One test's directories: a repository, a place for the target, and a directory outside it.
struct Harness {
    repo_dir: TempDir,
    /// The target is `base/target`, so `base` is where a `..` out of the target lands.
    base: TempDir,
    /// A directory outside the target that every restore must leave alone.
    outside: TempDir,
    /// Scratch space for Palisade's own backups.
    scratch: TempDir,
}

impl Harness {
    fn new() -> TestResult<Self> {
        let harness = Self {
            repo_dir: tempfile::tempdir()?,
            base: tempfile::tempdir()?,
            outside: tempfile::tempdir()?,
            scratch: tempfile::tempdir()?,
        };
        Repo::init(
            harness.location(),
            Password::new(PASSWORD.into()).expect("a password"),
            ChunkerOptions::default(),
            Arc::new(NoProgressBars),
        )?;
        Ok(harness)
    }

    fn location(&self) -> Location {
        Location::Local(self.repo_dir.path().to_path_buf())
    }

    fn target(&self) -> PathBuf {
        self.base.path().join("target")
    }

    fn outside(&self) -> &Path {
        self.outside.path()
    }

    fn open(&self) -> TestResult<Repo> {
        Ok(Repo::open(
            self.location(),
            Password::new(PASSWORD.into()).expect("a password"),
            Arc::new(NoProgressBars),
        )?)
    }

    /// Opens the repository with rustic_core itself, the way any restic client could.
    fn rustic(&self) -> TestResult<Repository<rustic_core::OpenStatus>> {
        let path = self.repo_dir.path().to_string_lossy();
        let backend = LocalBackend::new(path, std::iter::empty())?;
        let backends = RepositoryBackends::new(Arc::new(backend), None);
        let options = RepositoryOptions::default().no_cache(true);
        Ok(Repository::new(&options, &backends)?.open(&Credentials::password(PASSWORD))?)
    }

    /// Writes a snapshot holding exactly `entries` (in path order); returns its id.
    fn craft(&self, entries: Vec<Crafted>) -> TestResult<String> {
        let repo = self.rustic()?.to_indexed_ids()?;
        let options = BackupOptions::default().parent_opts(ParentOptions::default().force(true));
        let snap = SnapshotFile::from_options(&SnapshotOptions::default())?;
        let snap = repo.archive(
            &options,
            &CraftedSource(entries),
            snap,
            &[PathBuf::from("x")],
        )?;
        Ok(snap.id.to_string())
    }

    /// Backs up a real directory with Palisade, stored as `files/x`; returns the snapshot id.
    fn backup_dir(&self, dir: &Path) -> TestResult<String> {
        let request = BackupRequest {
            sources: vec![SourceSpec::Directory {
                path: dir.to_path_buf(),
                name: Some("x".into()),
                exclude: Vec::new(),
            }],
            stream: None,
            job: None,
            tags: Vec::new(),
            temp_dir: self.scratch.path().to_path_buf(),
            time: None,
        };
        Ok(backup(&self.open()?, request)?.snapshot)
    }

    /// Every path in the snapshot's tree, as Palisade lists it.
    fn tree(&self, id: &str) -> TestResult<Vec<String>> {
        let entries = palisade_backup::tree(&self.open()?, id)?;
        Ok(entries.into_iter().map(|entry| entry.path).collect())
    }

    fn restore(&self, id: &str, overwrite: bool) -> TestResult<palisade_backup::Result<()>> {
        self.restore_items(id, overwrite, &[])
    }

    /// Restores only the named items (all of the snapshot when `include` is empty).
    fn restore_items(
        &self,
        id: &str,
        overwrite: bool,
        include: &[&str],
    ) -> TestResult<palisade_backup::Result<()>> {
        let request = RestoreRequest {
            snapshot: id.to_string(),
            target: self.target(),
            include: include.iter().map(|item| (*item).to_string()).collect(),
            overwrite,
        };
        Ok(restore(&self.open()?, &request).map(drop))
    }

    /// Checks that a restore refused the snapshot as unsafe.
    fn expect_unsafe(&self, id: &str) -> TestResult {
        match self.restore(id, false)? {
            Err(Error::UnsafeEntry { path, reason }) => {
                ensure!(
                    !reason.is_empty(),
                    "UnsafeEntry for `{path}` gave no reason"
                );
                Ok(())
            }
            Err(err) => Err(Fail(format!(
                "expected Error::UnsafeEntry, the restore failed with: {err:?}"
            ))),
            Ok(()) => Err(Fail("the restore of a malicious snapshot succeeded".into())),
        }
    }

    /// Checks that the directory outside the target is still empty.
    fn expect_outside_empty(&self) -> TestResult {
        let found = listing(self.outside())?;
        ensure!(
            found.is_empty(),
            "the restore wrote outside its target, into {}: {found:?}",
            self.outside().display()
        );
        Ok(())
    }

    /// Checks that nothing but the target appeared next to it.
    fn expect_base_clean(&self) -> TestResult {
        let found: Vec<_> = listing(self.base.path())?
            .into_iter()
            .filter(|name| name != "target" && !name.starts_with("target/"))
            .collect();
        ensure!(
            found.is_empty(),
            "the restore wrote next to its target, into {}: {found:?}",
            self.base.path().display()
        );
        Ok(())
    }
}

/// Names of every entry below `dir`, recursively, without following symlinks.
fn listing(dir: &Path) -> TestResult<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path.clone());
            }
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            found.push(relative.to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// Fails with the messages of all failed checks, and what the restore returned.
fn all_of(outcome: &palisade_backup::Result<()>, checks: Vec<TestResult>) -> TestResult {
    let failed: Vec<String> = checks
        .into_iter()
        .filter_map(|check| check.err().map(|Fail(message)| message))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(Fail(format!(
        "{}\n(the restore returned {outcome:?})",
        failed.join("\n")
    )))
}

/// Checks that a restore that succeeded left a real directory at `link`, holding `file`.
fn expect_replaced(
    outcome: &palisade_backup::Result<()>,
    link: &Path,
    file: &str,
    bytes: &[u8],
) -> TestResult {
    if outcome.is_err() {
        return Ok(());
    }
    let real = std::fs::symlink_metadata(link)?.is_dir();
    ensure!(
        real && std::fs::read(link.join(file))? == bytes,
        "the restore succeeded, but {} is not a real directory holding {file}",
        link.display()
    );
    Ok(())
}

fn mode(path: &Path) -> TestResult<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Checks that `path` (a directory outside the target) still has permissions `expected`.
fn expect_mode(path: &Path, expected: u32) -> TestResult {
    let now = mode(path)?;
    ensure!(
        now == expected,
        "the restore changed the permissions of {} through the link to {now:o} (were \
         {expected:o})",
        path.display()
    );
    Ok(())
}

/// Restores a snapshot the way a plain rustic_core client does, with none of Palisade's checks.
fn naive_restore(harness: &Harness, id: &str) -> TestResult {
    let repo = harness.rustic()?.to_indexed()?;
    let snap = repo.get_snapshot_from_str(id, |_| true)?;
    let root = repo.node_from_snapshot_and_path(&snap, "")?;
    let target = harness.target();
    std::fs::create_dir_all(&target)?;
    let dest = LocalDestination::new(&format!("{}/", target.display()), true, false)?;
    let options = RestoreOptions::default();
    let entries = repo
        .ls(&root, &LsOptions::default())?
        .collect::<RusticResult<Vec<_>>>()?;
    let plan = repo.prepare_restore(&options, entries.iter().cloned().map(Ok), &dest, false)?;
    repo.restore(plan, &options, entries.into_iter().map(Ok), &dest)?;
    Ok(())
}

/// The snapshot of case 1: a file node named `../escaped` in the root tree.
fn dot_dot_snapshot(harness: &Harness) -> TestResult<String> {
    harness.craft(vec![
        named("evil", "../escaped", Kind::File(b"escaped\n")),
        plain("x", Kind::Dir),
        plain("x/fine", Kind::File(b"fine\n")),
    ])
}

#[test]
fn a_benign_crafted_snapshot_restores() -> TestResult {
    let harness = Harness::new()?;
    let outside = harness.outside().to_path_buf();
    let id = harness.craft(vec![
        plain("x", Kind::Dir),
        plain("x/hello", Kind::File(b"hello\n")),
        // A link may point anywhere, as long as nothing is restored through it.
        plain("x/link", Kind::Link(outside)),
        plain("x/sub", Kind::Dir),
        plain("x/sub/deep", Kind::File(b"deep\n")),
    ])?;
    if let Err(err) = harness.restore(&id, false)? {
        return Err(Fail(format!(
            "a benign snapshot failed to restore: {err:?}"
        )));
    }
    let target = harness.target();
    ensure!(
        std::fs::read(target.join("x/hello"))? == b"hello\n",
        "x/hello was not restored"
    );
    ensure!(
        std::fs::read(target.join("x/sub/deep"))? == b"deep\n",
        "x/sub/deep was not restored"
    );
    ensure!(
        std::fs::read_link(target.join("x/link"))? == harness.outside(),
        "x/link was not restored as a symlink to the outside directory"
    );
    harness.expect_outside_empty()?;
    harness.expect_base_clean()
}

/// Proves the harness can see an escape: rustic_core alone writes the `../escaped` file
/// beside the target, where Palisade must not.
#[test]
fn a_naive_restore_of_the_crafted_snapshot_escapes() -> TestResult {
    let harness = Harness::new()?;
    let id = dot_dot_snapshot(&harness)?;
    naive_restore(&harness, &id)?;
    let escaped = harness.base.path().join("escaped");
    ensure!(
        std::fs::read(&escaped).ok().as_deref() == Some(&b"escaped\n"[..]),
        "rustic_core did not write {}; the crafted snapshot proves nothing",
        escaped.display()
    );
    ensure!(
        harness.expect_base_clean().is_err(),
        "expect_base_clean did not notice {}",
        escaped.display()
    );
    Ok(())
}

#[test]
fn a_parent_dir_name_is_refused() -> TestResult {
    let harness = Harness::new()?;
    let id = dot_dot_snapshot(&harness)?;
    let tree = harness.tree(&id)?;
    ensure!(
        tree.iter().any(|path| path == "../escaped"),
        "the crafted tree lost its `../escaped` node: {tree:?}"
    );
    harness.expect_unsafe(&id)?;
    ensure!(
        !harness.base.path().join("escaped").exists(),
        "../escaped was written beside the target"
    );
    harness.expect_base_clean()?;
    harness.expect_outside_empty()
}

#[test]
fn a_parent_dir_name_deeper_in_the_tree_is_refused() -> TestResult {
    let harness = Harness::new()?;
    let id = harness.craft(vec![
        plain("x", Kind::Dir),
        plain("x/a", Kind::Dir),
        named("x/a/evil", "../../../escaped", Kind::File(b"escaped\n")),
    ])?;
    harness.expect_unsafe(&id)?;
    ensure!(
        !harness.base.path().join("escaped").exists(),
        "../../../escaped was written beside the target"
    );
    harness.expect_base_clean()?;
    harness.expect_outside_empty()
}

#[test]
fn an_absolute_name_is_refused() -> TestResult {
    let harness = Harness::new()?;
    let escaped = harness.outside().join("abs-escaped");
    let id = harness.craft(vec![
        plain("x", Kind::Dir),
        named("x/evil", escaped.as_os_str(), Kind::File(b"escaped\n")),
    ])?;
    let tree = harness.tree(&id)?;
    ensure!(
        tree.iter().any(|path| Path::new(path) == escaped),
        "the crafted tree lost its absolute node: {tree:?}"
    );
    harness.expect_unsafe(&id)?;
    ensure!(
        !escaped.exists(),
        "{} was written outside the target",
        escaped.display()
    );
    harness.expect_outside_empty()?;
    harness.expect_base_clean()
}

#[test]
fn an_absolute_directory_name_is_refused() -> TestResult {
    let harness = Harness::new()?;
    let id = harness.craft(vec![
        plain("x", Kind::Dir),
        named("x/evil", harness.outside().as_os_str(), Kind::Dir),
        plain("x/evil/abs-escaped", Kind::File(b"escaped\n")),
    ])?;
    harness.expect_unsafe(&id)?;
    harness.expect_outside_empty()?;
    harness.expect_base_clean()
}

#[test]
fn a_directory_shadowing_a_symlink_is_refused() -> TestResult {
    let harness = Harness::new()?;
    let id = harness.craft(vec![
        plain("x", Kind::Dir),
        plain("x/link", Kind::Link(harness.outside().to_path_buf())),
        plain("x/link", Kind::Dir),
        plain("x/link/pwned", Kind::File(b"pwned\n")),
    ])?;
    let tree = harness.tree(&id)?;
    let links = tree.iter().filter(|path| *path == "x/link").count();
    ensure!(
        links == 2 && tree.iter().any(|path| path == "x/link/pwned"),
        "the crafted tree does not hold `x/link` twice with `x/link/pwned`: {tree:?}"
    );
    harness.expect_unsafe(&id)?;
    ensure!(
        !harness.outside().join("pwned").exists(),
        "pwned was written through the link"
    );
    harness.expect_outside_empty()?;
    harness.expect_base_clean()
}

#[test]
fn a_name_reaching_through_a_symlink_is_refused() -> TestResult {
    let harness = Harness::new()?;
    let id = harness.craft(vec![
        plain("x", Kind::Dir),
        plain("x/link", Kind::Link(harness.outside().to_path_buf())),
        named("x/other", "link/pwned", Kind::File(b"pwned\n")),
    ])?;
    harness.expect_unsafe(&id)?;
    harness.expect_outside_empty()?;
    harness.expect_base_clean()
}

/// Restores a snapshot whose `files` is a symlink to the outside directory, then one where
/// `files/x` is a real directory, into the same target.
fn preexisting_top_level_link(overwrite: bool) -> TestResult {
    let harness = Harness::new()?;
    // Not the 0755 the snapshot's `files` directory has, so that a chmod through the link shows.
    let outside_mode = 0o700;
    std::fs::set_permissions(
        harness.outside(),
        std::fs::Permissions::from_mode(outside_mode),
    )?;
    let first = harness.craft(vec![plain(
        "files",
        Kind::Link(harness.outside().to_path_buf()),
    )])?;
    if let Err(err) = harness.restore(&first, false)? {
        return Err(Fail(format!(
            "the snapshot holding only a symlink failed to restore: {err:?}"
        )));
    }
    let link = harness.target().join("files");
    ensure!(
        std::fs::read_link(&link)? == harness.outside(),
        "the first restore did not leave the symlink `files` in the target"
    );

    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("data"), b"data\n")?;
    std::fs::create_dir(source.path().join("sub"))?;
    std::fs::write(source.path().join("sub/more"), b"more\n")?;
    let second = harness.backup_dir(source.path())?;
    let tree = harness.tree(&second)?;
    ensure!(
        tree.iter().any(|path| path == "files/x/data"),
        "the Palisade backup does not hold files/x/data: {tree:?}"
    );

    let outcome = harness.restore(&second, overwrite)?;
    // Succeeding is only safe if the link was replaced by a real directory.
    all_of(
        &outcome,
        vec![
            harness.expect_outside_empty(),
            expect_mode(harness.outside(), outside_mode),
            harness.expect_base_clean(),
            expect_replaced(&outcome, &link, "x/data", b"data\n"),
        ],
    )
}

#[test]
fn a_preexisting_symlink_in_the_target_is_not_followed() -> TestResult {
    preexisting_top_level_link(false)
}

#[test]
fn a_preexisting_symlink_in_the_target_is_not_followed_with_overwrite() -> TestResult {
    preexisting_top_level_link(true)
}

/// The same through Palisade alone: a backed-up directory held a symlink `sub`, later a real
/// directory `sub`, and both snapshots are restored into one target (the second one limited
/// to `include`).
fn preexisting_nested_link(overwrite: bool, include: &[&str]) -> TestResult {
    let harness = Harness::new()?;
    let source = tempfile::tempdir()?;
    std::fs::write(source.path().join("data"), b"data\n")?;
    std::os::unix::fs::symlink(harness.outside(), source.path().join("sub"))?;
    let first = harness.backup_dir(source.path())?;
    if let Err(err) = harness.restore(&first, false)? {
        return Err(Fail(format!(
            "the backup holding a symlink failed to restore: {err:?}"
        )));
    }
    let link = harness.target().join("files/x/sub");
    ensure!(
        std::fs::read_link(&link)? == harness.outside(),
        "the first restore did not leave the symlink files/x/sub in the target"
    );

    std::fs::remove_file(source.path().join("sub"))?;
    std::fs::create_dir(source.path().join("sub"))?;
    std::fs::write(source.path().join("sub/pwned"), b"pwned\n")?;
    let second = harness.backup_dir(source.path())?;

    let outcome = harness.restore_items(&second, overwrite, include)?;
    all_of(
        &outcome,
        vec![
            harness.expect_outside_empty(),
            harness.expect_base_clean(),
            expect_replaced(&outcome, &link, "pwned", b"pwned\n"),
        ],
    )
}

/// Without `overwrite`, restoring all of the second snapshot is refused anyway, because its
/// catalog differs from the one the first restore left.
#[test]
fn a_symlink_left_by_an_earlier_restore_is_not_followed() -> TestResult {
    preexisting_nested_link(false, &[])
}

/// Restoring just the item leaves the catalog out of it, so nothing conflicts.
#[test]
fn a_symlink_left_by_an_earlier_restore_is_not_followed_for_one_item() -> TestResult {
    preexisting_nested_link(false, &["x"])
}

#[test]
fn a_symlink_left_by_an_earlier_restore_is_not_followed_with_overwrite() -> TestResult {
    preexisting_nested_link(true, &[])
}
