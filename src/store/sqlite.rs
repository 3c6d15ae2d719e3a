//! The embedded store: `user_goal_progress` in a SQLite file (sqlx's SQLite
//! driver, SQLite built in), so the service runs with nothing else installed.
//!
//! The same flush transaction as PostgreSQL ([`super::flush`]), with this
//! dialect's statements: one prepared statement per row (SQLite has no
//! arrays to `UNNEST`; inside one transaction of one process a row costs
//! microseconds). The file is the handler's own, so the handler owns the
//! table: a player's first event gives them every goal assigned by default.
//!
//! Durability: WAL journal mode with `synchronous = FULL`, so a commit is on
//! disk before the flusher truncates its WAL. SQLite allows one writer at a
//! time (`BEGIN IMMEDIATE` takes it, so no row lock is needed); a busy
//! database waits up to five seconds and then counts as unavailable (retried).
//!
//! One process serves on a file: the first lease locks `<file>.lock`, and a
//! second process's start is refused naming the file (reads, as the
//! `progress` command's, take no lock).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Sqlite;

use super::flush::{Dialect, Locked, NewRow, Read, RowColumns, RowWrite, StateWrite, Tx};
use super::sql;
use super::{Deleted, Lease, Prepared, ProgressRow, Result, StoreError, TableOwner};
use crate::buffer::{Key, PendingDeletion};
use crate::clock::{date_of_day, naive_micros};

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

/// The handler's state belongs to the row created at `row_created_at`
/// (compared as times: older files wrote milliseconds, this build micro).
const STATE_JOIN: &str = "LEFT JOIN challenge_event_handler_goal_state s
       ON s.user_id = p.user_id AND s.goal_id = p.goal_id
      AND julianday(s.row_created_at) = julianday(p.created_at)";

fn read_rows_sql() -> String {
    format!(
        "SELECT p.user_id, p.goal_id, p.challenge_id, p.namespace, p.progress, p.status,
                p.completed_at, p.claimed_at, p.is_active, p.assigned_at, p.updated_at,
                p.expires_at, p.baseline_value, s.last_event_at, s.last_counted_day
         FROM user_goal_progress p {STATE_JOIN}
         WHERE p.user_id = ?1 AND (?2 IS NULL OR p.goal_id = ?2)
         ORDER BY p.goal_id"
    )
}

fn lock_row_sql() -> String {
    format!(
        "SELECT p.progress, p.status, p.completed_at, p.claimed_at, p.is_active, p.updated_at,
                p.expires_at, p.baseline_value, p.created_at, s.last_event_at, s.last_counted_day
         FROM user_goal_progress p {STATE_JOIN}
         WHERE p.user_id = ?1 AND p.goal_id = ?2"
    )
}

static READ_ROWS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(read_rows_sql);
static LOCK_ROW_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(lock_row_sql);

/// This instance's lease, its fenced watermark and the watermark's read.
static STATEMENTS: sql::Statements = sql::Statements {
    lease: "
INSERT INTO challenge_event_handler_watermark AS w (instance_id, epoch, applied_seq)
VALUES (?1, 1, 0)
ON CONFLICT (instance_id) DO UPDATE SET epoch = w.epoch + 1,
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
RETURNING epoch, applied_seq",
    move_watermark: "
UPDATE challenge_event_handler_watermark
SET applied_seq = max(applied_seq, ?3), updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE instance_id = ?1 AND epoch = ?2 AND applied_seq <= ?4
RETURNING epoch",
    read_watermark: "
SELECT epoch, applied_seq FROM challenge_event_handler_watermark WHERE instance_id = ?1",
};

impl sql::Backend for SqliteStore {
    type Db = Sqlite;
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
    fn statements(&self) -> &'static sql::Statements {
        &STATEMENTS
    }
    fn error(e: sqlx::Error) -> StoreError {
        lite(e)
    }
}

const DELETE_SQL: &str = "DELETE FROM user_goal_progress WHERE user_id = ?1 AND namespace = ?2";
/// After the rows: the user's state, except what belongs to a row that
/// stays (the same player in another namespace).
const DELETE_STATE_SQL: &str = "
DELETE FROM challenge_event_handler_goal_state AS s
WHERE s.user_id = ?1
  AND NOT EXISTS (SELECT 1 FROM user_goal_progress p
                  WHERE p.user_id = s.user_id AND p.goal_id = s.goal_id
                    AND julianday(p.created_at) = julianday(s.row_created_at))";
const USER_HAS_ROWS_SQL: &str = "SELECT 1 FROM user_goal_progress WHERE user_id = ?1 LIMIT 1";

const INSERT_ROW_SQL: &str = "
INSERT INTO user_goal_progress
    (user_id, goal_id, challenge_id, namespace, progress, status,
     created_at, updated_at, is_active, assigned_at, expires_at)
VALUES (?1, ?2, ?3, ?4, 0, 'not_started', ?5, ?5, 1, ?5, ?6)
ON CONFLICT (user_id, goal_id) DO NOTHING";

const WRITE_ROW_SQL: &str = "
UPDATE user_goal_progress SET
    progress = ?3, status = ?4, completed_at = ?5, claimed_at = ?6, updated_at = ?7,
    expires_at = ?8, baseline_value = ?9
WHERE user_id = ?1 AND goal_id = ?2";

const WRITE_STATE_SQL: &str = "
INSERT INTO challenge_event_handler_goal_state
    (user_id, goal_id, row_created_at, last_event_at, last_counted_day)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    row_created_at = excluded.row_created_at, last_event_at = excluded.last_event_at,
    last_counted_day = excluded.last_counted_day";

/// A time as the embedded store writes it: UTC text with microseconds.
fn time_text(unix_us: i64) -> String {
    naive_micros(unix_us)
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

fn day_text(day: i32) -> String {
    date_of_day(day).format("%Y-%m-%d").to_string()
}

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// `<file>.lock`, locked (flock) by the first lease and held for the
    /// store's life: one process serves on the file.
    serving: std::sync::Mutex<Option<std::fs::File>>,
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
            serving: std::sync::Mutex::new(None),
        }
    }

    /// Takes the file's lock for this process: the embedded store has no
    /// ledger and no tombstones, so a second process serving on the file
    /// (another `WAL_DIR`, another instance id) would apply a redelivered
    /// event again, and updates of a player it deleted after the deletion.
    /// The lock is released when the process ends, however it ends.
    fn lock_for_this_process(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if serving.is_some() {
            return Ok(());
        }
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Rejected(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        // SAFETY: flock(2) on a descriptor this function owns, no pointers.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(StoreError::Rejected(
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    format!(
                        "another process serves on {} (it holds {}): the embedded store is \
                         one file for one process. Stop the other process, or give every \
                         replica the same PostgreSQL (DATABASE_URL)",
                        self.path.display(),
                        lock_path.display()
                    )
                } else {
                    format!("cannot lock {}: {e}", lock_path.display())
                },
            ));
        }
        *serving = Some(file);
        Ok(())
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
}

impl Dialect for SqliteStore {
    async fn begin(&self) -> Result<Tx<Self>> {
        // IMMEDIATE: take the write lock now, not halfway through.
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(lite)
    }

    async fn move_watermark(
        &self,
        tx: &mut Tx<Self>,
        lease: &Lease,
        after: u64,
        upto: u64,
    ) -> Result<sql::Moved> {
        sql::move_watermark(self, tx, lease, after, upto).await
    }

    /// One process: its WAL orders its deletions exactly; no tombstones.
    async fn delete_users(
        &self,
        tx: &mut Tx<Self>,
        deletions: &[PendingDeletion],
        _instance_id: &str,
    ) -> Result<Vec<Deleted>> {
        let mut deleted = Vec::with_capacity(deletions.len());
        for pending in deletions {
            let d = &pending.deletion;
            let gone = sqlx::query(DELETE_SQL)
                .bind(&d.user_id)
                .bind(&d.namespace)
                .execute(&mut **tx)
                .await
                .map_err(lite)?;
            sqlx::query(DELETE_STATE_SQL)
                .bind(&d.user_id)
                .execute(&mut **tx)
                .await
                .map_err(lite)?;
            deleted.push(Deleted {
                user_id: d.user_id.clone(),
                namespace: d.namespace.clone(),
                event_id: d.event_id.clone(),
                holds_from_ms: d.event_time_ms,
                rows: gone.rows_affected(),
            });
        }
        Ok(deleted)
    }

    async fn users_with_rows(&self, tx: &mut Tx<Self>, users: &[&str]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for user in users {
            let has: Option<i64> = sqlx::query_scalar(USER_HAS_ROWS_SQL)
                .bind(user)
                .fetch_optional(&mut **tx)
                .await
                .map_err(lite)?;
            if has.is_some() {
                found.insert((*user).to_owned());
            }
        }
        Ok(found)
    }

    async fn insert_rows(&self, tx: &mut Tx<Self>, rows: &[NewRow<'_>]) -> Result<()> {
        for r in rows {
            sqlx::query(INSERT_ROW_SQL)
                .bind(&r.key.user_id)
                .bind(&r.key.goal_id)
                .bind(r.challenge_id)
                .bind(r.namespace)
                .bind(time_text(r.row.updated_at))
                .bind(r.row.expires_at.map(time_text))
                .execute(&mut **tx)
                .await
                .map_err(lite)?;
        }
        Ok(())
    }

    /// The write lock of `BEGIN IMMEDIATE` covers every row: `lock` adds nothing.
    async fn read_rows(
        &self,
        tx: &mut Tx<Self>,
        keys: &[&Key],
        _read: Read,
    ) -> Result<Vec<(usize, Locked)>> {
        let mut rows = Vec::with_capacity(keys.len());
        for (at, key) in keys.iter().enumerate() {
            let found: Option<RowColumns> = sqlx::query_as(LOCK_ROW_SQL.as_str())
                .bind(&key.user_id)
                .bind(&key.goal_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(lite)?;
            if let Some(columns) = found {
                rows.push((at, Locked::of(key, columns, None)?));
            }
        }
        Ok(rows)
    }

    async fn write_rows(&self, tx: &mut Tx<Self>, rows: &[RowWrite<'_>]) -> Result<Vec<usize>> {
        for RowWrite { key, row, .. } in rows {
            sqlx::query(WRITE_ROW_SQL)
                .bind(&key.user_id)
                .bind(&key.goal_id)
                .bind(row.progress)
                .bind(row.status.as_str())
                .bind(row.completed_at.map(time_text))
                .bind(row.claimed_at.map(time_text))
                .bind(time_text(row.updated_at))
                .bind(row.expires_at.map(time_text))
                .bind(row.baseline)
                .execute(&mut **tx)
                .await
                .map_err(lite)?;
        }
        // Nothing else writes while this transaction holds the write lock.
        Ok(Vec::new())
    }

    async fn write_states(&self, tx: &mut Tx<Self>, states: &[StateWrite<'_>]) -> Result<()> {
        for s in states {
            sqlx::query(WRITE_STATE_SQL)
                .bind(&s.key.user_id)
                .bind(&s.key.goal_id)
                .bind(time_text(s.created_at))
                .bind(s.state.last_event_at.map(time_text))
                .bind(s.state.last_counted_day.map(day_text))
                .execute(&mut **tx)
                .await
                .map_err(lite)?;
        }
        Ok(())
    }
}

impl SqliteStore {
    /// The embedded store is the handler's own file: its tables, made here.
    pub(super) async fn prepare(
        &self,
        requested: Option<TableOwner>,
        migrate: bool,
    ) -> Result<Prepared> {
        if requested == Some(TableOwner::Service) {
            return Err(StoreError::Rejected(
                "TABLE_OWNER=service needs PostgreSQL: the embedded store is the handler's own file"
                    .into(),
            ));
        }
        self.ensure_dir()?;
        if migrate {
            MIGRATOR.run(&self.pool).await.map_err(lite_migrate)?;
        }
        Ok(Prepared::Ready {
            owner: TableOwner::Handler,
            why: "the embedded store is the handler's own file; no challenge service creates its rows"
                .into(),
            rotation_columns: true,
        })
    }

    /// A new epoch for `instance_id` (the file's directory made first, and
    /// the file locked for this process).
    pub(super) async fn lease(&self, instance_id: &str) -> Result<Lease> {
        self.ensure_dir()?;
        self.lock_for_this_process()?;
        sql::lease(self, instance_id).await
    }

    /// A user's rows (one goal's, with `goal_id`), by goal id.
    pub(super) async fn user_progress(
        &self,
        user_id: &str,
        goal_id: Option<&str>,
    ) -> Result<Vec<ProgressRow>> {
        sql::user_progress(self, READ_ROWS_SQL.as_str(), user_id, goal_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_days_are_written_as_utc_text() {
        assert_eq!(
            time_text(1_704_067_200_000_000),
            "2024-01-01 00:00:00.000000"
        );
        assert_eq!(
            time_text(1_704_067_200_123_456),
            "2024-01-01 00:00:00.123456"
        );
        assert!(time_text(999) < time_text(1_000));
        assert_eq!(day_text(19_723), "2024-01-01");
        assert_eq!(
            crate::clock::day_of(chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()),
            19_723
        );
    }
}
