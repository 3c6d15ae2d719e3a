//! `bench-wal`: the WAL alone on a volume, without gRPC or a database, and
//! the volume alone underneath it. Splits a service's acknowledgement latency
//! into what the disk gives, what the WAL adds, and (by difference with
//! `bench`) what the rest of the service adds.
//!
//! 1. The WAL: events offered at `--rate` on a fixed schedule (a dedicated
//!    thread, latency counted from each event's scheduled time) by at most
//!    `--concurrency` callers, one update record each, appended through the
//!    real writer thread (group commit, sled, fsync); a truncation of
//!    everything appended every `--truncate-every`, as the flusher does.
//! 2. The disk: 1 KiB written and `fdatasync`'d in a preallocated file, at the
//!    rate the WAL's group commits ran — the floor of any durable log there.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{open_loop_with, stat_record, RunResult, Tally};
use crate::metrics::Metrics;
use crate::rules::Record;
use crate::wal::{Appended, Recovery, Sink, WalConfig, WalStore};

#[derive(Debug, Clone, clap::Args)]
pub struct WalBenchArgs {
    /// A directory on the volume to measure (the WAL's): a temporary
    /// directory is made in it and removed afterwards.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub dir: PathBuf,
    /// Events per second offered to the WAL.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Appends in flight at most (the callers).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How often everything appended is truncated (the flush interval).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub truncate_every: Duration,
}

/// Committed records go nowhere: only the WAL is measured.
struct Discard;

impl Sink for Discard {
    fn committed(&mut self, _records: Vec<(u64, Record)>) {}
}

pub async fn run(args: WalBenchArgs) -> anyhow::Result<()> {
    crate::wal::create_dir_durable(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let scratch = args
        .dir
        .join(format!("bench-wal-{}", uuid::Uuid::new_v4().simple()));
    let result = measure(&args, &scratch).await;
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove the bench directory");
    }
    let (wal, commits_per_sec, disk) = result?;
    let line = |name: &str, r: &RunResult| {
        println!(
            "{name:<6} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  errors {}",
            r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.errors
        );
    };
    println!(
        "wal:  {} events/s offered, {:.0} acknowledged/s from at most {} callers; {:.0} group commits/s",
        args.rate, wal.per_sec, args.concurrency, commits_per_sec
    );
    line("wal", &wal);
    println!(
        "disk: 1 KiB + fdatasync at {:.0}/s in {} ({} slower than 5 ms)",
        disk.0.per_sec,
        args.dir.display(),
        disk.1
    );
    line("disk", &disk.0);
    Ok(())
}

async fn measure(
    args: &WalBenchArgs,
    scratch: &std::path::Path,
) -> anyhow::Result<(RunResult, f64, (RunResult, usize))> {
    let config = WalConfig {
        dir: scratch.join("wal"),
        max_bytes: 1 << 30,
        dedup_window: Duration::from_secs(600),
        dedup_max_marks: 2_000_000,
        recovery: Recovery::Strict,
        cache_bytes: 16 << 20,
    };
    let store = tokio::task::spawn_blocking(move || WalStore::open(config)).await??;
    let metrics = Arc::new(Metrics::new());
    let (wal, thread) = store.start(1, Discard, metrics.clone(), CancellationToken::new())?;

    let last_seq = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let truncator = {
        let (wal, last_seq, stop, every) = (
            wal.clone(),
            last_seq.clone(),
            stop.clone(),
            args.truncate_every,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                wal.truncate(last_seq.load(Ordering::Relaxed)).await?;
            }
            anyhow::Ok(())
        })
    };

    let commits_before = metrics.wal_append_duration.get_sample_count();
    let (tally, elapsed) = {
        let (wal, last_seq) = (wal.clone(), last_seq.clone());
        open_loop_with(args.concurrency, args.rate, args.duration, move |k| {
            let (wal, last_seq) = (wal.clone(), last_seq.clone());
            async move {
                let id = format!("bench-wal-{k}");
                match wal
                    .append(
                        id.clone(),
                        vec![stat_record(format!("bench-user-{}", k % 100_000), id)],
                    )
                    .await?
                {
                    Appended::Written { last, .. } => {
                        last_seq.fetch_max(last, Ordering::Relaxed);
                    }
                    Appended::Duplicate => {}
                }
                Ok::<(), crate::wal::WalError>(())
            }
        })
        .await
    };
    let commits = metrics.wal_append_duration.get_sample_count() - commits_before;
    stop.cancel();
    truncator.await??;
    drop(wal);
    tokio::task::spawn_blocking(move || thread.join()).await?;
    let commits_per_sec = commits as f64 / elapsed.as_secs_f64();

    let disk_rate = commits_per_sec.max(1.0);
    let disk_length = args.duration;
    let path = scratch.join("disk");
    let disk =
        tokio::task::spawn_blocking(move || disk_floor(&path, disk_rate, disk_length)).await??;
    Ok((
        tally.result("wal", Some(args.rate), elapsed),
        commits_per_sec,
        disk,
    ))
}

/// 1 KiB written and fdatasync'd at `rate` per second for `length`, in a
/// 64 MiB file written once beforehand (so no sync has to allocate blocks).
fn disk_floor(
    path: &std::path::Path,
    rate: f64,
    length: Duration,
) -> anyhow::Result<(RunResult, usize)> {
    const SIZE: u64 = 64 << 20;
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    for at in (0..SIZE).step_by(chunk.len()) {
        file.write_all_at(&chunk, at)?;
    }
    file.sync_all()?;
    let block = vec![7u8; 1024];
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tally = Tally::default();
    let mut slow = 0;
    let started = Instant::now();
    let mut offset = 0;
    let mut k = 0u32;
    while started.elapsed() < length {
        let scheduled = started + period * k;
        k += 1;
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let began = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        let took = began.elapsed();
        slow += usize::from(took > Duration::from_millis(5));
        tally.record(Ok::<(), ()>(()), took);
        offset = (offset + 1024) % SIZE;
    }
    Ok((tally.result("disk", None, started.elapsed()), slow))
}
