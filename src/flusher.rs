//! The flush loop: every `FLUSH_INTERVAL` (or early at `BUFFER_MAX_KEYS`) take
//! the buffer — it covers WAL sequence numbers `(W, S]` — write it and move the
//! watermark to `S` in one transaction, then truncate the WAL up to `S`.
//!
//! A failed flush keeps its batch aside as *in doubt*: the COMMIT may have
//! reached the database even though the reply did not. Before the next attempt
//! the watermark is read back; if it already covers the batch the batch is
//! done, otherwise it is merged (as the older part) with what arrived since and
//! written again. So a lost reply never applies an increment twice, and a
//! failed flush never loses one. Retries back off exponentially up to
//! [`MAX_BACKOFF`], and between them a cheap read of the watermark every
//! second notices when the database answers again, so the first flush
//! after an outage does not wait out the backoff; the log says when
//! flushing starts failing and when it recovers, not at every attempt.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::buffer::{Buffer, PendingDeletion};
use crate::clock::rfc3339;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::store::{
    Applied, Deleted, Dropped, Lease, NotApplied, Owner, Phase, ProgressStore, StoreError,
    TableOwner,
};
use crate::wal::dedup::Mark;
use crate::wal::{Refill, Wal};

/// How many times one flush leaves out events other flushes applied
/// before it gives up for this round (each round, a concurrent flush
/// applied more of its events).
const MAX_LEDGER_ROUNDS: usize = 8;

/// The longest wait between flush attempts while the database is away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The flush loop's pacing: every `interval` while flushes succeed; after
/// failures, doubling up to MAX_BACKOFF, never below the interval (a
/// FLUSH_INTERVAL over 30 s was once silently cut to 30 s).
fn flush_backoff(interval: Duration) -> Backoff {
    Backoff::new(interval, MAX_BACKOFF.max(interval))
}

/// How often, while flushes fail and back off, the database is asked
/// whether it answers again (a read of this instance's watermark), so that
/// the flush after an outage does not wait out a backoff of up to
/// MAX_BACKOFF: measured, the first flush came 16–30 s after the database
/// was back (docs/BENCHMARKS.md, "Memory through an outage").
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How often the log may say that updates found no row.
const NOT_APPLIED_LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Flusher<S> {
    store: Arc<S>,
    lease: Lease,
    /// Who owns `user_goal_progress`: the flush creates rows only for the handler.
    owner: Arc<Owner>,
    buffer: Arc<Mutex<Buffer>>,
    wal: Wal,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// A batch whose transaction failed: possibly committed, possibly not.
    in_doubt: Option<Buffer>,
    /// The WAL sequence number the database has everything up to: where
    /// the next batch starts.
    flushed_upto: u64,
    /// Updates for players without rows since the last log line, and when it was.
    unmatched: (NotApplied, Option<Instant>),
    /// When the drain of a spilled backlog last said how far it is.
    drain_logged: Option<Instant>,
    /// FLUSH_TIMEOUT: the longest a flush waits on the database (none
    /// unless [`Flusher::with_timeout`] says).
    timeout: Duration,
}

/// How often the drain of a backlog larger than memory says how far it is.
const DRAIN_LOG_EVERY: Duration = Duration::from_secs(10);

impl<S: ProgressStore> Flusher<S> {
    pub fn new(
        store: Arc<S>,
        lease: Lease,
        owner: Arc<Owner>,
        buffer: Arc<Mutex<Buffer>>,
        wal: Wal,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Flusher {
            store,
            owner,
            buffer,
            wal,
            metrics,
            health,
            flushed_upto: lease.applied_seq,
            in_doubt: None,
            unmatched: (NotApplied::default(), None),
            drain_logged: None,
            timeout: Duration::MAX,
            lease,
        }
    }

    /// A flush (and the read of the watermark before one) that has no
    /// answer from the database within `limit` is abandoned as failed:
    /// its batch stays in doubt and the next attempt reads the watermark
    /// first, on another connection. Without it a connection gone silent
    /// (a failover, a dropped NAT entry) keeps a flush waiting until the
    /// kernel gives up on it, a quarter of an hour or never.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// `work` on the database, given up after FLUSH_TIMEOUT
    /// ([`crate::store::within`]), or cancelled by PostgreSQL at the same
    /// limit (its `statement_timeout`): both count as flush timeouts. Only
    /// what the database does is abandoned: the batch is not inside `work`.
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = crate::store::within(self.timeout, work).await;
        if let Err(StoreError::TimedOut { .. } | StoreError::Cancelled(_)) = result {
            self.metrics.flush_timeouts.inc();
        }
        result
    }

    /// Writes everything acknowledged so far. Returns the rows written.
    pub async fn flush_once(&mut self) -> Result<usize, StoreError> {
        let result = self.try_flush().await;
        match &result {
            Ok(rows) => {
                // Also when there was nothing to write: nothing is waiting.
                self.metrics
                    .last_flush_success
                    .set((crate::clock::unix_ms() / 1000) as i64);
                self.health.flush_succeeded(*rows)
            }
            Err(e) => {
                self.metrics.flush_failures.inc();
                self.health.flush_failed(e.to_string());
            }
        }
        result
    }

    async fn try_flush(&mut self) -> Result<usize, StoreError> {
        if let Some(doubt) = &self.in_doubt {
            let applied = self.bounded(self.store.applied_seq(&self.lease)).await?;
            if applied >= doubt.last_seq() {
                tracing::info!(
                    upto_seq = doubt.last_seq(),
                    "the last flush had committed after all; not writing it again"
                );
                let upto = doubt.last_seq();
                if let Some(doubt) = self.in_doubt.take() {
                    self.audit_unknown(&doubt.deletions);
                }
                self.flushed_upto = upto;
                self.truncate(upto).await;
            } else if applied > doubt.after() {
                // A flush abandoned before this batch was merged (its COMMIT
                // in flight) committed after all: its records are in the
                // database, the rest of the batch is not. Only what is above
                // the watermark is written again.
                let (after, upto) = (doubt.after(), doubt.last_seq());
                tracing::warn!(
                    applied_seq = applied,
                    after_seq = after,
                    upto_seq = upto,
                    "a flush abandoned earlier committed after all, part of the batch in doubt; \
                     writing only what is above it"
                );
                let records = self.wal.read(applied, upto).await.map_err(|e| {
                    StoreError::Unavailable(format!("cannot read the batch back from the WAL: {e}"))
                })?;
                if let Some(doubt) = self.in_doubt.take() {
                    let committed: Vec<PendingDeletion> = doubt
                        .deletions
                        .into_iter()
                        .filter(|d| d.seq <= applied)
                        .collect();
                    self.audit_unknown(&committed);
                }
                self.in_doubt = Some(Buffer::rebuilt(applied, upto, records, &HashSet::new()));
                self.flushed_upto = applied;
                self.truncate(applied).await;
            }
        }
        if self.in_doubt.is_none() {
            self.refill().await?;
        }
        let mut batch = {
            let mut buffer = self.buffer.lock().expect("buffer lock poisoned");
            buffer.next_batch(self.in_doubt.take())
        };
        self.note_buffered();
        if batch.is_empty() {
            return Ok(0);
        }
        if batch.repeated_events() {
            // An event delivered again after its dedup mark expired, while
            // the first delivery still waited for the database: the WAL took
            // both. Only the first is written.
            let (after, upto) = (batch.after(), batch.last_seq());
            match self.wal.read(after, upto).await {
                Ok(records) => {
                    let (first, dropped) = Buffer::first_deliveries(after, upto, records);
                    self.deletions_left_out(batch.deletions.len(), first.deletions.len());
                    tracing::warn!(
                        deliveries = dropped,
                        upto_seq = upto,
                        "events delivered again after DEDUP_WINDOW while the first delivery waited \
                         for the database: leaving the later deliveries out"
                    );
                    batch = first;
                }
                Err(e) => {
                    self.in_doubt = Some(batch);
                    return Err(StoreError::Unavailable(format!(
                        "cannot read the batch back from the WAL: {e}"
                    )));
                }
            }
        }
        let upto = batch.last_seq();
        let started = Instant::now();
        match self.apply(&mut batch, upto).await {
            Ok(applied) => {
                self.metrics
                    .flush_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.db_batch_size.observe(applied.rows as f64);
                for phase in Phase::ALL {
                    self.metrics
                        .flush_phase_seconds
                        .with_label_values(&[phase.name()])
                        .inc_by(applied.phases.get(phase).as_secs_f64());
                }
                tracing::debug!(
                    rows = applied.rows,
                    deletions = applied.deleted.len(),
                    updates = batch.updates(),
                    upto_seq = upto,
                    "flushed"
                );
                self.audit(&applied.deleted);
                self.audit_dropped(&applied.dropped);
                self.count_not_applied(&applied.not_applied);
                self.flushed_upto = upto;
                self.truncate(upto).await;
                self.log_drain_progress();
                Ok(applied.rows)
            }
            Err(e) => {
                self.in_doubt = Some(batch);
                self.note_buffered();
                Err(e)
            }
        }
    }

    /// A buffer that spilled (MEMORY_MAX_KEYS) takes back what waits in the
    /// WAL, slice by slice, until it holds everything or its bound again.
    /// Not while a batch is in doubt: that batch and the buffer together
    /// stay within twice the bound, whatever the length of an outage.
    async fn refill(&self) -> Result<(), StoreError> {
        while self.spilled() {
            let refill = self.wal.refill().await.map_err(|e| {
                StoreError::Unavailable(format!("cannot read the backlog back from the WAL: {e}"))
            })?;
            if refill != Refill::More {
                break;
            }
        }
        Ok(())
    }

    /// While a backlog larger than memory drains, a line every
    /// DRAIN_LOG_EVERY with what is left.
    fn log_drain_progress(&mut self) {
        if !self.spilled() {
            self.drain_logged = None;
            return;
        }
        if self
            .drain_logged
            .is_some_and(|at| at.elapsed() < DRAIN_LOG_EVERY)
        {
            return;
        }
        self.drain_logged = Some(Instant::now());
        tracing::info!(
            wal_backlog_bytes = self.wal.backlog_bytes(),
            wal_backlog_records = self.wal.stats().backlog_records(),
            flushed_upto_seq = self.flushed_upto,
            "draining a backlog larger than MEMORY_MAX_KEYS: flushing it a part at a time"
        );
    }

    /// Returns once the database answers a read of this instance's
    /// watermark (or says the lease is fenced, which the flush then
    /// reports), asking every PROBE_EVERY.
    async fn database_answers(&self) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            match self.store.applied_seq(&self.lease).await {
                Ok(_) | Err(StoreError::Fenced { .. }) => return,
                Err(_) => {}
            }
        }
    }

    /// Whether acknowledged records wait in the WAL only.
    fn spilled(&self) -> bool {
        self.buffer
            .lock()
            .expect("buffer lock poisoned")
            .spilled_after()
            .is_some()
    }

    /// The batch's transaction. When the cluster's ledger says another flush
    /// applied some of its events, nothing was written: the batch is built
    /// again from the WAL without them (in place, so a failure keeps the
    /// smaller batch in doubt) and written again.
    async fn apply(&mut self, batch: &mut Buffer, upto: u64) -> Result<Applied, StoreError> {
        let mut skip: HashSet<Mark> = HashSet::new();
        for _ in 0..MAX_LEDGER_ROUNDS {
            match self
                .bounded(self.store.apply(&self.lease, upto, batch, &self.owner))
                .await
            {
                Err(StoreError::AlreadyApplied { marks }) => {
                    let new = marks.iter().filter(|m| skip.insert(**m)).count();
                    self.metrics.events_applied_elsewhere.inc_by(new as u64);
                    tracing::info!(
                        events = new,
                        upto_seq = upto,
                        "events of this batch were applied by another flush (redelivered to another \
                         replica, or to this one after DEDUP_WINDOW): leaving them out"
                    );
                    let records = self.wal.read(self.flushed_upto, upto).await.map_err(|e| {
                        StoreError::Unavailable(format!(
                            "cannot read the batch back from the WAL: {e}"
                        ))
                    })?;
                    // If nothing is left, the next round moves only the watermark.
                    let rebuilt = Buffer::rebuilt(self.flushed_upto, upto, records, &skip);
                    self.deletions_left_out(batch.deletions.len(), rebuilt.deletions.len());
                    *batch = rebuilt;
                }
                other => return other,
            }
        }
        Err(StoreError::Unavailable(format!(
            "other flushes kept applying events of this batch ({MAX_LEDGER_ROUNDS} rounds); retrying"
        )))
    }

    /// The audit trail of pending updates left out for a deletion another
    /// replica applied: one line per user, and a metric.
    fn audit_dropped(&self, dropped: &[Dropped]) {
        for d in dropped {
            self.metrics.updates_dropped_deleted_user.inc_by(d.updates);
            tracing::info!(
                audit = "gdpr_pending_updates_dropped",
                user_id = %d.user_id,
                namespace = %d.namespace,
                updates = d.updates,
                deleted_at = %rfc3339(d.deleted_ms),
                deleted_by = %d.by_instance,
                dropped_by = %self.lease.instance_id,
                "pending updates of a user another replica deleted were not written"
            );
        }
    }

    /// The audit trail of committed GDPR deletions: one line each, and metrics.
    fn audit(&self, deleted: &[Deleted]) {
        self.metrics
            .gdpr_deletions_pending
            .sub(deleted.len() as i64);
        let at = rfc3339(crate::clock::unix_ms() as i64);
        for d in deleted {
            self.metrics.gdpr_deletions.inc();
            self.metrics.gdpr_rows_deleted.inc_by(d.rows);
            tracing::info!(
                audit = "gdpr_user_data_deletion",
                user_id = %d.user_id,
                namespace = %d.namespace,
                event_id = %d.event_id,
                rows_deleted = d.rows,
                holds_from = %rfc3339(d.holds_from_ms),
                deleted_at = %at,
                "gdpr deletion applied: the user's challenge progress is deleted"
            );
        }
    }

    /// Updates that found no row to change: counted by reason, and, for
    /// players the challenge service has not initialized, a log line at most
    /// once a minute that says what to change.
    fn count_not_applied(&mut self, n: &NotApplied) {
        let m = &self.metrics.updates_not_applied;
        let counts = [
            n.player_not_initialized,
            n.goal_not_assigned,
            n.inactive,
            n.claimed,
        ];
        for (reason, count) in crate::metrics::NOT_APPLIED_REASONS.into_iter().zip(counts) {
            if count > 0 {
                m.with_label_values(&[reason]).inc_by(count);
            }
        }
        let (pending, last) = &mut self.unmatched;
        pending.player_not_initialized += n.player_not_initialized;
        pending.players_not_initialized += n.players_not_initialized;
        if pending.player_not_initialized == 0
            || last.is_some_and(|at| at.elapsed() < NOT_APPLIED_LOG_EVERY)
        {
            return;
        }
        let hint = match self.owner.table {
            TableOwner::Service => {
                "the challenge service creates a player's rows when the game calls its \
                 Initialize; events that arrive before that are not counted, as with \
                 AccelByte's handler. If no challenge service uses this database, set \
                 TABLE_OWNER=handler"
            }
            TableOwner::Handler => "the players' rows were deleted after this flush created them",
        };
        tracing::warn!(
            updates = pending.player_not_initialized,
            players = pending.players_not_initialized,
            "updates for players with no row in user_goal_progress were not applied: {hint}"
        );
        *pending = NotApplied::default();
        *last = Some(Instant::now());
    }

    /// A batch rebuilt without some of its deletions (applied by another
    /// flush, or later deliveries of one): they are no longer pending here.
    fn deletions_left_out(&self, before: usize, after: usize) {
        self.metrics
            .gdpr_deletions_pending
            .sub(before.saturating_sub(after) as i64);
    }

    /// Deletions of a batch found committed after its reply was lost: they
    /// were applied, the row counts are not known.
    fn audit_unknown(&self, deletions: &[PendingDeletion]) {
        for pending in deletions {
            let d = &pending.deletion;
            self.metrics.gdpr_deletions.inc();
            tracing::info!(
                audit = "gdpr_user_data_deletion",
                user_id = %d.user_id,
                namespace = %d.namespace,
                event_id = %d.event_id,
                holds_from = %rfc3339(d.event_time_ms),
                "gdpr deletion applied (the commit reply was lost; rows deleted unknown)"
            );
        }
        self.metrics
            .gdpr_deletions_pending
            .sub(deletions.len() as i64);
    }

    /// WAL truncation after a commit. A failure here costs disk, not
    /// correctness: replay skips everything at or below the watermark.
    async fn truncate(&self, upto: u64) {
        if let Err(e) = self.wal.truncate(upto).await {
            tracing::warn!(error = %e, upto_seq = upto, "cannot truncate the WAL after a flush; replay will skip these records");
        }
    }

    /// Sets the gauges of what waits in memory: the buffer and a batch in doubt.
    fn note_buffered(&self) {
        let in_doubt = self.in_doubt.as_ref().map_or(0, Buffer::len);
        self.metrics.flush_retry_keys.set(in_doubt as i64);
        let buffered = self.buffer.lock().expect("buffer lock poisoned").len();
        self.metrics.buffer_size.set((buffered + in_doubt) as i64);
    }

    /// Whether anything acknowledged is still not known to be in the
    /// database: held in memory, or (the truth) left in the WAL, which a
    /// flush truncates only once its transaction committed. A flush
    /// abandoned mid-way (its future dropped at a deadline) takes its batch
    /// out of memory, not out of the WAL.
    pub fn has_pending(&self) -> bool {
        self.holds_pending() || self.wal.stats().backlog_records() > 0
    }

    /// Whether this process holds, in memory, acknowledged records that a
    /// flush can still write (the buffer, a spilled backlog it reads back,
    /// a batch in doubt).
    pub fn holds_pending(&self) -> bool {
        let buffer = self.buffer.lock().expect("buffer lock poisoned");
        !buffer.is_empty()
            || buffer.spilled_after().is_some()
            || self.in_doubt.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Flushes every `interval` (or when `early` is notified) until `stop`;
    /// after a failure, with backoff. A fenced lease cancels `fatal` (this
    /// instance must stop).
    pub async fn run(
        mut self,
        interval: Duration,
        early: Arc<Notify>,
        stop: CancellationToken,
        fatal: CancellationToken,
    ) -> Self {
        let mut backoff = flush_backoff(interval);
        // After a flush that left records in the WAL only (the buffer
        // spilled), the next one starts at once.
        let mut again = self.spilled();
        // While flushes fail, the database is probed between retries; a
        // flush the probe started that fails too (the database answers but
        // the flush does not go through) ends the probing until a flush
        // succeeds: plain backoff then, not a retry every PROBE_EVERY.
        let mut probe = true;
        loop {
            let mut probed = false;
            if !again {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff.delay()) => {}
                    _ = early.notified(), if backoff.failures() == 0 => {}
                    _ = self.database_answers(), if probe && backoff.failures() > 0 => {
                        tracing::info!("the database answers again: flushing now");
                        probed = true;
                    }
                }
            } else if stop.is_cancelled() {
                break;
            }
            again = false;
            match self.flush_once().await {
                Ok(_) => {
                    probe = true;
                    again = self.spilled();
                    let failed = backoff.succeeded();
                    if failed > 0 {
                        tracing::info!(
                            failed_attempts = failed,
                            "flushing recovered; the WAL backlog is draining"
                        );
                    }
                }
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::error!(error = %e, "stopping: this instance was fenced");
                    fatal.cancel();
                    break;
                }
                Err(e) => {
                    backoff.failed();
                    probe = !probed;
                    if backoff.failures() == 1 {
                        tracing::warn!(
                            error = %e,
                            wal_backlog_bytes = self.wal.backlog_bytes(),
                            "flush failed; acknowledged updates stay in the WAL and are retried with backoff"
                        );
                    } else {
                        tracing::debug!(error = %e, failures = backoff.failures(), "flush retry failed");
                    }
                }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flush_interval_is_kept_whatever_its_length_and_failures_back_off_to_the_cap() {
        let hour = Duration::from_secs(3600);
        let mut long = flush_backoff(hour);
        assert_eq!(long.delay(), hour);
        assert_eq!(long.failed(), hour, "never below the interval");
        let mut short = flush_backoff(Duration::from_secs(1));
        assert_eq!(short.delay(), Duration::from_secs(1));
        assert_eq!(short.failed(), Duration::from_secs(2));
        for _ in 0..10 {
            short.failed();
        }
        assert_eq!(short.delay(), MAX_BACKOFF);
    }
}
