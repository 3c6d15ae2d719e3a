//! What the two SQL backends share, written once over sqlx's `Database`:
//! this instance's lease (a new epoch), the fenced move of its watermark
//! inside a flush's transaction, the commit, and the reads of the watermark
//! and of a player's rows. Each backend ([`super::postgres`],
//! [`super::sqlite`]) supplies only its statements ([`Statements`]) and how
//! its errors read ([`Backend::error`]).

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};

use super::{Lease, ProgressRow, Result, StoreError, Watermark};

/// A backend's statements for the shared operations (`$n` or `?n`
/// placeholders: instance id, epoch, sequence).
pub(super) struct Statements {
    /// A new epoch for an instance id (made on first use): `(epoch, applied_seq)`.
    pub lease: &'static str,
    /// The watermark raised to the sequence where the epoch still matches,
    /// returning the epoch (no row: fenced).
    pub move_watermark: &'static str,
    /// `(epoch, applied_seq)` of an instance id.
    pub read_watermark: &'static str,
}

/// A SQL backend: its pool, its statements, and its errors.
pub(super) trait Backend {
    type Db: Database;
    fn pool(&self) -> &Pool<Self::Db>;
    fn statements(&self) -> &'static Statements;
    /// An error of this database as the store reports it.
    fn error(e: sqlx::Error) -> StoreError;
}

/// A new epoch for `instance_id`: every older holder of it is fenced.
pub(super) async fn lease<B: Backend>(backend: &B, instance_id: &str) -> Result<Lease>
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    (i64, i64): for<'r> FromRow<'r, <B::Db as Database>::Row>,
{
    let (epoch, applied_seq): (i64, i64) = sqlx::query_as(backend.statements().lease)
        .bind(instance_id)
        .fetch_one(backend.pool())
        .await
        .map_err(B::error)?;
    Ok(Lease {
        instance_id: instance_id.to_owned(),
        epoch,
        applied_seq: applied_seq.max(0) as u64,
    })
}

/// What moving the watermark came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    Yes,
    /// The lease's epoch is no longer the instance's.
    Fenced,
    /// The watermark is past the sequence number the batch follows: a
    /// flush of this instance abandoned earlier (its COMMIT in flight)
    /// committed part of this batch after all.
    Ahead(u64),
}

/// Raises the watermark from at most `after` (the sequence number the
/// batch's records follow) to `upto`, in the flush's transaction; never
/// from above `after`, which would write the records in between twice.
pub(super) async fn move_watermark<B: Backend>(
    backend: &B,
    tx: &mut Transaction<'static, B::Db>,
    lease: &Lease,
    after: u64,
    upto: u64,
) -> Result<Moved>
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    i64: for<'q> Encode<'q, B::Db> + Type<B::Db>,
    (i64,): for<'r> FromRow<'r, <B::Db as Database>::Row>,
    (i64, i64): for<'r> FromRow<'r, <B::Db as Database>::Row>,
{
    let statements = backend.statements();
    let moved: Option<(i64,)> = sqlx::query_as(statements.move_watermark)
        .bind(lease.instance_id.as_str())
        .bind(lease.epoch)
        .bind(upto as i64)
        .bind(after as i64)
        .fetch_optional(&mut **tx)
        .await
        .map_err(B::error)?;
    if moved.is_some() {
        return Ok(Moved::Yes);
    }
    // Not moved: fenced, or the watermark is past `after` (its row is
    // locked by this transaction's UPDATE attempt either way).
    let now: Option<(i64, i64)> = sqlx::query_as(statements.read_watermark)
        .bind(lease.instance_id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(B::error)?;
    Ok(match now {
        Some((epoch, applied)) if epoch == lease.epoch => Moved::Ahead(applied.max(0) as u64),
        _ => Moved::Fenced,
    })
}

/// The watermark of `instance_id`, if it ever took a lease.
pub(super) async fn watermark<B: Backend>(
    backend: &B,
    instance_id: &str,
) -> Result<Option<Watermark>>
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    (i64, i64): for<'r> FromRow<'r, <B::Db as Database>::Row>,
{
    let row: Option<(i64, i64)> = sqlx::query_as(backend.statements().read_watermark)
        .bind(instance_id)
        .fetch_optional(backend.pool())
        .await
        .map_err(B::error)?;
    Ok(row.map(Watermark::from))
}

/// A row's columns as `decode` reads them. sqlx panics, instead of
/// returning an error, on a PostgreSQL time that chrono cannot hold
/// (`infinity`, `-infinity`, years past 262142): such a row, which no path
/// of the challenge service or of the handler writes, becomes an error
/// naming it (`row`), so a flush fails, is retried and says what to mend.
pub(super) fn decode_guarded<T>(
    row: impl FnOnce() -> String,
    decode: impl FnOnce() -> std::result::Result<T, sqlx::Error>,
    error: fn(sqlx::Error) -> StoreError,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(decoded) => decoded.map_err(error),
        Err(_) => Err(StoreError::Rejected(format!(
            "{} holds a time the handler cannot read (infinity, or a year past 262142, in \
             completed_at, claimed_at, updated_at, expires_at, assigned_at or created_at): set \
             it to a real time, or NULL where the column allows it",
            row()
        ))),
    }
}

/// A player's rows (one goal's with `goal_id`) by `read_rows`, whose
/// placeholders are the user id and the goal id or NULL.
pub(super) async fn user_progress<B: Backend>(
    backend: &B,
    read_rows: &str,
    user_id: &str,
    goal_id: Option<&str>,
) -> Result<Vec<ProgressRow>>
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db> + Type<B::Db>,
    ProgressRow: for<'r> FromRow<'r, <B::Db as Database>::Row>,
{
    let rows = sqlx::query(read_rows)
        .bind(user_id)
        .bind(goal_id)
        .fetch_all(backend.pool())
        .await
        .map_err(B::error)?;
    let which = || format!("a user_goal_progress row of user {user_id}");
    rows.iter()
        .map(|r| decode_guarded(which, || ProgressRow::from_row(r), B::error))
        .collect()
}
