//! Crash tests: the real binary, killed with SIGKILL or stopped with SIGTERM,
//! checked against an oracle of what was acknowledged.

mod common;

use std::path::Path;
use std::time::Duration;

use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9_before_any_flush_and_apply_exactly_once() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();

    let oracle = acknowledged_then_killed(&db.url, dir.path(), 20, "k9").await;
    assert!(
        progress_of(&pool, "k9").await.is_empty(),
        "something was flushed before the kill"
    );

    let mut second = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    second.wait_healthy().await;
    wait_for_oracle(&pool, "k9", &oracle).await;
    assert!(
        second.log_text().contains("wal replayed"),
        "{}",
        second.log_text()
    );

    // Redelivery of the same events after the crash changes nothing.
    let again = send_acknowledged(&second, 20, "k9").await;
    assert_eq!(again, oracle);
    second.kill9();

    // A further restart replays nothing twice.
    let mut third = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    third.wait_healthy().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(progress_of(&pool, "k9").await, oracle);
    third.sigterm();
    assert_eq!(third.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_crash_after_the_database_commit_and_before_wal_truncation_does_not_double_count() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();

    let oracle = acknowledged_then_killed(&db.url, dir.path(), 10, "ct").await;
    // Keep the WAL as it was before any flush...
    let before_flush = dir.path().join("wal-before-flush");
    copy_dir(&dir.path().join("wal"), &before_flush);

    // ...let a restart commit it to the database and truncate the WAL...
    let mut second = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    second.wait_healthy().await;
    wait_for_oracle(&pool, "ct", &oracle).await;
    second.kill9();

    // ...then put the untruncated WAL back: exactly the state of a crash between
    // COMMIT and truncation. The watermark must keep replay from applying it again.
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    std::fs::rename(&before_flush, dir.path().join("wal")).unwrap();
    let mut third = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    third.wait_healthy().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        progress_of(&pool, "ct").await,
        oracle,
        "an update was applied twice"
    );

    // New events after that are still applied (sequence numbers moved past the watermark).
    let channel = third.channel().await;
    UserAuthenticationUserLoggedInServiceClient::new(channel)
        .on_message(login("ct-0", "ct-0-login-2", ""))
        .await
        .unwrap();
    wait_for_progress(&pool, "ct-0", "login-count", 2, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn sigterm_flushes_everything_acknowledged_and_exits_zero() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();

    let mut service = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "1h")]);
    service.wait_healthy().await;
    let oracle = send_acknowledged(&service, 10, "st").await;
    assert!(progress_of(&pool, "st").await.is_empty());
    service.sigterm();
    assert_eq!(
        service.wait_exit(Duration::from_secs(30)).await,
        0,
        "{}",
        service.log_text()
    );
    assert_eq!(progress_of(&pool, "st").await, oracle);
    assert!(
        service.log_text().contains("final flush done"),
        "{}",
        service.log_text()
    );
}

#[tokio::test]
async fn an_update_acknowledged_before_its_goal_was_removed_from_the_config_still_arrives() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();

    let oracle = acknowledged_then_killed(&db.url, dir.path(), 3, "rm").await;

    // The operator removes the combat challenge before the restart.
    let trimmed = dir.path().join("trimmed.json");
    let mut challenges: serde_json::Value = serde_json::from_str(CHALLENGES).unwrap();
    challenges["challenges"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["challengeId"] != "combat");
    std::fs::write(&trimmed, challenges.to_string()).unwrap();
    let trimmed = trimmed.display().to_string();

    // Binary::spawn writes the full file; point CONFIG_PATH at the trimmed one instead.
    let mut second = Binary::spawn(
        &db.url,
        dir.path(),
        &[
            ("FLUSH_INTERVAL", "50ms"),
            ("CONFIG_PATH", trimmed.as_str()),
        ],
    );
    second.wait_healthy().await;
    wait_for_oracle(&pool, "rm", &oracle).await;
}

#[tokio::test]
async fn a_second_process_on_the_same_wal_directory_is_refused() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = Binary::spawn(&db.url, dir.path(), &[]);
    first.wait_healthy().await;
    let mut second = Binary::spawn(&db.url, dir.path(), &[]);
    let code = second.wait_exit(Duration::from_secs(30)).await;
    assert_ne!(code, 0);
    let log = second.log_text();
    assert!(log.contains("cannot open the WAL"), "{log}");
}

#[tokio::test]
async fn start_up_without_a_namespace_or_with_a_bad_config_exits_non_zero_with_a_clear_message() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut no_namespace = Binary::spawn(&db.url, dir.path(), &[("AB_NAMESPACE", "")]);
    assert_eq!(no_namespace.wait_exit(Duration::from_secs(30)).await, 1);
    assert!(
        no_namespace
            .log_text()
            .contains("invalid setting AB_NAMESPACE: is required"),
        "{}",
        no_namespace.log_text()
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"challenges":[{"challengeId":"c","name":"C","goals":[{"goalId":"g","name":"G","eventSource":"login","type":"increment","requirement":{"operator":">=","targetValue":1},"reward":{"type":"ITEM","rewardId":"x","quantity":1},"prerequisites":["ghost"]}]}]}"#).unwrap();
    let bad = bad.display().to_string();
    let mut bad_config = Binary::spawn(&db.url, dir.path(), &[("CONFIG_PATH", bad.as_str())]);
    assert_eq!(bad_config.wait_exit(Duration::from_secs(30)).await, 1);
    let log = bad_config.log_text();
    assert!(log.contains("bad.json"), "{log}");
    assert!(log.contains(r#"challenge "c", goal "g", field "prerequisites": prerequisite "ghost" is not a goalId"#), "{log}");
}

#[tokio::test]
async fn the_send_subcommand_delivers_a_test_event_to_a_running_service() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    service.wait_healthy().await;
    let addr = format!("http://127.0.0.1:{}", service.grpc_port);
    for args in [vec!["stat", "--code", "kills", "--inc", "4"], vec!["login"]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_challenge-event-handler"))
            .args([
                "send",
                "--addr",
                &addr,
                "--namespace",
                NAMESPACE,
                "--user",
                "sam",
            ])
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with("acknowledged: "), "{stdout}");
    }
    wait_for_progress(&pool, "sam", "kills", 4, Duration::from_secs(20)).await;
    wait_for_progress(&pool, "sam", "login-count", 1, Duration::from_secs(20)).await;

    // A service that is not there is a clear error, not a hang.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_challenge-event-handler"))
        .args([
            "send",
            "--addr",
            &format!("http://127.0.0.1:{}", pg::free_port()),
            "login",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

#[tokio::test]
async fn a_database_that_does_not_exist_stops_start_up_instead_of_retrying_forever() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = pg::with_database(&db.url, "no_such_database");
    let mut service = Binary::spawn(&missing, dir.path(), &[]);
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 1);
    let log = service.log_text();
    assert!(
        log.contains("cannot prepare the database; this needs an operator"),
        "{log}"
    );
    assert!(log.contains("no_such_database"), "{log}");
}

/// The kill goals' rows of `user` as (goal, progress), sorted (the
/// handler owns the table here, so a player has a row of every goal
/// assigned by default from their first event on).
async fn rows_of(pool: &sqlx::PgPool, user: &str) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT goal_id, progress FROM user_goal_progress
         WHERE user_id = $1 AND goal_id IN ('kills', 'kills-total') ORDER BY goal_id",
    )
    .bind(user)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_gdpr_deletion_acknowledged_before_a_kill_9_is_applied_by_replay_and_nothing_older_returns(
) {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let send = |channel: tonic::transport::Channel| async move {
        challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient::new(channel)
    };

    // Rows in the database first.
    let mut first = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    first.wait_healthy().await;
    send(first.channel().await)
        .await
        .on_message(stat("gk", "kills", 0.0, 4.0, "gk-1", ""))
        .await
        .unwrap();
    wait_for_progress(&pool, "gk", "kills", 4, Duration::from_secs(20)).await;
    first.kill9();

    // Then, with no flush: more progress, the deletion, progress after it; kill -9.
    let mut second = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "1h")]);
    second.wait_healthy().await;
    let channel = second.channel().await;
    send(channel.clone())
        .await
        .on_message(stat("gk", "kills", 0.0, 5.0, "gk-2", ""))
        .await
        .unwrap();
    UserAuthenticationUserLoggedInServiceClient::new(channel.clone())
        .on_message(login("gk", "gk-3", ""))
        .await
        .unwrap();
    challenge_event_handler::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(channel.clone())
        .on_message(challenge_event_handler::cli::send::gdpr_deletion_message(NAMESPACE, "gk", "gk-gdpr", ""))
        .await
        .unwrap();
    send(channel)
        .await
        .on_message(stat("gk", "kills", 0.0, 2.0, "gk-4", ""))
        .await
        .unwrap();
    second.kill9();
    let before = [("kills".to_string(), 4), ("kills-total".to_string(), 0)];
    assert_eq!(rows_of(&pool, "gk").await, before);

    let mut third = Binary::spawn(&db.url, dir.path(), &[("FLUSH_INTERVAL", "50ms")]);
    third.wait_healthy().await;
    wait_for_progress(&pool, "gk", "kills", 2, Duration::from_secs(20)).await;
    assert_eq!(
        rows_of(&pool, "gk").await,
        [("kills".to_string(), 2), ("kills-total".to_string(), 0)],
        "something acknowledged before the deletion came back"
    );
    let log = third
        .wait_for_log("gdpr deletion applied", Duration::from_secs(10))
        .await;
    let audit = log
        .lines()
        .find(|l| l.contains("gdpr deletion applied"))
        .unwrap();
    for field in [
        "user_id=gk",
        "namespace=testgame",
        // Every goal assigned by default: the handler initialized the player.
        "rows_deleted=8",
        "event_id=gk-gdpr",
    ] {
        assert!(
            audit.contains(field),
            "{field} not in the audit line {audit:?}"
        );
    }
    third.sigterm();
    assert_eq!(third.wait_exit(Duration::from_secs(30)).await, 0);
}

/// Starts the service on the WAL an older build left in `dir` and waits for
/// its three updates of `user`'s "kills" goal (2 + 3 + 4) in the database.
async fn replays_into_kills(
    db: &pg::TestDb,
    pool: &sqlx::PgPool,
    dir: &std::path::Path,
    user: &str,
) {
    // The id an older build without INSTANCE_ID generated and recorded on
    // its first start (a directory with a log and no id is refused).
    std::fs::write(dir.join("wal").join("instance_id"), "ceh-an-older-build").unwrap();
    let mut service = Binary::spawn(&db.url, dir, &[("FLUSH_INTERVAL", "50ms")]);
    service.wait_healthy().await;
    let r = wait_for_progress(pool, user, "kills", 9, Duration::from_secs(20)).await;
    assert_eq!(r.status, "in_progress");
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_wal_written_in_the_previous_record_format_replays_after_an_upgrade() {
    use challenge_event_handler::rules::{Op, Update};
    use challenge_event_handler::wal::codec;
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    // What a build of format 1 leaves after acknowledging three updates and
    // dying before its flush: sled records `w` + seq → format-1 update.
    {
        let log = sled::open(dir.path().join("wal").join("log")).unwrap();
        for (seq, delta) in [(1u64, 2), (2, 3), (3, 4)] {
            let update = Update {
                user_id: "up".into(),
                goal_id: "kills".into(),
                challenge_id: "combat".into(),
                namespace: NAMESPACE.into(),
                target: 10,
                creates_row: true,
                event_time_ms: 1_767_225_600_000,
                event_id: format!("up-{seq}"),
                op: Op::Add(delta),
            };
            let mut key = vec![b'w'];
            key.extend_from_slice(&seq.to_be_bytes());
            log.insert(key, codec::encode_v1(&update)).unwrap();
        }
        log.flush().unwrap();
    }
    replays_into_kills(&db, &pool, dir.path(), "up").await;
}

/// What a build of WAL format 3 (frames of whole records) leaves after
/// acknowledging updates and dying before its flush replays after an upgrade
/// to format 4 (frames of packed records).
#[tokio::test]
async fn a_wal_of_format_3_frames_replays_after_an_upgrade() {
    use challenge_event_handler::rules::{Op, Record, Update};
    use challenge_event_handler::wal::codec;
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = sled::open(dir.path().join("wal").join("log")).unwrap();
        let records: Vec<Record> = [2, 3, 4]
            .into_iter()
            .enumerate()
            .map(|(i, delta)| {
                Record::Update(Update {
                    user_id: "up3".into(),
                    goal_id: "kills".into(),
                    challenge_id: "combat".into(),
                    namespace: NAMESPACE.into(),
                    target: 10,
                    creates_row: true,
                    event_time_ms: 1_767_225_600_000,
                    event_id: format!("up3-{i}"),
                    op: Op::Add(delta),
                })
            })
            .collect();
        let head = codec::FrameHead {
            first_seq: 1,
            count: records.len() as u32,
            written_ms: 1_767_225_600_000,
        };
        let frame = codec::encode_whole_frame(&head, &records);
        assert_eq!(frame[0], codec::WHOLE_FRAME_VERSION);
        let mut key = vec![b'f'];
        key.extend_from_slice(&1u64.to_be_bytes());
        log.insert(key, frame).unwrap();
        log.flush().unwrap();
    }
    replays_into_kills(&db, &pool, dir.path(), "up3").await;
}

/// An event acknowledged at 23:58 and written only after midnight, by the
/// replay after a kill -9, belongs to the day it was acknowledged: the
/// rotation period is the acknowledgement's (kept in the WAL), never the
/// flush's. Upstream, whose flush decides the period, would count it for the
/// new day. (The process's clock is moved with TEST_CLOCK_OFFSET_MS, so this
/// needs the failpoints build.)
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn an_event_acknowledged_before_midnight_and_replayed_after_it_counts_for_its_own_day() {
    use chrono::NaiveDateTime;
    const DAY_MS: i64 = 86_400_000;
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let config = m5_config();
    // Midnight at the end of 2030-06-01 (UTC).
    let midnight: i64 = 1_906_588_800_000;
    let offset_to =
        |instant: i64| (instant - challenge_event_handler::clock::unix_ms() as i64).to_string();
    let before = offset_to(midnight - 120_000);
    let mut first = Binary::spawn_with_config(
        &db.url,
        dir.path(),
        &config,
        &[("FLUSH_INTERVAL", "1h"), ("TEST_CLOCK_OFFSET_MS", &before)],
    );
    first.wait_healthy().await;
    let channel = first.channel().await;
    challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient::new(channel)
        .on_message(stat("late", "kills", 100.0, 12.0, "late-1", ""))
        .await
        .unwrap();
    first.kill9();

    let after = offset_to(midnight + 30_000);
    let mut second = Binary::spawn_with_config(
        &db.url,
        dir.path(),
        &config,
        &[("FLUSH_INTERVAL", "50ms"), ("TEST_CLOCK_OFFSET_MS", &after)],
    );
    second.wait_healthy().await;
    let at = |ms: i64| challenge_event_handler::clock::naive(ms);
    let row = || async {
        sqlx::query_as::<
            _,
            (
                i32,
                Option<i32>,
                String,
                Option<NaiveDateTime>,
                NaiveDateTime,
                Option<NaiveDateTime>,
            ),
        >(
            "SELECT progress, baseline_value, status, completed_at, updated_at, expires_at
             FROM user_goal_progress WHERE user_id = 'late' AND goal_id = 'daily-kills'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    // Serving means the replayed WAL was flushed.
    let (progress, baseline, status, completed_at, updated_at, expires_at) =
        row().await.expect("the replay wrote the row");
    assert_eq!(
        (progress, baseline, status.as_str()),
        (100, Some(88), "completed")
    );
    assert!(
        updated_at >= at(midnight - 120_000) && updated_at < at(midnight),
        "updated at {updated_at}: the acknowledgement's day, not the flush's"
    );
    assert_eq!(completed_at, Some(updated_at));
    assert_eq!(
        expires_at,
        Some(at(midnight)),
        "the end of the day it was acknowledged"
    );

    // The first event of the new day starts the new period: reset, baseline
    // from it (upstream would have counted the replayed event for today and
    // kept the goal completed at 101 − 88).
    let channel = second.channel().await;
    challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient::new(channel)
        .on_message(stat("late", "kills", 101.0, 1.0, "late-2", ""))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (progress, baseline, status, completed_at, _, expires_at) = row().await.unwrap();
        if progress == 101 {
            assert_eq!(
                (baseline, status.as_str(), completed_at),
                (Some(100), "in_progress", None)
            );
            assert_eq!(expires_at, Some(at(midnight + DAY_MS)));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new day's event was not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.sigterm();
    assert_eq!(second.wait_exit(Duration::from_secs(30)).await, 0);
}

/// A WAL record damaged on disk after it was acknowledged (crc mismatch),
/// through the real binary: the default (strict) start stops, naming the
/// record and the setting, and applies nothing; WAL_RECOVERY=skip-corrupt
/// drops that record with an error line and applies the others once.
#[tokio::test]
async fn a_corrupt_wal_record_stops_the_start_until_wal_recovery_skip_corrupt_drops_it() {
    use challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn(&db.url, dir.path(), &HOLDING);
    service.wait_healthy().await;
    let mut client = StatisticStatItemUpdatedServiceClient::new(service.channel().await);
    // One call at a time: a frame each.
    for i in 0..3 {
        client
            .on_message(stat(
                &format!("wr-{i}"),
                "kills",
                0.0,
                2.0,
                &format!("wr-{i}"),
                "",
            ))
            .await
            .expect("acknowledged");
    }
    service.kill9();
    service.wait_exit(Duration::from_secs(30)).await;
    {
        let log = sled::open(dir.path().join("wal").join("log")).unwrap();
        let frames: Vec<sled::IVec> = log
            .scan_prefix(b"f")
            .keys()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 3, "one frame per acknowledged call");
        let mut value = log.get(&frames[1]).unwrap().unwrap().to_vec();
        value[2] ^= 0xff;
        log.insert(&frames[1], value).unwrap();
        log.flush().unwrap();
    }

    let mut strict = Binary::spawn(&db.url, dir.path(), &[]);
    assert_eq!(strict.wait_exit(Duration::from_secs(30)).await, 1);
    let log = strict.log_text();
    assert!(log.contains("is corrupt"), "{log}");
    assert!(log.contains("WAL_RECOVERY=skip-corrupt"), "{log}");
    for i in 0..3 {
        assert!(row(&pool, &format!("wr-{i}"), "kills").await.is_none());
    }

    let mut lenient = Binary::spawn(&db.url, dir.path(), &[("WAL_RECOVERY", "skip-corrupt")]);
    lenient.wait_healthy().await;
    lenient.sigterm();
    assert_eq!(lenient.wait_exit(Duration::from_secs(30)).await, 0);
    assert!(
        lenient.log_text().contains("dropping a corrupt WAL entry"),
        "{}",
        lenient.log_text()
    );
    let applied: Vec<Option<i32>> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                row(&pool, &format!("wr-{i}"), "kills")
                    .await
                    .map(|r| r.progress),
            );
        }
        v
    };
    assert_eq!(applied, [Some(2), None, Some(2)]);
}
