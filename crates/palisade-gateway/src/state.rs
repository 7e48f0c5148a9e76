//! The gateway's lasting state, opened from `[gateway.state]`: a SQLite file by default, Redis
//! when several gateways must share limits, memory when neither is given.

use std::sync::Arc;

use palisade_guard::{AttemptStore, RedisState, SpentChallenges, SqliteAttempts};

use crate::{Error, options::StateOptions};

/// The open state: a SQLite file (or memory), or Redis, which then holds the rate limits too.
#[derive(Debug, Clone)]
pub enum State {
    /// The default: one file (memory without one).
    Sqlite(SqliteAttempts),
    /// Shared by several gateways.
    Redis(RedisState),
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
            return RedisState::new(url)
                .map(Self::Redis)
                .map_err(|err| bad(err.to_string()));
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
        };
        sqlite.map(Self::Sqlite).map_err(|err| bad(err.to_string()))
    }

    /// The store of login failures and lockouts.
    pub fn attempts(&self) -> Arc<dyn AttemptStore> {
        match self {
            Self::Sqlite(sqlite) => Arc::new(sqlite.clone()),
            Self::Redis(redis) => Arc::new(redis.clone()),
        }
    }

    /// Where answered challenges are spent: the same store, so that a solution works once
    /// across restarts and, with Redis, across gateways.
    pub fn spent(&self) -> Arc<dyn SpentChallenges> {
        match self {
            Self::Sqlite(sqlite) => Arc::new(sqlite.clone()),
            Self::Redis(redis) => Arc::new(redis.clone()),
        }
    }

    /// The Redis connection, when the state is shared.
    pub fn redis(&self) -> Option<&RedisState> {
        match self {
            Self::Redis(redis) => Some(redis),
            Self::Sqlite(_) => None,
        }
    }
}

/// Checks a `state.redis` URL without connecting.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    palisade_guard::redis_state::check_url(url)
}
