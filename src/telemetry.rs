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
        ignore_case = true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        log: LogArgs,
    }

    /// `LOG_FORMAT=JSON` is what a manifest may well say; it means json.
    #[test]
    fn the_log_format_is_read_in_any_case() {
        for value in ["json", "JSON", "Json"] {
            let cmd = Cmd::try_parse_from(["x", "--log-format", value]).unwrap();
            assert_eq!(cmd.log.log_format, LogFormat::Json, "{value}");
        }
        assert!(Cmd::try_parse_from(["x", "--log-format", "yaml"]).is_err());
    }
}
