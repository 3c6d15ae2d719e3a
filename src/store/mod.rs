//! Where flushed progress goes: the [`ProgressStore`] seam and its two
//! implementations — PostgreSQL ([`postgres`], production) and an embedded
//! SQLite file ([`sqlite`], the default when no database is configured) —
//! with [`Store`] choosing between them at start-up. The flush transaction
//! is written once ([`flush`]) above the two dialects, and the rules run
//! in Rust (`src/rules`), so both backends apply the same rules by
//! construction; tests/store_suite.rs runs one suite against each. Errors
//! are backend-neutral: each backend maps its driver's errors to
//! [`StoreError`] in its own module.
//!
//! `user_goal_progress` belongs to AccelByte's challenge service
//! (docs/DESIGN.md, "Who owns the table"): on PostgreSQL the handler
//! keeps what it needs in tables of its own (`challenge_event_handler_*`)
//! and, unless it owns the table ([`TableOwner`]), only updates rows.

mod flush;
pub mod postgres;
pub use postgres::cluster;
mod sql;
pub mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use serde::Serialize;

use crate::buffer::{Buffer, PendingDeletion};
use crate::rules::{GoalDef, GoalRule};

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
    /// Events of the batch are in the cluster's ledger already: another
    /// flush applied them (another replica, or an earlier delivery). Nothing
    /// was written; the flusher leaves them out and flushes again.
    #[error("{} events of the batch were applied by another flush", marks.len())]
    AlreadyApplied { marks: Vec<crate::wal::dedup::Mark> },
    /// The watermark is past the sequence number the batch follows: a flush
    /// abandoned earlier (its COMMIT in flight) committed part of this batch
    /// after all. Nothing was written; the flusher rebuilds the batch from
    /// the WAL above the watermark.
    #[error(
        "the watermark is at {applied}, past the {after} this batch follows: an abandoned flush \
         committed after all; only what is above it is written again"
    )]
    Ahead { applied: u64, after: u64 },
    /// No answer within FLUSH_TIMEOUT: the work was abandoned (its
    /// connection dropped) and is retried on another connection.
    #[error(
        "no answer from the database within FLUSH_TIMEOUT ({}): abandoned, and retried on another connection",
        humantime::format_duration(*limit)
    )]
    TimedOut { limit: std::time::Duration },
    /// PostgreSQL cancelled a statement (SQLSTATE 57014): the
    /// `statement_timeout` the service gives every session (FLUSH_TIMEOUT)
    /// ran out, or an operator cancelled it. Retried.
    #[error(
        "PostgreSQL cancelled a statement: it ran for FLUSH_TIMEOUT (the sessions' statement_timeout) unless an operator cancelled it: {0}"
    )]
    Cancelled(String),
}

impl StoreError {
    /// Whether waiting and retrying can help (the database is unreachable or
    /// restarting, or did not answer in time), as opposed to a problem an
    /// operator must fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::TimedOut { .. }
                | StoreError::Cancelled(_)
                | StoreError::Ahead { .. }
        )
    }
}

/// `work` on the database, abandoned after `limit` (FLUSH_TIMEOUT): a
/// connection that went silent (a failover, a dropped NAT entry: no reset
/// ever comes) costs one timeout, not a wait until the kernel gives up on
/// it, a quarter of an hour or never. Whatever `work` holds is dropped with
/// it: nothing that must survive a failure may live inside.
pub async fn within<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(StoreError::TimedOut { limit }))
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

/// One `user_goal_progress` row, as `progress` prints it, with the
/// handler's own state of it.
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
    pub assigned_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
    pub expires_at: Option<NaiveDateTime>,
    pub baseline_value: Option<i32>,
    pub last_event_at: Option<NaiveDateTime>,
    pub last_counted_day: Option<NaiveDate>,
}

/// Who creates `user_goal_progress` and its rows (setting `TABLE_OWNER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableOwner {
    /// AccelByte's challenge service: it runs the migrations and creates a
    /// player's rows; the handler never creates, alters or indexes the
    /// table and only updates existing, active rows.
    Service,
    /// The handler (no challenge service against this database): it creates
    /// the table as the service's migrations would, and gives a player's
    /// first event every goal assigned by default, as Initialize would.
    Handler,
}

impl TableOwner {
    pub fn as_str(self) -> &'static str {
        match self {
            TableOwner::Service => "service",
            TableOwner::Handler => "handler",
        }
    }

    pub fn parse(text: &str) -> Option<TableOwner> {
        match text {
            "service" => Some(TableOwner::Service),
            "handler" => Some(TableOwner::Handler),
            _ => None,
        }
    }
}

/// A goal every player the handler initializes gets (`defaultAssigned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultGoal {
    pub goal_id: String,
    pub challenge_id: String,
    pub rule: GoalRule,
}

/// Who owns the table, and what a player the handler initializes gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub table: TableOwner,
    pub defaults: Vec<DefaultGoal>,
}

impl Owner {
    /// The challenge service owns the table.
    pub fn service() -> Owner {
        Owner {
            table: TableOwner::Service,
            defaults: Vec::new(),
        }
    }

    /// The handler owns the table; players get the goals of `goals` that
    /// are assigned by default.
    pub fn handler<'g>(goals: impl IntoIterator<Item = &'g GoalDef>) -> Owner {
        Owner {
            table: TableOwner::Handler,
            defaults: goals
                .into_iter()
                .filter(|g| g.default_assigned)
                .map(|g| DefaultGoal {
                    goal_id: g.goal_id.clone(),
                    challenge_id: g.challenge_id.clone(),
                    rule: g.rule,
                })
                .collect(),
        }
    }
}

/// What start-up found out about the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Ready to flush; `why` says which owner applies and why (for the log).
    /// `rotation_columns`: the table has `expires_at` and `baseline_value`
    /// (a table made before the challenge service's M5 migrations may not;
    /// the M5 rules need both).
    Ready {
        owner: TableOwner,
        why: String,
        rotation_columns: bool,
    },
    /// `user_goal_progress` does not exist and the handler may not create it.
    Waiting { why: String },
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
    /// User-goal rows that changed.
    pub rows: usize,
    /// The GDPR deletions applied, with the rows each removed.
    pub deleted: Vec<Deleted>,
    /// Updates that found no row to change.
    pub not_applied: NotApplied,
    /// Updates left out for a GDPR deletion another replica applied.
    pub dropped: Vec<Dropped>,
    /// Where the transaction's time went.
    pub phases: Phases,
}

/// A part of a flush transaction, along its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the transaction, the cluster lock (held exclusively by a
    /// replica applying a GDPR deletion) and this instance's watermark.
    Begin,
    /// Recording the batch's event ids in the cluster's ledger.
    Ledger,
    /// GDPR deletions, and other replicas' tombstones of the batch's users.
    Deletions,
    /// Reading rows (and waiting for those read ahead).
    Read,
    /// Applying the rules, in the service.
    Rules,
    /// Writing rows: updates, rows created where the handler owns the
    /// table, the handler's own state of rows.
    Write,
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Begin,
        Phase::Ledger,
        Phase::Deletions,
        Phase::Read,
        Phase::Rules,
        Phase::Write,
        Phase::Commit,
    ];

    /// The `phase` label of `flush_phase_seconds_total`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Begin => "begin",
            Phase::Ledger => "ledger",
            Phase::Deletions => "deletions",
            Phase::Read => "read",
            Phase::Rules => "rules",
            Phase::Write => "write",
            Phase::Commit => "commit",
        }
    }
}

/// Where one flush transaction's time went, by [`Phase`] (they add up to
/// the transaction's time; the rows read ahead, beside the write, count
/// only where the flush waited for them). What an operator reads to tell a
/// slow database statement from a slow service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases([Duration; Phase::ALL.len()]);

impl Phases {
    pub fn add(&mut self, phase: Phase, spent: Duration) {
        self.0[phase as usize] += spent;
    }

    pub fn get(&self, phase: Phase) -> Duration {
        self.0[phase as usize]
    }

    /// The time of every phase together.
    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

impl std::ops::AddAssign for Phases {
    fn add_assign(&mut self, other: Phases) {
        for phase in Phase::ALL {
            self.add(phase, other.get(phase));
        }
    }
}

/// A user's pending updates left out because another replica deleted the
/// user (its tombstone), for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub user_id: String,
    pub namespace: String,
    /// Updates (one per event and goal) not written.
    pub updates: u64,
    /// The deletion's time, Unix ms, and the replica that applied it.
    pub deleted_ms: i64,
    pub by_instance: String,
}

/// Updates (one per event and goal) a flush did not apply, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotApplied {
    /// The player has no row at all: the challenge service has not
    /// initialized them yet (or the handler should own the table).
    pub player_not_initialized: u64,
    /// …how many players that is.
    pub players_not_initialized: u64,
    /// The player has rows, but not this goal's (not assigned to them).
    pub goal_not_assigned: u64,
    /// The row is inactive (`is_active = false`).
    pub inactive: u64,
    /// The row is claimed and the rules keep it so.
    pub claimed: u64,
}

/// One GDPR deletion as applied, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub user_id: String,
    pub namespace: String,
    pub event_id: String,
    /// The deletion event's time (its `timestamp`, else arrival), Unix ms.
    pub holds_from_ms: i64,
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
                    holds_from_ms: d.event_time_ms,
                    rows: counts
                        .remove(&(d.user_id.as_str(), d.namespace.as_str()))
                        .unwrap_or(0),
                }
            })
            .collect()
    }
}

pub trait ProgressStore: Send + Sync + 'static {
    /// Creates or upgrades the handler's own tables (unless `migrate` is
    /// false) and decides who owns `user_goal_progress`: `requested` when
    /// set (TABLE_OWNER), else what was decided at an earlier start, else
    /// the challenge service if the table exists. Creates the table only
    /// for the handler.
    fn prepare(
        &self,
        requested: Option<TableOwner>,
        migrate: bool,
    ) -> impl Future<Output = Result<Prepared>> + Send;

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

    /// In ONE transaction ([`flush::apply`]): moves the watermark to
    /// `upto_seq` (only under the lease's epoch), applies the batch's GDPR
    /// deletions, creates rows where `owner` says the handler does, then
    /// applies every entry of `batch` to its row.
    fn apply(
        &self,
        lease: &Lease,
        upto_seq: u64,
        batch: &Buffer,
        owner: &Owner,
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

impl Store {
    /// Keeps the cluster's guarantees as `cluster` says (PostgreSQL; the
    /// embedded store is one process).
    pub fn with_cluster(self, cluster: cluster::ClusterSettings) -> Store {
        match self {
            Store::Postgres(pg) => Store::Postgres(pg.with_cluster(cluster)),
            other => other,
        }
    }

    /// PostgreSQL ends what a flush abandons after FLUSH_TIMEOUT
    /// ([`postgres::PgStore::with_flush_timeout`]); the embedded store is
    /// a file, whose waits SQLite bounds itself.
    pub fn with_flush_timeout(self, limit: std::time::Duration) -> Store {
        match self {
            Store::Postgres(pg) => Store::Postgres(pg.with_flush_timeout(limit)),
            other => other,
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
    async fn prepare(&self, requested: Option<TableOwner>, migrate: bool) -> Result<Prepared> {
        each!(self, s => s.prepare(requested, migrate).await)
    }

    async fn lease(&self, instance_id: &str) -> Result<Lease> {
        match self {
            Store::Postgres(s) => sql::lease(s, instance_id).await,
            Store::Sqlite(s) => s.lease(instance_id).await,
        }
    }

    /// The flush transaction, written once above the two dialects.
    async fn apply(
        &self,
        lease: &Lease,
        upto_seq: u64,
        batch: &Buffer,
        owner: &Owner,
    ) -> Result<Applied> {
        each!(self, s => flush::apply(s, lease, upto_seq, batch, owner).await)
    }

    async fn watermark(&self, instance_id: &str) -> Result<Option<Watermark>> {
        each!(self, s => sql::watermark(s, instance_id).await)
    }

    async fn user_progress(
        &self,
        user_id: &str,
        goal_id: Option<&str>,
    ) -> Result<Vec<ProgressRow>> {
        each!(self, s => s.user_progress(user_id, goal_id).await)
    }
}
