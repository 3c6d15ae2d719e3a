//! The newcomer's path, on the real binary with nothing configured: the
//! service runs on the embedded SQLite store in `./data`, and the operator
//! commands (`send`, `progress`, `wal inspect`, `check-config`) work against
//! it — including across a kill -9 before any flush.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn with_nothing_configured_the_service_runs_on_the_embedded_store_and_the_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let env = [("FLUSH_INTERVAL", "50ms")];
    let mut service = Binary::spawn_bare(path, &shipped_challenges(), &env);
    service.wait_healthy().await;
    let log = service.log_text();
    assert!(
        log.contains("using the embedded SQLite store (for PostgreSQL set DATABASE_URL"),
        "{log}"
    );
    assert!(
        log.contains("AB_NAMESPACE is not set: using \"mygame\""),
        "{log}"
    );
    assert!(path.join("data/progress.sqlite3").exists());
    assert!(path.join("data/wal/log").is_dir());

    // The README's quick start: send, then look.
    let grpc = service.grpc_url();
    for (i, inc) in ["4", "4", "4"].iter().enumerate() {
        let id = format!("qs-{i}");
        let (code, out, err) = cli(
            path,
            &[
                "send",
                "--addr",
                &grpc,
                "--user",
                "alice",
                "--id",
                &id,
                "stat",
                "--code",
                "enemy-kills",
                "--inc",
                inc,
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("acknowledged: stat enemy-kills"), "{out}");
    }
    let (code, _, err) = cli(
        path,
        &["send", "--addr", &grpc, "--user", "alice", "login"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let rows = wait_for_rows(path, &[], "alice", |rows| {
        json_row(rows, "kill-10").is_some_and(|r| r["progress"] == 12)
            && json_row(rows, "first-login").is_some_and(|r| r["status"] == "completed")
    });
    let kills = json_row(&rows, "kill-10").unwrap();
    assert_eq!(kills["status"], "completed", "{kills}");
    assert_eq!(kills["namespace"], "mygame");
    assert_eq!(
        json_row(&rows, "first-login").unwrap()["status"],
        "completed"
    );

    let (code, table, _) = cli(path, &["progress", "--user", "alice"], &[]);
    assert_eq!(code, 0);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("GOAL") && header.contains("PROGRESS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kill-10") && l.contains(" 12 ") && l.contains("completed")),
        "{table}"
    );
    let (code, one, _) = cli(
        path,
        &["progress", "--user", "alice", "--goal", "kill-10", "--json"],
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&one)
            .unwrap()
            .len(),
        1
    );

    // A GDPR deletion through `send`.
    let (code, out, err) = cli(
        path,
        &["send", "--addr", &grpc, "--user", "alice", "gdpr-deletion"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("acknowledged: GDPR data deletion"), "{out}");
    wait_for_rows(path, &[], "alice", |rows| rows.is_empty());
    let (_, out, _) = cli(path, &["progress", "--user", "alice"], &[]);
    assert!(out.starts_with("no rows for user \"alice\""), "{out}");
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn after_a_kill_9_wal_inspect_shows_what_is_pending_and_a_restart_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut service = Binary::spawn_bare(path, &shipped_challenges(), &[("FLUSH_INTERVAL", "1h")]);
    service.wait_healthy().await;
    let grpc = service.grpc_url();
    let level_7 = |id: &str| {
        let args = [
            "send",
            "--addr",
            &grpc,
            "--user",
            "bob",
            "--id",
            id,
            "stat",
            "--code",
            "player-level",
            "--value",
            "7",
        ];
        let (code, _, err) = cli(path, &args, &[]);
        assert_eq!(code, 0, "{err}");
    };
    for i in 0..3 {
        level_7(&format!("k-{i}"));
    }
    // The same id again: a duplicate, nothing more written.
    level_7("k-0");
    service.kill9();

    let (code, out, err) = cli(path, &["wal", "inspect", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"], 3, "{report}");
    assert_eq!(report["pending_above_watermark"], 3, "{report}");
    assert_eq!(report["watermark"]["Ok"]["applied_seq"], 0, "{report}");
    assert_eq!(report["dedup_marks"], 3, "{report}");
    // The log and the marks database: sled's files, a few hundred KiB at least.
    assert!(report["disk_bytes"].as_u64().unwrap() > 100_000, "{report}");
    assert!(report["instance_id"].as_str().unwrap().starts_with("ceh-"));
    assert!(report["oldest_written_age_seconds"].as_i64().unwrap() < 600);
    assert!(report["corrupt"].as_array().unwrap().is_empty());
    assert!(report["frames"].as_u64().unwrap() >= 1);
    let (code, text, _) = cli(path, &["wal", "inspect"], &[]);
    assert_eq!(code, 0);
    assert!(
        text.lines()
            .any(|l| l.starts_with("pending (above watermark)")
                && l.ends_with(" 3 records: replayed into the database at the next start")),
        "{text}"
    );
    // Not flushed: nothing in the store yet.
    let (_, out, _) = cli(path, &["progress", "--user", "bob"], &[]);
    assert!(out.starts_with("no rows"), "{out}");

    let mut again = Binary::spawn_bare(path, &shipped_challenges(), &[("FLUSH_INTERVAL", "50ms")]);
    again.wait_healthy().await;
    let rows = wait_for_rows(path, &[], "bob", |rows| !rows.is_empty());
    assert_eq!(json_row(&rows, "reach-level-10").unwrap()["progress"], 7);
    again.sigterm();
    assert_eq!(again.wait_exit(Duration::from_secs(30)).await, 0);
    let (_, out, _) = cli(path, &["wal", "inspect", "--json"], &[]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"], 0, "{report}");
    assert_eq!(report["pending_above_watermark"], 0, "{report}");
}

#[tokio::test]
async fn the_commands_say_clearly_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let (code, _, err) = cli(path, &["progress", "--user", "x"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no embedded store at data/progress.sqlite3"),
        "{err}"
    );
    let (code, _, err) = cli(path, &["wal", "inspect"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no WAL in data/wal"), "{err}");
    let (code, _, err) = cli(
        path,
        &["progress", "--user", "x"],
        &[("DATABASE_URL", "mysql://x")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid setting DATABASE_URL"), "{err}");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/challenges.json");
    let (code, out, _) = cli(path, &["check-config", "--config-path", config], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("6 goals, valid; type rules"), "{out}");
    let m5 = concat!(env!("CARGO_MANIFEST_DIR"), "/config/challenges.m5.json");
    let (code, out, _) = cli(path, &["check-config", "--config-path", m5], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("8 goals, valid; M5 rules"), "{out}");
    let (code, out, _) = cli(path, &["--help"], &[]);
    assert_eq!(code, 0);
    for command in ["serve", "send", "progress", "wal", "check-config", "bench"] {
        assert!(
            out.contains(&format!("  {command}")),
            "{command} missing from --help:\n{out}"
        );
    }
}

#[tokio::test]
async fn health_bench_and_a_running_wal_answer_as_an_operator_expects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut service =
        Binary::spawn_bare(path, &shipped_challenges(), &[("FLUSH_INTERVAL", "50ms")]);
    service.wait_healthy().await;
    let http = service.http_addr().to_string();

    // `health` is the container's HEALTHCHECK: 0 while serving, 1 when nothing answers.
    let (code, out, err) = cli(path, &["health", "--addr", &http], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""status":"serving""#), "{out}");
    let (code, _, err) = cli(path, &["health", "--addr", "127.0.0.1:1"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach 127.0.0.1:1"), "{err}");

    // `wal inspect` on a running service's WAL says why it cannot: the
    // directory's lock, taken before anything in it is opened.
    let (code, _, err) = cli(path, &["wal", "inspect"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("another process has it")
            && err.contains("`wal inspect` reads a stopped service's WAL"),
        "{err}"
    );

    // The bench, closed loop against the roof and the service: every call acknowledged.
    let grpc = service.grpc_url();
    let (code, out, err) = cli(
        path,
        &[
            "bench",
            "--addr",
            &grpc,
            "--roof",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "8",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["roof", "service"]);
    for run in runs {
        assert!(run["acknowledged"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
    }
    assert!(report["roof_ratio"].as_f64().unwrap() > 0.0);

    // Open loop at fixed rates with a plot, and the plot redrawn from the JSON.
    let png = path.join("latency.png");
    let png = png.to_str().unwrap();
    let (code, out, err) = cli(
        path,
        &[
            "bench",
            "--addr",
            &grpc,
            "--rate",
            "100,200",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--plot",
            png,
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let offered: Vec<u64> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offered_per_sec"].as_u64().unwrap())
        .collect();
    assert_eq!(offered, [100, 200]);
    assert!(std::fs::read(png).unwrap().starts_with(b"\x89PNG"));
    let json = path.join("sweep.json");
    std::fs::write(&json, &out).unwrap();
    std::fs::remove_file(png).unwrap();
    let (code, _, err) = cli(
        path,
        &["bench", "--replot", json.to_str().unwrap(), "--plot", png],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(png).unwrap().starts_with(b"\x89PNG"));
    service.sigterm();
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, 0);

    // bench-store on the embedded store: inserted, then updated, every row.
    let (code, out, err) = cli(path, &["bench-store", "--rows", "200", "--runs", "1"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("run 0 insert: 200 rows in"), "{out}");
    assert!(out.contains("run 0 update: 200 rows in"), "{out}");

    // bench-wal: the WAL alone and the disk under it, in a scratch directory
    // that is gone afterwards.
    let scratch = path.join("bench-wal-volume");
    let (code, out, err) = cli(
        path,
        &[
            "bench-wal",
            "--dir",
            scratch.to_str().unwrap(),
            "--rate",
            "300",
            "--duration",
            "1s",
            "--truncate-every",
            "200ms",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wal:  300 events/s offered"), "{out}");
    let wal_line = out.lines().find(|l| l.starts_with("wal  ")).expect(&out);
    assert!(wal_line.ends_with("errors 0"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("disk ")), "{out}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "left behind"
    );
}

/// The embedded store has no ledger and no tombstones: one process serves on
/// its file. A second one (its own WAL, so its own instance id) is refused
/// at start, naming the file and what to do; once the first has stopped, it
/// starts.
#[tokio::test]
async fn a_second_process_on_the_same_embedded_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut first = Binary::spawn_bare(path, &shipped_challenges(), &[("FLUSH_INTERVAL", "50ms")]);
    first.wait_healthy().await;
    let other_wal = [("FLUSH_INTERVAL", "50ms"), ("WAL_DIR", "other-wal")];
    let mut second = Binary::spawn_bare(path, &shipped_challenges(), &other_wal);
    let code = second.wait_exit(Duration::from_secs(30)).await;
    let log = second.log_text();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("another process serves on data/progress.sqlite3"),
        "{log}"
    );
    assert!(log.contains("DATABASE_URL"), "{log}");

    first.sigterm();
    assert_eq!(first.wait_exit(Duration::from_secs(30)).await, 0);
    let mut second = Binary::spawn_bare(path, &shipped_challenges(), &other_wal);
    second.wait_healthy().await;
    second.sigterm();
    assert_eq!(second.wait_exit(Duration::from_secs(30)).await, 0);
}
