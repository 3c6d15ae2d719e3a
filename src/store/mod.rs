//! Where flushed progress goes: the [`ProgressStore`] seam and its PostgreSQL
//! implementation ([`postgres`]). An embedded default store is the planned second
//! implementation; the flusher only sees this trait.

pub mod postgres;

use std::future::Future;

use crate::buffer::{Buffer, PendingDeletion};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
        fn transient(e: &sqlx::Error) -> bool {
            match e {
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
            }
        }
        match self {
            StoreError::Database(e) => transient(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => transient(e),
            StoreError::Migrate(_) => false,
            StoreError::Fenced { .. } => false,
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
    fn applied_seq(&self, lease: &Lease) -> impl Future<Output = Result<u64>> + Send;

    /// In ONE transaction: moves the watermark to `upto_seq` (only under the
    /// lease's epoch), applies the batch's GDPR deletions, then writes every
    /// entry of `batch`.
    fn apply(
        &self,
        lease: &Lease,
        upto_seq: u64,
        batch: &Buffer,
    ) -> impl Future<Output = Result<Applied>> + Send;
}
