//! The cluster's upkeep every replica runs on PostgreSQL: ledger rotation
//! and expiry, tombstone expiry (store::cluster), with its logs and metrics.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// How often every replica runs the cluster's upkeep (PostgreSQL).
pub(super) const UPKEEP_EVERY: Duration = Duration::from_secs(15);
/// How long an upkeep round waits for the cluster lock before it lets the
/// flushes go on and tries again next round.
pub(super) const UPKEEP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The cluster's upkeep until `stop`: a new ledger table every quarter of
/// LEDGER_WINDOW, expired tables dropped, expired tombstones removed. A
/// round with no answer within `limit` (FLUSH_TIMEOUT) is abandoned and
/// counted as failed: a connection gone silent does not end the upkeep.
pub(super) async fn upkeep(
    store: Arc<Store>,
    limit: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let Store::Postgres(pg) = &*store else {
        return;
    };
    let mut failing = false;
    loop {
        // A panic in a round is a failed round, counted and retried: the
        // task would otherwise end unseen, and with it rotation and expiry.
        let round = std::panic::AssertUnwindSafe(async {
            fail::fail_point!("upkeep-round");
            crate::store::within(limit, pg.upkeep(UPKEEP_LOCK_WAIT)).await
        });
        let round = match futures_util::FutureExt::catch_unwind(round).await {
            Ok(round) => round,
            Err(_) => Err(crate::store::StoreError::Unavailable(
                "the upkeep round panicked (see the panic message above)".into(),
            )),
        };
        match round {
            Ok(done) => {
                if failing {
                    tracing::info!("cluster upkeep recovered");
                    failing = false;
                }
                match done.restored.as_deref() {
                    Some([]) => tracing::error!(
                        "the ledger's state row (challenge_event_handler_ledger) was missing \
                         and no ledger table was left: started a new one; event ids applied \
                         before are forgotten, so a redelivery of one of them may count twice"
                    ),
                    Some(adopted) => tracing::warn!(
                        tables_adopted = adopted.len(),
                        "the ledger's state row (challenge_event_handler_ledger) was missing, \
                         so flushes failed; rebuilt it from the ledger tables in the schema"
                    ),
                    None => {}
                }
                metrics.ledger_tables.set(done.tables as i64);
                metrics.ledger_event_ids.set(done.ids);
                let locked_ms = done.rotation.map_or(0, |d| d.as_millis() as u64);
                for (table, ids) in &done.dropped {
                    metrics.ledger_ids_expired.inc_by((*ids).max(0) as u64);
                    tracing::info!(
                        table,
                        ids,
                        locked_ms,
                        "ledger table older than LEDGER_WINDOW dropped"
                    );
                }
                if done.rotated {
                    tracing::info!(
                        tables = done.tables,
                        ids = done.ids,
                        locked_ms,
                        "new ledger table started"
                    );
                }
                if done.tombstones_expired > 0 {
                    tracing::info!(
                        tombstones = done.tombstones_expired,
                        "GDPR tombstones older than TOMBSTONE_RETENTION removed"
                    );
                }
            }
            Err(e) => {
                metrics.upkeep_failures.inc();
                if !failing {
                    tracing::warn!(error = %e, "cluster upkeep failed (ledger rotation, tombstone expiry); retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(UPKEEP_EVERY) => {}
        }
    }
}
