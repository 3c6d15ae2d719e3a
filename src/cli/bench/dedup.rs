//! `bench-dedup`: the resident memory of the dedup index.

use std::time::Duration;

use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct DedupBenchArgs {
    /// Event-id marks to hold (the default is DEDUP_MAX_MARKS's default).
    #[arg(long, default_value_t = 2_000_000)]
    pub marks: usize,
}

pub(super) fn resident_bytes() -> anyhow::Result<u64> {
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
