//! `bench`'s load: the senders, closed and open loops, latency tallies,
//! and samples of the service's `/metrics` during the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::Status;

use crate::cli::send::{login_message, stat_message};
use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;

use super::*;

/// What the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Stat events only (`--stat-code`: one increment goal each with the shipped config).
    Stat,
    /// Logins only (three goals each with the shipped config).
    Login,
    /// 70% stat events, 30% logins.
    Mixed,
}

/// One measured run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunResult {
    /// "service" or "roof".
    pub target: String,
    /// The offered rate (open loop), or None (closed loop).
    pub offered_per_sec: Option<u64>,
    pub acknowledged: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) mix: Mix,
    pub(super) users: u64,
    pub(super) concurrency: usize,
    pub(super) connections: usize,
    pub(super) duration_seconds: f64,
    pub(super) runs: Vec<RunResult>,
    /// Closed loop with --roof: service events/s ÷ roof events/s.
    pub(super) roof_ratio: Option<f64>,
    pub(super) samples: Vec<Sample>,
}

/// The service's own figures, read from /metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_seconds: f64,
    pub wal_bytes: f64,
    pub wal_disk_mib: f64,
    pub buffer_size: f64,
    pub resident_mib: f64,
    pub dedup_marks: f64,
    pub events_failed: f64,
    pub flush_failures: f64,
}

pub(super) async fn connect(addr: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Channel::from_shared(addr.to_owned())
                .with_context(|| format!("{addr:?} is not a valid address"))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
        );
    }
    Ok(channels)
}

/// Sends the `i`-th event of a run.
pub(super) struct Sender {
    args: Arc<BenchArgs>,
    run_id: String,
    /// The next event's number, shared by every caller of the run.
    next: AtomicU64,
}

impl Sender {
    async fn send(&self, channel: &Channel, i: u64) -> Result<(), Status> {
        // Spread consecutive events over the users (a multiplicative hash).
        let user = format!(
            "bench-{}",
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.args.users.max(1)
        );
        let id = format!("{}-{i}", self.run_id);
        let login = match self.args.mix {
            Mix::Login => true,
            Mix::Stat => false,
            Mix::Mixed => i % 10 < 3,
        };
        let ns = &self.args.namespace;
        if login {
            UserAuthenticationUserLoggedInServiceClient::new(channel.clone())
                .on_message(login_message(ns, &user, &id, ""))
                .await
                .map(|_| ())
        } else {
            StatisticStatItemUpdatedServiceClient::new(channel.clone())
                .on_message(stat_message(
                    ns,
                    &self.args.stat_code,
                    &user,
                    (i % 1000) as f64,
                    1.0,
                    &id,
                    "",
                ))
                .await
                .map(|_| ())
        }
    }
}

/// Latencies in microseconds, and errors.
#[derive(Default)]
pub(crate) struct Tally {
    micros: Vec<u32>,
    errors: u64,
}

impl Tally {
    pub(crate) fn record<E>(&mut self, result: Result<(), E>, latency: Duration) {
        match result {
            Ok(()) => self
                .micros
                .push(latency.as_micros().min(u32::MAX as u128) as u32),
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    pub(crate) fn result(
        mut self,
        target: &str,
        offered: Option<u64>,
        elapsed: Duration,
    ) -> RunResult {
        self.micros.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.micros.is_empty() {
                return 0.0;
            }
            let i = ((self.micros.len() - 1) as f64 * p).round() as usize;
            f64::from(self.micros[i]) / 1000.0
        };
        RunResult {
            target: target.to_owned(),
            offered_per_sec: offered,
            acknowledged: self.micros.len() as u64,
            errors: self.errors,
            seconds: elapsed.as_secs_f64(),
            per_sec: self.micros.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: pct(1.0),
        }
    }
}

/// As fast as acknowledged, `concurrency` calls in flight, for `length`.
pub(super) async fn closed_loop(
    sender: &Arc<Sender>,
    channels: &[Channel],
    concurrency: usize,
    length: Duration,
) -> (Tally, Duration) {
    let until = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency.max(1) {
        let channel = channels[worker % channels.len()].clone();
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < until {
                let i = sender.next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let result = sender.send(&channel, i).await;
                tally.record(result, sent.elapsed());
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("bench worker panicked"));
    }
    (tally, started.elapsed())
}

/// `rate` calls per second on a fixed schedule, at most `concurrency` in
/// flight.
pub(super) async fn open_loop(
    sender: &Arc<Sender>,
    channels: &[Channel],
    concurrency: usize,
    rate: u64,
    length: Duration,
) -> (Tally, Duration) {
    let (sender, channels) = (sender.clone(), channels.to_vec());
    open_loop_with(concurrency, rate, length, move |k| {
        let channel = channels[k as usize % channels.len()].clone();
        let sender = sender.clone();
        async move {
            let i = sender.next.fetch_add(1, Ordering::Relaxed);
            sender.send(&channel, i).await
        }
    })
    .await
}

/// `call(k)` for k = 0, 1, … at `rate` per second on a fixed schedule for
/// `length`, at most `concurrency` in flight; each latency counts from the
/// call's scheduled time (a target that falls behind cannot hide its queue).
/// The schedule is kept by a dedicated thread (the async timer's 1 ms
/// granularity would add up to a millisecond to every latency).
pub(crate) async fn open_loop_with<F, Fut, E>(
    concurrency: usize,
    rate: u64,
    length: Duration,
    call: F,
) -> (Tally, Duration)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let total = (rate as f64 * length.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Result<(), E>, Duration)>();
    let collector = tokio::spawn(async move {
        let mut tally = Tally::default();
        while let Some((result, latency)) = rx.recv().await {
            tally.record(result, latency);
        }
        tally
    });
    let runtime = tokio::runtime::Handle::current();
    let call = Arc::new(call);
    let started = Instant::now();
    let scheduler = std::thread::spawn(move || {
        for k in 0..total {
            let scheduled = started + period.mul_f64(k as f64);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (call, tx, permits) = (call.clone(), tx.clone(), permits.clone());
            runtime.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                let result = call(k).await;
                let _ = tx.send((result, scheduled.elapsed()));
            });
        }
    });
    tokio::task::spawn_blocking(move || scheduler.join())
        .await
        .expect("scheduler task")
        .expect("scheduler thread panicked");
    let tally = collector.await.expect("collector panicked");
    (tally, started.elapsed())
}

/// One target (the service or the roof) under the configured load; samples
/// the service's /metrics meanwhile when `metrics` is given.
pub(super) async fn measure(
    target: &str,
    addr: &str,
    args: &Arc<BenchArgs>,
    metrics: Option<&str>,
    samples: &Arc<std::sync::Mutex<Vec<Sample>>>,
) -> anyhow::Result<Vec<RunResult>> {
    let channels = connect(addr, args.connections).await?;
    let sender = Arc::new(Sender {
        args: args.clone(),
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        next: AtomicU64::new(0),
    });
    let sampler = metrics.map(|m| {
        tokio::spawn(sample_periodically(
            m.to_owned(),
            args.sample_every,
            samples.clone(),
        ))
    });
    let mut results = Vec::new();
    if args.rate.is_empty() {
        if !args.warmup.is_zero() {
            closed_loop(&sender, &channels, args.concurrency, args.warmup).await;
        }
        let (tally, elapsed) =
            closed_loop(&sender, &channels, args.concurrency, args.duration).await;
        results.push(tally.result(target, None, elapsed));
    } else {
        for &rate in &args.rate {
            if !args.warmup.is_zero() {
                open_loop(&sender, &channels, args.concurrency, rate, args.warmup).await;
            }
            let (tally, elapsed) =
                open_loop(&sender, &channels, args.concurrency, rate, args.duration).await;
            let result = tally.result(target, Some(rate), elapsed);
            if !args.json {
                print_run(&result);
            }
            results.push(result);
        }
    }
    if let Some(task) = sampler {
        task.abort();
    }
    if let Some(m) = metrics {
        // One more, after the load.
        if let Ok(sample) = read_metrics(m, Instant::now()).await {
            eprintln!("after the load: {}", sample_line(&sample));
            samples.lock().expect("samples lock").push(sample);
        }
    }
    Ok(results)
}

pub(super) async fn sample_periodically(
    metrics: String,
    every: Duration,
    out: Arc<std::sync::Mutex<Vec<Sample>>>,
) {
    let started = Instant::now();
    loop {
        if let Ok(sample) = read_metrics(&metrics, started).await {
            eprintln!("{}", sample_line(&sample));
            out.lock().expect("samples lock").push(sample);
        }
        tokio::time::sleep(every).await;
    }
}

pub(super) fn sample_line(s: &Sample) -> String {
    format!(
        "t={:>6.1}s wal_bytes={:>12.0} wal_disk={:>7.1} MiB buffer_size={:>8.0} resident={:>7.1} MiB dedup_marks={:>9.0} events_failed={:.0} flush_failures={:.0}",
        s.at_seconds, s.wal_bytes, s.wal_disk_mib, s.buffer_size, s.resident_mib, s.dedup_marks, s.events_failed, s.flush_failures
    )
}

/// Reads the figures of [`Sample`] from the service's `/metrics`.
pub async fn read_metrics(addr: &str, since: Instant) -> anyhow::Result<Sample> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    };
    Ok(Sample {
        at_seconds: since.elapsed().as_secs_f64(),
        wal_bytes: value("challenge_event_handler_wal_bytes"),
        wal_disk_mib: value("challenge_event_handler_wal_disk_bytes") / (1024.0 * 1024.0),
        buffer_size: value("challenge_event_handler_buffer_size"),
        resident_mib: value("challenge_event_handler_resident_memory_bytes") / (1024.0 * 1024.0),
        dedup_marks: value("challenge_event_handler_dedup_marks"),
        events_failed: value("challenge_event_handler_events_failed_total"),
        flush_failures: value("challenge_event_handler_flush_failures_total"),
    })
}

pub(super) fn print_run(r: &RunResult) {
    let offered = r
        .offered_per_sec
        .map_or("closed loop".to_owned(), |o| format!("offered {o}/s"));
    println!(
        "{:<8} {offered:<16} {:>9.0} acknowledged/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms  errors {}",
        r.target, r.per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.errors
    );
}
