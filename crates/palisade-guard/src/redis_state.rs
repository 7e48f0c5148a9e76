//! State shared through Redis, so that several gateway instances enforce one limit: rate
//! limits (GCRA, one Lua script per check), login failure counts and lockouts (the SQLite
//! store's arithmetic, in Lua), and spent challenges (`SET NX`).
//!
//! Every change is one script, so that it is atomic however many gateways run. Rate limits
//! take their time from the Redis server (`TIME`), so that the instances share one clock;
//! login counts take the gateway's time, as the SQLite store does. Every key has an expiry:
//! memory stays bounded without a sweeper. The connection reconnects by itself after a
//! failure; until then, each call fails fast (the response timeout) and the layers apply
//! their `on_failure` policy.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use redis::{
    AsyncCommands as _, Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{
    BoxFuture,
    attempts::{
        AfterFailure, Attempt, AttemptStore, Policy, Standing, StateError, Stuffing, Unlock,
        from_millis, millis,
    },
};

/// How long one Redis call may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// The prefix of every key the gateway writes.
const PREFIX: &str = "palisade:";

/// A connection to the Redis server that holds the shared state.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    server: String,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisState")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Checks that `url` is a Redis URL, without connecting; the message never repeats it.
pub fn check_url(url: &str) -> Result<(), String> {
    Client::open(url).map(|_| ()).map_err(|_| {
        "is not a Redis URL; write it like redis://127.0.0.1:6379/0 \
         (redis://:PASSWORD@HOST:PORT/DB with a password, or redis+unix:///run/redis.sock)"
            .to_string()
    })
}

impl RedisState {
    /// A connection to `url`, made on first use and remade after failures.
    pub fn new(url: &str) -> Result<Self, StateError> {
        let client = Client::open(url).map_err(|_| StateError(check_url(url).unwrap_err()))?;
        let server = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| StateError(format!("Redis at {server}: {err}")))?;
        Ok(Self { conn, server })
    }

    fn failed(&self, err: redis::RedisError) -> StateError {
        StateError(format!("Redis at {}: {err}", self.server))
    }

    /// One GCRA check of `key` with one request every `cell` and `burst` at once: gives
    /// `Ok(remaining)` when allowed, `Err(wait)` when not.
    pub async fn check_rate(
        &self,
        key: &str,
        cell: Duration,
        burst: u32,
    ) -> Result<Result<u32, Duration>, StateError> {
        let mut conn = self.conn.clone();
        let cell_us = u64::try_from(cell.as_micros()).unwrap_or(u64::MAX).max(1);
        let (allowed, wait_us, remaining): (i64, i64, i64) = gcra()
            .key(format!("{PREFIX}rl:{key}"))
            .arg(cell_us)
            .arg(burst)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| self.failed(err))?;
        Ok(if allowed == 1 {
            Ok(u32::try_from(remaining.max(0)).unwrap_or(u32::MAX))
        } else {
            Err(Duration::from_micros(
                u64::try_from(wait_us.max(1)).unwrap_or(1),
            ))
        })
    }

    /// Whether the server answers.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|err| self.failed(err))?;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// GCRA on the server's clock: KEYS[1] holds the theoretical arrival time in microseconds.
fn gcra() -> Script {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cell = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + cell - burst * cell
if now < allow_at then
  return {0, allow_at - now, 0}
end
local new_tat = tat + cell
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((now - new_tat + burst * cell) / cell)}
",
    )
}

/// The keys of one attempt, in the order the login scripts take them.
fn login_keys(attempt: &Attempt) -> Vec<String> {
    let source = attempt.source.to_string();
    let account = &attempt.account;
    vec![
        format!("{PREFIX}bf:src:{source}"),
        format!("{PREFIX}bf:acct:{account}"),
        format!("{PREFIX}bf:pair:{source}|{account}"),
        format!("{PREFIX}bf:lock:{source}|{account}"),
        format!("{PREFIX}bf:accounts-of:{source}"),
        format!("{PREFIX}bf:sources-of:{account}"),
        format!("{PREFIX}bf:alert:accounts:{source}"),
        format!("{PREFIX}bf:alert:sources:{account}"),
    ]
}

/// Shared by the two login scripts: a decayed score read from a hash `{s, t}`.
const DECAY: &str = r"
local function score(key, now, half)
  local v = redis.call('HMGET', key, 's', 't')
  if not v[1] then return 0 end
  local elapsed = now - tonumber(v[2])
  if elapsed < 0 then elapsed = 0 end
  return tonumber(v[1]) * math.pow(0.5, elapsed / half)
end
local now = tonumber(ARGV[1])
local half = tonumber(ARGV[2])
local has_account = ARGV[3] == '1'
";

fn standing_script() -> Script {
    Script::new(&format!(
        r"{DECAY}
local src = score(KEYS[1], now, half)
if not has_account then return {{tostring(src), '0', '0', 0}} end
local until_ms = tonumber(redis.call('GET', KEYS[4])) or 0
if until_ms <= now then until_ms = 0 end
return {{tostring(src), tostring(score(KEYS[2], now, half)), tostring(score(KEYS[3], now, half)), until_ms}}
"
    ))
}

fn failure_script() -> Script {
    Script::new(&format!(
        r"{DECAY}
local lockout_after = tonumber(ARGV[4])
local challenge_after = tonumber(ARGV[5])
local lockout_ms = tonumber(ARGV[6])
local stuffing_accounts = tonumber(ARGV[7])
local stuffing_sources = tonumber(ARGV[8])
local window = tonumber(ARGV[9])
local keep = tonumber(ARGV[10])
local source, account = ARGV[11], ARGV[12]
local function put(key, value)
  redis.call('HSET', key, 's', tostring(value), 't', now)
  redis.call('PEXPIRE', key, keep)
end
local src = score(KEYS[1], now, half) + 1
put(KEYS[1], src)
if not has_account then return {{tostring(src), '0', '0', 0, 0, 0, 0}} end
local acct = score(KEYS[2], now, half) + 1
put(KEYS[2], acct)
local pair = score(KEYS[3], now, half) + 1
local until_ms = tonumber(redis.call('GET', KEYS[4])) or 0
if until_ms <= now then until_ms = 0 end
local locked = 0
if until_ms == 0 and math.floor(pair + 0.5) >= lockout_after then
  until_ms = now + lockout_ms
  redis.call('SET', KEYS[4], until_ms, 'PX', lockout_ms)
  pair = challenge_after
  locked = 1
end
put(KEYS[3], pair)
local many_accounts, many_sources = 0, 0
redis.call('ZADD', KEYS[5], now, account)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window)
redis.call('PEXPIRE', KEYS[5], window)
local accounts = redis.call('ZCARD', KEYS[5])
if accounts >= stuffing_accounts and redis.call('SET', KEYS[7], 1, 'NX', 'PX', window) then
  many_accounts = accounts
end
redis.call('ZADD', KEYS[6], now, source)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - window)
redis.call('PEXPIRE', KEYS[6], window)
local sources = redis.call('ZCARD', KEYS[6])
if sources >= stuffing_sources and redis.call('SET', KEYS[8], 1, 'NX', 'PX', window) then
  many_sources = sources
end
return {{tostring(src), tostring(acct), tostring(pair), until_ms, locked, many_accounts, many_sources}}
"
    ))
}

fn parse_score(text: &str) -> f64 {
    text.parse().unwrap_or(0.0)
}

fn until(ms: i64) -> Option<SystemTime> {
    (ms > 0).then(|| from_millis(ms))
}

/// Escapes `text` for a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisState {
    async fn delete_matching(&self, pattern: String) -> Result<u64, StateError> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> = conn
                .scan_match(&pattern)
                .await
                .map_err(|err| self.failed(err))?;
            while let Some(key) = iter.next_item().await {
                keys.push(key.map_err(|err| self.failed(err))?);
            }
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let removed: u64 = conn.del(&keys).await.map_err(|err| self.failed(err))?;
        Ok(removed)
    }

    async fn unlock_now(&self, target: Unlock) -> Result<u64, StateError> {
        let mut removed = 0;
        match target {
            Unlock::Account(account) => {
                let escaped = glob_escape(&account);
                for pattern in [
                    format!("{PREFIX}bf:pair:*|{escaped}"),
                    format!("{PREFIX}bf:lock:*|{escaped}"),
                    format!("{PREFIX}bf:acct:{escaped}"),
                    format!("{PREFIX}bf:sources-of:{escaped}"),
                ] {
                    removed += self.delete_matching(pattern).await?;
                }
            }
            Unlock::Source(source) => {
                let source = source.to_string();
                for pattern in [
                    format!("{PREFIX}bf:pair:{source}|*"),
                    format!("{PREFIX}bf:lock:{source}|*"),
                    format!("{PREFIX}bf:src:{source}"),
                    format!("{PREFIX}bf:accounts-of:{source}"),
                ] {
                    removed += self.delete_matching(pattern).await?;
                }
            }
        }
        Ok(removed)
    }
}

impl AttemptStore for RedisState {
    fn standing(
        &self,
        attempt: &Attempt,
        policy: &Policy,
        now: SystemTime,
    ) -> BoxFuture<Result<Standing, StateError>> {
        let (this, attempt, half) = (self.clone(), attempt.clone(), policy.half_life);
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let script = standing_script();
            let mut call = script.prepare_invoke();
            for key in login_keys(&attempt) {
                call.key(key);
            }
            let (src, acct, pair, until_ms): (String, String, String, i64) = call
                .arg(millis(now))
                .arg(half.as_millis().max(1) as u64)
                .arg(if attempt.account.is_empty() { "0" } else { "1" })
                .invoke_async(&mut conn)
                .await
                .map_err(|err| this.failed(err))?;
            Ok(Standing {
                source: parse_score(&src),
                account: parse_score(&acct),
                pair: parse_score(&pair),
                locked_until: until(until_ms),
            })
        })
    }

    fn failed(
        &self,
        attempt: &Attempt,
        policy: &Policy,
        now: SystemTime,
    ) -> BoxFuture<Result<AfterFailure, StateError>> {
        let (this, attempt, policy) = (self.clone(), attempt.clone(), *policy);
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let script = failure_script();
            let mut call = script.prepare_invoke();
            for key in login_keys(&attempt) {
                call.key(key);
            }
            let keep = policy.half_life * crate::attempts::FORGET_AFTER_HALF_LIVES;
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
            let reply: (String, String, String, i64, i64, u32, u32) = call
                .arg(millis(now))
                .arg(ms(policy.half_life))
                .arg(if attempt.account.is_empty() { "0" } else { "1" })
                .arg(policy.lockout_after)
                .arg(policy.challenge_after)
                .arg(ms(policy.lockout))
                .arg(policy.stuffing_accounts)
                .arg(policy.stuffing_sources)
                .arg(ms(policy.stuffing_window))
                .arg(ms(keep))
                .arg(attempt.source.to_string())
                .arg(&attempt.account)
                .invoke_async(&mut conn)
                .await
                .map_err(|err| this.failed(err))?;
            let (src, acct, pair, until_ms, locked, accounts, sources) = reply;
            let mut stuffing = Vec::new();
            if accounts > 0 {
                stuffing.push(Stuffing::ManyAccounts(accounts));
            }
            if sources > 0 {
                stuffing.push(Stuffing::ManySources(sources));
            }
            Ok(AfterFailure {
                standing: Standing {
                    source: parse_score(&src),
                    account: parse_score(&acct),
                    pair: parse_score(&pair),
                    locked_until: until(until_ms),
                },
                locked: locked == 1,
                stuffing,
            })
        })
    }

    fn succeeded(&self, attempt: &Attempt) -> BoxFuture<Result<(), StateError>> {
        let this = self.clone();
        let key = login_keys(attempt).swap_remove(2);
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let _: u64 = conn.del(key).await.map_err(|err| this.failed(err))?;
            Ok(())
        })
    }

    fn unlock(&self, target: &Unlock) -> BoxFuture<Result<u64, StateError>> {
        let (this, target) = (self.clone(), target.clone());
        Box::pin(async move { this.unlock_now(target).await })
    }
}

impl crate::challenge::SpentChallenges for RedisState {
    fn spend(&self, id: [u8; 16], expires_at: SystemTime) -> BoxFuture<Result<bool, StateError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let ttl = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_millis()
                .max(1);
            let key = format!("{PREFIX}ch:{}", hex(&id));
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(ttl).unwrap_or(u64::MAX))
                .query_async(&mut conn)
                .await
                .map_err(|err| this.failed(err))?;
            Ok(set.is_some())
        })
    }
}

/// The key a rate limit rule counts `client` under (`None`: the rule's one global key).
pub fn rate_key(rule: &str, client: Option<IpAddr>) -> String {
    match client {
        Some(ip) => format!("{rule}:{ip}"),
        None => format!("{rule}:*"),
    }
}
