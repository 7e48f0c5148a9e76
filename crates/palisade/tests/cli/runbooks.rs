//! The runbooks in docs/runbooks run as written: every `sh` block of each, in order, in one
//! shell, against a repository holding Chinook (SQLite, a directory, PostgreSQL); the PITR
//! runbook runs in `pitr.rs`, against an archiving server.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use palisade_testkit::postgres::PgServer;

use crate::common::*;

/// The `sh` blocks of a markdown file, in order, unindented.
pub fn sh_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut inside: Option<usize> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match inside {
            None if trimmed == "```sh" => inside = Some(indent),
            Some(_) if trimmed == "```" => inside = None,
            Some(indent) => {
                script.push_str(line.get(indent..).unwrap_or(trimmed));
                script.push('\n');
            }
            None => {}
        }
    }
    script
}

/// Runs one runbook against a fresh repository and server.
fn run_runbook(name: &str) {
    let markdown = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/runbooks")
            .join(name),
    )
    .unwrap();
    let script = sh_blocks(&markdown);
    assert!(!script.trim().is_empty(), "{name} has no sh block");

    let server = PgServer::start();
    server.load_chinook();
    let env = Env::init();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(env.path("site")).unwrap();
    std::fs::write(env.path("site/index.html"), "<h1>shop</h1>\n").unwrap();
    env.backup(&[
        "--sqlite",
        chinook().to_str().unwrap(),
        "--dir",
        env.path("site").to_str().unwrap(),
        "--postgres",
        &server.url("postgres"),
        "--database",
        "chinook",
    ]);
    let bin = env.path("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_palisade"), bin.join("palisade")).unwrap();
    std::fs::write(env.path("new-key"), "a new key nobody else has\n").unwrap();
    std::fs::create_dir(env.path("restore")).unwrap();

    let mut cmd = Command::new("bash");
    for (key, _) in std::env::vars() {
        if key.starts_with("PALISADE_") {
            cmd.env_remove(key);
        }
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cmd
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env("TMPDIR", env.dir.path())
        .env("PALISADE_REPOSITORY", &env.location)
        .env("PALISADE_PASSWORD_FILE", &env.key)
        .env("PG_URL", server.url("postgres"))
        .env("NEW_KEY", env.path("new-key"))
        .env("RESTORE_DIR", env.path("restore"))
        .output()
        .unwrap();
    assert_status(&out, 0, &format!("the sh blocks of {name}:\n{script}"));
}

#[test]
fn restore_database_runbook_runs() {
    run_runbook("restore-database.md");
}

#[test]
fn restore_host_runbook_runs() {
    run_runbook("restore-host.md");
}

#[test]
fn rotate_key_runbook_runs() {
    run_runbook("rotate-key.md");
}

#[test]
fn compromised_host_runbook_runs() {
    run_runbook("compromised-host.md");
}

#[test]
fn every_runbook_is_listed_and_has_commands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks");
    let index = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "README.md" {
            continue;
        }
        assert!(index.contains(&format!("({name})")), "{name} is not listed");
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(text.contains("```sh") || text.contains("```text"), "{name}");
    }
}
