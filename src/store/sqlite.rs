//! The embedded store: `user_goal_progress` in a SQLite file (sqlx's SQLite
//! driver, SQLite built in), so the service runs with nothing else installed.
//!
//! Same schema semantics, same rules and the same exactly-once flush as the
//! PostgreSQL store: one transaction moves the watermark under the epoch,
//! applies deletions, then upserts — here one prepared statement per row
//! (SQLite has no arrays to `UNNEST`; inside one transaction of one process a
//! row costs microseconds). The statements mirror `store/postgres.rs` clause
//! for clause; tests/store_suite.rs holds both to the rule book.
//!
//! Durability: WAL journal mode with `synchronous = FULL`, so a commit is on
//! disk before the flusher truncates its WAL. SQLite allows one writer at a
//! time; a busy database waits up to five seconds and then counts as
//! unavailable (retried).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{Applied, Deleted, Lease, ProgressRow, ProgressStore, Result, StoreError, Watermark};
use crate::buffer::{Buffer, Key, Meta};
use crate::clock::naive;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// SQLite's errors as the store's: a busy or locked database, I/O trouble, a
/// full disk or a file that cannot be opened yet is `Unavailable`; the rest
/// needs an operator.
fn lite(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Primary result codes: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN
        // (extended codes carry the primary one in their low byte).
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Rejected(e.to_string())
    }
}

fn lite_migrate(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => lite(e),
        other => StoreError::Rejected(format!("migration failed: {other}")),
    }
}

const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f', 'now')";

const LEASE_SQL: &str = "
INSERT INTO challenge_event_handler_watermark AS w (instance_id, epoch, applied_seq)
VALUES (?1, 1, 0)
ON CONFLICT (instance_id) DO UPDATE SET epoch = w.epoch + 1,
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
RETURNING epoch, applied_seq";

const WATERMARK_SQL: &str = "
UPDATE challenge_event_handler_watermark
SET applied_seq = max(applied_seq, ?3), updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE instance_id = ?1 AND epoch = ?2";

const READ_WATERMARK_SQL: &str = "
SELECT epoch, applied_seq FROM challenge_event_handler_watermark WHERE instance_id = ?1";

const READ_ROWS_SQL: &str = "
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       is_active, updated_at, last_event_at, last_counted_day
FROM user_goal_progress
WHERE user_id = ?1 AND (?2 IS NULL OR goal_id = ?2)
ORDER BY goal_id";

/// Entries of goals not assigned by default only update an existing row.
const ONLY_EXISTING: &str = "EXISTS (SELECT 1 FROM user_goal_progress e
                                    WHERE e.user_id = ?1 AND e.goal_id = ?2)";

/// Parameters: ?1 user, ?2 goal, ?3 challenge, ?4 namespace, ?5 target, then per kind.
/// Absolute: ?6 value, ?7 event time, ?8 time the target was reached (or NULL).
const ABSOLUTE_SQL: &str = "
INSERT INTO user_goal_progress AS t
    (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
     target_value, last_event_at, created_at, updated_at)
SELECT ?1, ?2, ?3, ?4, ?6,
       CASE WHEN ?8 IS NOT NULL THEN 'completed' ELSE 'in_progress' END,
       ?8, ?5, ?7, {now}, {now}
WHERE {filter}
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    challenge_id = excluded.challenge_id,
    progress = excluded.progress,
    status = CASE WHEN t.status = 'completed' THEN 'completed' ELSE excluded.status END,
    completed_at = CASE WHEN t.status = 'completed' THEN t.completed_at
                        ELSE excluded.completed_at END,
    target_value = excluded.target_value,
    last_event_at = excluded.last_event_at,
    updated_at = excluded.updated_at
WHERE t.is_active
  AND t.status <> 'claimed'
  AND (t.last_event_at IS NULL OR t.last_event_at <= excluded.last_event_at)";

/// Increment and daily increment: ?6 delta, ?7 event time, ?8 the UTC day counted (or NULL).
const INCREMENT_SQL: &str = "
INSERT INTO user_goal_progress AS t
    (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
     target_value, last_event_at, last_counted_day, created_at, updated_at)
SELECT ?1, ?2, ?3, ?4, ?6,
       CASE WHEN ?6 >= ?5 THEN 'completed' ELSE 'in_progress' END,
       CASE WHEN ?6 >= ?5 THEN ?7 END,
       ?5, ?7, ?8, {now}, {now}
WHERE {filter}
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    challenge_id = excluded.challenge_id,
    progress = min(t.progress + excluded.progress, 2147483647),
    status = CASE WHEN t.status = 'completed'
                    OR t.progress + excluded.progress >= excluded.target_value
                  THEN 'completed' ELSE 'in_progress' END,
    completed_at = CASE WHEN t.status = 'completed' THEN t.completed_at
                        WHEN t.progress + excluded.progress >= excluded.target_value
                        THEN excluded.last_event_at END,
    target_value = excluded.target_value,
    last_event_at = max(coalesce(t.last_event_at, excluded.last_event_at), excluded.last_event_at),
    last_counted_day = coalesce(excluded.last_counted_day, t.last_counted_day),
    updated_at = excluded.updated_at
WHERE t.is_active
  AND t.status <> 'claimed'
  AND (excluded.last_counted_day IS NULL
       OR t.last_counted_day IS NULL
       OR t.last_counted_day < excluded.last_counted_day)";

/// Daily: ?6 event time, ?7 the UTC day.
const DAILY_SQL: &str = "
INSERT INTO user_goal_progress AS t
    (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
     target_value, last_event_at, last_counted_day, created_at, updated_at)
SELECT ?1, ?2, ?3, ?4, 1, 'completed', ?6, ?5, ?6, ?7, {now}, {now}
WHERE {filter}
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    challenge_id = excluded.challenge_id,
    progress = excluded.progress,
    status = 'completed',
    completed_at = excluded.completed_at,
    claimed_at = NULL,
    target_value = excluded.target_value,
    last_event_at = excluded.last_event_at,
    last_counted_day = excluded.last_counted_day,
    updated_at = excluded.updated_at
WHERE t.is_active
  AND (t.last_counted_day IS NULL OR t.last_counted_day < excluded.last_counted_day)";

const DELETE_SQL: &str = "DELETE FROM user_goal_progress WHERE user_id = ?1 AND namespace = ?2";

/// One upsert in its two forms: `[creates rows, only existing rows]`.
struct Upsert([String; 2]);

impl Upsert {
    fn new(template: &str) -> Upsert {
        let template = template.replace("{now}", NOW);
        Upsert([
            template.replace("{filter}", "true"),
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

const ABSOLUTE: usize = 0;
const INCREMENT: usize = 1;
const DAILY: usize = 2;

/// A time as the embedded schema stores it (always three fractional digits,
/// so times order as text).
fn time_text(unix_ms: i64) -> String {
    naive(unix_ms).format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn day_text(day: i32) -> String {
    const CE_TO_UNIX_DAYS: i32 = 719_163;
    chrono::NaiveDate::from_num_days_from_ce_opt(day.saturating_add(CE_TO_UNIX_DAYS))
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn row_query<'q>(sql: &'q str, key: &'q Key, meta: &'q Meta) -> Query<'q> {
    sqlx::query(sql)
        .bind(&key.user_id)
        .bind(&key.goal_id)
        .bind(&meta.challenge_id)
        .bind(&meta.namespace)
        .bind(meta.target)
}

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// A lazily opening store on the file at `path` (created, with its
    /// directory, on first use).
    pub fn connect_lazy(path: &Path) -> Self {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .expect("a static SQLite URL")
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            // One writer at a time is all SQLite allows; a second connection
            // serves reads (the watermark read-back) while a flush runs.
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        SqliteStore {
            pool,
            path: path.to_owned(),
        }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The file's directory must exist before SQLite can create the file;
    /// made durably, like the WAL's.
    fn ensure_dir(&self) -> Result<()> {
        match self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.exists() => crate::wal::create_dir_durable(dir)
                .map_err(|e| StoreError::Rejected(format!("cannot create {}: {e}", dir.display()))),
            _ => Ok(()),
        }
    }

    async fn write(&self, tx: &mut Transaction<'_, Sqlite>, batch: &Buffer) -> sqlx::Result<()> {
        for (key, meta, latest) in batch.absolute.sorted() {
            row_query(UPSERTS[ABSOLUTE].sql(meta.creates_row), key, meta)
                .bind(latest.value)
                .bind(time_text(latest.event_time_ms))
                .bind(latest.reached_ms.map(time_text))
                .execute(&mut **tx)
                .await?;
        }
        for (key, meta, sum) in batch.increment.sorted() {
            row_query(UPSERTS[INCREMENT].sql(meta.creates_row), key, meta)
                .bind(sum.delta)
                .bind(time_text(sum.last_event_ms))
                .bind(None::<String>)
                .execute(&mut **tx)
                .await?;
        }
        for (key, meta, days) in batch.daily_increment.sorted() {
            // Oldest day first, as the rule book counts them.
            for (&day, &time) in &days.0 {
                row_query(UPSERTS[INCREMENT].sql(meta.creates_row), key, meta)
                    .bind(1)
                    .bind(time_text(time))
                    .bind(Some(day_text(day)))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        for (key, meta, latest) in batch.daily.sorted() {
            row_query(UPSERTS[DAILY].sql(meta.creates_row), key, meta)
                .bind(time_text(latest.event_time_ms))
                .bind(day_text(latest.day))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn delete_users(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        batch: &Buffer,
    ) -> sqlx::Result<Vec<Deleted>> {
        let mut deleted = Vec::with_capacity(batch.deletions.len());
        for pending in &batch.deletions {
            let d = &pending.deletion;
            let gone = sqlx::query(DELETE_SQL)
                .bind(&d.user_id)
                .bind(&d.namespace)
                .execute(&mut **tx)
                .await?;
            deleted.push(Deleted {
                user_id: d.user_id.clone(),
                namespace: d.namespace.clone(),
                event_id: d.event_id.clone(),
                requested_ms: d.event_time_ms,
                rows: gone.rows_affected(),
            });
        }
        Ok(deleted)
    }
}

impl ProgressStore for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        self.ensure_dir()?;
        MIGRATOR.run(&self.pool).await.map_err(lite_migrate)
    }

    async fn lease(&self, instance_id: &str) -> Result<Lease> {
        self.ensure_dir()?;
        let (epoch, applied_seq): (i64, i64) = sqlx::query_as(LEASE_SQL)
            .bind(instance_id)
            .fetch_one(&self.pool)
            .await
            .map_err(lite)?;
        Ok(Lease {
            instance_id: instance_id.to_owned(),
            epoch,
            applied_seq: applied_seq.max(0) as u64,
        })
    }

    async fn apply(&self, lease: &Lease, upto_seq: u64, batch: &Buffer) -> Result<Applied> {
        // IMMEDIATE: take the write lock now, not halfway through.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(lite)?;
        let moved = sqlx::query(WATERMARK_SQL)
            .bind(&lease.instance_id)
            .bind(lease.epoch)
            .bind(upto_seq as i64)
            .execute(&mut *tx)
            .await
            .map_err(lite)?;
        if moved.rows_affected() != 1 {
            return Err(StoreError::Fenced {
                instance_id: lease.instance_id.clone(),
                epoch: lease.epoch,
            });
        }
        let deleted = self.delete_users(&mut tx, batch).await.map_err(lite)?;
        self.write(&mut tx, batch).await.map_err(lite)?;
        tx.commit().await.map_err(lite)?;
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
            .map_err(lite)?;
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
            .map_err(lite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_days_are_written_so_that_they_order_as_text() {
        assert_eq!(time_text(1_704_067_200_000), "2024-01-01 00:00:00.000");
        assert_eq!(time_text(1_704_067_200_123), "2024-01-01 00:00:00.123");
        assert!(time_text(999) < time_text(1_000));
        assert_eq!(day_text(19_723), "2024-01-01");
    }
}
