//! Failing loudly, on the real binary: a production start with no database
//! is refused naming the settings; `health` finds the service where `serve`
//! binds it; boolean settings take the usual spellings, and a bad setting
//! breaks only the commands that read it; a process allowed one CPU still
//! runs two runtime workers.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_production_start_without_a_database_is_refused_naming_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    // AB_NAMESPACE is what Extend always sets; the database settings are misspelt.
    let mut service = Binary::spawn_bare(
        dir.path(),
        CHALLENGES,
        &[
            ("AB_NAMESPACE", "mygame"),
            ("DATABSE_URL", "postgres://x@db/challenge_db"),
        ],
    );
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 1);
    let log = service.log_text();
    for named in ["DATABASE_URL", "DB_HOST", "AB_NAMESPACE", "sqlite://"] {
        assert!(log.contains(named), "{named} is not named:\n{log}");
    }
    assert!(
        !dir.path().join("data/progress.sqlite3").exists(),
        "nothing was served from a file in the container"
    );

    // Chosen on purpose, the embedded store serves the namespace.
    let file = dir.path().join("chosen.sqlite3");
    let url = format!("sqlite://{}", file.display());
    let mut chosen = Binary::spawn_bare(
        dir.path(),
        CHALLENGES,
        &[("AB_NAMESPACE", "mygame"), ("DATABASE_URL", &url)],
    );
    chosen.wait_healthy().await;
    assert!(file.exists());
    chosen.sigterm();
    assert_eq!(chosen.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn health_asks_the_port_serve_binds_from_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    // BIND_ADDRESS 0.0.0.0 (the image's): health asks 127.0.0.1.
    let mut service = Binary::spawn_bare(
        dir.path(),
        CHALLENGES,
        &[("METRICS_PORT", &port), ("BIND_ADDRESS", "0.0.0.0")],
    );
    service.wait_healthy().await;
    let (code, out, err) = cli(dir.path(), &["health"], &[("METRICS_PORT", &port)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"status\":\"serving\""), "{out}");
    // The default port is not where this service is.
    let (code, _, err) = cli(dir.path(), &["health"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("127.0.0.1:8080"), "{err}");
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// `serve` up to its settings check: LEDGER_WINDOW=10s is refused only when
/// the ledger is on, and TOMBSTONE_RETENTION=1s (checked after it) always,
/// so the setting named says how NO_LEDGER was read, and nothing starts.
fn read_no_ledger(dir: &std::path::Path, spelling: &str) -> (i32, String) {
    let (code, _, err) = cli(
        dir,
        &["serve"],
        &[
            ("NO_LEDGER", spelling),
            ("LEDGER_WINDOW", "10s"),
            ("TOMBSTONE_RETENTION", "1s"),
        ],
    );
    (code, err)
}

#[test]
fn boolean_settings_take_the_usual_spellings_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for on in ["1", "true", "TRUE", "yes", "on", "y"] {
        let (code, err) = read_no_ledger(dir.path(), on);
        assert_eq!(code, 1, "{on}: {err}");
        assert!(
            err.contains("invalid setting TOMBSTONE_RETENTION"),
            "{on} read as on: {err}"
        );
    }
    for off in ["0", "false", "no", "off", "n"] {
        let (code, err) = read_no_ledger(dir.path(), off);
        assert_eq!(code, 1, "{off}: {err}");
        assert!(
            err.contains("invalid setting LEDGER_WINDOW"),
            "{off} read as off: {err}"
        );
    }
    let (code, err) = read_no_ledger(dir.path(), "maybe");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("NO_LEDGER") || err.contains("--no-ledger"),
        "{err}"
    );
    assert!(err.contains("maybe"), "{err}");
}

#[tokio::test]
async fn a_bad_serve_setting_breaks_serve_and_not_the_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn_bare(dir.path(), CHALLENGES, &[]);
    service.wait_healthy().await;
    let http = service.http_addr().to_string();
    let bad = [("NO_MIGRATE", "perhaps"), ("WAL_MAX_BYTES", "lots")];
    let (code, out, err) = cli(dir.path(), &["health", "--addr", &http], &bad);
    assert_eq!(code, 0, "{out}{err}");
    let config = dir.path().join("challenges.json");
    let (code, out, err) = cli(
        dir.path(),
        &["check-config", "--config-path", config.to_str().unwrap()],
        &bad,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(dir.path(), &["serve"], &bad);
    assert_eq!(code, 2, "{err}");
    // The usual spellings of a boolean do not break anything.
    let (code, out, err) = cli(
        dir.path(),
        &["health", "--addr", &http],
        &[("NO_MIGRATE", "1")],
    );
    assert_eq!(code, 0, "{out}{err}");
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// A process allowed one CPU (a container's CPU limit, here `taskset -c 0`)
/// still runs two runtime workers: with one, every acknowledgement waited
/// behind the flush's CPU work (src/main.rs, MIN_WORKER_THREADS).
#[tokio::test]
async fn on_one_cpu_the_service_still_runs_two_worker_threads() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn_under(
        &["taskset", "-c", "0"],
        &db.url,
        dir.path(),
        CHALLENGES,
        &[],
    );
    service.wait_healthy().await;
    let pid = service.pid();
    let allowed = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap();
    assert_eq!(allowed, "0", "the service runs on one CPU");
    let log = service.log_text();
    assert!(
        log.contains("runtime_workers=2"),
        "not two runtime workers on one CPU:\n{log}"
    );
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// LOG_FORMAT=json (the manifests' setting): every line is one JSON object
/// with its fields at the top level, so the RUNBOOK's queries work: a GDPR
/// deletion's two audit lines carry `"audit":"gdpr_user_data_deletion"`
/// (the applied one with `rows_deleted`), and a start that cannot run ends
/// with a JSON line whose `error` says why.
#[tokio::test]
async fn json_logs_carry_the_gdpr_audit_fields_and_the_reason_a_start_failed() {
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = Binary::spawn(
        &db.url,
        dir.path(),
        &[("LOG_FORMAT", "json"), ("FLUSH_INTERVAL", "50ms")],
    );
    service.wait_healthy().await;
    let channel = service.channel().await;
    challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient::new(channel.clone())
        .on_message(login("js-user", "js-1", ""))
        .await
        .unwrap();
    challenge_event_handler::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(channel)
        .on_message(gdpr_deletion("js-user", "js-del"))
        .await
        .unwrap();
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
    let events: Vec<serde_json::Value> = service
        .log_text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let audit: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["audit"] == "gdpr_user_data_deletion")
        .collect();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit.iter().all(|e| e["user_id"] == "js-user"), "{audit:?}");
    let applied = audit
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("gdpr deletion applied")
        })
        .expect("an applied line");
    assert!(applied.get("rows_deleted").is_some(), "{applied}");
    assert!(audit.iter().any(|e| e["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("gdpr deletion acknowledged")));

    // A value the command line refuses, and a setting the service refuses.
    for (bad, says, exit) in [
        (("WAL_MAX_BYTES", "lots"), "WAL_MAX_BYTES", 2),
        (
            ("DATABASE_URL", "mysql://x"),
            "invalid setting DATABASE_URL",
            1,
        ),
    ] {
        let (code, _, err) = cli(
            dir.path(),
            &["serve"],
            &[
                ("LOG_FORMAT", "json"),
                ("DATABASE_URL", &db.url),
                ("AB_NAMESPACE", NAMESPACE),
                bad,
            ],
        );
        assert_eq!(code, exit, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let line: serde_json::Value = serde_json::from_str(&err).expect("a JSON line");
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(line["message"], "exiting", "{line}");
        assert!(
            line["error"].as_str().unwrap_or("").contains(says),
            "{line}"
        );
    }
}
