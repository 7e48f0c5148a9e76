//! Restore rules: no silent overwrite, overwrite truncates, repeatable, per item.

use crate::common::*;

fn env_with_site(backend: Backend) -> (Env, String) {
    let env = Env::init_on(backend);
    let site = env.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "short").unwrap();
    std::fs::write(site.join("other.txt"), "other").unwrap();
    let report = env.backup(&[
        "--dir",
        site.to_str().unwrap(),
        "--sqlite",
        chinook().to_str().unwrap(),
    ]);
    (env, snapshot_id(&report))
}

on_local_and_s3! {
    fn restoring_twice_into_the_same_place_works(backend) {
        let (env, id) = env_with_site(backend);
        let target = env.restore(&id, "out");
        env.restore(&id, "out");
        assert_eq!(
            std::fs::read(target.join("files/site/index.html")).unwrap(),
            b"short"
        );
    }
}

on_local_and_s3! {
    fn a_changed_file_is_not_overwritten_without_the_flag(backend) {
        let (env, id) = env_with_site(backend);
        let target = env.restore(&id, "out");
        let page = target.join("files/site/index.html");
        std::fs::write(&page, "a much longer local edit that must survive").unwrap();

        let out = env.expect(&["restore", &id, "--target", target.to_str().unwrap()], 1);
        assert!(stderr(&out).contains("--overwrite"), "{}", stderr(&out));
        assert!(stderr(&out).contains("index.html"), "{}", stderr(&out));
        assert_eq!(
            std::fs::read(&page).unwrap(),
            b"a much longer local edit that must survive"
        );

        env.ok(&[
            "restore",
            &id,
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
        ]);
        assert_eq!(
            std::fs::read(&page).unwrap(),
            b"short",
            "overwrite must truncate"
        );
    }
}

on_local_and_s3! {
    fn include_restores_only_the_named_item(backend) {
        let (env, id) = env_with_site(backend);
        let target = env.path("only-db");
        env.ok(&[
            "restore",
            &id,
            "--target",
            target.to_str().unwrap(),
            "--include",
            "Chinook_Sqlite.sqlite",
        ]);
        assert!(target.join("databases/Chinook_Sqlite.sqlite").is_file());
        assert!(!target.join("files").exists());

        let out = env.expect(
            &[
                "restore",
                &id,
                "--target",
                target.to_str().unwrap(),
                "--include",
                "nothing-here",
            ],
            1,
        );
        assert!(stderr(&out).contains("nothing-here"), "{}", stderr(&out));
    }
}

#[test]
fn a_file_as_target_is_refused() {
    let (env, id) = env_with_site(Backend::Local);
    let file = env.path("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = env.expect(&["restore", &id, "--target", file.to_str().unwrap()], 1);
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

on_local_and_s3! {
    fn an_ambiguous_item_name_is_refused(backend) {
        let env = Env::init_on(backend);
        let db = env.path("app.db");
        std::fs::copy(chinook(), &db).unwrap();
        let mut child = env
            .palisade()
            .args([
                "backup",
                "--sqlite",
                db.to_str().unwrap(),
                "--stdin",
                "--name",
                "app.db",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"dump").unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let target = env.path("out");
        let out = env.expect(
            &[
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
                "--include",
                "app.db",
            ],
            1,
        );
        assert!(
            stderr(&out).contains("databases/app.db, dumps/app.db"),
            "{}",
            stderr(&out)
        );
        env.ok(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--include",
            "dumps/app.db",
        ]);
        assert_eq!(std::fs::read(target.join("dumps/app.db")).unwrap(), b"dump");
    }
}
