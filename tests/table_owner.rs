//! `user_goal_progress` belongs to AccelByte's challenge service
//! (docs/DESIGN.md, "Who owns the table"), on the real binary and a real
//! PostgreSQL:
//!
//! - on a table the service's migrations made, the handler changes nothing
//!   of its schema (`pg_dump --schema-only` byte-identical) and decides, and
//!   records, that the service owns it;
//! - with no table and TABLE_OWNER unset it waits, not ready, naming the
//!   table and the setting, and serves once the service has migrated;
//! - started first with TABLE_OWNER=handler it creates exactly what the
//!   service's migrations 001 + 002 create and leaves `schema_migrations` at
//!   version 2, so the service, started afterwards, migrates cleanly (nothing
//!   to run); racing the service's migration, the two serialize on
//!   golang-migrate's lock; the service's next migration (003, on its
//!   unmerged M6 branch) applies cleanly after it;
//! - the per-row state an older build kept in columns it added is copied to
//!   the handler's own table.

mod common;

use std::time::Duration;

use challenge_event_handler::store::{Database, Prepared, ProgressStore, Store, TableOwner};
use common::challenge_service::ChallengeService;
use common::{
    cli, http_get, json_row, login, m5_config, metric, pg, shipped_challenges, stat, wait_for_rows,
    Binary, NAMESPACE,
};

async fn schema_migrations(pool: &sqlx::PgPool) -> Vec<(i64, bool)> {
    sqlx::query_as("SELECT version, dirty FROM schema_migrations")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn recorded_owner(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar(
        "SELECT value FROM challenge_event_handler_settings WHERE name = 'table_owner'",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// A new database with no table, and the handler started on it with
/// TABLE_OWNER=handler (it creates the table), serving.
async fn the_handler_owning_a_new_database() -> (pg::TestDb, sqlx::PgPool, tempfile::TempDir, Binary)
{
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut handler = Binary::spawn_with_config(
        &db.url,
        dir.path(),
        &m5_config(),
        &[("TABLE_OWNER", "handler")],
    );
    handler.wait_healthy().await;
    (db, pool, dir, handler)
}

#[tokio::test]
async fn on_a_table_the_service_migrated_the_handler_leaves_its_schema_byte_identical() {
    let db = pg::TestDb::new().await;
    db.migrate_as_the_challenge_service().await;
    let pool = db.pool().await;
    let before = db.dump_schema("user_goal_progress");
    let versions = schema_migrations(&pool).await;
    assert_eq!(versions, [(2, false)]);

    let dir = tempfile::tempdir().unwrap();
    let unset = [("TABLE_OWNER", "")];
    let mut handler = Binary::spawn_with_config(&db.url, dir.path(), &m5_config(), &unset);
    handler.wait_healthy().await;
    // The lines deploy/README.md's "Check" step looks for, in that order.
    let log = handler
        .wait_for_log(
            "serving: events are acknowledged from now on",
            Duration::from_secs(20),
        )
        .await;
    let loaded = log
        .find("challenges loaded")
        .expect("a challenges loaded line");
    assert!(loaded < log.find("serving: events").unwrap(), "{log}");
    assert!(
        log.contains(
            "the challenge service owns user_goal_progress: events update existing rows only"
        ) && log.contains("existed when the handler first started"),
        "{log}"
    );
    // A player the service never initialized: no row, and the log says why
    // and which setting changes it.
    let channel = handler.channel().await;
    let mut stats = challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient::new(channel);
    stats
        .on_message(stat("ghost", "kills", 5.0, 5.0, "ghost-1", ""))
        .await
        .unwrap();
    let log = handler
        .wait_for_log(
            "updates for players with no row in user_goal_progress were not applied",
            Duration::from_secs(20),
        )
        .await;
    assert!(
        log.contains("set TABLE_OWNER=handler") && log.contains("players=1"),
        "{log}"
    );
    // Serve a player the service initialized, then stop.
    let service = ChallengeService::new(pool.clone(), &dir.path().join("challenges.json"));
    service.initialize("p1", NAMESPACE).await;
    stats
        .on_message(stat("p1", "kills", 30.0, 12.0, "p1-1", ""))
        .await
        .unwrap();
    handler.sigterm();
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 0);
    let row = service.row("p1", "daily-kills").await.unwrap();
    assert_eq!(
        (row.progress, row.baseline_value, row.status.as_str()),
        (30, Some(18), "completed")
    );

    assert_eq!(
        db.dump_schema("user_goal_progress"),
        before,
        "the handler changed the table"
    );
    assert_eq!(
        schema_migrations(&pool).await,
        versions,
        "the handler changed schema_migrations"
    );
    assert_eq!(recorded_owner(&pool).await.as_deref(), Some("service"));
    // The service's migrations, run again at its next start, find nothing to do.
    let ran = pg::golang_migrate_up(&pool, &pg::challenge_service_migrations()).await;
    assert_eq!(ran, Ok(vec![]));

    // A later start keeps the decision it recorded.
    let mut again = Binary::spawn_with_config(&db.url, dir.path(), &m5_config(), &unset);
    again.wait_healthy().await;
    assert!(again
        .log_text()
        .contains(r#"the handler recorded "service" at an earlier start"#));
}

#[tokio::test]
async fn with_no_table_it_waits_not_ready_naming_the_table_and_the_setting_until_the_service_migrates(
) {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut handler =
        Binary::spawn_with_config(&db.url, dir.path(), &m5_config(), &[("TABLE_OWNER", "")]);
    let log = handler
        .wait_for_log(
            "not ready: user_goal_progress does not exist",
            Duration::from_secs(30),
        )
        .await;
    assert!(log.contains("Set TABLE_OWNER=handler"), "{log}");
    let http = handler.logged_http_addr().expect("the logged HTTP address");
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(r#""waiting_for":"user_goal_progress does not exist"#),
        "{body}"
    );
    // What the NotServing and ReplicaDown alerts read, and what the
    // image's HEALTHCHECK runs.
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(metric(&metrics, "challenge_event_handler_phase"), 0.0);
    let (code, out, err) = cli(dir.path(), &["health", "--addr", &http.to_string()], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('user_goal_progress') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!exists, "the handler created the table it was told not to");

    // The challenge service starts and migrates: the handler serves.
    assert_eq!(
        pg::golang_migrate_up(&pool, &pg::challenge_service_migrations()).await,
        Ok(vec![1, 2])
    );
    handler.wait_healthy().await;
    assert!(handler
        .log_text()
        .contains("the challenge service owns user_goal_progress"));
    assert_eq!(recorded_owner(&pool).await.as_deref(), Some("service"));
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(metric(&metrics, "challenge_event_handler_phase"), 2.0);
    let (code, out, err) = cli(dir.path(), &["health", "--addr", &http.to_string()], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn started_first_as_the_tables_owner_it_creates_the_services_schema_and_the_service_then_migrates_cleanly(
) {
    let reference = pg::TestDb::new().await;
    reference.migrate_as_the_challenge_service().await;
    let (db, pool, dir, mut handler) = the_handler_owning_a_new_database().await;
    let log = handler.log_text();
    assert!(
        log.contains("the handler owns user_goal_progress")
            && log.contains(
                "created user_goal_progress as the challenge service's migrations 001 and 002 do"
            ),
        "{log}"
    );
    assert_eq!(
        db.dump_schema("user_goal_progress"),
        reference.dump_schema("user_goal_progress"),
        "not what the service's migrations create"
    );
    assert_eq!(schema_migrations(&pool).await, [(2, false)]);

    // The handler owns the table: a player's first event gives them every
    // goal assigned by default, as the service's Initialize would.
    let channel = handler.channel().await;
    challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient::new(channel)
        .on_message(login("p2", "p2-1", ""))
        .await
        .unwrap();
    handler.sigterm();
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 0);
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT goal_id, progress, status FROM user_goal_progress WHERE user_id = 'p2' ORDER BY goal_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let goals: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        goals,
        [
            "daily-kills",
            "daily-login",
            "daily-wins-once",
            "first-login",
            "monthly-kills",
            "season-wins",
            "weekly-kills"
        ],
        "every goal assigned by default, and only those"
    );
    assert!(
        rows.iter()
            .any(|r| r.0 == "first-login" && r.1 == 1 && r.2 == "completed"),
        "{rows:?}"
    );

    // The challenge service starts afterwards: nothing to migrate, nothing changed.
    assert_eq!(
        pg::golang_migrate_up(&pool, &pg::challenge_service_migrations()).await,
        Ok(vec![])
    );
    assert_eq!(
        db.dump_schema("user_goal_progress"),
        reference.dump_schema("user_goal_progress")
    );
    assert_eq!(recorded_owner(&pool).await.as_deref(), Some("handler"));
    // And the handler, restarted without the setting, keeps what it recorded.
    let mut again =
        Binary::spawn_with_config(&db.url, dir.path(), &m5_config(), &[("TABLE_OWNER", "")]);
    again.wait_healthy().await;
    assert!(again
        .log_text()
        .contains(r#"the handler recorded "handler" at an earlier start"#));
}

/// AccelByte's unmerged M6 branch of the challenge service adds migration
/// 003 (an index on `expires_at`, tests/fixtures/challenge-service-m6): a
/// table the handler created takes it cleanly, and once the service owns
/// the table at version 3 the handler updates its rows and leaves the
/// schema byte-identical.
#[tokio::test]
async fn the_services_m6_migration_applies_to_a_table_the_handler_created_and_is_left_alone() {
    let m6 = pg::challenge_service_migrations_m6();
    let reference = pg::TestDb::new().await;
    assert_eq!(
        pg::golang_migrate_up(&reference.pool().await, &m6).await,
        Ok(vec![1, 2, 3])
    );
    let (db, pool, dir, mut handler) = the_handler_owning_a_new_database().await;
    handler.sigterm();
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 0);
    assert_eq!(schema_migrations(&pool).await, [(2, false)]);

    // The M6 service starts: it runs 003 alone, and the schema is its own.
    assert_eq!(pg::golang_migrate_up(&pool, &m6).await, Ok(vec![3]));
    assert_eq!(schema_migrations(&pool).await, [(3, false)]);
    let migrated = db.dump_schema("user_goal_progress");
    assert_eq!(migrated, reference.dump_schema("user_goal_progress"));

    // The service takes the table over; the handler, told so, serves it.
    let mut handler = Binary::spawn_with_config(
        &db.url,
        dir.path(),
        &m5_config(),
        &[("TABLE_OWNER", "service")],
    );
    handler.wait_healthy().await;
    let service = ChallengeService::new(pool.clone(), &dir.path().join("challenges.json"));
    service.initialize("p1", NAMESPACE).await;
    let channel = handler.channel().await;
    challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient::new(channel)
        .on_message(stat("p1", "kills", 30.0, 12.0, "p1-1", ""))
        .await
        .unwrap();
    handler.sigterm();
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 0);
    let row = service.row("p1", "daily-kills").await.unwrap();
    assert_eq!(
        (row.progress, row.baseline_value, row.status.as_str()),
        (30, Some(18), "completed")
    );
    assert_eq!(db.dump_schema("user_goal_progress"), migrated);
    assert_eq!(schema_migrations(&pool).await, [(3, false)]);
    assert_eq!(recorded_owner(&pool).await.as_deref(), Some("service"));
}

#[tokio::test]
async fn racing_the_services_migration_the_two_serialize_on_golang_migrates_lock() {
    for round in 0..4 {
        let db = pg::TestDb::new().await;
        let pool = db.pool().await;
        let store = Store::connect_lazy(
            &Database::Postgres(Box::new(db.url.parse().unwrap())),
            2,
            100,
        );
        let migrations = pg::challenge_service_migrations();
        let (prepared, migrated) = tokio::join!(
            store.prepare(Some(TableOwner::Handler), true),
            pg::golang_migrate_up(&pool, &migrations),
        );
        assert!(
            matches!(prepared, Ok(Prepared::Ready { .. })),
            "round {round}: {prepared:?}"
        );
        let ran = migrated
            .unwrap_or_else(|e| panic!("round {round}: the service's migration failed: {e}"));
        assert!(
            ran == vec![1, 2] || ran.is_empty(),
            "round {round}: {ran:?}"
        );
        assert_eq!(
            schema_migrations(&pool).await,
            [(2, false)],
            "round {round}"
        );
    }
}

#[tokio::test]
async fn the_state_an_older_build_kept_in_columns_it_added_is_copied_to_the_handlers_table() {
    // "Counted today" must still be today when the login below arrives.
    common::challenge_service::away_from_midnight(Duration::from_secs(120)).await;
    let db = pg::TestDb::new().await;
    db.migrate_as_the_challenge_service().await;
    let pool = db.pool().await;
    // What the previous build's migration did to the service's table.
    for column in [
        "target_value INT NULL",
        "last_event_at TIMESTAMP NULL",
        "last_counted_day DATE NULL",
    ] {
        sqlx::query(&format!(
            "ALTER TABLE user_goal_progress ADD COLUMN {column}"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    // A daily goal counted today by the previous build.
    sqlx::query(&format!(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status,
             completed_at, last_event_at, last_counted_day)
         VALUES ('old', 'login-daily', 'logins', '{NAMESPACE}', 1, 'completed', NOW(), NOW(),
                 (NOW() AT TIME ZONE 'UTC')::date)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut handler = Binary::spawn(&db.url, dir.path(), &[("TABLE_OWNER", "service")]);
    handler.wait_healthy().await;
    assert!(handler
        .log_text()
        .contains("their state now lives in challenge_event_handler_goal_state"));
    let copied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM challenge_event_handler_goal_state
         WHERE user_id = 'old' AND goal_id = 'login-daily' AND last_counted_day IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(copied, 1);
    // Today was counted: a login today does not complete the day again.
    let channel = handler.channel().await;
    challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient::new(channel)
        .on_message(login("old", "old-1", ""))
        .await
        .unwrap();
    handler.sigterm();
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 0);
    let (completed_at, last_event_at): (Option<chrono::NaiveDateTime>, Option<chrono::NaiveDateTime>) =
        sqlx::query_as("SELECT completed_at, last_event_at FROM user_goal_progress WHERE user_id = 'old' AND goal_id = 'login-daily'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(completed_at, last_event_at, "the day was counted again");
}

/// docker-compose.yml runs PostgreSQL and the handler, and no challenge
/// service: with its settings (the database and the data directory aside)
/// the handler serves on a fresh PostgreSQL, and the file's own commands
/// (`send --user alice login`, `progress --user alice`) show a goal complete.
#[tokio::test]
async fn docker_compose_s_settings_serve_on_a_fresh_postgresql_and_its_commands_show_progress() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();
    let db = pg::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env: Vec<(String, String)> = compose["services"]["challenge-event-handler"]
        ["environment"]
        .as_mapping()
        .expect("the handler's environment")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
            };
            (k.as_str().unwrap().to_owned(), value)
        })
        .filter(|(k, _)| k != "DATABASE_URL")
        .collect();
    env.push(("DATABASE_URL".into(), db.url.clone()));
    env.push(("DATA_DIR".into(), data.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut service = Binary::spawn_bare(dir.path(), &shipped_challenges(), &env);
    service.wait_healthy().await;

    let grpc = service.grpc_url();
    let (code, out, err) = cli(
        dir.path(),
        &["send", "--addr", &grpc, "--user", "alice", "login"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_for_rows(dir.path(), &env, "alice", |rows| {
        json_row(rows, "first-login").is_some_and(|r| r["status"] == "completed")
    });
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

/// NO_MIGRATE: a job with more privileges made the handler's tables
/// (migrations/postgres/handler_tables.sql) beside the challenge service's;
/// the handler creates none of them, starts its ledger's state in the table
/// the job made, and its first flush succeeds.
#[tokio::test]
async fn with_no_migrate_it_uses_the_tables_a_job_made_and_its_first_flush_succeeds() {
    let db = pg::TestDb::new().await;
    db.migrate_as_the_challenge_service().await;
    let pool = db.pool().await;
    let handler_tables = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/postgres/handler_tables.sql"
    ))
    .unwrap();
    sqlx::raw_sql(&handler_tables).execute(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut handler = Binary::spawn(
        &db.url,
        dir.path(),
        &[("NO_MIGRATE", "1"), ("TABLE_OWNER", "service")],
    );
    handler.wait_healthy().await;
    let service = ChallengeService::new(pool.clone(), &dir.path().join("challenges.json"));
    service.initialize("nm", NAMESPACE).await;
    let channel = handler.channel().await;
    challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient::new(channel)
        .on_message(login("nm", "nm-1", ""))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM user_goal_progress WHERE user_id = 'nm' AND progress > 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the login never reached the table: {}",
            handler.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handler.sigterm();
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 0);
    let log = handler.log_text();
    // Started at start-up, not repaired by the upkeep as if deleted.
    assert!(
        log.contains("the cluster's ledger of applied events started"),
        "{log}"
    );
    assert!(
        !log.contains("flush failed") && !log.contains("was missing"),
        "{log}"
    );
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tables FROM challenge_event_handler_ledger WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables.len(), 1);
}

/// NO_MIGRATE before the job that makes the handler's tables has run: the
/// start stops at once naming the table, the script and the alternative,
/// instead of serving while every flush fails.
#[tokio::test]
async fn with_no_migrate_and_no_handler_tables_the_start_stops_saying_what_to_run() {
    let db = pg::TestDb::new().await;
    db.migrate_as_the_challenge_service().await;
    let dir = tempfile::tempdir().unwrap();
    let mut handler = Binary::spawn(
        &db.url,
        dir.path(),
        &[("NO_MIGRATE", "1"), ("TABLE_OWNER", "service")],
    );
    assert_eq!(handler.wait_exit(Duration::from_secs(30)).await, 1);
    let log = handler.log_text();
    assert!(
        log.contains("challenge_event_handler_ledger does not exist and NO_MIGRATE is set")
            && log.contains("migrations/postgres/handler_tables.sql")
            && log.contains("NO_LEDGER"),
        "{log}"
    );
}
