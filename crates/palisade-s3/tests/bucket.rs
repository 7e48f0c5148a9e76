//! Bucket setup, check, role policies and object lock reads against a real moto S3 server, read
//! back through the S3 API.

mod moto;

use std::collections::BTreeSet;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketVersioningStatus, ChecksumAlgorithm, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, ObjectLockEnabled,
    ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockRetention, ObjectLockRetentionMode,
    ServerSideEncryption, VersioningConfiguration,
};
use moto::{Moto, block_on, options_as};
use palisade_s3::{
    BucketSpec, Encryption, Error, LifecycleSpec, LockMode, ObjectLock, ObjectLockSpec, Role,
    S3Backend, S3Client, S3Location, Status, check, policy, setup,
};
use rustic_core::{FileType, Id, jiff::Timestamp};
use serde_json::{Value, json};

const BUCKET: &str = "palisade-test";

/// The spec most tests use: the defaults plus every lifecycle rule.
fn full_spec() -> BucketSpec {
    BucketSpec {
        lifecycle: LifecycleSpec {
            transition_days: Some(30),
            noncurrent_expire_days: Some(90),
            ..LifecycleSpec::default()
        },
        ..BucketSpec::default()
    }
}

/// Without policy statements: moto applies a bucket policy's Deny statements without looking
/// at their conditions, so with them in place it refuses every object request.
fn lock_spec() -> BucketSpec {
    BucketSpec {
        require_tls: false,
        require_encryption: false,
        object_lock: Some(ObjectLockSpec {
            mode: LockMode::Governance,
            days: 1,
        }),
        ..BucketSpec::default()
    }
}

async fn bucket_policy(client: &S3Client) -> Value {
    let out = client
        .client
        .get_bucket_policy()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    serde_json::from_str(out.policy().unwrap()).unwrap()
}

fn sids(policy: &Value) -> Vec<String> {
    let statements = policy["Statement"].as_array().unwrap();
    statements
        .iter()
        .map(|s| s["Sid"].as_str().unwrap().to_string())
        .collect()
}

fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
    let statements = policy["Statement"].as_array().unwrap();
    statements.iter().find(|s| s["Sid"] == sid).unwrap()
}

async fn lifecycle_rules(client: &S3Client) -> Vec<LifecycleRule> {
    let out = client
        .client
        .get_bucket_lifecycle_configuration()
        .bucket(BUCKET)
        .send()
        .await;
    out.unwrap().rules.unwrap_or_default()
}

fn rule<'a>(rules: &'a [LifecycleRule], id: &str) -> &'a LifecycleRule {
    rules
        .iter()
        .find(|r| r.id() == Some(id))
        .unwrap_or_else(|| panic!("no rule {id}: {rules:?}"))
}

fn rule_prefix(rule: &LifecycleRule) -> &str {
    rule.filter().and_then(|f| f.prefix()).unwrap_or_default()
}

#[test]
fn setup_creates_a_protected_bucket() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let report = setup(&client, &full_spec()).await.unwrap();
        assert!(report.created && report.changed(), "{report:#?}");
        assert!(
            report.warnings[0].contains("require_tls = false"),
            "{report:#?}"
        );
        let s3 = &client.client;

        let encryption = s3
            .get_bucket_encryption()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        let rules = encryption
            .server_side_encryption_configuration()
            .unwrap()
            .rules();
        let default = rules[0].apply_server_side_encryption_by_default().unwrap();
        assert_eq!(default.sse_algorithm(), &ServerSideEncryption::Aes256);

        // moto 5.2 answers GetBucketVersioning under a root element the SDK refuses: read the
        // answer as it is.
        let (status, versioning) = moto.get("/palisade-test?versioning");
        assert_eq!(status, 200, "{versioning}");
        assert!(
            versioning.contains("<Status>Enabled</Status>"),
            "{versioning}"
        );

        let block = s3
            .get_public_access_block()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        let block = block.public_access_block_configuration().unwrap();
        assert_eq!(block.block_public_acls(), Some(true));
        assert_eq!(block.ignore_public_acls(), Some(true));
        assert_eq!(block.block_public_policy(), Some(true));
        assert_eq!(block.restrict_public_buckets(), Some(true));

        let policy = bucket_policy(&client).await;
        assert_eq!(
            sids(&policy),
            [
                "PalisadeDenyInsecureTransport",
                "PalisadeDenyOtherEncryption"
            ]
        );
        let tls = statement(&policy, "PalisadeDenyInsecureTransport");
        assert_eq!(tls["Effect"], "Deny");
        assert_eq!(tls["Condition"]["Bool"]["aws:SecureTransport"], "false");
        assert_eq!(
            tls["Resource"],
            json!(["arn:aws:s3:::palisade-test", "arn:aws:s3:::palisade-test/*"])
        );
        let sse = statement(&policy, "PalisadeDenyOtherEncryption");
        assert_eq!(sse["Action"], "s3:PutObject");
        let condition = &sse["Condition"]["StringNotEqualsIfExists"];
        assert_eq!(condition["s3:x-amz-server-side-encryption"], "AES256");

        let rules = lifecycle_rules(&client).await;
        assert_eq!(rules.len(), 3, "{rules:#?}");
        let transition = rule(&rules, "palisade-transition:app");
        assert_eq!(rule_prefix(transition), "app/data/");
        assert_eq!(transition.status(), &ExpirationStatus::Enabled);
        assert_eq!(transition.transitions()[0].days(), Some(30));
        assert_eq!(
            transition.transitions()[0]
                .storage_class()
                .unwrap()
                .as_str(),
            "STANDARD_IA"
        );
        let noncurrent = rule(&rules, "palisade-expire-noncurrent:app");
        assert_eq!(rule_prefix(noncurrent), "app/");
        assert_eq!(
            noncurrent
                .noncurrent_version_expiration()
                .unwrap()
                .noncurrent_days(),
            Some(90)
        );
        let abort = rule(&rules, "palisade-abort-multipart:app");
        assert_eq!(rule_prefix(abort), "app/");
        let days = abort
            .abort_incomplete_multipart_upload()
            .unwrap()
            .days_after_initiation();
        assert_eq!(days, Some(1));
    });
}

#[test]
fn a_second_setup_changes_nothing() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let spec = BucketSpec {
            object_lock: Some(ObjectLockSpec {
                mode: LockMode::Compliance,
                days: 90,
            }),
            ..full_spec()
        };
        let first = setup(&client, &spec).await.unwrap();
        let second = setup(&client, &spec).await.unwrap();
        assert!(!second.changed() && !second.created, "{second:#?}");
        assert!(second.changes.is_empty());
        let first_settings: BTreeSet<_> = first
            .changes
            .iter()
            .map(|c| c.setting.clone())
            .chain(first.unchanged.iter().cloned())
            .collect();
        let second_settings: BTreeSet<_> = second.unchanged.iter().cloned().collect();
        assert_eq!(first_settings, second_settings);
        assert_eq!(second.unchanged.len(), 10, "{second:#?}");
        assert!(second.unchanged.contains(&"object lock".to_string()));
    });
}

#[test]
fn kms_encryption_is_applied_with_its_key_and_bucket_key() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let key = "arn:aws:kms:us-east-1:123456789012:key/backups";
        let spec = BucketSpec {
            encryption: Encryption::Kms,
            kms_key_id: Some(key.into()),
            ..BucketSpec::default()
        };
        setup(&client, &spec).await.unwrap();

        let out = client
            .client
            .get_bucket_encryption()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        let rule = &out.server_side_encryption_configuration().unwrap().rules()[0];
        let default = rule.apply_server_side_encryption_by_default().unwrap();
        assert_eq!(default.sse_algorithm(), &ServerSideEncryption::AwsKms);
        assert_eq!(default.kms_master_key_id(), Some(key));
        assert_eq!(rule.bucket_key_enabled(), Some(true));

        let policy = bucket_policy(&client).await;
        assert_eq!(
            sids(&policy),
            [
                "PalisadeDenyInsecureTransport",
                "PalisadeDenyOtherEncryption",
                "PalisadeDenyOtherKmsKey",
                "PalisadeDenyKmsWithoutKey"
            ]
        );
        let other_key = &statement(&policy, "PalisadeDenyOtherKmsKey")["Condition"];
        let named =
            &other_key["StringNotEqualsIfExists"]["s3:x-amz-server-side-encryption-aws-kms-key-id"];
        assert_eq!(named, key);

        assert!(!check(&client, &spec).await.unwrap().has_drift());
        assert!(!setup(&client, &spec).await.unwrap().changed());

        // Back to AES256: the KMS statements go, the encryption is rewritten.
        let report = setup(&client, &BucketSpec::default()).await.unwrap();
        let changed: Vec<&str> = report.changes.iter().map(|c| c.setting.as_str()).collect();
        assert_eq!(
            changed,
            [
                "encryption",
                "policy statement PalisadeDenyOtherEncryption",
                "policy statement PalisadeDenyOtherKmsKey",
                "policy statement PalisadeDenyKmsWithoutKey"
            ]
        );
        assert_eq!(
            report.changes[0].before,
            format!("aws:kms with key {key}, bucket key on")
        );
        assert!(
            !check(&client, &BucketSpec::default())
                .await
                .unwrap()
                .has_drift()
        );
    });
}

#[test]
fn check_finds_drift_made_behind_its_back_and_setup_repairs_it() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let spec = full_spec();
        setup(&client, &spec).await.unwrap();
        let clean = check(&client, &spec).await.unwrap();
        assert!(!clean.has_drift(), "{clean:#?}");
        assert!(clean.items.iter().all(|item| item.status == Status::Ok));
        assert_eq!(clean.items.len(), 9, "{clean:#?}");

        let s3 = &client.client;
        let suspended = VersioningConfiguration::builder()
            .status(BucketVersioningStatus::Suspended)
            .build();
        s3.put_bucket_versioning()
            .bucket(BUCKET)
            .versioning_configuration(suspended)
            .send()
            .await
            .unwrap();
        s3.delete_bucket_lifecycle()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();

        let drifted = check(&client, &spec).await.unwrap();
        assert!(drifted.has_drift());
        let versioning = drifted
            .items
            .iter()
            .find(|i| i.setting == "versioning")
            .unwrap();
        assert_eq!(versioning.status, Status::Drift);
        assert_eq!(
            (versioning.expected.as_str(), versioning.actual.as_str()),
            ("Enabled", "Suspended")
        );
        let missing: Vec<&str> = drifted
            .items
            .iter()
            .filter(|i| i.status == Status::Missing)
            .map(|i| i.setting.as_str())
            .collect();
        assert_eq!(
            missing,
            [
                "lifecycle rule palisade-transition:app",
                "lifecycle rule palisade-expire-noncurrent:app",
                "lifecycle rule palisade-abort-multipart:app"
            ]
        );
        let json = serde_json::to_value(&drifted).unwrap();
        assert!(
            json["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["status"] == "missing")
        );

        let repair = setup(&client, &spec).await.unwrap();
        let repaired: Vec<&str> = repair.changes.iter().map(|c| c.setting.as_str()).collect();
        assert_eq!(repaired.len(), 4, "{repair:#?}");
        assert!(repaired.contains(&"versioning"));
        assert!(!check(&client, &spec).await.unwrap().has_drift());
    });
}

#[test]
fn object_lock_refuses_to_delete_a_locked_version() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let spec = lock_spec();
        let report = setup(&client, &spec).await.unwrap();
        assert!(report.created);
        let s3 = &client.client;

        let lock = s3
            .get_object_lock_configuration()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        let lock = lock.object_lock_configuration().unwrap();
        assert_eq!(
            lock.object_lock_enabled(),
            Some(&ObjectLockEnabled::Enabled)
        );
        let retention = lock.rule().unwrap().default_retention().unwrap();
        assert_eq!(retention.mode(), Some(&ObjectLockRetentionMode::Governance));
        assert_eq!(retention.days(), Some(1));

        // Locked buckets require an integrity header on every upload.
        let put = s3
            .put_object()
            .bucket(BUCKET)
            .key("app/data/00/pack")
            .body(ByteStream::from_static(b"a pack of backup data"))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .unwrap();
        let version = put.version_id().unwrap().to_string();
        let head = s3
            .head_object()
            .bucket(BUCKET)
            .key("app/data/00/pack")
            .version_id(&version)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE")
        );

        let refused = s3
            .delete_object()
            .bucket(BUCKET)
            .key("app/data/00/pack")
            .version_id(&version)
            .send()
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("AccessDenied"), "{refused:?}");
        let explained = client.error("DeleteObject", "app/data/00/pack", &refused);
        assert!(
            matches!(explained, Error::AccessDenied { .. } | Error::Locked { .. }),
            "{explained}"
        );

        // A plain delete only hides the object behind a delete marker; the version survives.
        s3.delete_object()
            .bucket(BUCKET)
            .key("app/data/00/pack")
            .send()
            .await
            .unwrap();
        let body = s3
            .get_object()
            .bucket(BUCKET)
            .key("app/data/00/pack")
            .version_id(&version)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(&body[..], b"a pack of backup data");

        let audit = check(&client, &spec).await.unwrap();
        let lock_item = audit
            .items
            .iter()
            .find(|i| i.setting == "object lock")
            .unwrap();
        assert_eq!(lock_item.status, Status::Ok);
        assert_eq!(lock_item.actual, "GOVERNANCE for 1 day");
    });
}

#[test]
fn the_backend_reads_each_objects_retention_and_legal_hold() {
    let moto = Moto::start();
    let location = moto.location("palisade-test/app");
    let id = |n: u8| Id::new([n; 32]);
    let key = |n: u8| format!("app/snapshots/{}", id(n).to_hex().as_str());
    block_on(async {
        let client = moto.client(&location).await;
        setup(&client, &lock_spec()).await.unwrap();
        let s3 = &client.client;
        for n in 1..=3 {
            s3.put_object()
                .bucket(BUCKET)
                .key(key(n))
                .body(ByteStream::from_static(b"a snapshot"))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .unwrap();
        }
        let hold = ObjectLockLegalHold::builder()
            .status(ObjectLockLegalHoldStatus::On)
            .build();
        s3.put_object_legal_hold()
            .bucket(BUCKET)
            .key(key(2))
            .legal_hold(hold)
            .send()
            .await
            .unwrap();
        // moto, unlike AWS, takes a date in the past: a retention that has run out.
        let ended = ObjectLockRetention::builder()
            .mode(ObjectLockRetentionMode::Governance)
            .retain_until_date(DateTime::from_secs(1_600_000_000))
            .build();
        s3.put_object_retention()
            .bucket(BUCKET)
            .key(key(3))
            .bypass_governance_retention(true)
            .retention(ended)
            .send()
            .await
            .unwrap();
        s3.create_bucket()
            .bucket("palisade-plain")
            .send()
            .await
            .unwrap();
    });

    // The backend runs its own runtime, so it is used outside `block_on`.
    let backend = S3Backend::new(&location, &options_as("us-east-1", "test", "test")).unwrap();
    assert!(backend.locks_objects().unwrap());
    let ids = [id(1), id(2), id(3), id(4)];
    let locks = backend.object_locks(FileType::Snapshot, &ids).unwrap();
    let now = Timestamp::now();
    let until = locks[0]
        .retain_until
        .expect("the default retention applies");
    assert!(until > now && until < now + rustic_core::jiff::SignedDuration::from_hours(25));
    assert!(locks[0].holds(now) && !locks[0].legal_hold);
    assert!(
        locks[0].to_string().starts_with("object lock until 20"),
        "{}",
        locks[0]
    );
    assert!(locks[1].holds(now) && locks[1].legal_hold, "{:?}", locks[1]);
    assert!(!locks[2].holds(now), "{:?}", locks[2]);
    assert_eq!(
        locks[3],
        ObjectLock::default(),
        "a missing object has no lock"
    );

    let plain = moto.location("palisade-plain/app");
    let plain = S3Backend::new(&plain, &options_as("us-east-1", "test", "test")).unwrap();
    assert!(!plain.locks_objects().unwrap());
}

#[test]
fn setup_adopts_a_bucket_and_keeps_foreign_statements_and_rules() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let s3 = &client.client;
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        let foreign_statement = json!({
            "Sid": "AuditorsRead",
            "Effect": "Allow",
            "Principal": { "AWS": "arn:aws:iam::123456789012:role/auditor" },
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::palisade-test/reports/*",
        });
        let foreign_policy = json!({ "Version": "2012-10-17", "Statement": [foreign_statement] });
        s3.put_bucket_policy()
            .bucket(BUCKET)
            .policy(foreign_policy.to_string())
            .send()
            .await
            .unwrap();
        let foreign_rule = LifecycleRule::builder()
            .id("expire-logs")
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .status(ExpirationStatus::Enabled)
            .expiration(LifecycleExpiration::builder().days(7).build())
            .build()
            .unwrap();
        let configuration = BucketLifecycleConfiguration::builder()
            .rules(foreign_rule)
            .build()
            .unwrap();
        s3.put_bucket_lifecycle_configuration()
            .bucket(BUCKET)
            .lifecycle_configuration(configuration)
            .send()
            .await
            .unwrap();

        let spec = full_spec();
        let report = setup(&client, &spec).await.unwrap();
        assert!(!report.created, "{report:#?}");
        assert!(report.unchanged.contains(&"bucket".to_string()));

        let policy = bucket_policy(&client).await;
        assert_eq!(
            sids(&policy),
            [
                "AuditorsRead",
                "PalisadeDenyInsecureTransport",
                "PalisadeDenyOtherEncryption"
            ]
        );
        assert_eq!(statement(&policy, "AuditorsRead"), &foreign_statement);
        let rules = lifecycle_rules(&client).await;
        let ids: Vec<&str> = rules.iter().filter_map(|r| r.id()).collect();
        assert_eq!(
            ids,
            [
                "expire-logs",
                "palisade-transition:app",
                "palisade-expire-noncurrent:app",
                "palisade-abort-multipart:app"
            ]
        );
        assert_eq!(
            rule(&rules, "expire-logs").expiration().unwrap().days(),
            Some(7)
        );
        assert_eq!(rule_prefix(rule(&rules, "expire-logs")), "logs/");

        assert!(!check(&client, &spec).await.unwrap().has_drift());
        assert!(!setup(&client, &spec).await.unwrap().changed());
    });
}

#[test]
fn object_lock_is_turned_on_for_a_bucket_created_without_it() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let s3 = &client.client;
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        let before = s3
            .get_object_lock_configuration()
            .bucket(BUCKET)
            .send()
            .await;
        assert!(
            before.is_err(),
            "a new bucket has no object lock: {before:?}"
        );

        let report = setup(&client, &lock_spec()).await.unwrap();
        assert!(!report.created);
        let change = report
            .changes
            .iter()
            .find(|c| c.setting == "object lock")
            .unwrap();
        assert_eq!(
            (change.before.as_str(), change.after.as_str()),
            ("absent", "GOVERNANCE for 1 day")
        );
        let lock = s3
            .get_object_lock_configuration()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        let lock = lock.object_lock_configuration().unwrap();
        assert_eq!(
            lock.object_lock_enabled(),
            Some(&ObjectLockEnabled::Enabled)
        );
        assert!(!check(&client, &lock_spec()).await.unwrap().has_drift());
    });
}

#[test]
fn turning_a_protection_off_removes_only_palisades_part() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        setup(&client, &full_spec()).await.unwrap();
        let lighter = BucketSpec {
            require_tls: false,
            lifecycle: LifecycleSpec {
                transition_days: None,
                ..full_spec().lifecycle
            },
            ..full_spec()
        };
        let report = setup(&client, &lighter).await.unwrap();
        let removed: Vec<(&str, &str)> = report
            .changes
            .iter()
            .map(|c| (c.setting.as_str(), c.after.as_str()))
            .collect();
        assert_eq!(
            removed,
            [
                ("lifecycle rule palisade-transition:app", "absent"),
                ("policy statement PalisadeDenyInsecureTransport", "absent"),
            ]
        );
        assert_eq!(
            sids(&bucket_policy(&client).await),
            ["PalisadeDenyOtherEncryption"]
        );
        assert_eq!(lifecycle_rules(&client).await.len(), 2);
        assert!(!check(&client, &lighter).await.unwrap().has_drift());

        // With no Palisade statement left and none of anyone else's, the policy goes.
        let bare = BucketSpec {
            require_encryption: false,
            ..lighter
        };
        setup(&client, &bare).await.unwrap();
        let gone = client
            .client
            .get_bucket_policy()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Some("NoSuchBucketPolicy"));
        assert!(!check(&client, &bare).await.unwrap().has_drift());
    });
}

#[test]
fn check_of_a_missing_bucket_says_to_run_setup() {
    let moto = Moto::start();
    block_on(async {
        let client = moto.client(&moto.location("palisade-test/app")).await;
        let err = check(&client, &BucketSpec::default()).await.unwrap_err();
        assert!(matches!(err, Error::NoSuchBucket { .. }), "{err:?}");
        assert!(err.to_string().contains("palisade bucket setup"), "{err}");
    });
}

#[test]
fn a_bucket_is_created_in_its_region_and_a_wrong_region_is_named() {
    let moto = Moto::start();
    block_on(async {
        let location = moto.location("palisade-test/app");
        let ireland = moto.client_as(&location, "eu-west-1", "test", "test").await;
        assert!(setup(&ireland, &full_spec()).await.unwrap().created);
        let where_ = ireland
            .client
            .get_bucket_location()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        assert_eq!(
            where_.location_constraint().map(|c| c.as_str()),
            Some("eu-west-1")
        );
        assert!(!check(&ireland, &full_spec()).await.unwrap().has_drift());

        let virginia = moto.client(&location).await;
        let err = check(&virginia, &full_spec()).await.unwrap_err();
        assert!(matches!(err, Error::WrongRegion { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("eu-west-1") && text.contains("region"),
            "{text}"
        );
        assert!(setup(&virginia, &full_spec()).await.is_err());
    });
}

/// moto accepts any key until IAM is enforced; with it, it checks signatures and policies.
#[test]
fn a_wrong_secret_is_a_credentials_error() {
    let moto = Moto::start();
    let everything = json!({ "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": "s3:*", "Resource": "*" }] });
    let (key, secret) = moto.iam_user("operator", &everything);
    moto.enforce_iam();
    block_on(async {
        let location = moto.location("palisade-test/app");
        let right = moto.client_as(&location, "us-east-1", &key, &secret).await;
        assert!(setup(&right, &lock_spec()).await.unwrap().created);

        let wrong = moto
            .client_as(&location, "us-east-1", &key, "not-the-secret")
            .await;
        let err = check(&wrong, &lock_spec()).await.unwrap_err();
        assert!(
            matches!(err, Error::Credentials { ref code, .. } if code == "SignatureDoesNotMatch"),
            "{err:?}"
        );
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        assert!(!format!("{err:?}").contains("not-the-secret"));

        let unknown = moto
            .client_as(&location, "us-east-1", "AKIAUNKNOWN", &secret)
            .await;
        let err = setup(&unknown, &lock_spec()).await.unwrap_err();
        assert!(
            matches!(err, Error::Credentials { ref code, .. } if code == "InvalidAccessKeyId"),
            "{err:?}"
        );
        assert!(!err.to_string().contains(&secret));
    });
}

/// The role policies, enforced by moto's IAM: the writer cannot delete, the pruner cannot
/// destroy versions.
#[test]
fn the_writer_cannot_delete_and_the_pruner_cannot_destroy_versions() {
    let moto = Moto::start();
    let location = moto.location("palisade-test/app");
    let everything = json!({ "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": "s3:*", "Resource": "*" }] });
    let operator = moto.iam_user("operator", &everything);
    let writer = moto.iam_user("writer", &policy(Role::Writer, &location));
    let pruner = moto.iam_user("pruner", &policy(Role::Pruner, &location));
    moto.enforce_iam();
    block_on(async {
        let as_user = async |(key, secret): &(String, String)| {
            moto.client_as(&location, "us-east-1", key, secret).await
        };
        let operator = as_user(&operator).await;
        let spec = BucketSpec {
            require_tls: false,
            require_encryption: false,
            ..BucketSpec::default()
        };
        setup(&operator, &spec).await.unwrap();

        let writer = as_user(&writer).await;
        let key = "app/snapshots/0001";
        let put = writer
            .client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from_static(b"snapshot"))
            .send()
            .await
            .unwrap();
        let version = put.version_id().unwrap().to_string();
        writer
            .client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
        let outside = writer
            .client
            .put_object()
            .bucket(BUCKET)
            .key("elsewhere/file")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(outside.code(), Some("AccessDenied"));
        let delete = writer
            .client
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await;
        let err = delete.unwrap_err();
        assert_eq!(err.code(), Some("AccessDenied"), "{err:?}");
        let explained = writer.error("DeleteObject", key, &err);
        assert!(
            explained.to_string().contains("palisade bucket policy"),
            "{explained}"
        );

        let pruner = as_user(&pruner).await;
        let destroy = pruner
            .client
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .version_id(&version)
            .send()
            .await
            .unwrap_err();
        assert_eq!(destroy.code(), Some("AccessDenied"), "{destroy:?}");
        pruner
            .client
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();

        // The version the pruner "deleted" is still there for whoever holds the admin keys.
        let kept = operator
            .client
            .head_object()
            .bucket(BUCKET)
            .key(key)
            .version_id(&version)
            .send()
            .await;
        assert!(kept.is_ok(), "{kept:?}");
    });
}

fn actions(document: &Value) -> Vec<String> {
    let mut actions = Vec::new();
    for statement in document["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            Value::String(action) => actions.push(action.clone()),
            Value::Array(list) => {
                actions.extend(list.iter().map(|a| a.as_str().unwrap().to_string()));
            }
            other => panic!("unexpected Action {other}"),
        }
    }
    actions
}

fn resources(document: &Value) -> Vec<String> {
    let statements = document["Statement"].as_array().unwrap();
    statements
        .iter()
        .map(|s| s["Resource"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn role_policies_are_least_privilege() {
    let location = S3Location::parse("s3:palisade-test/app").unwrap();
    let writer = policy(Role::Writer, &location);
    let pruner = policy(Role::Pruner, &location);
    let admin = policy(Role::Admin, &location);
    for document in [&writer, &pruner, &admin] {
        assert_eq!(document["Version"], "2012-10-17");
        for resource in resources(document) {
            assert!(
                resource == "arn:aws:s3:::palisade-test"
                    || resource == "arn:aws:s3:::palisade-test/app/*",
                "{resource}"
            );
        }
        let actions = actions(document);
        assert!(
            actions
                .iter()
                .all(|a| a.starts_with("s3:") && !a.contains('*')),
            "{actions:?}"
        );
        for never in [
            "s3:DeleteObjectVersion",
            "s3:BypassGovernanceRetention",
            "s3:DeleteBucket",
        ] {
            assert!(
                !actions.iter().any(|a| a == never),
                "{never} in {actions:?}"
            );
        }
    }
    let list = &writer["Statement"][0];
    assert_eq!(list["Action"], "s3:ListBucket");
    assert_eq!(
        list["Condition"]["StringLike"]["s3:prefix"],
        json!(["app/*"])
    );

    let writer = actions(&writer);
    assert!(!writer.iter().any(|a| a.contains("Delete")), "{writer:?}");
    assert!(writer.contains(&"s3:PutObject".into()) && writer.contains(&"s3:GetObject".into()));

    let pruner = actions(&pruner);
    assert!(pruner.contains(&"s3:DeleteObject".into()));
    let beyond_delete: Vec<_> = pruner.iter().filter(|a| !writer.contains(a)).collect();
    // Beyond deleting, the pruner only reads object locks, so that forget and prune keep what
    // is still locked.
    assert_eq!(
        beyond_delete,
        [
            "s3:DeleteObject",
            "s3:GetObjectRetention",
            "s3:GetObjectLegalHold",
            "s3:GetBucketObjectLockConfiguration"
        ]
    );

    let admin = actions(&admin);
    for needed in [
        "s3:CreateBucket",
        "s3:PutEncryptionConfiguration",
        "s3:PutBucketVersioning",
        "s3:PutBucketPublicAccessBlock",
        "s3:PutBucketPolicy",
        "s3:PutLifecycleConfiguration",
        "s3:PutBucketObjectLockConfiguration",
        "s3:GetBucketObjectLockConfiguration",
        "s3:DeleteObject",
    ] {
        assert!(
            admin.contains(&needed.into()),
            "{needed} missing from {admin:?}"
        );
    }
    assert_eq!("pruner".parse::<Role>().unwrap(), Role::Pruner);
    assert_eq!(Role::Admin.to_string(), "admin");
}
