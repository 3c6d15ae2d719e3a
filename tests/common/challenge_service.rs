//! What AccelByte's challenge service (M5, `extend-challenge-service` @
//! dae35d9 with `extend-challenge-common` v0.11.1) does to
//! `user_goal_progress`, for the drop-in tests: the same SQL effects, run
//! against the same table, so the handler's rows are read and claimed as the
//! service would read and claim them.
//!
//! - Initialize: a player with no row at all gets every `defaultAssigned`
//!   goal (progress 0, not_started, active, assigned now, expiring at the end
//!   of the period); a returning player's rotated rows are reset (progress 0,
//!   not_started, completed_at NULL, updated_at now — baseline_value kept)
//!   where the goal resets and the row is not claimed.
//! - Claim: refused when the row rotated (`updated_at` before the period's
//!   start) or is not completed; else claimed, claimed_at and updated_at now.
//! - Display: relative goals show `progress − baseline_value` (0 while the
//!   baseline is NULL); a rotated row of a resetting goal shows 0,
//!   not_started (unless claimed for good).

#![allow(dead_code)]

use chrono::NaiveDateTime;
use sqlx::PgPool;

use challenge_event_handler::clock::{micros_of, naive_micros, unix_ms};
use challenge_event_handler::config::challenges;
use challenge_event_handler::rules::m5::Rotation;
use challenge_event_handler::rules::{GoalDef, GoalRule};

/// Every column of a row, as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FullRow {
    pub progress: i32,
    pub status: String,
    pub baseline_value: Option<i32>,
    pub completed_at: Option<NaiveDateTime>,
    pub claimed_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
    pub expires_at: Option<NaiveDateTime>,
    pub is_active: bool,
}

pub struct ChallengeService {
    pub pool: PgPool,
    goals: Vec<GoalDef>,
}

impl ChallengeService {
    /// The service, configured with the challenges file at `config`.
    pub fn new(pool: PgPool, config: &std::path::Path) -> ChallengeService {
        let goals = challenges::load(config)
            .expect("a valid challenges file")
            .goals;
        ChallengeService { pool, goals }
    }

    fn goal(&self, goal_id: &str) -> &GoalDef {
        self.goals
            .iter()
            .find(|g| g.goal_id == goal_id)
            .unwrap_or_else(|| panic!("no goal {goal_id:?} in the config"))
    }

    fn rotation(&self, goal_id: &str) -> Option<Rotation> {
        match self.goal(goal_id).rule {
            GoalRule::M5(goal) => goal.rotation,
            GoalRule::Typed(_) => None,
        }
    }

    /// The start of the goal's current period (None: it does not rotate).
    pub fn period_start(&self, goal_id: &str) -> Option<NaiveDateTime> {
        self.rotation(goal_id)
            .map(|r| naive_micros(r.schedule.period_start(unix_ms() as i64) * 1000))
    }

    /// `POST /v1/challenges/initialize`. Returns how many rows it wrote.
    pub async fn initialize(&self, user: &str, namespace: &str) -> u64 {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM user_goal_progress WHERE user_id = $1")
                .bind(user)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        if count == 0 {
            let mut written = 0;
            for goal in self.goals.iter().filter(|g| g.default_assigned) {
                let expires = self.rotation(&goal.goal_id).map(|r| {
                    let start = r.schedule.period_start(unix_ms() as i64);
                    naive_micros(r.schedule.next_boundary(start) * 1000)
                });
                written += sqlx::query(
                    "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace,
                         progress, status, completed_at, claimed_at, created_at, updated_at,
                         is_active, assigned_at, expires_at, baseline_value)
                     VALUES ($1, $2, $3, $4, 0, 'not_started', NULL, NULL, NOW(), NOW(), true, NOW(), $5, NULL)
                     ON CONFLICT (user_id, goal_id) DO NOTHING",
                )
                .bind(user)
                .bind(&goal.goal_id)
                .bind(&goal.challenge_id)
                .bind(namespace)
                .bind(expires)
                .execute(&self.pool)
                .await
                .unwrap()
                .rows_affected();
            }
            return written;
        }
        // A returning player: rotated rows reset where the goal resets them.
        let rows: Vec<(String, String, NaiveDateTime)> = sqlx::query_as(
            "SELECT goal_id, status, updated_at FROM user_goal_progress
             WHERE user_id = $1 AND is_active = true",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut written = 0;
        for (goal_id, status, updated_at) in rows {
            let Some(rotation) = self.rotation(&goal_id) else {
                continue;
            };
            let start = self.period_start(&goal_id).unwrap();
            if updated_at >= start || status == "claimed" {
                continue;
            }
            // BatchUpsertProgress: progress, status, completed_at and updated_at
            // only; the baseline stays (Quirk C).
            let (progress, status, completed) = if rotation.reset_progress {
                ("0", "'not_started'", "NULL")
            } else {
                ("progress", "status", "completed_at")
            };
            written += sqlx::query(&format!(
                "UPDATE user_goal_progress SET progress = {progress}, status = {status},
                     completed_at = {completed}, updated_at = NOW()
                 WHERE user_id = $1 AND goal_id = $2 AND status <> 'claimed' AND is_active = true"
            ))
            .bind(user)
            .bind(&goal_id)
            .execute(&self.pool)
            .await
            .unwrap()
            .rows_affected();
        }
        written
    }

    /// `POST …/claim`: Ok, or the refusal.
    pub async fn claim(&self, user: &str, goal_id: &str) -> Result<(), String> {
        let mut tx = self.pool.begin().await.unwrap();
        let row: Option<(String, bool, NaiveDateTime)> = sqlx::query_as(
            "SELECT status, is_active, updated_at FROM user_goal_progress
             WHERE user_id = $1 AND goal_id = $2 FOR UPDATE",
        )
        .bind(user)
        .bind(goal_id)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
        let Some((status, active, updated_at)) = row else {
            return Err("goal not completed".into());
        };
        if !active {
            return Err("goal not active".into());
        }
        if self
            .period_start(goal_id)
            .is_some_and(|start| updated_at < start)
        {
            return Err("goal has rotated and must be re-completed".into());
        }
        match status.as_str() {
            "completed" => {}
            "claimed" => return Err("goal already claimed".into()),
            _ => return Err("goal not completed".into()),
        }
        sqlx::query(
            "UPDATE user_goal_progress SET status = 'claimed', claimed_at = NOW(), updated_at = NOW()
             WHERE user_id = $1 AND goal_id = $2 AND status = 'completed' AND claimed_at IS NULL",
        )
        .bind(user)
        .bind(goal_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| format!("the claim's UPDATE failed: {e}"))?;
        tx.commit().await.unwrap();
        Ok(())
    }

    /// What `GET /v1/challenges` shows for the goal: (progress, status).
    pub async fn displayed(&self, user: &str, goal_id: &str) -> (i32, String) {
        let Some(row) = self.row(user, goal_id).await else {
            return (0, "not_started".into());
        };
        let relative = matches!(self.goal(goal_id).rule, GoalRule::M5(g) if g.relative);
        let shown = if relative {
            row.baseline_value.map_or(0, |b| (row.progress - b).max(0))
        } else {
            row.progress
        };
        let rotation = self.rotation(goal_id);
        let rotated = self
            .period_start(goal_id)
            .is_some_and(|start| row.updated_at < start);
        match rotation {
            Some(r) if rotated && r.reset_progress => {
                if row.status == "claimed" && !r.allow_reselection {
                    (shown, row.status)
                } else {
                    (0, "not_started".into())
                }
            }
            _ => (shown, row.status),
        }
    }

    pub async fn row(&self, user: &str, goal_id: &str) -> Option<FullRow> {
        sqlx::query_as(
            "SELECT progress, status, baseline_value, completed_at, claimed_at, updated_at,
                    expires_at, is_active
             FROM user_goal_progress WHERE user_id = $1 AND goal_id = $2",
        )
        .bind(user)
        .bind(goal_id)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }

    /// Moves the row's `updated_at` back (as upstream's E2E scripts do to
    /// simulate a rotation).
    pub async fn backdate(&self, user: &str, goal_id: &str, interval: &str) {
        sqlx::query(&format!(
            "UPDATE user_goal_progress SET updated_at = updated_at - INTERVAL '{interval}'
             WHERE user_id = $1 AND goal_id = $2"
        ))
        .bind(user)
        .bind(goal_id)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// The end of the goal's current period.
    pub fn period_end(&self, goal_id: &str) -> Option<NaiveDateTime> {
        self.rotation(goal_id).map(|r| {
            let start = r.schedule.period_start(unix_ms() as i64);
            naive_micros(r.schedule.next_boundary(start) * 1000)
        })
    }
}

/// Whether `t` is within `seconds` of now.
pub fn recent(t: NaiveDateTime, seconds: i64) -> bool {
    (micros_of(t) / 1000 - unix_ms() as i64).abs() <= seconds * 1000
}

/// Waits until the next UTC midnight is at least `margin` away, so a test
/// that computes "today" does not straddle it (upstream's scripts have the
/// same window).
pub async fn away_from_midnight(margin: std::time::Duration) {
    const DAY_MS: u64 = 86_400_000;
    let into_day = unix_ms() % DAY_MS;
    let left = DAY_MS - into_day;
    if left < margin.as_millis() as u64 {
        tokio::time::sleep(std::time::Duration::from_millis(left + 1_000)).await;
    }
}
