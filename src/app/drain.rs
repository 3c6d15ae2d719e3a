//! `wal drain`: a stopped replica's WAL into the database, without serving.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::wal::{self};

use super::*;

/// `wal drain`: a stopped replica's WAL into the database, without serving.
/// Replays the WAL under its instance id with a new epoch (fencing any
/// process of that id still running elsewhere), flushes until the WAL is
/// empty — events another replica applied meanwhile are left out by the
/// cluster's ledger — and truncates it. Safe to run again: an empty WAL
/// drains to nothing. Refuses a WAL another process holds (the directory's lock).
/// Gives up after `timeout` (the database unreachable, the table missing).
pub async fn drain(settings: Settings, timeout: Duration) -> anyhow::Result<()> {
    let dir = settings.wal_dir.clone();
    if !dir.join("log").is_dir() {
        anyhow::bail!(
            "no WAL in {} (set WAL_DIR or DATA_DIR to the volume of the replica to drain)",
            dir.display()
        );
    }
    if settings.instance_id.is_none() && wal::recorded_instance_id(&dir)?.is_none() {
        anyhow::bail!(
            "{} records no instance id and INSTANCE_ID is not set: set INSTANCE_ID to the id the \
             replica ran with (on Kubernetes, its pod name), so its records are replayed against \
             its own watermark",
            dir.display()
        );
    }
    let core = Core::build(settings).await.with_context(|| {
        format!(
            "cannot open the WAL in {} (is a service still running on it?)",
            dir.display()
        )
    })?;
    let Core { settings, parts } = core;
    let (instance_id, metrics) = (parts.instance_id.clone(), parts.metrics.clone());
    let before = parts.wal.records();
    tracing::info!(
        wal_dir = %dir.display(),
        instance_id = %instance_id,
        records = before,
        store = %settings.database.describe(),
        "draining the WAL"
    );
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            shutdown.cancel();
        });
    }
    let lifetime = Lifetime::new(shutdown);
    let running = match start_up(parts, &settings, &lifetime).await? {
        Started::Running(running) => running,
        Started::Stopped(_) if lifetime.fatal.is_cancelled() => {
            anyhow::bail!("stopped after a fatal error (see the log above)");
        }
        Started::Stopped(left) => {
            let held = left.map_or_else(
                || "nothing to write".to_owned(),
                |left| {
                    format!(
                        "{} records ({} bytes) still to write",
                        left.records, left.bytes
                    )
                },
            );
            anyhow::bail!(
                "gave up after {timeout:?}: the database did not take the WAL's records (see the \
                 log above); {held}: the WAL keeps them, run `wal drain` again"
            );
        }
    };
    let mut flusher = running.flusher;
    let left = final_flush(&mut flusher, &running.wal, &lifetime.fatal, timeout).await;
    close_wal(flusher, running.wal, running.wal_thread).await;
    if lifetime.fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above)");
    }
    if let Some(bytes) = left {
        anyhow::bail!("{bytes} bytes are still in the WAL; run `wal drain` again");
    }
    println!(
        "drained {} (instance {instance_id}): {} records replayed and written, {} events left out \
         as already applied by another replica; the WAL is empty",
        dir.display(),
        metrics.wal_replayed.get(),
        metrics.events_applied_elsewhere.get(),
    );
    Ok(())
}
