//! End-to-end tests of the service in-process on port 0 against a real
//! PostgreSQL: an event goes in over gRPC, a row comes out after the flush.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

struct Env {
    db: common::pg::TestDb,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    Env {
        db: common::pg::TestDb::new().await,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

/// `BUFFER_MAX_KEYS` bounds a flush: with the interval out of reach (1 h),
/// nothing is written while fewer keys are buffered, and the key that
/// reaches the bound wakes the flusher at once.
#[tokio::test]
async fn a_buffer_that_reaches_buffer_max_keys_is_flushed_without_waiting_for_the_interval() {
    let e = env().await;
    let svc = Service::start(
        &e.db.url,
        e.dir.path(),
        &["--flush-interval", "1h", "--buffer-max-keys", "3"],
    )
    .await;
    let db = e.db.pool().await;
    let at = "2026-01-01T10:00:00Z";
    svc.stat(stat("ana", "level", 5.0, 1.0, "k1", at))
        .await
        .unwrap();
    svc.stat(stat("bo", "level", 6.0, 1.0, "k2", at))
        .await
        .unwrap();
    // Two keys acknowledged: below the bound, and the interval is an hour off.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count_rows(&db).await, 0, "flushed below the bound");

    svc.stat(stat("cy", "level", 7.0, 1.0, "k3", at))
        .await
        .unwrap();
    for (user, level) in [("ana", 5), ("bo", 6), ("cy", 7)] {
        wait_for_progress(&db, user, "level", level, WAIT).await;
    }
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn absolute_goals_follow_the_newest_value_and_stay_completed_once_reached() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;

    svc.stat(stat("ana", "level", 5.0, 1.0, "a1", "2026-01-01T10:00:00Z"))
        .await
        .unwrap();
    svc.stat(stat("ana", "level", 3.0, 1.0, "a2", "2026-01-01T09:00:00Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let r = row(&db, "ana", "level").await.unwrap();
    assert_eq!(
        (r.progress, r.status.as_str(), r.completed),
        (5, "in_progress", false)
    );

    // An older event in a later flush does not overwrite a newer one either.
    svc.stat(stat("ana", "level", 2.0, 1.0, "a3", "2026-01-01T08:00:00Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "ana", "level").await.unwrap().progress, 5);

    svc.stat(stat(
        "ana",
        "level",
        12.0,
        1.0,
        "a4",
        "2026-01-01T11:00:00Z",
    ))
    .await
    .unwrap();
    // Never capped at the target (10): a level-12 player shows 12.
    let r = wait_for_progress(&db, "ana", "level", 12, WAIT).await;
    assert_eq!((r.status.as_str(), r.completed), ("completed", true));
    let first_completion = completed_at(&db, "ana", "level").await;

    svc.stat(stat("ana", "level", 4.0, 1.0, "a5", "2026-01-01T12:00:00Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let r = row(&db, "ana", "level").await.unwrap();
    // Progress follows the stat; the completion stays, with its time.
    assert_eq!(
        (r.progress, r.status.as_str()),
        (4, "completed"),
        "a completed goal regressed"
    );
    assert_eq!(completed_at(&db, "ana", "level").await, first_completion);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn increments_add_the_truncated_inc_or_one_and_one_event_moves_several_goals() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;

    svc.stat(stat("bo", "kills", 40.0, 2.7, "b1", ""))
        .await
        .unwrap(); // +2
    svc.stat(stat("bo", "kills", 41.0, 0.0, "b2", ""))
        .await
        .unwrap(); // +1
    svc.stat(stat("bo", "kills", 42.0, -3.0, "b3", ""))
        .await
        .unwrap(); // +1
    barrier(&svc, &db).await;
    let r = row(&db, "bo", "kills").await.unwrap();
    assert_eq!((r.progress, r.status.as_str()), (4, "in_progress"));
    // The same stat also drives an absolute goal.
    assert_eq!(row(&db, "bo", "kills-total").await.unwrap().progress, 42);

    svc.stat(stat("bo", "kills", 48.0, 6.0, "b4", ""))
        .await
        .unwrap();
    let r = wait_for_progress(&db, "bo", "kills", 10, WAIT).await;
    assert_eq!((r.status.as_str(), r.completed), ("completed", true));

    let first_completion = completed_at(&db, "bo", "kills").await;

    // A completed, unclaimed goal keeps counting, uncapped, and keeps its
    // completion time (AccelByte's "overflow beyond target": 4 + 100 → 104).
    svc.stat(stat("bo", "kills", 49.0, 1.0, "b5", ""))
        .await
        .unwrap();
    svc.stat(stat("bo", "kills", 149.0, 100.0, "b6", ""))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let r = row(&db, "bo", "kills").await.unwrap();
    assert_eq!((r.progress, r.status.as_str()), (111, "completed"));
    assert_eq!(completed_at(&db, "bo", "kills").await, first_completion);
    svc.stop().await.unwrap();
}

/// A producer whose clock runs an hour fast: its timestamp is not trusted
/// (arrival time instead, with a warning and `events_bad_timestamp_total`),
/// so the next value, stamped by a correct clock, still moves the absolute
/// goal. Trusting it would have skipped every real value for that hour.
#[tokio::test]
async fn a_timestamp_an_hour_ahead_is_not_trusted_and_does_not_hold_back_the_next_value() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    let stamp = |ahead_ms: i64| {
        chrono::DateTime::from_timestamp_millis(
            challenge_event_handler::clock::unix_ms() as i64 + ahead_ms,
        )
        .unwrap()
        .to_rfc3339()
    };

    svc.stat(stat("fay", "kills", 50.0, 0.0, "f1", &stamp(3_600_000)))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "fay", "kills-total").await.unwrap().progress, 50);
    svc.stat(stat("fay", "kills", 70.0, 0.0, "f2", &stamp(0)))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "fay", "kills-total").await.unwrap().progress, 70);
    assert_eq!(
        metric(
            &svc.metrics().await,
            "challenge_event_handler_events_bad_timestamp_total"
        ),
        1.0
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn logins_count_once_each_and_daily_goals_once_per_utc_day() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;

    svc.login(login("cy", "c1", "2026-03-01T10:00:00Z"))
        .await
        .unwrap();
    svc.login(login("cy", "c2", "2026-03-01T23:59:59Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "cy", "login-count").await.unwrap().progress, 2);
    let days = row(&db, "cy", "login-days").await.unwrap();
    assert_eq!((days.progress, days.status.as_str()), (1, "in_progress"));
    let daily = row(&db, "cy", "login-daily").await.unwrap();
    assert_eq!((daily.progress, daily.status.as_str()), (1, "completed"));

    // Same UTC day again in a later flush: the daily increment does not count it.
    svc.third_party_client()
        .on_message(third_party_login("cy", "c3"))
        .await
        .unwrap();
    svc.login(login("cy", "c4", "2026-03-01T12:00:00+00:00"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let count = row(&db, "cy", "login-count").await.unwrap();
    // Four logins toward a target of 3: completed, and still counting.
    assert_eq!((count.progress, count.status.as_str()), (4, "completed"));
    // c3 had no timestamp: its day is today (arrival), a new day for login-days.
    let days = row(&db, "cy", "login-days").await.unwrap();
    assert_eq!((days.progress, days.status.as_str()), (2, "completed"));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_claimed_daily_goal_completes_again_on_a_later_utc_day_only() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;

    svc.stat(stat("di", "wins", 1.0, 1.0, "d1", "2026-04-01T08:00:00Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(
        row(&db, "di", "wins-daily").await.unwrap().status,
        "completed"
    );
    sqlx::query("UPDATE user_goal_progress SET status = 'claimed', claimed_at = now(), completed_at = COALESCE(completed_at, now()) WHERE user_id = 'di'")
        .execute(&db)
        .await
        .unwrap();

    svc.stat(stat("di", "wins", 2.0, 1.0, "d2", "2026-04-01T20:00:00Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let same_day = row(&db, "di", "wins-daily").await.unwrap();
    assert_eq!(
        (same_day.status.as_str(), same_day.claimed),
        ("claimed", true)
    );
    // The claimed daily-increment goal is untouched as well.
    assert_eq!(row(&db, "di", "wins-days").await.unwrap().status, "claimed");

    svc.stat(stat("di", "wins", 3.0, 1.0, "d3", "2026-04-02T00:00:01Z"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let next_day = row(&db, "di", "wins-daily").await.unwrap();
    assert_eq!(
        (
            next_day.status.as_str(),
            next_day.claimed,
            next_day.completed
        ),
        ("completed", false, true)
    );
    assert_eq!(row(&db, "di", "wins-days").await.unwrap().status, "claimed");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn claimed_and_inactive_rows_are_never_modified() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    sqlx::query(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at, is_active)
         VALUES ('ed', 'kills', 'combat', 'testgame', 10, 'claimed', now(), now(), true),
                ('ed', 'level', 'combat', 'testgame', 3, 'in_progress', NULL, NULL, false),
                ('ed', 'login-count', 'logins', 'testgame', 1, 'in_progress', NULL, NULL, false)",
    )
    .execute(&db)
    .await
    .unwrap();
    let before: Vec<(String, i32, String, chrono::NaiveDateTime)> =
        sqlx::query_as("SELECT goal_id, progress, status, updated_at FROM user_goal_progress WHERE user_id = 'ed' ORDER BY goal_id")
            .fetch_all(&db)
            .await
            .unwrap();

    svc.stat(stat("ed", "kills", 99.0, 5.0, "e1", ""))
        .await
        .unwrap();
    svc.stat(stat("ed", "level", 50.0, 1.0, "e2", ""))
        .await
        .unwrap();
    svc.login(login("ed", "e3", "")).await.unwrap();
    barrier(&svc, &db).await;

    let after: Vec<(String, i32, String, chrono::NaiveDateTime)> =
        sqlx::query_as("SELECT goal_id, progress, status, updated_at FROM user_goal_progress WHERE user_id = 'ed' AND goal_id IN ('kills','level','login-count') ORDER BY goal_id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(before, after);
    // Goals without a row were created as usual.
    assert_eq!(row(&db, "ed", "kills-total").await.unwrap().progress, 99);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn events_from_another_namespace_are_acknowledged_and_ignored() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    let mut foreign = stat("fi", "kills", 1.0, 1.0, "f1", "");
    foreign.namespace = "othergame".into();
    svc.stat(foreign)
        .await
        .expect("foreign events are acknowledged");
    let mut foreign_login = login("fi", "f2", "");
    foreign_login.namespace = String::new();
    svc.login(foreign_login).await.expect("acknowledged");
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "fi", "kills").await, None);
    assert_eq!(row(&db, "fi", "login-count").await, None);
    assert!(svc
        .metrics()
        .await
        .contains("challenge_event_handler_events_ignored_total 2"));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn each_invalid_event_gets_invalid_argument_naming_the_field_and_writes_nothing() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;

    let mut no_payload = stat("iv", "kills", 1.0, 1.0, "", "");
    no_payload.payload = None;
    let mut no_user = stat("", "kills", 1.0, 1.0, "", "");
    no_user.payload.as_mut().unwrap().user_id.clear();
    let no_code = stat("iv", "", 1.0, 1.0, "", "");
    let long_user = stat(&"u".repeat(101), "kills", 1.0, 1.0, "", "");
    let nan = stat("iv", "kills", f64::NAN, 1.0, "", "");
    let inf = stat("iv", "kills", 1.0, f64::INFINITY, "", "");
    // PostgreSQL stores no NUL in text: acknowledged, it would fail every flush.
    let nul_user = stat("iv\0", "kills", 1.0, 1.0, "", "");
    let cases = [
        (no_payload, "payload is required"),
        (no_user, "user_id is required"),
        (no_code, "payload.stat_code is required"),
        (
            long_user,
            "user_id is 101 characters; at most 100 are allowed",
        ),
        (nan, "payload.latest_value must be a finite number"),
        (inf, "payload.inc must be a finite number"),
        (nul_user, "user_id contains a NUL character"),
    ];
    for (msg, expected) in cases {
        let status = svc.stat(msg).await.expect_err(expected);
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}");
        assert!(
            status.message().contains(expected),
            "{:?} lacks {expected:?}",
            status.message()
        );
    }
    let mut login_without_user = login("", "", "");
    login_without_user.payload.as_mut().unwrap().user_account = None;
    let status = svc.login(login_without_user).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "user_id is required")
    );
    let mut login_with_nothing = login("", "", "");
    login_with_nothing.payload = None;
    let status = svc.login(login_with_nothing).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "user_id is required")
    );
    let deletion_without_user = gdpr_deletion("", "iv-gdpr");
    let status = svc.gdpr_deletion(deletion_without_user).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "user_id is required")
    );
    let mut deletion_long_user = gdpr_deletion(&"g".repeat(101), "iv-gdpr2");
    deletion_long_user.user_id = "top".into();
    let status = svc.gdpr_deletion(deletion_long_user).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "payload.deletion_gdpr.user_id is 101 characters; at most 100 are allowed"
        )
    );

    barrier(&svc, &db).await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_goal_progress WHERE user_id NOT LIKE 'sentinel-%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(rows, 0, "an invalid event wrote a row");
    assert!(svc
        .metrics()
        .await
        .contains(r#"challenge_event_handler_events_failed_total{reason="invalid"} 11"#));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_stat_code_is_acknowledged_and_writes_nothing() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    svc.stat(stat("un", "no-such-stat", 5.0, 1.0, "u1", ""))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_goal_progress WHERE user_id = 'un'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_event_id_counts_once_even_across_a_restart() {
    let e = env().await;
    let db = e.db.pool().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    svc.stat(stat("du", "kills", 0.0, 3.0, "dup-1", ""))
        .await
        .unwrap();
    svc.stat(stat("du", "kills", 0.0, 3.0, "dup-1", ""))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    svc.stat(stat("du", "kills", 0.0, 3.0, "dup-1", ""))
        .await
        .unwrap(); // across a flush
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "du", "kills").await.unwrap().progress, 3);
    assert!(svc
        .metrics()
        .await
        .contains("challenge_event_handler_events_duplicate_total 2"));
    svc.stop().await.unwrap();

    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    svc.stat(stat("du", "kills", 0.0, 3.0, "dup-1", ""))
        .await
        .unwrap();
    svc.stat(stat("du", "kills", 0.0, 1.0, "dup-2", ""))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "du", "kills").await.unwrap().progress, 4);
    assert!(svc
        .metrics()
        .await
        .contains("challenge_event_handler_events_duplicate_total 1"));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_database_down_calls_are_acknowledged_until_the_wal_is_full_then_unavailable_and_all_arrive_later(
) {
    let e = env().await;
    let db = e.db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let svc = Service::start(&url, e.dir.path(), &["--wal-max-bytes", "8KiB"]).await;

    proxy.set_down(true);
    let mut acknowledged: i64 = 0;
    let refusal = loop {
        assert!(acknowledged < 10_000, "the WAL bound was never reached");
        match svc
            .login(login(
                &format!("dn-{acknowledged}"),
                &format!("dn-{acknowledged}"),
                "",
            ))
            .await
        {
            Ok(()) => acknowledged += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::Unavailable);
    assert!(
        refusal.message().contains("write-ahead log is full"),
        "{}",
        refusal.message()
    );
    assert!(
        acknowledged > 10,
        "only {acknowledged} calls acknowledged before UNAVAILABLE"
    );
    let (status, body) = http_get(svc.http_addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(r#""wal_backlog_bytes":0"#), "{body}");
    assert!(body.contains(r#""ok":false"#), "{body}");
    // Still refused while the database is away.
    assert_eq!(
        svc.login(login("dn-more", "dn-more", ""))
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );

    proxy.set_down(false);
    // Every acknowledged login arrives, exactly once; the refused one does not.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let totals = loop {
        let totals: (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(progress) FROM user_goal_progress WHERE goal_id = 'login-count' AND user_id LIKE 'dn-%'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if totals.0 == acknowledged || std::time::Instant::now() > deadline {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(totals, (acknowledged, Some(acknowledged)));
    assert_eq!(row(&db, "dn-more", "login-count").await, None);
    // After the drain, calls are accepted again.
    svc.login(login("dn2", "dn2-1", "")).await.unwrap();
    wait_for_progress(&db, "dn2", "login-count", 1, WAIT).await;
    let (_, body) = http_get(svc.http_addr, "/healthz").await;
    assert!(body.contains(r#""ok":true"#), "{body}");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_database_down_every_acknowledged_increment_arrives_exactly_once() {
    let e = env().await;
    let db = e.db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let svc = Service::start(&url, e.dir.path(), &[]).await;

    proxy.set_down(true);
    // 30 users × 3 logins, acknowledged while the database is unreachable.
    for i in 0..90 {
        let user = format!("out-{}", i % 30);
        svc.login(login(&user, &format!("out-{i}"), ""))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // a few failed flushes
    assert_eq!(count_rows(&db).await, 0);
    proxy.set_down(false);
    for u in 0..30 {
        let r = wait_for_progress(
            &db,
            &format!("out-{u}"),
            "login-count",
            3,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(r.status, "completed");
    }
    assert!(svc
        .metrics()
        .await
        .contains("challenge_event_handler_flush_failures_total"));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_metrics_grpc_health_and_reflection_are_served() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    barrier(&svc, &db).await;

    let (status, body) = http_get(svc.http_addr, "/healthz").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "serving");
    assert_eq!(report["last_flush"]["ok"], true);
    assert!(report["wal_backlog_bytes"].is_u64());

    let metrics = svc.metrics().await;
    assert!(
        metrics.contains(r#"challenge_event_handler_events_processed_total{event="login"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("challenge_event_handler_wal_append_duration_seconds_count 1"),
        "{metrics}"
    );
    let disk: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("challenge_event_handler_wal_disk_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wal_disk_bytes exported");
    assert!(disk > 0, "the WAL's files take no space: {metrics}");

    // Each event service is marked serving where it is routed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(svc.channel.clone());
    for service in [
        "accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService",
        "accelbyte.iam.account.v1.UserAuthenticationUserThirdPartyLoggedInService",
        "accelbyte.social.statistic.v1.StatisticStatItemUpdatedService",
        "accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService",
    ] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(svc.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService",
        "accelbyte.iam.account.v1.UserAuthenticationUserThirdPartyLoggedInService",
        "accelbyte.social.statistic.v1.StatisticStatItemUpdatedService",
        "accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }

    // A client watching the server's health sees it go NOT_SERVING at the
    // stop, before its connection closes.
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(svc.stop());
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("no status at the stop")
        .unwrap()
        .expect("a status at the stop");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_table_the_challenge_service_made_before_m5_serves_the_type_rules_and_is_left_as_it_is() {
    let e = env().await;
    let db = e.db.pool().await;
    // The challenge service's table from before its M5 migrations: no baseline_value.
    sqlx::query(
        "CREATE TABLE user_goal_progress (
            user_id VARCHAR(100) NOT NULL, goal_id VARCHAR(100) NOT NULL,
            challenge_id VARCHAR(100) NOT NULL, namespace VARCHAR(100) NOT NULL,
            progress INT NOT NULL DEFAULT 0, status VARCHAR(20) NOT NULL DEFAULT 'not_started',
            completed_at TIMESTAMP NULL, claimed_at TIMESTAMP NULL,
            created_at TIMESTAMP NOT NULL DEFAULT NOW(), updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
            is_active BOOLEAN NOT NULL DEFAULT true, assigned_at TIMESTAMP NULL, expires_at TIMESTAMP NULL,
            PRIMARY KEY (user_id, goal_id),
            CONSTRAINT check_status CHECK (status IN ('not_started', 'in_progress', 'completed', 'claimed')))",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status) VALUES ('mi', 'kills', 'combat', 'testgame', 2, 'in_progress')")
        .execute(&db)
        .await
        .unwrap();
    let schema = e.db.dump_schema("user_goal_progress");
    let service_owned = ["--table-owner", "service"];
    let svc = Service::start(&e.db.url, e.dir.path(), &service_owned).await;
    svc.stat(stat("mi", "kills", 0.0, 1.0, "m1", ""))
        .await
        .unwrap();
    wait_for_progress(&db, "mi", "kills", 3, WAIT).await;
    svc.stop().await.unwrap();
    // A second start prepares its own tables again without error.
    let svc = Service::start(&e.db.url, e.dir.path(), &service_owned).await;
    svc.stop().await.unwrap();
    assert_eq!(
        e.db.dump_schema("user_goal_progress"),
        schema,
        "the handler changed the table"
    );
    // The M5 rules need the M5 columns: an M5 file refuses to start, saying why.
    let m5 = concat!(env!("CARGO_MANIFEST_DIR"), "/config/challenges.m5.json");
    let app = Service::build(
        &e.db.url,
        e.dir.path(),
        &["--table-owner", "service", "--config-path", m5],
    )
    .await
    .unwrap();
    let err = app
        .run_until_stopped(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no baseline_value or expires_at column"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_bad_challenges_file_stops_start_up_with_every_problem_named() {
    let e = env().await;
    let path = e.dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"challenges":[{"challengeId":"c","name":"C","goals":[{"goalId":"g","name":"G","eventSource":"statistic","requirment":{},"reward":{"type":"ITEM","rewardId":"x","quantity":1}}]}]}"#,
    )
    .unwrap();
    let err = match Service::build(
        &e.db.url,
        e.dir.path(),
        &["--config-path", path.to_str().unwrap()],
    )
    .await
    {
        Ok(_) => panic!("a bad challenges file was accepted"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("bad.json"), "{err}");
    assert!(
        err.contains(r#"challenge "c", goal "g", field "requirment": unknown key"#),
        "{err}"
    );
    assert!(
        err.contains(r#"challenge "c", goal "g", field "requirement": is required"#),
        "{err}"
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_and_writes_nothing() {
    let e = env().await;
    let svc = Service::start(
        &e.db.url,
        e.dir.path(),
        &["--grpc-max-message-bytes", "64KiB"],
    )
    .await;
    let db = e.db.pool().await;
    let mut huge = stat("big", "kills", 1.0, 1.0, "big-1", "");
    huge.payload.as_mut().unwrap().update_strategy = "x".repeat(100_000);
    let status = svc.stat(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "big", "kills").await, None);
    svc.stop().await.unwrap();
}

/// Five logins acknowledged behind a proxy and never flushed while serving;
/// `fault` (on) breaks the database before the stop, whose final flushes
/// cannot finish within the grace period: the stop is an error naming what
/// is left in the WAL, and once `fault` is off, the next start writes every
/// login. Returns the restarted service.
async fn a_stop_that_leaves_the_wal(
    e: &Env,
    tag: &str,
    extra: &[&str],
    fault: impl Fn(&proxy::Proxy, bool),
) -> Service {
    let db = e.db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let mut args = vec!["--flush-interval", "1h"];
    args.extend_from_slice(extra);
    let svc = Service::start(&url, e.dir.path(), &args).await;
    for i in 0..5 {
        svc.login(login(&format!("{tag}-{i}"), &format!("{tag}-{i}"), ""))
            .await
            .unwrap();
    }
    fault(&proxy, true);
    let err = svc
        .stop()
        .await
        .expect_err("updates left in the WAL make the stop an error exit");
    assert!(err.to_string().contains("left in the WAL"), "{err}");
    assert_eq!(count_rows(&db).await, 0);

    fault(&proxy, false);
    let svc = Service::start(&url, e.dir.path(), &[]).await;
    for i in 0..5 {
        wait_for_progress(&db, &format!("{tag}-{i}"), "login-count", 1, WAIT).await;
    }
    svc
}

#[tokio::test]
async fn a_failed_final_flush_leaves_the_wal_for_the_next_start() {
    // The final flushes fail for the whole grace period: the process stops
    // with an error that says what is left in the WAL (which keeps it).
    let e = env().await;
    let svc = a_stop_that_leaves_the_wal(&e, "ff", &["--shutdown-grace", "3s"], |p, on| {
        p.set_down(on)
    })
    .await;
    assert!(svc
        .metrics()
        .await
        .contains("challenge_event_handler_wal_replayed_total 20"));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_final_flush_cut_off_by_the_grace_period_on_a_silent_database_says_what_is_left() {
    // The database goes silent (it neither answers nor closes): the final
    // flush is still waiting when the grace period ends, and is abandoned
    // with its batch. The batch left memory, not the WAL: the stop must say
    // so (it exited 0 saying nothing, and `wal drain` said "empty").
    let e = env().await;
    let svc = a_stop_that_leaves_the_wal(
        &e,
        "fs",
        &["--shutdown-grace", "2s", "--flush-timeout", "60s"],
        |p, on| p.silence_all(on),
    )
    .await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_process_whose_instance_was_taken_over_stops_instead_of_writing() {
    let e = env().await;
    let db = e.db.pool().await;
    let dir_b = tempfile::tempdir().unwrap();
    let old = Service::start(&e.db.url, e.dir.path(), &["--instance-id", "shared-id"]).await;
    // A copy of the old volume (its instance name and volume id): the same
    // watermark row. A new volume under the same name would have its own.
    std::fs::create_dir_all(dir_b.path().join("wal")).unwrap();
    for file in ["instance_id", "volume_id"] {
        std::fs::copy(
            e.dir.path().join("wal").join(file),
            dir_b.path().join("wal").join(file),
        )
        .unwrap();
    }
    let new = Service::start(&e.db.url, dir_b.path(), &["--instance-id", "shared-id"]).await;

    // The old process still acknowledges (its WAL is durable) but may not write:
    // its next flush is refused and it stops by itself, with an error.
    old.login(login("zo", "zo-1", "")).await.unwrap();
    let err = old
        .wait_stopped(Duration::from_secs(20))
        .await
        .expect_err("a fenced process stops with an error");
    assert!(err.to_string().contains("fatal"), "{err}");
    assert_eq!(row(&db, "zo", "login-count").await, None);

    // The new owner works normally.
    new.login(login("zn", "zn-1", "")).await.unwrap();
    wait_for_progress(&db, "zn", "login-count", 1, WAIT).await;
    new.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_delivered_again_after_dedup_window_while_the_database_was_away_counts_once() {
    let e = env().await;
    let db = e.db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let svc = Service::start(
        &url,
        e.dir.path(),
        &["--flush-interval", "50ms", "--dedup-window", "1s"],
    )
    .await;
    proxy.set_down(true);
    svc.login(login("rd", "rd-1", "")).await.unwrap();
    svc.gdpr_deletion(gdpr_deletion("rg", "rg-gdpr"))
        .await
        .unwrap();
    // Past DEDUP_WINDOW the WAL forgets the marks and takes the redeliveries
    // again, while the first deliveries still wait for the database.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    svc.login(login("rd", "rd-1", "")).await.unwrap();
    svc.gdpr_deletion(gdpr_deletion("rg", "rg-gdpr"))
        .await
        .unwrap();
    proxy.set_down(false);
    wait_for_progress(&db, "rd", "login-count", 1, WAIT).await;
    barrier(&svc, &db).await;
    assert_eq!(row(&db, "rd", "login-count").await.unwrap().progress, 1);
    // The deletion's later delivery is not left pending (the alert reads it).
    let metrics = svc.metrics().await;
    assert!(
        metrics.contains("challenge_event_handler_gdpr_deletions_pending 0"),
        "{metrics}"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_flush_that_commits_after_its_batch_was_merged_is_not_written_again() {
    // One goal, one record an event: sequence numbers count logins.
    let e = env().await;
    let db = e.db.pool().await;
    let config = e.dir.path().join("one-goal.json");
    std::fs::write(
        &config,
        r#"{"challenges":[{"challengeId":"c","name":"C","goals":[
 {"goalId":"logins","name":"l","type":"increment","eventSource":"login",
  "requirement":{"operator":">=","targetValue":1000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}}]}]}"#,
    )
    .unwrap();
    let config = config.display().to_string();
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let svc = Service::start(
        &url,
        e.dir.path(),
        &["--flush-interval", "50ms", "--config-path", &config],
    )
    .await;
    svc.login(login("pc", "pc-1", "")).await.unwrap();
    wait_for_progress(&db, "pc", "logins", 1, WAIT).await;
    let watermark = || async {
        sqlx::query_scalar::<_, i64>("SELECT applied_seq FROM challenge_event_handler_watermark")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let w = watermark().await;

    // Four logins while the database is away: their flushes fail, and the
    // batch in doubt holds all four (sequence numbers w+1 ..= w+4).
    proxy.set_down(true);
    for i in 2..=5 {
        svc.login(login("pc", &format!("pc-{i}"), ""))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while !svc.metrics().await.lines().any(|l| {
        l.starts_with("challenge_event_handler_flush_failures_total") && !l.ends_with(" 0")
    }) {
        assert!(std::time::Instant::now() < deadline, "no flush failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What an earlier attempt, abandoned with its COMMIT in flight, leaves
    // when that COMMIT lands late: the first two logins and the watermark
    // past them.
    sqlx::query("UPDATE user_goal_progress SET progress = progress + 2 WHERE user_id = 'pc'")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE challenge_event_handler_watermark SET applied_seq = $1")
        .bind(w + 2)
        .execute(&db)
        .await
        .unwrap();
    proxy.set_down(false);

    // Only the two logins above the watermark are written again.
    wait_for_progress(&db, "pc", "logins", 5, WAIT).await;
    // Give a second write of the first two time to show, then look again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(row(&db, "pc", "logins").await.unwrap().progress, 5);
    assert!(watermark().await >= w + 4);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_cut_right_after_commit_neither_loses_nor_doubles_the_flush() {
    let e = env().await;
    let db = e.db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let svc = Service::start(&url, e.dir.path(), &["--flush-interval", "200ms"]).await;

    for round in 0..3 {
        proxy.cut_after_next_commit();
        for u in 0..20 {
            svc.stat(stat(
                &format!("cc-{u}"),
                "kills",
                0.0,
                2.0,
                &format!("cc-{u}-{round}"),
                "",
            ))
            .await
            .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while proxy.commit_cuts() <= round {
            assert!(
                std::time::Instant::now() < deadline,
                "no COMMIT was cut in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Each user got three increments of 2, each applied exactly once.
    for u in 0..20 {
        let r = wait_for_progress(&db, &format!("cc-{u}"), "kills", 6, WAIT).await;
        assert_eq!(r.status, "in_progress");
    }
    barrier(&svc, &db).await;
    for u in 0..20 {
        assert_eq!(
            row(&db, &format!("cc-{u}"), "kills")
                .await
                .unwrap()
                .progress,
            6
        );
    }
    assert_eq!(proxy.commit_cuts(), 3);
    assert!(svc
        .metrics()
        .await
        .contains("challenge_event_handler_flush_failures_total 3"));
    svc.stop().await.unwrap();
}

/// Sends raw bytes as the request body of `method`, so malformed protobuf can be tested.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::Channel;
    use tonic::Status;

    #[derive(Default)]
    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = ();
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
            buf.advance(buf.remaining());
            Ok(Some(()))
        }
    }

    pub async fn call(
        channel: &Channel,
        method: &'static str,
        body: Vec<u8>,
    ) -> Result<(), Status> {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        grpc.unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(method),
            RawCodec,
        )
        .await
        .map(|_| ())
    }
}

#[tokio::test]
async fn malformed_protobuf_and_a_message_sent_to_the_wrong_method_are_refused_and_write_nothing() {
    use prost::Message;
    const STAT: &str = "/accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage";
    const LOGIN: &str = "/accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage";
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;

    let body = stat("mf", "kills", 5.0, 2.0, "mf-1", "").encode_to_vec();
    let truncated = body[..body.len() / 2].to_vec();
    let status = raw::call(&svc.channel, STAT, truncated).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the request body is not a valid StatItemUpdated message: "),
        "{status:?}"
    );

    // A statItemUpdated body does not parse as a UserLoggedIn (or, where it
    // happens to, fails validation): bad input either way.
    let status = raw::call(&svc.channel, LOGIN, body.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The untouched body on its own method is fine.
    raw::call(&svc.channel, STAT, body).await.unwrap();
    barrier(&svc, &db).await;
    assert_eq!(
        row(&db, "mf", "kills").await.unwrap().progress,
        2,
        "only the well-formed call counted"
    );
    assert_eq!(
        row(&db, "mf", "login-count").await.map(|r| r.progress),
        Some(0),
        "the player's row (made by the handler at the first event), not moved by the login"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_login_without_a_payload_counts_for_its_top_level_user() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    let mut bare = login("np", "np-1", "");
    bare.payload = None;
    svc.login(bare)
        .await
        .expect("a payload-less login is valid");
    let mut third = third_party_login("ignored", "np-2");
    third.payload = None;
    third.user_id = "np".into();
    svc.third_party_client()
        .on_message(third)
        .await
        .expect("a payload-less third-party login is valid");
    wait_for_progress(&db, "np", "login-count", 2, WAIT).await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_goal_not_assigned_by_default_moves_only_a_row_the_challenge_service_made_active() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    // "login-opt" has "defaultAssigned": false. oa activated it, oi has it inactive,
    // on never had it.
    sqlx::query(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, status, is_active)
         VALUES ('oa', 'login-opt', 'logins', 'testgame', 'not_started', true),
                ('oi', 'login-opt', 'logins', 'testgame', 'not_started', false)",
    )
    .execute(&db)
    .await
    .unwrap();
    for user in ["oa", "oi", "on"] {
        for n in 0..3 {
            svc.login(login(user, &format!("{user}-{n}"), ""))
                .await
                .unwrap();
        }
    }
    barrier(&svc, &db).await;
    let active = row(&db, "oa", "login-opt").await.unwrap();
    assert_eq!((active.progress, active.status.as_str()), (3, "completed"));
    let inactive = row(&db, "oi", "login-opt").await.unwrap();
    assert_eq!(
        (inactive.progress, inactive.status.as_str()),
        (0, "not_started")
    );
    assert_eq!(
        row(&db, "on", "login-opt").await,
        None,
        "a goal was assigned by an event"
    );
    // Goals assigned by default get their rows from the first event, as before.
    for user in ["oa", "oi", "on"] {
        assert_eq!(row(&db, user, "login-count").await.unwrap().progress, 3);
    }
    svc.stop().await.unwrap();
}

/// The rows of `user` as (goal, progress), sorted.
/// The rows of `user` that events moved (the handler owns the table in
/// these tests, so a player also has a `not_started` row of every other
/// goal assigned by default).
async fn progress_rows(db: &sqlx::PgPool, user: &str) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT goal_id, progress FROM user_goal_progress
         WHERE user_id = $1 AND namespace = 'testgame' AND status <> 'not_started'
         ORDER BY goal_id",
    )
    .bind(user)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_gdpr_deletion_that_names_its_namespace_only_in_the_payload_is_applied() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    svc.stat(stat("gp", "kills", 5.0, 5.0, "gp-k1", ""))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(progress_rows(&db, "gp").await.len(), 2);

    // Accepted for this namespace by the payload's: deleted in that namespace.
    let mut deletion = gdpr_deletion("gp", "gp-gdpr");
    deletion.namespace.clear();
    svc.gdpr_deletion(deletion).await.unwrap();
    barrier(&svc, &db).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_goal_progress WHERE user_id = 'gp'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(rows, 0, "the deletion was acknowledged and not applied");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_gdpr_deletion_removes_the_users_rows_here_and_later_events_start_from_zero() {
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    for (user, n) in [("gd", 1), ("gd", 2), ("keep", 1)] {
        svc.stat(stat(user, "kills", 5.0, 5.0, &format!("{user}-k{n}"), ""))
            .await
            .unwrap();
        svc.login(login(user, &format!("{user}-l{n}"), ""))
            .await
            .unwrap();
    }
    // Flushed before the other namespace's row exists, so that the player's
    // first flush also gave them every goal assigned by default (the handler
    // owns the table here; a player with any row is initialized).
    barrier(&svc, &db).await;
    // The same user in another namespace (another game's handler wrote it).
    sqlx::query(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status)
         VALUES ('gd', 'other-kills', 'other-combat', 'othergame', 7, 'in_progress')",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(progress_rows(&db, "gd").await.len(), 5);
    let gd_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_goal_progress WHERE user_id = 'gd' AND namespace = 'testgame'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let keep_before = progress_rows(&db, "keep").await;

    // A deletion for another namespace is acknowledged and changes nothing.
    let mut foreign = gdpr_deletion("gd", "gdpr-foreign");
    foreign.namespace = "othergame".into();
    svc.gdpr_deletion(foreign).await.unwrap();
    barrier(&svc, &db).await;
    assert_eq!(progress_rows(&db, "gd").await.len(), 5);

    svc.gdpr_deletion(gdpr_deletion("gd", "gdpr-1"))
        .await
        .unwrap();
    // Acknowledged after the deletion: counts from zero.
    svc.stat(stat("gd", "kills", 1.0, 2.0, "gd-k3", ""))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(
        progress_rows(&db, "gd").await,
        [("kills".to_string(), 2), ("kills-total".to_string(), 1)]
    );
    assert_eq!(
        progress_rows(&db, "keep").await,
        keep_before,
        "another user's rows changed"
    );
    let other_namespace: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_goal_progress WHERE user_id = 'gd' AND namespace = 'othergame'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        other_namespace, 1,
        "only this deployment's namespace is deleted"
    );

    // The deletion redelivered (same event id) is harmless.
    svc.gdpr_deletion(gdpr_deletion("gd", "gdpr-1"))
        .await
        .unwrap();
    barrier(&svc, &db).await;
    assert_eq!(progress_rows(&db, "gd").await.len(), 2);

    let metrics = svc.metrics().await;
    // kills, kills-total, login-count, login-days, login-daily, and the
    // not_started rows of the other goals assigned by default.
    assert!(gd_rows > 5, "{gd_rows}");
    let deleted = format!("challenge_event_handler_gdpr_rows_deleted_total {gd_rows}");
    for line in [
        "challenge_event_handler_gdpr_deletions_total 1",
        deleted.as_str(),
        "challenge_event_handler_gdpr_deletions_pending 0",
        "challenge_event_handler_events_duplicate_total 1",
        r#"challenge_event_handler_events_processed_total{event="gdpr_deletion"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_gdpr_deletion_during_a_database_outage_drops_what_the_buffer_and_the_failed_flushes_held(
) {
    let e = env().await;
    let db = e.db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&e.db.url).await).await;
    let url = proxy.url_for(&e.db.url);
    let svc = Service::start(&url, e.dir.path(), &[]).await;
    svc.stat(stat("go", "kills", 3.0, 3.0, "go-1", ""))
        .await
        .unwrap();
    wait_for_progress(&db, "go", "kills", 3, WAIT).await;

    proxy.set_down(true);
    svc.stat(stat("go", "kills", 4.0, 4.0, "go-2", ""))
        .await
        .unwrap();
    svc.login(login("go", "go-3", "")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // failed flushes hold these
    svc.gdpr_deletion(gdpr_deletion("go", "go-gdpr"))
        .await
        .expect("acknowledged while the database is away: durable in the WAL");
    svc.stat(stat("go", "kills", 1.0, 1.0, "go-4", ""))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(row(&db, "go", "kills").await.unwrap().progress, 3);
    proxy.set_down(false);

    let r = wait_for_progress(&db, "go", "kills", 1, Duration::from_secs(60)).await;
    assert_eq!(r.status, "in_progress");
    assert_eq!(
        progress_rows(&db, "go").await,
        [("kills".to_string(), 1), ("kills-total".to_string(), 1)],
        "an update acknowledged before the deletion reached the database"
    );
    svc.stop().await.unwrap();
}

/// `flush_phase_seconds_total` says where the flushes' time went: every
/// phase of a committed flush is counted, together no more than the flushes
/// took, and a flush held at the cluster lock (another session holds it
/// exclusively, as a replica applying a GDPR deletion does) counts that wait
/// as `begin`.
#[tokio::test]
async fn a_flush_says_where_its_time_went_and_a_wait_for_the_cluster_lock_counts_as_begin() {
    const HELD: Duration = Duration::from_millis(1500);
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &[]).await;
    let db = e.db.pool().await;
    barrier(&svc, &db).await;

    hold_the_cluster_lock_while_a_flush_waits(&svc, &db, HELD).await;
    wait_for_progress(&db, "ana", "login-count", 1, WAIT).await;

    // The flush counts its phases just after its commit, which the row's
    // visibility can precede by a moment on busy cores.
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = svc.metrics().await;
        if flush_phase(&metrics, "begin") >= HELD.as_secs_f64()
            || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let phase = |p: &str| flush_phase(&metrics, p);
    assert!(
        phase("begin") >= HELD.as_secs_f64(),
        "the wait for the cluster lock is not in begin:\n{metrics}"
    );
    for p in ["read", "rules", "write", "commit"] {
        assert!(phase(p) > 0.0, "no time in {p}:\n{metrics}");
    }
    let (phases, flushes) = flush_seconds(&metrics);
    assert!(
        phases <= flushes,
        "the phases ({phases} s) add up to more than the flushes took ({flushes} s)"
    );
    svc.stop().await.unwrap();
}

/// The seconds committed flushes spent in `phase`.
fn flush_phase(metrics: &str, phase: &str) -> f64 {
    metric(
        metrics,
        &format!("challenge_event_handler_flush_phase_seconds_total{{phase=\"{phase}\"}}"),
    )
}

/// The committed flushes' seconds: all phases together, and as
/// `flush_duration_seconds` has them.
fn flush_seconds(metrics: &str) -> (f64, f64) {
    (
        sum_of(metrics, "challenge_event_handler_flush_phase_seconds_total"),
        metric(
            metrics,
            "challenge_event_handler_flush_duration_seconds_sum",
        ),
    )
}

/// Holds the cluster lock (as a replica applying a GDPR deletion does),
/// logs "ana" in, and lets go `held` after a flush (not the cluster's
/// upkeep) started waiting for it.
async fn hold_the_cluster_lock_while_a_flush_waits(
    svc: &Service,
    db: &sqlx::PgPool,
    held: Duration,
) {
    use challenge_event_handler::store::cluster::CLUSTER_LOCK;
    let mut holder = db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(CLUSTER_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    svc.login(login("ana", "p1", "")).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // This test's database only (pg_locks shows the whole cluster's,
        // and other tests hold the lock of theirs); a flush with no
        // deletion takes the lock shared, the cluster's upkeep, which may
        // wait for it too, exclusively.
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND NOT l.granted \
             AND a.datname = current_database() \
             AND a.query LIKE '%pg_advisory_xact_lock_shared%'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no flush waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(held).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(CLUSTER_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
}

/// A flush given up at FLUSH_TIMEOUT (here while it waits for the cluster
/// lock) adds nothing to `flush_phase_seconds_total` or to
/// `flush_duration_seconds`: they say what committed flushes cost, and
/// `flush_timeouts_total` / `flush_failures_total` count the rest.
#[tokio::test]
async fn a_flush_given_up_at_flush_timeout_adds_nothing_to_the_flush_phases() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const HELD: Duration = Duration::from_secs(4);
    let e = env().await;
    let svc = Service::start(&e.db.url, e.dir.path(), &["--flush-timeout", "1s"]).await;
    let db = e.db.pool().await;
    barrier(&svc, &db).await;

    hold_the_cluster_lock_while_a_flush_waits(&svc, &db, HELD).await;
    wait_for_progress(&db, "ana", "login-count", 1, WAIT).await;

    let metrics = svc.metrics().await;
    let timeouts = metric(&metrics, "challenge_event_handler_flush_timeouts_total");
    let failures = metric(&metrics, "challenge_event_handler_flush_failures_total");
    assert!(
        timeouts >= 2.0 && failures >= timeouts,
        "{timeouts} timeouts, {failures} failures while the lock was held {HELD:?}:\n{metrics}"
    );
    let phase = |p: &str| flush_phase(&metrics, p);
    // The attempts given up waited at least `timeouts` × TIMEOUT for the
    // lock; the one that committed waited less than TIMEOUT (it would have
    // been given up too), the flushes before it next to nothing.
    let given_up = timeouts * TIMEOUT.as_secs_f64();
    assert!(
        phase("begin") < given_up - TIMEOUT.as_secs_f64(),
        "begin holds the waits of flushes given up ({given_up} s of them):\n{metrics}"
    );
    let (phases, flushes) = flush_seconds(&metrics);
    assert!(
        phases <= flushes && flushes < given_up - TIMEOUT.as_secs_f64(),
        "phases {phases} s, committed flushes {flushes} s, given up {given_up} s:\n{metrics}"
    );
    svc.stop().await.unwrap();
}
