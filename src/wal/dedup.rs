//! Event-id deduplication marks, kept for `DEDUP_WINDOW` in time buckets.
//!
//! A mark is the 128-bit xxh3 hash of the event id (16 bytes however long the
//! id). Marks live in ten buckets per window; a whole bucket is dropped when it
//! is older than the window, so memory is bounded by the event rate × window,
//! and by `max_marks`, past which the oldest bucket is dropped early (counted
//! in `dedup_evicted_early_total`).

use std::collections::VecDeque;

// Marks are xxh3 hashes already; a seeded fast hasher spreads them without
// SipHash's cost on every acknowledged event.
use foldhash::{HashSet, HashSetExt};
use std::time::Duration;

/// The compact form of an event id.
pub type Mark = u128;

pub fn mark_of(event_id: &str) -> Mark {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

const BUCKETS_PER_WINDOW: u64 = 10;

pub struct Dedup {
    bucket_ms: u64,
    /// Buckets kept besides the current one.
    kept: u64,
    buckets: VecDeque<(u64, HashSet<Mark>)>,
    marks: usize,
    max_marks: usize,
    /// Marks dropped early (past `max_marks`) and not yet reported.
    evicted_early: u64,
    /// The newest bucket dropped early, if any.
    dropped_through: Option<u64>,
}

impl Dedup {
    pub fn new(window: Duration, max_marks: usize) -> Self {
        let window_ms = (window.as_millis() as u64).max(1);
        let bucket_ms = (window_ms / BUCKETS_PER_WINDOW).max(1);
        Dedup {
            bucket_ms,
            kept: window_ms.div_ceil(bucket_ms),
            buckets: VecDeque::new(),
            marks: 0,
            max_marks: max_marks.max(1),
            evicted_early: 0,
            dropped_through: None,
        }
    }

    pub fn bucket_of(&self, unix_ms: u64) -> u64 {
        unix_ms / self.bucket_ms
    }

    /// Whether a bucket is old enough that all its marks are past the window.
    pub fn is_expired(&self, bucket: u64, now_bucket: u64) -> bool {
        bucket + self.kept < now_bucket
    }

    /// Whether marks of `bucket` are still kept (not expired, not dropped early).
    pub fn keeps(&self, bucket: u64) -> bool {
        self.buckets
            .front()
            .is_some_and(|&(oldest, _)| bucket >= oldest)
    }

    pub fn contains(&self, mark: Mark) -> bool {
        self.buckets
            .iter()
            .rev()
            .any(|(_, set)| set.contains(&mark))
    }

    pub fn len(&self) -> usize {
        self.marks
    }

    pub fn is_empty(&self) -> bool {
        self.marks == 0
    }

    /// Remembers `mark` in `bucket` (or the newest bucket if the clock went
    /// back). Returns the buckets dropped early to stay under `max_marks`.
    pub fn insert(&mut self, bucket: u64, mark: Mark) -> Vec<u64> {
        match self.buckets.back_mut() {
            Some((newest, set)) if *newest >= bucket => {
                if set.insert(mark) {
                    self.marks += 1;
                }
            }
            _ => {
                let mut set = HashSet::new();
                set.insert(mark);
                self.buckets.push_back((bucket, set));
                self.marks += 1;
            }
        }
        let mut evicted = Vec::new();
        while self.marks > self.max_marks && self.buckets.len() > 1 {
            let before = self.marks;
            let bucket = self.pop_oldest();
            self.evicted_early += (before - self.marks) as u64;
            self.dropped_through = self.dropped_through.max(Some(bucket));
            evicted.push(bucket);
        }
        evicted
    }

    /// Whether `bucket` was dropped early. Marks of it met again while a WAL
    /// opens (a frame replayed after its saved marks were loaded) stay
    /// forgotten: [`Self::insert`] would put them in the newest bucket,
    /// past the cap, and count them a second time when that goes.
    pub fn dropped_early(&self, bucket: u64) -> bool {
        self.dropped_through.is_some_and(|newest| bucket <= newest)
    }

    /// The marks dropped early since the last call (for
    /// `dedup_evicted_early_total`: marks, not buckets).
    pub fn take_evicted_early(&mut self) -> u64 {
        std::mem::take(&mut self.evicted_early)
    }

    /// Drops the buckets past the window; returns their ids.
    pub fn expire(&mut self, now_bucket: u64) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(&(oldest, _)) = self.buckets.front() {
            if !self.is_expired(oldest, now_bucket) {
                break;
            }
            expired.push(self.pop_oldest());
        }
        expired
    }

    fn pop_oldest(&mut self) -> u64 {
        let (id, set) = self.buckets.pop_front().expect("caller checked non-empty");
        self.marks -= set.len();
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_remembered_for_the_whole_window_and_then_forgotten() {
        let mut d = Dedup::new(Duration::from_secs(600), 1000);
        let t0 = 1_000_000_000u64;
        d.insert(d.bucket_of(t0), mark_of("e1"));
        for offset in [0, 300_000, 600_000] {
            assert!(d.expire(d.bucket_of(t0 + offset)).is_empty());
            assert!(d.contains(mark_of("e1")), "forgotten after {offset} ms");
        }
        assert_eq!(d.expire(d.bucket_of(t0 + 600_000 + 60_000)).len(), 1);
        assert!(!d.contains(mark_of("e1")));
        assert!(d.is_empty());
    }

    #[test]
    fn the_cap_drops_the_oldest_bucket_first() {
        let mut d = Dedup::new(Duration::from_secs(10), 2);
        assert!(d.insert(1, 1).is_empty());
        assert!(d.insert(1, 2).is_empty());
        assert_eq!(d.insert(2, 3), vec![1]);
        assert_eq!(d.take_evicted_early(), 2, "marks, not buckets");
        assert_eq!(d.take_evicted_early(), 0);
        assert!(d.dropped_early(1) && !d.dropped_early(2));
        assert!(d.contains(3) && !d.contains(1));
        assert_eq!(d.len(), 1);
        assert!(d.keeps(2) && !d.keeps(1));
    }

    #[test]
    fn a_clock_going_back_keeps_marks_in_the_newest_bucket() {
        let mut d = Dedup::new(Duration::from_secs(10), 100);
        d.insert(5, 1);
        d.insert(3, 2);
        assert_eq!(d.buckets.len(), 1);
        assert!(d.contains(2));
    }

    #[test]
    fn marks_are_stable_and_distinct() {
        assert_eq!(mark_of("abc"), mark_of("abc"));
        assert_ne!(mark_of("abc"), mark_of("abd"));
    }
}
