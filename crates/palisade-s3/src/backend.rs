//! A restic-format repository on S3: rustic_core's backend traits over `aws-sdk-s3`, with
//! server-side encryption and an integrity checksum on every object, multipart uploads for
//! large packs, bounded parallelism and retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use rand::Rng;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::client::S3Client;
use crate::error::{Error, Result};
use crate::location::S3Location;
use crate::options::{Encryption, S3Options};

/// A repository in a bucket, under a prefix, laid out as restic lays out its S3 repositories
/// (`config`, `keys/ID`, `snapshots/ID`, `index/ID`, `data/XX/ID`).
#[derive(Debug)]
pub struct S3Backend {
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) s3: S3Client,
    options: S3Options,
    pub(crate) permits: Arc<Semaphore>,
}

impl S3Backend {
    /// Builds the client for `location`. Nothing is sent until the first request.
    pub fn new(location: &S3Location, options: &S3Options) -> Result<Self> {
        options.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("palisade-s3")
            .enable_all()
            .build()
            .map_err(|err| Error::Service {
                operation: "start".into(),
                what: location.to_string(),
                reason: format!("cannot start the S3 client's threads: {err}"),
            })?;
        let s3 = runtime.block_on(S3Client::new(location, options))?;
        Ok(Self {
            runtime: Some(runtime),
            s3,
            options: options.clone(),
            permits: Arc::new(Semaphore::new(options.connections)),
        })
    }

    /// The client this backend uses.
    pub fn client(&self) -> &S3Client {
        &self.s3
    }

    /// Runs a future on the backend's runtime from synchronous code.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the backend")
            .block_on(future)
    }

    pub(crate) fn key(&self, tpe: FileType, id: &Id) -> String {
        let name = match tpe {
            FileType::Config => "config".to_string(),
            FileType::Pack => {
                let hex = id.to_hex();
                format!("data/{}/{}", &hex[..2], hex.as_str())
            }
            _ => format!("{}/{}", tpe.dirname(), id.to_hex().as_str()),
        };
        self.s3.location.key(&name)
    }

    /// Fails with a sentence naming the fix when the bucket is missing or unreachable.
    pub async fn check_bucket(&self) -> Result<()> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let bucket = &self.s3.location.bucket;
        let head = self.s3.client.head_bucket().bucket(bucket).send().await;
        match head.map_err(|err| self.s3.error("HeadBucket", "", &err)) {
            Ok(_) => Ok(()),
            // A HEAD answer has no body to tell refused credentials from a missing
            // permission; a one-key listing of the prefix does.
            Err(Error::AccessDenied { .. }) => {
                let prefix = self.s3.location.key("");
                self.s3
                    .client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&prefix)
                    .max_keys(1)
                    .send()
                    .await
                    .map_err(|err| self.s3.error("ListObjectsV2", &prefix, &err))?;
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    async fn put(&self, key: &str, body: Bytes, data: bool) -> Result<()> {
        if body.len() as u64 >= self.options.multipart_threshold {
            return self.put_multipart(key, body, data).await;
        }
        let _permit = self.permits.acquire().await.expect("never closed");
        let mut request = self
            .s3
            .client
            .put_object()
            .bucket(&self.s3.location.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha256_base64(&body))
            .body(ByteStream::from(body));
        request = match self.options.encryption {
            Encryption::Aes256 => request.server_side_encryption(ServerSideEncryption::Aes256),
            Encryption::Kms => request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(self.options.kms_key_id.clone()),
        };
        if let (true, Some(class)) = (data, &self.options.storage_class) {
            request = request.storage_class(StorageClass::from(class.as_str()));
        }
        request
            .send()
            .await
            .map_err(|err| self.s3.error("PutObject", key, &err))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, body: Bytes, data: bool) -> Result<()> {
        let bucket = &self.s3.location.bucket;
        let mut create = self
            .s3
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        create = match self.options.encryption {
            Encryption::Aes256 => create.server_side_encryption(ServerSideEncryption::Aes256),
            Encryption::Kms => create
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(self.options.kms_key_id.clone()),
        };
        if let (true, Some(class)) = (data, &self.options.storage_class) {
            create = create.storage_class(StorageClass::from(class.as_str()));
        }
        let upload = {
            let _permit = self.permits.acquire().await.expect("never closed");
            create
                .send()
                .await
                .map_err(|err| self.s3.error("CreateMultipartUpload", key, &err))?
        };
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        match self.upload_parts(key, &upload_id, body).await {
            Ok(parts) => {
                let _permit = self.permits.acquire().await.expect("never closed");
                let done = self
                    .s3
                    .client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                if let Err(err) = done {
                    let error = self.s3.error("CompleteMultipartUpload", key, &err);
                    self.abort(key, &upload_id).await;
                    return Err(error);
                }
                Ok(())
            }
            Err(error) => {
                self.abort(key, &upload_id).await;
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: Bytes,
    ) -> Result<Vec<CompletedPart>> {
        let part_size = usize::try_from(self.options.part_size).unwrap_or(usize::MAX);
        let mut tasks = Vec::new();
        for (index, start) in (0..body.len()).step_by(part_size).enumerate() {
            let part = body.slice(start..body.len().min(start + part_size));
            let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tasks.push(self.upload_part(key, upload_id, number, part));
        }
        // Parts go up concurrently; the shared semaphore bounds how many at once.
        futures_util::future::try_join_all(tasks).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        part: Bytes,
    ) -> Result<CompletedPart> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let checksum = sha256_base64(&part);
        let done = self
            .s3
            .client
            .upload_part()
            .bucket(&self.s3.location.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|err| self.s3.error("UploadPart", key, &err))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(done.e_tag().map(str::to_string))
            .checksum_sha256(checksum)
            .build())
    }

    /// Best effort: an upload left behind is invisible to listings and removed by the
    /// bucket's abort-incomplete-uploads lifecycle rule.
    async fn abort(&self, key: &str, upload_id: &str) {
        let _permit = self.permits.acquire().await.expect("never closed");
        if let Err(err) = self
            .s3
            .client
            .abort_multipart_upload()
            .bucket(&self.s3.location.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            log::warn!(
                "could not abort the unfinished upload of {key}: {}",
                self.s3.error("AbortMultipartUpload", key, &err)
            );
        }
    }

    /// Reads a whole object or a range of it. The SDK retries until the response headers
    /// arrive; a body cut off afterwards is fetched again here, with the same backoff.
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<Bytes> {
        let mut attempt = 1;
        loop {
            match self.get_once(key, range).await {
                Ok(bytes) => return Ok(bytes),
                Err(Retry::Again(error)) if attempt < self.options.max_attempts => {
                    log::debug!("retrying {key}: {error}");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(Retry::Again(error) | Retry::Fail(error)) => return Err(error),
            }
        }
    }

    async fn get_once(&self, key: &str, range: Option<(u64, u64)>) -> Result<Bytes, Retry> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let mut request = self
            .s3
            .client
            .get_object()
            .bucket(&self.s3.location.bucket)
            .key(key);
        if let Some((offset, length)) = range {
            request = request.range(format!("bytes={offset}-{}", offset + length - 1));
        }
        let output = request
            .send()
            .await
            .map_err(|err| Retry::Fail(self.s3.error("GetObject", key, &err)))?;
        let expected = output.content_length().and_then(|n| u64::try_from(n).ok());
        let body = output.body.collect().await.map_err(|err| {
            Retry::Again(Error::Service {
                operation: "GetObject".into(),
                what: format!("{}/{key}", self.s3.location.bucket),
                reason: format!("the download was cut off: {err}"),
            })
        })?;
        let bytes = body.into_bytes();
        let wanted = range.map(|(_, length)| length).or(expected);
        if let Some(wanted) = wanted
            && bytes.len() as u64 != wanted
        {
            return Err(Retry::Again(Error::ShortRead {
                key: key.into(),
                got: bytes.len() as u64,
                wanted,
            }));
        }
        Ok(bytes)
    }

    /// Every object under `dir` (a prefix ending in `/`), with its size.
    async fn list(&self, dir: &str) -> Result<Vec<(String, i64)>> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = {
                let _permit = self.permits.acquire().await.expect("never closed");
                self.s3
                    .client
                    .list_objects_v2()
                    .bucket(&self.s3.location.bucket)
                    .prefix(dir)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|err| self.s3.error("ListObjectsV2", dir, &err))?
            };
            for object in page.contents() {
                if let Some(key) = object.key() {
                    found.push((key.to_string(), object.size().unwrap_or_default()));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(found),
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let _permit = self.permits.acquire().await.expect("never closed");
        self.s3
            .client
            .delete_object()
            .bucket(&self.s3.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| self.s3.error("DeleteObject", key, &err))?;
        Ok(())
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's thread panics; this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

enum Retry {
    Again(Error),
    Fail(Error),
}

/// Exponential backoff with full jitter: up to 200 ms × 2^(attempt-1), at most 20 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 200u64
        .saturating_mul(1 << attempt.min(7).saturating_sub(1))
        .min(20_000);
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

fn sha256_base64(bytes: &[u8]) -> String {
    BASE64.encode(Sha256::digest(bytes))
}

fn to_rustic(error: Error) -> Box<RusticError> {
    let kind = match &error {
        Error::Credentials { .. } | Error::NoCredentials => ErrorKind::Credentials,
        Error::BadLocation { .. } | Error::BadSetting { .. } => ErrorKind::Configuration,
        _ => ErrorKind::Backend,
    };
    RusticError::with_source(kind, "S3 request failed", error)
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        self.s3.location.to_string()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        let dir = self.s3.location.key(&format!("{}/", tpe.dirname()));
        let objects = if tpe == FileType::Config {
            let key = self.s3.location.key("config");
            self.run(self.list(&key))
                .map_err(to_rustic)?
                .into_iter()
                .filter(|(found, _)| *found == key)
                .map(|(_, size)| (Id::default(), u32::try_from(size).unwrap_or(u32::MAX)))
                .collect()
        } else {
            self.run(self.list(&dir))
                .map_err(to_rustic)?
                .into_iter()
                .filter_map(|(key, size)| {
                    let name = key.rsplit('/').next()?;
                    let id = Id::parse_some(name, tpe)?;
                    Some((id, u32::try_from(size).ok()?))
                })
                .collect()
        };
        Ok(objects)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let key = self.key(tpe, id);
        self.run(self.get(&key, None)).map_err(to_rustic)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        if length == 0 {
            return Ok(Bytes::new());
        }
        let key = self.key(tpe, id);
        self.run(self.get(&key, Some((u64::from(offset), u64::from(length)))))
            .map_err(to_rustic)
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        format!("s3://{}/{}", self.s3.location.bucket, self.key(tpe, id))
    }
}

impl WriteBackend for S3Backend {
    fn create(&self) -> RusticResult<()> {
        self.run(self.check_bucket()).map_err(to_rustic)
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let key = self.key(tpe, id);
        let mut parts = content.into_vec();
        let body = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                joined.extend_from_slice(&part);
            }
            joined.freeze()
        };
        self.run(self.put(&key, body, tpe == FileType::Pack))
            .map_err(to_rustic)
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let key = self.key(tpe, id);
        self.run(self.delete(&key)).map_err(to_rustic)
    }
}
