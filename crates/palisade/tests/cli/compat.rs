//! No lock-in: restic itself checks and restores what Palisade wrote.

use crate::common::*;

on_local_and_s3! {
    fn restic_checks_and_restores_a_palisade_repository(backend) {
        let env = Env::init_on(backend);
        let site = env.path("site");
        std::fs::create_dir_all(site.join("a/b")).unwrap();
        std::fs::write(site.join("a/b/page.html"), "<h1>hello</h1>\n".repeat(1000)).unwrap();
        std::fs::write(site.join("robots.txt"), "User-agent: *\n").unwrap();
        let report = env.backup(&[
            "--sqlite",
            chinook().to_str().unwrap(),
            "--dir",
            site.to_str().unwrap(),
        ]);
        env.backup_stdin(
            "extra.sql",
            &std::fs::read(shared_data().join("chinook/Chinook_PostgreSql.sql")).unwrap(),
        );

        env.restic(&["check", "--read-data"]);
        let ours = env.restore(&snapshot_id(&report), "palisade-out");
        let theirs = env.path("restic-out");
        env.restic(&[
            "restore",
            &snapshot_id(&report),
            "--target",
            theirs.to_str().unwrap(),
        ]);
        assert_same_tree(&ours, &theirs);
        assert_eq!(
            sha256_file(&theirs.join("databases/Chinook_Sqlite.sqlite")),
            sha256_file(&chinook())
        );
        assert_same_tree(&site, &theirs.join("files/site"));

        let listed = String::from_utf8(env.restic(&["snapshots", "--json"]).stdout).unwrap();
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 2);
    }
}
