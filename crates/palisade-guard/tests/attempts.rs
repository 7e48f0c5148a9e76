//! The login state stores against one set of expectations: SQLite in memory, and a real Redis
//! server; then what only Redis does (shared rate limits, outages and recovery).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use palisade_guard::{
    AttemptStore, RedisState, SpentChallenges, SqliteAttempts, Unlock,
    attempts::{Attempt, Policy, Standing, Stuffing, from_millis, millis},
};
use palisade_testkit::redis::RedisServer;

fn policy() -> Policy {
    Policy {
        half_life: Duration::from_secs(900),
        lockout_after: 10,
        challenge_after: 5,
        lockout: Duration::from_secs(900),
        stuffing_accounts: 3,
        stuffing_sources: 3,
        stuffing_window: Duration::from_secs(600),
    }
}

fn attempt(account: &str, source: &str) -> Attempt {
    Attempt {
        account: account.into(),
        source: source.parse().unwrap(),
    }
}

/// Now, to the millisecond the stores keep.
fn now() -> SystemTime {
    from_millis(millis(SystemTime::now()))
}

async fn locks_once_and_never_extends(store: &dyn AttemptStore) {
    let policy = policy();
    let a = attempt("alice", "192.0.2.1");
    let t0 = now();
    for n in 1..10 {
        let after = store.failed(&a, &policy, t0).await.unwrap();
        assert!(!after.locked, "failure {n}");
        assert_eq!(after.standing.pair.round(), f64::from(n));
        assert_eq!(after.standing.locked_until, None);
    }
    let after = store.failed(&a, &policy, t0).await.unwrap();
    assert!(after.locked);
    assert_eq!(after.standing.locked_until, Some(t0 + policy.lockout));
    // The pair is set back to the challenge threshold.
    assert_eq!(after.standing.pair, 5.0);
    // Failures racing in while it runs do not move its end.
    let later = t0 + Duration::from_secs(60);
    let again = store.failed(&a, &policy, later).await.unwrap();
    assert!(!again.locked);
    let standing = store.standing(&a, &policy, later).await.unwrap();
    assert_eq!(standing.locked_until, Some(t0 + policy.lockout));
    // Decay: an hour on (four half-lives), the source's eleven failures count about 0.7.
    let hour = store
        .standing(&a, &policy, t0 + Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        (hour.source - 11.0 / 16.0).abs() < 0.05,
        "source after an hour: {}",
        hour.source
    );
}

async fn lockout_is_for_one_source(store: &dyn AttemptStore) {
    let policy = policy();
    let t = now();
    let attacker = attempt("victim", "203.0.113.9");
    for _ in 0..10 {
        store.failed(&attacker, &policy, t).await.unwrap();
    }
    let there = store.standing(&attacker, &policy, t).await.unwrap();
    assert!(there.locked_until.is_some());
    let home = store
        .standing(&attempt("victim", "198.51.100.4"), &policy, t)
        .await
        .unwrap();
    assert_eq!(home.locked_until, None);
    assert_eq!(home.pair, 0.0);
    assert_eq!(home.source, 0.0);
    assert_eq!(home.account.round(), 10.0);
}

async fn success_clears_the_pair_only(store: &dyn AttemptStore) {
    let policy = policy();
    let t = now();
    let a = attempt("bob", "192.0.2.7");
    for _ in 0..3 {
        store.failed(&a, &policy, t).await.unwrap();
    }
    store.succeeded(&a).await.unwrap();
    let standing = store.standing(&a, &policy, t).await.unwrap();
    assert_eq!(standing.pair, 0.0);
    assert_eq!(standing.source.round(), 3.0);
    assert_eq!(standing.account.round(), 3.0);
}

async fn stuffing_is_noted_once_per_window(store: &dyn AttemptStore) {
    let policy = policy();
    let t = now();
    let mut seen = Vec::new();
    for account in ["a", "b", "c", "d", "e"] {
        let after = store
            .failed(&attempt(account, "192.0.2.50"), &policy, t)
            .await
            .unwrap();
        seen.extend(after.stuffing);
    }
    assert_eq!(seen, vec![Stuffing::ManyAccounts(3)]);
    let mut seen = Vec::new();
    for source in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        let after = store
            .failed(&attempt("carol", source), &policy, t)
            .await
            .unwrap();
        seen.extend(after.stuffing);
    }
    assert_eq!(seen, vec![Stuffing::ManySources(3)]);
}

async fn unlock_clears_an_account_or_a_source(store: &dyn AttemptStore) {
    let policy = policy();
    let t = now();
    let a = attempt("dave", "192.0.2.8");
    let other = attempt("dave", "192.0.2.99");
    for _ in 0..10 {
        store.failed(&a, &policy, t).await.unwrap();
        store.failed(&other, &policy, t).await.unwrap();
    }
    assert!(store.unlock(&Unlock::Account("dave".into())).await.unwrap() > 0);
    for who in [&a, &other] {
        let standing = store.standing(who, &policy, t).await.unwrap();
        assert_eq!(standing.locked_until, None);
        assert_eq!(standing.pair, 0.0);
        assert_eq!(standing.account, 0.0);
    }
    for _ in 0..10 {
        store.failed(&a, &policy, t).await.unwrap();
    }
    store.unlock(&Unlock::Source(a.source)).await.unwrap();
    let standing = store.standing(&a, &policy, t).await.unwrap();
    // The account's own count stays: it was not what was unlocked.
    assert_eq!(
        standing,
        Standing {
            account: standing.account,
            ..Standing::default()
        }
    );
    assert_eq!(standing.account.round(), 10.0);
    // Nothing to unlock is no error.
    assert_eq!(
        store
            .unlock(&Unlock::Account("nobody".into()))
            .await
            .unwrap(),
        0
    );
}

async fn an_account_with_glob_characters_is_only_itself(store: &dyn AttemptStore) {
    let policy = policy();
    let t = now();
    let star = attempt("*", "192.0.2.60");
    let plain = attempt("eve", "192.0.2.60");
    for _ in 0..10 {
        store.failed(&star, &policy, t).await.unwrap();
        store.failed(&plain, &policy, t).await.unwrap();
    }
    store.unlock(&Unlock::Account("*".into())).await.unwrap();
    assert_eq!(
        store
            .standing(&star, &policy, t)
            .await
            .unwrap()
            .locked_until,
        None
    );
    assert!(
        store
            .standing(&plain, &policy, t)
            .await
            .unwrap()
            .locked_until
            .is_some()
    );
}

async fn an_attempt_without_account_counts_for_its_source(store: &dyn AttemptStore) {
    let policy = policy();
    let t = now();
    let nameless = attempt("", "192.0.2.70");
    for _ in 0..12 {
        let after = store.failed(&nameless, &policy, t).await.unwrap();
        assert!(!after.locked);
    }
    let standing = store.standing(&nameless, &policy, t).await.unwrap();
    assert_eq!(standing.source.round(), 12.0);
    assert_eq!(standing.locked_until, None);
}

async fn every_expectation(store: &dyn AttemptStore) {
    locks_once_and_never_extends(store).await;
    lockout_is_for_one_source(store).await;
    success_clears_the_pair_only(store).await;
    stuffing_is_noted_once_per_window(store).await;
    unlock_clears_an_account_or_a_source(store).await;
    an_account_with_glob_characters_is_only_itself(store).await;
    an_attempt_without_account_counts_for_its_source(store).await;
}

#[tokio::test]
async fn sqlite_keeps_the_login_state() {
    every_expectation(&SqliteAttempts::in_memory().unwrap()).await;
}

#[tokio::test]
async fn redis_keeps_the_login_state() {
    let redis = RedisServer::start();
    every_expectation(&RedisState::new(&redis.url()).unwrap()).await;
}

#[tokio::test]
async fn a_sqlite_file_is_shared_by_its_handles() {
    // The unlock command and a second process open the gateway's file while it runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.sqlite");
    let policy = policy();
    let a = attempt("erin", "192.0.2.9");
    let one = SqliteAttempts::open(&path).unwrap();
    for _ in 0..10 {
        one.failed(&a, &policy, now()).await.unwrap();
    }
    let two = SqliteAttempts::open(&path).unwrap();
    let standing = two.standing(&a, &policy, now()).await.unwrap();
    assert!(standing.locked_until.is_some());
    two.unlock(&Unlock::Account("erin".into())).await.unwrap();
    let standing = one.standing(&a, &policy, now()).await.unwrap();
    assert_eq!(standing.locked_until, None);
}

#[tokio::test]
async fn a_challenge_is_spent_once_in_either_store() {
    let redis = RedisServer::start();
    let until = SystemTime::now() + Duration::from_secs(60);
    let sqlite = SqliteAttempts::in_memory().unwrap();
    assert!(sqlite.spend([7; 16], until).await.unwrap());
    assert!(!sqlite.spend([7; 16], until).await.unwrap());
    // Two gateways on one Redis: the second one's spend of the same id fails.
    let one = RedisState::new(&redis.url()).unwrap();
    let two = RedisState::new(&redis.url()).unwrap();
    assert!(one.spend([7; 16], until).await.unwrap());
    assert!(!two.spend([7; 16], until).await.unwrap());
    assert!(two.spend([8; 16], until).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_admit_exactly_the_burst() {
    let redis = RedisServer::start();
    let instances = [
        RedisState::new(&redis.url()).unwrap(),
        RedisState::new(&redis.url()).unwrap(),
    ];
    // 5 at once, then one a minute: 40 racing checks from two instances let exactly 5 in.
    let cell = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for n in 0..40 {
        let state = instances[n % 2].clone();
        tasks.push(tokio::spawn(async move {
            state.check_rate("login:192.0.2.1", cell, 5).await.unwrap()
        }));
    }
    let mut allowed = 0;
    let mut remaining = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(left) => {
                allowed += 1;
                remaining.push(left);
            }
            Err(wait) => assert!(wait > Duration::from_secs(50) && wait <= cell, "{wait:?}"),
        }
    }
    assert_eq!(allowed, 5);
    remaining.sort_unstable();
    assert_eq!(remaining, vec![0, 1, 2, 3, 4]);
    // Another key has its own bucket.
    assert_eq!(
        instances[0]
            .check_rate("login:192.0.2.2", cell, 5)
            .await
            .unwrap(),
        Ok(4)
    );
}

#[tokio::test]
async fn an_outage_fails_fast_and_recovery_is_automatic() {
    let mut redis = RedisServer::start();
    let state = RedisState::new(&redis.url()).unwrap();
    state.ping().await.unwrap();
    redis.stop();
    let started = std::time::Instant::now();
    let err = state
        .check_rate("x:192.0.2.1", Duration::from_secs(1), 1)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("Redis at 127.0.0.1"), "{err}");
    redis.start_again();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match state.ping().await {
            Ok(()) => break,
            Err(err) if std::time::Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("no recovery after the restart: {err}"),
        }
    }
    assert_eq!(
        state
            .check_rate("x:192.0.2.1", Duration::from_secs(1), 1)
            .await
            .unwrap(),
        Ok(0)
    );
}

#[tokio::test]
async fn a_password_in_the_url_stays_out_of_errors() {
    let redis = RedisServer::start();
    let url = redis.url().replace("redis://", "redis://:hunter2-secret@");
    // The server has no password: AUTH fails, and the error must not repeat it.
    let state = RedisState::new(&url).unwrap();
    let err = state.ping().await.unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!format!("{state:?}").contains("hunter2"));
    let bad = palisade_guard::redis_state::check_url("redis://:hunter2@[::1");
    assert!(!bad.unwrap_err().contains("hunter2"));
    let _ = Arc::new(state);
}
