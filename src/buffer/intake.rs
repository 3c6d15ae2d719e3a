//! The WAL's sink in a running service: records the WAL has made durable
//! go into the buffer in sequence order, so data runs WAL → buffer →
//! flusher → store one way. A bounded buffer that spills leaves the newer
//! records to the WAL and takes them back through [`Sink::refill`].

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Buffer;
use crate::metrics::Metrics;
use crate::rules::Record;
use crate::wal::{Refill, Sink};

/// The WAL's sink in a running service: committed records go into the shared
/// buffer in sequence order; a buffer of `max_keys` entries wakes the flusher early.
pub struct Intake {
    pub buffer: Arc<Mutex<Buffer>>,
    pub flush_early: Arc<Notify>,
    pub max_keys: usize,
    pub metrics: Arc<Metrics>,
}

impl Intake {
    /// Puts records into the buffer with `put`; then the gauges, the log
    /// line when the buffer spills, and the early flush.
    fn hold(&self, put: impl FnOnce(&mut Buffer)) {
        let (was_spilled, keys, spilled) = {
            let mut buffer = self.buffer.lock().expect("buffer lock poisoned");
            let was_spilled = buffer.spilled_after().is_some();
            put(&mut buffer);
            (was_spilled, buffer.len(), buffer.spilled_after().is_some())
        };
        self.metrics
            .buffer_size
            .set(keys as i64 + self.metrics.flush_retry_keys.get());
        self.metrics.buffer_spilled.set(i64::from(spilled));
        if spilled && !was_spilled {
            tracing::warn!(
                buffered_keys = keys,
                "the backlog reached MEMORY_MAX_KEYS: newer acknowledged updates wait in the WAL on \
                 disk (durable) and are read back as flushes make room; is the database slow or away?"
            );
        }
        if keys >= self.max_keys || spilled {
            self.flush_early.notify_one();
        }
    }
}

impl Sink for Intake {
    fn committed(&mut self, records: Vec<(u64, Record)>) {
        // Acknowledged deletions are pending whether the buffer holds them
        // or they wait in the WAL (a refill does not count them again).
        let deletions = Record::deletions(&records);
        if deletions > 0 {
            self.metrics.gdpr_deletions_pending.add(deletions as i64);
        }
        self.hold(|buffer| buffer.committed(records));
    }

    fn spilled_after(&self) -> Option<u64> {
        self.buffer
            .lock()
            .expect("buffer lock poisoned")
            .spilled_after()
    }

    fn refill(&mut self, records: Vec<(u64, Record)>, to_the_end: bool) -> Refill {
        let mut refill = Refill::More;
        self.hold(|buffer| refill = buffer.refill(records, to_the_end));
        if refill == Refill::CaughtUp {
            tracing::info!(
                "the backlog fits in memory again: every acknowledged update is buffered"
            );
        }
        refill
    }
}
