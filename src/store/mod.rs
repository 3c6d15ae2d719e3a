//! Where flushed progress goes: the [`ProgressStore`] seam and its two
//! implementations — PostgreSQL ([`postgres`], production) and an embedded
//! SQLite file ([`sqlite`], the default when no database is configured) —
//! with [`Store`] choosing between them at start-up. Both apply the same
//! rules (docs/DESIGN.md, "Progress rules"); tests/store_suite.rs runs one
//! suite against each. Errors are backend-neutral: each backend maps its
//! driver's errors to [`StoreError`] in its own module.

pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::path::PathBuf;

use chrono::{NaiveDate, NaiveDateTime};
use serde::Serialize;

use crate::buffer::{Buffer, PendingDeletion};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy: waiting and retrying helps.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused the request (bad credentials, missing database,
    /// schema or constraint problem): an operator must look.
    #[error("the database refused the request: {0}")]
    Rejected(String),
    #[error(
        "instance {instance_id:?} was taken over by a newer process (epoch {epoch} is no longer current); \
         two processes must never share one INSTANCE_ID / WAL_DIR"
    )]
    Fenced { instance_id: String, epoch: i64 },
}

impl StoreError {
    /// Whether waiting and retrying can help (the database is unreachable or
    /// restarting), as opposed to a problem an operator must fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Which database, as configured.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(Box<sqlx::postgres::PgConnectOptions>),
    /// The embedded store: a SQLite file.
    Sqlite(PathBuf),
}

impl Database {
    /// For logs: the kind and where, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Database::Postgres(o) => format!(
                "PostgreSQL at {}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            Database::Sqlite(path) => format!("embedded SQLite at {}", path.display()),
        }
    }
}

/// One `user_goal_progress` row, as `progress` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ProgressRow {
    pub user_id: String,
    pub goal_id: String,
    pub challenge_id: String,
    pub namespace: String,
    pub progress: i32,
    pub status: String,
    pub completed_at: Option<NaiveDateTime>,
    pub claimed_at: Option<NaiveDateTime>,
    pub is_active: bool,
    pub updated_at: NaiveDateTime,
    pub last_event_at: Option<NaiveDateTime>,
    pub last_counted_day: Option<NaiveDate>,
}

/// An instance's row in the watermark table, read without taking it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Watermark {
    pub epoch: i64,
    pub applied_seq: u64,
}

impl From<(i64, i64)> for Watermark {
    /// A watermark row's `(epoch, applied_seq)`.
    fn from((epoch, applied_seq): (i64, i64)) -> Watermark {
        Watermark {
            epoch,
            applied_seq: applied_seq.max(0) as u64,
        }
    }
}

/// This process's claim on its instance's watermark, from [`ProgressStore::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub instance_id: String,
    /// Bumped at every start; a flush with an older epoch is refused (zombie fencing).
    pub epoch: i64,
    /// The highest WAL sequence number whose update is in the database.
    pub applied_seq: u64,
}

/// What one flush transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// User-goal rows sent.
    pub rows: usize,
    /// The GDPR deletions applied, with the rows each removed.
    pub deleted: Vec<Deleted>,
}

/// One GDPR deletion as applied, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub user_id: String,
    pub namespace: String,
    pub event_id: String,
    /// The deletion event's time (its `timestamp`, else arrival), Unix ms.
    pub requested_ms: i64,
    pub rows: u64,
}

impl Deleted {
    /// One entry per deletion, with the rows of `gone` (user, namespace) that
    /// were its user's. A user deleted twice in one batch is counted on the first.
    pub fn count(deletions: &[PendingDeletion], gone: &[(String, String)]) -> Vec<Deleted> {
        let mut counts = std::collections::HashMap::<(&str, &str), u64>::new();
        for (user, namespace) in gone {
            *counts.entry((user, namespace)).or_default() += 1;
        }
        deletions
            .iter()
            .map(|pending| {
                let d = &pending.deletion;
                Deleted {
                    user_id: d.user_id.clone(),
                    namespace: d.namespace.clone(),
                    event_id: d.event_id.clone(),
                    requested_ms: d.event_time_ms,
                    rows: counts
                        .remove(&(d.user_id.as_str(), d.namespace.as_str()))
                        .unwrap_or(0),
                }
            })
            .collect()
    }
}

pub trait ProgressStore: Send + Sync + 'static {
    /// Creates or upgrades the schema.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// Bumps this instance's epoch and reads its watermark.
    fn lease(&self, instance_id: &str) -> impl Future<Output = Result<Lease>> + Send;

    /// The watermark as the database has it now (to settle a commit whose
    /// outcome is unknown). Fails with [`StoreError::Fenced`] if the lease is stale.
    fn applied_seq(&self, lease: &Lease) -> impl Future<Output = Result<u64>> + Send {
        async move {
            match self.watermark(&lease.instance_id).await? {
                Some(w) if w.epoch == lease.epoch => Ok(w.applied_seq),
                _ => Err(StoreError::Fenced {
                    instance_id: lease.instance_id.clone(),
                    epoch: lease.epoch,
                }),
            }
        }
    }

    /// In ONE transaction: moves the watermark to `upto_seq` (only under the
    /// lease's epoch), applies the batch's GDPR deletions, then writes every
    /// entry of `batch`.
    fn apply(
        &self,
        lease: &Lease,
        upto_seq: u64,
        batch: &Buffer,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// An instance's watermark as it is, without bumping its epoch (None: the
    /// instance never started against this database).
    fn watermark(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<Watermark>>> + Send;

    /// A user's rows (one goal's, with `goal_id`), by goal id.
    fn user_progress(
        &self,
        user_id: &str,
        goal_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ProgressRow>>> + Send;
}

/// The store the service runs with, chosen by configuration.
pub enum Store {
    Postgres(postgres::PgStore),
    Sqlite(sqlite::SqliteStore),
}

impl Store {
    /// A lazily connecting store: building the service never waits for a database.
    pub fn connect_lazy(database: &Database, max_connections: u32, batch_size: usize) -> Store {
        match database {
            Database::Postgres(options) => Store::Postgres(postgres::PgStore::connect_lazy(
                (**options).clone(),
                max_connections,
                batch_size,
            )),
            Database::Sqlite(path) => Store::Sqlite(sqlite::SqliteStore::connect_lazy(path)),
        }
    }
}

/// Calls the same method on whichever backend.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

impl ProgressStore for Store {
    async fn migrate(&self) -> Result<()> {
        each!(self, s => s.migrate().await)
    }

    async fn lease(&self, instance_id: &str) -> Result<Lease> {
        each!(self, s => s.lease(instance_id).await)
    }

    async fn apply(&self, lease: &Lease, upto_seq: u64, batch: &Buffer) -> Result<Applied> {
        each!(self, s => s.apply(lease, upto_seq, batch).await)
    }

    async fn watermark(&self, instance_id: &str) -> Result<Option<Watermark>> {
        each!(self, s => s.watermark(instance_id).await)
    }

    async fn user_progress(
        &self,
        user_id: &str,
        goal_id: Option<&str>,
    ) -> Result<Vec<ProgressRow>> {
        each!(self, s => s.user_progress(user_id, goal_id).await)
    }
}
