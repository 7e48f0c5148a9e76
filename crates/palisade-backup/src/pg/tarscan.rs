//! A reader that passes a tar stream through unchanged and keeps a copy of a few named members
//! on the way (a base backup's `backup_label` and `backup_manifest`).

use std::{
    collections::BTreeMap,
    io::Read,
    sync::{Arc, Mutex},
};

const BLOCK: usize = 512;

/// Members kept so far, by name (without a leading `./`).
pub(crate) type Kept = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// Passes `inner` through, keeping the content of the members named in `wanted`.
pub(crate) struct TarScan<R> {
    inner: R,
    wanted: &'static [&'static str],
    kept: Kept,
    state: State,
}

enum State {
    /// Collecting a 512-byte header.
    Header(Vec<u8>),
    /// Inside a member: bytes of content left, bytes of padding after it, name if kept.
    Content {
        left: u64,
        padding: u64,
        keep: Option<(String, Vec<u8>)>,
    },
    /// Past the end-of-archive block, or the stream is not a tar: pass the rest unread.
    Done,
}

impl<R: Read> TarScan<R> {
    pub(crate) fn new(inner: R, wanted: &'static [&'static str]) -> (Self, Kept) {
        let kept = Kept::default();
        let scan = Self {
            inner,
            wanted,
            kept: kept.clone(),
            state: State::Header(Vec::with_capacity(BLOCK)),
        };
        (scan, kept)
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Header(header) => {
                    let take = (BLOCK - header.len()).min(bytes.len());
                    header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if header.len() == BLOCK {
                        let header = std::mem::take(header);
                        self.state = self.after_header(&header);
                    }
                }
                State::Content {
                    left,
                    padding,
                    keep,
                } => {
                    let take = usize::try_from(*left + *padding)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    let content = usize::try_from(*left).unwrap_or(usize::MAX).min(take);
                    if let Some((_, buf)) = keep {
                        buf.extend_from_slice(&bytes[..content]);
                    }
                    *left -= content as u64;
                    *padding -= (take - content) as u64;
                    bytes = &bytes[take..];
                    if *left == 0 && *padding == 0 {
                        if let Some((name, buf)) = keep.take() {
                            self.kept
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(name, buf);
                        }
                        self.state = State::Header(Vec::with_capacity(BLOCK));
                    }
                }
            }
        }
    }

    fn after_header(&self, header: &[u8]) -> State {
        if header.iter().all(|&b| b == 0) {
            return State::Done;
        }
        let Some(size) = member_size(header) else {
            return State::Done;
        };
        let name = member_name(header);
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        let keep = self
            .wanted
            .contains(&name.as_str())
            .then(|| (name, Vec::new()));
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        if size == 0 {
            if let Some((name, buf)) = keep {
                self.kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name, buf);
            }
            return State::Header(Vec::with_capacity(BLOCK));
        }
        State::Content {
            left: size,
            padding,
            keep,
        }
    }
}

impl<R: Read> Read for TarScan<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n]);
        Ok(n)
    }
}

/// The member's name: ustar prefix (when present) and name, each NUL-terminated.
fn member_name(header: &[u8]) -> String {
    let field = |bytes: &[u8]| {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    let name = field(&header[..100]);
    let prefix = if &header[257..262] == b"ustar" {
        field(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// The content size: octal digits, or base-256 (high bit set) for large members.
fn member_size(header: &[u8]) -> Option<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        let mut value = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)? + u64::from(b);
        }
        return Some(value);
    }
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| !matches!(c, '\0' | ' '))
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(&digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder
                .append_data(&mut header, name, content.as_slice())
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn named_members_are_kept_and_bytes_pass_unchanged() {
        let big = vec![7u8; 70_000];
        let tar = tar_of(&[
            ("backup_label", b"START WAL LOCATION: 0/2000028\n".to_vec()),
            ("base/1/1259", big.clone()),
            ("./pg_wal/archive_status/x", Vec::new()),
            ("backup_manifest", b"{\"x\":1}".to_vec()),
        ]);
        let (mut scan, kept) = TarScan::new(tar.as_slice(), &["backup_label", "backup_manifest"]);
        // Small, odd reads cross every block boundary.
        let mut out = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            let n = scan.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(out == tar);
        let kept = kept.lock().unwrap();
        assert_eq!(kept["backup_label"], b"START WAL LOCATION: 0/2000028\n");
        assert_eq!(kept["backup_manifest"], b"{\"x\":1}");
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn a_stream_that_is_not_a_tar_passes_through() {
        let junk = vec![b'x'; 2000];
        let (mut scan, kept) = TarScan::new(junk.as_slice(), &["backup_label"]);
        let mut out = Vec::new();
        scan.read_to_end(&mut out).unwrap();
        assert_eq!(out, junk);
        assert!(kept.lock().unwrap().is_empty());
    }
}
