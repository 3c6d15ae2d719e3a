//! What the replicas of one deployment share on PostgreSQL, so that its
//! guarantees hold for the cluster and not just per process
//! (docs/DESIGN.md, "Several replicas"):
//!
//! - **The cluster lock**, one advisory lock. Every flush takes it shared as
//!   the first thing in its transaction; a flush that applies GDPR deletions,
//!   and the ledger's rotation, take it exclusive. So a flush that started
//!   after a deletion committed sees its tombstone, and a flush that started
//!   after a rotation committed sees every id recorded before it. Being the
//!   first lock of every transaction that takes it, it cannot deadlock.
//! - **The ledger** of applied event ids: tables of 128-bit marks (the xxh3
//!   hash of the id, as the WAL's dedup uses), written in the flush's
//!   transaction. An id already there was applied by another flush (another
//!   replica, or an earlier delivery to this one): the flush leaves its
//!   records out. Two flushes inserting one id at once: the unique index
//!   makes the second wait for the first and then see it. Ids are kept for
//!   `LEDGER_WINDOW`: one table per quarter of the window; the newest takes
//!   new ids; a table is dropped (no row-by-row delete) once everything in
//!   it is older than the window.
//! - **Tombstones** of GDPR deletions: (namespace, user, replica, time),
//!   written with the DELETE. Every flush drops the pending updates of a user
//!   another replica deleted, when they are not later than the deletion's
//!   time plus `TOMBSTONE_SKEW` (a deleted account produces no new events:
//!   dropping a little more is the safe side). Kept for `TOMBSTONE_RETENTION`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::error::pg;
use crate::store::flush::Tombstone;
use crate::store::{Result, StoreError};
use crate::wal::dedup::Mark;

/// The cluster lock's advisory key ("CEHCLUST").
pub const CLUSTER_LOCK: i64 = 0x4345_4843_4c55_5354;

/// Prefix of the ledger's tables; the suffix is when the table began
/// (Unix seconds, the database's clock).
const LEDGER_TABLE_PREFIX: &str = "challenge_event_handler_events_";

/// How the cluster's guarantees are kept (settings `LEDGER`,
/// `LEDGER_WINDOW`, `TOMBSTONE_SKEW`, `TOMBSTONE_RETENTION`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// How long applied event ids are remembered; None: no ledger.
    pub ledger_window: Option<Duration>,
    pub tombstone_skew: Duration,
    pub tombstone_retention: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            ledger_window: Some(Duration::from_secs(3600)),
            tombstone_skew: Duration::from_secs(300),
            tombstone_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Takes the cluster lock for the rest of `tx`.
pub async fn lock(tx: &mut Transaction<'static, Postgres>, exclusive: bool) -> Result<()> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock($1)"
    } else {
        "SELECT pg_advisory_xact_lock_shared($1)"
    };
    sqlx::query(sql)
        .bind(CLUSTER_LOCK)
        .execute(&mut **tx)
        .await
        .map_err(pg)?;
    Ok(())
}

/// The ledger's tables, newest (the one new ids go to) first; None when its
/// state row is gone or lists none.
async fn recorded_tables<'c, E>(db: E) -> Result<Option<Vec<String>>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let tables: Option<Vec<String>> =
        sqlx::query_scalar("SELECT tables FROM challenge_event_handler_ledger WHERE id = 1")
            .fetch_optional(db)
            .await
            .map_err(pg)?;
    Ok(tables.filter(|t| !t.is_empty()))
}

/// The ledger's tables, newest (the one new ids go to) first.
async fn ledger_tables<'c, E>(db: E) -> Result<Vec<String>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    match recorded_tables(db).await? {
        Some(tables) => Ok(tables),
        None => Err(StoreError::Rejected(
            "the ledger of applied events (challenge_event_handler_ledger) lists no table; \
             every replica's upkeep restores it within 15 s (or a restart, unless NO_MIGRATE is set)"
                .into(),
        )),
    }
}

/// A ledger table's name, checked before it goes into a statement (it comes
/// from the database, but it is spliced into SQL).
fn checked_table(name: &str) -> Result<&str> {
    let suffix = name.strip_prefix(LEDGER_TABLE_PREFIX).unwrap_or("");
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StoreError::Rejected(format!(
            "challenge_event_handler_ledger lists {name:?}, which is not a ledger table"
        )));
    }
    Ok(name)
}

/// Takes the cluster lock exclusively for the rest of `tx`, waiting at most
/// `wait` (None: as long as it takes). False when it was not free within
/// `wait`: flushes hold it (a long one, or a deletion); the upkeep tries
/// again next round.
async fn lock_within(
    tx: &mut Transaction<'static, Postgres>,
    wait: Option<Duration>,
) -> Result<bool> {
    if let Some(wait) = wait {
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = {}",
            wait.as_millis().max(1)
        ))
        .execute(&mut **tx)
        .await
        .map_err(pg)?;
    }
    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CLUSTER_LOCK)
        .execute(&mut **tx)
        .await;
    match locked {
        Ok(_) => Ok(true),
        // 55P03 lock_not_available
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(pg(e)),
    }
}

/// When a ledger table began (Unix seconds), from its name.
fn table_start(name: &str) -> Option<i64> {
    name.strip_prefix(LEDGER_TABLE_PREFIX)?.parse().ok()
}

/// Records `marks` as applied, inside the flush's transaction (the cluster
/// lock held). Returns those another flush recorded first: the batch must
/// leave their events out.
pub async fn claim(
    tx: &mut Transaction<'static, Postgres>,
    marks: &[Mark],
    chunk: usize,
) -> Result<Vec<Mark>> {
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let mut marks: Vec<Mark> = marks.to_vec();
    marks.sort_unstable();
    marks.dedup();
    let tables = ledger_tables(&mut **tx).await?;
    let newest = checked_table(&tables[0])?;
    let older: Vec<&str> = tables[1..]
        .iter()
        .map(|t| checked_table(t))
        .collect::<Result<_>>()?;
    // Ids recorded in an older table, then the rest into the newest (in
    // sorted order, so concurrent flushes wait on each other's ids in one order).
    let seen_sql = (!older.is_empty()).then(|| {
        let exists: Vec<String> = older
            .iter()
            .map(|t| format!("EXISTS (SELECT 1 FROM {t} o WHERE o.mark = m)"))
            .collect();
        format!(
            "SELECT m FROM UNNEST($1::uuid[]) AS m WHERE {}",
            exists.join(" OR ")
        )
    });
    let insert_sql = format!(
        "INSERT INTO {newest} (mark) SELECT m FROM UNNEST($1::uuid[]) AS m ORDER BY m \
         ON CONFLICT DO NOTHING RETURNING mark"
    );
    let mut taken = Vec::new();
    for part in marks.chunks(chunk.max(1)) {
        let ids: Vec<Uuid> = part.iter().map(|m| Uuid::from_u128(*m)).collect();
        let mut seen: Vec<Uuid> = match &seen_sql {
            Some(sql) => sqlx::query_scalar(sql)
                .bind(&ids)
                .fetch_all(&mut **tx)
                .await
                .map_err(pg)?,
            None => Vec::new(),
        };
        seen.sort_unstable();
        let fresh: Vec<Uuid> = ids
            .iter()
            .filter(|id| seen.binary_search(id).is_err())
            .copied()
            .collect();
        let mut inserted: Vec<Uuid> = sqlx::query_scalar(&insert_sql)
            .bind(&fresh)
            .fetch_all(&mut **tx)
            .await
            .map_err(pg)?;
        inserted.sort_unstable();
        taken.extend(
            ids.iter()
                .filter(|id| inserted.binary_search(id).is_err())
                .map(|id| id.as_u128()),
        );
    }
    Ok(taken)
}

/// Creates the ledger's state row if it has none (or lists no table), under
/// the cluster lock, adopting the ledger tables already in the schema
/// (newest first) and starting a first table only when there are none: a
/// state row deleted by hand does not make the cluster forget the ids it
/// applied. Runs at start-up, and from the upkeep when the row is gone.
/// Waits for the lock at most `wait` (None: as long as it takes). Returns
/// the tables adopted when it wrote the row; None when the row was there,
/// or the lock was not free within `wait`.
pub async fn create_ledger(pool: &PgPool, wait: Option<Duration>) -> Result<Option<Vec<String>>> {
    let mut tx = pool.begin().await.map_err(pg)?;
    if !lock_within(&mut tx, wait).await? {
        return Ok(None);
    }
    let exists: Option<Vec<String>> =
        sqlx::query_scalar("SELECT tables FROM challenge_event_handler_ledger WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg)?;
    if exists.is_some_and(|t| !t.is_empty()) {
        return Ok(None);
    }
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables
         WHERE schemaname = current_schema()
           AND tablename LIKE 'challenge\\_event\\_handler\\_events\\_%'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(pg)?;
    let mut adopted: Vec<String> = found
        .into_iter()
        .filter(|t| checked_table(t).is_ok())
        .collect();
    adopted.sort_by_key(|t| std::cmp::Reverse(table_start(t)));
    let tables = if adopted.is_empty() {
        vec![new_table(&mut tx).await?]
    } else {
        adopted.clone()
    };
    sqlx::query(
        "INSERT INTO challenge_event_handler_ledger (id, tables) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET tables = EXCLUDED.tables, updated_at = now()",
    )
    .bind(&tables)
    .execute(&mut *tx)
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Some(adopted))
}

/// A new ledger table named for the database's clock now.
async fn new_table(tx: &mut Transaction<'static, Postgres>) -> Result<String> {
    let now: i64 = sqlx::query_scalar("SELECT floor(extract(epoch FROM clock_timestamp()))::int8")
        .fetch_one(&mut **tx)
        .await
        .map_err(pg)?;
    let table = format!("{LEDGER_TABLE_PREFIX}{now}");
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (mark UUID PRIMARY KEY)"
    ))
    .execute(&mut **tx)
    .await
    .map_err(pg)?;
    Ok(table)
}

/// What a round of upkeep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// A new ledger table was started.
    pub rotated: bool,
    /// Ledger tables dropped, with the ids they held (PostgreSQL's estimate).
    pub dropped: Vec<(String, i64)>,
    /// The ledger's tables after this round, and the ids in them (estimates).
    pub tables: usize,
    pub ids: i64,
    /// Tombstones removed (older than the retention).
    pub tombstones_expired: u64,
    /// How long the rotation held the cluster lock (new table, drops, commit).
    pub rotation: Option<Duration>,
    /// The ledger's state row was missing and this round wrote it again,
    /// with the ledger tables it found in the schema (empty: none, a new
    /// one was started).
    pub restored: Option<Vec<String>>,
}

/// Upkeep, run every few seconds by every replica (idempotent): starts a
/// new ledger table every quarter of `window`, drops those whose ids are
/// all older than `window`, and removes expired tombstones. Does nothing
/// when another replica holds the cluster lock for longer than `wait`.
pub async fn upkeep(pool: &PgPool, settings: &ClusterSettings, wait: Duration) -> Result<Upkeep> {
    let mut done = Upkeep::default();
    let expired = sqlx::query(
        "DELETE FROM challenge_event_handler_tombstones
         WHERE applied_at < now() - make_interval(secs => $1)",
    )
    .bind(settings.tombstone_retention.as_secs_f64())
    .execute(pool)
    .await
    .map_err(pg)?;
    done.tombstones_expired = expired.rows_affected();
    let Some(window) = settings.ledger_window else {
        return Ok(done);
    };
    let window_s = window.as_secs().max(4) as i64;
    // Read without a transaction: most rounds change nothing.
    let now: i64 = sqlx::query_scalar("SELECT floor(extract(epoch FROM clock_timestamp()))::int8")
        .fetch_one(pool)
        .await
        .map_err(pg)?;
    let tables = match recorded_tables(pool).await? {
        Some(tables) => tables,
        None => {
            // The state row was deleted (by hand: nothing here deletes it);
            // flushes fail until it is back.
            done.restored = create_ledger(pool, Some(wait)).await?;
            match recorded_tables(pool).await? {
                Some(tables) => tables,
                // The lock was busy: the next round.
                None => return Ok(done),
            }
        }
    };
    let newest_start = table_start(&tables[0]).unwrap_or(now);
    // Table i took ids until table i-1 began: it may go once that is older
    // than the window. The newest always stays.
    let stale: Vec<&String> = tables
        .windows(2)
        .filter(|pair| table_start(&pair[0]).is_some_and(|next| next < now - window_s))
        .map(|pair| &pair[1])
        .collect();
    let rotate = now - newest_start >= window_s / 4;
    if rotate || !stale.is_empty() {
        let mut tx = pool.begin().await.map_err(pg)?;
        if !lock_within(&mut tx, Some(wait)).await? {
            return Ok(done);
        }
        let locked_at = std::time::Instant::now();
        // Read again under the lock: another replica may have rotated.
        let tables = ledger_tables(&mut *tx).await?;
        let newest_start = table_start(&tables[0]).unwrap_or(now);
        let mut kept: Vec<String> = Vec::new();
        if now - newest_start >= window_s / 4 {
            kept.push(new_table(&mut tx).await?);
            done.rotated = true;
        }
        for (i, table) in tables.iter().enumerate() {
            let successor_start = if i == 0 {
                None
            } else {
                table_start(&tables[i - 1])
            };
            if successor_start.is_some_and(|next| next < now - window_s) {
                let name = checked_table(table)?;
                // PostgreSQL's statistics: counting would hold the lock for
                // seconds on a big table.
                let ids: i64 = sqlx::query_scalar(
                    "SELECT n_live_tup FROM pg_stat_user_tables
                     WHERE relname = $1 AND schemaname = current_schema()",
                )
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg)?
                .unwrap_or(0);
                sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                    .execute(&mut *tx)
                    .await
                    .map_err(pg)?;
                done.dropped.push((name.to_owned(), ids));
            } else {
                kept.push(table.clone());
            }
        }
        sqlx::query(
            "UPDATE challenge_event_handler_ledger SET tables = $1, updated_at = now() WHERE id = 1",
        )
        .bind(&kept)
        .execute(&mut *tx)
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        done.rotation = Some(locked_at.elapsed());
        done.tables = kept.len();
    } else {
        done.tables = tables.len();
    }
    done.ids = sqlx::query_scalar(
        "SELECT coalesce(sum(n_live_tup), 0)::int8 FROM pg_stat_user_tables
         WHERE relname LIKE 'challenge\\_event\\_handler\\_events\\_%'
           AND schemaname = current_schema()",
    )
    .fetch_one(pool)
    .await
    .map_err(pg)?;
    Ok(done)
}

/// Tombstones for GDPR deletions applied in this transaction.
pub async fn write_tombstones(
    tx: &mut Transaction<'static, Postgres>,
    instance_id: &str,
    deleted: &[(&str, &str, i64)],
) -> Result<()> {
    if deleted.is_empty() {
        return Ok(());
    }
    let namespaces: Vec<&str> = deleted.iter().map(|d| d.0).collect();
    let users: Vec<&str> = deleted.iter().map(|d| d.1).collect();
    let times: Vec<DateTime<Utc>> = deleted
        .iter()
        .map(|d| DateTime::from_timestamp_millis(d.2).unwrap_or_default())
        .collect();
    sqlx::query(
        "INSERT INTO challenge_event_handler_tombstones AS t
             (namespace, user_id, instance_id, deleted_at)
         SELECT d.namespace, d.user_id, $3, max(d.deleted_at)
         FROM UNNEST($1::varchar[], $2::varchar[], $4::timestamptz[])
              AS d(namespace, user_id, deleted_at)
         GROUP BY d.namespace, d.user_id
         ON CONFLICT (namespace, user_id, instance_id) DO UPDATE
         SET deleted_at = GREATEST(t.deleted_at, EXCLUDED.deleted_at), applied_at = now()",
    )
    .bind(namespaces)
    .bind(users)
    .bind(instance_id)
    .bind(times)
    .execute(&mut **tx)
    .await
    .map_err(pg)?;
    Ok(())
}

/// The newest tombstone of each of `users` (namespace, user) left by a
/// replica other than `instance_id` (this replica's own deletions are
/// ordered exactly by its WAL).
pub async fn tombstones(
    tx: &mut Transaction<'static, Postgres>,
    users: &[(&str, &str)],
    instance_id: &str,
    skew: Duration,
    chunk: usize,
) -> Result<HashMap<(String, String), Tombstone>> {
    let skew_ms = i64::try_from(skew.as_millis()).unwrap_or(i64::MAX);
    let mut found = HashMap::new();
    for part in users.chunks(chunk.max(1)) {
        let namespaces: Vec<&str> = part.iter().map(|u| u.0).collect();
        let ids: Vec<&str> = part.iter().map(|u| u.1).collect();
        let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT DISTINCT ON (t.namespace, t.user_id)
                    t.namespace, t.user_id, t.instance_id, t.deleted_at
             FROM challenge_event_handler_tombstones t
             JOIN UNNEST($1::varchar[], $2::varchar[]) AS u(namespace, user_id)
               ON t.namespace = u.namespace AND t.user_id = u.user_id
             WHERE t.instance_id <> $3
             ORDER BY t.namespace, t.user_id, t.deleted_at DESC",
        )
        .bind(namespaces)
        .bind(ids)
        .bind(instance_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(pg)?;
        for (namespace, user, by, at) in rows {
            found.insert(
                (namespace, user),
                Tombstone {
                    cutoff_ms: at.timestamp_millis().saturating_add(skew_ms),
                    deleted_ms: at.timestamp_millis(),
                    instance_id: by,
                },
            );
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ledger_tables_are_spliced_into_statements() {
        assert!(checked_table("challenge_event_handler_events_1764547200").is_ok());
        for bad in [
            "challenge_event_handler_events_",
            "challenge_event_handler_events_1; DROP TABLE x",
            "user_goal_progress",
        ] {
            assert!(checked_table(bad).is_err(), "{bad}");
        }
        assert_eq!(
            table_start("challenge_event_handler_events_1764547200"),
            Some(1_764_547_200)
        );
    }
}
