//! PostgreSQL's errors as the store reports them.

use crate::store::StoreError;

/// PostgreSQL's errors as the store's: a statement cancelled (57014, most
/// often FLUSH_TIMEOUT's `statement_timeout`) is `Cancelled`; what waiting
/// can fix is `Unavailable` (the connection, the server starting or shutting
/// down, resources, a serialization failure or deadlock); everything else
/// needs an operator.
pub(crate) fn pg(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("57014") {
            return StoreError::Cancelled(e.to_string());
        }
    }
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: shutdown, cannot connect now;
        // 25P03: a session ended idle in a transaction (its
        // idle_in_transaction_session_timeout); 53: insufficient resources;
        // 40: serialization failure / deadlock.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "25P03"
                || code.starts_with("53")
                || code.starts_with("40")
        }),
        _ => false,
    };
    let text = with_detail(&e);
    if transient {
        StoreError::Unavailable(text)
    } else {
        StoreError::Rejected(text)
    }
}

/// The error's message and, where PostgreSQL gave one, its DETAIL: for a
/// constraint the flush broke, the row ("Failing row contains (…)") that
/// an operator has to look at.
fn with_detail(e: &sqlx::Error) -> String {
    let detail = match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.detail()),
        _ => None,
    };
    match detail {
        Some(detail) => format!("{e} ({detail})"),
        None => e.to_string(),
    }
}
