//! PostgreSQL's schema work: the handler's own tables (created under an
//! advisory lock, so replicas starting at once do not race), who owns
//! `user_goal_progress`, and — only where the handler owns it — that table
//! created as the challenge service's migrations would, with golang-migrate's
//! version recorded.

use super::*;

/// The handler's own tables (idempotent DDL).
const HANDLER_TABLES_SQL: &str = include_str!("../../../migrations/postgres/handler_tables.sql");
/// `user_goal_progress` as the challenge service's migrations 001 + 002 make it.
const USER_GOAL_PROGRESS_SQL: &str =
    include_str!("../../../migrations/postgres/user_goal_progress.sql");
/// The schema version those two migrations leave in golang-migrate's table.
const SERVICE_SCHEMA_VERSION: i64 = 2;
/// Serializes the DDL of replicas starting at once (CREATE TABLE IF NOT
/// EXISTS can fail when two sessions race). An arbitrary constant.
const HANDLER_DDL_LOCK: i64 = 0x0063_6568_5f64_646c; // "ceh_ddl"
const SETTING_SQL: &str = "SELECT value FROM challenge_event_handler_settings WHERE name = $1";
const SET_SETTING_SQL: &str = "
INSERT INTO challenge_event_handler_settings (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()";
/// Records a setting only where none is recorded yet.
const FIRST_SETTING_SQL: &str = "
INSERT INTO challenge_event_handler_settings (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING";
/// Whether a table exists in the schema the session resolves names in.
const TABLE_EXISTS_SQL: &str = "SELECT to_regclass($1) IS NOT NULL";
/// The columns an older build of this handler added to user_goal_progress.
const LEGACY_COLUMNS_SQL: &str = "
SELECT count(*) FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'user_goal_progress'
  AND column_name IN ('last_event_at', 'last_counted_day')";
/// Moves an older build's per-row state into the handler's own table (once).
const COPY_LEGACY_STATE_SQL: &str = "
INSERT INTO challenge_event_handler_goal_state
    (user_id, goal_id, row_created_at, last_event_at, last_counted_day)
SELECT user_id, goal_id, created_at, last_event_at, last_counted_day FROM user_goal_progress
WHERE last_event_at IS NOT NULL OR last_counted_day IS NOT NULL
ON CONFLICT (user_id, goal_id) DO NOTHING";

impl PgStore {
    /// The handler's own tables (with `migrate`), and who owns
    /// `user_goal_progress`: requested, recorded at an earlier start, or
    /// the challenge service's when its table exists; else wait for it.
    pub(in crate::store) async fn prepare(
        &self,
        requested: Option<TableOwner>,
        migrate: bool,
    ) -> Result<Prepared> {
        if migrate {
            self.create_handler_tables().await?;
        }
        // The ledger's state, with NO_MIGRATE too: a job that ran
        // handler_tables.sql made its table, not its first id table (the
        // ledger makes and drops those as it runs, with CREATE).
        if self.cluster.ledger_window.is_some() {
            if !migrate && !self.table_exists("challenge_event_handler_ledger").await? {
                return Err(StoreError::Rejected(
                    "challenge_event_handler_ledger does not exist and NO_MIGRATE is set: run \
                     migrations/postgres/handler_tables.sql (the job that makes the handler's \
                     tables), or, for a single replica, set NO_LEDGER"
                        .into(),
                ));
            }
            match cluster::create_ledger(&self.pool, None).await?.as_deref() {
                Some([]) => tracing::info!(
                    "the cluster's ledger of applied events started \
                     (challenge_event_handler_ledger)"
                ),
                Some(adopted) => tracing::warn!(
                    tables = adopted.len(),
                    "the ledger's state row (challenge_event_handler_ledger) was missing; \
                     rebuilt it from the ledger tables in the schema"
                ),
                None => {}
            }
        }
        let recorded = self
            .setting("table_owner")
            .await?
            .as_deref()
            .and_then(TableOwner::parse);
        let exists = self.table_exists("user_goal_progress").await?;
        let (owner, why) = match (requested, recorded) {
            (Some(owner), _) => (owner, format!("TABLE_OWNER={}", owner.as_str())),
            (None, Some(owner)) => (
                owner,
                format!(
                    "TABLE_OWNER is not set; the handler recorded \"{}\" at an earlier start",
                    owner.as_str()
                ),
            ),
            (None, None) if exists => (
                TableOwner::Service,
                "TABLE_OWNER is not set and user_goal_progress existed when the handler first \
                 started: the challenge service owns it"
                    .to_owned(),
            ),
            (None, None) => {
                return Ok(Prepared::Waiting {
                    why: "user_goal_progress does not exist: waiting for the challenge service to \
                          create it (its migrations run at its start-up). Set TABLE_OWNER=handler \
                          to let this handler create it when no challenge service uses this database"
                        .to_owned(),
                })
            }
        };
        let mut why = why;
        if !exists {
            if owner == TableOwner::Service || !migrate {
                return Ok(Prepared::Waiting {
                    why: format!(
                        "user_goal_progress does not exist ({why}{}): waiting for the challenge \
                         service to create it. Set TABLE_OWNER=handler to let this handler create \
                         it when no challenge service uses this database",
                        if migrate { "" } else { ", NO_MIGRATE" }
                    ),
                });
            }
            if self.create_user_goal_progress().await? {
                why.push_str(
                    "; created user_goal_progress as the challenge service's migrations 001 and \
                     002 do, and recorded schema version 2 for golang-migrate",
                );
            }
        }
        let mut owner = owner;
        if migrate && recorded != Some(owner) {
            // A test holds a start here while another replica records its choice.
            fail::fail_point!("owner-before-record");
            if requested.is_some() {
                self.set_setting("table_owner", owner.as_str()).await?;
            } else if !self.first_setting("table_owner", owner.as_str()).await? {
                // Inferred, and a replica started with TABLE_OWNER set
                // recorded its choice since this start read none: that
                // choice holds, for this replica too (the table exists).
                if let Some(theirs) = self
                    .setting("table_owner")
                    .await?
                    .as_deref()
                    .and_then(TableOwner::parse)
                {
                    owner = theirs;
                    why = format!(
                        "TABLE_OWNER is not set; another replica recorded \"{}\" while this one \
                         started",
                        owner.as_str()
                    );
                }
            }
        }
        let columns = self.columns().await?;
        Ok(Prepared::Ready {
            owner,
            why,
            rotation_columns: columns.expires_at && columns.baseline_value,
        })
    }

    pub(super) async fn table_exists(&self, table: &str) -> Result<bool> {
        sqlx::query_scalar(TABLE_EXISTS_SQL)
            .bind(table)
            .fetch_one(&self.pool)
            .await
            .map_err(pg)
    }

    pub(super) async fn setting(&self, name: &str) -> Result<Option<String>> {
        if !self
            .table_exists("challenge_event_handler_settings")
            .await?
        {
            return Ok(None);
        }
        sqlx::query_scalar(SETTING_SQL)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg)
    }

    pub(super) async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(SET_SETTING_SQL)
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(pg)
    }

    /// Records `value` unless a value is recorded already; false if one was.
    async fn first_setting(&self, name: &str, value: &str) -> Result<bool> {
        sqlx::query(FIRST_SETTING_SQL)
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(pg)
    }

    /// The handler's tables, under a lock so that replicas starting
    /// together do not race; and an older build's columns copied out.
    pub(super) async fn create_handler_tables(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(pg)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(HANDLER_DDL_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        sqlx::Executor::execute(&mut *tx, HANDLER_TABLES_SQL)
            .await
            .map_err(pg)?;
        let legacy: i64 = sqlx::query_scalar(LEGACY_COLUMNS_SQL)
            .fetch_one(&mut *tx)
            .await
            .map_err(pg)?;
        let copied: Option<String> = sqlx::query_scalar(SETTING_SQL)
            .bind("legacy_state_copied")
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg)?;
        if legacy == 2 && copied.is_none() {
            let moved = sqlx::Executor::execute(&mut *tx, COPY_LEGACY_STATE_SQL)
                .await
                .map_err(pg)?;
            sqlx::query(SET_SETTING_SQL)
                .bind("legacy_state_copied")
                .bind("true")
                .execute(&mut *tx)
                .await
                .map_err(pg)?;
            tracing::warn!(
                rows = moved.rows_affected(),
                "an older build of this handler added columns to user_goal_progress \
                 (target_value, last_event_at, last_counted_day); their state now lives in \
                 challenge_event_handler_goal_state and the columns are no longer used. They \
                 can be dropped (docs/DESIGN.md, \"Who owns the table\")"
            );
        }
        tx.commit().await.map_err(pg)
    }

    /// `user_goal_progress` as the challenge service's migrations make it,
    /// and golang-migrate's `schema_migrations` at their version, under
    /// golang-migrate's own advisory lock (so a service starting now waits
    /// and then finds nothing to do). False if the table appeared meanwhile.
    pub(super) async fn create_user_goal_progress(&self) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(pg)?;
        let (database, schema): (String, String) =
            sqlx::query_as("SELECT current_database()::text, current_schema()::text")
                .fetch_one(&mut *tx)
                .await
                .map_err(pg)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(golang_migrate_lock_id(
                &database,
                &schema,
                "schema_migrations",
            ))
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        let exists: bool = sqlx::query_scalar(TABLE_EXISTS_SQL)
            .bind("user_goal_progress")
            .fetch_one(&mut *tx)
            .await
            .map_err(pg)?;
        if exists {
            return Ok(false);
        }
        // The lookup can miss a table the service's migration committed while
        // this transaction waited for the lock (an advisory lock does not make
        // PostgreSQL read the catalog's invalidations; seen once in CI): its
        // CREATE then finds the table, which is the same answer.
        match sqlx::Executor::execute(&mut *tx, USER_GOAL_PROGRESS_SQL).await {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P07") => {
                return Ok(false)
            }
            other => other.map_err(pg)?,
        };
        // golang-migrate's version table, as its PostgreSQL driver creates it.
        sqlx::Executor::execute(
            &mut *tx,
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version bigint not null primary key, dirty boolean not null)",
        )
        .await
        .map_err(pg)?;
        let version: Option<(i64, bool)> =
            sqlx::query_as("SELECT version, dirty FROM schema_migrations LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg)?;
        match version {
            None => {
                sqlx::query("INSERT INTO schema_migrations (version, dirty) VALUES ($1, false)")
                    .bind(SERVICE_SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg)?;
            }
            Some((version, dirty)) => tracing::warn!(
                version,
                dirty,
                "schema_migrations already names a version although user_goal_progress did not \
                 exist; left as it is (check the challenge service's migrations)"
            ),
        }
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }
}

/// golang-migrate's advisory lock id for its PostgreSQL driver: CRC-32
/// (IEEE) of `schema \0 table \0 database`, times its salt, as a u32.
pub fn golang_migrate_lock_id(database: &str, schema: &str, table: &str) -> i64 {
    const SALT: u32 = 1_486_364_155;
    let name = format!("{schema}\0{table}\0{database}");
    i64::from(crc32fast::hash(name.as_bytes()).wrapping_mul(SALT))
}
