//! kill -9 torture: the real binary under concurrent load, killed with SIGKILL
//! at random moments and restarted, again and again; then checked against an
//! oracle of what was acknowledged, GDPR deletions included: nothing
//! acknowledged before a user's last deletion may be in the database (the
//! workload and the oracle are in tests/common/workload.rs).
//!
//! `TORTURE_KILLS` sets the number of kills (default 50, the CI size);
//! `TORTURE_SEED` replays a run.

mod common;

use std::time::{Duration, Instant};

use common::workload::{env_count, Rng, Rules, Workload};
use common::*;

#[tokio::test]
async fn kill_9_at_random_moments_under_load_loses_nothing_and_doubles_nothing() {
    torture(Rules::Typed, env_count("TORTURE_KILLS", 50)).await;
}

#[tokio::test]
async fn kill_9_at_random_moments_under_load_on_m5_rules_loses_nothing_and_doubles_nothing() {
    torture(Rules::M5, env_count("TORTURE_KILLS", 50) / 2).await;
}

async fn torture(rules: Rules, kills: usize) {
    let (mut rng, seed) = Rng::from_env("TORTURE_SEED");
    println!("torture ({rules:?} rules): {kills} kills, TORTURE_SEED={seed}");
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("FLUSH_INTERVAL", "30ms"),
        // The harness reads the bound ports from the app's "starting" line.
        ("LOG_LEVEL", "warn,challenge_event_handler::app=info"),
    ];

    let mut workload = Workload::new(rules);
    let started = Instant::now();
    for round in 0..=kills {
        let mut service =
            Binary::spawn_with_config(&db.url, dir.path(), workload.challenges(), &env);
        service.wait_healthy().await;
        if round == kills {
            workload.finish(&mut service).await;
            break;
        }
        let channel = service.channel().await;
        // Traffic for a random while, killed at a random moment within it.
        let run_for = 20 + rng.below(300);
        let kill_after = Duration::from_millis(rng.below(run_for + 1));
        let mut kill = || service.kill9();
        workload
            .run(
                &channel,
                Duration::from_millis(run_for),
                Some((kill_after, &mut kill)),
            )
            .await;
    }

    let verdict = workload.check(&pool).await;
    println!(
        "torture ({rules:?} rules): {kills} kills, {} events acknowledged ({} GDPR deletions), {} calls in flight at kills, {} rows lost, {} rows doubled or wrong, {:.1}s",
        verdict.acknowledged,
        verdict.deletions,
        workload.uncertain_at_kills,
        verdict.lost.len(),
        verdict.wrong.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        verdict.is_exact(),
        "TORTURE_SEED={seed}: {}",
        verdict.describe()
    );
    assert!(
        verdict.acknowledged > kills as u64 * 5,
        "too little traffic to mean anything: {}",
        verdict.acknowledged
    );
    assert!(verdict.deletions > 0, "no deletion in the workload");
}
