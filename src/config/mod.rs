//! Settings: command-line flags with environment fallbacks (the same variable
//! names as AccelByte's Go handler where it has one), each with a documented
//! default, validated once into [`Settings`]. `challenges.json` lives in
//! [`challenges`].

pub mod challenges;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::wal::Recovery;

/// Flags of `challenge-event-handler serve`. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The AGS namespace this handler serves; events from other namespaces are acknowledged and ignored.
    #[arg(long, env = "AB_NAMESPACE")]
    pub namespace: Option<String>,

    /// The challenges file.
    #[arg(long, env = "CONFIG_PATH", default_value = "config/challenges.json")]
    pub config_path: PathBuf,

    /// PostgreSQL URL; when unset, built from DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "DB_HOST", default_value = "localhost")]
    pub db_host: String,
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,
    #[arg(long, env = "DB_NAME", default_value = "challenge_db")]
    pub db_name: String,
    #[arg(long, env = "DB_USER", default_value = "postgres")]
    pub db_user: String,
    #[arg(
        long,
        env = "DB_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub db_password: String,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub db_max_connections: u32,
    /// Rows per UPSERT statement.
    #[arg(long, env = "DB_BATCH_SIZE", default_value_t = 1000)]
    pub db_batch_size: usize,

    /// The write-ahead log directory (a persistent volume in production).
    #[arg(long, env = "WAL_DIR", default_value = "data/wal")]
    pub wal_dir: PathBuf,
    /// Bytes of WAL not yet in the database past which calls get UNAVAILABLE (e.g. 512MiB, 2GiB).
    #[arg(long, env = "WAL_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub wal_max_bytes: u64,
    /// What start-up does with a corrupt WAL record not yet in the database.
    #[arg(long, env = "WAL_RECOVERY", value_enum, default_value = "strict")]
    pub wal_recovery: Recovery,
    /// sled's page cache.
    #[arg(long, env = "WAL_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub wal_cache_bytes: u64,
    /// This instance's id for its database watermark; default: generated once and kept in WAL_DIR.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// gRPC port (0: any free port).
    #[arg(long, env = "GRPC_PORT", default_value_t = 6565)]
    pub grpc_port: u16,
    /// HTTP port for /metrics and /healthz (0: any free port).
    #[arg(long, env = "METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
    /// Address both ports bind to.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Largest gRPC message accepted.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub grpc_max_message_bytes: u64,

    /// How often the buffer is written to PostgreSQL.
    #[arg(long, env = "FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Buffered user-goal entries that trigger an early flush.
    #[arg(long, env = "BUFFER_MAX_KEYS", default_value_t = 10_000)]
    pub buffer_max_keys: usize,
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
    #[arg(long, env = "NO_MIGRATE")]
    pub no_migrate: bool,
}

/// Validated settings the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub config_path: PathBuf,
    pub database: PgConnectOptions,
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
    pub flush_interval: Duration,
    pub buffer_max_keys: usize,
    pub dedup_window: Duration,
    pub dedup_max_marks: usize,
    pub shutdown_grace: Duration,
    pub migrate: bool,
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
        let namespace = self.namespace.filter(|n| !n.is_empty()).ok_or_else(|| {
            invalid(
                "AB_NAMESPACE",
                "is required (the AGS namespace of your game)",
            )
        })?;
        if namespace.chars().count() > crate::rules::MAX_ID_LEN {
            return Err(invalid("AB_NAMESPACE", "is longer than 100 characters"));
        }
        let database = match &self.database_url {
            Some(url) if !url.is_empty() => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(
                        "DATABASE_URL",
                        "must start with postgres:// or postgresql://",
                    ));
                }
                PgConnectOptions::from_str(url)
                    .map_err(|e| invalid("DATABASE_URL", format!("is not a PostgreSQL URL: {e}")))?
            }
            _ => PgConnectOptions::new()
                .host(&self.db_host)
                .port(self.db_port)
                .database(&self.db_name)
                .username(&self.db_user)
                .password(&self.db_password),
        };
        if let Some(id) = &self.instance_id {
            if id.is_empty() || id.chars().count() > crate::rules::MAX_ID_LEN {
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
        if self.db_max_connections == 0 {
            return Err(invalid("DB_MAX_CONNECTIONS", "must be greater than zero"));
        }
        if self.wal_max_bytes < 1024 {
            return Err(invalid("WAL_MAX_BYTES", "must be at least 1KiB"));
        }
        Ok(Settings {
            namespace,
            config_path: self.config_path,
            database,
            db_max_connections: self.db_max_connections,
            db_batch_size: self.db_batch_size,
            wal_dir: self.wal_dir,
            wal_max_bytes: self.wal_max_bytes,
            wal_recovery: self.wal_recovery,
            wal_cache_bytes: self.wal_cache_bytes,
            instance_id: self.instance_id,
            grpc_addr: (self.bind_address, self.grpc_port).into(),
            metrics_addr: (self.bind_address, self.metrics_port).into(),
            grpc_max_message_bytes: usize::try_from(self.grpc_max_message_bytes)
                .unwrap_or(usize::MAX),
            flush_interval: self.flush_interval,
            buffer_max_keys: self.buffer_max_keys,
            dedup_window: self.dedup_window,
            dedup_max_marks: self.dedup_max_marks,
            shutdown_grace: self.shutdown_grace,
            migrate: !self.no_migrate,
        })
    }
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
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["x"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("64 MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_bytes("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn the_namespace_is_required_and_named_in_the_error() {
        // Flags only; the test environment may not set AB_NAMESPACE.
        let mut a = args(&[]);
        a.namespace = None;
        let err = a.validate().unwrap_err();
        assert_eq!(err.name, "AB_NAMESPACE");
        assert!(err.to_string().contains("is required"));
    }

    #[test]
    fn bad_numbers_are_named() {
        let err = args(&["--namespace", "ns", "--db-batch-size", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(err.name, "DB_BATCH_SIZE");
        let err = args(&["--namespace", "ns", "--database-url", "mysql://x"])
            .validate()
            .unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
    }

    #[test]
    fn defaults_match_the_readme() {
        let s = args(&["--namespace", "ns"]).validate().unwrap();
        assert_eq!(s.flush_interval, Duration::from_secs(1));
        assert_eq!(s.dedup_window, Duration::from_secs(600));
        assert_eq!(s.buffer_max_keys, 10_000);
        assert_eq!(s.db_batch_size, 1000);
        assert_eq!(s.wal_max_bytes, 1 << 30);
        assert!(s.migrate);
    }
}
