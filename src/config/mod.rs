//! Settings: command-line flags with environment fallbacks (the same variable
//! names as AccelByte's Go handler where it has one), each with a documented
//! default, validated once into [`Settings`]. `challenges.json` lives in
//! [`challenges`].

pub mod challenges;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use sqlx::postgres::PgConnectOptions;

use crate::store::cluster::ClusterSettings;
use crate::store::{Database, TableOwner};
use crate::wal::Recovery;

/// The namespace the embedded store falls back to when AB_NAMESPACE is unset.
pub const DEVELOPMENT_NAMESPACE: &str = "mygame";

/// Shorter HTTP ingest tokens are warned about: they can be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Where the service keeps its state: which database, and the WAL directory.
/// Shared by `serve`, `progress` and `wal inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The service's data directory: the WAL (unless WAL_DIR says otherwise)
    /// and the embedded store's file.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Database URL: postgres://… for PostgreSQL, sqlite://<file> for a SQLite
    /// file. When unset: PostgreSQL from DB_HOST, DB_PORT, DB_NAME, DB_USER and
    /// DB_PASSWORD if any of them is set, else the embedded store
    /// (DATA_DIR/progress.sqlite3).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL host [default when PostgreSQL is chosen by DB_*: localhost].
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,
    /// [default: 5432]
    #[arg(long, env = "DB_PORT")]
    pub db_port: Option<u16>,
    /// [default: challenge_db]
    #[arg(long, env = "DB_NAME")]
    pub db_name: Option<String>,
    /// [default: postgres]
    #[arg(long, env = "DB_USER")]
    pub db_user: Option<String>,
    /// [default: empty]
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true)]
    pub db_password: Option<String>,
    /// The write-ahead log directory (a persistent volume in production)
    /// [default: DATA_DIR/wal].
    #[arg(long, env = "WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
}

impl StoreArgs {
    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("wal"))
    }

    /// Whether any database setting is given (else the embedded store is
    /// the fallback).
    pub fn database_configured(&self) -> bool {
        self.database_url.as_deref().is_some_and(|u| !u.is_empty())
            || self.db_host.is_some()
            || self.db_port.is_some()
            || self.db_name.is_some()
            || self.db_user.is_some()
            || self.db_password.is_some()
    }

    /// The database these settings choose.
    pub fn database(&self) -> Result<Database, SettingsError> {
        if let Some(url) = self.database_url.as_deref().filter(|u| !u.is_empty()) {
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                return PgConnectOptions::from_str(url)
                    .map(|o| Database::Postgres(Box::new(o)))
                    .map_err(|e| invalid("DATABASE_URL", format!("is not a PostgreSQL URL: {e}")));
            }
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() || path == ":memory:" {
                    return Err(invalid(
                        "DATABASE_URL",
                        "a SQLite URL needs a file (sqlite://data/progress.sqlite3); an in-memory database would lose acknowledged progress",
                    ));
                }
                return Ok(Database::Sqlite(PathBuf::from(path)));
            }
            return Err(invalid(
                "DATABASE_URL",
                "must start with postgres://, postgresql:// or sqlite://",
            ));
        }
        let any_pg = self.db_host.is_some()
            || self.db_port.is_some()
            || self.db_name.is_some()
            || self.db_user.is_some()
            || self.db_password.is_some();
        if !any_pg {
            return Ok(Database::Sqlite(self.data_dir.join("progress.sqlite3")));
        }
        Ok(Database::Postgres(Box::new(
            PgConnectOptions::new()
                .host(self.db_host.as_deref().unwrap_or("localhost"))
                .port(self.db_port.unwrap_or(5432))
                .database(self.db_name.as_deref().unwrap_or("challenge_db"))
                .username(self.db_user.as_deref().unwrap_or("postgres"))
                .password(self.db_password.as_deref().unwrap_or("")),
        )))
    }
}

/// Flags of `challenge-event-handler serve`. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The AGS namespace this handler serves; events from other namespaces are
    /// acknowledged and ignored. Required with PostgreSQL; the embedded store
    /// falls back to "mygame" with a warning.
    #[arg(long, env = "AB_NAMESPACE")]
    pub namespace: Option<String>,

    /// The challenges file.
    #[arg(long, env = "CONFIG_PATH", default_value = "config/challenges.json")]
    pub config_path: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub db_max_connections: u32,
    /// Rows per statement of a flush.
    #[arg(long, env = "DB_BATCH_SIZE", default_value_t = 1000)]
    pub db_batch_size: usize,

    /// Bytes of WAL not yet in the database past which calls get UNAVAILABLE (e.g. 512MiB, 2GiB).
    #[arg(long, env = "WAL_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub wal_max_bytes: u64,
    /// What start-up does with a corrupt WAL record not yet in the database.
    #[arg(
        long,
        env = "WAL_RECOVERY",
        value_enum,
        ignore_case = true,
        default_value = "strict"
    )]
    pub wal_recovery: Recovery,
    /// sled's page cache.
    #[arg(long, env = "WAL_CACHE_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub wal_cache_bytes: u64,
    /// This instance's id for its database watermark; default: generated once and kept in WAL_DIR.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// gRPC port (0: any free port).
    #[arg(long, env = "GRPC_PORT", default_value_t = 6565)]
    pub grpc_port: u16,
    /// HTTP port: /healthz, /metrics, and the JSON ingest endpoints unless
    /// HTTP_INGEST_PORT is set (0: any free port).
    #[arg(long, env = "METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
    /// Address the ports bind to.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Bearer tokens HTTP ingest (POST /v1/events…) accepts, separated by
    /// commas (several at once while rotating). With PostgreSQL, HTTP ingest
    /// is closed unless a token is configured or HTTP_INGEST_OPEN is set.
    #[arg(long, env = "HTTP_INGEST_TOKEN", hide_env_values = true)]
    pub http_ingest_token: Option<String>,
    /// A file of bearer tokens, one per line (`#` comments): a Kubernetes
    /// Secret mounted as a file. Re-read when it changes (every 2 s).
    #[arg(long, env = "HTTP_INGEST_TOKEN_FILE")]
    pub http_ingest_token_file: Option<PathBuf>,
    /// Accept HTTP ingest writes without a token: for a network where only
    /// trusted callers reach the ingest port. Warned at every start.
    #[arg(long, env = "HTTP_INGEST_OPEN", value_parser = BoolishValueParser::new())]
    pub http_ingest_open: bool,
    /// Serve HTTP ingest on this port and not on METRICS_PORT, so that a
    /// NetworkPolicy can let Prometheus scrape without letting it write
    /// (0: any free port).
    #[arg(long, env = "HTTP_INGEST_PORT")]
    pub http_ingest_port: Option<u16>,
    /// Events per second each HTTP ingest client (its token, else its
    /// address) may send; beyond, 429 with Retry-After. 0: no limit. gRPC is
    /// not limited (it has backpressure).
    #[arg(long, env = "HTTP_INGEST_RATE", default_value_t = 1000)]
    pub http_ingest_rate: u32,
    /// Events a client may send at once above its rate (at least 100, a full
    /// batch).
    #[arg(long, env = "HTTP_INGEST_BURST", default_value_t = 2000)]
    pub http_ingest_burst: u32,
    /// Largest HTTP request body accepted by the ingest endpoints.
    #[arg(long, env = "HTTP_MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub http_max_body_bytes: u64,
    /// Largest gRPC message accepted.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub grpc_max_message_bytes: u64,

    /// How often the buffer is written to PostgreSQL.
    #[arg(long, env = "FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Buffered user-goal entries that trigger an early flush. It bounds the
    /// size of a flush, and so the burst of database work that competes with
    /// acknowledgements: measured at 5,000 events/s, 2,000 keys gave an ack
    /// p99 of 9–14 ms against 20–24 ms with 10,000, at the same throughput
    /// (docs/BENCHMARKS.md).
    #[arg(long, env = "BUFFER_MAX_KEYS", default_value_t = 2_000)]
    pub buffer_max_keys: usize,
    /// Most user-goal entries of the backlog held in memory (the buffer, and
    /// a flush that is being retried, hold at most this many each). Past it,
    /// newer acknowledged records wait in the WAL on disk and are read back
    /// after each flush, so memory does not grow with the length of a
    /// database outage or of the WAL replayed at start-up.
    #[arg(long, env = "MEMORY_MAX_KEYS", default_value_t = 100_000)]
    pub memory_max_keys: usize,
    /// Longest a flush (or a start-up step, or an upkeep round) may wait on
    /// the database. Past it the flush is abandoned as failed (its batch in
    /// doubt, retried on another connection), and PostgreSQL itself ends the
    /// abandoned statement or idle transaction after as long: a connection
    /// that went silent (a failover, a dropped NAT entry) costs one timeout,
    /// not a flush that never returns. Sized for a flush of MEMORY_MAX_KEYS
    /// on a slow database, many times what one takes.
    #[arg(long, env = "FLUSH_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub flush_timeout: Duration,
    /// How long an event id is remembered to drop redeliveries.
    #[arg(long, env = "DEDUP_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,
    /// Most event ids remembered; past it the oldest are forgotten early (metric dedup_evicted_early_total).
    #[arg(long, env = "DEDUP_MAX_MARKS", default_value_t = 2_000_000)]
    pub dedup_max_marks: usize,
    /// How long shutdown may take before giving up (in-flight calls, final flush).
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Skip database migrations at start-up (when a separate job runs them).
    #[arg(long, env = "NO_MIGRATE", value_parser = BoolishValueParser::new())]
    pub no_migrate: bool,

    /// How long the cluster's ledger remembers an applied event id, so that
    /// an event redelivered to any replica is applied once (PostgreSQL). It
    /// must cover how late a redelivery can come: Kafka Connect redelivers
    /// what it had not committed (offsets every minute) after a failed batch,
    /// a rebalance or a restart.
    #[arg(long, env = "LEDGER_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ledger_window: Duration,
    /// Turn the cluster's ledger of applied event ids off (one replica only:
    /// each replica still drops redeliveries it saw itself, DEDUP_WINDOW).
    #[arg(long, env = "NO_LEDGER", value_parser = BoolishValueParser::new())]
    pub no_ledger: bool,
    /// Clock skew allowed between replicas for GDPR deletions: a replica drops
    /// its pending updates of a user another replica deleted unless they are
    /// later than the deletion by more than this.
    #[arg(long, env = "TOMBSTONE_SKEW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub tombstone_skew: Duration,
    /// How long a GDPR deletion's tombstone is kept: longer than any update
    /// can wait unflushed (a database outage, an orphaned WAL before `wal drain`).
    #[arg(long, env = "TOMBSTONE_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Duration,

    /// Who owns user_goal_progress. `service`: AccelByte's challenge service
    /// (it creates the table and a player's rows; events only update existing
    /// rows). `handler`: no challenge service uses this database (the handler
    /// creates the table as the service's migrations would, and gives a
    /// player's first event every goal assigned by default). Default:
    /// `handler` on the embedded store; on PostgreSQL what the handler
    /// recorded at an earlier start, else `service` if the table exists,
    /// else wait, not ready, for the service to create it.
    #[arg(long, env = "TABLE_OWNER", value_enum, ignore_case = true)]
    pub table_owner: Option<TableOwner>,
}

/// Validated settings the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub config_path: PathBuf,
    pub database: Database,
    pub db_max_connections: u32,
    pub db_batch_size: usize,
    pub wal_dir: PathBuf,
    pub wal_max_bytes: u64,
    pub wal_recovery: Recovery,
    pub wal_cache_bytes: u64,
    pub instance_id: Option<String>,
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub grpc_max_message_bytes: usize,
    pub http_ingest: HttpIngestSettings,
    pub http_max_body_bytes: usize,
    pub flush_interval: Duration,
    pub buffer_max_keys: usize,
    pub memory_max_keys: usize,
    pub flush_timeout: Duration,
    pub dedup_window: Duration,
    pub dedup_max_marks: usize,
    pub shutdown_grace: Duration,
    pub migrate: bool,
    pub table_owner: Option<TableOwner>,
    /// The cluster's guarantees on PostgreSQL (ledger, tombstones).
    pub cluster: ClusterSettings,
    /// Things the operator should know about these settings, logged at start-up.
    pub warnings: Vec<String>,
}

/// Who may write through HTTP ingest and where ([`crate::http::access`]).
#[derive(Debug, Clone)]
pub struct HttpIngestSettings {
    /// `HTTP_INGEST_TOKEN`, split.
    pub tokens: Vec<String>,
    pub token_file: Option<PathBuf>,
    pub open: bool,
    /// Its own listener (`HTTP_INGEST_PORT`), else the metrics port.
    pub addr: Option<std::net::SocketAddr>,
    pub rate: u32,
    pub burst: u32,
    /// AB_NAMESPACE is unset: the embedded store's development start.
    pub development: bool,
}

impl HttpIngestSettings {
    /// Tokens when any are configured; else open when asked, or in the
    /// embedded store's development start (no AB_NAMESPACE); else closed.
    /// Reads the token file.
    pub fn access(
        &self,
        database: &Database,
    ) -> Result<crate::http::access::Access, SettingsError> {
        use crate::http::access::{Access, OpenBecause, Tokens};
        if !self.tokens.is_empty() || self.token_file.is_some() {
            let tokens = Tokens::load(self.tokens.clone(), self.token_file.clone())
                .map_err(|e| invalid("HTTP_INGEST_TOKEN_FILE", e))?;
            return Ok(Access::Tokens(std::sync::Arc::new(tokens)));
        }
        Ok(if self.open {
            Access::Open {
                why: OpenBecause::TrustedNetwork,
            }
        } else if self.development && matches!(database, Database::Sqlite(_)) {
            Access::Open {
                why: OpenBecause::EmbeddedStore,
            }
        } else {
            Access::Closed
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {problem}")]
pub struct SettingsError {
    pub name: &'static str,
    pub problem: String,
}

fn invalid(name: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        name,
        problem: problem.into(),
    }
}

impl ServeArgs {
    pub fn validate(self) -> Result<Settings, SettingsError> {
        let database = self.store.database()?;
        let production = self.namespace.as_deref().is_some_and(|n| !n.is_empty());
        if !self.store.database_configured()
            && self.namespace.as_deref().is_some_and(|n| !n.is_empty())
        {
            // AB_NAMESPACE is what Extend always sets: a production start with
            // its database settings missing or misspelt must not serve from a
            // file inside the container.
            return Err(invalid(
                "DATABASE_URL",
                "is not set, nor any of DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, while \
                 AB_NAMESPACE is set (a production start): set the database, or \
                 DATABASE_URL=sqlite://<file> to choose the embedded store on purpose",
            ));
        }
        let mut warnings = Vec::new();
        if let Database::Postgres(options) = &database {
            warnings.extend(plaintext_risk(options));
        }
        let namespace = match self.namespace.filter(|n| !n.is_empty()) {
            Some(namespace) => namespace,
            None if matches!(database, Database::Sqlite(_)) => {
                warnings.push(format!(
                    "AB_NAMESPACE is not set: using {DEVELOPMENT_NAMESPACE:?} (a development default of the embedded store; set AB_NAMESPACE to your game's namespace)"
                ));
                DEVELOPMENT_NAMESPACE.to_owned()
            }
            None => {
                return Err(invalid(
                    "AB_NAMESPACE",
                    "is required (the AGS namespace of your game)",
                ))
            }
        };
        if namespace.chars().count() > crate::event::MAX_ID_LEN {
            return Err(invalid("AB_NAMESPACE", "is longer than 100 characters"));
        }
        // Trimmed as the WAL directory records it (a trailing space or line
        // break from a template would otherwise differ from the record).
        let instance_id = self
            .instance_id
            .as_deref()
            .map(str::trim)
            .map(str::to_owned);
        if let Some(id) = &instance_id {
            if id.is_empty() || id.chars().count() > crate::event::MAX_ID_LEN {
                return Err(invalid("INSTANCE_ID", "must be 1 to 100 characters"));
            }
        }
        if self.flush_interval.is_zero() {
            return Err(invalid("FLUSH_INTERVAL", "must be greater than zero"));
        }
        if self.db_batch_size == 0 || self.db_batch_size > 10_000 {
            return Err(invalid("DB_BATCH_SIZE", "must be from 1 to 10000"));
        }
        if self.buffer_max_keys == 0 {
            return Err(invalid("BUFFER_MAX_KEYS", "must be greater than zero"));
        }
        if self.memory_max_keys == 0 {
            return Err(invalid("MEMORY_MAX_KEYS", "must be greater than zero"));
        }
        if self.flush_timeout < Duration::from_secs(1) {
            return Err(invalid("FLUSH_TIMEOUT", "must be at least 1s"));
        }
        if self.db_max_connections == 0 {
            return Err(invalid("DB_MAX_CONNECTIONS", "must be greater than zero"));
        }
        if self.wal_max_bytes < 1024 {
            return Err(invalid("WAL_MAX_BYTES", "must be at least 1KiB"));
        }
        if !self.no_ledger && self.ledger_window < Duration::from_secs(60) {
            return Err(invalid(
                "LEDGER_WINDOW",
                "must be at least 1m (set NO_LEDGER to run without the ledger)",
            ));
        }
        if self.tombstone_retention < Duration::from_secs(3600) {
            return Err(invalid("TOMBSTONE_RETENTION", "must be at least 1h"));
        }
        let tokens = self
            .http_ingest_token
            .as_deref()
            .map(crate::http::access::parse_tokens)
            .unwrap_or_default();
        if self
            .http_ingest_token
            .as_deref()
            .is_some_and(|t| !t.is_empty())
            && tokens.is_empty()
        {
            // A templated secret that came out as separators or white space
            // must not read as "no token set" (open on the embedded store,
            // allowed beside HTTP_INGEST_OPEN). An empty value is unset, as
            // templates render it.
            return Err(invalid(
                "HTTP_INGEST_TOKEN",
                "is set but holds no token (only separators or white space)",
            ));
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < MIN_TOKEN_BYTES) {
            warnings.push(format!(
                "HTTP_INGEST_TOKEN has a token of {} bytes: use at least {MIN_TOKEN_BYTES} random bytes \
                 (e.g. `openssl rand -hex 32`); a short token can be guessed",
                short.len()
            ));
        }
        if self.http_ingest_open && (!tokens.is_empty() || self.http_ingest_token_file.is_some()) {
            return Err(invalid(
                "HTTP_INGEST_OPEN",
                "is set together with HTTP_INGEST_TOKEN or HTTP_INGEST_TOKEN_FILE: \
                 choose tokens or an open endpoint",
            ));
        }
        if self.http_ingest_rate > 0
            && (self.http_ingest_burst as usize) < crate::http::ingest::MAX_BATCH
        {
            return Err(invalid(
                "HTTP_INGEST_BURST",
                format!(
                    "must be at least {} (a full batch) while HTTP_INGEST_RATE limits",
                    crate::http::ingest::MAX_BATCH
                ),
            ));
        }
        if self
            .http_ingest_port
            .is_some_and(|p| p != 0 && p == self.metrics_port)
        {
            return Err(invalid(
                "HTTP_INGEST_PORT",
                "is METRICS_PORT; leave it unset to serve ingest on the metrics port",
            ));
        }
        let http_ingest = HttpIngestSettings {
            tokens,
            token_file: self.http_ingest_token_file,
            open: self.http_ingest_open,
            addr: self
                .http_ingest_port
                .map(|port| (self.bind_address, port).into()),
            rate: self.http_ingest_rate,
            burst: self.http_ingest_burst,
            development: !production,
        };
        if self.table_owner == Some(TableOwner::Service) && matches!(database, Database::Sqlite(_))
        {
            return Err(invalid(
                "TABLE_OWNER",
                "is \"service\", which needs PostgreSQL: the embedded store is the handler's own file",
            ));
        }
        Ok(Settings {
            namespace,
            config_path: self.config_path,
            database,
            db_max_connections: self.db_max_connections,
            db_batch_size: self.db_batch_size,
            wal_dir: self.store.wal_dir(),
            wal_max_bytes: self.wal_max_bytes,
            wal_recovery: self.wal_recovery,
            wal_cache_bytes: self.wal_cache_bytes,
            instance_id,
            grpc_addr: (self.bind_address, self.grpc_port).into(),
            metrics_addr: (self.bind_address, self.metrics_port).into(),
            grpc_max_message_bytes: usize::try_from(self.grpc_max_message_bytes)
                .unwrap_or(usize::MAX),
            http_ingest,
            http_max_body_bytes: usize::try_from(self.http_max_body_bytes).unwrap_or(usize::MAX),
            flush_interval: self.flush_interval,
            buffer_max_keys: self.buffer_max_keys,
            memory_max_keys: self.memory_max_keys,
            flush_timeout: self.flush_timeout,
            dedup_window: self.dedup_window,
            dedup_max_marks: self.dedup_max_marks,
            shutdown_grace: self.shutdown_grace,
            migrate: !self.no_migrate,
            table_owner: self.table_owner,
            cluster: ClusterSettings {
                ledger_window: (!self.no_ledger).then_some(self.ledger_window),
                tombstone_skew: self.tombstone_skew,
                tombstone_retention: self.tombstone_retention,
            },
            warnings,
        })
    }
}

/// A warning when the handler would talk to a database on another host
/// without insisting on TLS: sslmode `prefer` (the default) falls back to
/// plain text, so the database's password and every player's progress could
/// cross the network readable. Unix sockets and loopback addresses are local.
pub fn plaintext_risk(options: &PgConnectOptions) -> Option<String> {
    use sqlx::postgres::PgSslMode;
    let host = options.get_host();
    let local = options.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mode = options.get_ssl_mode();
    let insists = matches!(
        mode,
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    (!local && !insists).then(|| {
        format!(
            "the database at {host} is reached with sslmode={}: the connection may be plain \
             text; set sslmode=require (or verify-full) in DATABASE_URL (with DB_HOST and the \
             other DB_* settings, or a URL without sslmode: PGSSLMODE=require)",
            format!("{mode:?}").to_lowercase()
        )
    })
}

/// Parses `1048576`, `512KiB`, `64MiB`, `1GiB`, `1GB` (units are powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1048576, 512KiB, 64MiB or 1GiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests;
