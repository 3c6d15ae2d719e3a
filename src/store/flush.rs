//! The flush transaction, written once above the two SQL dialects.
//!
//! In ONE transaction: move this instance's watermark (only under its
//! epoch: a zombie is fenced before it touches a row), apply the batch's
//! GDPR deletions, lock and read every row the batch touches, create the
//! missing ones where the handler owns the table (a new player gets every
//! goal assigned by default, as the challenge service's Initialize gives
//! them; an entry's own goal if assigned by default), apply the rules in
//! Rust ([`Buffer::plan`]), and write back what changed. A [`Dialect`]
//! supplies only the statements. After the deletions, the entries go a
//! chunk of whole players at a time ([`Dialect::chunk_keys`]), each read,
//! planned and written before the next, so a flush holds two chunks' rows
//! at most (this one's and the next one's, read ahead) however large its
//! batch. In the steady state (every row exists) a flush
//! is two statements per statement-sized part of a chunk, a read and a write,
//! and the next chunk's read runs beside this chunk's write, on a connection
//! of its own ([`Dialect::read_rows_ahead`]).
//!
//! The read takes no lock: the write changes a row only if it is still the
//! version that was read, and returns those that were not (the challenge
//! service or another replica changed them in between, which is rare);
//! those are read again, locked this time, and their entries applied again.
//! A row lock per row read would cost PostgreSQL a WAL record per row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use sqlx::Transaction;

use super::sql::{Backend, Moved};
use super::{
    Applied, Deleted, Dropped, Lease, NotApplied, Owner, Phase, Phases, Result, StoreError,
    TableOwner,
};
use crate::buffer::{Buffer, Entries, Key, Meta, PendingDeletion};
use crate::clock::{day_of, micros_of};
use crate::rules::row::{GoalState, Micros, Row, Status};
use crate::wal::dedup::Mark;

/// A row as the flush reads it: its columns and its identity (`created_at`:
/// the handler's own per-row state belongs to this row only, not to one
/// the challenge service deletes and creates again).
#[derive(Debug, Clone)]
pub struct Locked {
    pub row: Row,
    pub created_at: Micros,
    /// How the dialect finds this version of the row again (PostgreSQL:
    /// its `ctid` and `xmin`): the write changes it only if it is unchanged.
    pub version: Option<Version>,
}

/// A row's columns as both dialects read them, times in UTC without a zone:
/// progress, status, completed_at, claimed_at, is_active, updated_at,
/// expires_at, baseline_value, created_at, and the handler's state
/// (last_event_at, last_counted_day).
pub(super) type RowColumns = (
    i32,
    String,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
    bool,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<i32>,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<NaiveDate>,
);

impl Locked {
    /// The row `key` as a dialect read it (`version` where it has one).
    pub(super) fn of(key: &Key, c: RowColumns, version: Option<Version>) -> Result<Locked> {
        let status = Status::parse(&c.1).ok_or_else(|| {
            StoreError::Rejected(format!(
                "user_goal_progress row {}/{} has status {:?}, not one of the four the table allows",
                key.user_id, key.goal_id, c.1
            ))
        })?;
        let row = Row {
            progress: c.0,
            status,
            completed_at: c.2.map(micros_of),
            claimed_at: c.3.map(micros_of),
            is_active: c.4,
            updated_at: micros_of(c.5),
            expires_at: c.6.map(micros_of),
            baseline: c.7,
            state: GoalState {
                last_event_at: c.9.map(micros_of),
                last_counted_day: c.10.map(day_of),
            },
        };
        Ok(Locked {
            row,
            created_at: micros_of(c.8),
            version,
        })
    }
}

/// The keys of a flush's chunk where the dialect does not say otherwise.
pub(super) const CHUNK_KEYS: usize = 10_000;

/// The rows a flush read, by the position of their key among the batch's
/// keys (sorted, each once): the entries, the plan and the write find a row
/// by that position, not by hashing its key (filling a key→row map was the
/// largest part of the read in the service; docs/BENCHMARKS.md, "Sixth
/// round").
#[derive(Debug)]
pub struct Rows {
    slots: Vec<Option<Locked>>,
}

impl Rows {
    /// No row yet of `keys` keys.
    fn new(keys: usize) -> Rows {
        Rows {
            slots: (0..keys).map(|_| None).collect(),
        }
    }

    /// The row at position `at`, if it was read.
    pub fn get(&self, at: usize) -> Option<&Locked> {
        self.slots.get(at).and_then(Option::as_ref)
    }

    /// Rows read of `at` (positions among the batch's keys), each as a
    /// dialect returned it: (position in `at`, row).
    fn fill(&mut self, at: &[usize], read: Vec<(usize, Locked)>) -> Result<()> {
        for (i, locked) in read {
            let slot = at
                .get(i)
                .and_then(|&at| self.slots.get_mut(at))
                .ok_or_else(|| StoreError::Rejected(format!("internal: a row read for key {i}")))?;
            *slot = Some(locked);
        }
        Ok(())
    }

    /// Forgets the rows at `at` (to read them again).
    fn forget(&mut self, at: &[usize]) {
        for &at in at {
            if let Some(slot) = self.slots.get_mut(at) {
                *slot = None;
            }
        }
    }

    /// Whether every key has a row.
    fn all_found(&self) -> bool {
        self.slots.iter().all(Option::is_some)
    }
}

/// A row to write back: its key, its new columns and the version the flush
/// read (the write changes the row only if it is still that version).
#[derive(Debug, Clone, Copy)]
pub struct RowWrite<'a> {
    pub key: &'a Key,
    pub row: &'a Row,
    pub version: Option<&'a Version>,
}

/// A version of a row as PostgreSQL stores it: where it is (`ctid`) and
/// the transaction that wrote it (`xmin`). A row changed since has another
/// `ctid` or `xmin`. Both travel in PostgreSQL's binary forms
/// (`store/postgres/tid.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub ctid: Tid,
    pub xmin: Xid,
}

/// A row's place in its table (PostgreSQL's `tid`): page and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

/// A transaction id (PostgreSQL's `xid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xid(pub u32);

/// A GDPR deletion another replica applied: its pending updates of the
/// user acknowledged up to `cutoff_ms` must not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The deletion's time plus the allowed clock skew, Unix ms.
    pub cutoff_ms: i64,
    /// The deletion's time, Unix ms.
    pub deleted_ms: i64,
    /// The replica that applied it.
    pub instance_id: String,
}

/// A row to insert where the handler owns the table.
#[derive(Debug, Clone)]
pub struct NewRow<'b> {
    pub key: Key,
    pub challenge_id: &'b str,
    pub namespace: &'b str,
    pub row: Row,
}

/// The handler's own state of a row, to write.
#[derive(Debug, Clone)]
pub struct StateWrite<'p> {
    pub key: &'p Key,
    pub created_at: Micros,
    pub state: GoalState,
}

/// How [`Dialect::read_rows`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Read {
    /// Locked, in key order, until the transaction ends.
    pub lock: bool,
    /// With the handler's own state of each row (the type rules read it; a
    /// batch of M5 entries alone does not need the join).
    pub state: bool,
}

/// A flush's transaction on a backend's database.
pub(super) type Tx<D> = Transaction<'static, <D as Backend>::Db>;

/// The statements of one SQL dialect. Every method runs inside `tx`.
pub(super) trait Dialect: Backend + Send + Sync {
    /// How many keys a flush handles at a time (whole players; one player
    /// with more keys is one chunk).
    fn chunk_keys(&self) -> usize {
        CHUNK_KEYS
    }
    /// Opens the flush's transaction.
    fn begin(&self) -> impl Future<Output = Result<Tx<Self>>> + Send {
        async { self.pool().begin().await.map_err(Self::error) }
    }
    fn commit(&self, tx: Tx<Self>) -> impl Future<Output = Result<()>> + Send {
        async { tx.commit().await.map_err(Self::error) }
    }
    /// Moves the watermark from at most `after` to `upto` if `lease` is current.
    fn move_watermark(
        &self,
        tx: &mut Tx<Self>,
        lease: &Lease,
        after: u64,
        upto: u64,
    ) -> impl Future<Output = Result<Moved>> + Send;
    /// Deletes every row (and the handler's state) of each deleted user;
    /// on PostgreSQL leaves a tombstone of `instance_id` for each.
    fn delete_users(
        &self,
        tx: &mut Tx<Self>,
        deletions: &[PendingDeletion],
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<Deleted>>> + Send;
    /// Takes the cluster lock first in the transaction: shared, exclusive
    /// for a batch with deletions (PostgreSQL; one process needs none).
    fn lock_cluster(
        &self,
        _tx: &mut Tx<Self>,
        _exclusive: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Records the batch's events in the cluster's ledger; returns those
    /// another flush recorded first (PostgreSQL with the ledger on).
    fn claim_events(
        &self,
        _tx: &mut Tx<Self>,
        _events: &[Mark],
    ) -> impl Future<Output = Result<Vec<Mark>>> + Send {
        async { Ok(Vec::new()) }
    }
    /// The newest tombstone other replicas left for each of `users`
    /// (namespace, user id).
    fn tombstones(
        &self,
        _tx: &mut Tx<Self>,
        _users: &[(&str, &str)],
        _instance_id: &str,
    ) -> impl Future<Output = Result<HashMap<(String, String), Tombstone>>> + Send {
        async { Ok(HashMap::new()) }
    }
    /// Which of `users` have any row.
    fn users_with_rows(
        &self,
        tx: &mut Tx<Self>,
        users: &[&str],
    ) -> impl Future<Output = Result<HashSet<String>>> + Send;
    /// Inserts rows that do not exist yet (an existing row is left alone).
    fn insert_rows(
        &self,
        tx: &mut Tx<Self>,
        rows: &[NewRow<'_>],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Reads the rows of `keys` (sorted); with `read.lock`, locked (in key
    /// order) until the transaction ends; with `read.state`, with the
    /// handler's state (else its default: only the type rules read it).
    /// Returns each row found with the position of its key in `keys`.
    fn read_rows(
        &self,
        tx: &mut Tx<Self>,
        keys: &[&Key],
        read: Read,
    ) -> impl Future<Output = Result<Vec<(usize, Locked)>>> + Send;
    /// Reads the rows of `keys` as [`Self::read_rows`] does without a lock,
    /// but outside the flush's transaction, on a connection of its own, so
    /// that it runs while the transaction writes the chunk before. A read
    /// from outside is as good as an unlocked one from inside: the write
    /// changes a row only if it is still the version read, and the chunks
    /// of a flush hold different rows. Not in a flush that deletes users: a
    /// read from outside would still see the rows the transaction deleted,
    /// and a player created again after a deletion would not be. `None`: no
    /// connection to spare (or a dialect with one writer): the flush reads
    /// inside, after the write.
    fn read_rows_ahead(
        &self,
        _keys: &[&Key],
        _read: Read,
    ) -> impl Future<Output = Option<Result<Vec<(usize, Locked)>>>> + Send {
        async { None }
    }
    /// Writes the columns the rules decide, of each row that is still the
    /// version read; returns the positions in `rows` of those that were not
    /// (changed or deleted since), which it left alone.
    fn write_rows(
        &self,
        tx: &mut Tx<Self>,
        rows: &[RowWrite<'_>],
    ) -> impl Future<Output = Result<Vec<usize>>> + Send;
    /// Writes the handler's state of rows.
    fn write_states(
        &self,
        tx: &mut Tx<Self>,
        states: &[StateWrite<'_>],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The flush of `batch` (WAL sequence numbers up to `upto`) in one transaction.
pub(super) async fn apply<D: Dialect>(
    dialect: &D,
    lease: &Lease,
    upto: u64,
    batch: &Buffer,
    owner: &Owner,
) -> Result<Applied> {
    let now: Micros = crate::rules::row::micros(crate::clock::unix_ms() as i64);
    let mut watch = Stopwatch::start();
    let mut tx = dialect.begin().await?;
    // The cluster lock before any other: it cannot be part of a deadlock.
    dialect
        .lock_cluster(&mut tx, !batch.deletions.is_empty())
        .await?;
    // The watermark next: it locks this instance's row, so a zombie with an
    // old epoch fails here before touching any progress row.
    match dialect
        .move_watermark(&mut tx, lease, batch.after(), upto)
        .await?
    {
        Moved::Yes => {}
        Moved::Fenced => {
            return Err(StoreError::Fenced {
                instance_id: lease.instance_id.clone(),
                epoch: lease.epoch,
            })
        }
        Moved::Ahead(applied) => {
            return Err(StoreError::Ahead {
                applied,
                after: batch.after(),
            })
        }
    }
    watch.charge(Phase::Begin);
    // Events another flush applied (another replica, or an earlier
    // delivery): this transaction is abandoned; the flusher leaves them out.
    let taken = dialect.claim_events(&mut tx, &batch.events).await?;
    watch.charge(Phase::Ledger);
    if !taken.is_empty() {
        return Err(StoreError::AlreadyApplied { marks: taken });
    }
    // Deletions before anything else: the batch holds nothing of a deleted
    // user from before the deletion, so what follows is a fresh start.
    let deleted = dialect
        .delete_users(&mut tx, &batch.deletions, &lease.instance_id)
        .await?;
    watch.charge(Phase::Deletions);
    let mut entries = batch.entries();
    watch.charge(Phase::Rules);
    let dropped = drop_tombstoned(dialect, &mut tx, &mut entries, &lease.instance_id).await?;
    watch.charge(Phase::Deletions);
    let read = Read {
        lock: false,
        state: batch.reads_goal_state(),
    };
    // A chunk of players at a time, in the one transaction: what a flush
    // holds besides the buffer (the rows read, the rows to write) stays the
    // size of two chunks however large the backlog (docs/BENCHMARKS.md, "Memory
    // per byte of backlog").
    // The rows of the next chunk are read (from outside the transaction)
    // while this one's are written: the two statements run at once, on two
    // connections (docs/BENCHMARKS.md, "Tenth round").
    let chunks = entries.into_user_chunks(dialect.chunk_keys());
    let read_ahead = batch.deletions.is_empty();
    let mut ahead: Option<Vec<(usize, Locked)>> = None;
    let mut keys = chunks.first().map(keys_of).unwrap_or_default();
    let mut done = Chunk::default();
    watch.charge(Phase::Rules);
    for (i, chunk) in chunks.iter().enumerate() {
        let rows = match ahead.take() {
            Some(rows) => rows,
            None => dialect.read_rows(&mut tx, &keys, read).await?,
        };
        watch.charge(Phase::Read);
        let next_keys = chunks.get(i + 1).map(keys_of).unwrap_or_default();
        let next = async {
            if !read_ahead || next_keys.is_empty() {
                return None;
            }
            match dialect.read_rows_ahead(&next_keys, read).await? {
                Ok(rows) => Some(rows),
                Err(e) => {
                    // Read inside the transaction instead, which says what is wrong.
                    tracing::debug!(error = %e, "reading a flush's next rows ahead failed");
                    None
                }
            }
        };
        let (part, next) = tokio::join!(
            apply_chunk(dialect, &mut tx, chunk, &keys, rows, read, owner, now),
            next
        );
        let part = part?;
        // The chunk's own phases, and the wait for the next chunk's rows
        // past them.
        watch.charge_besides(Phase::Read, part.phases);
        ahead = next;
        keys = next_keys;
        done.rows += part.rows;
        done.missing.extend(part.missing);
        done.inactive += part.inactive;
        done.claimed += part.claimed;
    }
    let not_applied = not_applied(dialect, &mut tx, &done).await?;
    watch.charge(Phase::Read);
    dialect.commit(tx).await?;
    watch.charge(Phase::Commit);
    crate::crash_point!("flush-after-commit");
    Ok(Applied {
        rows: done.rows,
        deleted,
        not_applied,
        dropped,
        phases: watch.phases,
    })
}

/// A flush's (or a chunk's) time by phase: each charge gives the time since
/// the last one to a phase.
struct Stopwatch {
    last: Instant,
    phases: Phases,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            last: Instant::now(),
            phases: Phases::default(),
        }
    }

    fn since_last(&mut self) -> Duration {
        let now = Instant::now();
        let spent = now.saturating_duration_since(self.last);
        self.last = now;
        spent
    }

    /// The time since the last charge goes to `phase`.
    fn charge(&mut self, phase: Phase) {
        let spent = self.since_last();
        self.phases.add(phase, spent);
    }

    /// The time since the last charge was spent in `inner` (measured
    /// inside, by phase) and, for what is left, in `phase`.
    fn charge_besides(&mut self, phase: Phase, inner: Phases) {
        let spent = self.since_last();
        self.phases.add(phase, spent.saturating_sub(inner.total()));
        self.phases += inner;
    }
}

/// What the chunks of a flush did: rows written, the updates not applied
/// (their row missing, inactive or claimed), and where a chunk's time went
/// (reading, the rules, writing).
#[derive(Default)]
struct Chunk<'b> {
    rows: usize,
    missing: Vec<(&'b Key, u32)>,
    inactive: u64,
    claimed: u64,
    phases: Phases,
}

/// One chunk of a flush's entries (whole players, in key order), inside the
/// flush's transaction: read its rows, create the missing ones where the
/// handler owns the table, apply the rules, write back what changed (and
/// read again, locked, what changed since it was read).
#[allow(clippy::too_many_arguments)]
async fn apply_chunk<'b, D: Dialect>(
    dialect: &D,
    tx: &mut Tx<D>,
    entries: &Entries<'b>,
    keys: &[&'b Key],
    read_rows: Vec<(usize, Locked)>,
    read: Read,
    owner: &'b Owner,
    now: Micros,
) -> Result<Chunk<'b>> {
    let mut watch = Stopwatch::start();
    let all: Vec<usize> = (0..keys.len()).collect();
    let mut current = Rows::new(keys.len());
    current.fill(&all, read_rows)?;
    watch.charge(Phase::Rules);
    if owner.table == TableOwner::Handler && !current.all_found() {
        let absent: Vec<usize> = (0..keys.len())
            .filter(|&at| current.get(at).is_none())
            .collect();
        let absent_keys: Vec<&Key> = absent.iter().map(|&at| keys[at]).collect();
        let rows = new_rows(dialect, tx, entries, &absent_keys, owner).await?;
        if !rows.is_empty() {
            dialect.insert_rows(tx, &rows).await?;
            watch.charge(Phase::Write);
            let created = dialect.read_rows(tx, &absent_keys, read).await?;
            current.fill(&absent, created)?;
        }
        watch.charge(Phase::Read);
    }
    // A test holds the flush here to change a row between the read and the write.
    fail::fail_point!("flush-after-read");
    fail::fail_point!("flush-between-statements", |_| Err(
        StoreError::Unavailable("injected failure (failpoint flush-between-statements)".into())
    ));
    crate::crash_point!("flush-mid-transaction");
    let mut plan = entries.plan(|at, key| row_at(&current, keys, at, key), now);
    watch.charge(Phase::Rules);
    let changed = dialect
        .write_rows(tx, &row_writes(&plan.writes, &current))
        .await?;
    watch.charge(Phase::Write);
    if !changed.is_empty() {
        // Rows changed since they were read: read them again, locked, and
        // apply their entries again (the other rows are written already).
        let mut changed: Vec<usize> = changed.iter().map(|&i| plan.writes[i].0).collect();
        changed.sort_unstable();
        let changed_keys: Vec<&Key> = changed.iter().map(|&at| keys[at]).collect();
        let locked = Read { lock: true, ..read };
        let reread = dialect.read_rows(tx, &changed_keys, locked).await?;
        watch.charge(Phase::Read);
        current.forget(&changed);
        current.fill(&changed, reread)?;
        plan = entries.plan(|at, key| row_at(&current, keys, at, key), now);
        let retry: Vec<(usize, &Key, Row)> = plan
            .writes
            .iter()
            .filter(|(at, _, _)| changed.binary_search(at).is_ok())
            .cloned()
            .collect();
        watch.charge(Phase::Rules);
        let still = dialect
            .write_rows(tx, &row_writes(&retry, &current))
            .await?;
        watch.charge(Phase::Write);
        if !still.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{} rows changed although locked; retrying the flush",
                still.len()
            )));
        }
    }
    let states: Vec<StateWrite<'_>> = plan
        .writes
        .iter()
        .filter_map(|(at, key, row)| {
            let before = current.get(*at)?;
            (row.state != before.row.state).then_some(StateWrite {
                key,
                created_at: before.created_at,
                state: row.state,
            })
        })
        .collect();
    watch.charge(Phase::Rules);
    dialect.write_states(tx, &states).await?;
    watch.charge(Phase::Write);
    Ok(Chunk {
        rows: plan.writes.len(),
        missing: plan.missing,
        inactive: plan.inactive,
        claimed: plan.claimed,
        phases: watch.phases,
    })
}

/// The keys of a chunk's entries, in order, each once.
fn keys_of<'b>(entries: &Entries<'b>) -> Vec<&'b Key> {
    let mut keys: Vec<&Key> = entries.as_slice().iter().map(|(key, _, _)| *key).collect();
    keys.dedup();
    keys
}

/// The row read of the key at position `at` among the batch's `keys`
/// (which the plan also names, to check).
fn row_at<'r>(current: &'r Rows, keys: &[&Key], at: usize, key: &Key) -> Option<&'r Row> {
    debug_assert!(
        keys.get(at) == Some(&key),
        "the plan's key {at} is not the read's"
    );
    current.get(at).map(|l| &l.row)
}

/// The writes of a plan with the version of each row as it was read.
fn row_writes<'a>(writes: &'a [(usize, &'a Key, Row)], current: &'a Rows) -> Vec<RowWrite<'a>> {
    writes
        .iter()
        .map(|(at, key, row)| RowWrite {
            key,
            row,
            version: current.get(*at).and_then(|l| l.version.as_ref()),
        })
        .collect()
}

/// Leaves out the entries of users another replica deleted, when their
/// updates are not later than the deletion (plus the allowed skew).
async fn drop_tombstoned<D: Dialect>(
    dialect: &D,
    tx: &mut Tx<D>,
    entries: &mut Entries<'_>,
    instance_id: &str,
) -> Result<Vec<Dropped>> {
    let mut users: Vec<(&str, &str)> = entries
        .as_slice()
        .iter()
        .map(|(key, meta, _)| (meta.namespace.as_str(), key.user_id.as_str()))
        .collect();
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let stones = dialect.tombstones(tx, &users, instance_id).await?;
    if stones.is_empty() {
        return Ok(Vec::new());
    }
    let mut dropped: BTreeMap<(String, String), Dropped> = BTreeMap::new();
    entries.retain(|key, meta| {
        let user = (meta.namespace.clone(), key.user_id.clone());
        match stones.get(&user) {
            Some(stone) if meta.first_ms <= stone.cutoff_ms => {
                let d = dropped.entry(user).or_insert_with(|| Dropped {
                    user_id: key.user_id.clone(),
                    namespace: meta.namespace.clone(),
                    updates: 0,
                    deleted_ms: stone.deleted_ms,
                    by_instance: stone.instance_id.clone(),
                });
                d.updates += u64::from(meta.records);
                false
            }
            _ => true,
        }
    });
    Ok(dropped.into_values().collect())
}

/// The rows a flush creates where the handler owns the table, for the
/// players of entries whose row is missing: an entry's own row when its
/// goal is assigned by default, and, for a player with no row at all, every
/// goal assigned by default (the challenge service's Initialize), at the
/// player's first update in the batch.
async fn new_rows<'b, D: Dialect>(
    dialect: &D,
    tx: &mut Tx<D>,
    entries: &Entries<'b>,
    absent: &[&Key],
    owner: &'b Owner,
) -> Result<Vec<NewRow<'b>>> {
    let mut first: BTreeMap<&str, (i64, &'b Meta)> = BTreeMap::new();
    for (key, meta, entry) in entries.as_slice() {
        // `absent` is sorted, as the entries are.
        if absent.binary_search(key).is_err() {
            continue;
        }
        let seen = first
            .entry(&key.user_id)
            .or_insert((entry.first_ms(), meta));
        seen.0 = seen.0.min(entry.first_ms());
    }
    let mut rows: Vec<NewRow<'b>> = entries
        .new_rows()
        .into_iter()
        .filter(|(key, _, _)| absent.binary_search(&key).is_ok())
        .map(|(key, meta, row)| NewRow {
            key,
            challenge_id: &meta.challenge_id,
            namespace: &meta.namespace,
            row,
        })
        .collect();
    if !owner.defaults.is_empty() {
        let users: Vec<&str> = first.keys().copied().collect();
        let initialized = dialect.users_with_rows(tx, &users).await?;
        for (user, (first_ms, meta)) in &first {
            if initialized.contains(*user) {
                continue;
            }
            for goal in &owner.defaults {
                rows.push(NewRow {
                    key: Key {
                        user_id: (*user).to_owned(),
                        goal_id: goal.goal_id.clone(),
                    },
                    challenge_id: &goal.challenge_id,
                    namespace: &meta.namespace,
                    row: crate::rules::assigned_row(&goal.rule, *first_ms),
                });
            }
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows.dedup_by(|a, b| a.key == b.key);
    Ok(rows)
}

/// Counts the updates the flush could not apply: rows that do not exist
/// (split into players with no row at all, not initialized by the
/// challenge service yet, and goals the player has no row of), inactive
/// and claimed rows.
async fn not_applied<D: Dialect>(
    dialect: &D,
    tx: &mut Tx<D>,
    done: &Chunk<'_>,
) -> Result<NotApplied> {
    let missing = &done.missing;
    let mut counts = NotApplied {
        inactive: done.inactive,
        claimed: done.claimed,
        ..NotApplied::default()
    };
    if missing.is_empty() {
        return Ok(counts);
    }
    let users: Vec<&str> = {
        let mut users: Vec<&str> = missing.iter().map(|(k, _)| k.user_id.as_str()).collect();
        users.dedup();
        users
    };
    let with_rows = dialect.users_with_rows(tx, &users).await?;
    let mut players = HashSet::new();
    for (key, records) in missing {
        if with_rows.contains(&key.user_id) {
            counts.goal_not_assigned += u64::from(*records);
        } else {
            counts.player_not_initialized += u64::from(*records);
            players.insert(key.user_id.as_str());
        }
    }
    counts.players_not_initialized = players.len() as u64;
    Ok(counts)
}
