//! The database launchers themselves: each server starts privately, answers, loads the Chinook
//! sample without errors, and is gone after drop.

use palisade_testkit::{mariadb::MariaDb, postgres::PgServer};

#[test]
fn postgres_loads_chinook_and_listens_only_on_its_socket() {
    let server = PgServer::start();
    let db = server.load_chinook();
    assert_eq!(server.psql(db, "SELECT count(*) FROM track"), "3503");
    assert_eq!(server.psql(db, "SELECT count(*) FROM artist"), "275");
    assert_eq!(server.psql("postgres", "SHOW listen_addresses"), "");
    let socket = server
        .socket_dir()
        .join(format!(".s.PGSQL.{}", server.port()));
    assert!(socket.exists(), "no socket at {}", socket.display());
    // The URL is what pg_dump and pg_basebackup get.
    let out = std::process::Command::new(palisade_testkit::postgres::bin("psql"))
        .args(["-X", "-A", "-t", "-c", "SELECT current_database()"])
        .arg(server.url(db))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "chinook");

    let data = server.data_dir().to_path_buf();
    drop(server);
    assert!(!data.exists(), "the data directory outlived the server");
}

#[test]
fn postgres_takes_settings_and_restarts_on_its_data() {
    let mut server = PgServer::start_with(&[("archive_mode", "on"), ("archive_command", "true")]);
    assert_eq!(server.psql("postgres", "SHOW archive_mode"), "on");
    server.psql(
        "postgres",
        "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2)",
    );
    server.stop();
    assert!(server.try_psql("postgres", "SELECT 1").is_err());
    server.start_again();
    assert_eq!(server.psql("postgres", "SELECT count(*) FROM kept"), "2");
    // Commands run as the server's account, which owns the data directory.
    let out = server.command("id").arg("-un").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        server.user().name()
    );
}

#[test]
fn mariadb_loads_chinook_over_its_socket() {
    let server = MariaDb::start();
    let db = server.load_chinook();
    assert_eq!(server.client(db, "SELECT count(*) FROM Track"), "3503");
    assert_eq!(server.client("", "SELECT @@skip_networking"), "1");
    assert!(server.socket().exists());
    let data = server.data_dir();
    drop(server);
    assert!(!data.exists(), "the data directory outlived the server");
}
