//! Settings: defaults, bad values named, database choice, production starts.
use super::*;
use clap::Parser;
use std::path::Path;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn args(extra: &[&str]) -> ServeArgs {
    let mut argv = vec!["x"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().serve
}

#[test]
fn sizes_parse_with_binary_units() {
    assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
    assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
    assert_eq!(parse_bytes("64 MB"), Ok(64 << 20));
    assert_eq!(parse_bytes("1000"), Ok(1000));
    assert!(parse_bytes("lots").is_err());
    assert!(parse_bytes("5 parsecs")
        .unwrap_err()
        .contains("unknown unit"));
    assert!(parse_bytes("99999999999TiB")
        .unwrap_err()
        .contains("too large"));
}

#[test]
fn choices_are_read_in_any_case() {
    let a = args(&["--wal-recovery", "Skip-Corrupt", "--table-owner", "SERVICE"]);
    assert_eq!(a.wal_recovery, crate::wal::Recovery::SkipCorrupt);
    assert_eq!(a.table_owner, Some(crate::store::TableOwner::Service));
    let refused = Cli::try_parse_from(["x", "--table-owner", "nobody"])
        .err()
        .unwrap();
    assert!(refused.to_string().contains("nobody"), "{refused}");
}

/// Flags only: the test environment may set any of these variables.
fn clean(mut a: ServeArgs) -> ServeArgs {
    a.namespace = None;
    a.store.database_url = None;
    a.store.db_host = None;
    a.store.db_port = None;
    a.store.db_name = None;
    a.store.db_user = None;
    a.store.db_password = None;
    a.store.wal_dir = None;
    a
}

#[test]
fn with_postgresql_the_namespace_is_required_and_named_in_the_error() {
    let mut a = clean(args(&[]));
    a.store.database_url = Some("postgres://u@localhost/db".into());
    let err = a.validate().unwrap_err();
    assert_eq!(err.name, "AB_NAMESPACE");
    assert!(err.to_string().contains("is required"));
    let mut a = clean(args(&[]));
    a.store.db_host = Some("db.internal".into());
    assert_eq!(a.validate().unwrap_err().name, "AB_NAMESPACE");
}

#[test]
fn with_nothing_configured_the_embedded_store_runs_with_a_development_namespace() {
    let mut a = clean(args(&[]));
    a.store.data_dir = PathBuf::from("/var/lib/ceh");
    let s = a.validate().unwrap();
    assert!(
        matches!(&s.database, Database::Sqlite(p) if p == Path::new("/var/lib/ceh/progress.sqlite3")),
        "{:?}",
        s.database
    );
    assert_eq!(s.wal_dir, PathBuf::from("/var/lib/ceh/wal"));
    assert_eq!(s.namespace, DEVELOPMENT_NAMESPACE);
    assert_eq!(s.warnings.len(), 1);
    assert!(s.warnings[0].contains("AB_NAMESPACE is not set"));
}

#[test]
fn database_urls_choose_the_store() {
    let pick = |url: &str| {
        let mut a = clean(args(&[]));
        a.namespace = Some("ns".into());
        a.store.database_url = Some(url.into());
        a.validate().map(|s| s.database)
    };
    assert!(matches!(
        pick("postgres://u@h/db"),
        Ok(Database::Postgres(_))
    ));
    assert!(matches!(
        pick("postgresql://u@h/db"),
        Ok(Database::Postgres(_))
    ));
    assert!(matches!(pick("sqlite://x/p.db"), Ok(Database::Sqlite(p)) if p == Path::new("x/p.db")));
    assert!(
        matches!(pick("sqlite:p.db?mode=rwc"), Ok(Database::Sqlite(p)) if p == Path::new("p.db"))
    );
    assert_eq!(pick("sqlite::memory:").unwrap_err().name, "DATABASE_URL");
    assert_eq!(pick("mysql://x").unwrap_err().name, "DATABASE_URL");
}

#[test]
fn the_db_settings_build_the_connection_as_accelbytes_handler_reads_them() {
    let pg = |a: ServeArgs| match a.validate().unwrap().database {
        Database::Postgres(o) => (
            o.get_host().to_owned(),
            o.get_port(),
            o.get_database().map(str::to_owned),
            o.get_username().to_owned(),
        ),
        other => panic!("{other:?}"),
    };
    let mut a = clean(args(&[]));
    a.namespace = Some("ns".into());
    a.store.db_host = Some("db.internal".into());
    a.store.db_port = Some(6432);
    a.store.db_name = Some("challenges".into());
    a.store.db_user = Some("handler".into());
    a.store.db_password = Some("secret".into());
    assert_eq!(
        pg(a.clone()),
        (
            "db.internal".into(),
            6432,
            Some("challenges".into()),
            "handler".into()
        )
    );
    // Any one of them chooses PostgreSQL; the rest default as the Go handler's.
    let mut only_user = clean(args(&[]));
    only_user.namespace = Some("ns".into());
    only_user.store.db_user = Some("handler".into());
    assert_eq!(
        pg(only_user),
        (
            "localhost".into(),
            5432,
            Some("challenge_db".into()),
            "handler".into()
        )
    );
    // DATABASE_URL wins over them.
    a.store.database_url = Some("postgres://u@other:5433/elsewhere".into());
    assert_eq!(
        pg(a),
        ("other".into(), 5433, Some("elsewhere".into()), "u".into())
    );
}

#[test]
fn a_remote_database_without_tls_is_warned_about() {
    let warned = |url: &str| {
        let mut a = clean(args(&[]));
        a.namespace = Some("ns".into());
        a.store.database_url = Some(url.into());
        let settings = a.validate().unwrap();
        settings.warnings.iter().any(|w| w.contains("sslmode"))
    };
    // Without sslmode in the URL, PGSSLMODE decides (prefer when unset).
    let from_env = std::env::var("PGSSLMODE").unwrap_or_default();
    assert_eq!(
        warned("postgres://u@db.example.com/db"),
        !["require", "verify-ca", "verify-full"].contains(&from_env.as_str())
    );
    assert!(warned("postgres://u@10.0.0.7/db?sslmode=prefer"));
    assert!(warned("postgres://u@db.example.com/db?sslmode=disable"));
    assert!(!warned("postgres://u@db.example.com/db?sslmode=require"));
    assert!(!warned(
        "postgres://u@db.example.com/db?sslmode=verify-full"
    ));
    assert!(!warned("postgres://u@localhost/db"));
    assert!(!warned("postgres://u@127.0.0.1:5433/db"));
    assert!(!warned("postgres://u@[::1]/db"));
    assert!(!warned("postgres://u@%2Fvar%2Frun%2Fpostgresql/db"));
    assert!(!warned("sqlite://x/p.db"));
}

#[test]
fn bad_numbers_are_named() {
    let err = args(&[
        "--namespace",
        "ns",
        "--db-host",
        "h",
        "--db-batch-size",
        "0",
    ])
    .validate()
    .unwrap_err();
    assert_eq!(err.name, "DB_BATCH_SIZE");
    let err = args(&[
        "--namespace",
        "ns",
        "--db-host",
        "h",
        "--buffer-max-keys",
        "0",
    ])
    .validate()
    .unwrap_err();
    assert_eq!(err.name, "BUFFER_MAX_KEYS");
    assert!(err.to_string().contains("greater than zero"), "{err}");
    let err = args(&["--namespace", "ns", "--database-url", "mysql://x"])
        .validate()
        .unwrap_err();
    assert_eq!(err.name, "DATABASE_URL");
    assert!(err.to_string().contains("sqlite://"), "{err}");
}

#[test]
fn defaults_match_the_readme() {
    let s = args(&["--namespace", "ns", "--database-url", "postgres://u@h/db"])
        .validate()
        .unwrap();
    assert_eq!(s.flush_interval, Duration::from_secs(1));
    assert_eq!(s.dedup_window, Duration::from_secs(600));
    assert_eq!(s.buffer_max_keys, 2_000);
    assert_eq!(s.memory_max_keys, 100_000);
    assert_eq!(s.flush_timeout, Duration::from_secs(120));
    assert_eq!(s.db_batch_size, 1000);
    assert_eq!(s.wal_max_bytes, 1 << 30);
    assert!(s.migrate);
}

#[test]
fn a_namespace_without_a_database_is_a_production_start_and_refused() {
    let production = || {
        let mut a = clean(args(&[]));
        a.namespace = Some("ns".into());
        a
    };
    let err = production().validate().unwrap_err();
    assert_eq!(err.name, "DATABASE_URL");
    let text = err.to_string();
    for named in ["DB_HOST", "AB_NAMESPACE", "sqlite://"] {
        assert!(text.contains(named), "{text}");
    }
    // Chosen on purpose, the embedded store serves a namespace.
    let mut embedded = production();
    embedded.store.database_url = Some("sqlite://x.db".into());
    let s = embedded.validate().unwrap();
    assert!(matches!(s.database, Database::Sqlite(_)));
    // No namespace: the development default.
    let s = clean(args(&[])).validate().unwrap();
    assert!(matches!(s.database, Database::Sqlite(_)));
}

#[test]
fn http_ingest_settings_that_cannot_work_together_are_named() {
    let pg = |extra: &[&str]| {
        let mut argv = vec![
            "--namespace",
            "ns",
            "--database-url",
            "postgres://u@localhost/db",
        ];
        argv.extend_from_slice(extra);
        args(&argv).validate()
    };
    let err = pg(&["--http-ingest-open", "--http-ingest-token", "t"]).unwrap_err();
    assert_eq!(err.name, "HTTP_INGEST_OPEN");
    let err = pg(&["--http-ingest-burst", "99"]).unwrap_err();
    assert_eq!(err.name, "HTTP_INGEST_BURST");
    assert!(err.to_string().contains("100"), "{err}");
    // Without a limit, the burst does not matter.
    assert!(pg(&["--http-ingest-rate", "0", "--http-ingest-burst", "1"]).is_ok());
    let err = pg(&["--metrics-port", "9000", "--http-ingest-port", "9000"]).unwrap_err();
    assert_eq!(err.name, "HTTP_INGEST_PORT");
    let s = pg(&["--http-ingest-token", "a, b,,c"]).unwrap();
    assert_eq!(s.http_ingest.tokens, ["a", "b", "c"]);
    assert!(s.warnings.iter().any(|w| w.contains("a token of 1 bytes")));
    // A token setting that came out blank is not "no token".
    let err = pg(&["--http-ingest-token", " , \n"]).unwrap_err();
    assert_eq!(err.name, "HTTP_INGEST_TOKEN");
    let err = pg(&["--http-ingest-open", "--http-ingest-token", ","]).unwrap_err();
    assert_eq!(err.name, "HTTP_INGEST_TOKEN");
    // An empty value is unset (a template's way of leaving it out).
    let s = pg(&["--http-ingest-token", ""]).unwrap();
    assert!(s.http_ingest.tokens.is_empty());
    let s = pg(&["--http-ingest-token", &"k".repeat(32)]).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn http_ingest_is_open_without_a_token_only_in_the_development_start() {
    use crate::http::access::Access;
    let access = |argv: &[&str]| {
        let s = args(argv).validate().unwrap();
        s.http_ingest.access(&s.database).unwrap()
    };
    // The quick start: no namespace, no database.
    assert!(matches!(access(&[]), Access::Open { .. }));
    assert!(matches!(
        access(&["--database-url", "sqlite://x.db"]),
        Access::Open { .. }
    ));
    // A production start (AB_NAMESPACE) that chose the embedded store.
    assert!(matches!(
        access(&["--namespace", "ns", "--database-url", "sqlite://x.db"]),
        Access::Closed
    ));
    assert!(matches!(
        access(&["--namespace", "ns", "--database-url", "postgres://u@h/db"]),
        Access::Closed
    ));
}

#[test]
fn a_memory_bound_of_zero_is_named() {
    let err = args(&[
        "--namespace",
        "ns",
        "--database-url",
        "postgres://u@h/db",
        "--memory-max-keys",
        "0",
    ])
    .validate()
    .unwrap_err();
    assert_eq!(err.name, "MEMORY_MAX_KEYS");
}

#[test]
fn a_flush_timeout_under_a_second_is_named() {
    let err = args(&[
        "--namespace",
        "ns",
        "--database-url",
        "postgres://u@h/db",
        "--flush-timeout",
        "500ms",
    ])
    .validate()
    .unwrap_err();
    assert_eq!(err.name, "FLUSH_TIMEOUT");
}

#[test]
fn instance_id_is_trimmed_as_the_wal_directory_records_it() {
    let s = args(&[
        "--namespace",
        "ns",
        "--database-url",
        "postgres://u@h/db",
        "--instance-id",
        " replica-1\n",
    ])
    .validate()
    .unwrap();
    assert_eq!(s.instance_id.as_deref(), Some("replica-1"));
}
