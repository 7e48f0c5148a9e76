//! Building an `aws-sdk-s3` client from the settings, and turning S3 failures into [`Error`]s
//! that say what to do.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::Error;
use crate::location::S3Location;
use crate::options::S3Options;

/// The region used when neither the settings, the environment nor a profile name one.
pub const FALLBACK_REGION: &str = "us-east-1";

/// A client for one location, with the region it was built for.
#[derive(Debug, Clone)]
pub struct S3Client {
    /// The SDK client.
    pub client: Client,
    /// The region requests are signed for.
    pub region: String,
    /// The bucket and prefix.
    pub location: S3Location,
}

impl S3Client {
    /// Builds a client: credentials and region through the standard AWS chain (environment,
    /// shared profile, web identity, container and instance role), unless the settings carry
    /// explicit ones; retries with exponential backoff and jitter; timeouts.
    pub async fn new(location: &S3Location, options: &S3Options) -> Result<Self, Error> {
        options.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout())
                    .operation_attempt_timeout(options.request_timeout())
                    .build(),
            );
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if options.credentials_in_config
            && let (Some(id), Some(secret)) = (&options.access_key_id, &options.secret_access_key)
        {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "palisade.toml",
            ));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map_or_else(|| FALLBACK_REGION.to_string(), ToString::to_string);
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).region(Region::new(region.clone()));
        if let Some(endpoint) = &location.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let path_style = options.path_style.unwrap_or(location.endpoint.is_some());
        builder = builder.force_path_style(path_style);
        Ok(Self {
            client: Client::from_conf(builder.build()),
            region,
            location: location.clone(),
        })
    }

    /// Turns a failed request into an [`Error`]: credentials, permissions, missing bucket,
    /// wrong region and lock refusals get their own sentence; anything else says which request
    /// failed and why.
    pub fn error<E>(&self, operation: &str, key: &str, err: &SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let bucket = self.location.bucket.clone();
        let what = if key.is_empty() {
            format!("bucket {bucket}")
        } else {
            format!("{bucket}/{key}")
        };
        let (code, message, status) = match err {
            SdkError::ServiceError(service) => (
                service.err().code().unwrap_or_default().to_string(),
                service.err().message().unwrap_or_default().to_string(),
                Some(service.raw().status().as_u16()),
            ),
            SdkError::TimeoutError(_) => {
                return Error::Service {
                    operation: operation.into(),
                    what,
                    reason: "the request timed out (raise request_timeout or check the network)"
                        .into(),
                };
            }
            SdkError::DispatchFailure(failure) => {
                let reason = if failure.is_timeout() {
                    "timed out connecting".to_string()
                } else if failure.is_io() {
                    "the connection failed (is the endpoint reachable?)".to_string()
                } else {
                    let text = format!("{failure:?} {}", chain(err, ""));
                    if text.contains("credentials") || text.contains("Credentials") {
                        return Error::NoCredentials;
                    }
                    "the request could not be sent".to_string()
                };
                return Error::Service {
                    operation: operation.into(),
                    what,
                    reason: chain(err, &reason),
                };
            }
            SdkError::ResponseError(_) => {
                return Error::Service {
                    operation: operation.into(),
                    what,
                    reason: chain(err, "the response could not be read"),
                };
            }
            _ => {
                let text = chain(err, "the request failed");
                if text.contains("credentials") {
                    return Error::NoCredentials;
                }
                return Error::Service {
                    operation: operation.into(),
                    what,
                    reason: text,
                };
            }
        };
        match code.as_str() {
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "TokenRefreshRequired"
            | "InvalidSecurity" => {
                return Error::Credentials { bucket, code };
            }
            "NoSuchBucket" => return Error::NoSuchBucket { bucket },
            "NoSuchKey" => {
                return Error::NoSuchKey {
                    bucket,
                    key: key.into(),
                };
            }
            "AuthorizationHeaderMalformed"
            | "PermanentRedirect"
            | "IllegalLocationConstraintException" => {
                return Error::WrongRegion {
                    bucket,
                    configured: self.region.clone(),
                    actual: region_hint(&message),
                };
            }
            "AccessDenied" if message.contains("lock") || message.contains("retention") => {
                return Error::Locked {
                    key: what,
                    until: String::new(),
                };
            }
            "AccessDenied" | "AllAccessDisabled" => {
                return Error::AccessDenied {
                    operation: operation.into(),
                    what,
                };
            }
            _ => {}
        }
        match status {
            Some(301) => Error::WrongRegion {
                bucket,
                configured: self.region.clone(),
                actual: String::new(),
            },
            Some(403) => Error::AccessDenied {
                operation: operation.into(),
                what,
            },
            Some(404) if key.is_empty() => Error::NoSuchBucket { bucket },
            Some(404) => Error::NoSuchKey {
                bucket,
                key: key.into(),
            },
            _ => Error::Service {
                operation: operation.into(),
                what,
                reason: if code.is_empty() {
                    format!("HTTP status {}", status.unwrap_or_default())
                } else if message.is_empty() {
                    code
                } else {
                    format!("{code}: {message}")
                },
            },
        }
    }
}

fn region_hint(message: &str) -> String {
    // "the region 'us-east-1' is wrong; expecting 'eu-west-1'"
    message
        .split("expecting '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .map(|region| format!(" but in `{region}`"))
        .unwrap_or_default()
}

/// The error and its sources as one line, with a fallback when none of them says anything.
fn chain(err: &(dyn std::error::Error + 'static), fallback: &str) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && !parts.contains(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    if parts.is_empty() {
        fallback.to_string()
    } else {
        format!("{fallback}: {}", parts.join(": "))
    }
}
