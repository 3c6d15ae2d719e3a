//! `challenge-event-handler bench`: a closed-loop load generator for a running
//! service. N concurrent clients send stat or login events as fast as they are
//! acknowledged; it reports acknowledged events per second and latency
//! percentiles. Every OK it counts is a durable (fsync'd) update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;

use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use crate::send::{login_message, stat_message};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:6565")]
    pub addr: String,
    /// The namespace to send (the service's AB_NAMESPACE).
    #[arg(long, env = "AB_NAMESPACE", default_value = "mygame")]
    pub namespace: String,
    /// Events to send in all.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Distinct users the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// `stat` (code given by --stat-code) or `login`.
    #[arg(long, default_value = "stat")]
    pub kind: String,
    #[arg(long, default_value = "enemy-kills")]
    pub stat_code: String,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.addr.clone())
                .with_context(|| format!("{:?} is not a valid address", args.addr))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", args.addr))?,
        );
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let args = Arc::new(args);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        let channel = channels[worker as usize % channels.len()].clone();
        let (args, run_id) = (args.clone(), run_id.clone());
        workers.push(tokio::spawn(async move {
            let mut stats = StatisticStatItemUpdatedServiceClient::new(channel.clone());
            let mut logins = UserAuthenticationUserLoggedInServiceClient::new(channel);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = worker;
            while i < args.events {
                let user = format!("bench-{}", i % args.users.max(1));
                let id = format!("{run_id}-{i}");
                let sent = Instant::now();
                let result = if args.kind == "login" {
                    logins
                        .on_message(login_message(&args.namespace, &user, &id, ""))
                        .await
                        .map(|_| ())
                } else {
                    stats
                        .on_message(stat_message(
                            &args.namespace,
                            &args.stat_code,
                            &user,
                            i as f64,
                            1.0,
                            &id,
                            "",
                        ))
                        .await
                        .map(|_| ())
                };
                match result {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
                i += args.concurrency.max(1);
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "kind={} events={} acknowledged={} errors={} concurrency={} connections={} elapsed={:.2}s",
        args.kind,
        args.events,
        latencies.len(),
        errors,
        args.concurrency,
        args.connections,
        elapsed.as_secs_f64()
    );
    println!(
        "throughput={:.0} acknowledged events/s  latency p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
    if errors > 0 {
        anyhow::bail!("{errors} calls failed");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Clone, clap::Args)]
pub struct DedupBenchArgs {
    /// Event-id marks to hold (the default is DEDUP_MAX_MARKS's default).
    #[arg(long, default_value_t = 2_000_000)]
    pub marks: usize,
}

/// Resident memory of this process in bytes (Linux `/proc/self/status`).
fn resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// `challenge-event-handler bench-dedup`: fills the WAL's dedup index the way
/// a steady stream fills it (marks spread over the window's ten buckets) and
/// prints the resident memory it takes at a quarter, half and all of `marks`.
pub fn dedup_memory(args: &DedupBenchArgs) -> anyhow::Result<()> {
    use crate::wal::dedup::{mark_of, Dedup};
    let window = Duration::from_secs(600);
    let mut dedup = Dedup::new(window, args.marks.max(1));
    let per_bucket = (args.marks / 10).max(1);
    let before = resident_bytes()?;
    let mut inserted = 0usize;
    for step in [args.marks / 4, args.marks / 2, args.marks] {
        while inserted < step {
            let bucket = (inserted / per_bucket) as u64;
            dedup.insert(bucket, mark_of(&format!("event-{inserted}")));
            inserted += 1;
        }
        let grown = resident_bytes()?.saturating_sub(before);
        println!(
            "{:>10} marks: {:>7.1} MiB resident, {:>5.1} bytes per mark",
            dedup.len(),
            grown as f64 / (1024.0 * 1024.0),
            grown as f64 / dedup.len().max(1) as f64
        );
    }
    Ok(())
}
