//! The dedup marks of the log: remembered as frames commit, saved to the
//! marks database (and fsync'd) before any frame is removed, rebuilt from
//! the frames at replay, and swept from disk a bounded number of keys per
//! group commit once their bucket leaves the window.

use std::collections::BTreeMap;

use super::{Layout, WalStore};
use crate::clock::unix_ms;
use crate::rules::Record;
use crate::wal::dedup::{mark_of, Mark};
use crate::wal::layout::{bucket_prefix, encode_marks, marks_key};
use crate::wal::legacy;
use crate::wal::{codec, Result};

/// Marks per key of the marks database. sled splits a leaf past 16 keys and
/// writes a page over 128 KiB as a file of its own ("blob", created, synced
/// and deleted again at the next rewrite): 256 marks (4 KiB) per key keep a
/// leaf at 64 KiB. One key per save at 10,000 events/s (160 KiB) made every
/// save rewrite a 900 KB blob.
const MARKS_PER_KEY: usize = 256;

/// Marks keys written per sled batch when marks are saved.
const KEYS_PER_BATCH: usize = 16;

/// Expired mark keys removed from disk per group commit: small, so a sweep
/// spreads over many commits instead of stalling one (a bucket has a key per
/// truncation it saw; older builds wrote one per group commit or per event).
const SWEEP_PER_COMMIT: usize = 256;
impl WalStore {
    /// Event ids of the frames in the log (within the window) that are not
    /// among the saved marks: what replay would add. Reads every frame.
    pub(super) fn unsaved_marks(&self) -> Result<usize> {
        let now_bucket = self.dedup.bucket_of(unix_ms());
        let mut unsaved = std::collections::HashSet::new();
        for entry in self.live.iter().filter(|e| e.layout == Layout::Frame) {
            let Some(bytes) = self.db.get(entry.key())? else {
                continue;
            };
            let Ok((head, records)) = codec::decode_frame(&bytes) else {
                continue; // counted among the corrupt entries
            };
            let Some((_, marks)) = self.frame_marks(head.written_ms, &records, now_bucket) else {
                continue; // older than the window
            };
            unsaved.extend(marks.filter(|mark| !self.dedup.contains(*mark)));
        }
        Ok(unsaved.len())
    }

    /// The bucket and the dedup marks of a frame written at `written_ms` (one
    /// per event: an event's records are next to each other in its frame),
    /// or None when the frame is older than the window.
    pub(super) fn frame_marks<'a>(
        &self,
        written_ms: i64,
        records: &'a [Record],
        now_bucket: u64,
    ) -> Option<(u64, impl Iterator<Item = Mark> + 'a)> {
        let bucket = self.dedup.bucket_of(u64::try_from(written_ms).unwrap_or(0));
        if self.dedup.is_expired(bucket, now_bucket) {
            return None;
        }
        let mut previous = None;
        let marks = records.iter().filter_map(move |record| {
            let id = record.event_id();
            if id.is_empty() || previous == Some(id) {
                return None;
            }
            previous = Some(id);
            Some(mark_of(id))
        });
        Some((bucket, marks))
    }

    /// Remembers the event ids of a frame's records, written at `written_ms`,
    /// as dedup marks (within the window), to be saved before it is removed.
    pub(super) fn rebuild_marks(&mut self, written_ms: i64, records: &[Record], now_bucket: u64) {
        let Some((bucket, marks)) = self.frame_marks(written_ms, records, now_bucket) else {
            return;
        };
        if self.dedup.dropped_early(bucket) {
            return; // over DEDUP_MAX_MARKS at open: forgotten, and counted, already
        }
        // Marks saved before (loaded at open) are kept and saved already:
        // filed again they would count twice against DEDUP_MAX_MARKS, in the
        // newest bucket, and push real ids out early.
        let marks: Vec<Mark> = marks.collect();
        let marks: Vec<Mark> = marks
            .into_iter()
            .filter(|&mark| !self.dedup.contains(mark))
            .collect();
        for &mark in &marks {
            self.remember_mark(bucket, mark);
        }
        self.marks_durable(bucket, marks);
    }

    /// Forgets buckets past the window and removes a bounded number of their
    /// mark keys from disk: from the marks database (its own batch, made
    /// durable with the next save) and, for logs of older builds, from the
    /// log (`batch`).
    pub(in crate::wal) fn expire_marks(&mut self, now_bucket: u64, batch: &mut sled::Batch) {
        self.sweep.extend(self.dedup.expire(now_bucket));
        let mut budget = SWEEP_PER_COMMIT;
        let mut marks_batch = sled::Batch::default();
        let mut marks_removed = 0;
        while let Some(&bucket) = self.sweep.front() {
            let mut removed = 0;
            let places = [
                (true, bucket_prefix(bucket)),
                (false, bucket_prefix(bucket)),
                (false, legacy::bucket_prefix(bucket)),
            ];
            for (in_marks_db, prefix) in places {
                let (db, batch) = if in_marks_db {
                    (&self.marks_db, &mut marks_batch)
                } else {
                    (&self.db, &mut *batch)
                };
                for key in db.scan_prefix(prefix).keys().take(budget - removed) {
                    match key {
                        Ok(key) => {
                            batch.remove(key);
                            removed += 1;
                            marks_removed += usize::from(in_marks_db);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot scan expired dedup marks");
                            budget = removed;
                            break;
                        }
                    }
                }
            }
            if removed < budget {
                self.sweep.pop_front();
                budget -= removed;
            } else {
                break;
            }
        }
        // Even an empty sled batch writes to the log; most commits sweep nothing.
        if marks_removed == 0 {
            return;
        }
        if let Err(e) = self.marks_db.apply_batch(marks_batch) {
            // Left on disk, the keys are found and expired again at the next start.
            tracing::warn!(error = %e, "cannot remove expired dedup marks");
        }
    }

    /// Remembers a mark for deduplication, dropping the oldest buckets early
    /// past the cap (counted by [`WalStore::take_evicted_early`]).
    pub(in crate::wal) fn remember_mark(&mut self, bucket: u64, mark: Mark) {
        let evicted = self.dedup.insert(bucket, mark);
        self.sweep.extend(evicted);
    }

    /// The marks dropped early to stay under DEDUP_MAX_MARKS since the last
    /// call, whether at open, in the replay or by new events.
    pub(in crate::wal) fn take_evicted_early(&mut self) -> u64 {
        self.dedup.take_evicted_early()
    }

    /// Queues for the marks database the marks of a frame that is durable
    /// (never before: a saved mark whose frame is then lost to a crash would
    /// answer the client's retry as a duplicate of nothing).
    pub(in crate::wal) fn marks_durable(
        &mut self,
        bucket: u64,
        marks: impl IntoIterator<Item = Mark>,
    ) {
        self.pending_marks
            .extend(marks.into_iter().map(|mark| (bucket, mark)));
    }

    /// Writes the marks not yet saved to the marks database (a key per time
    /// bucket) and fsyncs it. Called before any frame is removed from the log:
    /// until then the frame itself carries its marks.
    pub(in crate::wal) fn save_marks(&mut self) -> Result<()> {
        if self.pending_marks.is_empty() {
            return Ok(());
        }
        let mut by_bucket: BTreeMap<u64, Vec<Mark>> = BTreeMap::new();
        for (bucket, mark) in self.pending_marks.drain(..) {
            // A bucket expired or dropped early is not written back.
            if self.dedup.keeps(bucket) {
                by_bucket.entry(bucket).or_default().push(mark);
            }
        }
        // Each key stands alone (a save cut short by a crash leaves its frames
        // in the log), so the keys go in small batches: one sled batch copies
        // a leaf per key and frees nothing until it ends, and replay may save
        // a million marks at once.
        let keys: Vec<_> = by_bucket
            .iter()
            .flat_map(|(bucket, marks)| marks.chunks(MARKS_PER_KEY).map(move |c| (*bucket, c)))
            .collect();
        for batch_keys in keys.chunks(KEYS_PER_BATCH) {
            let mut batch = sled::Batch::default();
            for (bucket, chunk) in batch_keys {
                batch.insert(&marks_key(*bucket, self.next_chunk), encode_marks(chunk));
                self.next_chunk += 1;
            }
            self.marks_db.apply_batch(batch)?;
        }
        self.marks_db.flush()?;
        self.marks_file.sync_all()?;
        Ok(())
    }
}
