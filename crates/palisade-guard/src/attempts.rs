//! Failed-login counters and lockouts: the store trait, the decay arithmetic, and the SQLite
//! store that keeps them by default (in one file, so that `palisade gateway unlock` and a
//! restart see the same state).
//!
//! Three scores count failures, each decaying by half every `half_life`: one per account and
//! source together (the pair), one per source (a client key: an address, or an IPv6 prefix),
//! one per account. A lockout belongs to a pair only, so that an attacker elsewhere cannot lock
//! a victim out; it lasts a fixed time from when it starts and is never extended, because
//! requests refused during it never reach the application and count nothing. A lockout sets
//! the pair's score back to the challenge threshold, so the next one needs as many new
//! failures as the first one needed past that threshold.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OptionalExtension, params};

use crate::BoxFuture;

/// One login attempt: who for, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// The account, normalised; empty when the request named none.
    pub account: String,
    /// The client key (an address, or the IPv6 prefix it belongs to).
    pub source: IpAddr,
}

/// The thresholds and times the store applies when it counts a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// How long a failure takes to count half.
    pub half_life: Duration,
    /// The pair score a lockout starts at.
    pub lockout_after: u32,
    /// The pair score a lockout sets back to.
    pub challenge_after: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Distinct accounts failing from one source within `stuffing_window` that make an event.
    pub stuffing_accounts: u32,
    /// Distinct sources failing on one account within `stuffing_window` that make an event.
    pub stuffing_sources: u32,
    /// The window of the two counts above.
    pub stuffing_window: Duration,
}

/// What the store knows about an attempt before it is made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Standing {
    /// Failures of this account from this source, decayed.
    pub pair: f64,
    /// Failures from this source on any account, decayed.
    pub source: f64,
    /// Failures on this account from any source, decayed.
    pub account: f64,
    /// When the pair's lockout ends, if one is running.
    pub locked_until: Option<SystemTime>,
}

/// What counting a failure found.
#[derive(Debug, Clone, PartialEq)]
pub struct AfterFailure {
    /// The scores with this failure.
    pub standing: Standing,
    /// Whether this failure started a lockout of the pair.
    pub locked: bool,
    /// Credential stuffing newly seen with this failure.
    pub stuffing: Vec<Stuffing>,
}

/// A spread of failures that looks like credential stuffing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuffing {
    /// One source failed on this many distinct accounts within the window.
    ManyAccounts(u32),
    /// This many distinct sources failed on one account within the window.
    ManySources(u32),
}

/// What `palisade gateway unlock` clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlock {
    /// Every lockout and count of this account (normalised), from every source.
    Account(String),
    /// Every lockout and count of this source key, on every account.
    Source(IpAddr),
}

/// The state (login counts, lockouts, spent challenges) could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the state store failed: {0}")]
pub struct StateError(pub String);

impl StateError {
    fn from_display(err: impl std::fmt::Display) -> Self {
        Self(err.to_string())
    }
}

/// Where failures, lockouts and spent challenges are kept.
pub trait AttemptStore: Send + Sync + std::fmt::Debug {
    /// The scores and lockout of `attempt`'s account, source and pair.
    fn standing(
        &self,
        attempt: &Attempt,
        policy: &Policy,
        now: SystemTime,
    ) -> BoxFuture<Result<Standing, StateError>>;

    /// Counts a failure of `attempt`, starting a lockout or noting stuffing as `policy` says.
    fn failed(
        &self,
        attempt: &Attempt,
        policy: &Policy,
        now: SystemTime,
    ) -> BoxFuture<Result<AfterFailure, StateError>>;

    /// Clears the pair's failures after a successful login (the source's and the account's
    /// stay: an attacker's own account must not wash their address clean).
    fn succeeded(&self, attempt: &Attempt) -> BoxFuture<Result<(), StateError>>;

    /// Clears what `target` names; gives how many records went.
    fn unlock(&self, target: &Unlock) -> BoxFuture<Result<u64, StateError>>;
}

/// Whether a decayed `score` has reached `threshold`: the count rounded, so that ten failures
/// in a row are ten, and not 9.97 for the seconds between them.
pub fn reached(score: f64, threshold: u32) -> bool {
    score.round() >= f64::from(threshold)
}

/// `score` written at `then`, decayed to `now`.
pub fn decayed(score: f64, then: SystemTime, now: SystemTime, half_life: Duration) -> f64 {
    let elapsed = now.duration_since(then).unwrap_or_default().as_secs_f64();
    let half = half_life.as_secs_f64().max(f64::MIN_POSITIVE);
    score * 0.5_f64.powf(elapsed / half)
}

/// Milliseconds since the Unix epoch, as the stores keep times.
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `millis` gave.
pub fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// How many failures pass between two sweeps of old records.
const PRUNE_EVERY: u64 = 512;

/// Scores this many half-lives old are worth less than a thousandth of a failure: dropped.
pub(crate) const FORGET_AFTER_HALF_LIVES: u32 = 10;

/// The default store: one SQLite file (or memory, for tests and single runs).
#[derive(Debug, Clone)]
pub struct SqliteAttempts {
    db: Arc<Mutex<Db>>,
}

#[derive(Debug)]
struct Db {
    conn: Connection,
    failures: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS login_scores (
    scope TEXT NOT NULL,          -- 'pair', 'source' or 'account'
    account TEXT NOT NULL,        -- '' for a source's score
    source TEXT NOT NULL,         -- '' for an account's score
    score REAL NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, account, source)
);
CREATE INDEX IF NOT EXISTS login_scores_source ON login_scores (source);
CREATE TABLE IF NOT EXISTS login_lockouts (
    account TEXT NOT NULL,
    source TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (account, source)
);
CREATE INDEX IF NOT EXISTS login_lockouts_source ON login_lockouts (source);
CREATE TABLE IF NOT EXISTS login_pairs (
    account TEXT NOT NULL,
    source TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (account, source)
);
CREATE INDEX IF NOT EXISTS login_pairs_source ON login_pairs (source, seen_ms);
CREATE INDEX IF NOT EXISTS login_pairs_account ON login_pairs (account, seen_ms);
CREATE TABLE IF NOT EXISTS login_alerts (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS spent_challenges (
    id BLOB PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
";

impl SqliteAttempts {
    /// Opens (creating when missing) the store in the file at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        // Failed account names are in it (people type passwords into the name field): only
        // its owner reads it. SQLite gives its -wal and -shm files the same mode.
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
        create
            .open(path)
            .map_err(|err| StateError(format!("cannot open {}: {err}", path.display())))?;
        let conn = Connection::open(path)
            .map_err(|err| StateError(format!("cannot open {}: {err}", path.display())))?;
        // Another process (the unlock command, a second gateway) may hold the file a moment.
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(StateError::from_display)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(StateError::from_display)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(StateError::from_display)?;
        Self::with(conn)
    }

    /// A store that lives in memory, for one process only.
    pub fn in_memory() -> Result<Self, StateError> {
        Self::with(Connection::open_in_memory().map_err(StateError::from_display)?)
    }

    fn with(conn: Connection) -> Result<Self, StateError> {
        conn.execute_batch(SCHEMA)
            .map_err(StateError::from_display)?;
        Ok(Self {
            db: Arc::new(Mutex::new(Db { conn, failures: 0 })),
        })
    }

    /// Runs `work` on the connection away from the async threads.
    fn run<T, F>(&self, work: F) -> BoxFuture<Result<T, StateError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                work(&mut db).map_err(StateError::from_display)
            })
            .await
            .map_err(StateError::from_display)?
        })
    }
}

fn score(
    conn: &Connection,
    scope: &str,
    account: &str,
    source: &str,
    now: SystemTime,
    half_life: Duration,
) -> rusqlite::Result<f64> {
    let row: Option<(f64, i64)> = conn
        .query_row(
            "SELECT score, updated_ms FROM login_scores WHERE scope = ?1 AND account = ?2 AND source = ?3",
            params![scope, account, source],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(row.map_or(0.0, |(score, at)| {
        decayed(score, from_millis(at), now, half_life)
    }))
}

fn set_score(
    conn: &Connection,
    scope: &str,
    account: &str,
    source: &str,
    value: f64,
    now: SystemTime,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO login_scores (scope, account, source, score, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (scope, account, source) DO UPDATE SET score = excluded.score, updated_ms = excluded.updated_ms",
        params![scope, account, source, value, millis(now)],
    )?;
    Ok(())
}

fn read_standing(
    conn: &Connection,
    attempt: &Attempt,
    policy: &Policy,
    now: SystemTime,
) -> rusqlite::Result<Standing> {
    let now = from_millis(millis(now));
    let account = attempt.account.as_str();
    let source = attempt.source.to_string();
    let half = policy.half_life;
    let source_score = score(conn, "source", "", &source, now, half)?;
    if account.is_empty() {
        return Ok(Standing {
            source: source_score,
            ..Standing::default()
        });
    }
    let until: Option<i64> = conn
        .query_row(
            "SELECT until_ms FROM login_lockouts WHERE account = ?1 AND source = ?2",
            params![account, source],
            |row| row.get(0),
        )
        .optional()?;
    Ok(Standing {
        pair: score(conn, "pair", account, &source, now, half)?,
        source: source_score,
        account: score(conn, "account", account, "", now, half)?,
        locked_until: until.map(from_millis).filter(|until| *until > now),
    })
}

/// Raises an alert for `scope`/`key` unless one is running; true when it is new.
fn alert_once(
    conn: &Connection,
    scope: &str,
    key: &str,
    now: SystemTime,
    window: Duration,
) -> rusqlite::Result<bool> {
    let running: Option<i64> = conn
        .query_row(
            "SELECT until_ms FROM login_alerts WHERE scope = ?1 AND key = ?2 AND until_ms > ?3",
            params![scope, key, millis(now)],
            |row| row.get(0),
        )
        .optional()?;
    if running.is_some() {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO login_alerts (scope, key, until_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (scope, key) DO UPDATE SET until_ms = excluded.until_ms",
        params![scope, key, millis(now + window)],
    )?;
    Ok(true)
}

fn count_failure(
    db: &mut Db,
    attempt: &Attempt,
    policy: &Policy,
    now: SystemTime,
) -> rusqlite::Result<AfterFailure> {
    let now = from_millis(millis(now));
    db.failures += 1;
    let prune = db.failures.is_multiple_of(PRUNE_EVERY);
    let tx = db
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let before = read_standing(&tx, attempt, policy, now)?;
    let account = attempt.account.as_str();
    let source = attempt.source.to_string();
    let mut after = Standing {
        source: before.source + 1.0,
        ..before
    };
    set_score(&tx, "source", "", &source, after.source, now)?;
    let mut locked = false;
    let mut stuffing = Vec::new();
    if !account.is_empty() {
        after.account = before.account + 1.0;
        set_score(&tx, "account", account, "", after.account, now)?;
        after.pair = before.pair + 1.0;
        if before.locked_until.is_none() && reached(after.pair, policy.lockout_after) {
            let until = now + policy.lockout;
            tx.execute(
                "INSERT INTO login_lockouts (account, source, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account, source) DO UPDATE SET until_ms = excluded.until_ms",
                params![account, source, millis(until)],
            )?;
            after.locked_until = Some(until);
            after.pair = f64::from(policy.challenge_after);
            locked = true;
        }
        set_score(&tx, "pair", account, &source, after.pair, now)?;

        tx.execute(
            "INSERT INTO login_pairs (account, source, seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (account, source) DO UPDATE SET seen_ms = excluded.seen_ms",
            params![account, source, millis(now)],
        )?;
        let since = millis(
            now.checked_sub(policy.stuffing_window)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let accounts: u32 = tx.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM login_pairs WHERE source = ?1 AND seen_ms > ?2 LIMIT ?3)",
            params![source, since, policy.stuffing_accounts],
            |row| row.get(0),
        )?;
        if accounts >= policy.stuffing_accounts
            && alert_once(&tx, "accounts", &source, now, policy.stuffing_window)?
        {
            stuffing.push(Stuffing::ManyAccounts(accounts));
        }
        let sources: u32 = tx.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM login_pairs WHERE account = ?1 AND seen_ms > ?2 LIMIT ?3)",
            params![account, since, policy.stuffing_sources],
            |row| row.get(0),
        )?;
        if sources >= policy.stuffing_sources
            && alert_once(&tx, "sources", account, now, policy.stuffing_window)?
        {
            stuffing.push(Stuffing::ManySources(sources));
        }
    }
    if prune {
        let now_ms = millis(now);
        let forget = policy.half_life * FORGET_AFTER_HALF_LIVES;
        let old = millis(now.checked_sub(forget).unwrap_or(SystemTime::UNIX_EPOCH));
        let window = millis(
            now.checked_sub(policy.stuffing_window)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        tx.execute("DELETE FROM login_scores WHERE updated_ms < ?1", [old])?;
        tx.execute("DELETE FROM login_lockouts WHERE until_ms <= ?1", [now_ms])?;
        tx.execute("DELETE FROM login_pairs WHERE seen_ms <= ?1", [window])?;
        tx.execute("DELETE FROM login_alerts WHERE until_ms <= ?1", [now_ms])?;
        tx.execute(
            "DELETE FROM spent_challenges WHERE expires_ms <= ?1",
            [now_ms],
        )?;
    }
    tx.commit()?;
    Ok(AfterFailure {
        standing: after,
        locked,
        stuffing,
    })
}

impl AttemptStore for SqliteAttempts {
    fn standing(
        &self,
        attempt: &Attempt,
        policy: &Policy,
        now: SystemTime,
    ) -> BoxFuture<Result<Standing, StateError>> {
        let (attempt, policy) = (attempt.clone(), *policy);
        self.run(move |db| read_standing(&db.conn, &attempt, &policy, now))
    }

    fn failed(
        &self,
        attempt: &Attempt,
        policy: &Policy,
        now: SystemTime,
    ) -> BoxFuture<Result<AfterFailure, StateError>> {
        let (attempt, policy) = (attempt.clone(), *policy);
        self.run(move |db| count_failure(db, &attempt, &policy, now))
    }

    fn succeeded(&self, attempt: &Attempt) -> BoxFuture<Result<(), StateError>> {
        let attempt = attempt.clone();
        self.run(move |db| {
            db.conn.execute(
                "DELETE FROM login_scores WHERE scope = 'pair' AND account = ?1 AND source = ?2",
                params![attempt.account, attempt.source.to_string()],
            )?;
            Ok(())
        })
    }

    fn unlock(&self, target: &Unlock) -> BoxFuture<Result<u64, StateError>> {
        let target = target.clone();
        self.run(move |db| {
            let tx = db.conn.transaction()?;
            let removed = match &target {
                Unlock::Account(account) => {
                    tx.execute("DELETE FROM login_scores WHERE account = ?1", [account])?
                        + tx.execute("DELETE FROM login_lockouts WHERE account = ?1", [account])?
                        + tx.execute("DELETE FROM login_pairs WHERE account = ?1", [account])?
                }
                Unlock::Source(source) => {
                    let source = source.to_string();
                    tx.execute("DELETE FROM login_scores WHERE source = ?1", [&source])?
                        + tx.execute("DELETE FROM login_lockouts WHERE source = ?1", [&source])?
                        + tx.execute("DELETE FROM login_pairs WHERE source = ?1", [&source])?
                }
            };
            tx.commit()?;
            Ok(removed as u64)
        })
    }
}

impl crate::challenge::SpentChallenges for SqliteAttempts {
    fn spend(&self, id: [u8; 16], expires_at: SystemTime) -> BoxFuture<Result<bool, StateError>> {
        self.run(move |db| {
            let now = millis(SystemTime::now());
            db.conn.execute(
                "DELETE FROM spent_challenges WHERE id = ?1 AND expires_ms <= ?2",
                params![id.as_slice(), now],
            )?;
            let inserted = db.conn.execute(
                "INSERT OR IGNORE INTO spent_challenges (id, expires_ms) VALUES (?1, ?2)",
                params![id.as_slice(), millis(expires_at)],
            )?;
            Ok(inserted == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_halves_every_half_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let half = Duration::from_secs(60);
        assert_eq!(decayed(8.0, t0, t0, half), 8.0);
        assert!((decayed(8.0, t0, t0 + half, half) - 4.0).abs() < 1e-9);
        assert!((decayed(8.0, t0, t0 + half * 3, half) - 1.0).abs() < 1e-9);
        // A clock that went back counts nothing as elapsed.
        assert_eq!(decayed(8.0, t0 + half, t0, half), 8.0);
    }
}
