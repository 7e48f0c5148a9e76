//! PostgreSQL's WAL vocabulary: LSNs, segment and history file names, segment arithmetic and
//! timeline history files.

use std::fmt;

/// PostgreSQL's default WAL segment size (16 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A WAL position (log sequence number), written `X/Y` in hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y` (hexadecimal halves, as PostgreSQL prints them).
    pub fn parse(text: &str) -> Option<Self> {
        let (high, low) = text.trim().split_once('/')?;
        let valid = |part: &str| (1..=8).contains(&part.len());
        if !valid(high) || !valid(low) {
            return None;
        }
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        Some(Self((high << 32) | low))
    }

    /// The number of the segment holding this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What an archived file is, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// A WAL segment: timeline and segment number.
    Segment { timeline: u32, segment: u64 },
    /// The last, partial segment of a timeline that was left at a promotion (`.partial`).
    Partial { timeline: u32, segment: u64 },
    /// A backup history file (`SEGMENT.OFFSET.backup`).
    Backup { timeline: u32, segment: u64 },
    /// A timeline history file (`TLI.history`).
    History { timeline: u32 },
}

impl WalFile {
    /// Parses a file name as PostgreSQL's archiver passes it (`%f`), for `segment_size`.
    ///
    /// Anything else is refused, which also keeps a name from ever being a path.
    pub fn parse(name: &str, segment_size: u64) -> Option<Self> {
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        };
        if let Some(tli) = name.strip_suffix(".history") {
            return (tli.len() == 8 && hex(tli)).then(|| Self::History {
                timeline: u32::from_str_radix(tli, 16).expect("8 hex digits"),
            });
        }
        let (base, rest) = name.split_at(name.len().min(24));
        if base.len() != 24 || !hex(base) {
            return None;
        }
        let timeline = u32::from_str_radix(&base[..8], 16).ok()?;
        let log = u64::from_str_radix(&base[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&base[16..], 16).ok()?;
        let per_log = segments_per_log(segment_size);
        if seg >= per_log {
            return None;
        }
        let segment = log * per_log + seg;
        match rest {
            "" => Some(Self::Segment { timeline, segment }),
            ".partial" => Some(Self::Partial { timeline, segment }),
            _ => {
                let offset = rest.strip_prefix('.')?.strip_suffix(".backup")?;
                (offset.len() == 8 && hex(offset)).then_some(Self::Backup { timeline, segment })
            }
        }
    }

    /// The timeline this file belongs to.
    pub fn timeline(self) -> u32 {
        match self {
            Self::Segment { timeline, .. }
            | Self::Partial { timeline, .. }
            | Self::Backup { timeline, .. }
            | Self::History { timeline } => timeline,
        }
    }
}

/// Segments per 4 GiB "log file" (the middle 8 digits of a segment name).
fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The name of segment `segment` on `timeline`.
pub fn segment_name(timeline: u32, segment: u64, segment_size: u64) -> String {
    let per_log = segments_per_log(segment_size);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_log,
        segment % per_log
    )
}

/// The name of a timeline's history file.
pub fn history_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// Whether `size` is a WAL segment size PostgreSQL accepts: a power of two from 1 MiB to 1 GiB.
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

/// One line of a timeline history file: `timeline` was left for a child at `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The ancestor timeline.
    pub timeline: u32,
    /// Where its child branched off.
    pub switch: Lsn,
}

/// Parses a history file: one `parentTLI <tab> switchpoint <tab> reason` line per ancestor,
/// oldest first; comments and blank lines are skipped. `None` when a line is malformed.
pub fn parse_history(text: &str) -> Option<Vec<TimelineSwitch>> {
    let mut switches = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let timeline = fields.next()?.parse().ok()?;
        let switch = Lsn::parse(fields.next()?)?;
        switches.push(TimelineSwitch { timeline, switch });
    }
    Some(switches)
}

/// The timeline each segment is read from when recovery follows `history` (the ancestors of
/// `timeline`, oldest first): the newest timeline that had begun by that segment, as
/// PostgreSQL reads them.
pub fn timeline_of(
    segment: u64,
    timeline: u32,
    history: &[TimelineSwitch],
    segment_size: u64,
) -> u32 {
    // Timeline history[i].timeline covers segments up to (and excluding) the one holding its
    // switch point, which is already read from the child.
    for switch in history {
        if segment < switch.switch.segment(segment_size) {
            return switch.timeline;
        }
    }
    timeline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_print_as_postgres_does() {
        let lsn = Lsn::parse("1/2000028").unwrap();
        assert_eq!(lsn.0, 0x1_0200_0028);
        assert_eq!(lsn.to_string(), "1/2000028");
        assert_eq!(lsn.segment(DEFAULT_SEGMENT_SIZE), 0x102);
        for bad in ["", "0", "x/1", "1/", "/1", "123456789/0", "0/1/2"] {
            assert_eq!(Lsn::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn file_names_round_trip_and_nothing_else_parses() {
        let size = DEFAULT_SEGMENT_SIZE;
        let name = segment_name(1, 0x1_02, size);
        assert_eq!(name, "000000010000000100000002");
        assert_eq!(
            WalFile::parse(&name, size),
            Some(WalFile::Segment {
                timeline: 1,
                segment: 0x102
            })
        );
        assert_eq!(
            WalFile::parse("00000002.history", size),
            Some(WalFile::History { timeline: 2 })
        );
        assert!(matches!(
            WalFile::parse("000000010000000000000002.00000028.backup", size),
            Some(WalFile::Backup { segment: 2, .. })
        ));
        assert!(matches!(
            WalFile::parse("000000010000000000000005.partial", size),
            Some(WalFile::Partial { segment: 5, .. })
        ));
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000000g",
            "0000000100000000000000ab",
            "000000010000000000000100", // segment 0x100 does not exist with 16 MiB segments
            "00000001000000000000000A.backup",
            "00000001000000000000000A/x",
            "0000002.history",
        ] {
            assert_eq!(WalFile::parse(bad, size), None, "{bad:?}");
        }
        // With 64 MiB segments, 64 segments per log file.
        assert_eq!(segment_name(1, 64, 64 << 20), "000000010000000100000000");
    }

    #[test]
    fn history_decides_which_timeline_a_segment_comes_from() {
        let text = "1\t0/5000060\tbefore 2026-01-01\n\n2\t0/9000000\tno recovery target\n";
        let history = parse_history(text).unwrap();
        assert_eq!(history.len(), 2);
        let size = DEFAULT_SEGMENT_SIZE;
        assert_eq!(timeline_of(4, 3, &history, size), 1);
        // The segment holding the switch point is read from the child.
        assert_eq!(timeline_of(5, 3, &history, size), 2);
        assert_eq!(timeline_of(8, 3, &history, size), 2);
        assert_eq!(timeline_of(9, 3, &history, size), 3);
        assert_eq!(parse_history("1\tnot-an-lsn\n"), None);
    }
}
