//! Benchmarks, as subcommands of the service's own binary:
//!
//! - `bench`: load against a running service over gRPC. Closed loop (as fast
//!   as acknowledged, `--concurrency` calls in flight) or open loop at fixed
//!   rates (`--rate 1000,5000,…`: latency measured from each call's scheduled
//!   time, so a slow service cannot hide its queueing). `--roof` first runs
//!   the same load against a no-op server with the same protos that this
//!   command starts itself (acks without doing anything): the gRPC ceiling of
//!   this machine, and the service's fraction of it. `--plot` draws latency
//!   percentiles against throughput (PNG), `--json` prints machine-readable
//!   results, `--metrics-addr` samples the service's `/metrics` (WAL backlog,
//!   resident memory) during and after the load. Mixes: stat events, logins,
//!   or 70/30; `--users` spreads them over many or few users.
//! - `bench-store`: flush throughput of the configured store (`store.apply`
//!   of a buffer of `--rows` distinct user-goals, inserted then updated).
//! - `bench-dedup`: resident memory of the dedup index.
//! - `noop-server` (hidden): the roof's server.
//!
//! Every OK counted against the service is a durable (fsync'd) update.

mod dedup;
mod load;
mod plot;
mod roof;
mod store;
pub mod wal;

pub use dedup::*;
pub use load::*;
use plot::plot;
pub use roof::*;
pub use store::*;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:6565")]
    pub addr: String,
    /// The namespace to send (the service's AB_NAMESPACE).
    #[arg(long, env = "AB_NAMESPACE", default_value = "mygame")]
    pub namespace: String,
    /// How long each run sends.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Sending before each run that is not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Calls in flight at once (at most, in open loop).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Distinct users the events are spread over.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    #[arg(long, value_enum, default_value = "mixed")]
    pub mix: Mix,
    /// The stat code of stat events.
    #[arg(long, default_value = "enemy-kills")]
    pub stat_code: String,
    /// Open loop at these rates (events/s, comma-separated), one run each;
    /// without it, one closed-loop run.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<u64>,
    /// Run the same load against a no-op gRPC server first (the roof).
    #[arg(long)]
    pub roof: bool,
    /// Sample the service's /metrics at this HTTP address (e.g. 127.0.0.1:8080).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Seconds between metric samples printed during a run (with --metrics-addr).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Write a plot of latency percentiles against throughput to this PNG (with --rate).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Draw --plot from the JSON of an earlier run instead of running anything.
    #[arg(long, requires = "plot")]
    pub replot: Option<std::path::PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let (Some(from), Some(path)) = (&args.replot, &args.plot) {
        let text = std::fs::read_to_string(from)
            .with_context(|| format!("cannot read {}", from.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text)?;
        let runs: Vec<RunResult> = serde_json::from_value(report["runs"].clone())
            .with_context(|| format!("{} is not the JSON of a bench run", from.display()))?;
        return plot(path, &runs);
    }
    let args = Arc::new(args);
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut runs = Vec::new();
    if args.roof {
        let roof = Roof::start()?;
        if !args.json {
            println!("roof: a no-op server of the same protos at {}", roof.addr);
        }
        runs.extend(measure("roof", &roof.addr, &args, None, &samples).await?);
    }
    runs.extend(
        measure(
            "service",
            &args.addr,
            &args,
            args.metrics_addr.as_deref(),
            &samples,
        )
        .await?,
    );
    let rate_of = |target: &str| {
        runs.iter()
            .find(|r| r.target == target && r.offered_per_sec.is_none())
            .map(|r| r.per_sec)
    };
    let roof_ratio = match (rate_of("service"), rate_of("roof")) {
        (Some(s), Some(r)) if r > 0.0 => Some(s / r),
        _ => None,
    };
    if let Some(path) = &args.plot {
        plot(path, &runs)?;
        if !args.json {
            println!("plot: {}", path.display());
        }
    }
    let errors: u64 = runs
        .iter()
        .filter(|r| r.target == "service")
        .map(|r| r.errors)
        .sum();
    let report = Report {
        mix: args.mix,
        users: args.users,
        concurrency: args.concurrency,
        connections: args.connections,
        duration_seconds: args.duration.as_secs_f64(),
        runs,
        roof_ratio,
        samples: std::mem::take(&mut *samples.lock().expect("samples lock")),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "mix={:?} users={} concurrency={} connections={} duration={:?}",
            args.mix, args.users, args.concurrency, args.connections, args.duration
        );
        if args.rate.is_empty() {
            for r in &report.runs {
                print_run(r);
            }
        }
        if let Some(ratio) = roof_ratio {
            println!("service / roof = {ratio:.2}");
        }
    }
    if errors > 0 {
        bail!("{errors} calls to the service failed");
    }
    Ok(())
}
