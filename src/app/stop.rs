//! Serving and stopping: the flush loop beside the gRPC server, then the
//! last flushes until the WAL is empty (or the grace period ends) and the
//! WAL closed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::flusher::Flusher;
use crate::grpc::Ingress;
use crate::retry::Backoff;
use crate::store::{ProgressStore, Store, StoreError};
use crate::wal::{Wal, WalThread};

use super::*;

/// Serving: gRPC and the flush loop until `stop`; returns the flusher for the
/// last flush.
pub(super) async fn serve(
    flush_early: &Arc<Notify>,
    flusher: Flusher<Store>,
    ingress: Ingress,
    grpc: TcpListener,
    settings: &Settings,
    lifetime: &Lifetime,
) -> anyhow::Result<Flusher<Store>> {
    let flusher_stop = CancellationToken::new();
    let mut flush_loop = tokio::spawn(flusher.run(
        settings.flush_interval,
        flush_early.clone(),
        flusher_stop.clone(),
        lifetime.fatal.clone(),
    ));
    let server = crate::grpc::server::serve(
        grpc,
        ingress,
        settings.grpc_max_message_bytes,
        settings.shutdown_grace,
        lifetime.stop.clone(),
    );
    tokio::pin!(server);
    // The flush loop ends by itself only when this instance was fenced
    // (it has cancelled `fatal`, which stops the server). If it panicked,
    // what is acknowledged from then on would never reach the database:
    // the service stops instead (non-zero, for the platform to restart
    // it); the WAL keeps every acknowledged update.
    let served = tokio::select! {
        served = &mut server => served,
        ended = &mut flush_loop => {
            let flusher = match ended {
                Ok(flusher) => flusher,
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "the flush loop stopped while serving; stopping the service (acknowledged updates stay in the WAL for the next start)"
                    );
                    lifetime.fatal.cancel();
                    let _ = server.await;
                    anyhow::bail!("the flush loop stopped while serving: {e}");
                }
            };
            if let Err(e) = server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
            return Ok(flusher);
        }
    };
    if let Err(e) = &served {
        tracing::error!(error = %e, "gRPC server failed");
        lifetime.fatal.cancel();
    }
    flusher_stop.cancel();
    flush_loop.await.context("flush loop panicked")
}

/// Shutting down: flushing until the WAL is empty (or the grace period
/// ends), then the WAL closed. Some(bytes): what is left in the WAL.
pub(super) async fn shut_down(
    mut flusher: Flusher<Store>,
    wal: Wal,
    wal_thread: WalThread,
    settings: &Settings,
    lifetime: &Lifetime,
) -> Option<u64> {
    // No append is acknowledged from here on. A call the servers stopped
    // waiting for (its fsync slower than the grace period) is answered
    // UNAVAILABLE, or, taken before, is durable and buffered now: either
    // way the final flush sees everything acknowledged, and the exit code
    // says whether the WAL is empty.
    if let Err(e) = wal.close_appends().await {
        tracing::error!(error = %e, "cannot close the WAL to new events before the final flush");
    }
    let left = final_flush(&mut flusher, &wal, &lifetime.fatal, settings.shutdown_grace).await;
    close_wal(flusher, wal, wal_thread).await;
    left
}

/// The writer is told to end (a handle a lingering connection holds does
/// not keep it) and its thread is joined.
pub(super) async fn close_wal<S: ProgressStore>(
    flusher: Flusher<S>,
    wal: Wal,
    wal_thread: WalThread,
) {
    drop(flusher);
    wal.stop().await;
    drop(wal);
    let _ = tokio::task::spawn_blocking(move || wal_thread.join()).await;
}

/// The last flushes on the way out: until nothing acknowledged is left
/// outside the database, or `grace` is over. A failure is retried within
/// the grace period. Some(bytes): records left in the WAL (logged): they
/// are applied at the next start, or by `wal drain` if this replica does
/// not come back.
pub(super) async fn final_flush<S: ProgressStore>(
    flusher: &mut Flusher<S>,
    wal: &Wal,
    fatal: &CancellationToken,
    grace: Duration,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + grace;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut last_error = None;
    while !fatal.is_cancelled() && flusher.has_pending() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, flusher.flush_once()).await {
            Ok(Ok(rows)) => {
                tracing::info!(rows, "final flush done");
                if !flusher.holds_pending() {
                    // What the WAL still holds, no flush of this process
                    // can reach (a batch abandoned at a deadline): the next
                    // start replays it.
                    break;
                }
            }
            Ok(Err(e @ StoreError::Fenced { .. })) => {
                tracing::error!(error = %e, "final flush refused: this instance was fenced");
                fatal.cancel();
            }
            Ok(Err(e)) => {
                if last_error.is_none() {
                    tracing::warn!(error = %e, "final flush failed; retrying until the grace period ends");
                }
                last_error = Some(e.to_string());
                backoff.failed();
                let pause = backoff
                    .delay()
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                tokio::time::sleep(pause).await;
            }
            Err(_) => break,
        }
    }
    if !flusher.has_pending() {
        return None;
    }
    let why = format!(
        "the grace period ({grace:?}) ended; last error: {}",
        last_error.as_deref().unwrap_or("none")
    );
    Some(report_left_in_wal(
        wal.backlog_bytes(),
        wal.stats().backlog_records(),
        &why,
    ))
}

/// Logs what a stop leaves in the WAL, the operator's cue to keep the
/// volume or drain it (the process then exits 1); returns `bytes`.
pub(super) fn report_left_in_wal(bytes: u64, records: u64, why: &str) -> u64 {
    tracing::error!(
        wal_backlog_bytes = bytes,
        wal_backlog_records = records,
        why,
        "stopping with acknowledged updates not in the database: they stay in the WAL and are \
         applied when this replica starts again on the same volume, or by `challenge-event-handler \
         wal drain` on that volume if it does not (deploy/README.md, \"Scaling down\")"
    );
    bytes
}

pub(super) async fn finish(
    tasks: TaskTracker,
    http_stop: CancellationToken,
    fatal: &CancellationToken,
    left_in_wal: Option<u64>,
) -> anyhow::Result<()> {
    http_stop.cancel();
    tasks.close();
    tasks.wait().await;
    if fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above)");
    }
    if let Some(bytes) = left_in_wal {
        anyhow::bail!(
            "stopped with {bytes} bytes of acknowledged updates left in the WAL (see the log above)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
