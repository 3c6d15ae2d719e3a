//! The crash tests' workload and oracle (tests/torture.rs, tests/power_loss.rs),
//! on the type rules ([`CHALLENGES`]) or the M5 rules ([`M5_CHALLENGES`]).
//!
//! Each client owns a few users and sends each user's events in order: stat
//! events (an increment goal and an absolute goal), logins (an increment, a
//! daily-increment and a daily goal) and — for one user in four — a GDPR
//! data deletion every 13th event, with event times three hours apart so
//! days go by. A call that fails because of a kill is *uncertain*: it may or
//! may not be in the WAL. The client re-sends it, with the same event id, first
//! thing after the restart (as Kafka redelivers), so at the end every event is
//! acknowledged and the oracle is exact: each goal's row must equal what the
//! acknowledged events after the user's last deletion make of it, counted
//! once — nothing lost, nothing doubled, nothing from before a deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use challenge_event_handler::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient;
use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use chrono::{DateTime, NaiveDate};
use sqlx::PgPool;
use tonic::transport::Channel;

use super::{gdpr_deletion, login, stat, Binary};

/// Targets high enough that no increment goal completes (so the oracle is a
/// plain count).
pub const CHALLENGES: &str = r#"{"challenges":[{"challengeId":"t","name":"T","goals":[
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

/// The same workload on M5 goals: a relative and an absolute goal on the
/// stat, an absolute login goal (counts logins) and a relative login goal
/// with a daily rotation (its raw progress counts logins too). Logins show a
/// doubled event in the count; the stat goals show a lost one in the value,
/// and the relative goal's baseline is the first value after the user's last
/// deletion minus its increment.
pub const M5_CHALLENGES: &str = r#"{"challenges":[{"challengeId":"t","name":"T","goals":[
 {"goalId":"inc","name":"i","eventSource":"statistic","defaultAssigned":true,
  "requirement":{"statCode":"points","operator":">=","targetValue":2000000000,"progressMode":"relative"},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"abs","name":"a","eventSource":"statistic","defaultAssigned":true,
  "requirement":{"statCode":"points","operator":">=","targetValue":2000000000,"progressMode":"absolute"},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"logins","name":"l","eventSource":"login","defaultAssigned":true,
  "requirement":{"statCode":"login_count","operator":">=","targetValue":2000000000,"progressMode":"absolute"},"reward":{"type":"ITEM","rewardId":"r","quantity":1}},
 {"goalId":"login-days","name":"d","eventSource":"login","defaultAssigned":true,
  "requirement":{"statCode":"login_count","operator":">=","targetValue":2000000000,"progressMode":"relative"},"reward":{"type":"ITEM","rewardId":"r","quantity":1},
  "rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":true,"allowReselection":true}}}]}]}"#;

/// Which rules the workload's goals follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    Typed,
    M5,
}

const CLIENTS: usize = 8;
const USERS_PER_CLIENT: usize = 4;
/// 2020-01-01T00:00:00Z: far enough back that a long run's event times (three
/// hours apart, thousands per user) stay in the past — the service uses the
/// arrival time for a timestamp more than 5 minutes ahead of its clock, which
/// would reorder absolute values.
const BASE_MS: i64 = 1_577_836_800_000;
const STEP_MS: i64 = 3 * 3_600_000;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
pub struct Rng(pub u64);

impl Rng {
    /// `seed_var` (e.g. `TORTURE_SEED`) when set, else the clock; prints it.
    pub fn from_env(seed_var: &str) -> (Rng, u64) {
        let seed: u64 = std::env::var(seed_var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        (Rng(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A count from the environment variable `name`, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The n-th event of a user.
#[derive(Debug, Clone, Copy)]
struct Event {
    n: i64,
    /// Whether the user is one of those that get GDPR deletions.
    deleted_user: bool,
}

impl Event {
    fn is_deletion(self) -> bool {
        self.deleted_user && self.n % 13 == 0
    }

    fn is_login(self) -> bool {
        !self.is_deletion() && self.n % 3 == 1
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
    /// This user gets a GDPR deletion every 13th event. Only the first user
    /// of each client does: the oracle of a deleted user checks only what
    /// came after the deletion, so the others keep the oracle checking every
    /// acknowledged event.
    deleted_user: bool,
    next: i64,
    /// Sent, failed: resent (same id) before anything newer for this user.
    pending: Option<Event>,
    inc: i64,
    abs: Option<i64>,
    /// The first stat event after the last deletion: (value, increment).
    first_stat: Option<(i64, i64)>,
    logins: i64,
    login_days: BTreeSet<i64>,
    acknowledged: u64,
    deletions: u64,
}

impl Expected {
    fn acknowledge(&mut self, e: Event) {
        self.acknowledged += 1;
        if e.is_deletion() {
            // Nothing acknowledged before it may remain.
            self.deletions += 1;
            self.inc = 0;
            self.abs = None;
            self.first_stat = None;
            self.logins = 0;
            self.login_days.clear();
        } else if e.is_login() {
            self.logins += 1;
            self.login_days.insert(e.day());
        } else {
            self.inc += i64::from(e.inc());
            self.abs = Some(e.n);
            self.first_stat.get_or_insert((e.n, i64::from(e.inc())));
        }
    }
}

async fn send(channel: &Channel, user: &str, e: Event) -> Result<(), tonic::Status> {
    let id = format!("{user}-{}", e.n);
    if e.is_deletion() {
        let mut msg = gdpr_deletion(user, &id);
        msg.timestamp = e.timestamp();
        DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(channel.clone())
            .on_message(msg)
            .await
            .map(|_| ())
    } else if e.is_login() {
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

type Users = Vec<(String, Expected)>;

/// Sends `users`' events until a call fails (the kill) or `until`; pending
/// events go first.
async fn client(channel: Channel, mut users: Users, until: Instant) -> Users {
    let mut turn = 0;
    while Instant::now() < until {
        let (user, expected) = &mut users[turn % USERS_PER_CLIENT];
        turn += 1;
        let event = match expected.pending.take() {
            Some(e) => e,
            None => {
                expected.next += 1;
                Event {
                    n: expected.next,
                    deleted_user: expected.deleted_user,
                }
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

/// How the database compares with the oracle.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acknowledged: u64,
    /// GDPR deletions among them.
    pub deletions: u64,
    /// Rows behind what was acknowledged (or missing).
    pub lost: Vec<String>,
    /// Rows ahead of it, or with another value.
    pub wrong: Vec<String>,
}

impl Verdict {
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty() && self.wrong.is_empty()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} rows lost, {} rows doubled or wrong:\n{}",
            self.lost.len(),
            self.wrong.len(),
            self.lost
                .iter()
                .chain(&self.wrong)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// Every client's users and what they have been acknowledged.
pub struct Workload {
    rules: Rules,
    groups: Vec<Users>,
    /// Calls that were in flight when a kill came (each redelivered later).
    pub uncertain_at_kills: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload::new(Rules::Typed)
    }
}

impl Workload {
    pub fn new(rules: Rules) -> Workload {
        Workload {
            rules,
            groups: (0..CLIENTS)
                .map(|c| {
                    (0..USERS_PER_CLIENT)
                        .map(|u| {
                            let expected = Expected {
                                deleted_user: u == 0,
                                ..Expected::default()
                            };
                            (format!("t{c}-{u}"), expected)
                        })
                        .collect()
                })
                .collect(),
            uncertain_at_kills: 0,
        }
    }

    /// The challenges file of the workload's rules.
    pub fn challenges(&self) -> &'static str {
        match self.rules {
            Rules::Typed => CHALLENGES,
            Rules::M5 => M5_CHALLENGES,
        }
    }

    /// Runs every client for `run_for`. With `kill`, calls it `after` that
    /// long (it should end the service); calls cut by it become pending.
    pub async fn run(
        &mut self,
        channel: &Channel,
        run_for: Duration,
        kill: Option<(Duration, &mut dyn FnMut())>,
    ) {
        let until = Instant::now() + run_for;
        let tasks: Vec<_> = self
            .groups
            .drain(..)
            .map(|users| tokio::spawn(client(channel.clone(), users, until)))
            .collect();
        let killed = kill.is_some();
        if let Some((after, kill)) = kill {
            tokio::time::sleep(after).await;
            kill();
        }
        for task in tasks {
            self.groups.push(task.await.unwrap());
        }
        if killed {
            self.uncertain_at_kills += self.pending();
        }
    }

    fn pending(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .filter(|(_, e)| e.pending.is_some())
            .count()
    }

    /// Redelivers whatever is still uncertain; each must be acknowledged now.
    pub async fn redeliver(&mut self, channel: &Channel) {
        for users in &mut self.groups {
            for (user, expected) in users.iter_mut() {
                if let Some(e) = expected.pending.take() {
                    send(channel, user, e)
                        .await
                        .expect("redelivery after the last restart");
                    expected.acknowledge(e);
                }
            }
        }
    }

    /// The last round: traffic for 300 ms, every uncertain call redelivered,
    /// then SIGTERM — the service must flush everything and exit 0.
    pub async fn finish(&mut self, service: &mut Binary) {
        let channel = service.channel().await;
        self.run(&channel, Duration::from_millis(300), None).await;
        self.redeliver(&channel).await;
        service.sigterm();
        assert_eq!(
            service.wait_exit(Duration::from_secs(30)).await,
            0,
            "{}",
            service.log_text()
        );
    }

    /// Compares every row with what the acknowledged events make of it. A
    /// row no event moved (`not_started`: the handler initialized the
    /// player with every goal assigned by default) counts as no row.
    pub async fn check(&self, pool: &PgPool) -> Verdict {
        type Stored = (i32, Option<NaiveDate>, Option<i32>);
        let rows: BTreeMap<(String, String), Stored> =
            sqlx::query_as::<_, (String, String, i32, Option<NaiveDate>, Option<i32>)>(
                "SELECT p.user_id, p.goal_id, p.progress, s.last_counted_day, p.baseline_value
                 FROM user_goal_progress p
                 LEFT JOIN challenge_event_handler_goal_state s
                        ON s.user_id = p.user_id AND s.goal_id = p.goal_id
                       AND s.row_created_at = p.created_at
                 WHERE p.status <> 'not_started'",
            )
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(u, g, p, d, b)| ((u, g), (p, d, b)))
            .collect();
        let mut verdict = Verdict::default();
        for (user, e) in self.groups.iter().flatten() {
            verdict.acknowledged += e.acknowledged;
            verdict.deletions += e.deletions;
            let get = |goal: &str| {
                rows.get(&(user.clone(), goal.to_string()))
                    .map(|r| i64::from(r.0))
            };
            let nonzero = |v: i64| (v > 0).then_some(v);
            let mut expect = |goal: &str, value: Option<i64>, seen: Option<i64>| {
                if value != seen {
                    let line = format!("{user}/{goal}: expected {value:?}, found {seen:?}");
                    // None < Some: a missing row is a loss.
                    if seen < value {
                        verdict.lost.push(line);
                    } else {
                        verdict.wrong.push(line);
                    }
                }
            };
            if self.rules == Rules::M5 {
                // Relative: progress is the stat's value, the baseline the
                // first value less its increment; absolute: the value; the
                // login goals count logins (a relative one in its raw progress).
                expect("inc", e.abs, get("inc"));
                let baseline = rows
                    .get(&(user.clone(), "inc".to_string()))
                    .and_then(|r| r.2)
                    .map(i64::from);
                expect("inc baseline", e.first_stat.map(|(v, i)| v - i), baseline);
                expect("abs", e.abs, get("abs"));
                expect("logins", nonzero(e.logins), get("logins"));
                expect("login-days", nonzero(e.logins), get("login-days"));
                continue;
            }
            expect("inc", nonzero(e.inc), get("inc"));
            expect("abs", e.abs, get("abs"));
            expect("logins", nonzero(e.logins), get("logins"));
            expect(
                "login-days",
                nonzero(e.login_days.len() as i64),
                get("login-days"),
            );
            let daily = rows.get(&(user.clone(), "daily".to_string())).map(|r| r.1);
            let last_day = e
                .login_days
                .last()
                .map(|d| Some(NaiveDate::from_num_days_from_ce_opt(*d as i32 + 719_163).unwrap()));
            if daily != last_day {
                let line = format!("{user}/daily: expected last day {last_day:?}, found {daily:?}");
                if daily < last_day {
                    verdict.lost.push(line);
                } else {
                    verdict.wrong.push(line);
                }
            }
        }
        verdict
    }
}
