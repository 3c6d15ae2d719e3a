//! Faults injected at the dangerous instants of the data path (see
//! `src/failpoints.rs`), in the real binary built with `--features failpoints`.
//! Each: nothing acknowledged is lost, nothing is applied twice, and the
//! process does what an operator would expect.

#![cfg(feature = "failpoints")]

mod common;

use std::time::Duration;

use challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use common::*;
use tonic::Code;

const EXIT: Duration = Duration::from_secs(30);

/// Exit code of a process that aborted (SIGABRT), as `Binary::wait_exit` reports it.
const ABORTED: i32 = -1;

/// A fresh database and WAL directory, and the binary serving on them with `env`.
async fn serving_with(
    env: &[(&str, &str)],
) -> (pg::TestDb, sqlx::PgPool, tempfile::TempDir, Binary) {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn(&db.url, dir.path(), env);
    service.wait_healthy().await;
    (db, pool, dir, service)
}

/// A WAL fault injected at `failpoint` (its FAILPOINTS action): `user`'s
/// kills event `{user}-1` (3) is refused UNAVAILABLE, `more` runs on the
/// client, the service exits 1 logging `line`, and after a restart the
/// client's retry of the event counts exactly once, whether or not the
/// failed batch reached the disk.
async fn a_wal_fault_refuses_and_stops<F, Fut>(failpoint: &str, user: &str, line: &str, more: F)
where
    F: FnOnce(StatisticStatItemUpdatedServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (db, pool, dir, mut service) = serving_with(&[("FAILPOINTS", failpoint)]).await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(service.channel().await);
    let id = format!("{user}-1");
    let refused = client
        .on_message(stat(user, "kills", 0.0, 3.0, &id, ""))
        .await
        .expect_err("acknowledged although the WAL failed");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    more(client).await;
    assert_eq!(service.wait_exit(EXIT).await, 1, "{}", service.log_text());
    assert!(service.log_text().contains(line), "{}", service.log_text());
    restart_and_redeliver(&db.url, dir.path(), &pool, user, 3.0, &id).await;
}

#[tokio::test]
async fn an_fsync_error_is_never_followed_by_an_ok_and_stops_the_service() {
    a_wal_fault_refuses_and_stops(
        "wal-fsync=return",
        "fs",
        "WAL write or fsync failed",
        |mut client| async move {
            // Nothing after the failure is acknowledged either.
            if let Ok(reply) = client
                .on_message(stat("fs", "kills", 0.0, 1.0, "fs-2", ""))
                .await
            {
                panic!("acknowledged after an fsync failure: {reply:?}");
            }
        },
    )
    .await;
}

/// A panic in the WAL writer thread: nothing is acknowledged after it, and
/// the service stops (non-zero) instead of refusing every event while it
/// reports itself healthy; the restart applies the redelivery once.
#[tokio::test]
async fn a_panic_in_the_wal_writer_stops_the_service() {
    a_wal_fault_refuses_and_stops(
        "wal-fsync=panic",
        "wp",
        "the WAL writer thread panicked",
        |_| async {},
    )
    .await;
}

/// Restarts the service on `dir`, redelivers `user`'s kills event `id` (an
/// increment of `inc`) and checks it counted exactly once.
async fn restart_and_redeliver(
    db_url: &str,
    dir: &std::path::Path,
    pool: &sqlx::PgPool,
    user: &str,
    inc: f64,
    id: &str,
) {
    let mut again = Binary::spawn(db_url, dir, &[("FLUSH_INTERVAL", "50ms")]);
    again.wait_healthy().await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(again.channel().await);
    client
        .on_message(stat(user, "kills", 0.0, inc, id, ""))
        .await
        .unwrap();
    wait_for_progress(pool, user, "kills", inc as i32, Duration::from_secs(20)).await;
    // Give a second application time to show up, then look again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(row(pool, user, "kills").await.unwrap().progress, inc as i32);
}

#[tokio::test]
async fn a_crash_after_the_fsync_and_before_the_reply_counts_the_redelivered_event_once() {
    let (db, pool, dir, mut service) =
        serving_with(&[("FAILPOINTS", "wal-after-fsync=return")]).await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(service.channel().await);
    client
        .on_message(stat("af", "kills", 0.0, 4.0, "af-1", ""))
        .await
        .expect_err("the process died before answering");
    assert_eq!(service.wait_exit(EXIT).await, ABORTED);

    // The durable-but-unanswered event is replayed; its redelivery is a duplicate.
    restart_and_redeliver(&db.url, dir.path(), &pool, "af", 4.0, "af-1").await;
}

#[tokio::test]
async fn a_crash_after_saving_marks_never_turns_the_retry_of_an_unacknowledged_event_into_a_duplicate(
) {
    let (db, pool, dir, mut service) = serving_with(&[
        ("FLUSH_INTERVAL", "30ms"),
        ("FAILPOINTS", "wal-marks-saved=return"),
    ])
    .await;
    // Callers keep sending until a group commit that truncates and holds
    // appends of its own aborts the process after saving marks: the appends'
    // frame is not durable, so their marks must not be either.
    let channel = service.channel().await;
    let callers: Vec<_> = (0..8)
        .map(|c| {
            let mut client = StatisticStatItemUpdatedServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let (mut acknowledged, mut failed) = (0, Vec::new());
                for i in 0.. {
                    let id = format!("ms-{c}-{i}");
                    match client
                        .on_message(stat(&format!("ms-{c}"), "kills", 0.0, 1.0, &id, ""))
                        .await
                    {
                        Ok(_) => acknowledged += 1,
                        Err(_) => {
                            failed.push(id);
                            break;
                        }
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for caller in callers {
        outcomes.push(caller.await.unwrap());
    }
    assert_eq!(service.wait_exit(EXIT).await, ABORTED);

    // Every call that got no answer is retried once; each must count once.
    let mut again = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    again.wait_healthy().await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(again.channel().await);
    for (c, (acknowledged, failed)) in outcomes.iter().enumerate() {
        for id in failed {
            client
                .on_message(stat(&format!("ms-{c}"), "kills", 0.0, 1.0, id, ""))
                .await
                .unwrap();
        }
        let expected = acknowledged + failed.len() as i32;
        wait_for_progress(
            &pool,
            &format!("ms-{c}"),
            "kills",
            expected,
            Duration::from_secs(20),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (c, (acknowledged, failed)) in outcomes.iter().enumerate() {
        let expected = acknowledged + failed.len() as i32;
        assert_eq!(
            row(&pool, &format!("ms-{c}"), "kills")
                .await
                .unwrap()
                .progress,
            expected,
            "caller {c}"
        );
    }
}

#[tokio::test]
async fn a_statement_failing_mid_flush_rolls_back_and_the_retry_applies_everything_once() {
    let (_db, pool, _dir, mut service) = serving_with(&[
        ("FLUSH_INTERVAL", "100ms"),
        ("FAILPOINTS", "flush-between-statements=2*return"),
    ])
    .await;
    let oracle = send_acknowledged(&service, 10, "fb").await;
    wait_for_oracle(&pool, "fb", &oracle).await;
    let log = service
        .wait_for_log("flushing recovered", Duration::from_secs(10))
        .await;
    assert!(
        log.contains("flush failed; acknowledged updates stay in the WAL"),
        "{log}"
    );
    service.sigterm();
    assert_eq!(service.wait_exit(EXIT).await, 0);
    assert_eq!(progress_of(&pool, "fb").await, oracle);
}

#[tokio::test]
async fn a_panic_in_the_flush_loop_stops_the_service_and_the_restart_applies_everything() {
    let (db, pool, dir, mut service) = serving_with(&[
        ("FLUSH_INTERVAL", "100ms"),
        ("FAILPOINTS", "flush-after-read=panic(a bug in the flush)"),
    ])
    .await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(service.channel().await);
    client
        .on_message(stat("fp", "kills", 0.0, 3.0, "fp-1", ""))
        .await
        .expect("acknowledged");
    // Without a flush loop nothing acknowledged would reach the database:
    // the service stops, loudly, instead of serving on.
    assert_eq!(service.wait_exit(EXIT).await, 1, "{}", service.log_text());
    let log = service.log_text();
    assert!(
        log.contains("the flush loop stopped while serving") && log.contains("a bug in the flush"),
        "{log}"
    );

    let mut again = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    again.wait_healthy().await;
    wait_for_progress(&pool, "fp", "kills", 3, Duration::from_secs(20)).await;
}

/// Sends the standard load with flushing held back, then makes the process
/// flush (SIGTERM's final flush) with `failpoint` set to abort it there.
async fn crash_at_flush(failpoint: &str, tag: &str) {
    let (db, pool, dir, mut service) = serving_with(&[
        ("FLUSH_INTERVAL", "1h"),
        ("FAILPOINTS", &format!("{failpoint}=return")),
    ])
    .await;
    let oracle = send_acknowledged(&service, 10, tag).await;
    service.sigterm();
    assert_eq!(
        service.wait_exit(EXIT).await,
        ABORTED,
        "{}",
        service.log_text()
    );
    assert!(service
        .log_text()
        .contains(&format!("failpoint {failpoint}: aborting")));

    let mut again = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    again.wait_healthy().await;
    wait_for_oracle(&pool, tag, &oracle).await;
    // Give a wrongly replayed record time to show up, then check again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        progress_of(&pool, tag).await,
        oracle,
        "an update was applied twice"
    );
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_flush_transaction_loses_nothing() {
    crash_at_flush("flush-mid-transaction", "mt").await;
}

#[tokio::test]
async fn a_crash_after_commit_and_before_wal_truncation_applies_nothing_twice() {
    crash_at_flush("flush-after-commit", "ac").await;
}

#[tokio::test]
async fn a_crash_in_the_middle_of_start_up_replay_loses_nothing_and_doubles_nothing() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let oracle = acknowledged_then_killed(&db.url, dir.path(), 10, "rp").await;

    let mut replaying = Binary::spawn(&db.url, dir.path(), &[("FAILPOINTS", "replay-mid=return")]);
    assert_eq!(
        replaying.wait_exit(EXIT).await,
        ABORTED,
        "{}",
        replaying.log_text()
    );
    assert!(progress_of(&pool, "rp").await.is_empty());

    let mut again = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    again.wait_healthy().await;
    wait_for_oracle(&pool, "rp", &oracle).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(progress_of(&pool, "rp").await, oracle);
}

/// The flush reads rows without locking them and writes a row only if it is
/// still the version it read. A row the challenge service changes in
/// between is read again and the rules applied to what it is now: a row
/// deactivated is left alone, as if the flush had come later; a row only
/// touched still gets its update.
#[tokio::test]
async fn a_row_the_service_changes_between_the_flushs_read_and_write_is_read_again() {
    let db = pg::TestDb::new().await;
    db.migrate_as_the_challenge_service().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let config = m5_config();
    for (user, goal) in [
        ("rc", "daily-kills"),
        ("rc", "weekly-kills"),
        ("rc", "monthly-kills"),
    ] {
        sqlx::query(
            "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status, baseline_value)
             VALUES ($1, $2, 'c', $3, 5, 'in_progress', 0)",
        )
        .bind(user)
        .bind(goal)
        .bind(NAMESPACE)
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut service = Binary::spawn_with_config(
        &db.url,
        dir.path(),
        &config,
        &[
            ("TABLE_OWNER", "service"),
            ("FAILPOINTS", "flush-after-read=1*sleep(2000)"),
        ],
    );
    service.wait_healthy().await;
    StatisticStatItemUpdatedServiceClient::new(service.channel().await)
        .on_message(stat("rc", "kills", 8.0, 3.0, "rc-1", ""))
        .await
        .unwrap();
    // Once the flush has read the rows and waits in its transaction (the
    // failpoint's sleep), the service deactivates one row and touches
    // another: the first must be left alone, the second still updated
    // (a flush that dropped its changed rows instead would leave it at 5).
    wait_for_a_flush_between_its_read_and_write(&pool, &service).await;
    sqlx::query(
        "UPDATE user_goal_progress
         SET is_active = (goal_id <> 'daily-kills'), updated_at = now()
         WHERE user_id = 'rc' AND goal_id IN ('daily-kills', 'weekly-kills')",
    )
    .execute(&pool)
    .await
    .unwrap();
    service.sigterm();
    assert_eq!(service.wait_exit(EXIT).await, 0, "{}", service.log_text());
    let rows: Vec<(String, i32, bool)> = sqlx::query_as(
        "SELECT goal_id, progress, is_active FROM user_goal_progress WHERE user_id = 'rc' ORDER BY goal_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("daily-kills".to_string(), 5, false),
            ("monthly-kills".to_string(), 8, true),
            ("weekly-kills".to_string(), 8, true),
        ],
        "a row changed between the flush's read and write was written from its old version, \
         or not at all"
    );
}

/// Waits until a flush's transaction has read its rows (the batch read) and sits
/// idle (held by the `flush-after-read` failpoint's sleep) for 200 ms: a
/// change made now falls between the flush's read and its write.
async fn wait_for_a_flush_between_its_read_and_write(pool: &sqlx::PgPool, service: &Binary) {
    wait_for_a_session(
        pool,
        service,
        ("idle in transaction", "%JOIN user_goal_progress p ON%", 200),
        "no flush stopped between its read and its write",
    )
    .await;
}

/// Waits until a session of the test's database has been in `state` for
/// `ms` milliseconds after a statement LIKE `query`: a process held at a
/// failpoint right after that statement.
async fn wait_for_a_session(
    pool: &sqlx::PgPool,
    service: &Binary,
    (state, query, ms): (&str, &str, u32),
    never: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = $1 AND query LIKE $2
               AND now() - state_change > make_interval(secs => $3::int / 1000.0)",
        )
        .bind(state)
        .bind(query)
        .bind(ms as i32)
        .fetch_one(pool)
        .await
        .unwrap();
        if held > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{never}: {}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stop while an HTTP ingest call waits for its fsync, on a replica with
/// no gRPC connection open (the gRPC server then ends in the same poll as
/// the stop): the shutdown waits for the call, so its event is in the final
/// flush. Before, the wait was skipped about half the time and the call was
/// acknowledged after the final flush, the stop saying nothing was left.
#[tokio::test]
async fn a_stop_waits_for_an_http_call_in_flight_and_its_final_flush_writes_it() {
    let token = "t".repeat(32);
    let (_db, pool, _dir, mut service) = serving_with(&[
        ("FAILPOINTS", "wal-fsync=sleep(1500)"),
        ("FLUSH_INTERVAL", "1h"),
        ("HTTP_INGEST_TOKEN", &token),
    ])
    .await;
    let addr = service.http_addr();
    let body = serde_json::json!({"type": "stat", "id": "hs-1", "userId": "hs",
        "namespace": NAMESPACE, "statCode": "kills", "latestValue": 3.0, "inc": 3.0});
    let auth = format!("Bearer {token}");
    let call = tokio::spawn(async move {
        http_request(
            addr,
            "/v1/events",
            &[("Authorization", auth.as_str())],
            body.to_string().as_bytes(),
        )
        .await
    });
    // Once counted, the call is in flight (counted and entered together)
    // and waits in its fsync's sleep.
    stat_event_received(addr).await;
    service.sigterm();
    // Not ready at once: /healthz says so while the call still waits in
    // its fsync, so the platform stops routing before the servers close.
    loop {
        let (health, body) = http_get(addr, "/healthz").await;
        if health != 200 {
            assert!(body.contains("shutting_down"), "{body}");
            break;
        }
        assert!(
            !call.is_finished(),
            "/healthz still ready after the stop, until the call in flight ended: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, text) = call.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(service.wait_exit(EXIT).await, 0, "{}", service.log_text());
    assert_eq!(
        row(&pool, "hs", "kills").await.map(|r| r.progress),
        Some(3),
        "acknowledged, yet not in the final flush:\n{}",
        service.log_text()
    );
}

/// A service on a new WAL directory, paused (`wal-before-open`) for `ms`
/// once it has recorded its identity and before it opens its WAL: where it
/// holds the directory's lock and sled's is not taken yet.
async fn paused_before_its_wal_opens(db: &pg::TestDb, dir: &std::path::Path, ms: u64) -> Binary {
    let sleep = format!("wal-before-open=sleep({ms})");
    let service = Binary::spawn(&db.url, dir, &[("FAILPOINTS", sleep.as_str())]);
    let recorded = dir.join("wal").join("instance_id");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&recorded).map_or(true, |id| id.trim().is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no identity recorded: {}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service
}

/// A new WAL directory whose recorded identity changes before the process
/// that made it opens its WAL (something other than this build wrote it: a
/// second process of this build is refused by the directory's lock, below):
/// the process must not run under the other identity (its records would
/// count against another watermark row), and stops saying so.
#[tokio::test]
async fn a_process_whose_new_wal_directory_was_taken_over_before_it_opened_it_stops() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = paused_before_its_wal_opens(&db, dir.path(), 10_000).await;
    std::fs::write(dir.path().join("wal/instance_id"), "the-other-process\n").unwrap();
    assert_eq!(service.wait_exit(EXIT).await, 1, "{}", service.log_text());
    let log = service.log_text();
    assert!(
        log.contains("another process (an older build, or something else) wrote it"),
        "{log}"
    );
    assert!(log.contains("the-other-process"), "{log}");
}

/// Two processes started on one new WAL directory: the first takes it
/// (held here, before its WAL is open, where the two used to race over the
/// identity and the first start's marker); the second stops at once, naming
/// the directory, and the first goes on to serve.
#[tokio::test]
async fn a_second_process_on_a_new_wal_directory_still_being_made_stops_at_once() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = paused_before_its_wal_opens(&db, dir.path(), 5_000).await;
    let mut second = Binary::spawn(&db.url, dir.path(), &[]);
    assert_eq!(second.wait_exit(EXIT).await, 1, "{}", second.log_text());
    let log = second.log_text();
    assert!(
        log.contains("cannot open the WAL") && log.contains("another process has it"),
        "{log}"
    );
    assert!(
        !dir.path().join("wal/log").exists() || first.log_text().contains("wal replayed"),
        "the second process made the first one's log"
    );
    first.wait_healthy().await;
    assert!(
        !first.log_text().contains("another process"),
        "{}",
        first.log_text()
    );
}

/// SIGTERM to a replica still starting: exit 1, saying what its WAL keeps
/// and `why` it stopped there.
async fn stops_saying_what_is_left(service: &mut Binary, why: &str) {
    service.sigterm();
    assert_eq!(service.wait_exit(EXIT).await, 1, "{}", service.log_text());
    let log = service.log_text();
    assert!(
        log.contains("stopping with acknowledged updates not in the database"),
        "{log}"
    );
    assert!(log.contains(why), "{log}");
}

/// A replica stopped (SIGTERM) during start-up, before the WAL it replays
/// reached the database, says what it leaves in the WAL and exits 1, as a
/// stop that serves does: an operator scaling down keeps (or drains) only
/// the volumes of replicas that did not exit 0. Both places start-up waits:
/// for the database itself, and for the flush of the replayed records.
#[tokio::test]
async fn a_stop_during_start_up_with_records_in_the_wal_exits_1_saying_so() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn(&db.url, dir.path(), &HOLDING);
    service.wait_healthy().await;
    let oracle = send_acknowledged(&service, 5, "su").await;
    service.kill9();
    service.wait_exit(EXIT).await;

    // No database to reach: waiting before the replay.
    let unreachable = "postgres://postgres@127.0.0.1:1/none";
    let mut waiting = Binary::spawn(unreachable, dir.path(), &[]);
    waiting
        .wait_for_log("cannot", Duration::from_secs(30))
        .await;
    stops_saying_what_is_left(&mut waiting, "before the WAL was replayed").await;

    // The database answers but every flush fails: waiting to flush the replay.
    let mut flushing = Binary::spawn(
        &db.url,
        dir.path(),
        &[("FAILPOINTS", "flush-between-statements=return")],
    );
    flushing
        .wait_for_log("cannot flush the replayed WAL yet", Duration::from_secs(30))
        .await;
    // Replaying (ReplayRunningLong reads it), and not healthy.
    let http = flushing
        .logged_http_addr()
        .expect("the logged HTTP address");
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(metric(&metrics, "challenge_event_handler_phase"), 1.0);
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    stops_saying_what_is_left(&mut flushing, "flushing the replayed WAL").await;
    assert!(progress_of(&pool, "su").await.is_empty());

    // The volume kept them: the next start applies each once.
    let mut service = Binary::spawn(&db.url, dir.path(), &[]);
    service.wait_healthy().await;
    wait_for_oracle(&pool, "su", &oracle).await;
    service.sigterm();
    assert_eq!(service.wait_exit(EXIT).await, 0, "{}", service.log_text());
    assert_eq!(progress_of(&pool, "su").await, oracle);
}

/// Two replicas start at once on a table the challenge service made, one
/// with TABLE_OWNER=handler and one without. The one without read no
/// recorded choice, inferred "service" and, paused (`owner-before-record`),
/// records it only after the other recorded "handler": the explicit choice
/// stays recorded, and the late replica runs by it too.
#[tokio::test]
async fn a_start_without_table_owner_does_not_record_over_a_choice_made_meanwhile() {
    let db = pg::TestDb::new().await;
    db.migrate_as_the_challenge_service().await;
    let pool = db.pool().await;
    let (late_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut late = Binary::spawn(
        &db.url,
        late_dir.path(),
        &[
            ("TABLE_OWNER", ""),
            ("FAILPOINTS", "owner-before-record=sleep(8000)"),
        ],
    );
    // Paused: its last statement the check that user_goal_progress exists,
    // idle since.
    wait_for_a_session(
        &pool,
        &late,
        ("idle", "SELECT to_regclass%", 1000),
        "the start never paused before recording",
    )
    .await;
    let mut other = Binary::spawn(&db.url, other_dir.path(), &[("TABLE_OWNER", "handler")]);
    other.wait_healthy().await;
    late.wait_healthy().await;
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT value FROM challenge_event_handler_settings WHERE name = 'table_owner'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(recorded.as_deref(), Some("handler"), "{}", late.log_text());
    let log = late.log_text();
    assert!(
        log.contains("another replica recorded \"handler\" while this one started")
            && log.contains("the handler owns user_goal_progress"),
        "{log}"
    );
    for service in [&mut late, &mut other] {
        service.sigterm();
        assert_eq!(service.wait_exit(EXIT).await, 0, "{}", service.log_text());
    }
}

/// A replica back after longer than LEDGER_WINDOW or TOMBSTONE_RETENTION
/// with updates still in its WAL (down that long, or its volume drained that
/// late) says that the cluster no longer remembers what guards them, each
/// only when it is so, and applies them. (Its clock is moved with
/// TEST_CLOCK_OFFSET_MS.)
#[tokio::test]
async fn a_wal_older_than_the_ledger_or_the_tombstones_remember_is_replayed_with_a_warning() {
    let (db, pool, dir, mut service) = serving_with(&[("FLUSH_INTERVAL", "1h")]).await;
    let ledger = "the WAL holds updates acknowledged longer ago than LEDGER_WINDOW";
    let tombstones = "the WAL holds updates acknowledged longer ago than TOMBSTONE_RETENTION";
    // Each round: an update acknowledged at `offset` hours, a kill -9, and
    // a start `offset + 2` hours on with the given windows; it replays and
    // flushes the update.
    let rounds = [
        (
            0,
            [("LEDGER_WINDOW", "3h"), ("TOMBSTONE_RETENTION", "1h")],
            false,
            true,
        ),
        (
            2,
            [("LEDGER_WINDOW", "1h"), ("TOMBSTONE_RETENTION", "30d")],
            true,
            false,
        ),
    ];
    for (round, (offset, windows, ledger_warned, tombstones_warned)) in
        rounds.into_iter().enumerate()
    {
        let id = format!("aw-{round}");
        StatisticStatItemUpdatedServiceClient::new(service.channel().await)
            .on_message(stat("aw", "kills", 0.0, 3.0, &id, ""))
            .await
            .unwrap();
        service.kill9();
        let later = ((offset + 2) * 3_600_000).to_string();
        let mut env = vec![
            ("FLUSH_INTERVAL", "1h"),
            ("TEST_CLOCK_OFFSET_MS", later.as_str()),
        ];
        env.extend(windows);
        service = Binary::spawn(&db.url, dir.path(), &env);
        service.wait_healthy().await;
        let total = 3 * (round as i32 + 1);
        wait_for_progress(&pool, "aw", "kills", total, Duration::from_secs(20)).await;
        let log = service.log_text();
        assert_eq!(log.contains(ledger), ledger_warned, "round {round}: {log}");
        assert_eq!(
            log.contains(tombstones),
            tombstones_warned,
            "round {round}: {log}"
        );
        assert!(log.contains("oldest_update_age=2h"), "round {round}: {log}");
    }
    let log = service.log_text();
    assert!(log.contains("ledger_window=1h"), "{log}");
    service.sigterm();
    assert_eq!(service.wait_exit(EXIT).await, 0, "{log}");
}

/// A stop while a gRPC call waits in an fsync slower than SHUTDOWN_GRACE:
/// the server stops waiting for it, yet the call goes on and can be
/// acknowledged. Before, that came after the final flush had found nothing
/// to do, and the process exited 0 with the update only in the WAL (a
/// claim deleted on that word loses it). Now the WAL takes no append once
/// the final flush begins, and waits for the ones it took: the update is
/// written, and the exit code agrees with what the WAL still holds.
#[tokio::test]
async fn a_call_acknowledged_after_the_servers_grace_is_in_the_final_flush() {
    let (db, pool, dir, mut service) = serving_with(&[
        ("FAILPOINTS", "wal-fsync=1*sleep(4000)"),
        ("SHUTDOWN_GRACE", "1s"),
    ])
    .await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(service.channel().await);
    let call = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let answer = client
            .on_message(stat("lg", "kills", 0.0, 3.0, "lg-1", ""))
            .await;
        (answer, started.elapsed())
    });
    let addr = service.http_addr();
    stat_event_received(addr).await;
    service.sigterm();
    let code = service.wait_exit(EXIT).await;
    let (answer, took) = call.await.unwrap();
    let log = service.log_text();
    assert!(
        took >= Duration::from_secs(3),
        "the fsync's sleep was not hit: {took:?}\n{log}"
    );
    let report = wal_inspect(dir.path(), &db.url);
    let progress = row(&pool, "lg", "kills").await.map(|r| r.progress);
    // The exit code says whether anything acknowledged is left.
    assert_eq!(
        code == 0,
        report["pending_above_watermark"] == 0,
        "exit {code}, WAL {report}\n{log}"
    );
    if answer.is_ok() {
        assert!(
            progress == Some(3) || code == 1,
            "acknowledged, exit 0, not in the database: {progress:?}\n{log}"
        );
    }
    // Here the final flush has time to write it.
    assert_eq!((code, progress), (0, Some(3)), "{answer:?}\n{log}");
}

/// A panic in a round of the cluster's upkeep is a failed round: counted
/// (`upkeep_failures_total`, which an alert reads) and logged, and the
/// upkeep goes on; before, the task ended unseen, and ledger rotation and
/// tombstone expiry with it.
#[tokio::test]
async fn a_panic_in_the_upkeep_counts_as_a_failed_round_and_the_upkeep_goes_on() {
    let (_db, _pool, _dir, mut service) =
        serving_with(&[("FAILPOINTS", "upkeep-round=1*panic")]).await;
    let addr = service.http_addr();
    let failures = "challenge_event_handler_upkeep_failures_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&http_get(addr, "/metrics").await.1, failures) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the panicked round was not counted: {}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = service
        .wait_for_log("cluster upkeep failed", Duration::from_secs(5))
        .await;
    assert!(log.contains("the upkeep round panicked"), "{log}");
    // The next round (15 s later) succeeds: the upkeep still runs.
    let log = service
        .wait_for_log("cluster upkeep recovered", Duration::from_secs(40))
        .await;
    assert!(log.contains("cluster upkeep recovered"), "{log}");
    service.sigterm();
    assert_eq!(service.wait_exit(EXIT).await, 0, "{}", service.log_text());
}

/// Waits until a stat event's call is counted (`events_total`): counted and
/// entered together, it is in flight from then on.
async fn stat_event_received(addr: std::net::SocketAddr) {
    let received = r#"challenge_event_handler_events_total{event="stat_item_updated"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&http_get(addr, "/metrics").await.1, received) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
