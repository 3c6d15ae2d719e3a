//! Logging: `tracing` to stderr, JSON (`LOG_FORMAT=json`) or text, filtered by
//! `LOG_LEVEL` (an `EnvFilter` directive such as `info` or
//! `info,challenge_event_handler=debug`).

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The logging flags every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter (e.g. info, debug, info,sqlx=warn).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops).
pub fn init(level: &str, format: LogFormat) {
    // PostgreSQL's notices ("column … already exists, skipping" on every
    // idempotent migration) are noise unless asked for.
    let level = if level.contains("sqlx") {
        level.to_owned()
    } else {
        format!("{level},sqlx::postgres::notice=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
