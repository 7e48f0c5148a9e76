//! Retention end to end: forget's decisions, two-phase prune, object lock and bad rules.
//!
//! forget keeps exactly what each job's rules keep, with rustic's reasons; prune frees space in
//! two phases and leaves a repository that checks and restores; object lock on S3 keeps
//! snapshots and packs until it ends; bad rules are refused with the fix.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_s3::types::ObjectLockRetentionMode;
use serde_json::Value;

use crate::common::*;

/// Writes `palisade.toml` with these `[[jobs]]` entries (each backs up `site/`).
fn write_jobs(env: &Env, jobs: &str) {
    std::fs::create_dir_all(env.path("site")).unwrap();
    std::fs::write(env.path("palisade.toml"), jobs).unwrap();
}

fn job(name: &str, retention: &str) -> String {
    format!("[[jobs]]\nname = \"{name}\"\nsources = [{{ dir = \"site\" }}]\n{retention}\n")
}

/// Backs up `job` at `time` with fresh content in `site/f`; gives the snapshot id and content.
fn backup_at(env: &Env, job: &str, time: &str, seed: u64, extra: &[&str]) -> (String, Vec<u8>) {
    let content = noise(seed, 96 * 1024);
    std::fs::write(env.path("site/f"), &content).unwrap();
    let mut args = vec!["--job", job, "--time", time];
    args.extend_from_slice(extra);
    (snapshot_id(&env.backup(&args)), content)
}

/// Each group's decisions, newest first: (id, keep, reasons).
fn decisions(out: &Value) -> BTreeMap<String, Vec<(String, bool, Vec<String>)>> {
    out["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| {
            let snaps = group["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let reasons = s["reasons"].as_array().unwrap();
                    (
                        s["id"].as_str().unwrap().to_string(),
                        s["keep"].as_bool().unwrap(),
                        reasons
                            .iter()
                            .map(|r| r.to_string().replace('"', ""))
                            .collect(),
                    )
                })
                .collect();
            (group["job"].as_str().unwrap().to_string(), snaps)
        })
        .collect()
}

fn kept(id: &str, reasons: &[&str]) -> (String, bool, Vec<String>) {
    let reasons = reasons.iter().map(|r| r.to_string()).collect();
    (id.to_string(), true, reasons)
}

fn removed(id: &str) -> (String, bool, Vec<String>) {
    (id.to_string(), false, Vec::new())
}

fn snapshot_ids(env: &Env) -> BTreeSet<String> {
    let snaps = env.json(&["snapshots"]);
    snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The repository's pack files (local paths or S3 keys).
fn packs(env: &Env) -> BTreeSet<String> {
    env.repo_files()
        .into_keys()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains("/data/"))
        .collect()
}

on_local_and_s3! {
    fn forget_keeps_each_jobs_snapshots_by_its_own_rules(backend) {
        let env = Env::init_on(backend);
        write_jobs(
            &env,
            &[
                job("app", "[jobs.retention]\nkeep-last = 2\nkeep-daily = 3\nkeep-monthly = 2"),
                job("db", "retention = { keep-last = 1, keep-tag = [\"release\"] }"),
                job("logs", ""),
            ]
            .concat(),
        );
        let times = [
            "2024-01-01T10:00:00Z",
            "2024-03-10T10:00:00Z",
            "2024-03-11T09:00:00Z",
            "2024-03-11T18:00:00Z",
            "2024-03-12T08:00:00Z",
            "2024-03-12T20:00:00Z",
        ];
        let app: Vec<String> = times
            .iter()
            .zip(1..)
            .map(|(time, seed)| backup_at(&env, "app", time, seed, &[]).0)
            .collect();
        let db = [
            backup_at(&env, "db", "2024-03-01T00:00:00Z", 11, &["--tag", "release"]).0,
            backup_at(&env, "db", "2024-03-02T00:00:00Z", 12, &[]).0,
            backup_at(&env, "db", "2024-03-03T00:00:00Z", 13, &[]).0,
        ];
        backup_at(&env, "logs", "2024-03-01T00:00:00Z", 21, &[]);
        backup_at(&env, "logs", "2024-03-02T00:00:00Z", 22, &[]);
        let everything = snapshot_ids(&env);
        assert_eq!(everything.len(), 11);

        // A dry run decides and changes nothing. The newest snapshot counts for every rule; an
        // older one of the same day or month does not; the oldest counts for every rule that
        // still has room.
        let before = env.repo_files();
        let out = env.json(&["forget", "--dry-run"]);
        assert_eq!((out["dry_run"].as_bool(), out["removed"].as_u64()), (Some(true), Some(2)));
        let got = decisions(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["app", "db"], "logs has no rules");
        assert_eq!(
            got["app"],
            [
                kept(&app[5], &["last", "daily", "monthly"]),
                kept(&app[4], &["last"]),
                kept(&app[3], &["daily"]),
                removed(&app[2]),
                kept(&app[1], &["daily"]),
                kept(&app[0], &["monthly"]),
            ]
        );
        assert_eq!(got["db"], [kept(&db[2], &["last"]), removed(&db[1]), kept(&db[0], &["tags"])]);
        assert_eq!(env.repo_files(), before, "a dry run changed the repository");
        let text = String::from_utf8(env.ok(&["forget", "--dry-run"]).stdout).unwrap();
        assert!(
            text.contains(&format!(
                "  KEEP    {}  2024-03-12 20:00:00  last, daily, monthly\n",
                &app[5][..8]
            )) && text.contains(&format!("  REMOVE  {}  2024-03-11 09:00:00\n", &app[2][..8]))
                && text.contains("dry run: 2 snapshot(s) would be removed; nothing was changed"),
            "{text}"
        );

        // Flags replace the job's table for one run.
        let out = env.json(&["forget", "--job", "app", "--keep-within", "2d", "--dry-run"]);
        let got = decisions(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got["app"],
            [
                kept(&app[5], &["within"]),
                kept(&app[4], &["within"]),
                kept(&app[3], &["within"]),
                kept(&app[2], &["within"]),
                removed(&app[1]),
                removed(&app[0]),
            ]
        );

        // Without jobs in the config, flags apply to every label on its own, snapshots made
        // without a job included.
        std::fs::write(env.path("site/f"), b"ad hoc").unwrap();
        let ad_hoc = snapshot_id(&env.backup(&["--dir", env.path("site").to_str().unwrap()]));
        std::fs::remove_file(env.path("palisade.toml")).unwrap();
        let out = env.json(&["forget", "--keep-last", "1", "--dry-run"]);
        let got = decisions(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["", "app", "db", "logs"]);
        assert_eq!(got[""], [kept(&ad_hoc, &["last"])]);
        assert_eq!(got["app"][0], kept(&app[5], &["last"]));
        assert_eq!(got["app"].iter().filter(|d| d.1).count(), 1);
        env.ok(&["forget", "--job", "app", "--keep-last", "5", "--dry-run"]);
        write_jobs(
            &env,
            &[
                job("app", "[jobs.retention]\nkeep-last = 2\nkeep-daily = 3\nkeep-monthly = 2"),
                job("db", "retention = { keep-last = 1, keep-tag = [\"release\"] }"),
                job("logs", ""),
            ]
            .concat(),
        );

        // The real run removes exactly the two, and nothing of the job without rules, nor the
        // snapshot made without a job.
        let out = env.json(&["forget"]);
        assert_eq!((out["dry_run"].as_bool(), out["removed"].as_u64()), (Some(false), Some(2)));
        let mut expected = everything.clone();
        expected.insert(ad_hoc);
        expected.remove(&app[2]);
        expected.remove(&db[1]);
        assert_eq!(snapshot_ids(&env), expected);
        env.ok(&["check"]);
    }
}

on_local_and_s3! {
    fn prune_frees_space_in_two_phases_and_every_kept_snapshot_restores(backend) {
        let env = Env::init_on(backend);
        write_jobs(&env, &job("app", "retention = { keep-last = 2 }"));
        let times = ["2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z", "2024-03-03T00:00:00Z"];
        let backups: Vec<(String, Vec<u8>)> = times
            .iter()
            .zip(1..)
            .map(|(time, seed)| backup_at(&env, "app", time, seed, &[]))
            .collect();
        let first = packs(&env);

        // A dry run of both plans the prune as if the snapshot were gone, and changes nothing.
        let before = env.repo_files();
        let out = env.json(&["forget", "--prune", "--dry-run"]);
        assert_eq!(out["removed"], 1);
        assert!(out["prune"][0]["packs_marked"].as_u64().unwrap() >= 1, "{out}");
        assert_eq!(env.repo_files(), before, "a dry run changed the repository");

        // Phase one: the unused packs are marked; none is deleted.
        let out = env.json(&["forget", "--prune"]);
        assert_eq!(out["removed"], 1);
        let prune = &out["prune"][0];
        assert!(prune["packs_marked"].as_u64().unwrap() >= 1, "{prune}");
        assert_eq!(prune["packs_deleted"], 0, "{prune}");
        assert_eq!(prune["keep_delete"], "23h", "{prune}");
        let marked = packs(&env);
        assert!(marked.is_superset(&first), "phase one deleted a pack");
        env.ok(&["check", "--read-data"]);
        env.restic(&["check", "--read-data"]);

        // Another prune within the 23 hours deletes nothing either; a dry run changes nothing.
        let out = env.json(&["prune"]);
        assert!(out["packs_deleted"] == 0 && out["packs_marked"] == 0, "{out}");
        assert!(out["packs_waiting"].as_u64().unwrap() >= 1, "{out}");
        let before = env.repo_files();
        let out = env.json(&["prune", "--dry-run", "--danger-keep-delete", "0s"]);
        assert!(out["packs_deleted"].as_u64().unwrap() >= 1, "{out}");
        assert_eq!(env.repo_files(), before, "a dry run changed the repository");

        // Phase two, the wait cut short: the marked packs go, and only they.
        let out = env.json(&["prune", "--danger-keep-delete", "0s"]);
        let deleted = out["packs_deleted"].as_u64().unwrap();
        let left = packs(&env);
        assert!(deleted >= 1 && left.len() as u64 == marked.len() as u64 - deleted, "{out}");
        env.ok(&["check", "--read-data"]);
        env.restic(&["check", "--read-data"]);
        let kept: Vec<_> = backups[1..].to_vec();
        assert_eq!(
            snapshot_ids(&env),
            kept.iter().map(|(id, _)| id.clone()).collect::<BTreeSet<_>>()
        );
        for (id, content) in kept {
            let out = env.restore(&id, &format!("out-{}", &id[..8]));
            assert_eq!(std::fs::read(out.join("files/site/f")).unwrap(), content, "{id}");
        }
    }
}

/// An S3 env whose repository is in a bucket with object lock and one day of governance
/// retention on every new object.
fn locked_env(bucket: &str) -> Env {
    let mut env = Env::new_on(Backend::S3);
    let s3 = env.s3.as_mut().unwrap();
    s3.moto.create_locked_bucket(bucket);
    s3.moto
        .set_default_retention(bucket, ObjectLockRetentionMode::Governance, 1);
    s3.bucket = bucket.to_string();
    env.location = format!("s3:{}/{bucket}/{}", s3.moto.endpoint, s3.prefix);
    env.ok(&["init"]);
    env
}

fn snapshot_key(env: &Env, id: &str) -> String {
    format!("{}/snapshots/{id}", env.s3.as_ref().unwrap().prefix)
}

/// Whether the key's current version is an object (not a delete marker).
fn current(env: &Env, key: &str) -> bool {
    let s3 = env.s3.as_ref().unwrap();
    s3.moto.head(&s3.bucket, key).is_some()
}

#[test]
fn object_lock_keeps_snapshots_and_packs_until_it_ends() {
    let env = locked_env("palisade-locked");
    write_jobs(&env, &job("app", "retention = { keep-last = 1 }"));
    let s3 = env.s3.as_ref().unwrap();
    let mut written = Vec::new();
    let mut ids = Vec::new();
    for (time, seed) in [
        "2024-03-01T00:00:00Z",
        "2024-03-02T00:00:00Z",
        "2024-03-03T00:00:00Z",
    ]
    .iter()
    .zip(1..)
    {
        let before = packs(&env);
        ids.push(backup_at(&env, "app", time, seed, &[]).0);
        written.push(
            packs(&env)
                .difference(&before)
                .cloned()
                .collect::<BTreeSet<_>>(),
        );
    }
    // Each backup's largest pack holds its file's data.
    let data: Vec<String> = written
        .iter()
        .map(|keys| {
            let size = |key: &&String| s3.moto.head(&s3.bucket, key).unwrap().size;
            keys.iter().max_by_key(size).unwrap().clone()
        })
        .collect();

    // Every snapshot file is still locked: forget keeps them, says why, and succeeds.
    let out = env.json(&["forget"]);
    assert_eq!(out["removed"], 0);
    let got = &decisions(&out)["app"];
    assert_eq!(got[0], kept(&ids[2], &["last"]));
    for (id, keep, reasons) in &got[1..] {
        assert!(*keep && reasons.len() == 1, "{id}: {reasons:?}");
        assert!(
            reasons[0].starts_with("object lock until 20") && reasons[0].ends_with('Z'),
            "{reasons:?}"
        );
    }
    let markers = s3
        .moto
        .object_versions(&s3.bucket, &format!("{}/snapshots/", s3.prefix));
    assert!(markers.iter().all(|v| !v.delete_marker), "{markers:?}");

    // The two older snapshot files' retention ends; their packs stay locked. forget removes
    // the snapshots, and prune leaves the now unused packs alone, even without a wait.
    for id in &ids[..2] {
        s3.moto
            .end_retention(&s3.bucket, &snapshot_key(&env, id))
            .unwrap();
    }
    let locked = packs(&env);
    let out = env.json(&["forget", "--prune"]);
    assert_eq!(out["removed"], 2);
    let prune = &out["prune"][0];
    assert_eq!(
        (
            prune["packs_marked"].as_u64(),
            prune["packs_repacked"].as_u64()
        ),
        (Some(0), Some(0)),
        "{prune}"
    );
    let note = prune["locked"][0].as_str().unwrap();
    assert!(
        note.contains("were left alone") && note.contains("object lock until"),
        "{note}"
    );
    let out = env.json(&["prune", "--danger-keep-delete", "0s"]);
    assert_eq!(
        (out["packs_marked"].as_u64(), out["packs_deleted"].as_u64()),
        (Some(0), Some(0)),
        "{out}"
    );
    for key in &locked {
        assert!(current(&env, key), "locked pack {key} was deleted");
    }
    assert!(
        !current(&env, &snapshot_key(&env, &ids[0])),
        "the unlocked snapshot stayed"
    );
    env.ok(&["check", "--read-data"]);
    env.restore(&ids[2], "out-locked");

    // The packs' retention ends too: prune marks the unused ones. A legal hold on one of them
    // keeps every pack marked with it; once it is lifted, they go.
    for key in &locked {
        s3.moto.end_retention(&s3.bucket, key).unwrap();
    }
    let out = env.json(&["prune"]);
    assert!(
        out["packs_marked"].as_u64().unwrap() >= 1 && out["locked"] == serde_json::json!([]),
        "{out}"
    );
    let held = data[0].clone();
    s3.moto.legal_hold(&s3.bucket, &held, true).unwrap();
    let out = env.json(&["prune", "--danger-keep-delete", "0s"]);
    assert_eq!(out["packs_deleted"], 0, "{out}");
    let pack = held.rsplit('/').next().unwrap();
    let notes = out["locked"].as_array().unwrap();
    assert!(
        notes.iter().any(|note| {
            let note = note.as_str().unwrap();
            note.contains("stay marked") && note.contains(pack) && note.contains("legal hold")
        }),
        "{notes:?}"
    );
    assert!(current(&env, &held));

    s3.moto.legal_hold(&s3.bucket, &held, false).unwrap();
    let out = env.json(&["prune", "--danger-keep-delete", "0s"]);
    assert!(out["packs_deleted"].as_u64().unwrap() >= 1, "{out}");
    assert!(
        !current(&env, &held),
        "the pack of the forgotten snapshot stayed"
    );
    // In a versioned bucket, a delete only hides the pack: its version is still there.
    let versions = s3.moto.object_versions(&s3.bucket, &held);
    assert!(
        versions.iter().any(|v| !v.delete_marker) && versions.iter().any(|v| v.delete_marker),
        "{versions:?}"
    );
    // (Tree packs of the kept snapshot may have been repacked: each backup leaves the roots of
    // its archive passes unused. Its data pack stays where it is.)
    assert!(
        current(&env, &data[2]),
        "the kept snapshot's data pack went"
    );
    env.ok(&["check", "--read-data"]);
    env.restic(&["check", "--read-data"]);
    env.restore(&ids[2], "out-unlocked");
}

#[test]
fn prune_refuses_a_locked_pack_that_no_age_can_keep() {
    let env = locked_env("palisade-restic");
    std::fs::create_dir_all(env.path("site")).unwrap();
    std::fs::write(env.path("site/f"), noise(1, 64 * 1024)).unwrap();
    // restic writes its index without pack times, which rustic's ages cannot protect.
    env.restic(&["backup", env.path("site").to_str().unwrap()]);
    let before = env.repo_files();
    let out = env.expect(&["prune"], 1);
    let err = stderr(&out);
    assert!(
        err.contains("indexed without a time")
            && err.contains("nothing was changed: run prune again once 20"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(env.repo_files(), before);
}

#[test]
fn bad_retention_is_refused_with_its_line_and_the_fix() {
    let env = Env::init();
    let cases = [
        (
            "[jobs.retention]\nkeep-last = 2\nkeep-within = \"3x\"",
            "line 6",
            "like 30d, 2w or 1y6m",
        ),
        (
            "[jobs.retention]\nkeep-dayly = 7",
            "line 5",
            "unknown field `keep-dayly`",
        ),
        ("retention = { keep-last = -1 }", "line 4", "1 or more"),
        ("[jobs.retention]", "line 4", "empty retention table"),
    ];
    for (retention, line, fix) in cases {
        write_jobs(&env, &job("app", retention));
        for args in [&["config", "check"][..], &["forget"]] {
            let err = stderr(&env.expect(args, 1));
            assert!(
                err.contains(line) && err.contains(fix),
                "{retention} {args:?}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }

    // Flags are checked by the command line (exit 2), with the same fixes.
    write_jobs(&env, &job("app", "retention = { keep-daily = 7 }"));
    for (args, fix) in [
        (
            &["forget", "--job", "app", "--keep-last", "-1"][..],
            "1 or more",
        ),
        (
            &["forget", "--job", "app", "--keep-daily", "many"],
            "whole number",
        ),
        (
            &["forget", "--job", "app", "--keep-within", "3x"],
            "like 30d, 2w or 1y6m",
        ),
        (
            &["forget", "--job", "app", "--keep-tag", ""],
            "give the tag",
        ),
        (
            &["prune", "--danger-keep-delete", "1d"],
            "hours, minutes or seconds",
        ),
    ] {
        let err = stderr(&env.expect(args, 2));
        assert!(err.contains(fix), "{args:?}: {err}");
    }

    // Nothing to go by, or flags without a job to apply them to, is refused before anything
    // is opened.
    let out = env.json(&["config", "check"]);
    assert_eq!(out["jobs_with_retention"], serde_json::json!(["app"]));
    for (config, args, words) in [
        (job("app", ""), &["forget"][..], "no retention to apply"),
        (
            job("app", ""),
            &["forget", "--job", "app"],
            "has no retention table",
        ),
        (
            job("app", "retention = { keep-daily = 7 }"),
            &["forget", "--keep-last", "1"],
            "pass --job NAME",
        ),
        (
            job("app", "retention = { keep-daily = 7 }"),
            &["forget", "--job", "web"],
            "no job named `web`",
        ),
    ] {
        write_jobs(&env, &config);
        let err = stderr(&env.expect(args, 1));
        assert!(err.contains(words), "{args:?}: {err}");
    }
}
