//! The handler beside AccelByte's current challenge service (M5), on a
//! PostgreSQL database the service's own migrations created
//! (tests/fixtures/challenge-service), with the service's reads, Initialize
//! and claim played by `common::challenge_service`:
//!
//! - upstream's repository rotation tests (extend-challenge-common,
//!   `postgres_goal_repository_rotation_test.go`) and the handler's
//!   integration tests (`pkg/processor/integration_test.go`), replayed as
//!   gRPC events on seeded rows, every column they name checked;
//! - the suite's M5 end-to-end scenarios (`tests/e2e/test-m5-rotation-*.sh`:
//!   basic, reset, login, claimed, full-cycle, no-reset, multi-period,
//!   initialize, never-progressed) on the shipped M5 example config;
//! - the four decided differences where upstream's quirks would show;
//! - UPDATE-only rows: a player the service has not initialized gets no row
//!   from an event, and Initialize then still gives them every default goal;
//! - a hand-edited row the rules cannot update within the table's checks:
//!   the flush's error names it, and the update lands once it is mended.
//!
//! tests/table_owner.rs covers who creates the table.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::challenge_service::{away_from_midnight, recent, ChallengeService, FullRow};
use common::{login, pg, stat, Service, NAMESPACE};

/// Goals for the repository and integration cases: each case's goal on a
/// stat code of its own (a stat code moves every goal on it), with
/// upstream's targets.
const CASES: &str = r#"{"challenges":[
 {"challengeId":"rot","name":"Rotation cases","goals":[
  {"goalId":"r-reset","name":"relative, daily, reset","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"s-reset","operator":">=","targetValue":10,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1},
   "rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":true,"allowReselection":false}}},
  {"goalId":"r-reselect","name":"relative, daily, reset, reselection","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"s-reselect","operator":">=","targetValue":10,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1},
   "rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":true,"allowReselection":true}}},
  {"goalId":"r-keep","name":"relative, daily, no reset","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"s-keep","operator":">=","targetValue":10,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1},
   "rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":false,"allowReselection":false}}},
  {"goalId":"r-plain","name":"relative","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"s-plain","operator":">=","targetValue":10,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1}},
  {"goalId":"a-20","name":"absolute","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"s-abs","operator":">=","targetValue":20,"progressMode":"absolute"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1}},
  {"goalId":"l-rot","name":"login, relative, daily, reset","eventSource":"login","defaultAssigned":true,
   "requirement":{"statCode":"login_count","operator":">=","targetValue":5,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1},
   "rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":true,"allowReselection":false}}},
  {"goalId":"l-plain","name":"login, relative","eventSource":"login","defaultAssigned":true,
   "requirement":{"statCode":"login_count","operator":">=","targetValue":5,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1}}]},
 {"challengeId":"challenge1","name":"The handler's integration tests","goals":[
  {"goalId":"login_goal_absolute","name":"logins","eventSource":"login","defaultAssigned":true,
   "requirement":{"statCode":"login_count","operator":">=","targetValue":5,"progressMode":"absolute"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1}},
  {"goalId":"kills_goal_absolute","name":"kills","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"kills","operator":">=","targetValue":100,"progressMode":"absolute"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1}},
  {"goalId":"daily_quest","name":"quest","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"daily_quest_completed","operator":">=","targetValue":1,"progressMode":"absolute"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1}},
  {"goalId":"daily_kills_relative","name":"daily kills","eventSource":"statistic","defaultAssigned":true,
   "requirement":{"statCode":"kills","operator":">=","targetValue":10,"progressMode":"relative"},
   "reward":{"type":"ITEM","rewardId":"x","quantity":1},
   "rotation":{"enabled":true,"type":"global","schedule":"daily","onExpiry":{"resetProgress":true,"allowReselection":false}}}]}
]}"#;

const WAIT: Duration = Duration::from_secs(20);

/// A database migrated by the challenge service, the handler serving it
/// (the service owns the table: TABLE_OWNER left unset), and the service.
struct Env {
    _db: pg::TestDb,
    _dir: tempfile::TempDir,
    svc: Service,
    service: ChallengeService,
    /// The absolute login goal every settle waits for.
    login_goal: &'static str,
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/challenges.m5.json")
}

impl Env {
    async fn with_config(config: Option<&str>) -> Env {
        away_from_midnight(Duration::from_secs(120)).await;
        let db = pg::TestDb::new().await;
        db.migrate_as_the_challenge_service().await;
        let dir = tempfile::tempdir().unwrap();
        let (path, login_goal) = match config {
            Some(text) => {
                let path = dir.path().join("m5.json");
                std::fs::write(&path, text).unwrap();
                (path, "login_goal_absolute")
            }
            None => (example_config(), "first-login"),
        };
        let path_text = path.display().to_string();
        let svc = Service::start(
            &db.url,
            dir.path(),
            &["--config-path", &path_text, "--table-owner", "service"],
        )
        .await;
        let service = ChallengeService::new(db.pool().await, &path);
        Env {
            _db: db,
            _dir: dir,
            svc,
            service,
            login_goal,
        }
    }

    /// Returns once everything acknowledged so far is in the database: a
    /// login of a fresh player who has only the absolute login goal's row
    /// reaches it (flushes follow the WAL's order).
    async fn settle(&self) {
        let user = format!("settle-{}", common::uuid_like());
        self.seed(
            &user,
            self.login_goal,
            "0, 'not_started', NULL, NOW(), NULL, NULL",
        )
        .await;
        self.svc.login(login(&user, "", "")).await.unwrap();
        self.wait(&user, self.login_goal, |r| r.progress == 1).await;
    }

    /// Inserts a row: `values` are progress, status, baseline_value,
    /// updated_at, completed_at, claimed_at (SQL).
    async fn seed(&self, user: &str, goal: &str, values: &str) {
        sqlx::query(&format!(
            "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace,
                 progress, status, baseline_value, updated_at, completed_at, claimed_at, is_active, assigned_at)
             VALUES ($1, $2, 'c', '{NAMESPACE}', {values}, true, NOW())"
        ))
        .bind(user)
        .bind(goal)
        .execute(&self.service.pool)
        .await
        .unwrap_or_else(|e| panic!("seed {user}/{goal} ({values}): {e}"));
    }

    /// Waits for a flush to fail; returns its error as `/healthz` gives it.
    async fn flush_error(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = common::http_get(self.svc.http_addr, "/healthz").await;
            let report: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(error) = report["last_flush"]["error"].as_str() {
                return error.to_string();
            }
            assert!(Instant::now() < deadline, "no flush failed: {report}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn row(&self, user: &str, goal: &str) -> FullRow {
        self.service
            .row(user, goal)
            .await
            .unwrap_or_else(|| panic!("no row {user}/{goal}"))
    }

    /// Waits until the row satisfies `done`; returns it.
    async fn wait(&self, user: &str, goal: &str, done: impl Fn(&FullRow) -> bool) -> FullRow {
        let deadline = Instant::now() + WAIT;
        loop {
            let row = self.service.row(user, goal).await;
            if let Some(row) = row.as_ref().filter(|r| done(r)) {
                return row.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{user}/{goal} did not get there in {WAIT:?}: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a stat event and waits for the row to be written by it.
    async fn stat(&self, user: &str, code: &str, value: f64, inc: f64) {
        self.svc
            .stat(stat(user, code, value, inc, "", ""))
            .await
            .unwrap();
    }

    async fn stat_then_row(
        &self,
        user: &str,
        code: &str,
        value: f64,
        inc: f64,
        goal: &str,
    ) -> FullRow {
        self.stat(user, code, value, inc).await;
        self.settle().await;
        self.row(user, goal).await
    }

    async fn login_then_row(&self, user: &str, goal: &str) -> FullRow {
        self.svc.login(login(user, "", "")).await.unwrap();
        self.settle().await;
        self.row(user, goal).await
    }
}

/// "today 00:00 UTC" ± an interval, in SQL.
fn midnight(offset: &str) -> String {
    format!("date_trunc('day', now() AT TIME ZONE 'UTC') {offset}")
}

fn next_midnight(service: &ChallengeService, goal: &str) -> Option<chrono::NaiveDateTime> {
    service.period_end(goal)
}

#[tokio::test]
async fn upstreams_repository_rotation_cases_replayed_as_events() {
    let e = Env::with_config(Some(CASES)).await;
    let stale = midnight("- interval '2 hours'");
    let week_ago = midnight("- interval '7 days'");

    // R01 RotatedRowGetsNewBaseline: 105 in_progress, baseline 100, stale; 108 (+3).
    e.seed(
        "r01",
        "r-reset",
        &format!("105, 'in_progress', 100, {stale}, NULL, NULL"),
    )
    .await;
    let r = e
        .stat_then_row("r01", "s-reset", 108.0, 3.0, "r-reset")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (108, Some(105), "in_progress")
    );
    assert_eq!((r.completed_at, r.claimed_at), (None, None));
    assert_eq!(r.expires_at, next_midnight(&e.service, "r-reset"));
    assert!(recent(r.updated_at, 30), "{r:?}");

    // R02 CompletedGoalRotated: 110 completed, baseline 100, stale; 115 (+5): reopened.
    e.seed(
        "r02",
        "r-reset",
        &format!(
            "110, 'completed', 100, {stale}, {}, NULL",
            midnight("- interval '25 hours'")
        ),
    )
    .await;
    let r = e
        .stat_then_row("r02", "s-reset", 115.0, 5.0, "r-reset")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (115, Some(110), "in_progress")
    );
    assert_eq!(r.completed_at, None);

    // R03 ClaimedGoalUntouched: claimed, no reselection: nothing changes.
    e.seed(
        "r03",
        "r-reset",
        &format!("110, 'claimed', 100, {week_ago}, {week_ago}, {week_ago}"),
    )
    .await;
    let before = e.row("r03", "r-reset").await;
    let r = e
        .stat_then_row("r03", "s-reset", 120.0, 5.0, "r-reset")
        .await;
    assert_eq!(r, before, "a claimed row without reselection changed");

    // R04 AbsoluteBaselineStaysNull: 5 → 8 (+3), target 20.
    e.seed(
        "r04",
        "a-20",
        "5, 'in_progress', NULL, NOW() - interval '1 hour', NULL, NULL",
    )
    .await;
    let r = e.stat_then_row("r04", "s-abs", 8.0, 3.0, "a-20").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (8, None, "in_progress")
    );

    // R05 FirstEventInitializesBaseline: not_started, no baseline; 153 (+3).
    e.seed(
        "r05",
        "r-plain",
        "0, 'not_started', NULL, NOW() - interval '5 minutes', NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("r05", "s-plain", 153.0, 3.0, "r-plain")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (153, Some(150), "in_progress")
    );
    assert_eq!(r.expires_at, None);

    // R06 CompletedPreservedResetProgressFalse: completed stays completed, baseline kept.
    e.seed(
        "r06",
        "r-keep",
        &format!(
            "110, 'completed', 100, {stale}, {}, NULL",
            midnight("- interval '25 hours'")
        ),
    )
    .await;
    let before = e.row("r06", "r-keep").await;
    let r = e.stat_then_row("r06", "s-keep", 115.0, 5.0, "r-keep").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (115, Some(100), "completed")
    );
    assert_eq!(r.completed_at, before.completed_at, "completed_at kept");

    // R07 ClaimedGoalResetWithAllowReselection: claimed, stale, reselection: in_progress again.
    e.seed(
        "r07",
        "r-reselect",
        &format!("110, 'claimed', 100, {week_ago}, {week_ago}, {week_ago}"),
    )
    .await;
    let r = e
        .stat_then_row("r07", "s-reselect", 120.0, 5.0, "r-reselect")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (120, Some(115), "in_progress")
    );
    assert_eq!((r.claimed_at, r.completed_at), (None, None));
    assert_eq!(r.expires_at, next_midnight(&e.service, "r-reselect"));

    // R08 InProgressPreservedResetProgressFalse: 105 → 108, baseline 100 kept.
    e.seed(
        "r08",
        "r-keep",
        &format!("105, 'in_progress', 100, {stale}, NULL, NULL"),
    )
    .await;
    let r = e.stat_then_row("r08", "s-keep", 108.0, 3.0, "r-keep").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (108, Some(100), "in_progress")
    );

    // R09 LoginEvent_NilProgress_WithRotation: 5 + 1, new baseline 5.
    e.seed(
        "r09",
        "l-rot",
        &format!("5, 'in_progress', 3, {stale}, NULL, NULL"),
    )
    .await;
    let r = e.login_then_row("r09", "l-rot").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (6, Some(5), "in_progress")
    );

    // R10 LoginEvent_NilProgress_NoRotation: 3 + 1, baseline 0 kept.
    e.seed(
        "r10",
        "l-plain",
        "3, 'in_progress', 0, NOW() - interval '5 minutes', NULL, NULL",
    )
    .await;
    let r = e.login_then_row("r10", "l-plain").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (4, Some(0), "in_progress")
    );

    // A claimed row with reselection, within its period: progress follows, still claimed.
    e.seed("r11", "r-reselect", "110, 'claimed', 100, NOW() - interval '1 minute', NOW() - interval '2 minutes', NOW() - interval '1 minute'").await;
    let before = e.row("r11", "r-reselect").await;
    let r = e
        .stat_then_row("r11", "s-reselect", 130.0, 20.0, "r-reselect")
        .await;
    assert_eq!(
        (r.progress, r.status.as_str(), r.claimed_at),
        (130, "claimed", before.claimed_at)
    );

    // Inactive rows are never touched.
    sqlx::query(&format!(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status, is_active, updated_at)
         VALUES ('r12', 'r-plain', 'c', '{NAMESPACE}', 3, 'in_progress', false, NOW() - interval '1 hour')"
    ))
    .execute(&e.service.pool)
    .await
    .unwrap();
    let before = e.row("r12", "r-plain").await;
    let r = e
        .stat_then_row("r12", "s-plain", 50.0, 5.0, "r-plain")
        .await;
    assert_eq!(r, before, "an inactive row changed");
    e.svc.stop().await.unwrap();
}

#[tokio::test]
async fn the_four_decided_differences_where_upstreams_quirks_would_show() {
    let e = Env::with_config(Some(CASES)).await;
    let stale = midnight("- interval '2 hours'");

    // Quirk A (upstream: completed with completed_at NULL; its claim then violates
    // check_claimed_implies_completed): completed always comes with completed_at.
    e.seed(
        "qa",
        "r-keep",
        &format!("105, 'in_progress', 100, {stale}, NULL, NULL"),
    )
    .await;
    let r = e.stat_then_row("qa", "s-keep", 110.0, 5.0, "r-keep").await;
    assert_eq!(
        (r.status.as_str(), r.baseline_value),
        ("completed", Some(100))
    );
    assert!(r.completed_at.is_some_and(|t| recent(t, 30)), "{r:?}");
    e.service
        .claim("qa", "r-keep")
        .await
        .expect("the claim succeeds");

    // Quirk B (as upstream): stale, no reset, no baseline yet: the baseline
    // stays NULL until the next event of the period.
    e.seed(
        "qb",
        "r-keep",
        &format!("0, 'not_started', NULL, {stale}, NULL, NULL"),
    )
    .await;
    let r = e.stat_then_row("qb", "s-keep", 40.0, 4.0, "r-keep").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (40, None, "in_progress")
    );
    let r = e.stat_then_row("qb", "s-keep", 43.0, 3.0, "r-keep").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (43, Some(40), "in_progress")
    );

    // Results never depend on flush timing: two stat events of one player in
    // one flush give what two flushes give (upstream keeps only the second:
    // baseline 100 − 2 = 98 and the goal shows 2; one by one: baseline 90, 10).
    e.seed("q1", "r-plain", "0, 'not_started', NULL, NOW(), NULL, NULL")
        .await;
    e.stat("q1", "s-plain", 98.0, 8.0).await;
    e.stat("q1", "s-plain", 100.0, 2.0).await;
    e.settle().await;
    let r = e.row("q1", "r-plain").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (100, Some(90), "completed")
    );
    assert!(r.completed_at.is_some());
    e.svc.stop().await.unwrap();
}

#[tokio::test]
async fn the_handlers_integration_cases_replayed_as_events() {
    let e = Env::with_config(Some(CASES)).await;

    // I01: absolute kills 50 → 75 → 100; no row before Initialize, none made by an event.
    e.stat("i01", "kills", 50.0, 1.0).await;
    e.settle().await;
    assert_eq!(
        e.service.row("i01", "kills_goal_absolute").await,
        None,
        "an event created a row"
    );
    e.seed(
        "i01",
        "kills_goal_absolute",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("i01", "kills", 50.0, 1.0, "kills_goal_absolute")
        .await;
    assert_eq!((r.progress, r.status.as_str()), (50, "in_progress"));
    let r = e
        .stat_then_row("i01", "kills", 75.0, 1.0, "kills_goal_absolute")
        .await;
    assert_eq!(
        (r.progress, r.status.as_str()),
        (75, "in_progress"),
        "replaced, not 125"
    );
    let r = e
        .stat_then_row("i01", "kills", 100.0, 1.0, "kills_goal_absolute")
        .await;
    assert_eq!(
        (r.progress, r.status.as_str(), r.baseline_value),
        (100, "completed", None)
    );
    assert!(r.completed_at.is_some());

    // I02: exceeds the target.
    e.seed(
        "i02",
        "kills_goal_absolute",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("i02", "kills", 150.0, 1.0, "kills_goal_absolute")
        .await;
    assert_eq!((r.progress, r.status.as_str()), (150, "completed"));

    // I03: a negative value is skipped (and counted).
    e.seed(
        "i03",
        "kills_goal_absolute",
        "7, 'in_progress', NULL, NOW(), NULL, NULL",
    )
    .await;
    let before = e.row("i03", "kills_goal_absolute").await;
    let r = e
        .stat_then_row("i03", "kills", -10.0, 1.0, "kills_goal_absolute")
        .await;
    assert_eq!(r, before);
    assert!(
        e.svc
            .metrics()
            .await
            .contains("challenge_event_handler_events_negative_value_total 1"),
        "the skipped event is counted"
    );

    // I04: absolute target 1 completes at once.
    e.seed(
        "i04",
        "daily_quest",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("i04", "daily_quest_completed", 1.0, 1.0, "daily_quest")
        .await;
    assert_eq!((r.progress, r.status.as_str()), (1, "completed"));
    assert!(r.completed_at.is_some());

    // I05: a login adds 1 to an absolute login goal.
    e.seed(
        "i05",
        "login_goal_absolute",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    let r = e.login_then_row("i05", "login_goal_absolute").await;
    assert_eq!((r.progress, r.status.as_str()), (1, "in_progress"));

    // I07: the first relative event sets the baseline (50 − 1), and the expiry.
    e.seed(
        "i07",
        "daily_kills_relative",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("i07", "kills", 50.0, 1.0, "daily_kills_relative")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (50, Some(49), "in_progress")
    );
    assert_eq!(
        r.expires_at,
        next_midnight(&e.service, "daily_kills_relative")
    );

    // I08: a row last updated 25 hours ago gets a new baseline (55 − 1).
    e.seed(
        "i08",
        "daily_kills_relative",
        "48, 'in_progress', 40, NOW() - interval '25 hours', NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("i08", "kills", 55.0, 1.0, "daily_kills_relative")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (55, Some(54), "in_progress")
    );

    // I09: complete on day 1, rotate, re-complete on day 2.
    e.seed(
        "i09",
        "daily_kills_relative",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    let r = e
        .stat_then_row("i09", "kills", 100.0, 1.0, "daily_kills_relative")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (100, Some(99), "in_progress")
    );
    let r = e
        .stat_then_row("i09", "kills", 110.0, 1.0, "daily_kills_relative")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (110, Some(99), "completed")
    );
    assert!(r.completed_at.is_some());
    e.service
        .backdate("i09", "daily_kills_relative", "25 hours")
        .await;
    let r = e
        .stat_then_row("i09", "kills", 113.0, 3.0, "daily_kills_relative")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (113, Some(110), "in_progress")
    );
    assert_eq!(r.completed_at, None);
    let r = e
        .stat_then_row("i09", "kills", 123.0, 10.0, "daily_kills_relative")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (123, Some(110), "completed")
    );
    assert!(r.completed_at.is_some());

    // One stat code moves every goal on it (here kills: the absolute and the
    // relative goal), a login every goal on a login goal's code.
    e.seed(
        "fan",
        "kills_goal_absolute",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    e.seed(
        "fan",
        "daily_kills_relative",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    e.seed(
        "fan",
        "l-plain",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    e.stat("fan", "kills", 30.0, 30.0).await;
    let r = e.login_then_row("fan", "l-plain").await;
    assert_eq!((r.progress, r.baseline_value), (1, Some(0)));
    assert_eq!(e.row("fan", "kills_goal_absolute").await.progress, 30);
    let r = e.row("fan", "daily_kills_relative").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (30, Some(0), "completed")
    );
    e.svc.stop().await.unwrap();
}

#[tokio::test]
async fn upstreams_m5_end_to_end_scenarios_on_the_example_config() {
    let e = Env::with_config(None).await;
    let s = &e.service;

    // basic: Initialize; kills 100 (+5) shows 5; 105 (+5) completes at 10.
    s.initialize("basic", NAMESPACE).await;
    assert_eq!(
        s.displayed("basic", "daily-kills").await,
        (0, "not_started".into())
    );
    e.stat_then_row("basic", "kills", 100.0, 5.0, "daily-kills")
        .await;
    assert_eq!(
        s.displayed("basic", "daily-kills").await,
        (5, "in_progress".into())
    );
    assert_eq!(
        s.displayed("basic", "weekly-kills").await,
        (5, "in_progress".into())
    );
    assert_eq!(
        s.displayed("basic", "monthly-kills").await,
        (5, "in_progress".into())
    );
    let r = e
        .stat_then_row("basic", "kills", 105.0, 5.0, "daily-kills")
        .await;
    assert_eq!(
        s.displayed("basic", "daily-kills").await,
        (10, "completed".into())
    );
    assert!(r.completed_at.is_some());

    // reset: completed on the first event (+10); rotated (backdated 2 days)
    // it shows 0; the next event re-baselines at 55 − 5.
    s.initialize("reset", NAMESPACE).await;
    e.stat_then_row("reset", "kills", 50.0, 10.0, "daily-kills")
        .await;
    assert_eq!(
        s.displayed("reset", "daily-kills").await,
        (10, "completed".into())
    );
    s.backdate("reset", "daily-kills", "2 days").await;
    assert_eq!(
        s.displayed("reset", "daily-kills").await,
        (0, "not_started".into())
    );
    assert!(s
        .claim("reset", "daily-kills")
        .await
        .unwrap_err()
        .contains("rotated"));
    let r = e
        .stat_then_row("reset", "kills", 55.0, 5.0, "daily-kills")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (55, Some(50), "in_progress")
    );
    assert_eq!(r.completed_at, None);
    assert_eq!(r.expires_at, next_midnight(s, "daily-kills"));
    assert_eq!(
        s.displayed("reset", "daily-kills").await,
        (5, "in_progress".into())
    );

    // login: the first login completes the daily login goal (1, baseline 0)
    // and the absolute one; the next day's login completes it again.
    s.initialize("login", NAMESPACE).await;
    let r = e.login_then_row("login", "daily-login").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (1, Some(0), "completed")
    );
    let first = e.row("login", "first-login").await;
    assert_eq!((first.progress, first.status.as_str()), (1, "completed"));
    s.backdate("login", "daily-login", "2 days").await;
    assert_eq!(
        s.displayed("login", "daily-login").await,
        (0, "not_started".into())
    );
    let r = e.login_then_row("login", "daily-login").await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (2, Some(1), "completed")
    );
    assert!(r.completed_at.is_some_and(|t| recent(t, 30)));
    let again = e.row("login", "first-login").await;
    assert_eq!(
        (again.progress, again.completed_at),
        (2, first.completed_at)
    );

    // claimed: a goal without reselection, claimed, stays claimed for good —
    // events leave its row alone even after a rotation.
    s.initialize("claimed", NAMESPACE).await;
    e.stat_then_row("claimed", "wins", 30.0, 3.0, "daily-wins-once")
        .await;
    assert_eq!(
        s.displayed("claimed", "daily-wins-once").await.1,
        "completed"
    );
    s.claim("claimed", "daily-wins-once").await.unwrap();
    s.backdate("claimed", "daily-wins-once", "2 days").await;
    assert_eq!(s.displayed("claimed", "daily-wins-once").await.1, "claimed");
    let before = e.row("claimed", "daily-wins-once").await;
    e.stat_then_row("claimed", "wins", 35.0, 5.0, "daily-wins-once")
        .await;
    assert_eq!(e.row("claimed", "daily-wins-once").await, before);
    let kept = e.row("claimed", "season-wins").await;
    assert_eq!(
        (kept.progress, kept.baseline_value, kept.status.as_str()),
        (35, Some(27), "completed")
    );

    // full-cycle: complete, claim, rotate, complete again (claimed → reselected), claim again.
    s.initialize("cycle", NAMESPACE).await;
    e.stat_then_row("cycle", "kills", 50.0, 10.0, "daily-kills")
        .await;
    s.claim("cycle", "daily-kills").await.unwrap();
    s.backdate("cycle", "daily-kills", "2 days").await;
    assert_eq!(
        s.displayed("cycle", "daily-kills").await,
        (0, "not_started".into())
    );
    let r = e
        .stat_then_row("cycle", "kills", 60.0, 10.0, "daily-kills")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (60, Some(50), "completed")
    );
    assert_eq!(r.claimed_at, None);
    assert!(r.completed_at.is_some_and(|t| recent(t, 30)));
    s.claim("cycle", "daily-kills")
        .await
        .expect("claimable again in the new period");
    let r = e.row("cycle", "daily-kills").await;
    assert_eq!(r.status, "claimed");
    assert!(r.claimed_at.is_some());

    // no-reset: a weekly goal that keeps its progress; after a rotation
    // (backdated 8 days) the next event counts on the old baseline (23 − 17 = 6 ≥ 5).
    s.initialize("noreset", NAMESPACE).await;
    e.stat_then_row("noreset", "wins", 20.0, 3.0, "season-wins")
        .await;
    assert_eq!(
        s.displayed("noreset", "season-wins").await,
        (3, "in_progress".into())
    );
    s.backdate("noreset", "season-wins", "8 days").await;
    assert_eq!(
        s.displayed("noreset", "season-wins").await,
        (3, "in_progress".into())
    );
    let r = e
        .stat_then_row("noreset", "wins", 23.0, 3.0, "season-wins")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (23, Some(17), "completed")
    );
    // Upstream leaves completed_at NULL here (Quirk A); so a claim would fail.
    assert!(r.completed_at.is_some());
    s.claim("noreset", "season-wins").await.unwrap();

    // multi-period: completed, then 7 periods later a new one starts from 305 − 5.
    s.initialize("multi", NAMESPACE).await;
    e.stat_then_row("multi", "kills", 300.0, 10.0, "daily-kills")
        .await;
    s.backdate("multi", "daily-kills", "7 days").await;
    let r = e
        .stat_then_row("multi", "kills", 305.0, 5.0, "daily-kills")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (305, Some(300), "in_progress")
    );
    assert_eq!(
        (r.completed_at, r.expires_at),
        (None, next_midnight(s, "daily-kills"))
    );

    // initialize (Quirk C): the service's reset of a returning player keeps
    // the baseline; the next event re-baselines (upstream: 110 − 95 = 15, completed at once).
    s.initialize("init", NAMESPACE).await;
    e.stat_then_row("init", "kills", 100.0, 5.0, "daily-kills")
        .await;
    e.stat_then_row("init", "kills", 105.0, 5.0, "daily-kills")
        .await;
    s.backdate("init", "daily-kills", "2 days").await;
    assert!(
        s.initialize("init", NAMESPACE).await >= 1,
        "the returning player's rotated rows are reset"
    );
    let reset = e.row("init", "daily-kills").await;
    assert_eq!(
        (reset.progress, reset.baseline_value, reset.status.as_str()),
        (0, Some(95), "not_started")
    );
    let r = e
        .stat_then_row("init", "kills", 110.0, 5.0, "daily-kills")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (110, Some(105), "in_progress")
    );
    assert_eq!(
        s.displayed("init", "daily-kills").await,
        (5, "in_progress".into())
    );

    // never-progressed: a row Initialize made and no event touched, rotated.
    s.initialize("never", NAMESPACE).await;
    s.backdate("never", "daily-kills", "2 days").await;
    let r = e
        .stat_then_row("never", "kills", 40.0, 4.0, "daily-kills")
        .await;
    assert_eq!(
        (r.progress, r.baseline_value, r.status.as_str()),
        (40, Some(36), "in_progress")
    );
    assert_eq!(r.expires_at, next_midnight(s, "daily-kills"));
    e.svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_player_the_service_has_not_initialized_gets_no_row_from_events_and_then_every_default_goal(
) {
    let e = Env::with_config(None).await;
    e.stat("newbie", "kills", 100.0, 5.0).await;
    e.svc.login(login("newbie", "", "")).await.unwrap();
    e.settle().await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_goal_progress WHERE user_id = 'newbie'")
            .fetch_one(&e.service.pool)
            .await
            .unwrap();
    assert_eq!(
        rows, 0,
        "an event created a row of a player the service owns"
    );
    // Counted just after the flush's commit, which the settling row's
    // visibility can precede by a moment on busy cores.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (not_initialized, metrics) = loop {
        let metrics = e.svc.metrics().await;
        let not_initialized = metrics
            .lines()
            .find(|l| l.starts_with("challenge_event_handler_updates_not_applied_total{reason=\"player_not_initialized\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if not_initialized >= 5.0 || std::time::Instant::now() > deadline {
            break (not_initialized, metrics);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // kills moves daily-kills, weekly-kills, monthly-kills; a login first-login and daily-login.
    assert_eq!(not_initialized, 5.0, "{metrics}");

    // The service's Initialize still sees a new player and gives every default goal.
    assert_eq!(e.service.initialize("newbie", NAMESPACE).await, 7);
    let r = e
        .stat_then_row("newbie", "kills", 120.0, 5.0, "daily-kills")
        .await;
    assert_eq!((r.progress, r.baseline_value), (120, Some(115)));
    e.svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_row_the_rules_cannot_update_within_the_tables_check_stops_the_flush_by_name_and_loses_nothing(
) {
    let e = Env::with_config(Some(CASES)).await;
    // A row no path of the service or of the handler leaves, edited by hand:
    // claimed_at set on a row that is not claimed. A new period of a goal
    // that resets clears completed_at and keeps claimed_at (as upstream's
    // flush does), which the table's check_claimed_implies_completed refuses.
    let stale = midnight("- interval '2 hours'");
    e.seed(
        "hand-edited",
        "r-reset",
        &format!("12, 'in_progress', 0, {stale}, {stale}, {stale}"),
    )
    .await;
    e.stat("hand-edited", "s-reset", 3.0, 3.0).await;

    // The flush fails loudly, and the failure names the row.
    let error = e.flush_error().await;
    assert!(
        error.contains("check_claimed_implies_completed")
            && error.contains("Failing row contains (hand-edited, r-reset"),
        "{error}"
    );

    // Once the row is mended, the acknowledged update lands.
    sqlx::query("UPDATE user_goal_progress SET claimed_at = NULL WHERE user_id = 'hand-edited'")
        .execute(&e.service.pool)
        .await
        .unwrap();
    let r = e.wait("hand-edited", "r-reset", |r| r.progress == 3).await;
    assert_eq!(
        (r.status.as_str(), r.baseline_value, r.completed_at),
        ("in_progress", Some(0), None)
    );
    e.svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_row_with_a_time_the_handler_cannot_read_stops_the_flush_by_name_and_loses_nothing() {
    let e = Env::with_config(Some(CASES)).await;
    // PostgreSQL holds 'infinity' (an operator's "never expires"); chrono
    // has no such time, and sqlx panicked decoding it: the flush task died
    // and nothing said so.
    e.seed(
        "forever",
        "r-plain",
        "0, 'not_started', NULL, NOW(), NULL, NULL",
    )
    .await;
    sqlx::query("UPDATE user_goal_progress SET expires_at = 'infinity' WHERE user_id = 'forever'")
        .execute(&e.service.pool)
        .await
        .unwrap();
    e.stat("forever", "s-plain", 4.0, 4.0).await;

    let error = e.flush_error().await;
    assert!(
        error.contains("row forever/r-plain holds a time the handler cannot read"),
        "{error}"
    );
    // The operators' read of the player says the same, without a panic.
    let (code, _, stderr) = common::cli(
        e._dir.path(),
        &["progress", "--user", "forever"],
        &[("DATABASE_URL", &e._db.url)],
    );
    assert!(
        code == 1 && stderr.contains("user forever holds a time the handler cannot read"),
        "{code}: {stderr}"
    );
    // The service still serves and acknowledges.
    e.stat("forever", "s-plain", 6.0, 2.0).await;

    sqlx::query("UPDATE user_goal_progress SET expires_at = NULL WHERE user_id = 'forever'")
        .execute(&e.service.pool)
        .await
        .unwrap();
    let r = e.wait("forever", "r-plain", |r| r.progress == 6).await;
    assert_eq!(
        (r.status.as_str(), r.baseline_value),
        ("in_progress", Some(0))
    );
    e.svc.stop().await.unwrap();
}
