//! Secure by default, on the real binary: HTTP ingest on PostgreSQL is
//! closed without a token; tokens come from the environment and from a file
//! re-read when it changes; the open opt-in warns at every start; a client
//! over its rate gets 429 with Retry-After; ingest can have a port of its
//! own; the embedded quick start stays open, and says why.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn kills(user: &str, id: &str, inc: f64) -> Value {
    json!({"type": "stat", "id": id, "userId": user, "namespace": NAMESPACE,
           "statCode": "kills", "latestValue": inc, "inc": inc})
}

async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Vec<(String, String)>, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    http_request(addr, path, &headers, body.to_string().as_bytes()).await
}

/// A new database and the binary serving on it with `env` (and 100 ms
/// flushes), healthy. Bind every field: the database and the directory are
/// dropped with their binding.
struct Started {
    db: pg::TestDb,
    pool: sqlx::PgPool,
    dir: tempfile::TempDir,
    service: Binary,
}

async fn started(env: &[(&str, &str)]) -> Started {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![("FLUSH_INTERVAL", "100ms")];
    all.extend_from_slice(env);
    let mut service = Binary::spawn(&db.url, dir.path(), &all);
    service.wait_healthy().await;
    Started {
        db,
        pool,
        dir,
        service,
    }
}

/// The status of one `POST /v1/events`.
async fn event_status(addr: SocketAddr, token: Option<&str>, body: &Value) -> u16 {
    post(addr, "/v1/events", token, body).await.0
}

async fn metric(service: &Binary, line: &str) -> bool {
    http_get(service.http_addr(), "/metrics")
        .await
        .1
        .lines()
        .any(|l| l == line)
}

/// A gRPC event for `user`, waited for in the database: every HTTP write
/// acknowledged before it would be flushed by then too.
async fn flushed_past(service: &Binary, db: &sqlx::PgPool, user: &str) {
    use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
    let mut client = UserAuthenticationUserLoggedInServiceClient::new(service.channel().await);
    client
        .on_message(login(user, &format!("{user}-login"), ""))
        .await
        .expect("a gRPC login is acknowledged");
    wait_for_progress(db, user, "login-count", 1, WAIT).await;
}

#[tokio::test]
async fn on_postgresql_without_a_token_http_writes_are_refused_and_write_nothing() {
    let Started {
        db: _db,
        pool,
        dir: _dir,
        mut service,
    } = started(&[]).await;
    let log = service.log_text();
    assert!(log.contains("HTTP ingest is closed"), "{log}");

    for (path, body) in [
        ("/v1/events", kills("closed", "c-1", 999.0)),
        ("/v1/events/batch", json!([kills("closed", "c-2", 999.0)])),
    ] {
        let (status, _, text) = post(service.http_addr(), path, None, &body).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert!(
            text.contains("HTTP_INGEST_TOKEN_FILE") && text.contains("HTTP_INGEST_OPEN"),
            "the answer says how to enable it: {text}"
        );
        // A token is no way in while none is configured.
        let (status, _, _) = post(service.http_addr(), path, Some("guess"), &body).await;
        assert_eq!(status, 404, "{path}");
    }
    flushed_past(&service, &pool, "closed-probe").await;
    assert_eq!(row(&pool, "closed", "kills").await, None);
    assert!(
        metric(
            &service,
            r#"challenge_event_handler_events_failed_total{reason="unauthorized"} 4"#
        )
        .await
    );
    // Scrapes and health stay open.
    assert_eq!(http_get(service.http_addr(), "/healthz").await.0, 200);
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn tokens_from_the_environment_and_a_rotated_file_are_accepted_and_nothing_else() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let file = secrets.join("tokens");
    std::fs::write(&file, "# rotated 2026-12-01\nfile-old-7f3a5c9e\n").unwrap();
    let file_env = file.display().to_string();
    let mut service = Binary::spawn(
        &db.url,
        dir.path(),
        &[
            ("FLUSH_INTERVAL", "100ms"),
            ("HTTP_INGEST_TOKEN", "env-a-91c2,env-b-44d0"),
            ("HTTP_INGEST_TOKEN_FILE", &file_env),
        ],
    );
    service.wait_healthy().await;
    let addr = service.http_addr();
    assert!(metric(&service, "challenge_event_handler_http_ingest_tokens 3").await);

    for wrong in [
        None,
        Some("wrong"),
        Some("env-a-91c"),
        Some("env-a-91c2,env-b-44d0"),
    ] {
        let (status, headers, text) =
            post(addr, "/v1/events", wrong, &kills("tk", "w", 50.0)).await;
        assert_eq!(status, 401, "{wrong:?}: {text}");
        assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    }
    for (i, token) in ["env-a-91c2", "env-b-44d0", "file-old-7f3a5c9e"]
        .iter()
        .enumerate()
    {
        let (status, _, text) = post(
            addr,
            "/v1/events",
            Some(token),
            &kills("tk", &format!("ok-{i}"), 1.0),
        )
        .await;
        assert_eq!(status, 200, "{token}: {text}");
    }

    // Rotate as Kubernetes updates a mounted Secret: a new file swapped in.
    let next = secrets.join("tokens.next");
    std::fs::write(&next, "file-new-0b9e2d41\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let status =
            event_status(addr, Some("file-new-0b9e2d41"), &kills("tk", "new-1", 1.0)).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = event_status(addr, Some("file-old-7f3a5c9e"), &kills("tk", "old-2", 50.0)).await;
    assert_eq!(status, 401, "the token taken out of the file is refused");
    let status = event_status(addr, Some("env-a-91c2"), &kills("tk", "env-2", 1.0)).await;
    assert_eq!(status, 200, "the environment's tokens stay");
    assert!(metric(&service, "challenge_event_handler_http_ingest_tokens 3").await);

    // The key removed from the Secret: its tokens are revoked, the
    // environment's stay.
    std::fs::remove_file(&file).unwrap();
    let deadline = Instant::now() + WAIT;
    // One event id, sent until refused: it counts once if it was accepted
    // before the revocation (a redelivery of an acknowledged event).
    let mut accepted_before = 0;
    loop {
        match event_status(addr, Some("file-new-0b9e2d41"), &kills("tk", "gone-1", 1.0)).await {
            401 => break,
            status => assert_eq!(status, 200),
        }
        accepted_before = 1;
        assert!(
            Instant::now() < deadline,
            "a deleted file's token stayed accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&service, "challenge_event_handler_http_ingest_tokens 2").await);
    let status = event_status(addr, Some("env-b-44d0"), &kills("tk", "env-3", 1.0)).await;
    assert_eq!(status, 200, "the environment's tokens stay");
    service
        .wait_for_log("HTTP_INGEST_TOKEN_FILE is gone", WAIT)
        .await;

    let expected = 6 + accepted_before;
    wait_for_progress(&pool, "tk", "kills", expected, WAIT).await;
    flushed_past(&service, &pool, "tk-probe").await;
    assert_eq!(row(&pool, "tk", "kills").await.unwrap().progress, expected);
    let log = service
        .wait_for_log("HTTP ingest tokens reloaded", WAIT)
        .await;
    for token in [
        "env-a-91c2",
        "env-b-44d0",
        "file-old-7f3a5c9e",
        "file-new-0b9e2d41",
    ] {
        assert!(!log.contains(token), "a token is in the log:\n{log}");
    }
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn the_open_opt_in_warns_at_every_start_and_cannot_be_mixed_with_tokens() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    for start in 0..2 {
        let mut service = Binary::spawn(
            &db.url,
            dir.path(),
            &[("FLUSH_INTERVAL", "100ms"), ("HTTP_INGEST_OPEN", "yes")],
        );
        service.wait_healthy().await;
        let log = service.log_text();
        let warning = log
            .lines()
            .find(|l| l.contains("HTTP ingest is OPEN"))
            .unwrap_or_else(|| panic!("no warning at start {start}:\n{log}"));
        assert!(warning.contains("WARN"), "{warning}");
        let (status, _, text) = post(
            service.http_addr(),
            "/v1/events",
            None,
            &kills("op", &format!("op-{start}"), 2.0),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        service.sigterm();
        assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    }
    assert_eq!(row(&pool, "op", "kills").await.unwrap().progress, 4);

    let mut mixed = Binary::spawn(
        &db.url,
        dir.path(),
        &[
            ("HTTP_INGEST_OPEN", "true"),
            ("HTTP_INGEST_TOKEN", "t0k3n-x"),
        ],
    );
    assert_ne!(mixed.wait_exit(Duration::from_secs(30)).await, 0);
    let log = mixed.log_text();
    assert!(log.contains("invalid setting HTTP_INGEST_OPEN"), "{log}");
    assert!(!log.contains("t0k3n-x"), "{log}");

    let mut missing = Binary::spawn(
        &db.url,
        dir.path(),
        &[("HTTP_INGEST_TOKEN_FILE", "/nonexistent/tokens")],
    );
    assert_ne!(missing.wait_exit(Duration::from_secs(30)).await, 0);
    let log = missing.log_text();
    assert!(
        log.contains("HTTP_INGEST_TOKEN_FILE") && log.contains("/nonexistent/tokens"),
        "{log}"
    );
}

/// A client that sends its request's headers slowly, or not at all, is
/// cut off after the header-read timeout (10 s), before any token is
/// checked: it cannot hold connections and their buffers open at will.
#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Started {
        db: _db,
        pool: _pool,
        dir: _dir,
        mut service,
    } = started(&[("HTTP_INGEST_TOKEN", "trickle-token-5e6f7a8b")]).await;
    let mut stream = tokio::net::TcpStream::connect(service.http_addr())
        .await
        .unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1024];
    // A byte of header every second; the server must end the connection
    // (EOF, a reset, or a 408 answer) well before a minute.
    let closed = loop {
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buffer[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                break true;
            }
            Err(_) if started.elapsed() > Duration::from_secs(60) => break false,
            Err(_) => {
                if stream.write_all(b"1").await.is_err() {
                    break true;
                }
            }
        }
    };
    assert!(
        closed,
        "a trickling client held its connection for a minute"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "cut off before the timeout: {:?}",
        started.elapsed()
    );
    // The port still serves.
    let (status, _) = http_get(service.http_addr(), "/healthz").await;
    assert_eq!(status, 200);
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// Over its rate, a client is refused before its body is read: a body that
/// is not JSON gets 429, not 400 (the bucket, emptied by a batch of 100
/// events that fail validation at once, takes a second to hold one again).
#[tokio::test]
async fn a_client_over_its_rate_is_refused_before_its_body_is_parsed() {
    let Started {
        db: _db,
        pool: _pool,
        dir: _dir,
        mut service,
    } = started(&[
        ("HTTP_INGEST_TOKEN", "rate-body-token-0a1b2c"),
        ("HTTP_INGEST_RATE", "1"),
        ("HTTP_INGEST_BURST", "100"),
    ])
    .await;
    let addr = service.http_addr();
    let auth = [("Authorization", "Bearer rate-body-token-0a1b2c")];
    let batch: Vec<Value> = (0..100).map(|_| json!({"type": "stat"})).collect();
    let (status, _, text) = http_request(
        addr,
        "/v1/events/batch",
        &auth,
        json!(batch).to_string().as_bytes(),
    )
    .await;
    assert_ne!(status, 429, "{text}");
    let (status, headers, text) = http_request(addr, "/v1/events", &auth, b"not json").await;
    assert_eq!(status, 429, "{text}");
    assert!(
        headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("retry-after")),
        "{headers:?}"
    );
    assert!(text.contains("HTTP_INGEST_RATE"), "{text}");
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_it_is_counted() {
    let Started {
        db: _db,
        pool,
        dir: _dir,
        mut service,
    } = started(&[
        ("HTTP_INGEST_TOKEN", "rate-a,rate-b"),
        ("HTTP_INGEST_RATE", "1"),
        ("HTTP_INGEST_BURST", "100"),
    ])
    .await;
    let addr = service.http_addr();
    let batch: Vec<Value> = (0..100)
        .map(|i| kills(&format!("rl-{i}"), &format!("rl-{i}"), 1.0))
        .collect();
    let (status, _, text) = post(addr, "/v1/events/batch", Some("rate-a"), &json!(batch)).await;
    assert_eq!(status, 200, "{text}");
    // Three more at once: refused unless the first batch took over 3 s
    // (the bucket refills one a second), as it can on busy cores.
    let over: Vec<Value> = (0..3)
        .map(|i| kills(&format!("rl-over-{i}"), &format!("rl-over-{i}"), 1.0))
        .collect();
    let (status, headers, text) =
        post(addr, "/v1/events/batch", Some("rate-a"), &json!(over)).await;
    assert_eq!(status, 429, "{text}");
    let retry: u64 = header(&headers, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    assert!(text.contains("HTTP_INGEST_RATE"), "{text}");
    // Another token is another client.
    let status = event_status(addr, Some("rate-b"), &kills("rl-b", "rl-b", 1.0)).await;
    assert_eq!(status, 200);
    // After Retry-After, the first client may send again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, text) = post(
        addr,
        "/v1/events",
        Some("rate-a"),
        &kills("rl-later", "rl-later", 1.0),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        metric(
            &service,
            r#"challenge_event_handler_events_failed_total{reason="rate_limited"} 1"#
        )
        .await
    );
    flushed_past(&service, &pool, "rl-probe").await;
    assert_eq!(
        row(&pool, "rl-over-0", "kills").await,
        None,
        "the refused event wrote nothing"
    );
    assert!(row(&pool, "rl-99", "kills").await.is_some());
    assert!(row(&pool, "rl-later", "kills").await.is_some());
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn with_an_ingest_port_the_metrics_port_takes_no_writes() {
    let Started {
        db: _db,
        pool,
        dir: _dir,
        mut service,
    } = started(&[("HTTP_INGEST_PORT", "0"), ("HTTP_INGEST_TOKEN", "port-t")]).await;
    let (metrics_port, ingest) = (service.http_addr(), service.ingest_addr());
    assert_ne!(metrics_port, ingest);
    let status = event_status(metrics_port, Some("port-t"), &kills("ip", "ip-1", 1.0)).await;
    assert_eq!(status, 404, "no ingest on the metrics port");
    let (status, _, text) = post(
        ingest,
        "/v1/events",
        Some("port-t"),
        &kills("ip", "ip-2", 3.0),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        http_get(ingest, "/metrics").await.0,
        404,
        "no scrape on the ingest port"
    );
    assert_eq!(http_get(metrics_port, "/metrics").await.0, 200);
    wait_for_progress(&pool, "ip", "kills", 3, WAIT).await;
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn on_the_embedded_store_the_quick_start_posts_without_a_token_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn_bare(dir.path(), CHALLENGES, &[("FLUSH_INTERVAL", "50ms")]);
    service.wait_healthy().await;
    let log = service.log_text();
    assert!(
        log.contains(
            "HTTP ingest is open without a token because the store is the embedded development one"
        ),
        "{log}"
    );
    let (status, _, text) = post(
        service.http_addr(),
        "/v1/events",
        None,
        &json!({"type": "stat", "id": "ev-1", "userId": "bob", "namespace": "mygame",
                "statCode": "kills", "inc": 1}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"outcome\":\"written\""), "{text}");
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// An address whose token checks keep failing gets 429 for a while, whatever
/// it sends: the first 50 wrong guesses are answered 401, then the address
/// is slowed to 5 a second, so guessing a token never ends. A caller with a
/// token is not affected from another address.
#[tokio::test]
async fn an_address_guessing_tokens_is_slowed_down_and_it_is_counted() {
    let token = "g".repeat(32);
    let Started {
        db: _db,
        pool: _pool,
        dir: _dir,
        mut service,
    } = started(&[("HTTP_INGEST_TOKEN", &token)]).await;
    let addr = service.http_addr();
    let mut unauthorized = 0;
    let (headers, text) = loop {
        let guess = format!("guess-{unauthorized}");
        let (status, headers, text) =
            post(addr, "/v1/events", Some(&guess), &kills("gs", "gs-1", 1.0)).await;
        match status {
            401 => unauthorized += 1,
            429 => break (headers, text),
            other => panic!("{other}: {text}"),
        }
        assert!(unauthorized < 5_000, "guesses were never slowed down");
    };
    assert!(unauthorized >= 50, "slowed after {unauthorized} guesses");
    assert!(header(&headers, "retry-after").is_some());
    assert!(text.contains("wrong or missing bearer token"), "{text}");
    assert!(
        metric(
            &service,
            "challenge_event_handler_events_failed_total{reason=\"rate_limited\"} 1"
        )
        .await
    );
    // The right token from the same address waits too (a check is not
    // made), and is accepted once the address may be heard again.
    let deadline = Instant::now() + WAIT;
    while event_status(addr, Some(&token), &kills("gs", "gs-ok", 1.0)).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the address was never heard again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// The way docs/SECURITY.md recommends revoking every token of the file:
/// empty it. Every HTTP write is then refused (401), the metric says 0 and
/// the log says why; a start with the emptied file succeeds and refuses
/// writes too (a missing file would stop the start).
#[tokio::test]
async fn an_emptied_token_file_refuses_every_write_and_still_starts() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "only-token-5d1e9a7c\n").unwrap();
    let file_env = file.display().to_string();
    let env = [
        ("FLUSH_INTERVAL", "100ms"),
        ("HTTP_INGEST_TOKEN_FILE", file_env.as_str()),
    ];
    let mut service = Binary::spawn(&db.url, dir.path(), &env);
    service.wait_healthy().await;
    let addr = service.http_addr();
    let status = event_status(addr, Some("only-token-5d1e9a7c"), &kills("em", "e-1", 1.0)).await;
    assert_eq!(status, 200);

    std::fs::write(&file, "# revoked 2026-12-07\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while event_status(addr, Some("only-token-5d1e9a7c"), &kills("em", "e-1", 1.0)).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the emptied file's token stayed accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The line is logged after the metric is set.
    service
        .wait_for_log("the file holds no token, every HTTP write is refused", WAIT)
        .await;
    assert!(metric(&service, "challenge_event_handler_http_ingest_tokens 0").await);
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);

    let mut again = Binary::spawn(&db.url, dir.path(), &env);
    again.wait_healthy().await;
    let status = event_status(
        again.http_addr(),
        Some("only-token-5d1e9a7c"),
        &kills("em", "e-2", 1.0),
    )
    .await;
    assert_eq!(status, 401);
    assert!(metric(&again, "challenge_event_handler_http_ingest_tokens 0").await);
    again.sigterm();
    assert_eq!(again.wait_exit(Duration::from_secs(30)).await, 0);
}
