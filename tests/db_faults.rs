//! Database faults under load: PostgreSQL stopped the hard way in the middle
//! of flushes, and PostgreSQL unreachable for a long stretch. Concurrent
//! clients send logins with unique event ids; every acknowledged login must be
//! counted exactly once, every refused one not at all.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use challenge_event_handler::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient;
use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use common::*;
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic::Code;

/// One increment goal that never completes, so every login shows.
const COUNTING: &str = r#"{"challenges":[{"challengeId":"c","name":"C","goals":[
 {"goalId":"logins","name":"l","type":"increment","eventSource":"login",
  "requirement":{"operator":">=","targetValue":2000000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}}]}]}"#;

const CLIENTS: usize = 8;

#[derive(Default, Debug)]
struct Tally {
    /// user → logins acknowledged.
    acknowledged: BTreeMap<String, i64>,
    refused: u64,
    other_errors: Vec<String>,
}

/// Runs CLIENTS concurrent clients until `stop`; each sends logins for its own
/// user with unique ids. Returns what was acknowledged and refused.
async fn load(channel: Channel, tag: &str, stop: Arc<AtomicBool>) -> Tally {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (channel, stop) = (channel.clone(), stop.clone());
        let user = format!("{tag}-{c}");
        tasks.push(tokio::spawn(async move {
            let mut client = UserAuthenticationUserLoggedInServiceClient::new(channel);
            let (mut ok, mut refused, mut errors) = (0i64, 0u64, Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match client
                    .on_message(login(&user, &format!("{user}-{n}"), ""))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(s) if s.code() == Code::Unavailable => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => errors.push(format!("{s:?}")),
                }
            }
            (user, ok, refused, errors)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        let (user, ok, refused, errors) = task.await.unwrap();
        tally.acknowledged.insert(user, ok);
        tally.refused += refused;
        tally.other_errors.extend(errors);
    }
    tally
}

async fn wait_until_counted(db: &PgPool, tag: &str, expected: &BTreeMap<String, i64>) {
    let expected: BTreeMap<_, _> = expected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(u, n)| (u.clone(), *n))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = counted(db, tag).await;
        if seen == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged logins and rows differ:\nacknowledged {expected:?}\nin the table {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_stopped_the_hard_way_mid_flush_under_load_loses_nothing_and_doubles_nothing() {
    let cluster = pg::Cluster::start();
    let db = pg::TestDb::on(&cluster.admin_url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service =
        Binary::spawn_with_config(&db.url, dir.path(), COUNTING, &[("FLUSH_INTERVAL", "20ms")]);
    service.wait_healthy().await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(load(service.channel().await, "pk", stop.clone()));

    // Three outages, each begun at an arbitrary point of the 20 ms flush cycle.
    for pause_ms in [150u64, 370, 260] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        cluster.stop_immediately();
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.start_server();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = traffic.await.unwrap();
    assert!(tally.other_errors.is_empty(), "{:?}", tally.other_errors);
    let total: i64 = tally.acknowledged.values().sum();
    assert!(total > 100, "too little traffic: {total}");

    let pool = db.pool().await;
    wait_until_counted(&pool, "pk", &tally.acknowledged).await;
    // Evidence that the outages hit flushes: one failed (the server went away
    // mid-transaction), or one waited for a connection through an outage
    // (sqlx's pool waits up to 5 s for one, so a flush begun while the server
    // is down succeeds once it is back, after > 0.4 s; a flush of this load
    // otherwise takes milliseconds). Which of the two happens depends on where
    // in the flush cycle each outage begins.
    let (_, metrics) = http_get(service.http_addr(), "/metrics").await;
    let failed = metric(&metrics, "challenge_event_handler_flush_failures_total");
    let flushes = metric(
        &metrics,
        "challenge_event_handler_flush_duration_seconds_count",
    );
    let quick = metric(
        &metrics,
        "challenge_event_handler_flush_duration_seconds_bucket{le=\"0.4096\"}",
    );
    assert!(
        failed > 0.0 || flushes > quick,
        "no flush failed or waited through an outage ({failed} failed, {flushes} flushes, {quick} under 0.4 s): the outages missed\nthe service's log:\n{}",
        service.log_text()
    );
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    println!("db_faults: 3 immediate stops, {total} logins acknowledged, 0 lost, 0 doubled");
}

#[tokio::test]
async fn postgres_unreachable_for_a_long_outage_under_load_acks_until_the_wal_bound_then_drains() {
    let outage: u64 = std::env::var("OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let (db, proxy, _url, _dir, mut service) =
        behind_a_proxy(&[("FLUSH_INTERVAL", "100ms"), ("WAL_MAX_BYTES", "32KiB")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(load(service.channel().await, "lo", stop.clone()));

    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let (_, health) = http_get(service.http_addr(), "/healthz").await;
    proxy.set_down(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = traffic.await.unwrap();
    assert!(tally.other_errors.is_empty(), "{:?}", tally.other_errors);
    assert!(
        tally.refused > 0,
        "the WAL bound was never reached during a {outage} s outage"
    );
    assert!(health.contains(r#""ok":false"#), "{health}");

    let pool = db.pool().await;
    wait_until_counted(&pool, "lo", &tally.acknowledged).await;
    // The flush after the outage did not wait out its backoff (by then
    // 16-30 s): the probe saw the database answer.
    service
        .wait_for_log("the database answers again", Duration::from_secs(10))
        .await;
    let total: i64 = tally.acknowledged.values().sum();
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    println!(
        "db_faults: {outage} s outage, {total} logins acknowledged, {} refused with UNAVAILABLE, 0 lost, 0 doubled",
        tally.refused
    );
}

/// The value of a gauge in the service's exposition, 0 when absent.
async fn gauge(service: &Binary, name: &str) -> f64 {
    let (_, text) = http_get(service.http_addr(), "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The service with COUNTING and `env` on a new database behind a proxy the
/// test can cut, healthy; the database, the proxy, the URL the service uses
/// and its directory come along (the directory for a restart).
async fn behind_a_proxy(
    env: &[(&str, &str)],
) -> (pg::TestDb, proxy::Proxy, String, tempfile::TempDir, Binary) {
    let db = pg::TestDb::new().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&db.url).await).await;
    let url = proxy.url_for(&db.url);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn_with_config(&url, dir.path(), COUNTING, env);
    service.wait_healthy().await;
    (db, proxy, url, dir, service)
}

#[tokio::test]
async fn a_backlog_over_memory_max_keys_waits_in_the_wal_and_is_flushed_exactly_once_even_after_a_kill(
) {
    // CLIENTS players, one key each: three fit in memory.
    let env = [("FLUSH_INTERVAL", "100ms"), ("MEMORY_MAX_KEYS", "3")];
    let (db, proxy, url, dir, mut service) = behind_a_proxy(&env).await;
    // A player whose deletion will wait in the WAL only.
    let pool = db.pool().await;
    let mut logins = UserAuthenticationUserLoggedInServiceClient::new(service.channel().await);
    logins
        .on_message(login("gone-0", "gone-0-1", ""))
        .await
        .unwrap();
    wait_until_counted(&pool, "gone", &BTreeMap::from([("gone-0".to_owned(), 1)])).await;

    // An outage: everything acknowledged waits; past three players, in the WAL only.
    proxy.set_down(true);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(load(service.channel().await, "sp", stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gauge(&service, "challenge_event_handler_buffer_spilled").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the buffer never spilled:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut deletions = DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(
        service.channel().await,
    );
    deletions
        .on_message(gdpr_deletion("gone-0", "gone-gdpr"))
        .await
        .unwrap();
    assert_eq!(
        gauge(&service, "challenge_event_handler_gdpr_deletions_pending").await,
        1.0,
        "a deletion waiting in the WAL only is pending too"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let before_kill = traffic.await.unwrap();
    assert!(
        before_kill.other_errors.is_empty() && before_kill.refused == 0,
        "{before_kill:?}"
    );
    let buffered = gauge(&service, "challenge_event_handler_buffer_size").await;
    assert!(
        buffered <= 6.0,
        "{buffered} keys in memory with MEMORY_MAX_KEYS=3 (the buffer and a batch in doubt: 3 each)"
    );
    assert!(service
        .log_text()
        .contains("the backlog reached MEMORY_MAX_KEYS"));

    // Killed with the backlog spilled; the restart replays three players'
    // worth, flushes, and reads the rest back.
    service.kill9();
    let mut service = Binary::spawn_with_config(&url, dir.path(), COUNTING, &env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_down(false);
    service.wait_healthy().await;
    let log = service
        .wait_for_log("wal replayed", Duration::from_secs(10))
        .await;
    let replayed = log.lines().find(|l| l.contains("wal replayed")).unwrap();
    assert!(
        replayed.contains("waiting_in_wal=true") || replayed.contains(r#""waiting_in_wal":true"#),
        "the replay did not stop at the bound: {replayed}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(load(service.channel().await, "sq", stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let after_restart = traffic.await.unwrap();
    assert!(
        after_restart.other_errors.is_empty(),
        "{:?}",
        after_restart.other_errors
    );

    wait_until_counted(&pool, "sp", &before_kill.acknowledged).await;
    wait_until_counted(&pool, "sq", &after_restart.acknowledged).await;
    wait_until_counted(&pool, "gone", &BTreeMap::new()).await;
    assert_eq!(
        gauge(&service, "challenge_event_handler_gdpr_deletions_pending").await,
        0.0
    );
    assert_eq!(
        gauge(&service, "challenge_event_handler_buffer_spilled").await,
        0.0
    );
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    let total: i64 = before_kill.acknowledged.values().sum::<i64>()
        + after_restart.acknowledged.values().sum::<i64>();
    println!("db_faults: {total} logins acknowledged with MEMORY_MAX_KEYS=3 across an outage and a kill -9, 0 lost, 0 doubled");
}

#[tokio::test]
async fn a_long_outage_with_a_trickle_of_new_players_keeps_memory_within_twice_memory_max_keys() {
    let env = [("FLUSH_INTERVAL", "100ms"), ("MEMORY_MAX_KEYS", "3")];
    let (db, proxy, _url, _dir, mut service) = behind_a_proxy(&env).await;
    proxy.set_down(true);
    // One new player at a time, slower than the first retries: each retry
    // finds a few new keys, never a full buffer.
    let mut client = UserAuthenticationUserLoggedInServiceClient::new(service.channel().await);
    let mut acknowledged = BTreeMap::new();
    let mut most = 0.0f64;
    for n in 0..40 {
        let user = format!("tr-{n}");
        client
            .on_message(login(&user, &format!("{user}-1"), ""))
            .await
            .expect("acknowledged while the database is away");
        acknowledged.insert(user, 1);
        most = most.max(gauge(&service, "challenge_event_handler_buffer_size").await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        most <= 6.0,
        "{most} keys in memory for 40 players with MEMORY_MAX_KEYS=3 (the bound each for the buffer and a batch in doubt)"
    );
    assert_eq!(
        gauge(&service, "challenge_event_handler_buffer_spilled").await,
        1.0
    );
    proxy.set_down(false);
    wait_until_counted(&db.pool().await, "tr", &acknowledged).await;
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_connection_gone_silent_at_commit_costs_a_flush_timeout_not_a_flush_that_never_returns() {
    // The COMMIT of a flush is lost and every open connection goes silent
    // for good, none closed (a failover, a dropped NAT entry): without
    // FLUSH_TIMEOUT that flush waited for its reply forever, and without
    // PostgreSQL ending the abandoned transaction (idle in it, the
    // watermark row locked) every later flush waited on its locks. One
    // connection: the pool must close the silent one, not wait on it.
    let env = [
        ("FLUSH_INTERVAL", "100ms"),
        ("FLUSH_TIMEOUT", "2s"),
        ("DB_MAX_CONNECTIONS", "1"),
    ];
    let (db, proxy, _url, _dir, mut service) = behind_a_proxy(&env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(load(service.channel().await, "si", stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.silence_at_next_commit();

    service
        .wait_for_log(
            "no answer from the database within FLUSH_TIMEOUT (2s)",
            Duration::from_secs(20),
        )
        .await;
    assert!(proxy.silenced(), "the connections went silent at a COMMIT");
    service
        .wait_for_log("flushing recovered", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = traffic.await.unwrap();
    assert!(tally.other_errors.is_empty(), "{:?}", tally.other_errors);
    assert_eq!(tally.refused, 0, "the WAL had room: nothing refused");

    // The abandoned transaction had applied everything but its COMMIT:
    // PostgreSQL rolled it back, and its batch was written once, by a retry.
    let pool = db.pool().await;
    wait_until_counted(&pool, "si", &tally.acknowledged).await;
    assert!(gauge(&service, "challenge_event_handler_flush_timeouts_total").await >= 1.0);
    let total: i64 = tally.acknowledged.values().sum();
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    println!("db_faults: a COMMIT lost on a silent connection, {total} logins acknowledged, 0 lost, 0 doubled");
}

#[tokio::test]
async fn a_database_that_never_answers_at_start_up_keeps_the_service_not_ready_saying_why_until_it_does(
) {
    // The database accepts connections and never answers (a hung host, a
    // black-holed route): start-up must not wait on it for good, must say
    // so, must not serve, and must start once it answers.
    let db = pg::TestDb::new().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&db.url).await).await;
    proxy.silence_all(true);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn_with_config(
        &proxy.url_for(&db.url),
        dir.path(),
        COUNTING,
        &[("FLUSH_TIMEOUT", "2s"), ("FLUSH_INTERVAL", "100ms")],
    );
    let log = service
        .wait_for_log(
            "no answer from the database within FLUSH_TIMEOUT (2s)",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        log.contains("retrying until the database answers"),
        "the log does not say start-up keeps trying:\n{log}"
    );
    let http = service.logged_http_addr().expect("the logged HTTP address");
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(
        status, 503,
        "healthy on a database that never answered: {body}"
    );

    proxy.silence_all(false);
    service.wait_healthy().await;
    service
        .wait_for_log("database reachable", Duration::from_secs(10))
        .await;
    let mut client = UserAuthenticationUserLoggedInServiceClient::new(service.channel().await);
    for n in 0..3 {
        client
            .on_message(login("su-0", &format!("su-0-{n}"), ""))
            .await
            .expect("a login once the database answers");
    }
    let expected = BTreeMap::from([("su-0".to_owned(), 3i64)]);
    wait_until_counted(&db.pool().await, "su", &expected).await;
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    println!("db_faults: start-up on a silent database: not ready until it answered, then 3 logins counted once");
}

#[tokio::test]
async fn a_database_gone_silent_under_load_times_out_flushes_and_upkeep_then_both_recover() {
    // Every connection goes silent at once and new ones are silent too, for
    // longer than an upkeep round (UPKEEP_EVERY, 15 s) takes to come: the
    // flushes and the cluster's upkeep each give up after FLUSH_TIMEOUT, say
    // so, count it, and recover once the database answers; every
    // acknowledged login is counted once.
    let env = [("FLUSH_INTERVAL", "100ms"), ("FLUSH_TIMEOUT", "2s")];
    let (db, proxy, _url, _dir, mut service) = behind_a_proxy(&env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(load(service.channel().await, "sg", stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.silence_all(true);
    service
        .wait_for_log(
            "no answer from the database within FLUSH_TIMEOUT (2s)",
            Duration::from_secs(20),
        )
        .await;
    service
        .wait_for_log("cluster upkeep failed", Duration::from_secs(30))
        .await;
    assert!(gauge(&service, "challenge_event_handler_upkeep_failures_total").await >= 1.0);
    assert!(gauge(&service, "challenge_event_handler_flush_timeouts_total").await >= 1.0);

    proxy.silence_all(false);
    service
        .wait_for_log("flushing recovered", Duration::from_secs(60))
        .await;
    service
        .wait_for_log("cluster upkeep recovered", Duration::from_secs(40))
        .await;
    stop.store(true, Ordering::Relaxed);
    let tally = traffic.await.unwrap();
    assert!(tally.other_errors.is_empty(), "{:?}", tally.other_errors);
    assert_eq!(tally.refused, 0, "the WAL had room: nothing refused");
    let total: i64 = tally.acknowledged.values().sum();
    assert!(total > 100, "too little traffic: {total}");
    wait_until_counted(&db.pool().await, "sg", &tally.acknowledged).await;
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    println!("db_faults: every connection silent past an upkeep round, {total} logins acknowledged, 0 lost, 0 doubled");
}
