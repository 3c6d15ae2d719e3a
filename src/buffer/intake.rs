//! The WAL's sink in a running service: records the WAL has made durable
//! go into the buffer in sequence order, so data runs WAL → buffer →
//! flusher → store one way.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Buffer;
use crate::metrics::Metrics;
use crate::rules::Record;
use crate::wal::Sink;

/// The WAL's sink in a running service: committed records go into the shared
/// buffer in sequence order; a buffer of `max_keys` entries wakes the flusher early.
pub struct Intake {
    pub buffer: Arc<Mutex<Buffer>>,
    pub flush_early: Arc<Notify>,
    pub max_keys: usize,
    pub metrics: Arc<Metrics>,
}

impl Sink for Intake {
    fn committed(&mut self, records: Vec<(u64, Record)>) {
        let deletions = records
            .iter()
            .filter(|(_, r)| matches!(r, Record::Delete(_)))
            .count();
        let keys = {
            let mut buffer = self.buffer.lock().expect("buffer lock poisoned");
            buffer.committed(records);
            buffer.len()
        };
        self.metrics.buffer_size.set(keys as i64);
        if deletions > 0 {
            self.metrics.gdpr_deletions_pending.add(deletions as i64);
        }
        if keys >= self.max_keys {
            self.flush_early.notify_one();
        }
    }
}
