//! The gateway's lasting state, opened from `[gateway.state]`: a SQLite file by default, Redis
//! when several gateways must share limits, memory when neither is given.

use std::sync::Arc;

use palisade_guard::{AttemptStore, RedisState, SpentChallenges, SqliteAttempts};

use crate::{Error, options::StateOptions};

/// The open state: the login store, and Redis when the rate limits share it too.
#[derive(Debug, Clone)]
pub struct State {
    attempts: Arc<dyn AttemptStore>,
    sqlite: Option<SqliteAttempts>,
    redis: Option<RedisState>,
}

impl State {
    /// Opens what `options` names. Redis is connected on first use, so a Redis that is down at
    /// start-up is an outage like any other, not a failure to start.
    pub fn open(options: &StateOptions) -> Result<Self, Error> {
        let bad = |message: String| Error::BadSetting {
            setting: if options.redis.is_some() {
                "state.redis".into()
            } else {
                "state.path".into()
            },
            message,
        };
        if let Some(url) = &options.redis {
            let redis = RedisState::new(url).map_err(|err| bad(err.to_string()))?;
            return Ok(Self {
                attempts: Arc::new(redis.clone()),
                sqlite: None,
                redis: Some(redis),
            });
        }
        let sqlite = match &options.path {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                SqliteAttempts::open(path)
            }
            None => SqliteAttempts::in_memory(),
        }
        .map_err(|err| bad(err.to_string()))?;
        Ok(Self {
            attempts: Arc::new(sqlite.clone()),
            sqlite: Some(sqlite),
            redis: None,
        })
    }

    /// The store of login failures and lockouts.
    pub fn attempts(&self) -> Arc<dyn AttemptStore> {
        self.attempts.clone()
    }

    /// Where answered challenges are spent: the same store, so that a solution works once
    /// across restarts and, with Redis, across gateways.
    pub fn spent(&self) -> Arc<dyn SpentChallenges> {
        match (&self.redis, &self.sqlite) {
            (Some(redis), _) => Arc::new(redis.clone()),
            (None, Some(sqlite)) => Arc::new(sqlite.clone()),
            (None, None) => unreachable!("a state is SQLite or Redis"),
        }
    }

    /// The Redis connection, when the state is shared.
    pub fn redis(&self) -> Option<&RedisState> {
        self.redis.as_ref()
    }

    /// The SQLite store, when the state is a file (or memory).
    pub fn sqlite(&self) -> Option<&SqliteAttempts> {
        self.sqlite.as_ref()
    }
}

/// Checks a `state.redis` URL without connecting.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    palisade_guard::redis_state::check_url(url)
}
