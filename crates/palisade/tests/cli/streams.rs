//! Dump streams from standard input: never mistaken for unchanged, and whole when restic
//! restores them.

use crate::common::*;

on_local_and_s3! {
    fn two_streams_under_one_name_each_restore_their_own_bytes(backend) {
        let env = Env::init_on(backend);
        // Same name, same length: nothing but the content tells them apart.
        let monday = noise(1, 3 << 20);
        let tuesday = noise(2, 3 << 20);
        let first = env.backup_stdin("app.sql", &monday);
        let second = env.backup_stdin("app.sql", &tuesday);
        assert_ne!(
            item(&first, "app.sql")["sha256"],
            item(&second, "app.sql")["sha256"]
        );

        for (report, bytes, name) in [(&first, &monday, "a"), (&second, &tuesday, "b")] {
            let target = env.restore(&snapshot_id(report), name);
            assert!(std::fs::read(target.join("dumps/app.sql")).unwrap() == *bytes);
        }
    }
}

on_local_and_s3! {
    fn restic_restores_a_stream_in_full(backend) {
        let env = Env::init_on(backend);
        let dump = noise(3, 5 << 20);
        let report = env.backup_stdin("db.dump", &dump);
        let target = env.path("restic-out");
        env.restic(&[
            "restore",
            &snapshot_id(&report),
            "--target",
            target.to_str().unwrap(),
        ]);
        let restored = std::fs::read(target.join("dumps/db.dump")).unwrap();
        assert_eq!(restored.len(), dump.len());
        assert!(restored == dump);
    }
}

on_local_and_s3! {
    fn an_empty_stream_is_an_empty_item(backend) {
        let env = Env::init_on(backend);
        let report = env.backup_stdin("empty.sql", b"");
        assert_eq!(item(&report, "empty.sql")["size"], 0);
        let target = env.restore("latest", "out");
        assert_eq!(std::fs::read(target.join("dumps/empty.sql")).unwrap(), b"");
        // Saved, but a person is told: an empty dump is usually a broken pipe line.
        let out = env.ok(&["backup", "--stdin", "--name", "again.sql"]);
        assert!(stderr(&out).contains("was empty"), "{}", stderr(&out));
    }
}
