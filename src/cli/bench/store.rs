//! `bench-store`: the flush throughput of the configured store.

use std::time::Instant;

use anyhow::Context;

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
