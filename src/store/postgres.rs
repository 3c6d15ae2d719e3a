//! PostgreSQL store: batch UPSERTs of `user_goal_progress` with one array per
//! column and `UNNEST`, keys sorted and unique per statement, the watermark in
//! the same transaction.
//!
//! The SQL applies the same rules as the coalescing buffer (docs/DESIGN.md):
//! claimed and inactive rows are left alone (a daily goal
//! re-completes on a later UTC day even when claimed); an absolute goal is never
//! overwritten by an older event; a daily-increment goal counts a UTC day once;
//! progress is never capped at the target (a completed, unclaimed goal keeps
//! counting). GDPR deletions run first in the transaction. `src/model.rs` states the same rules in
//! Rust, and tests/properties.rs checks these statements against it on a real
//! PostgreSQL.

use chrono::NaiveDate;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{Applied, Deleted, Lease, ProgressRow, ProgressStore, Result, StoreError, Watermark};
use crate::buffer::{Buffer, Key, Meta};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// PostgreSQL's errors as the store's: what waiting can fix is `Unavailable`
/// (the connection, the server starting or shutting down, resources, a
/// serialization failure or deadlock); everything else needs an operator.
fn pg(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: shutdown, cannot connect now;
        // 53: insufficient resources; 40: serialization failure / deadlock.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("40")
        }),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Rejected(e.to_string())
    }
}

fn pg_migrate(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => pg(e),
        other => StoreError::Rejected(format!("migration failed: {other}")),
    }
}

const READ_ROWS_SQL: &str = "
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       is_active, updated_at, last_event_at, last_counted_day
FROM user_goal_progress
WHERE user_id = $1 AND ($2::varchar IS NULL OR goal_id = $2)
ORDER BY goal_id";

const LEASE_SQL: &str = "
INSERT INTO challenge_event_handler_watermark AS w (instance_id, epoch, applied_seq)
VALUES ($1, 1, 0)
ON CONFLICT (instance_id) DO UPDATE SET epoch = w.epoch + 1, updated_at = now()
RETURNING epoch, applied_seq";

const WATERMARK_SQL: &str = "
UPDATE challenge_event_handler_watermark
SET applied_seq = GREATEST(applied_seq, $3), updated_at = now()
WHERE instance_id = $1 AND epoch = $2";

const READ_WATERMARK_SQL: &str = "
SELECT epoch, applied_seq FROM challenge_event_handler_watermark WHERE instance_id = $1";

/// Rows of an entry whose goal is not assigned by default are only updated,
/// never created: the challenge service creates them when a player activates
/// the goal. (Statements for such entries get this filter; the others none.)
const ONLY_EXISTING: &str = "
WHERE EXISTS (SELECT 1 FROM user_goal_progress e
              WHERE e.user_id = u.user_id AND e.goal_id = u.goal_id)";

/// Absolute goals: the newest event's value becomes progress (never capped);
/// a batch in which an event reached the target completes the goal at that
/// event; a completed row follows the value and stays completed.
const ABSOLUTE_SQL: &str = "
INSERT INTO user_goal_progress AS t
    (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
     target_value, last_event_at, created_at, updated_at)
SELECT u.user_id, u.goal_id, u.challenge_id, u.namespace, u.value,
       CASE WHEN u.reached_at IS NOT NULL THEN 'completed' ELSE 'in_progress' END,
       u.reached_at,
       u.target, u.event_at, now(), now()
FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::int4[],
            $6::int4[], $7::timestamp[], $8::timestamp[])
     AS u(user_id, goal_id, challenge_id, namespace, target, value, event_at, reached_at)
{filter}
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    challenge_id = EXCLUDED.challenge_id,
    progress = EXCLUDED.progress,
    status = CASE WHEN t.status = 'completed' THEN 'completed' ELSE EXCLUDED.status END,
    completed_at = CASE WHEN t.status = 'completed' THEN t.completed_at
                        ELSE EXCLUDED.completed_at END,
    target_value = EXCLUDED.target_value,
    last_event_at = EXCLUDED.last_event_at,
    updated_at = EXCLUDED.updated_at
WHERE t.is_active
  AND t.status <> 'claimed'
  AND (t.last_event_at IS NULL OR t.last_event_at <= EXCLUDED.last_event_at)";

/// Increment goals (`day` NULL) and daily-increment goals (`delta` 1, `day` set:
/// skipped when that UTC day was already counted). Progress is the sum, never
/// capped (the INT column saturates); a completed row keeps counting and keeps
/// its first `completed_at`.
const INCREMENT_SQL: &str = "
INSERT INTO user_goal_progress AS t
    (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
     target_value, last_event_at, last_counted_day, created_at, updated_at)
SELECT u.user_id, u.goal_id, u.challenge_id, u.namespace, u.delta,
       CASE WHEN u.delta >= u.target THEN 'completed' ELSE 'in_progress' END,
       CASE WHEN u.delta >= u.target THEN u.event_at END,
       u.target, u.event_at, u.day, now(), now()
FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::int4[],
            $6::int4[], $7::timestamp[], $8::date[])
     AS u(user_id, goal_id, challenge_id, namespace, target, delta, event_at, day)
{filter}
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    challenge_id = EXCLUDED.challenge_id,
    progress = LEAST(t.progress::int8 + EXCLUDED.progress, 2147483647)::int4,
    status = CASE WHEN t.status = 'completed'
                    OR t.progress::int8 + EXCLUDED.progress >= EXCLUDED.target_value
                  THEN 'completed' ELSE 'in_progress' END,
    completed_at = CASE WHEN t.status = 'completed' THEN t.completed_at
                        WHEN t.progress::int8 + EXCLUDED.progress >= EXCLUDED.target_value
                        THEN EXCLUDED.last_event_at END,
    target_value = EXCLUDED.target_value,
    last_event_at = GREATEST(t.last_event_at, EXCLUDED.last_event_at),
    last_counted_day = COALESCE(EXCLUDED.last_counted_day, t.last_counted_day),
    updated_at = EXCLUDED.updated_at
WHERE t.is_active
  AND t.status <> 'claimed'
  AND (EXCLUDED.last_counted_day IS NULL
       OR t.last_counted_day IS NULL
       OR t.last_counted_day < EXCLUDED.last_counted_day)";

/// Daily goals: completed for the event's UTC day; a later day re-completes,
/// even a claimed row (which becomes claimable again).
const DAILY_SQL: &str = "
INSERT INTO user_goal_progress AS t
    (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
     target_value, last_event_at, last_counted_day, created_at, updated_at)
SELECT u.user_id, u.goal_id, u.challenge_id, u.namespace, 1, 'completed', u.event_at,
       u.target, u.event_at, u.day, now(), now()
FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::int4[],
            $6::timestamp[], $7::date[])
     AS u(user_id, goal_id, challenge_id, namespace, target, event_at, day)
{filter}
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    challenge_id = EXCLUDED.challenge_id,
    progress = EXCLUDED.progress,
    status = 'completed',
    completed_at = EXCLUDED.completed_at,
    claimed_at = NULL,
    target_value = EXCLUDED.target_value,
    last_event_at = EXCLUDED.last_event_at,
    last_counted_day = EXCLUDED.last_counted_day,
    updated_at = EXCLUDED.updated_at
WHERE t.is_active
  AND (t.last_counted_day IS NULL OR t.last_counted_day < EXCLUDED.last_counted_day)";

/// GDPR deletions: every row of each (user, namespace); the rows deleted are
/// returned for the audit log.
const DELETE_SQL: &str = "
DELETE FROM user_goal_progress AS t
USING (SELECT DISTINCT user_id, namespace
       FROM UNNEST($1::varchar[], $2::varchar[]) AS d(user_id, namespace)) AS d
WHERE t.user_id = d.user_id AND t.namespace = d.namespace
RETURNING t.user_id, t.namespace";

/// One upsert statement in its two forms: `[creates rows, only existing rows]`.
struct Upsert([String; 2]);

impl Upsert {
    fn new(template: &str) -> Upsert {
        Upsert([
            template.replace("{filter}", ""),
            template.replace("{filter}", ONLY_EXISTING),
        ])
    }

    fn sql(&self, creates_row: bool) -> &str {
        &self.0[usize::from(!creates_row)]
    }
}

static UPSERTS: std::sync::LazyLock<[Upsert; 3]> = std::sync::LazyLock::new(|| {
    [
        Upsert::new(ABSOLUTE_SQL),
        Upsert::new(INCREMENT_SQL),
        Upsert::new(DAILY_SQL),
    ]
});

pub struct PgStore {
    pool: PgPool,
    batch_size: usize,
}

impl PgStore {
    /// A lazily connecting pool: building the service never waits for the database.
    /// Sessions run in UTC, so `now()` and the `TIMESTAMP` columns agree.
    pub fn connect_lazy(
        options: PgConnectOptions,
        max_connections: u32,
        batch_size: usize,
    ) -> Self {
        let options = options.options([("timezone", "UTC")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(options);
        PgStore {
            pool,
            batch_size: batch_size.max(1),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Column arrays shared by every statement.
#[derive(Default)]
struct Columns {
    user_id: Vec<String>,
    goal_id: Vec<String>,
    challenge_id: Vec<String>,
    namespace: Vec<String>,
    target: Vec<i32>,
}

impl Columns {
    fn push(&mut self, key: &Key, meta: &Meta) {
        self.user_id.push(key.user_id.clone());
        self.goal_id.push(key.goal_id.clone());
        self.challenge_id.push(meta.challenge_id.clone());
        self.namespace.push(meta.namespace.clone());
        self.target.push(meta.target);
    }

    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.user_id)
            .bind(self.goal_id)
            .bind(self.challenge_id)
            .bind(self.namespace)
            .bind(self.target)
    }
}

use crate::clock::naive as timestamp;

fn date(day: i32) -> NaiveDate {
    const CE_TO_UNIX_DAYS: i32 = 719_163;
    NaiveDate::from_num_days_from_ce_opt(day.saturating_add(CE_TO_UNIX_DAYS)).unwrap_or_default()
}

/// A buffer entry as [`crate::buffer::Pending::sorted`] lists it.
type Entry<'b, T> = (&'b Key, &'b Meta, &'b T);

/// Entries split into those that may create their row and those that may
/// not, each still in key order.
fn by_creates_row<'b, T>(entries: Vec<Entry<'b, T>>) -> [(bool, Vec<Entry<'b, T>>); 2] {
    let (create, existing): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.1.creates_row);
    [(true, create), (false, existing)]
}

const ABSOLUTE: usize = 0;
const INCREMENT: usize = 1;
const DAILY: usize = 2;

impl PgStore {
    async fn write_absolute(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &Buffer,
    ) -> sqlx::Result<()> {
        for (creates_row, entries) in by_creates_row(batch.absolute.sorted()) {
            for chunk in entries.chunks(self.batch_size) {
                let mut cols = Columns::default();
                let (mut values, mut times, mut reached) = (Vec::new(), Vec::new(), Vec::new());
                for (key, meta, latest) in chunk {
                    cols.push(key, meta);
                    values.push(latest.value);
                    times.push(timestamp(latest.event_time_ms));
                    reached.push(latest.reached_ms.map(timestamp));
                }
                cols.bind(sqlx::query(UPSERTS[ABSOLUTE].sql(creates_row)))
                    .bind(values)
                    .bind(times)
                    .bind(reached)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    async fn write_increments(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &Buffer,
    ) -> sqlx::Result<()> {
        for (creates_row, entries) in by_creates_row(batch.increment.sorted()) {
            for chunk in entries.chunks(self.batch_size) {
                let mut cols = Columns::default();
                let (mut deltas, mut times) = (Vec::new(), Vec::new());
                for (key, meta, sum) in chunk {
                    cols.push(key, meta);
                    deltas.push(sum.delta);
                    times.push(timestamp(sum.last_event_ms));
                }
                let days: Vec<Option<NaiveDate>> = vec![None; deltas.len()];
                cols.bind(sqlx::query(UPSERTS[INCREMENT].sql(creates_row)))
                    .bind(deltas)
                    .bind(times)
                    .bind(days)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        // Daily increments: one statement round per distinct day, oldest first, so
        // a key appears at most once per statement and days are counted in order.
        for (creates_row, rows) in by_creates_row(batch.daily_increment.sorted()) {
            let rounds = rows
                .iter()
                .map(|(_, _, days)| days.0.len())
                .max()
                .unwrap_or(0);
            for round in 0..rounds {
                let in_round: Vec<_> = rows
                    .iter()
                    .filter_map(|(key, meta, days)| {
                        days.0
                            .iter()
                            .nth(round)
                            .map(|(day, time)| (*key, *meta, *day, *time))
                    })
                    .collect();
                for chunk in in_round.chunks(self.batch_size) {
                    let mut cols = Columns::default();
                    let (mut times, mut days) = (Vec::new(), Vec::new());
                    for (key, meta, day, time) in chunk {
                        cols.push(key, meta);
                        times.push(timestamp(*time));
                        days.push(Some(date(*day)));
                    }
                    cols.bind(sqlx::query(UPSERTS[INCREMENT].sql(creates_row)))
                        .bind(vec![1i32; days.len()])
                        .bind(times)
                        .bind(days)
                        .execute(&mut **tx)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn write_daily(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &Buffer,
    ) -> sqlx::Result<()> {
        for (creates_row, entries) in by_creates_row(batch.daily.sorted()) {
            for chunk in entries.chunks(self.batch_size) {
                let mut cols = Columns::default();
                let (mut times, mut days) = (Vec::new(), Vec::new());
                for (key, meta, latest) in chunk {
                    cols.push(key, meta);
                    times.push(timestamp(latest.event_time_ms));
                    days.push(date(latest.day));
                }
                cols.bind(sqlx::query(UPSERTS[DAILY].sql(creates_row)))
                    .bind(times)
                    .bind(days)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes the rows of every deleted user; returns how many each lost.
    async fn delete_users(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &Buffer,
    ) -> sqlx::Result<Vec<Deleted>> {
        if batch.deletions.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<&str> = batch
            .deletions
            .iter()
            .map(|d| d.deletion.user_id.as_str())
            .collect();
        let namespaces: Vec<&str> = batch
            .deletions
            .iter()
            .map(|d| d.deletion.namespace.as_str())
            .collect();
        let gone: Vec<(String, String)> = sqlx::query_as(DELETE_SQL)
            .bind(users)
            .bind(namespaces)
            .fetch_all(&mut **tx)
            .await?;
        Ok(Deleted::count(&batch.deletions, &gone))
    }
}

impl ProgressStore for PgStore {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(pg_migrate)
    }

    async fn lease(&self, instance_id: &str) -> Result<Lease> {
        let (epoch, applied_seq): (i64, i64) = sqlx::query_as(LEASE_SQL)
            .bind(instance_id)
            .fetch_one(&self.pool)
            .await
            .map_err(pg)?;
        Ok(Lease {
            instance_id: instance_id.to_owned(),
            epoch,
            applied_seq: applied_seq.max(0) as u64,
        })
    }

    async fn apply(&self, lease: &Lease, upto_seq: u64, batch: &Buffer) -> Result<Applied> {
        let mut tx = self.pool.begin().await.map_err(pg)?;
        // The watermark first: it locks this instance's row, so a zombie with an
        // old epoch fails here before touching any progress row.
        let moved = sqlx::query(WATERMARK_SQL)
            .bind(&lease.instance_id)
            .bind(lease.epoch)
            .bind(upto_seq as i64)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        if moved.rows_affected() != 1 {
            return Err(StoreError::Fenced {
                instance_id: lease.instance_id.clone(),
                epoch: lease.epoch,
            });
        }
        // Deletions before any upsert: the batch holds nothing of a deleted
        // user from before the deletion, so what follows is a fresh start.
        let deleted = self.delete_users(&mut tx, batch).await.map_err(pg)?;
        self.write_absolute(&mut tx, batch).await.map_err(pg)?;
        fail::fail_point!("flush-between-statements", |_| Err(
            StoreError::Unavailable("injected failure (failpoint flush-between-statements)".into())
        ));
        crate::crash_point!("flush-mid-transaction");
        self.write_increments(&mut tx, batch).await.map_err(pg)?;
        self.write_daily(&mut tx, batch).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        crate::crash_point!("flush-after-commit");
        Ok(Applied {
            rows: batch.len(),
            deleted,
        })
    }

    async fn watermark(&self, instance_id: &str) -> Result<Option<Watermark>> {
        let row: Option<(i64, i64)> = sqlx::query_as(READ_WATERMARK_SQL)
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg)?;
        Ok(row.map(Watermark::from))
    }

    async fn user_progress(
        &self,
        user_id: &str,
        goal_id: Option<&str>,
    ) -> Result<Vec<ProgressRow>> {
        sqlx::query_as(READ_ROWS_SQL)
            .bind(user_id)
            .bind(goal_id)
            .fetch_all(&self.pool)
            .await
            .map_err(pg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_days_map_to_calendar_dates() {
        assert_eq!(date(0), NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());
        assert_eq!(date(19_723), NaiveDate::from_ymd_opt(2024, 1, 1).unwrap());
        assert_eq!(
            timestamp(1_704_067_200_123).to_string(),
            "2024-01-01 00:00:00.123"
        );
    }
}
