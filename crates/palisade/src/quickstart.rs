//! `palisade quickstart`: the main job end to end on a demo application, with nothing to install.
//!
//! It writes a demo app (an SQLite database and an uploads folder), a config and a key file,
//! creates a local repository, backs up, restores into a scratch folder and proves the restore
//! byte for byte and row for row.

use std::{
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use palisade_backup::{ChunkerOptions, Location, Password, Repo, RestoreRequest, sqlite};
use rand::RngCore;

use crate::{Outcome, cli::Global, config::Config, progress};

const CONFIG: &str = "\
# Palisade config written by `palisade quickstart`. Paths are relative to this file.
repository = \"repo\"
password_file = \"palisade.key\"

[[jobs]]
name = \"app\"
sources = [
  { sqlite = \"app/app.db\" },
  { dir = \"app/uploads\", exclude = [\"*.tmp\"] },
]
";

/// Runs the demo in `dir`, creating it on first use and reusing it afterwards.
pub fn run(dir: &Path, global: &Global) -> Result<Outcome> {
    let say = |line: String| {
        if !global.quiet && !global.json {
            println!("{line}");
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let config_path = dir.join("palisade.toml");
    if config_path.exists() {
        say(format!("reusing the demo in {}", dir.display()));
    } else {
        write_demo(&dir)?;
        say(format!(
            "wrote a demo app in {}: app/app.db (SQLite, WAL mode) and app/uploads/",
            dir.display()
        ));
        say("wrote palisade.toml and a random key in palisade.key (mode 0600)".into());
    }
    let config = Config::load(&config_path, true)?;
    let job = config.job("app")?.clone();
    let location = Location::parse(
        config
            .repository_location()
            .context("config has no repository")?,
    )?;
    let key = config
        .password_file
        .clone()
        .context("config has no password_file")?;
    let bars = progress::bars(global.quiet, global.json);

    let repo = if dir.join("repo/config").exists() {
        Repo::open(location, Password::from_file(&key)?, bars)?
    } else {
        let repo = Repo::init(
            location,
            Password::from_file(&key)?,
            ChunkerOptions::default(),
            bars,
        )?;
        say(format!("created repository {} in repo/", &repo.id()[..8]));
        repo
    };

    let scratch = crate::scratch::Scratch::new(&std::env::temp_dir())?;
    let report = palisade_backup::backup(
        &repo,
        palisade_backup::BackupRequest {
            sources: job.specs()?,
            stream: None,
            job: Some(job.name.clone()),
            tags: vec!["quickstart".into()],
            temp_dir: scratch.path().to_path_buf(),
            time: None,
        },
    )?;
    say(format!(
        "backed up job `app` as snapshot {}: {} item(s), {} file(s), {} bytes read, {} bytes added",
        &report.snapshot[..8],
        report.catalog.items.len(),
        report.files,
        report.bytes_read,
        report.bytes_added
    ));

    let scratch = dir.join("restore-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    let restored = palisade_backup::restore(
        &repo,
        &RestoreRequest {
            snapshot: report.snapshot.clone(),
            target: scratch.clone(),
            include: vec![],
            overwrite: false,
        },
    )?;
    say(format!(
        "restored it into restore-check/: {} file(s), every item's SHA-256 equal to the catalog",
        restored.files
    ));

    verify_against_live(&dir, &scratch, &report)?;
    say(
        "verified: the database passes integrity_check with the same row counts, and every \
         upload is byte-identical to the original"
            .into(),
    );

    if global.json {
        crate::commands::print_json(&report)?;
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("palisade"));
    say(format!(
        "\nnext, from {} (palisade is {}; `cargo install --path crates/palisade` puts it on \
         your PATH):\n  palisade snapshots                    list snapshots\n  \
         palisade ls latest                    the catalog: items, sizes, hashes, row counts\n  \
         palisade check --read-data            re-read and verify every pack\n  \
         palisade backup                       run every job in palisade.toml again\n  \
         palisade restore latest --target DIR  restore into DIR\n  \
         restic -r repo --password-file palisade.key snapshots   the same repository, read by restic",
        dir.display(),
        exe.display()
    ));
    Ok(if report.is_partial() {
        Outcome::Partial
    } else {
        Outcome::Done
    })
}

/// Compares the restored copy with the live demo: row counts and integrity of the database, and
/// the bytes of every upload.
fn verify_against_live(
    dir: &Path,
    scratch: &Path,
    report: &palisade_backup::BackupReport,
) -> Result<()> {
    let db = scratch.join("databases/app.db");
    let check = sqlite::integrity(&db)?;
    ensure!(
        check.is_ok(),
        "the restored database fails its integrity check: {check:?}"
    );
    let restored_rows = sqlite::row_counts(&db)?;
    let cataloged = report
        .catalog
        .item("app.db")
        .and_then(|i| i.tables.clone())
        .context("the catalog lists no row counts for app.db")?;
    ensure!(
        restored_rows == cataloged,
        "row counts differ: restored {restored_rows:?}, catalog {cataloged:?}"
    );
    compare_trees(&dir.join("app/uploads"), &scratch.join("files/uploads"))
}

fn compare_trees(original: &Path, restored: &Path) -> Result<()> {
    for entry in std::fs::read_dir(original)? {
        let entry = entry?;
        let from = entry.path();
        let to = restored.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            compare_trees(&from, &to)?;
        } else if kind.is_symlink() {
            ensure!(
                std::fs::read_link(&from)? == std::fs::read_link(&to)?,
                "symlink {} was not restored as the same link",
                to.display()
            );
        } else if from.extension().is_some_and(|e| e == "tmp") {
            ensure!(!to.exists(), "excluded file {} was restored", to.display());
        } else if std::fs::read(&from)? != std::fs::read(&to)? {
            bail!("{} differs from {}", to.display(), from.display());
        }
    }
    Ok(())
}

fn write_demo(dir: &Path) -> Result<()> {
    let app = dir.join("app");
    let uploads = app.join("uploads");
    std::fs::create_dir_all(uploads.join("avatars"))?;
    std::fs::create_dir_all(uploads.join("empty folder"))?;
    write_database(&app.join("app.db"))?;
    std::fs::write(
        uploads.join("terms of service.txt"),
        "Be kind. Back up often.\n",
    )?;
    std::fs::write(
        uploads.join("upload-in-progress.tmp"),
        "left out by the job's exclude\n",
    )?;
    let mut rng = rand::rng();
    for n in 0..5 {
        let mut bytes = vec![0u8; 4096 * (n + 1)];
        rng.fill_bytes(&mut bytes);
        std::fs::write(uploads.join(format!("avatars/user-{n}.png")), bytes)?;
    }
    std::os::unix::fs::symlink("avatars/user-0.png", uploads.join("current-avatar.png"))?;

    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("palisade.key"))?;
    std::io::Write::write_all(&mut file, format!("{}\n", hex::encode(key)).as_bytes())?;
    std::fs::set_permissions(
        dir.join("palisade.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    std::fs::write(dir.join("palisade.toml"), CONFIG)?;
    Ok(())
}

/// A small shop database: customers, products and orders with foreign keys, in WAL mode.
fn write_database(path: &PathBuf) -> Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA foreign_keys = ON;
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE);
         CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT NOT NULL, price_cents INTEGER);
         CREATE TABLE orders (id INTEGER PRIMARY KEY,
                              customer_id INTEGER NOT NULL REFERENCES customers(id),
                              product_id INTEGER NOT NULL REFERENCES products(id),
                              quantity INTEGER NOT NULL);",
    )?;
    let tx = conn.unchecked_transaction()?;
    for n in 1..=200 {
        tx.execute(
            "INSERT INTO customers (name, email) VALUES (?1, ?2)",
            (format!("Customer {n}"), format!("customer{n}@example.com")),
        )?;
    }
    for n in 1..=50 {
        tx.execute(
            "INSERT INTO products (title, price_cents) VALUES (?1, ?2)",
            (format!("Product {n}"), 199 * n),
        )?;
    }
    for n in 1..=1000 {
        tx.execute(
            "INSERT INTO orders (customer_id, product_id, quantity) VALUES (?1, ?2, ?3)",
            (1 + n % 200, 1 + n % 50, 1 + n % 4),
        )?;
    }
    tx.commit()?;
    Ok(())
}
