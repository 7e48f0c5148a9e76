//! Where "now" comes from: the system clock in production, a hand-set clock in tests.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to (for tests in the same process).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = to;
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// A clock read from a file holding one RFC 3339 time, for tests that drive another process
/// (`palisade daemon`) through time. A file that is missing or unreadable reads as the system
/// clock's time.
#[derive(Debug, Clone)]
pub struct FileClock(PathBuf);

impl FileClock {
    /// A clock that reads `path` on every call.
    pub fn new(path: PathBuf) -> Self {
        Self(path)
    }
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
            .map_or_else(Utc::now, |time| time.with_timezone(&Utc))
    }
}
