//! S3 repositories on a real moto server: encryption and checksums on every object, storage
//! class and multipart uploads, faults from a proxy in between, and errors that name the fix.

use std::time::Duration;

use crate::common::*;
use crate::s3support::{Fault, FaultProxy, Rule};

/// An S3 env whose commands go through a fault proxy in front of its moto server.
fn through_proxy(env: &mut Env) -> FaultProxy {
    let s3 = env.s3.as_ref().expect("an S3 env");
    let proxy = FaultProxy::start(&s3.moto.endpoint);
    env.location = format!("s3:{}/{}/{}", proxy.endpoint(), s3.bucket, s3.prefix);
    proxy
}

/// `[repository.s3]` settings in the env's default config file.
fn s3_settings(env: &Env, settings: &str) {
    std::fs::write(
        env.path("palisade.toml"),
        format!("[repository.s3]\n{settings}\n"),
    )
    .unwrap();
}

fn keys(env: &Env) -> Vec<String> {
    let s3 = env.s3.as_ref().unwrap();
    s3.moto.list_keys(&s3.bucket, &format!("{}/", s3.prefix))
}

fn snapshot_count(env: &Env) -> usize {
    env.json(&["snapshots"]).as_array().unwrap().len()
}

#[test]
fn every_object_is_encrypted_and_carries_its_checksum() {
    let env = Env::init_on(Backend::S3);
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    let s3 = env.s3.as_ref().unwrap();
    let keys = keys(&env);
    for dir in ["config", "keys/", "index/", "snapshots/", "data/"] {
        assert!(
            keys.iter().any(|k| k.contains(&format!("/{dir}"))),
            "no {dir} object in {keys:?}"
        );
    }
    for key in &keys {
        let head = s3.moto.head(&s3.bucket, key).expect("listed object exists");
        assert_eq!(
            head.sse.as_deref(),
            Some("AES256"),
            "{key} is not encrypted"
        );
        assert!(
            head.checksum_sha256.is_some(),
            "{key} has no SHA-256 checksum"
        );
    }
}

#[test]
fn data_packs_take_the_storage_class_and_large_packs_go_up_in_parts() {
    let mut env = Env::new_on(Backend::S3);
    s3_settings(
        &env,
        "storage_class = \"STANDARD_IA\"\nmultipart_threshold = 5242880\npart_size = 5242880",
    );
    let proxy = through_proxy(&mut env);
    env.ok(&["init"]);
    let bytes = noise(7, 24 << 20);
    let report = env.backup_stdin("big.bin", &bytes);
    let s3 = env.s3.as_ref().unwrap();
    for key in keys(&env) {
        let class = s3.moto.head(&s3.bucket, &key).unwrap().storage_class;
        if key.contains("/data/") {
            assert_eq!(class.as_deref(), Some("STANDARD_IA"), "{key}");
        } else {
            assert_eq!(class, None, "{key}: metadata stays in STANDARD");
        }
    }
    let seen = proxy.seen();
    let parts = seen
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .count();
    assert!(parts >= 2, "no multipart upload happened: {parts} part(s)");
    assert!(
        seen.iter()
            .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
            .all(|r| r.header("x-amz-checksum-sha256").is_some()),
        "every part carries its checksum"
    );
    env.ok(&["check", "--read-data"]);
    let out = env.restore(&snapshot_id(&report), "out");
    assert_eq!(std::fs::read(out.join("dumps/big.bin")).unwrap(), bytes);
}

#[test]
fn transient_failures_are_retried_and_nothing_is_lost() {
    let mut env = Env::new_on(Backend::S3);
    let proxy = through_proxy(&mut env);
    let slow = proxy.add(Rule::new(Fault::Status(503)).method("PUT").first(3));
    let broken = proxy.add(
        Rule::new(Fault::Status(500))
            .method("PUT")
            .path("/data/")
            .every(2),
    );
    let lost = proxy.add(
        Rule::new(Fault::DropBeforeResponse { forward: false })
            .method("PUT")
            .path("/index/")
            .first(2),
    );
    let unanswered = proxy.add(
        Rule::new(Fault::DropBeforeResponse { forward: true })
            .method("PUT")
            .path("/snapshots/")
            .first(1),
    );
    let cut = proxy.add(
        Rule::new(Fault::DropMidRequestBody)
            .method("PUT")
            .path("/data/")
            .first(2),
    );
    env.ok(&["init"]);
    let site = env.path("site");
    std::fs::create_dir_all(&site).unwrap();
    for i in 0..6 {
        std::fs::write(site.join(format!("f{i}.bin")), noise(i, 3 << 20)).unwrap();
    }
    let report = env.backup(&[
        "--dir",
        site.to_str().unwrap(),
        "--sqlite",
        chinook().to_str().unwrap(),
    ]);
    for (rule, what) in [
        (slow, "503"),
        (broken, "500"),
        (lost, "dropped index upload"),
        (unanswered, "unanswered snapshot upload"),
        (cut, "cut-off pack upload"),
    ] {
        assert!(proxy.injected(rule) > 0, "the {what} fault never happened");
    }
    proxy.clear();
    let reads = proxy.add(Rule::new(Fault::DropMidResponseBody).method("GET").every(3));
    let out = env.restore(&snapshot_id(&report), "out");
    assert!(proxy.injected(reads) > 0, "no download was cut off");
    assert_same_tree(&site, &out.join("files/site"));
    proxy.clear();
    env.ok(&["check", "--read-data"]);
    assert_eq!(snapshot_count(&env), 1);
}

#[test]
fn a_backup_that_cannot_upload_fails_cleanly_and_the_next_one_succeeds() {
    let mut env = Env::new_on(Backend::S3);
    s3_settings(&env, "max_attempts = 2");
    let proxy = through_proxy(&mut env);
    env.ok(&["init"]);
    let rule = proxy.add(
        Rule::new(Fault::Status(503))
            .method("PUT")
            .path("/snapshots/"),
    );
    let out = env.expect(&["backup", "--sqlite", chinook().to_str().unwrap()], 1);
    let err = stderr(&out);
    assert!(
        proxy.injected(rule) >= 2,
        "retried: {}",
        proxy.injected(rule)
    );
    assert!(
        err.contains("PutObject") && err.contains("SlowDown"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    proxy.remove(rule);
    assert_eq!(snapshot_count(&env), 0, "a failed backup left a snapshot");
    env.ok(&["check"]);
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    assert_eq!(snapshot_count(&env), 1);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn a_stalled_request_times_out_and_is_retried() {
    let mut env = Env::new_on(Backend::S3);
    s3_settings(&env, "request_timeout = 2");
    let proxy = through_proxy(&mut env);
    env.ok(&["init"]);
    let stall = proxy.add(
        Rule::new(Fault::Stall(Duration::from_secs(20)))
            .method("PUT")
            .path("/data/")
            .first(1),
    );
    let report = env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    assert_eq!(proxy.injected(stall), 1);
    let out = env.restore(&snapshot_id(&report), "out");
    assert_eq!(
        sha256_file(&out.join("databases/Chinook_Sqlite.sqlite")),
        sha256_file(&chinook())
    );
}

#[test]
fn a_backup_killed_mid_upload_leaves_a_repository_that_checks_clean() {
    let mut env = Env::new_on(Backend::S3);
    s3_settings(&env, "multipart_threshold = 5242880\npart_size = 5242880");
    let proxy = through_proxy(&mut env);
    env.ok(&["init"]);
    // Every part after the first hangs: the kill lands in the middle of a multipart upload.
    let hang = proxy.add(
        Rule::new(Fault::Stall(Duration::from_secs(120)))
            .method("PUT")
            .path("partNumber=2"),
    );
    let (mut child, stdin) = env.start_stream("big.bin", &noise(3, 24 << 20));
    // Closing the pipe ends the stream; the backup then uploads it.
    drop(stdin);
    wait_for("a part upload to hang", || {
        (proxy.injected(hang) > 0).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();
    assert_eq!(snapshot_count(&env), 0, "a killed backup left a snapshot");
    env.ok(&["check", "--read-data"]);
    let bytes = noise(4, 1 << 20);
    let report = env.backup_stdin("next.bin", &bytes);
    let out = env.restore(&snapshot_id(&report), "out");
    assert_eq!(std::fs::read(out.join("dumps/next.bin")).unwrap(), bytes);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn a_missing_bucket_names_the_command_that_creates_it() {
    let mut env = Env::new_on(Backend::S3);
    let s3 = env.s3.as_ref().unwrap();
    env.location = format!("s3:{}/no-such-bucket/app", s3.moto.endpoint);
    let out = env.expect(&["init"], 1);
    let err = stderr(&out);
    assert!(
        err.contains("`no-such-bucket` does not exist") && err.contains("palisade bucket setup"),
        "{err}"
    );
    let out = env.expect(&["snapshots"], 1);
    assert!(
        stderr(&out).contains("palisade bucket setup"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wrong_credentials_name_the_variables_to_check_and_never_the_secret() {
    let env = Env::new_on(Backend::S3);
    // From now on moto checks signatures against its IAM users, of which there are none: our
    // access key is refused as AWS refuses an unknown one.
    env.s3.as_ref().unwrap().moto.enforce_iam();
    for args in [
        &["init"][..],
        &["--json", "snapshots"],
        &["-vv", "snapshots"],
    ] {
        let out = env.expect(args, 1);
        let err = stderr(&out);
        assert!(
            err.contains("refused the credentials") && err.contains("AWS_ACCESS_KEY_ID"),
            "{args:?}: {err}"
        );
        let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
        assert!(
            !all.contains(S3_SECRET),
            "{args:?} printed the secret: {all}"
        );
    }
}

#[test]
fn a_secret_in_the_config_never_reaches_output_or_logs() {
    let mut env = Env::new_on(Backend::S3);
    let secret = "config-secret-3b1e55aa90";
    std::fs::write(
        env.path("palisade.toml"),
        format!(
            "[repository.s3]\ncredentials_in_config = true\naccess_key_id = \"AKIACONFIG\"\nsecret_access_key = \"{secret}\"\n"
        ),
    )
    .unwrap();
    let mut outputs = vec![
        env.ok(&["-vv", "init"]),
        env.ok(&[
            "--json",
            "-vv",
            "backup",
            "--sqlite",
            chinook().to_str().unwrap(),
        ]),
        env.ok(&["--json", "snapshots"]),
        env.ok(&["--json", "config", "check"]),
        env.ok(&["--json", "stats"]),
    ];
    let s3 = env.s3.as_ref().unwrap();
    env.location = format!("s3:{}/no-such-bucket/x", s3.moto.endpoint);
    outputs.push(env.expect(&["-vv", "--json", "snapshots"], 1));
    for out in outputs {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "the secret was printed: {all}");
        assert!(
            !all.contains(S3_SECRET),
            "the env secret was printed: {all}"
        );
    }
}

#[test]
fn a_bad_s3_setting_is_refused_with_its_line() {
    let env = Env::new_on(Backend::S3);
    s3_settings(
        &env,
        "region = \"us-east-1\"\nstorage_class = \"DEEP_ARCHIVE\"",
    );
    let out = env.expect(&["config", "check"], 1);
    let err = stderr(&out);
    assert!(
        err.contains("line 3") && err.contains("storage_class"),
        "{err}"
    );
    let out = env.expect(&["init"], 1);
    assert!(stderr(&out).contains("DEEP_ARCHIVE"), "{}", stderr(&out));
}

#[test]
fn bucket_setup_applies_the_settings_once_and_check_reports_drift() {
    let env = Env::new_on(Backend::S3);
    // moto applies a policy's Deny statements without their conditions, so the TLS-only and
    // encryption statements would refuse every request here; AWS evaluates them.
    std::fs::write(
        env.path("palisade.toml"),
        "[bucket]\nrequire_tls = false\nrequire_encryption = false\nlifecycle = { transition_days = 30, noncurrent_expire_days = 90 }\nobject_lock = { mode = \"governance\", days = 1 }\n",
    )
    .unwrap();
    let first = env.json(&["bucket", "setup"]);
    assert_eq!(first["created"], false, "the test's bucket is adopted");
    assert!(!first["changes"].as_array().unwrap().is_empty(), "{first}");
    let again = env.ok(&["bucket", "setup"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("nothing changed"), "{text}");
    let check = env.json(&["bucket", "check"]);
    let items = check["items"].as_array().unwrap();
    assert!(items.iter().all(|i| i["status"] == "ok"), "{check}");
    for setting in ["encryption", "versioning", "lock"] {
        assert!(
            items
                .iter()
                .any(|i| i["setting"].as_str().unwrap().contains(setting)),
            "no {setting} item in {check}"
        );
    }

    // Backups land in the locked bucket; a delete of an object version is refused.
    env.ok(&["init"]);
    env.backup(&["--sqlite", chinook().to_str().unwrap()]);
    let s3 = env.s3.as_ref().unwrap();
    let pack = keys(&env)
        .into_iter()
        .find(|k| k.contains("/data/"))
        .unwrap();
    let version = s3.moto.head(&s3.bucket, &pack).unwrap().version_id.unwrap();
    assert!(
        s3.moto.head(&s3.bucket, &pack).unwrap().lock_mode.is_some(),
        "{pack} is not locked"
    );
    let refused = s3
        .moto
        .delete_version(&s3.bucket, &pack, &version)
        .unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("AccessDenied"), "{refused:?}");
    env.ok(&["check", "--read-data"]);

    // Drift behind Palisade's back is reported and fails the command.
    s3.moto
        .run(
            s3.moto
                .client()
                .delete_bucket_lifecycle()
                .bucket(&s3.bucket)
                .send(),
        )
        .unwrap();
    let out = env.expect(&["bucket", "check"], 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MISSING"), "{text}");
    assert!(
        stderr(&out).contains("palisade bucket setup"),
        "{}",
        stderr(&out)
    );
    env.ok(&["bucket", "setup"]);
    env.ok(&["bucket", "check"]);
}

#[test]
fn bucket_policy_prints_least_privilege_roles() {
    let env = Env::new_on(Backend::S3);
    let writer = env
        .json(&["bucket", "policy", "--role", "writer"])
        .to_string();
    let pruner = env
        .json(&["bucket", "policy", "--role", "pruner"])
        .to_string();
    assert!(!writer.contains("Delete"), "{writer}");
    assert!(pruner.contains("s3:DeleteObject\""), "{pruner}");
    assert!(!pruner.contains("DeleteObjectVersion"), "{pruner}");
    assert!(
        writer.contains("arn:aws:s3:::palisade-test/app/repo/*"),
        "{writer}"
    );
    let out = env.expect(&["bucket", "policy", "--role", "root"], 2);
    assert!(stderr(&out).contains("writer"), "{}", stderr(&out));
}
