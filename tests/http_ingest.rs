//! HTTP JSON ingest end to end: the service in-process against a real
//! PostgreSQL, events posted to `/v1/events` and `/v1/events/batch`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = http_request(addr, path, &[], body.to_string().as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

fn stat_event(user: &str, id: &str, inc: f64) -> Value {
    json!({"type": "stat", "id": id, "userId": user, "namespace": NAMESPACE,
           "statCode": "kills", "latestValue": inc, "inc": inc})
}

#[tokio::test]
async fn one_event_is_acknowledged_once_durable_and_a_redelivery_counts_once() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&db.url, dir.path(), &["--http-ingest-open"]).await;
    let pool = db.pool().await;

    let (status, body) = post(svc.http_addr, "/v1/events", &stat_event("ha", "h-1", 3.0)).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"status": 200, "outcome": "written"}))
    );
    let (status, body) = post(svc.http_addr, "/v1/events", &stat_event("ha", "h-1", 3.0)).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
    let (status, body) = post(
        svc.http_addr,
        "/v1/events",
        &json!({"type": "login", "id": "h-2", "userId": "ha", "namespace": NAMESPACE,
                "timestamp": "2026-01-01T10:00:00Z"}),
    )
    .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("written")));
    let (_, body) = post(
        svc.http_addr,
        "/v1/events",
        &json!({"type": "thirdPartyLogin", "id": "h-3", "userId": "ha", "namespace": NAMESPACE}),
    )
    .await;
    assert_eq!(body["outcome"], "written");
    let (_, body) = post(
        svc.http_addr,
        "/v1/events",
        &json!({"type": "stat", "id": "h-4", "userId": "ha", "namespace": "othergame", "statCode": "kills"}),
    )
    .await;
    assert_eq!(body["outcome"], "ignored_other_namespace");

    wait_for_progress(&pool, "ha", "kills", 3, WAIT).await;
    wait_for_progress(&pool, "ha", "login-count", 2, WAIT).await;
    // The same path as gRPC: counted in the same metrics.
    let metrics = svc.metrics().await;
    assert!(
        metrics.contains(
            r#"challenge_event_handler_events_processed_total{event="stat_item_updated"} 3"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("challenge_event_handler_events_duplicate_total 1"));

    let (status, body) = post(
        svc.http_addr,
        "/v1/events",
        &json!({"type": "gdprDeletion", "id": "h-5", "userId": "ha", "namespace": NAMESPACE}),
    )
    .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("written")));
    barrier(&svc, &pool).await;
    assert_eq!(
        row(&pool, "ha", "kills").await,
        None,
        "the deletion did not apply"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_batch_answers_per_item_in_order() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&db.url, dir.path(), &["--http-ingest-open"]).await;
    let pool = db.pool().await;

    let batch = json!([
        stat_event("hb", "b-1", 2.0),
        {"type": "stat", "id": "b-2", "userId": "hb", "namespace": NAMESPACE, "statCode": "kills", "inc": "two"},
        stat_event("hb", "b-3", 5.0),
        stat_event("hb", "b-1", 2.0),
    ]);
    let (status, body) = post(svc.http_addr, "/v1/events/batch", &batch).await;
    assert_eq!(status, 207, "{body}");
    let results = body["results"].as_array().unwrap();
    let summary: Vec<(u64, u64)> = results
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(summary, [(0, 200), (1, 400), (2, 200), (3, 200)]);
    assert_eq!(results[1]["errors"][0]["field"], "inc");
    // Items 0 and 3 share an id: one of them is the duplicate.
    let outcomes: Vec<&str> = [0, 3]
        .iter()
        .map(|&i| results[i]["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"written") && outcomes.contains(&"duplicate"),
        "{outcomes:?}"
    );
    wait_for_progress(&pool, "hb", "kills", 7, WAIT).await;

    let (status, body) = post(
        svc.http_addr,
        "/v1/events/batch",
        &json!([stat_event("hb", "b-4", 1.0)]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let too_many: Vec<Value> = (0..101)
        .map(|i| stat_event("hb", &format!("m-{i}"), 1.0))
        .collect();
    let (status, body) = post(svc.http_addr, "/v1/events/batch", &json!(too_many)).await;
    assert_eq!(status, 400);
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("at most 100 events, got 101"));
    let (status, body) = post(
        svc.http_addr,
        "/v1/events/batch",
        &stat_event("hb", "x", 1.0),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["message"],
        "a batch must be a JSON array of events"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_400_naming_each_field_and_write_nothing() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(
        &db.url,
        dir.path(),
        &["--http-max-body-bytes", "2KiB", "--http-ingest-open"],
    )
    .await;
    let pool = db.pool().await;
    let cases = [
        (
            json!({"type": "stat", "id": "e1", "userId": "hx", "namespace": NAMESPACE, "statCode": "kills", "latestValue": "high"}),
            "latestValue",
            "must be a number, got the string \"high\"",
        ),
        (
            json!({"type": "stat", "id": "e2", "userId": "hx", "namespace": NAMESPACE}),
            "statCode",
            "is required",
        ),
        (
            json!({"type": "login", "id": "e3", "namespace": NAMESPACE}),
            "userId",
            "is required",
        ),
        (
            json!({"type": "login", "id": "e4", "userId": "u".repeat(101), "namespace": NAMESPACE}),
            "userId",
            "is 101 characters; at most 100 are allowed",
        ),
        (
            json!({"type": "login", "id": "e5", "userId": "hx", "namespace": NAMESPACE, "statcode": "typo"}),
            "statcode",
            "unknown field",
        ),
        (
            json!({"type": "weekly", "userId": "hx", "namespace": NAMESPACE}),
            "type",
            "must be login, thirdPartyLogin, stat or gdprDeletion",
        ),
        (
            json!({"type": "login", "userId": "hx"}),
            "namespace",
            "is required",
        ),
    ];
    for (event, field, message) in cases {
        let (status, body) = post(svc.http_addr, "/v1/events", &event).await;
        assert_eq!(status, 400, "{event}: {body}");
        let errors = body["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field && e["message"].as_str().unwrap().contains(message)),
            "{event}: {body}"
        );
    }
    let (status, _, text) = http_request(
        svc.http_addr,
        "/v1/events",
        &[],
        br#"{"type": "login", "userId": "#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("the body is not valid JSON"), "{text}");

    // Over HTTP_MAX_BODY_BYTES.
    let big =
        json!({"type": "login", "id": "x".repeat(4000), "userId": "hx", "namespace": NAMESPACE});
    let (status, _, _) =
        http_request(svc.http_addr, "/v1/events", &[], big.to_string().as_bytes()).await;
    assert_eq!(status, 413);

    barrier(&svc, &pool).await;
    assert_eq!(row(&pool, "hx", "login-count").await, None);
    // Every refusal is counted, as gRPC refusals are: 7 bad events and the
    // broken JSON, and the body over the limit.
    let metrics = svc.metrics().await;
    for line in [
        r#"challenge_event_handler_events_failed_total{reason="invalid"} 8"#,
        r#"challenge_event_handler_events_failed_total{reason="too_large"} 1"#,
        r#"challenge_event_handler_events_failed_total{reason="unauthorized"} 0"#,
    ] {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }
    // The error-rate alert divides refusals by what was received: the
    // refusals before an event's type was read are received too.
    let (received, failed) = (
        sum_of(&metrics, "challenge_event_handler_events_total"),
        sum_of(&metrics, "challenge_event_handler_events_failed_total"),
    );
    assert_eq!(failed, 9.0, "{metrics}");
    assert!(
        received >= failed,
        "{failed} refused of {received} received:\n{metrics}"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn with_an_ingest_token_a_request_needs_it() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&db.url, dir.path(), &["--http-ingest-token", "s3cret"]).await;
    let body = stat_event("ht", "t-1", 1.0).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let (status, h, text) =
            http_request(svc.http_addr, "/v1/events", &headers, body.as_bytes()).await;
        assert_eq!(status, 401, "{auth:?}: {text}");
        assert_eq!(header(&h, "www-authenticate"), Some("Bearer"));
    }
    let (status, _, text) = http_request(
        svc.http_addr,
        "/v1/events",
        &[("Authorization", "Bearer s3cret")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // Health and metrics stay open.
    assert_eq!(http_get(svc.http_addr, "/healthz").await.0, 200);
    let metrics = svc.metrics().await;
    let line = r#"challenge_event_handler_events_failed_total{reason="unauthorized"} 4"#;
    assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn under_backpressure_the_answer_is_503_with_retry_after_and_nothing_is_lost() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = db.pool().await;
    let proxy = proxy::Proxy::start(proxy::upstream_of(&db.url).await).await;
    let url = proxy.url_for(&db.url);
    let svc = Service::start(
        &url,
        dir.path(),
        &["--wal-max-bytes", "4KiB", "--http-ingest-open"],
    )
    .await;
    proxy.set_down(true);
    let mut acknowledged = 0;
    let (headers, body) = loop {
        assert!(acknowledged < 5000, "the WAL bound was never reached");
        let event = json!({"type": "login", "id": format!("bp-{acknowledged}"),
                           "userId": format!("bp-{acknowledged}"), "namespace": NAMESPACE});
        let (status, headers, body) = http_request(
            svc.http_addr,
            "/v1/events",
            &[],
            event.to_string().as_bytes(),
        )
        .await;
        match status {
            200 => acknowledged += 1,
            503 => break (headers, body),
            other => panic!("unexpected {other}: {body}"),
        }
    };
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(body.contains("write-ahead log is full"), "{body}");
    proxy.set_down(false);
    for i in [0, acknowledged - 1] {
        wait_for_progress(
            &pool,
            &format!("bp-{i}"),
            "login-count",
            1,
            Duration::from_secs(60),
        )
        .await;
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_goal_progress WHERE goal_id = 'login-count' AND user_id LIKE 'bp-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, acknowledged as i64);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn before_the_service_serves_ingest_answers_503_with_retry_after() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // The database is unreachable, so start-up waits before serving.
    let proxy = proxy::Proxy::start(proxy::upstream_of(&db.url).await).await;
    proxy.set_down(true);
    let url = proxy.url_for(&db.url);
    let app = Service::build(&url, dir.path(), &["--http-ingest-open"])
        .await
        .unwrap();
    let http = app.http_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(app.run_until_stopped(stop.clone()));
    let body = stat_event("hs", "s-1", 1.0).to_string();
    let (status, headers, text) = loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(http),
        )
        .await
        {
            break http_request(http, "/v1/events", &[], body.as_bytes()).await;
        }
    };
    assert_eq!(status, 503, "{text}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(text.contains("not serving"), "{text}");
    assert_eq!(http_get(http, "/healthz").await.0, 503);
    stop.cancel();
    run.await.unwrap().unwrap();
}
