//! Bucket provisioning: `setup` creates or adopts a bucket and applies encryption, versioning,
//! public access block, policy, lifecycle and object lock; `check` audits them; `policy` prints
//! each role's IAM policy. Why each setting exists is in `docs/s3-buckets.md`.

mod lifecycle;
mod policy;
mod report;
mod settings;
mod spec;
mod state;
mod statements;

use aws_sdk_s3::types::{
    BucketVersioningStatus, ServerSideEncryptionConfiguration, VersioningConfiguration,
};

pub use policy::{Role, policy};
pub use report::{CheckItem, CheckReport, SettingChange, SetupReport, Status};
pub use spec::{BucketSpec, LifecycleSpec, LockMode, ObjectLockSpec, TRANSITION_STORAGE_CLASSES};

use crate::client::S3Client;
use crate::error::{Error, Result};
use report::{ABSENT, Comparison};
use settings::Plan;
use state::BucketState;
pub(crate) use state::code;

/// Creates the bucket or adopts an existing one, then writes every setting that differs from
/// the spec and nothing else, so that a second run changes nothing.
pub async fn setup(client: &S3Client, spec: &BucketSpec) -> Result<SetupReport> {
    spec.validate()?;
    let mut report = SetupReport {
        warnings: warnings(client, spec),
        ..SetupReport::default()
    };

    report.created = !state::exists(client).await? && state::create(client, spec).await?;
    if report.created {
        report.changes.push(SettingChange {
            setting: "bucket".into(),
            before: ABSENT.into(),
            after: "created".into(),
        });
    } else {
        report.unchanged.push("bucket".into());
    }

    let state = state::read(client).await?;
    let plan = Plan::new(spec, &client.location, &state);
    if report.record(std::slice::from_ref(&plan.encryption)) {
        write_encryption(client, spec).await?;
    }
    if report.record(plan.versioning.as_slice()) {
        write_versioning(client).await?;
    }
    if report.record(plan.public_access.as_slice()) {
        write_public_access(client).await?;
    }
    if report.record(&plan.lifecycle) {
        write_lifecycle(client, &state, &plan).await?;
    }
    if report.record(plan.object_lock.as_slice()) {
        write_object_lock(client, spec, &state).await?;
    }
    // Last, so that a policy mistake cannot stop the other settings from being applied.
    if report.record(&plan.policy) {
        write_policy(client, &state, &plan).await?;
    }
    Ok(report)
}

/// Reads every setting back and compares it with the spec. A missing bucket is an error.
pub async fn check(client: &S3Client, spec: &BucketSpec) -> Result<CheckReport> {
    spec.validate()?;
    if !state::exists(client).await? {
        return Err(Error::NoSuchBucket {
            bucket: client.location.bucket.clone(),
        });
    }
    let state = state::read(client).await?;
    let bucket = Comparison::of("bucket", "exists".into(), Some("exists".into()));
    let mut items = vec![CheckItem::from(bucket)];
    let plan = Plan::new(spec, &client.location, &state);
    items.extend(plan.all().into_iter().map(CheckItem::from));
    Ok(CheckReport { items })
}

fn warnings(client: &S3Client, spec: &BucketSpec) -> Vec<String> {
    let plain_http = client
        .location
        .endpoint
        .as_deref()
        .is_some_and(|endpoint| endpoint.starts_with("http://"));
    if spec.require_tls && plain_http {
        vec![format!(
            "the endpoint is plain http, and require_tls makes the bucket policy deny every request without TLS: on a service that enforces bucket policies Palisade itself is then locked out of `{}`; use an https endpoint or set require_tls = false",
            client.location.bucket
        )]
    } else {
        Vec::new()
    }
}

async fn write_encryption(client: &S3Client, spec: &BucketSpec) -> Result<()> {
    let configuration = ServerSideEncryptionConfiguration::builder()
        .rules(settings::encryption_rule(spec))
        .build()
        .expect("the configuration has its one rule");
    client
        .client
        .put_bucket_encryption()
        .bucket(&client.location.bucket)
        .server_side_encryption_configuration(configuration)
        .send()
        .await
        .map_err(|err| client.error("PutBucketEncryption", "", &err))?;
    Ok(())
}

async fn write_versioning(client: &S3Client) -> Result<()> {
    let configuration = VersioningConfiguration::builder()
        .status(BucketVersioningStatus::Enabled)
        .build();
    client
        .client
        .put_bucket_versioning()
        .bucket(&client.location.bucket)
        .versioning_configuration(configuration)
        .send()
        .await
        .map_err(|err| client.error("PutBucketVersioning", "", &err))?;
    Ok(())
}

async fn write_public_access(client: &S3Client) -> Result<()> {
    client
        .client
        .put_public_access_block()
        .bucket(&client.location.bucket)
        .public_access_block_configuration(settings::public_access_block())
        .send()
        .await
        .map_err(|err| client.error("PutPublicAccessBlock", "", &err))?;
    Ok(())
}

async fn write_lifecycle(client: &S3Client, state: &BucketState, plan: &Plan) -> Result<()> {
    let s3 = &client.client;
    let bucket = &client.location.bucket;
    let rules = lifecycle::merged(&state.lifecycle, &plan.lifecycle_rules);
    if rules.is_empty() {
        s3.delete_bucket_lifecycle()
            .bucket(bucket)
            .send()
            .await
            .map_err(|err| client.error("DeleteBucketLifecycle", "", &err))?;
        return Ok(());
    }
    let configuration = aws_sdk_s3::types::BucketLifecycleConfiguration::builder()
        .set_rules(Some(rules))
        .build()
        .expect("the rules are set");
    s3.put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(configuration)
        .set_transition_default_minimum_object_size(state.min_transition_size.clone())
        .send()
        .await
        .map_err(|err| client.error("PutBucketLifecycleConfiguration", "", &err))?;
    Ok(())
}

async fn write_object_lock(
    client: &S3Client,
    spec: &BucketSpec,
    state: &BucketState,
) -> Result<()> {
    let lock = spec
        .object_lock
        .as_ref()
        .expect("only called when the spec has a lock");
    let result = client
        .client
        .put_object_lock_configuration()
        .bucket(&client.location.bucket)
        .object_lock_configuration(settings::object_lock_configuration(lock))
        .send()
        .await;
    let Err(err) = result else {
        return Ok(());
    };
    let error = client.error("PutObjectLockConfiguration", "", &err);
    // S3 turns object lock on for an existing bucket once versioning is enabled; services that
    // cannot do that refuse here, and only a new bucket can then be locked.
    match error {
        Error::Service { reason, .. } if !settings::object_lock_enabled(state) => {
            Err(Error::ObjectLockUnavailable {
                bucket: client.location.bucket.clone(),
                reason,
            })
        }
        other => Err(other),
    }
}

async fn write_policy(client: &S3Client, state: &BucketState, plan: &Plan) -> Result<()> {
    let s3 = &client.client;
    let bucket = &client.location.bucket;
    match statements::merged(state.policy.as_ref(), &plan.policy_statements) {
        Some(policy) => {
            s3.put_bucket_policy()
                .bucket(bucket)
                .policy(policy.to_string())
                .send()
                .await
                .map_err(|err| client.error("PutBucketPolicy", "", &err))?;
        }
        None => {
            s3.delete_bucket_policy()
                .bucket(bucket)
                .send()
                .await
                .map_err(|err| client.error("DeleteBucketPolicy", "", &err))?;
        }
    }
    Ok(())
}
