//! PostgreSQL store: the statements of the flush transaction
//! ([`super::flush`]) with one array per column and `UNNEST`, keys sorted,
//! in chunks of `DB_BATCH_SIZE`; the handler's own tables; and who owns
//! `user_goal_progress` (docs/DESIGN.md, "Who owns the table").
//!
//! The rules are not in SQL: the flush locks and reads the rows it
//! touches (`SELECT … FOR UPDATE`, in key order, so replicas and the
//! challenge service's claim never deadlock), applies the rules in Rust and
//! writes back the columns that changed with one `UPDATE … FROM UNNEST`.

pub mod cluster;
mod error;
mod schema;
mod tid;
pub use schema::golang_migrate_lock_id;

use std::collections::{HashMap, HashSet};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::Postgres;
use sqlx::{FromRow, Row as _};

use super::flush::{
    Dialect, Locked, NewRow, Read, RowColumns, RowWrite, StateWrite, Tombstone, Tx, Version,
};
use super::sql;
use super::{Deleted, Lease, Prepared, ProgressRow, Result, StoreError, TableOwner};
use crate::buffer::{Key, PendingDeletion};
use crate::clock::{date_of_day, naive_micros};
use crate::wal::dedup::Mark;
use cluster::ClusterSettings;
use error::pg;

/// `{expires_at}` and `{baseline_value}` stand for the columns, or NULL on a
/// table made before the challenge service's M5 migrations (see [`Columns`]).
const READ_ROWS_SQL: &str = "
SELECT p.user_id, p.goal_id, p.challenge_id, p.namespace, p.progress, p.status, p.completed_at,
       p.claimed_at, p.is_active, p.assigned_at, p.updated_at, {expires_at} AS expires_at,
       {baseline_value} AS baseline_value, s.last_event_at, s.last_counted_day
FROM user_goal_progress p
LEFT JOIN challenge_event_handler_goal_state s
       ON s.user_id = p.user_id AND s.goal_id = p.goal_id AND s.row_created_at = p.created_at
WHERE p.user_id = $1 AND ($2::varchar IS NULL OR p.goal_id = $2)
ORDER BY p.goal_id";

/// This instance's lease, its fenced watermark and the watermark's read.
static STATEMENTS: sql::Statements = sql::Statements {
    lease: "
INSERT INTO challenge_event_handler_watermark AS w (instance_id, epoch, applied_seq)
VALUES ($1, 1, 0)
ON CONFLICT (instance_id) DO UPDATE SET epoch = w.epoch + 1, updated_at = now()
RETURNING epoch, applied_seq",
    move_watermark: "
UPDATE challenge_event_handler_watermark
SET applied_seq = GREATEST(applied_seq, $3), updated_at = now()
WHERE instance_id = $1 AND epoch = $2 AND applied_seq <= $4
RETURNING epoch",
    read_watermark: "
SELECT epoch, applied_seq FROM challenge_event_handler_watermark WHERE instance_id = $1",
};

impl sql::Backend for PgStore {
    type Db = Postgres;
    fn pool(&self) -> &PgPool {
        &self.pool
    }
    fn statements(&self) -> &'static sql::Statements {
        &STATEMENTS
    }
    fn error(e: sqlx::Error) -> StoreError {
        pg(e)
    }
}

/// GDPR deletions: every row of each (user, namespace); the rows deleted are
/// returned for the audit log.
const DELETE_SQL: &str = "
DELETE FROM user_goal_progress AS t
USING (SELECT DISTINCT user_id, namespace
       FROM UNNEST($1::varchar[], $2::varchar[]) AS d(user_id, namespace)) AS d
WHERE t.user_id = d.user_id AND t.namespace = d.namespace
RETURNING t.user_id, t.namespace";

/// After the rows: the deleted users' state, except what belongs to a row
/// that stays (the same player in another namespace).
const DELETE_STATE_SQL: &str = "
DELETE FROM challenge_event_handler_goal_state AS s
WHERE s.user_id = ANY($1::varchar[])
  AND NOT EXISTS (SELECT 1 FROM user_goal_progress p
                  WHERE p.user_id = s.user_id AND p.goal_id = s.goal_id
                    AND p.created_at = s.row_created_at)";

const USERS_WITH_ROWS_SQL: &str = "
SELECT DISTINCT user_id FROM user_goal_progress WHERE user_id = ANY($1::varchar[])";

/// Rows the handler creates where it owns the table, as the challenge
/// service's Initialize inserts them; an existing row is left alone.
const INSERT_ROWS_SQL: &str = "
INSERT INTO user_goal_progress
    (user_id, goal_id, challenge_id, namespace, progress, status,
     created_at, updated_at, is_active, assigned_at{, expires_at})
SELECT u.user_id, u.goal_id, u.challenge_id, u.namespace, 0, 'not_started',
       u.at, u.at, true, u.at{, u.expires_at}
FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::timestamp[],
            $6::timestamp[])
     AS u(user_id, goal_id, challenge_id, namespace, at, expires_at)
ON CONFLICT (user_id, goal_id) DO NOTHING";

/// The rows of a batch with their version (`ctid`, `xmin`: the write finds
/// them without a lookup, and only if unchanged) and the position of their
/// key in the batch (1-based), so no key is decoded. `{state}`: the
/// handler's state of each row (a join) or typed NULLs; `{lock}`: `ORDER BY`
/// the key and `FOR UPDATE OF p` (rows locked in key order), or nothing (an
/// unlocked read needs no order).
const READ_BATCH_SQL: &str = "
SELECT p.progress, p.status, p.completed_at, p.claimed_at, p.is_active,
       p.updated_at, {expires_at}, {baseline_value}, p.created_at,
       {state}, k.ord::int4, p.ctid, p.xmin
FROM UNNEST($1::varchar[], $2::varchar[]) WITH ORDINALITY AS k(user_id, goal_id, ord)
JOIN user_goal_progress p ON p.user_id = k.user_id AND p.goal_id = k.goal_id
{state_join}
{lock}";

const STATE_COLUMNS: &str = "s.last_event_at, s.last_counted_day";
const NO_STATE_COLUMNS: &str = "NULL::timestamp, NULL::date";
const STATE_JOIN: &str = "
LEFT JOIN challenge_event_handler_goal_state s
       ON s.user_id = p.user_id AND s.goal_id = p.goal_id AND s.row_created_at = p.created_at";
const LOCK: &str = "ORDER BY p.user_id, p.goal_id FOR UPDATE OF p";

/// The columns the rules decide; nothing else of the row is written. A row
/// is found by the `ctid` the read returned (a TID scan, not a second index
/// lookup) and changed only if it is still that version (same key, same
/// `xmin`); the positions (1-based) of the rows written come back, so the
/// others can be read again. `ctid` and `xmin` travel in their binary
/// forms ([`tid`]), as the read returned them.
const WRITE_ROWS_SQL: &str = "
UPDATE user_goal_progress AS p SET
    progress = u.progress, status = u.status, completed_at = u.completed_at,
    claimed_at = u.claimed_at, updated_at = u.updated_at{, expires_at = u.expires_at}
    {, baseline_value = u.baseline_value}
FROM UNNEST($1::tid[], $2::xid[], $3::varchar[], $4::varchar[], $5::int4[], $6::varchar[],
            $7::timestamp[], $8::timestamp[], $9::timestamp[], $10::timestamp[], $11::int4[])
     WITH ORDINALITY
     AS u(tid, xmin, user_id, goal_id, progress, status, completed_at, claimed_at, updated_at,
          expires_at, baseline_value, ord)
WHERE p.ctid = u.tid AND p.xmin = u.xmin
  AND p.user_id = u.user_id AND p.goal_id = u.goal_id
RETURNING u.ord::int4";

const WRITE_STATES_SQL: &str = "
INSERT INTO challenge_event_handler_goal_state AS s
    (user_id, goal_id, row_created_at, last_event_at, last_counted_day)
SELECT * FROM UNNEST($1::varchar[], $2::varchar[], $3::timestamp[], $4::timestamp[], $5::date[])
ON CONFLICT (user_id, goal_id) DO UPDATE SET
    row_created_at = EXCLUDED.row_created_at, last_event_at = EXCLUDED.last_event_at,
    last_counted_day = EXCLUDED.last_counted_day";

/// Which of the M5 columns `user_goal_progress` has. A table the challenge
/// service made before M5 may lack `baseline_value` (its migration 002 adds
/// it) or `expires_at`: the type rules need neither, and the handler never
/// adds them (docs/DESIGN.md, "Who owns the table").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    pub expires_at: bool,
    pub baseline_value: bool,
}

/// The statements that name the M5 columns, for the table as it is.
struct Statements {
    read_rows: String,
    insert_rows: String,
    /// A batch's rows, by `[lock][state]` ([`Read`]).
    read_batch: [[String; 2]; 2],
    write_rows: String,
}

impl Statements {
    fn for_table(columns: Columns) -> Statements {
        // `{name}`: the column or a typed NULL; `{, name}`, `{, u.name}` and
        // `{, name = u.name}`: the list item, or nothing.
        let fill = |sql: &str| {
            let mut sql = sql.to_owned();
            for (name, present, null) in [
                ("expires_at", columns.expires_at, "NULL::timestamp"),
                ("baseline_value", columns.baseline_value, "NULL::int4"),
            ] {
                let pick = |text: String| if present { text } else { String::new() };
                sql = sql
                    .replace(
                        &format!("{{{name}}}"),
                        &if present {
                            format!("p.{name}")
                        } else {
                            null.to_owned()
                        },
                    )
                    .replace(&format!("{{, {name}}}"), &pick(format!(", {name}")))
                    .replace(&format!("{{, u.{name}}}"), &pick(format!(", u.{name}")))
                    .replace(
                        &format!("{{, {name} = u.{name}}}"),
                        &pick(format!(", {name} = u.{name}")),
                    );
            }
            sql
        };
        Statements {
            read_rows: fill(READ_ROWS_SQL),
            insert_rows: fill(INSERT_ROWS_SQL),
            read_batch: [false, true].map(|lock| {
                [false, true].map(|state| {
                    fill(READ_BATCH_SQL)
                        .replace("{lock}", if lock { LOCK } else { "" })
                        .replace("{state_join}", if state { STATE_JOIN } else { "" })
                        .replace(
                            "{state}",
                            if state {
                                STATE_COLUMNS
                            } else {
                                NO_STATE_COLUMNS
                            },
                        )
                })
            }),
            write_rows: fill(WRITE_ROWS_SQL),
        }
    }
}

/// How long a connection given back to the pool has to answer a round trip
/// before it is closed instead of pooled again.
const RELEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `conn`, given back to the pool, answers a round trip within
/// `limit`; if not it is closed, not pooled. sqlx sends one itself before
/// pooling a connection again, without a limit: on a connection abandoned
/// at FLUSH_TIMEOUT because it went silent that waits until the kernel gives
/// up on it (a quarter of an hour, or never), and holds one of
/// DB_MAX_CONNECTIONS all that time (tests/db_faults.rs, with one
/// connection, never recovered). Closing sends a few bytes and drops the
/// socket, which does not wait for the peer.
async fn answers_within(conn: &mut PgConnection, limit: std::time::Duration) -> sqlx::Result<bool> {
    Ok(matches!(
        tokio::time::timeout(limit, sqlx::Connection::ping(conn)).await,
        Ok(Ok(()))
    ))
}

/// Event ids per ledger statement.
const LEDGER_CHUNK: usize = 10_000;

pub struct PgStore {
    pool: PgPool,
    batch_size: usize,
    cluster: ClusterSettings,
    /// Boxed: the statements are many strings, read once per flush.
    statements: std::sync::OnceLock<Box<(Columns, Statements)>>,
}

impl PgStore {
    /// A lazily connecting pool: building the service never waits for the database.
    /// Sessions run in UTC, so `now()` and the `TIMESTAMP` columns agree,
    /// and at READ COMMITTED whatever the database's default: a flush that
    /// waited for the cluster lock must see what committed meanwhile (a
    /// ledger rotation, a tombstone, another flush's ids), which a snapshot
    /// taken before the wait (REPEATABLE READ) would not.
    pub fn connect_lazy(
        options: PgConnectOptions,
        max_connections: u32,
        batch_size: usize,
    ) -> Self {
        let options = options.options([
            ("timezone", "UTC"),
            // (A space in a startup option's value is escaped.)
            ("default_transaction_isolation", "read\\ committed"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_release(|conn, _| Box::pin(answers_within(conn, RELEASE_CHECK)))
            .connect_lazy_with(options);
        PgStore {
            pool,
            batch_size: batch_size.max(1),
            cluster: ClusterSettings::default(),
            statements: std::sync::OnceLock::new(),
        }
    }

    /// The same store, with PostgreSQL ending what the service abandons
    /// after FLUSH_TIMEOUT (`limit`; every use of the database in the
    /// service is abandoned after as long): every session of the pool
    /// cancels a statement that runs that long (`statement_timeout`) and
    /// ends a transaction left idle that long
    /// (`idle_in_transaction_session_timeout`), so an abandoned
    /// transaction's locks go, the watermark row's among them.
    pub fn with_flush_timeout(self, limit: std::time::Duration) -> Self {
        let ms = limit.as_millis().max(1);
        let options = (*self.pool.connect_options()).clone().options([
            ("statement_timeout", ms),
            ("idle_in_transaction_session_timeout", ms),
        ]);
        self.pool.set_connect_options(options);
        self
    }

    /// The same store, keeping the cluster's guarantees as `cluster` says.
    pub fn with_cluster(mut self, cluster: ClusterSettings) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn cluster(&self) -> &ClusterSettings {
        &self.cluster
    }

    /// One round of the cluster's upkeep ([`cluster::upkeep`]).
    pub async fn upkeep(&self, wait: std::time::Duration) -> Result<cluster::Upkeep> {
        cluster::upkeep(&self.pool, &self.cluster, wait).await
    }

    /// The M5 columns the table has, read once (the table exists by then).
    pub async fn columns(&self) -> Result<Columns> {
        Ok(self.statements().await?.0)
    }

    async fn statements(&self) -> Result<&(Columns, Statements)> {
        if let Some(known) = self.statements.get() {
            return Ok(known.as_ref());
        }
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'user_goal_progress'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(pg)?;
        let columns = Columns {
            expires_at: names.iter().any(|n| n == "expires_at"),
            baseline_value: names.iter().any(|n| n == "baseline_value"),
        };
        Ok(self
            .statements
            .get_or_init(|| Box::new((columns, Statements::for_table(columns))))
            .as_ref())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The rows of `keys` (sorted) as `READ_BATCH_SQL` reads them on `conn`
    /// (the flush's transaction, or a connection of its own when unlocked),
    /// a statement per DB_BATCH_SIZE keys; each with its key's position.
    async fn read_batch(
        &self,
        conn: &mut PgConnection,
        keys: &[&Key],
        read: Read,
    ) -> Result<Vec<(usize, Locked)>> {
        let mut rows = Vec::with_capacity(keys.len());
        let sql =
            &self.statements().await?.1.read_batch[usize::from(read.lock)][usize::from(read.state)];
        for (n, chunk) in keys.chunks(self.batch_size).enumerate() {
            let users: Vec<&str> = chunk.iter().map(|k| k.user_id.as_str()).collect();
            let goals: Vec<&str> = chunk.iter().map(|k| k.goal_id.as_str()).collect();
            let found = sqlx::query(sql)
                .bind(users)
                .bind(goals)
                .fetch_all(&mut *conn)
                .await
                .map_err(pg)?;
            let start = n * self.batch_size;
            for r in &found {
                let (at, row) = locked(r, chunk)?;
                rows.push((start + at, row));
            }
        }
        Ok(rows)
    }
}

/// The index in a chunk of the position `WITH ORDINALITY` numbered (from 1).
fn index_of(ord: i32) -> Option<usize> {
    usize::try_from(ord).ok()?.checked_sub(1)
}

/// A row as `READ_BATCH_SQL` returns it: the [`RowColumns`] both dialects
/// read, then the key's position in `keys` (1-based) and the version;
/// returned with that position (0-based).
fn locked(r: &PgRow, keys: &[&Key]) -> Result<(usize, Locked)> {
    /// The first column after the [`RowColumns`] (there are 11 of them).
    const ORD: usize = 11;
    let ord: i32 = r.try_get(ORD).map_err(pg)?;
    let at = index_of(ord)
        .filter(|&i| i < keys.len())
        .ok_or_else(|| StoreError::Rejected(format!("internal: a row read for key {ord}")))?;
    let columns = columns_of(r, keys[at])?;
    let version = Version {
        ctid: r.try_get(ORD + 1).map_err(pg)?,
        xmin: r.try_get(ORD + 2).map_err(pg)?,
    };
    Ok((at, Locked::of(keys[at], columns, Some(version))?))
}

/// The [`RowColumns`] of the row of `key` (a row holding a time chrono
/// cannot is an error naming it: [`sql::decode_guarded`]).
fn columns_of(r: &PgRow, key: &Key) -> Result<RowColumns> {
    let row = || format!("user_goal_progress row {}/{}", key.user_id, key.goal_id);
    sql::decode_guarded(row, || RowColumns::from_row(r), pg)
}

impl Dialect for PgStore {
    /// One statement's worth of keys (`DB_BATCH_SIZE`): the next chunk's
    /// read runs beside this chunk's write ([`Self::read_rows_ahead`]).
    fn chunk_keys(&self) -> usize {
        self.batch_size.min(super::flush::CHUNK_KEYS)
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

    async fn delete_users(
        &self,
        tx: &mut Tx<Self>,
        deletions: &[PendingDeletion],
        instance_id: &str,
    ) -> Result<Vec<Deleted>> {
        if deletions.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<&str> = deletions
            .iter()
            .map(|d| d.deletion.user_id.as_str())
            .collect();
        let namespaces: Vec<&str> = deletions
            .iter()
            .map(|d| d.deletion.namespace.as_str())
            .collect();
        let gone: Vec<(String, String)> = sqlx::query_as(DELETE_SQL)
            .bind(&users)
            .bind(namespaces)
            .fetch_all(&mut **tx)
            .await
            .map_err(pg)?;
        sqlx::query(DELETE_STATE_SQL)
            .bind(&users)
            .execute(&mut **tx)
            .await
            .map_err(pg)?;
        let stones: Vec<(&str, &str, i64)> = deletions
            .iter()
            .map(|d| {
                let d = &d.deletion;
                (d.namespace.as_str(), d.user_id.as_str(), d.event_time_ms)
            })
            .collect();
        cluster::write_tombstones(tx, instance_id, &stones).await?;
        Ok(Deleted::count(deletions, &gone))
    }

    async fn lock_cluster(&self, tx: &mut Tx<Self>, exclusive: bool) -> Result<()> {
        cluster::lock(tx, exclusive).await
    }

    async fn claim_events(&self, tx: &mut Tx<Self>, events: &[Mark]) -> Result<Vec<Mark>> {
        if self.cluster.ledger_window.is_none() {
            return Ok(Vec::new());
        }
        cluster::claim(tx, events, LEDGER_CHUNK).await
    }

    async fn tombstones(
        &self,
        tx: &mut Tx<Self>,
        users: &[(&str, &str)],
        instance_id: &str,
    ) -> Result<HashMap<(String, String), Tombstone>> {
        cluster::tombstones(
            tx,
            users,
            instance_id,
            self.cluster.tombstone_skew,
            self.batch_size.max(LEDGER_CHUNK),
        )
        .await
    }

    async fn users_with_rows(&self, tx: &mut Tx<Self>, users: &[&str]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in users.chunks(self.batch_size) {
            let rows: Vec<String> = sqlx::query_scalar(USERS_WITH_ROWS_SQL)
                .bind(chunk)
                .fetch_all(&mut **tx)
                .await
                .map_err(pg)?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn insert_rows(&self, tx: &mut Tx<Self>, rows: &[NewRow<'_>]) -> Result<()> {
        for chunk in rows.chunks(self.batch_size) {
            let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
            let (mut at, mut expires) = (Vec::new(), Vec::new());
            for r in chunk {
                cols.0.push(&r.key.user_id);
                cols.1.push(&r.key.goal_id);
                cols.2.push(r.challenge_id);
                cols.3.push(r.namespace);
                at.push(naive_micros(r.row.updated_at));
                expires.push(r.row.expires_at.map(naive_micros));
            }
            sqlx::query(&self.statements().await?.1.insert_rows)
                .bind(cols.0)
                .bind(cols.1)
                .bind(cols.2)
                .bind(cols.3)
                .bind(at)
                .bind(expires)
                .execute(&mut **tx)
                .await
                .map_err(pg)?;
        }
        Ok(())
    }

    async fn read_rows(
        &self,
        tx: &mut Tx<Self>,
        keys: &[&Key],
        read: Read,
    ) -> Result<Vec<(usize, Locked)>> {
        self.read_batch(tx, keys, read).await
    }

    /// On a connection of the pool besides the flush's: an idle one, or a
    /// new one while the pool is below DB_MAX_CONNECTIONS; none when every
    /// connection is in use (the flush then reads inside its transaction).
    /// The pool's sessions cancel a statement after FLUSH_TIMEOUT.
    async fn read_rows_ahead(
        &self,
        keys: &[&Key],
        read: Read,
    ) -> Option<Result<Vec<(usize, Locked)>>> {
        let mut conn = match self.pool.try_acquire() {
            Some(idle) => idle,
            None if self.pool.size() < self.pool.options().get_max_connections() => {
                self.pool.acquire().await.ok()?
            }
            None => return None,
        };
        let read = Read {
            lock: false,
            ..read
        };
        Some(self.read_batch(&mut conn, keys, read).await)
    }

    async fn write_rows(&self, tx: &mut Tx<Self>, rows: &[RowWrite<'_>]) -> Result<Vec<usize>> {
        let mut changed = Vec::new();
        for (n, chunk) in rows.chunks(self.batch_size).enumerate() {
            let len = chunk.len();
            let (mut tids, mut xmins, mut users, mut goals) = (
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
            );
            let (mut progress, mut status, mut completed, mut claimed) = (
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
            );
            let (mut updated, mut expires, mut baseline) = (
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
            );
            for RowWrite { key, row, version } in chunk {
                let version = version.ok_or_else(|| {
                    StoreError::Rejected(format!(
                        "internal: no row read for {}/{}",
                        key.user_id, key.goal_id
                    ))
                })?;
                tids.push(version.ctid);
                xmins.push(version.xmin);
                users.push(key.user_id.as_str());
                goals.push(key.goal_id.as_str());
                progress.push(row.progress);
                status.push(row.status.as_str());
                completed.push(row.completed_at.map(naive_micros));
                claimed.push(row.claimed_at.map(naive_micros));
                updated.push(naive_micros(row.updated_at));
                expires.push(row.expires_at.map(naive_micros));
                baseline.push(row.baseline);
            }
            let written: Vec<i32> = sqlx::query_scalar(&self.statements().await?.1.write_rows)
                .bind(tids)
                .bind(xmins)
                .bind(users)
                .bind(goals)
                .bind(progress)
                .bind(status)
                .bind(completed)
                .bind(claimed)
                .bind(updated)
                .bind(expires)
                .bind(baseline)
                .fetch_all(&mut **tx)
                .await
                .map_err(pg)?;
            if written.len() < chunk.len() {
                let mut done = vec![false; chunk.len()];
                for i in written.into_iter().filter_map(index_of) {
                    if let Some(slot) = done.get_mut(i) {
                        *slot = true;
                    }
                }
                let start = n * self.batch_size;
                changed.extend(
                    done.iter()
                        .enumerate()
                        .filter(|(_, done)| !**done)
                        .map(|(i, _)| start + i),
                );
            }
        }
        Ok(changed)
    }

    async fn write_states(&self, tx: &mut Tx<Self>, states: &[StateWrite<'_>]) -> Result<()> {
        for chunk in states.chunks(self.batch_size) {
            let (mut users, mut goals, mut created, mut last, mut days) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for s in chunk {
                users.push(s.key.user_id.as_str());
                goals.push(s.key.goal_id.as_str());
                created.push(naive_micros(s.created_at));
                last.push(s.state.last_event_at.map(naive_micros));
                days.push(s.state.last_counted_day.map(date_of_day));
            }
            sqlx::query(WRITE_STATES_SQL)
                .bind(users)
                .bind(goals)
                .bind(created)
                .bind(last)
                .bind(days)
                .execute(&mut **tx)
                .await
                .map_err(pg)?;
        }
        Ok(())
    }
}

impl PgStore {
    /// A user's rows (one goal's, with `goal_id`), by goal id.
    pub(super) async fn user_progress(
        &self,
        user_id: &str,
        goal_id: Option<&str>,
    ) -> Result<Vec<ProgressRow>> {
        let read_rows = &self.statements().await?.1.read_rows;
        sql::user_progress(self, read_rows, user_id, goal_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinality_positions_count_from_one() {
        assert_eq!(index_of(1), Some(0));
        assert_eq!(index_of(1000), Some(999));
        assert_eq!(index_of(0), None);
        assert_eq!(index_of(-3), None);
    }

    #[test]
    fn the_golang_migrate_lock_id_is_crc32_of_schema_table_and_database_times_the_salt() {
        // Computed independently (Python: zlib.crc32(b"public\0schema_migrations\0challenge_db")
        // = 929549386, times 1486364155 mod 2^32).
        assert_eq!(
            golang_migrate_lock_id("challenge_db", "public", "schema_migrations"),
            3_503_926_926
        );
    }
}
