//! The `challenge-event-handler` binary: parses the command line, starts
//! logging, runs the chosen command and maps failure to an exit code.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: measured in docs/BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use challenge_event_handler::cli::bench::{self, BenchArgs};
use challenge_event_handler::cli::inspect::{self, HealthArgs, ProgressArgs, WalCommand};
use challenge_event_handler::cli::send::{self, SendArgs};
use challenge_event_handler::config::{challenges, ServeArgs};
use challenge_event_handler::telemetry::{self, LogArgs, LogFormat};
use challenge_event_handler::App;

/// Durable AccelByte challenge event handler: AGS events over gRPC (or HTTP
/// JSON) → fsync'd WAL → coalesced batch write into PostgreSQL (or the
/// embedded SQLite store when no database is configured).
///
/// With no command (or only flags) it serves (`serve`).
#[derive(Parser)]
#[command(name = "challenge-event-handler", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

/// The command line with `serve` put in when no command is named, so that
/// `challenge-event-handler --grpc-port 7000` still serves while each other
/// command reads only its own settings (a bad serve setting in the
/// environment does not break `health` or `check-config`).
fn command_line() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str());
    let names_no_command = match first {
        None => true,
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(flag) => flag.starts_with('-'),
    };
    if names_no_command {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Send one test event (login, stat, GDPR deletion) to a running service.
    Send(SendArgs),
    /// Show a user's challenge progress from the configured store.
    Progress(ProgressArgs),
    /// A WAL directory: `wal inspect` (look), `wal drain` (write a stopped replica's WAL into the database).
    #[command(subcommand)]
    Wal(WalCommand),
    /// Ask a running service's /healthz; exit 0 when it serves (a container HEALTHCHECK).
    Health(HealthArgs),
    /// Validate a challenges file and exit.
    CheckConfig {
        #[arg(long, env = "CONFIG_PATH", default_value = "config/challenges.json")]
        config_path: std::path::PathBuf,
    },
    /// Load-test a running service over gRPC (closed loop, or open loop at
    /// --rate), optionally against a no-op roof first (--roof).
    Bench(BenchArgs),
    /// Measure the flush throughput of the configured store.
    BenchStore(bench::StoreBenchArgs),
    /// The no-op gRPC server `bench --roof` starts.
    #[command(hide = true)]
    NoopServer(bench::NoopServerArgs),
    /// Measure the memory the dedup index of event ids takes (no service needed).
    BenchDedup(bench::DedupBenchArgs),
    /// Measure the WAL alone (no gRPC, no database) and the disk under it.
    BenchWal(challenge_event_handler::cli::bench::wal::WalBenchArgs),
}

/// A command line clap refuses: with LOG_FORMAT=json (the manifests'
/// setting) one JSON line a log collector can read, as every other exit
/// writes; otherwise clap's own message. Help and version print as usual.
fn refused(e: clap::Error) -> ExitCode {
    // The flag wins over the variable, as it does once parsed.
    let args: Vec<String> = std::env::args().collect();
    let flag = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--log-format") {
            Some("") => args.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        });
    let json = flag
        .or_else(|| std::env::var("LOG_FORMAT").ok())
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("json"));
    if !json || !e.use_stderr() {
        e.exit();
    }
    let text = e.render().to_string();
    let error = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ");
    let line = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": "ERROR",
        "message": "exiting",
        "error": error.trim_start_matches("error: "),
        "target": "challenge_event_handler",
    });
    eprintln!("{line}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(command_line()) {
        Ok(cli) => cli,
        Err(e) => return refused(e),
    };
    // A log collector reads JSON lines; a person reads one `error:` line.
    let json_logs = cli.log.log_format == LogFormat::Json;
    telemetry::init(&cli.log.log_level, cli.log.log_format);
    // No-op unless built with `--features failpoints` and FAILPOINTS is set.
    let _failpoints = challenge_event_handler::failpoints::setup();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The `starting` line of `serve` says how many workers run.
    let workers = worker_threads(std::env::var_os("TOKIO_WORKER_THREADS").is_some(), cpus);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Send(args) => send::send(args).await,
            Command::Progress(args) => inspect::progress(args).await,
            Command::Wal(command) => inspect::wal(command).await,
            Command::Health(args) => inspect::health(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchDedup(args) => bench::dedup_memory(&args),
            Command::BenchStore(args) => bench::store_flush(args).await,
            Command::BenchWal(args) => challenge_event_handler::cli::bench::wal::run(args).await,
            Command::NoopServer(args) => bench::noop_server(args).await,
            Command::CheckConfig { config_path } => {
                let loaded = challenges::load(&config_path)?;
                println!(
                    "{}: {} goals, valid; {}",
                    config_path.display(),
                    loaded.goals.len(),
                    loaded.generation.describe()
                );
                for warning in &loaded.warnings {
                    println!("warning: {warning}");
                }
                Ok(())
            }
            Command::Serve(args) => serve(*args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json_logs {
                tracing::error!(error = format!("{e:#}"), "exiting");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The fewest worker threads the runtime runs, also where the process may
/// use one CPU only (a container's CPU limit of 1 or less, `taskset`). With
/// one worker, every acknowledgement waited behind the flush's CPU work (its
/// plan, its arrays, the rows it read): on one core at 13,000 events/s of
/// the M5 example the acknowledgements' p99 was 4–15 s and the flush fell
/// behind, where two workers on the same core kept p99 at 0.02–3 s and
/// flushed 5–27% more rows a second (docs/BENCHMARKS.md, "Thirteenth round").
const MIN_WORKER_THREADS: usize = 2;

/// The runtime's worker threads: one a CPU, at least MIN_WORKER_THREADS;
/// none to set when TOKIO_WORKER_THREADS is set (tokio reads it).
fn worker_threads(from_env: bool, cpus: usize) -> Option<usize> {
    (!from_env).then_some(cpus.max(MIN_WORKER_THREADS))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.validate()?;
    let app = App::build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    // On a worker thread: block_on's thread is not one of the runtime's workers.
    tokio::spawn(app.run_until_stopped(shutdown)).await?
}

/// Cancels `token` at the first SIGTERM or SIGINT.
async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_still_gets_two_workers_and_tokio_worker_threads_wins() {
        assert_eq!(worker_threads(false, 1), Some(2));
        assert_eq!(worker_threads(false, 2), Some(2));
        assert_eq!(worker_threads(false, 8), Some(8));
        assert_eq!(worker_threads(true, 1), None);
    }
}
