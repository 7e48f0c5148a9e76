//! Finding, creating and reading back a bucket: one request per setting, with "not configured"
//! answers turned into `None` and every other failure into a clear [`Error`].

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, LifecycleRule,
    ObjectLockConfiguration, PublicAccessBlockConfiguration, ServerSideEncryptionRule,
    TransitionDefaultMinimumObjectSize,
};
use serde_json::Value;

use super::spec::BucketSpec;
use super::statements;
use crate::client::{FALLBACK_REGION, S3Client};
use crate::error::{Error, Result};

/// Everything `setup` manages, as the bucket has it now.
#[derive(Debug, Clone, Default)]
pub(crate) struct BucketState {
    pub encryption: Option<ServerSideEncryptionRule>,
    pub versioning: Option<BucketVersioningStatus>,
    pub public_access: Option<PublicAccessBlockConfiguration>,
    pub policy: Option<Value>,
    /// The policy's statements (empty without a policy).
    pub statements: Vec<Value>,
    pub lifecycle: Vec<LifecycleRule>,
    /// Kept as found when the rules are rewritten.
    pub min_transition_size: Option<TransitionDefaultMinimumObjectSize>,
    pub object_lock: Option<ObjectLockConfiguration>,
}

/// Whether the bucket exists in the configured region; a bucket in another region is an error
/// naming the region it is in.
pub(crate) async fn exists(client: &S3Client) -> Result<bool> {
    let bucket = &client.location.bucket;
    match client.client.head_bucket().bucket(bucket).send().await {
        Ok(out) => match out.bucket_region() {
            Some(region) if region != client.region => Err(wrong_region(client, region)),
            _ => Ok(true),
        },
        Err(err) => {
            let response = err.raw_response();
            let status = response.map(|r| r.status().as_u16());
            if status == Some(404) {
                return Ok(false);
            }
            // AWS answers a request for a bucket of another region with a redirect that names it.
            let region = response.and_then(|r| r.headers().get("x-amz-bucket-region"));
            match region {
                Some(region) if region != client.region => Err(wrong_region(client, region)),
                _ if status == Some(403) => explain_refusal(client).await,
                _ => Err(client.error("HeadBucket", "", &err)),
            }
        }
    }
}

/// A HEAD answer has no body, so a refusal does not say whether the credentials are wrong or
/// lack a permission; a GET that `setup` and `check` need anyway does.
async fn explain_refusal(client: &S3Client) -> Result<bool> {
    versioning(client).await.map(|_| true)
}

/// The versioning status; `None` for a bucket that never had versioning enabled.
async fn versioning(client: &S3Client) -> Result<Option<BucketVersioningStatus>> {
    let bucket = &client.location.bucket;
    match client
        .client
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => Ok(out.status),
        Err(err) => match status_of_unread_success(&err) {
            Some(status) => Ok(status),
            None => Err(client.error("GetBucketVersioning", "", &err)),
        },
    }
}

/// moto 5.2 names the answer's root element `GetBucketVersioningResponse` where AWS says
/// `VersioningConfiguration`, and the SDK refuses the whole document for that; a successful
/// answer is then read here: the `Status` element if there is one.
fn status_of_unread_success<E>(
    err: &SdkError<E, HttpResponse>,
) -> Option<Option<BucketVersioningStatus>> {
    let response = err.raw_response().filter(|r| r.status().is_success())?;
    let body = String::from_utf8_lossy(response.body().bytes()?).into_owned();
    let status = body
        .split_once("<Status>")
        .and_then(|(_, rest)| rest.split_once("</Status>"))
        .map(|(status, _)| BucketVersioningStatus::from(status.trim()));
    Some(status)
}

fn wrong_region(client: &S3Client, actual: &str) -> Error {
    Error::WrongRegion {
        bucket: client.location.bucket.clone(),
        configured: client.region.clone(),
        actual: format!(" but in `{actual}`"),
    }
}

/// Creates the bucket, with object lock when the spec wants it (S3 turns versioning on with
/// it). False when it turned out to exist already.
pub(crate) async fn create(client: &S3Client, spec: &BucketSpec) -> Result<bool> {
    let bucket = &client.location.bucket;
    let mut request = client.client.create_bucket().bucket(bucket);
    if spec.object_lock.is_some() {
        request = request.object_lock_enabled_for_bucket(true);
    }
    // us-east-1 is the one region that refuses to be named as a location constraint.
    if client.region != FALLBACK_REGION {
        let constraint = BucketLocationConstraint::from(client.region.as_str());
        let configuration = CreateBucketConfiguration::builder().location_constraint(constraint);
        request = request.create_bucket_configuration(configuration.build());
    }
    match request.send().await {
        Ok(_) => Ok(true),
        Err(err) => match code(&err) {
            Some("BucketAlreadyOwnedByYou") => Ok(false),
            Some("BucketAlreadyExists") => Err(Error::BucketTaken {
                bucket: bucket.clone(),
            }),
            _ => Err(client.error("CreateBucket", "", &err)),
        },
    }
}

/// Reads every setting `setup` manages.
pub(crate) async fn read(client: &S3Client) -> Result<BucketState> {
    let s3 = &client.client;
    let bucket = &client.location.bucket;

    let encryption = s3.get_bucket_encryption().bucket(bucket).send().await;
    let encryption = unless_absent(client, "GetBucketEncryption", encryption)?
        .and_then(|out| out.server_side_encryption_configuration)
        .and_then(|config| config.rules.into_iter().next());

    let versioning = versioning(client).await?;

    let public_access = s3.get_public_access_block().bucket(bucket).send().await;
    let public_access = unless_absent(client, "GetPublicAccessBlock", public_access)?
        .and_then(|out| out.public_access_block_configuration);

    let policy = s3.get_bucket_policy().bucket(bucket).send().await;
    let policy = unless_absent(client, "GetBucketPolicy", policy)?.and_then(|out| out.policy);
    let (policy, statements) = parse_policy(client, policy.as_deref())?;

    let lifecycle = s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await;
    let lifecycle = unless_absent(client, "GetBucketLifecycleConfiguration", lifecycle)?;
    let min_transition_size = lifecycle
        .as_ref()
        .and_then(|out| out.transition_default_minimum_object_size.clone());
    let lifecycle = lifecycle.and_then(|out| out.rules).unwrap_or_default();

    let object_lock = s3
        .get_object_lock_configuration()
        .bucket(bucket)
        .send()
        .await;
    let object_lock = unless_absent(client, "GetObjectLockConfiguration", object_lock)?
        .and_then(|out| out.object_lock_configuration);

    Ok(BucketState {
        encryption,
        versioning,
        public_access,
        policy,
        statements,
        lifecycle,
        min_transition_size,
        object_lock,
    })
}

fn parse_policy(client: &S3Client, text: Option<&str>) -> Result<(Option<Value>, Vec<Value>)> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok((None, Vec::new()));
    };
    let bad = |reason: String| Error::BadPolicy {
        bucket: client.location.bucket.clone(),
        reason,
    };
    let policy: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let statements = statements::statements(&policy).map_err(bad)?;
    Ok((Some(policy), statements))
}

/// The answers S3 gives when a setting was never configured.
const NOT_CONFIGURED: &[&str] = &[
    "ServerSideEncryptionConfigurationNotFoundError",
    "NoSuchPublicAccessBlockConfiguration",
    "NoSuchBucketPolicy",
    "NoSuchLifecycleConfiguration",
    "ObjectLockConfigurationNotFoundError",
];

fn unless_absent<T, E>(
    client: &S3Client,
    operation: &str,
    result: std::result::Result<T, SdkError<E, HttpResponse>>,
) -> Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(out) => Ok(Some(out)),
        Err(err) if code(&err).is_some_and(|c| NOT_CONFIGURED.contains(&c)) => Ok(None),
        Err(err) => Err(client.error(operation, "", &err)),
    }
}

/// The S3 error code of a failed request, if the service sent one.
pub(crate) fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.as_service_error().and_then(ProvideErrorMetadata::code)
}
