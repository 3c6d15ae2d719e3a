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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_server::{
    DeletionAccountGdprGdprRequestDataDeletionResponseService,
    DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer,
};
use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_server::{
    UserAuthenticationUserLoggedInService, UserAuthenticationUserLoggedInServiceServer,
};
use crate::proto::iam::account::v1::user_authentication_user_third_party_logged_in_service_server::{
    UserAuthenticationUserThirdPartyLoggedInService,
    UserAuthenticationUserThirdPartyLoggedInServiceServer,
};
use crate::proto::iam::account::v1::{
    GdprRequestDataDeletionResponse, UserLoggedIn, UserThirdPartyLoggedIn,
};
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_server::{
    StatisticStatItemUpdatedService, StatisticStatItemUpdatedServiceServer,
};
use crate::proto::social::statistic::v1::StatItemUpdated;
use crate::send::{login_message, stat_message};

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
struct Report {
    mix: Mix,
    users: u64,
    concurrency: usize,
    connections: usize,
    duration_seconds: f64,
    runs: Vec<RunResult>,
    /// Closed loop with --roof: service events/s ÷ roof events/s.
    roof_ratio: Option<f64>,
    samples: Vec<Sample>,
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

async fn connect(addr: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
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
struct Sender {
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
async fn closed_loop(
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
async fn open_loop(
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
async fn measure(
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

async fn sample_periodically(
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

fn sample_line(s: &Sample) -> String {
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

fn print_run(r: &RunResult) {
    let offered = r
        .offered_per_sec
        .map_or("closed loop".to_owned(), |o| format!("offered {o}/s"));
    println!(
        "{:<8} {offered:<16} {:>9.0} acknowledged/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms  errors {}",
        r.target, r.per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.errors
    );
}

/// A no-op server of this binary, started as a child process; killed on drop.
struct Roof {
    child: std::process::Child,
    addr: String,
}

impl Roof {
    fn start() -> anyhow::Result<Roof> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut child = std::process::Command::new(exe)
            .args(["noop-server", "--bind", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("cannot start the no-op server")?;
        let stdout = child.stdout.take().context("no-op server stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected no-op server output {line:?}"))?;
        Ok(Roof {
            addr: format!("http://{addr}"),
            child,
        })
    }
}

impl Drop for Roof {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Latency percentiles against achieved throughput, one line per target and
/// percentile.
fn plot(path: &std::path::Path, runs: &[RunResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no font to label the plot with (install fonts-dejavu-core)")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("the font could not be loaded"))?;
    let open: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.offered_per_sec.is_some())
        .collect();
    if open.is_empty() {
        bail!("--plot needs --rate (latency against throughput)");
    }
    let max_x = open.iter().map(|r| r.per_sec).fold(0.0, f64::max) * 1.05;
    let max_y = open.iter().map(|r| r.p999_ms).fold(0.0, f64::max).max(10.0) * 1.5;
    let min_y = 0.1;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ack latency against throughput (open loop, log scale)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("acknowledged events/s")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 14))
        .draw()?;
    /// Which runs, which percentile, the legend, the colour.
    type Series = (&'static str, fn(&RunResult) -> f64, &'static str, RGBColor);
    let series: [Series; 6] = [
        ("service", |r| r.p50_ms, "service p50", BLUE),
        ("service", |r| r.p99_ms, "service p99", RED),
        ("service", |r| r.p999_ms, "service p99.9", MAGENTA),
        ("roof", |r| r.p50_ms, "no-op roof p50", CYAN),
        ("roof", |r| r.p99_ms, "no-op roof p99", GREEN),
        ("roof", |r| r.p999_ms, "no-op roof p99.9", BLACK),
    ];
    for (target, value, label, color) in series {
        let points: Vec<(f64, f64)> = open
            .iter()
            .filter(|r| r.target == target)
            .map(|r| (r.per_sec, value(r).clamp(min_y, max_y)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct NoopServerArgs {
    /// Where to listen; the bound address is printed as "listening on <addr>".
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: std::net::SocketAddr,
}

/// Acknowledges every event without doing anything: the gRPC roof.
#[derive(Clone, Copy)]
struct Noop;

#[tonic::async_trait]
impl UserAuthenticationUserLoggedInService for Noop {
    async fn on_message(&self, _: Request<UserLoggedIn>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl UserAuthenticationUserThirdPartyLoggedInService for Noop {
    async fn on_message(&self, _: Request<UserThirdPartyLoggedIn>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl StatisticStatItemUpdatedService for Noop {
    async fn on_message(&self, _: Request<StatItemUpdated>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl DeletionAccountGdprGdprRequestDataDeletionResponseService for Noop {
    async fn on_message(
        &self,
        _: Request<GdprRequestDataDeletionResponse>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

/// `noop-server`: the four event services, acknowledging everything.
pub async fn noop_server(args: NoopServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    println!("listening on {}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        .add_service(UserAuthenticationUserLoggedInServiceServer::new(Noop))
        .add_service(UserAuthenticationUserThirdPartyLoggedInServiceServer::new(
            Noop,
        ))
        .add_service(StatisticStatItemUpdatedServiceServer::new(Noop))
        .add_service(DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer::new(Noop))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    #[command(flatten)]
    pub store: crate::config::StoreArgs,
    /// Distinct user-goal rows per flush.
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    /// Flushes to time (each inserts new rows, then updates them).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Rows per statement of a flush (PostgreSQL).
    #[arg(long, default_value_t = 1000)]
    pub db_batch_size: usize,
}

/// The record of a benchmark's stat event: one kill for `user_id`'s
/// `kill-10` goal.
pub(crate) fn stat_record(user_id: String, event_id: String) -> crate::rules::Record {
    use crate::rules::{Op, Record, Update};
    Record::Update(Update {
        user_id,
        goal_id: "kill-10".into(),
        challenge_id: "combat".into(),
        namespace: "bench".into(),
        target: 10,
        creates_row: true,
        event_time_ms: crate::clock::unix_ms() as i64,
        event_id,
        op: Op::Add(1),
    })
}

/// `bench-store`: flush throughput of the configured store: `runs` times, a
/// buffer of `rows` distinct user-goals (stat increments) inserted in one
/// `apply`, then the same keys updated in another.
pub async fn store_flush(args: StoreBenchArgs) -> anyhow::Result<()> {
    use crate::buffer::Buffer;
    use crate::store::{ProgressStore, Store};
    let database = args.store.database()?;
    let store = Store::connect_lazy(&database, 2, args.db_batch_size);
    // The bench writes rows of its own users, which it creates (as the
    // handler does where it owns the table); on a fresh database it creates
    // the table too.
    use crate::store::{Owner, Prepared, TableOwner};
    if let Prepared::Waiting { .. } = store.prepare(None, true).await.context("prepare")? {
        store
            .prepare(Some(TableOwner::Handler), true)
            .await
            .context("create user_goal_progress")?;
    }
    let owner = Owner {
        table: TableOwner::Handler,
        defaults: Vec::new(),
    };
    let instance = format!("bench-store-{}", uuid::Uuid::new_v4().simple());
    let lease = store.lease(&instance).await?;
    let mut seq = lease.applied_seq;
    println!("{}: {} rows per flush", database.describe(), args.rows);
    for run in 0..args.runs {
        for pass in ["insert", "update"] {
            let mut buffer = Buffer::starting_after(seq);
            for i in 0..args.rows {
                seq += 1;
                buffer.apply(
                    seq,
                    stat_record(format!("bs-{instance}-{run}-{i}"), String::new()),
                );
            }
            let started = Instant::now();
            let applied = store.apply(&lease, seq, &buffer, &owner).await?;
            let elapsed = started.elapsed();
            println!(
                "run {run} {pass}: {} rows in {:.1} ms = {:.0} rows/s",
                applied.rows,
                elapsed.as_secs_f64() * 1000.0,
                applied.rows as f64 / elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct DedupBenchArgs {
    /// Event-id marks to hold (the default is DEDUP_MAX_MARKS's default).
    #[arg(long, default_value_t = 2_000_000)]
    pub marks: usize,
}

fn resident_bytes() -> anyhow::Result<u64> {
    crate::metrics::resident_bytes().context("no VmRSS in /proc/self/status")
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
