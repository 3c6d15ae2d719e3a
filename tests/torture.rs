//! kill -9 torture: the real binary under concurrent load, killed with SIGKILL
//! at random moments and restarted, again and again; then checked against an
//! oracle of what was acknowledged.
//!
//! Each client owns a few users and sends each user's events in order: stat
//! events (an increment goal and an absolute goal) and logins (an increment, a
//! daily-increment and a daily goal), with event times three hours apart so
//! days go by. A call that fails because of a kill is *uncertain*: it may or
//! may not be in the WAL. The client re-sends it, with the same event id, first
//! thing after the restart (as Kafka redelivers), so at the end every event is
//! acknowledged and the oracle is exact: each goal's row must equal what the
//! acknowledged events make of it, counted once — nothing lost, nothing doubled.
//!
//! `TORTURE_KILLS` sets the number of kills (default 50, the CI size);
//! `TORTURE_SEED` replays a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use chrono::{DateTime, NaiveDate};
use common::*;
use tonic::transport::Channel;

/// Targets high enough that no goal completes (a completed goal stops moving).
const TORTURE_CHALLENGES: &str = r#"{"challenges":[{"challengeId":"t","name":"T","goals":[
 {"goalId":"inc","name":"i","type":"increment","eventSource":"statistic",
  "requirement":{"statCode":"points","operator":">=","targetValue":2000000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"abs","name":"a","type":"absolute","eventSource":"statistic",
  "requirement":{"statCode":"points","operator":">=","targetValue":2000000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"logins","name":"l","type":"increment","eventSource":"login",
  "requirement":{"operator":">=","targetValue":2000000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"login-days","name":"d","type":"increment","daily":true,"eventSource":"login",
  "requirement":{"operator":">=","targetValue":2000000000},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"daily","name":"y","type":"daily","eventSource":"login",
  "requirement":{"operator":">=","targetValue":1},"reward":{"type":"ITEM","rewardId":"r","quantity":1}}]}]}"#;

const CLIENTS: usize = 8;
const USERS_PER_CLIENT: usize = 4;
/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;
const STEP_MS: i64 = 3 * 3_600_000;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The n-th event of a user.
#[derive(Debug, Clone, Copy)]
struct Event {
    n: i64,
}

impl Event {
    fn is_login(self) -> bool {
        self.n % 3 == 1
    }

    fn inc(self) -> i32 {
        (self.n % 5 + 1) as i32
    }

    fn time_ms(self) -> i64 {
        BASE_MS + self.n * STEP_MS
    }

    fn day(self) -> i64 {
        self.time_ms().div_euclid(86_400_000)
    }

    fn timestamp(self) -> String {
        DateTime::from_timestamp_millis(self.time_ms())
            .unwrap()
            .to_rfc3339()
    }
}

/// What one user's acknowledged events add up to.
#[derive(Debug, Default, Clone)]
struct Expected {
    next: i64,
    /// Sent, failed: resent (same id) before anything newer for this user.
    pending: Option<Event>,
    inc: i64,
    abs: Option<i64>,
    logins: i64,
    login_days: BTreeSet<i64>,
    acknowledged: u64,
}

impl Expected {
    fn acknowledge(&mut self, e: Event) {
        self.acknowledged += 1;
        if e.is_login() {
            self.logins += 1;
            self.login_days.insert(e.day());
        } else {
            self.inc += i64::from(e.inc());
            self.abs = Some(e.n);
        }
    }
}

async fn send(channel: &Channel, user: &str, e: Event) -> Result<(), tonic::Status> {
    let id = format!("{user}-{}", e.n);
    if e.is_login() {
        UserAuthenticationUserLoggedInServiceClient::new(channel.clone())
            .on_message(login(user, &id, &e.timestamp()))
            .await
            .map(|_| ())
    } else {
        StatisticStatItemUpdatedServiceClient::new(channel.clone())
            .on_message(stat(
                user,
                "points",
                e.n as f64,
                f64::from(e.inc()),
                &id,
                &e.timestamp(),
            ))
            .await
            .map(|_| ())
    }
}

/// Sends `users`' events until a call fails (the kill) or `until`; pending
/// events go first.
async fn client(
    channel: Channel,
    mut users: Vec<(String, Expected)>,
    until: Instant,
) -> Vec<(String, Expected)> {
    let mut turn = 0;
    while Instant::now() < until {
        let (user, expected) = &mut users[turn % USERS_PER_CLIENT];
        turn += 1;
        let event = match expected.pending.take() {
            Some(e) => e,
            None => {
                expected.next += 1;
                Event { n: expected.next }
            }
        };
        match send(&channel, user, event).await {
            Ok(()) => expected.acknowledge(event),
            Err(_) => {
                expected.pending = Some(event);
                break;
            }
        }
    }
    users
}

#[tokio::test]
async fn kill_9_at_random_moments_under_load_loses_nothing_and_doubles_nothing() {
    let kills: usize = std::env::var("TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("torture: {kills} kills, TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("FLUSH_INTERVAL", "30ms"),
        // The harness reads the bound ports from the app's "starting" line.
        ("LOG_LEVEL", "warn,challenge_event_handler::app=info"),
    ];

    let mut groups: Vec<Vec<(String, Expected)>> = (0..CLIENTS)
        .map(|c| {
            (0..USERS_PER_CLIENT)
                .map(|u| (format!("t{c}-{u}"), Expected::default()))
                .collect()
        })
        .collect();
    let mut uncertain_at_kills = 0;
    let started = Instant::now();
    for round in 0..=kills {
        let mut service = Binary::spawn_with_config(&db.url, dir.path(), TORTURE_CHALLENGES, &env);
        service.wait_healthy().await;
        let channel = service.channel().await;
        let last = round == kills;
        // Traffic for a random while, killed at a random moment within it.
        let run_for = Duration::from_millis(if last { 300 } else { 20 + rng.below(300) });
        let kill_after = Duration::from_millis(rng.below(run_for.as_millis() as u64 + 1));
        let until = Instant::now() + run_for;
        let tasks: Vec<_> = groups
            .drain(..)
            .map(|users| tokio::spawn(client(channel.clone(), users, until)))
            .collect();
        if !last {
            tokio::time::sleep(kill_after).await;
            service.kill9();
        }
        for task in tasks {
            groups.push(task.await.unwrap());
        }
        if last {
            // Redeliver whatever is still uncertain, then let the flusher catch up.
            for users in &mut groups {
                for (user, expected) in users.iter_mut() {
                    if let Some(e) = expected.pending.take() {
                        send(&channel, user, e)
                            .await
                            .expect("redelivery after the last restart");
                        expected.acknowledge(e);
                    }
                }
            }
            service.sigterm();
            assert_eq!(
                service.wait_exit(Duration::from_secs(30)).await,
                0,
                "{}",
                service.log_text()
            );
        } else {
            uncertain_at_kills += groups
                .iter()
                .flatten()
                .filter(|(_, e)| e.pending.is_some())
                .count();
        }
    }

    // The oracle: every row equals what the acknowledged events make, exactly.
    let rows: BTreeMap<(String, String), (i32, Option<NaiveDate>)> =
        sqlx::query_as::<_, (String, String, i32, Option<NaiveDate>)>(
            "SELECT user_id, goal_id, progress, last_counted_day FROM user_goal_progress",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, g, p, d)| ((u, g), (p, d)))
        .collect();
    let mut acknowledged = 0;
    let mut mismatches = Vec::new();
    for (user, e) in groups.iter().flatten() {
        acknowledged += e.acknowledged;
        let get = |goal: &str| {
            rows.get(&(user.clone(), goal.to_string()))
                .map(|r| r.0 as i64)
        };
        let expect = |goal: &str, value: Option<i64>, seen: Option<i64>, out: &mut Vec<String>| {
            if value != seen {
                out.push(format!("{user}/{goal}: expected {value:?}, found {seen:?}"));
            }
        };
        let nonzero = |v: i64| (v > 0).then_some(v);
        expect("inc", nonzero(e.inc), get("inc"), &mut mismatches);
        expect("abs", e.abs, get("abs"), &mut mismatches);
        expect("logins", nonzero(e.logins), get("logins"), &mut mismatches);
        expect(
            "login-days",
            nonzero(e.login_days.len() as i64),
            get("login-days"),
            &mut mismatches,
        );
        let daily = rows.get(&(user.clone(), "daily".to_string()));
        let last_day = e
            .login_days
            .last()
            .map(|d| NaiveDate::from_num_days_from_ce_opt(*d as i32 + 719_163).unwrap());
        if daily.map(|r| r.1) != last_day.map(Some) {
            mismatches.push(format!(
                "{user}/daily: expected last day {last_day:?}, found {daily:?}"
            ));
        }
    }
    println!(
        "torture: {kills} kills, {acknowledged} events acknowledged, {uncertain_at_kills} calls in flight at kills, {} mismatches, {:.1}s",
        mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "TORTURE_SEED={seed}: {} rows differ from the oracle:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        acknowledged > kills as u64 * 5,
        "too little traffic to mean anything: {acknowledged}"
    );
}
