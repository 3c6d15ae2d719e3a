//! Several replicas of the real binary on one PostgreSQL, as Extend scales
//! the handler out: events redelivered across replicas (Kafka Connect
//! retries a batch as a whole, to whichever replica it reaches), replicas
//! killed with SIGKILL and restarted or drained with `wal drain`, GDPR
//! deletions through one replica while another holds updates of that user.
//! The oracle: every event id acknowledged anywhere counts exactly once; no
//! row of a deleted user remains.
//!
//! `CLUSTER_SECS` sets the length of the load (default 6 s; the long run in
//! docs/RELIABILITY.md uses 120).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use challenge_event_handler::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient;
use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use common::*;
use sqlx::PgPool;
use tonic::transport::Channel;

/// One increment goal that never completes, so every login shows.
const COUNTING: &str = r#"{"challenges":[{"challengeId":"c","name":"C","goals":[
 {"goalId":"logins","name":"l","type":"increment","eventSource":"login",
  "requirement":{"operator":">=","targetValue":2000000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}}]}]}"#;

const EXIT: Duration = Duration::from_secs(60);

/// A replica that flushes every 50 ms.
fn fast(db: &str, dir: &std::path::Path) -> Binary {
    Binary::spawn_with_config(db, dir, COUNTING, &[("FLUSH_INTERVAL", "50ms")])
}

/// A replica that never flushes on its own: what it acknowledges stays in
/// its WAL until it stops (or is drained).
fn holding(db: &str, dir: &std::path::Path) -> Binary {
    Binary::spawn_with_config(db, dir, COUNTING, &HOLDING)
}

async fn send_login(channel: &Channel, user: &str, id: &str) -> bool {
    UserAuthenticationUserLoggedInServiceClient::new(channel.clone())
        .on_message(login(user, id, ""))
        .await
        .is_ok()
}

async fn send_deletion(channel: &Channel, user: &str, id: &str) {
    DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(channel.clone())
        .on_message(gdpr_deletion(user, id))
        .await
        .expect("deletion acknowledged");
}

async fn rows_of(db: &PgPool, user: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM user_goal_progress WHERE user_id = $1")
        .bind(user)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Waits until a replica applied a deletion of `user` (its tombstone).
async fn wait_for_tombstone(db: &PgPool, user: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM challenge_event_handler_tombstones WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(db)
    .await
    .unwrap()
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no replica applied the deletion of {user}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to `secs`) until `user`'s login count is `n`; `what` says what
/// did not happen otherwise.
async fn wait_counted(db: &PgPool, tag: &str, user: &str, n: i64, secs: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while counted(db, tag).await.get(user) != Some(&n) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two replicas flushing every 50 ms on `db`, healthy, with their channels.
async fn two_fast(db: &str, dirs: [&std::path::Path; 2]) -> [(Binary, Channel); 2] {
    let (mut a, mut b) = (fast(db, dirs[0]), fast(db, dirs[1]));
    a.wait_healthy().await;
    b.wait_healthy().await;
    let (ca, cb) = (a.channel().await, b.channel().await);
    [(a, ca), (b, cb)]
}

/// Redelivers `ids` (applied through A) to B, stops B and then A: `tag`'s
/// user still counts `n`, and B says the ledger left them out.
async fn redeliver_to_b_counts_nothing(
    db: &PgPool,
    tag: &str,
    ids: &[String],
    (a, b): (&mut Binary, &mut Binary),
    cb: &Channel,
    n: i64,
) {
    let user = format!("{tag}-user");
    for id in ids {
        assert!(send_login(cb, &user, id).await);
    }
    b.sigterm();
    assert_eq!(b.wait_exit(EXIT).await, 0, "{}", b.log_text());
    assert_eq!(counted(db, tag).await.get(&user), Some(&n));
    assert!(
        b.log_text().contains("applied by another flush"),
        "{}",
        b.log_text()
    );
    a.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0);
}

/// `wal drain` of `dir` against `db`; (exit code, stdout, stderr).
fn drain(dir: &std::path::Path, db: &str) -> (i32, String, String) {
    drain_within(dir, db, "60s")
}

/// `wal drain --timeout <timeout>`.
fn drain_within(dir: &std::path::Path, db: &str, timeout: &str) -> (i32, String, String) {
    let config = dir.join("challenges.json");
    let wal = dir.join("wal");
    cli(
        dir,
        &["wal", "drain", "--timeout", timeout],
        &[
            ("DATABASE_URL", db),
            ("AB_NAMESPACE", NAMESPACE),
            ("CONFIG_PATH", config.to_str().unwrap()),
            ("WAL_DIR", wal.to_str().unwrap()),
            ("TABLE_OWNER", "handler"),
            ("LOG_LEVEL", "info"),
        ],
    )
}

/// The replicas' gRPC channels; None while a replica is down.
type Replicas = Arc<RwLock<Vec<Option<Channel>>>>;

/// One producer (a Kafka partition): its own users, unique event ids, each
/// event sent to one replica, a third of them also to a second replica at
/// the same time and a sixth again later (the redelivery of a batch). An
/// event a replica could not take is sent to the next one until one
/// acknowledges it. Returns user → distinct events acknowledged.
async fn produce(
    replicas: Replicas,
    tag: String,
    producer: usize,
    stop: Arc<AtomicBool>,
    redelivered: Arc<AtomicU64>,
) -> BTreeMap<String, i64> {
    let mut acknowledged = BTreeMap::new();
    let mut n: usize = 0;
    let mut later: Vec<(String, String, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let user = format!("{tag}-{producer}-{}", n % 5);
        let id = format!("{tag}-{producer}-{n}");
        let (first, second) = ((producer + n) % 3, (producer + n + 1 + n % 2) % 3);
        let twice = n.is_multiple_of(3);
        let channels: Vec<Option<Channel>> = replicas.read().unwrap().clone();
        let mut ok = false;
        if twice {
            if let (Some(a), Some(b)) = (&channels[first], &channels[second]) {
                let (x, y) = tokio::join!(send_login(a, &user, &id), send_login(b, &user, &id));
                ok = x || y;
                redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Until one replica acknowledges it (retried from the next one).
        let mut attempt = 0;
        while !ok {
            let r = (first + attempt) % 3;
            if let Some(channel) = &channels[r] {
                ok = send_login(channel, &user, &id).await;
            }
            attempt += 1;
            if attempt.is_multiple_of(3) && !ok {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(attempt < 300, "no replica acknowledged {id}");
        }
        *acknowledged.entry(user.clone()).or_insert(0) += 1;
        if n % 6 == 1 {
            later.push((user, id, second));
        }
        // The redelivery of an earlier batch, to another replica.
        if later.len() >= 4 {
            for (user, id, r) in later.drain(..) {
                if let Some(channel) = &channels[r] {
                    send_login(channel, &user, &id).await;
                    redelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    acknowledged
}

#[tokio::test]
async fn three_replicas_redelivery_kill_9_and_wal_drain_count_every_event_once() {
    let secs: u64 = std::env::var("CLUSTER_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A and B flush every 50 ms; C holds everything until it is killed.
    let mut a = fast(&db.url, dirs[0].path());
    let mut b = fast(&db.url, dirs[1].path());
    let mut c = holding(&db.url, dirs[2].path());
    for r in [&mut a, &mut b, &mut c] {
        r.wait_healthy().await;
    }
    let replicas: Replicas = Arc::new(RwLock::new(vec![
        Some(a.channel().await),
        Some(b.channel().await),
        Some(c.channel().await),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let redelivered = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..6)
        .map(|p| {
            tokio::spawn(produce(
                replicas.clone(),
                "cl".into(),
                p,
                stop.clone(),
                redelivered.clone(),
            ))
        })
        .collect();

    // Users deleted while C holds updates of theirs: 3 logins through C and
    // one through A, then the deletion through A (and again through B).
    let doomed: Vec<String> = (0..4).map(|i| format!("doomed-{i}")).collect();
    let channels = replicas.read().unwrap().clone();
    for user in &doomed {
        for i in 0..3 {
            assert!(send_login(channels[2].as_ref().unwrap(), user, &format!("{user}-c{i}")).await);
        }
        assert!(send_login(channels[0].as_ref().unwrap(), user, &format!("{user}-a")).await);
    }

    // B is killed mid-load and comes back on its volume.
    tokio::time::sleep(Duration::from_secs(secs) / 3).await;
    replicas.write().unwrap()[1] = None;
    b.kill9();
    for user in &doomed {
        send_deletion(channels[0].as_ref().unwrap(), user, &format!("{user}-del")).await;
    }
    tokio::time::sleep(Duration::from_secs(secs) / 3).await;
    let mut b = fast(&db.url, dirs[1].path());
    b.wait_healthy().await;
    let b_channel = b.channel().await;
    for user in &doomed {
        // The deletion redelivered to another replica.
        send_deletion(&b_channel, user, &format!("{user}-del")).await;
    }
    replicas.write().unwrap()[1] = Some(b_channel);
    tokio::time::sleep(Duration::from_secs(secs) / 3).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for p in producers {
        for (user, n) in p.await.unwrap() {
            *expected.entry(user).or_insert(0) += n;
        }
    }

    // C is lost with everything it acknowledged (a node gone, the replica
    // scaled away); A and B stop gracefully, with nothing left behind.
    c.kill9();
    a.sigterm();
    b.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0, "{}", a.log_text());
    assert_eq!(b.wait_exit(EXIT).await, 0, "{}", b.log_text());

    // C's volume, drained.
    let (code, out, err) = drain(dirs[2].path(), &db.url);
    assert_eq!(code, 0, "wal drain failed:\n{out}\n{err}");
    assert!(out.contains("the WAL is empty"), "{out}\n{err}");
    assert!(
        err.contains("applied by another flush") || err.contains("gdpr_pending_updates_dropped"),
        "C held redelivered events and updates of deleted users:\n{err}"
    );
    assert!(err.contains("gdpr_pending_updates_dropped"), "{err}");
    let after_first = counted(&pool, "cl").await;
    assert_eq!(
        after_first,
        expected,
        "every acknowledged event counts once ({} sent twice)",
        redelivered.load(Ordering::Relaxed)
    );
    for user in &doomed {
        assert_eq!(rows_of(&pool, user).await, 0, "{user} was deleted");
    }

    // A second drain finds nothing and changes nothing.
    let (code, out, err) = drain(dirs[2].path(), &db.url);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(": 0 records replayed"), "{out}\n{err}");
    assert_eq!(counted(&pool, "cl").await, expected);
    println!(
        "cluster: {} events acknowledged over {} users, {} sent to a second replica; \
         0 lost, 0 doubled; {} deleted users without rows",
        expected.values().sum::<i64>(),
        expected.len(),
        redelivered.load(Ordering::Relaxed),
        doomed.len()
    );
}

#[tokio::test]
async fn the_same_events_at_two_replicas_before_either_flushes_count_once() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = holding(&db.url, da.path());
    let mut b = holding(&db.url, db_dir.path());
    a.wait_healthy().await;
    b.wait_healthy().await;
    let (ca, cb) = (a.channel().await, b.channel().await);
    let mut expected = BTreeMap::new();
    for u in 0..20 {
        let user = format!("tw-{u}");
        for i in 0..5 {
            let id = format!("{user}-{i}");
            let (x, y) = tokio::join!(send_login(&ca, &user, &id), send_login(&cb, &user, &id));
            assert!(x && y);
        }
        expected.insert(user, 5);
    }
    // Both hold all of it; both stop at once, so their final flushes race.
    a.sigterm();
    b.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0, "{}", a.log_text());
    assert_eq!(b.wait_exit(EXIT).await, 0, "{}", b.log_text());
    assert_eq!(counted(&pool, "tw").await, expected);
    let logs = format!("{}\n{}", a.log_text(), b.log_text());
    assert!(logs.contains("applied by another flush"), "{logs}");
}

#[tokio::test]
async fn an_event_flushed_by_one_replica_and_redelivered_to_another_counts_once() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [(mut a, ca), (mut b, cb)] = two_fast(&db.url, [da.path(), db_dir.path()]).await;
    let ids: Vec<String> = (0..10).map(|i| format!("rd-{i}")).collect();
    for id in &ids {
        assert!(send_login(&ca, "rd-user", id).await);
    }
    // In the table through A before the redelivery reaches B.
    wait_counted(&pool, "rd", "rd-user", 10, 30, "A never flushed").await;
    redeliver_to_b_counts_nothing(&pool, "rd", &ids, (&mut a, &mut b), &cb, 10).await;
}

#[tokio::test]
async fn a_graceful_stop_drops_updates_of_a_user_another_replica_deleted() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = fast(&db.url, da.path());
    let mut c = holding(&db.url, dc.path());
    a.wait_healthy().await;
    c.wait_healthy().await;
    let (ca, cc) = (a.channel().await, c.channel().await);
    // C acknowledges logins of two users and holds them; A deletes one.
    for i in 0..3 {
        assert!(send_login(&cc, "gone", &format!("gone-c{i}")).await);
        assert!(send_login(&cc, "kept", &format!("kept-c{i}")).await);
    }
    assert!(send_login(&ca, "gone", "gone-a").await);
    send_deletion(&ca, "gone", "gone-del").await;
    wait_for_tombstone(&pool, "gone").await;
    // C's final flush writes the kept user's logins, not the deleted one's.
    c.sigterm();
    assert_eq!(c.wait_exit(EXIT).await, 0, "{}", c.log_text());
    assert_eq!(rows_of(&pool, "gone").await, 0);
    let kept: i32 = sqlx::query_scalar(
        "SELECT progress FROM user_goal_progress WHERE user_id = 'kept' AND goal_id = 'logins'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 3);
    let log = c.log_text();
    assert!(log.contains("gdpr_pending_updates_dropped"), "{log}");
    assert!(log.contains("updates=3"), "{log}");
    a.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0);
}

#[tokio::test]
async fn wal_drain_refuses_a_wal_a_running_replica_holds_and_a_foreign_instance_id() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = fast(&db.url, dir.path());
    a.wait_healthy().await;
    let (code, out, err) = drain(dir.path(), &db.url);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("is a service still running on it?"), "{err}");
    a.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0);

    // Its records belong to its own instance id: another is refused.
    let config = dir.path().join("challenges.json");
    let wal = dir.path().join("wal");
    let (code, _, err) = cli(
        dir.path(),
        &["wal", "drain", "--timeout", "10s"],
        &[
            ("DATABASE_URL", &db.url),
            ("AB_NAMESPACE", NAMESPACE),
            ("CONFIG_PATH", config.to_str().unwrap()),
            ("WAL_DIR", wal.to_str().unwrap()),
            ("INSTANCE_ID", "someone-else"),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("belongs to instance"), "{err}");
}

/// A replica whose node is lost comes back, under its INSTANCE_ID, on a new
/// empty volume before anyone drains the old one (deleting the claim lets the
/// StatefulSet make a new one). The new volume's records have a watermark of
/// their own: the old volume, drained afterwards, writes every update it
/// acknowledged, and the drain does not take the instance from the running
/// replica.
#[tokio::test]
async fn a_replica_back_on_a_new_volume_before_the_old_one_is_drained_loses_nothing() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let same_name = [("INSTANCE_ID", "challenge-event-handler-1")];
    let flushing_never = [
        same_name[0],
        ("FLUSH_INTERVAL", "1h"),
        ("BUFFER_MAX_KEYS", "100000000"),
    ];
    let mut old = Binary::spawn_with_config(&db.url, old_dir.path(), COUNTING, &flushing_never);
    old.wait_healthy().await;
    let channel = old.channel().await;
    for i in 0..5 {
        assert!(send_login(&channel, "lv", &format!("lv-old-{i}")).await);
    }
    // A player whose deletion then reaches the new volume.
    for i in 0..3 {
        assert!(send_login(&channel, "lg", &format!("lg-old-{i}")).await);
    }
    old.kill9();

    let flushing = [same_name[0], ("FLUSH_INTERVAL", "50ms")];
    let mut new = Binary::spawn_with_config(&db.url, new_dir.path(), COUNTING, &flushing);
    new.wait_healthy().await;
    let channel = new.channel().await;
    for i in 0..7 {
        assert!(send_login(&channel, "lv", &format!("lv-new-{i}")).await);
    }
    send_deletion(&channel, "lg", "lg-del").await;
    wait_for_progress(&pool, "lv", "logins", 7, Duration::from_secs(30)).await;

    let (code, out, err) = drain(old_dir.path(), &db.url);
    assert_eq!(code, 0, "wal drain failed:\n{out}\n{err}");
    assert!(out.contains("the WAL is empty"), "{out}\n{err}");
    assert_eq!(
        row(&pool, "lv", "logins").await.map(|r| r.progress),
        Some(12),
        "the old volume's 5 acknowledged logins were skipped:\n{out}\n{err}"
    );
    assert_eq!(
        rows_of(&pool, "lg").await,
        0,
        "the old volume wrote updates of a player the new one deleted:\n{err}"
    );
    // The replica on the new volume was not fenced by the drain.
    assert!(send_login(&channel, "lv", "lv-new-7").await);
    wait_for_progress(&pool, "lv", "logins", 13, Duration::from_secs(30)).await;
    new.sigterm();
    assert_eq!(new.wait_exit(EXIT).await, 0, "{}", new.log_text());
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT instance_id FROM challenge_event_handler_watermark")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "one watermark per volume: {rows:?}");
    for id in &rows {
        assert!(id.starts_with("challenge-event-handler-1@"), "{id}");
    }
}

/// An INSTANCE_ID of 100 characters (the longest allowed), on tables an
/// older build made: the watermark row's id, the name and the volume's id,
/// is cut to the 100 characters the tables hold (they are never altered: a
/// replica of the older build mid-rollout has statements prepared on them).
#[tokio::test]
async fn an_instance_id_of_100_characters_fits_tables_an_older_build_made() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE challenge_event_handler_watermark (
             instance_id VARCHAR(100) PRIMARY KEY, epoch BIGINT NOT NULL,
             applied_seq BIGINT NOT NULL DEFAULT 0, updated_at TIMESTAMP NOT NULL DEFAULT NOW());
         INSERT INTO challenge_event_handler_watermark VALUES ('an-older-volume', 3, 41, NOW());",
    )
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = "n".repeat(100);
    let env = [("INSTANCE_ID", name.as_str()), ("FLUSH_INTERVAL", "50ms")];
    let mut replica = Binary::spawn_with_config(&db.url, dir.path(), COUNTING, &env);
    replica.wait_healthy().await;
    let channel = replica.channel().await;
    assert!(send_login(&channel, "wide", "wide-1").await);
    send_deletion(&channel, "gone", "gone-del").await;
    wait_for_progress(&pool, "wide", "logins", 1, Duration::from_secs(30)).await;
    wait_for_tombstone(&pool, "gone").await;
    replica.sigterm();
    assert_eq!(replica.wait_exit(EXIT).await, 0, "{}", replica.log_text());
    let ids: Vec<(String, i64)> = sqlx::query_as(
        "SELECT instance_id, applied_seq FROM challenge_event_handler_watermark ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ids[0], ("an-older-volume".to_owned(), 41));
    assert_eq!(ids[1].0.len(), 100, "{:?}", ids[1]);
    assert!(ids[1].0.starts_with(&format!("{}@", "n".repeat(87))));
    assert!(ids[1].1 >= 2);
    let width: i32 = sqlx::query_scalar(
        "SELECT character_maximum_length FROM information_schema.columns
         WHERE table_name = 'challenge_event_handler_watermark' AND column_name = 'instance_id'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(width, 100, "the handler's tables are not altered");
}

/// A GDPR deletion delivered late (timestamped ten minutes before it reached
/// the handler) to one replica, while another holds M5 updates of that
/// player acknowledged before the deletion arrived. An M5 update's time is
/// its acknowledgement, so the tombstone must hold from the deletion's
/// arrival, not from its older timestamp: the holder's stop writes none of
/// them (the table is the handler's here, so an update would bring the
/// player's rows back).
#[tokio::test]
async fn a_late_deletion_drops_m5_updates_another_replica_acknowledged_before_it_arrived() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m5 = m5_config();
    let mut a = Binary::spawn_with_config(&db.url, da.path(), &m5, &[("FLUSH_INTERVAL", "50ms")]);
    let mut c = Binary::spawn_with_config(&db.url, dc.path(), &m5, &HOLDING);
    a.wait_healthy().await;
    c.wait_healthy().await;
    let (ca, cc) = (a.channel().await, c.channel().await);
    assert!(send_login(&cc, "late", "late-c").await);
    assert!(send_login(&cc, "kept", "kept-c").await);
    let ten_minutes_ago = (chrono::Utc::now() - chrono::Duration::minutes(10))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(ca.clone())
        .on_message(challenge_event_handler::cli::send::gdpr_deletion_message(
            NAMESPACE,
            "late",
            "late-del",
            &ten_minutes_ago,
        ))
        .await
        .expect("deletion acknowledged");
    wait_for_tombstone(&pool, "late").await;
    c.sigterm();
    assert_eq!(c.wait_exit(EXIT).await, 0, "{}", c.log_text());
    assert_eq!(
        rows_of(&pool, "late").await,
        0,
        "updates acknowledged before the deletion arrived were written after it"
    );
    assert!(rows_of(&pool, "kept").await > 0);
    let log = c.log_text();
    assert!(log.contains("gdpr_pending_updates_dropped"), "{log}");
    a.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0);
}

/// The ledger's state row deleted by hand while replicas run: flushes fail
/// (loudly) until a replica's upkeep writes the row again from the ledger
/// tables still in the schema. Nothing acknowledged is lost, and the ids
/// applied before are still known: a redelivery of them to another replica
/// counts nothing.
#[tokio::test]
async fn a_deleted_ledger_state_row_is_rebuilt_and_forgets_no_event_id() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [(mut a, ca), (mut b, cb)] = two_fast(&db.url, [da.path(), db_dir.path()]).await;
    let before: Vec<String> = (0..5).map(|i| format!("lr-{i}")).collect();
    for id in &before {
        assert!(send_login(&ca, "lr-user", id).await);
    }
    wait_counted(&pool, "lr", "lr-user", 5, 30, "A never flushed").await;
    let ledger = || async {
        sqlx::query_scalar::<_, Vec<String>>(
            "SELECT tables FROM challenge_event_handler_ledger WHERE id = 1",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    let tables = ledger().await.expect("a ledger");
    sqlx::query("DELETE FROM challenge_event_handler_ledger")
        .execute(&pool)
        .await
        .unwrap();
    for i in 5..10 {
        assert!(send_login(&ca, "lr-user", &format!("lr-{i}")).await);
    }
    // The upkeep runs every 15 s on each replica; the flushes' backoff
    // reaches 30 s at the most.
    wait_counted(&pool, "lr", "lr-user", 10, 60, "flushes never resumed").await;
    // The upkeep logs the repair just after its commit, which the other
    // replica's flush can follow at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = format!("{}{}", a.log_text(), b.log_text());
        if logs.contains("rebuilt it from the ledger tables in the schema") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same tables: no id applied before is forgotten.
    assert_eq!(ledger().await, Some(tables));
    redeliver_to_b_counts_nothing(&pool, "lr", &before, (&mut a, &mut b), &cb, 10).await;
}

/// The upkeep on a 4 s LEDGER_WINDOW, round after round: a new ledger table
/// every quarter of the window, a table dropped once every id in it is older
/// than the window, the state row listing exactly the tables in the schema,
/// newest first. Then its repair of a deleted state row: it waits for the
/// cluster lock at most its `wait` (a flush holding it), adopts the tables
/// left once it gets it, and starts a new one when none is left.
#[tokio::test]
async fn the_upkeep_rotates_the_ledger_drops_what_expired_and_repairs_its_state_row() {
    use challenge_event_handler::store::cluster::{self, ClusterSettings};
    use challenge_event_handler::store::{Database, ProgressStore, Store, TableOwner};
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let store = Store::connect_lazy(
        &Database::Postgres(Box::new(db.url.parse().unwrap())),
        2,
        100,
    )
    .with_cluster(ClusterSettings {
        ledger_window: Some(Duration::from_secs(4)),
        ..Default::default()
    });
    store
        .prepare(Some(TableOwner::Handler), true)
        .await
        .expect("prepare");
    let Store::Postgres(pg) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let wait = Duration::from_millis(200);
    let listed = || async {
        sqlx::query_scalar::<_, Vec<String>>(
            "SELECT tables FROM challenge_event_handler_ledger WHERE id = 1",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    let in_schema = || async {
        let mut tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables
             WHERE tablename LIKE 'challenge\\_event\\_handler\\_events\\_%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        tables.sort_unstable_by(|a, b| b.cmp(a));
        tables
    };
    assert_eq!(listed().await.map(|t| t.len()), Some(1));

    let (mut rotated, mut dropped) = (0, 0);
    let start = std::time::Instant::now();
    // At least 7 s (a table every second, the first dropped after 5), and
    // until both are seen on a slow machine.
    while start.elapsed() < Duration::from_secs(7)
        || (rotated < 4 || dropped < 1) && start.elapsed() < Duration::from_secs(60)
    {
        let done = pg.upkeep(wait).await.expect("upkeep");
        rotated += usize::from(done.rotated);
        dropped += done.dropped.len();
        let tables = listed().await.expect("a state row");
        // Names end in the same number of digits: newest first is descending.
        assert_eq!(tables, in_schema().await);
        assert!(tables.len() <= 6, "{tables:?}");
        assert_eq!(done.tables, tables.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rotated >= 4, "{rotated} rotations in 60 s");
    assert!(dropped >= 1, "nothing dropped in 60 s");

    let before = listed().await.unwrap();
    sqlx::query("DELETE FROM challenge_event_handler_ledger")
        .execute(&pool)
        .await
        .unwrap();
    // A flush (here: this transaction) holds the cluster lock: the round
    // gives up after `wait`, without an error, and the row stays missing.
    let mut flush = pool.begin().await.unwrap();
    cluster::lock(&mut flush, true).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), pg.upkeep(wait))
        .await
        .expect("the repair waits for the lock at most `wait`")
        .expect("a busy lock is no error");
    assert_eq!(done.restored, None);
    assert_eq!(listed().await, None);
    flush.rollback().await.unwrap();
    let done = pg.upkeep(wait).await.expect("upkeep");
    assert_eq!(done.restored.as_ref(), Some(&before));
    assert_eq!(listed().await.expect("rebuilt")[..], in_schema().await[..]);

    // Nothing left to adopt: a new table.
    sqlx::query("DELETE FROM challenge_event_handler_ledger")
        .execute(&pool)
        .await
        .unwrap();
    for table in in_schema().await {
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let done = pg.upkeep(wait).await.expect("upkeep");
    assert_eq!(done.restored, Some(Vec::new()));
    let tables = listed().await.expect("a new ledger");
    assert_eq!(tables.len(), 1);
    assert_eq!(tables, in_schema().await);
}

/// TOMBSTONE_RETENTION: the upkeep removes tombstones applied longer ago
/// than the retention and keeps the rest, with or without the ledger.
#[tokio::test]
async fn the_upkeep_removes_tombstones_older_than_the_retention_and_keeps_the_rest() {
    use challenge_event_handler::store::cluster::ClusterSettings;
    use challenge_event_handler::store::{Database, ProgressStore, Store, TableOwner};
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    for ledger_window in [Some(Duration::from_secs(3600)), None] {
        let store = Store::connect_lazy(
            &Database::Postgres(Box::new(db.url.parse().unwrap())),
            2,
            100,
        )
        .with_cluster(ClusterSettings {
            ledger_window,
            tombstone_retention: Duration::from_secs(3600),
            ..Default::default()
        });
        store
            .prepare(Some(TableOwner::Handler), true)
            .await
            .expect("prepare");
        let Store::Postgres(pg) = &store else {
            unreachable!("a PostgreSQL store")
        };
        sqlx::query(
            "INSERT INTO challenge_event_handler_tombstones
                 (namespace, user_id, instance_id, deleted_at, applied_at)
             VALUES ('ns', 'old', 'i', now() - interval '3 hours', now() - interval '2 hours'),
                    ('ns', 'edge', 'i', now() - interval '2 hours', now() - interval '59 minutes'),
                    ('ns', 'new', 'i', now(), now())",
        )
        .execute(&pool)
        .await
        .unwrap();
        let done = pg.upkeep(Duration::from_secs(2)).await.expect("upkeep");
        assert_eq!(done.tombstones_expired, 1, "{ledger_window:?}");
        let kept: Vec<String> =
            sqlx::query_scalar("DELETE FROM challenge_event_handler_tombstones RETURNING user_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let mut kept = kept;
        kept.sort();
        assert_eq!(kept, ["edge", "new"], "{ledger_window:?}");
    }
}

/// `wal drain` that cannot reach the database gives up after `--timeout`
/// with exit 1, the WAL untouched (a later drain writes everything); a WAL
/// directory that records no instance id, with no INSTANCE_ID given, is
/// refused before anything is read.
#[tokio::test]
async fn wal_drain_gives_up_with_exit_1_leaving_the_wal_and_refuses_a_wal_of_no_known_instance() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = holding(&db.url, dir.path());
    a.wait_healthy().await;
    let channel = a.channel().await;
    for i in 0..4 {
        assert!(send_login(&channel, "dg-user", &format!("dg-{i}")).await);
    }
    a.kill9();
    a.wait_exit(EXIT).await;

    // What an operator looks at before draining: the WAL against the
    // watermark row of its `name@volume` id in PostgreSQL.
    let inspect = || wal_inspect(dir.path(), &db.url);
    let report = inspect();
    assert_eq!(report["records"], 4, "{report}");
    assert_eq!(report["pending_above_watermark"], 4, "{report}");
    assert_eq!(report["watermark"]["Ok"]["applied_seq"], 0, "{report}");
    assert!(
        report["instance_id"].as_str().unwrap().contains('@'),
        "{report}"
    );

    let unreachable = "postgres://postgres@127.0.0.1:1/none";
    let (code, out, err) = drain_within(dir.path(), unreachable, "3s");
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("gave up after 3s"), "{err}");
    assert!(err.contains("the WAL keeps them"), "{err}");
    assert!(!err.contains("stopping with acknowledged updates"), "{err}");
    assert!(counted(&pool, "dg").await.is_empty());
    let (code, out, err) = drain(dir.path(), &db.url);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(counted(&pool, "dg").await.get("dg-user"), Some(&4));
    let report = inspect();
    assert_eq!(report["records"], 0, "{report}");
    assert_eq!(report["pending_above_watermark"], 0, "{report}");

    // A directory with records and no recorded id.
    let mut b = holding(&db.url, dir.path());
    b.wait_healthy().await;
    assert!(send_login(&b.channel().await, "dg-user", "dg-9").await);
    b.kill9();
    b.wait_exit(EXIT).await;
    let name = std::fs::read_to_string(dir.path().join("wal/instance_id")).unwrap();
    std::fs::remove_file(dir.path().join("wal/instance_id")).unwrap();
    let (code, out, err) = drain(dir.path(), &db.url);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("records no instance id"), "{err}");
    assert_eq!(counted(&pool, "dg").await.get("dg-user"), Some(&4));
    // As the message says: with INSTANCE_ID set to the name it ran with, the
    // drain replays against that name's watermark on this volume
    // (`name@volume`, the volume's id still recorded).
    let wal = dir.path().join("wal");
    let config = dir.path().join("challenges.json");
    let (code, out, err) = cli(
        dir.path(),
        &["wal", "drain", "--timeout", "60s"],
        &[
            ("DATABASE_URL", &db.url),
            ("AB_NAMESPACE", NAMESPACE),
            ("CONFIG_PATH", config.to_str().unwrap()),
            ("WAL_DIR", wal.to_str().unwrap()),
            ("TABLE_OWNER", "handler"),
            ("INSTANCE_ID", name.trim()),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(counted(&pool, "dg").await.get("dg-user"), Some(&5));
}

/// NO_LEDGER (one replica): no ledger tables at all, the upkeep does not
/// fail for the want of them, and a redelivery to the same replica still
/// counts once (its WAL's dedup marks). DEDUP_MAX_MARKS reached: the oldest
/// marks go early, counted in `dedup_evicted_early_total` (the alert
/// DedupMarksEvictedEarly reads it), and a redelivery of a forgotten id then
/// counts again, as the README warns.
#[tokio::test]
async fn with_no_ledger_one_replica_dedups_through_its_wal_and_counts_marks_evicted_early() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Binary::spawn_with_config(
        &db.url,
        dir.path(),
        COUNTING,
        &[
            ("FLUSH_INTERVAL", "50ms"),
            ("NO_LEDGER", "1"),
            // Marks in buckets of a second; at most 10 of them.
            ("DEDUP_WINDOW", "10s"),
            ("DEDUP_MAX_MARKS", "10"),
        ],
    );
    a.wait_healthy().await;
    let channel = a.channel().await;
    for i in 0..30 {
        assert!(send_login(&channel, "nl-user", &format!("nl-{i}")).await);
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    // The newest ids are remembered; the first were evicted early.
    assert!(send_login(&channel, "nl-user", "nl-29").await);
    wait_counted(
        &pool,
        "nl",
        "nl-user",
        30,
        30,
        "the logins never reached the table",
    )
    .await;
    let metrics = http_get(a.http_addr(), "/metrics").await.1;
    let evicted = metric(
        &metrics,
        "challenge_event_handler_dedup_evicted_early_total",
    );
    assert!(evicted >= 10.0, "{evicted} marks evicted early");
    assert!(send_login(&channel, "nl-user", "nl-0").await);
    wait_counted(
        &pool,
        "nl",
        "nl-user",
        31,
        30,
        "a forgotten id counted again",
    )
    .await;

    a.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0, "{}", a.log_text());
    let ledger_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables
         WHERE tablename LIKE 'challenge\\_event\\_handler\\_events\\_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ledger_tables, 0);
    assert!(
        !a.log_text().contains("cluster upkeep failed"),
        "{}",
        a.log_text()
    );
}

/// The keep side of TOMBSTONE_SKEW: an update another replica acknowledged
/// later than the deletion plus the skew is the player's new progress (they
/// came back), written whatever the tombstone says; one inside the skew is
/// dropped with the deleted progress.
#[tokio::test]
async fn an_update_later_than_a_deletion_plus_the_skew_is_written_on_another_replica() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let skew = [("FLUSH_INTERVAL", "50ms"), ("TOMBSTONE_SKEW", "1s")];
    let mut a = Binary::spawn_with_config(&db.url, da.path(), COUNTING, &skew);
    let mut c = Binary::spawn_with_config(
        &db.url,
        dc.path(),
        COUNTING,
        &[
            ("FLUSH_INTERVAL", "1h"),
            ("BUFFER_MAX_KEYS", "100000000"),
            ("TOMBSTONE_SKEW", "1s"),
        ],
    );
    a.wait_healthy().await;
    c.wait_healthy().await;
    let (ca, cc) = (a.channel().await, c.channel().await);
    // Both players log in on A; A writes them.
    assert!(send_login(&ca, "sk-back", "sk-back-1").await);
    assert!(send_login(&ca, "sk-gone", "sk-gone-1").await);
    wait_counted(&pool, "sk", "sk-back", 1, 30, "A never flushed").await;
    wait_counted(&pool, "sk", "sk-gone", 1, 30, "A never flushed").await;
    // Deleted through A.
    send_deletion(&ca, "sk-back", "sk-back-del").await;
    send_deletion(&ca, "sk-gone", "sk-gone-del").await;
    wait_for_tombstone(&pool, "sk-back").await;
    wait_for_tombstone(&pool, "sk-gone").await;
    // On C: one login at the deletion's own time (within the skew), one
    // after the skew.
    let deleted_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT deleted_at FROM challenge_event_handler_tombstones WHERE user_id = 'sk-gone'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let within = deleted_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(UserAuthenticationUserLoggedInServiceClient::new(cc.clone())
        .on_message(login("sk-gone", "sk-gone-2", &within))
        .await
        .is_ok());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(send_login(&cc, "sk-back", "sk-back-2").await);
    c.sigterm();
    assert_eq!(c.wait_exit(EXIT).await, 0, "{}", c.log_text());
    assert_eq!(rows_of(&pool, "sk-gone").await, 0, "{}", c.log_text());
    assert_eq!(
        counted(&pool, "sk").await.get("sk-back"),
        Some(&1),
        "the player who came back after the deletion: {}",
        c.log_text()
    );
    a.sigterm();
    assert_eq!(a.wait_exit(EXIT).await, 0);
}
