//! Readers that hash what passes through them, and the collector that gathers the results for
//! the catalog.

use std::{
    io::{self, Read},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use sha2::{Digest, Sha256};

use crate::catalog::Skipped;

/// What was read of one file: its path relative to its item, size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileDigest {
    pub(crate) item: usize,
    pub(crate) relative: PathBuf,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

#[derive(Debug, Default)]
struct Records {
    digests: Vec<FileDigest>,
    skipped: Vec<(usize, Skipped)>,
}

/// Collects digests and skipped entries from readers running on many threads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Collector(Arc<Mutex<Records>>);

impl Collector {
    pub(crate) fn digest(&self, digest: FileDigest) {
        self.lock().digests.push(digest);
    }

    pub(crate) fn skip(&self, item: usize, path: String, reason: String) {
        log::debug!("skipped {path}: {reason}");
        self.lock().skipped.push((item, Skipped { path, reason }));
    }

    /// Takes the records gathered so far, digests in path order.
    pub(crate) fn take(&self) -> (Vec<FileDigest>, Vec<(usize, Skipped)>) {
        let mut records = std::mem::take(&mut *self.lock());
        records
            .digests
            .sort_by(|a, b| (a.item, &a.relative).cmp(&(b.item, &b.relative)));
        records
            .skipped
            .sort_by(|a, b| (a.0, &a.1.path).cmp(&(b.0, &b.1.path)));
        (records.digests, records.skipped)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        // A poisoned lock only means a reader thread panicked; the records stay usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A reader that hashes its bytes and reports the digest at end of file, or the error that
/// stopped it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    item: usize,
    relative: PathBuf,
    collector: Collector,
    done: bool,
}

impl<R> HashingReader<R> {
    pub(crate) fn new(inner: R, item: usize, relative: PathBuf, collector: Collector) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
            item,
            relative,
            collector,
            done: false,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.done = true;
                let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
                self.collector.digest(FileDigest {
                    item: self.item,
                    relative: std::mem::take(&mut self.relative),
                    size: self.size,
                    sha256,
                });
                Ok(0)
            }
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Err(err),
            Err(err) => {
                self.done = true;
                let path = self.relative.to_string_lossy().into_owned();
                self.collector
                    .skip(self.item, path, format!("read failed: {err}"));
                Err(err)
            }
        }
    }
}

/// Hex SHA-256 of a byte slice.
#[cfg(test)]
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_reported_once_at_end_of_file() {
        let collector = Collector::default();
        let mut reader =
            HashingReader::new(&b"hello"[..], 0, PathBuf::from("a"), collector.clone());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(reader.read(&mut [0u8; 4]).unwrap(), 0);
        let (digests, skipped) = collector.take();
        assert!(skipped.is_empty());
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].size, 5);
        assert_eq!(digests[0].sha256, sha256_hex(b"hello"));
    }

    #[test]
    fn a_failing_read_is_recorded_as_skipped() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let collector = Collector::default();
        let mut reader = HashingReader::new(Broken, 2, PathBuf::from("b"), collector.clone());
        assert!(reader.read(&mut [0u8; 8]).is_err());
        let (digests, skipped) = collector.take();
        assert!(digests.is_empty());
        assert_eq!(skipped[0].0, 2);
        assert!(skipped[0].1.reason.contains("disk on fire"));
    }
}
