//! The coalescing buffer: acknowledged updates, merged per user-goal, waiting for
//! the flusher, and acknowledged GDPR deletions waiting to be applied.
//!
//! The WAL writer applies updates here in sequence order (invariant 3), so the
//! buffer always holds exactly the WAL sequence numbers `(W, last_seq]`: a swap
//! boundary is one sequence number. Each goal kind has its own map and its own
//! merge rule, the same rule the SQL applies on conflict (docs/DESIGN.md, "Progress
//! rules"); a merge is associative, so coalescing N updates and applying them one
//! by one give the same row — `src/model.rs` states both and the property tests
//! check that they agree.
//!
//! A deletion removes every pending entry of its user (they were acknowledged
//! before it) and is kept until the flush, which deletes the user's rows
//! before it writes anything; entries applied after it are the user's fresh
//! start. A failed flush merged back under a newer batch loses its entries of
//! users that the newer batch deleted, for the same reason.

use std::collections::{BTreeMap, HashMap};

use crate::rules::{Deletion, Op, Record, Update};

/// A `user_goal_progress` primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub user_id: String,
    pub goal_id: String,
}

/// What the row needs besides the progress: taken from the newest update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub challenge_id: String,
    pub namespace: String,
    pub target: i32,
    /// Whether the row may be created (the goal's `defaultAssigned`).
    pub creates_row: bool,
}

/// How two pending values for one key combine. `self` is the older one.
pub trait Coalesce: Sized {
    fn merge(self, newer: Self) -> Self;
}

/// Absolute goal: the value of the newest event (by event time; a tie goes to
/// the later one), and when the first event that reached the target was
/// applied. One by one, a goal completes at that event and stops moving, so a
/// value that later falls below the target must not undo the completion. An
/// event older than what came before it would be skipped one by one, so it is
/// skipped here too, reaching or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub value: i32,
    pub event_time_ms: i64,
    pub reached_ms: Option<i64>,
}

impl Coalesce for Latest {
    fn merge(self, newer: Self) -> Self {
        if newer.event_time_ms >= self.event_time_ms {
            Latest {
                reached_ms: self.reached_ms.or(newer.reached_ms),
                ..newer
            }
        } else {
            self
        }
    }
}

/// Increment goal: the sum of the deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub delta: i32,
    pub last_event_ms: i64,
}

impl Coalesce for Sum {
    fn merge(self, newer: Self) -> Self {
        Sum {
            delta: self.delta.saturating_add(newer.delta),
            last_event_ms: self.last_event_ms.max(newer.last_event_ms),
        }
    }
}

/// Daily increment goal: the UTC days to count, each with its first event
/// time. One by one, a day is counted only when it is later than the last day
/// counted, so a day that arrives after a later one is dropped here too: the
/// result never depends on where the flushes fell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Days(pub BTreeMap<i32, i64>);

impl Coalesce for Days {
    fn merge(mut self, newer: Self) -> Self {
        let last = self.0.keys().next_back().copied();
        for (day, time) in newer.0 {
            if last.is_none_or(|last| day > last) {
                self.0.entry(day).or_insert(time);
            }
        }
        self
    }
}

/// Daily goal: the latest UTC day completed, with the time of the first event
/// that arrived for that day (the one that completed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestDay {
    pub day: i32,
    pub event_time_ms: i64,
}

impl Coalesce for LatestDay {
    fn merge(self, newer: Self) -> Self {
        match newer.day.cmp(&self.day) {
            std::cmp::Ordering::Greater => newer,
            std::cmp::Ordering::Less => self,
            std::cmp::Ordering::Equal => self,
        }
    }
}

/// Pending values of one goal kind, keyed by user-goal.
#[derive(Debug, Clone)]
pub struct Pending<T> {
    map: HashMap<Key, (Meta, T)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            map: HashMap::new(),
        }
    }
}

impl<T: Coalesce> Pending<T> {
    fn add(&mut self, key: Key, meta: Meta, value: T) {
        match self.map.remove(&key) {
            Some((_, older)) => self.map.insert(key, (meta, older.merge(value))),
            None => self.map.insert(key, (meta, value)),
        };
    }

    /// Merges `older` (entries acknowledged before everything in `self`) back in.
    fn absorb_older(&mut self, older: Pending<T>) {
        for (key, (old_meta, old_value)) in older.map {
            match self.map.remove(&key) {
                Some((meta, newer)) => self.map.insert(key, (meta, old_value.merge(newer))),
                None => self.map.insert(key, (old_meta, old_value)),
            };
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries sorted by key, so every replica locks rows in the same order.
    pub fn sorted(&self) -> Vec<(&Key, &Meta, &T)> {
        let mut rows: Vec<_> = self.map.iter().map(|(k, (m, v))| (k, m, v)).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        rows
    }

    pub fn get(&self, key: &Key) -> Option<&(Meta, T)> {
        self.map.get(key)
    }

    /// Drops every entry of `user_id` in `namespace`.
    fn remove_user(&mut self, user_id: &str, namespace: &str) {
        self.map
            .retain(|key, (meta, _)| key.user_id != user_id || meta.namespace != namespace);
    }
}

/// An acknowledged GDPR deletion waiting for the flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeletion {
    pub seq: u64,
    pub deletion: Deletion,
}

/// Everything acknowledged and not yet in the database.
#[derive(Debug, Clone, Default)]
pub struct Buffer {
    pub absolute: Pending<Latest>,
    pub increment: Pending<Sum>,
    pub daily_increment: Pending<Days>,
    pub daily: Pending<LatestDay>,
    /// GDPR deletions, in sequence order; the flush applies them first.
    pub deletions: Vec<PendingDeletion>,
    /// The highest WAL sequence number applied.
    last_seq: u64,
    /// How many updates were applied (before coalescing).
    updates: u64,
}

impl Buffer {
    /// An empty buffer that continues after `last_seq`.
    pub fn starting_after(last_seq: u64) -> Self {
        Buffer {
            last_seq,
            ..Buffer::default()
        }
    }

    /// Applies the record with WAL sequence number `seq`. Callers apply in
    /// increasing `seq` order.
    pub fn apply(&mut self, seq: u64, record: Record) {
        debug_assert!(seq > self.last_seq || self.updates == 0);
        self.last_seq = self.last_seq.max(seq);
        self.updates += 1;
        match record {
            Record::Update(update) => self.apply_update(update),
            Record::Delete(deletion) => self.apply_deletion(seq, deletion),
        }
    }

    fn apply_deletion(&mut self, seq: u64, deletion: Deletion) {
        self.remove_user(&deletion.user_id, &deletion.namespace);
        self.deletions.push(PendingDeletion { seq, deletion });
    }

    fn remove_user(&mut self, user_id: &str, namespace: &str) {
        self.absolute.remove_user(user_id, namespace);
        self.increment.remove_user(user_id, namespace);
        self.daily_increment.remove_user(user_id, namespace);
        self.daily.remove_user(user_id, namespace);
    }

    fn apply_update(&mut self, update: Update) {
        let key = Key {
            user_id: update.user_id,
            goal_id: update.goal_id,
        };
        let meta = Meta {
            challenge_id: update.challenge_id,
            namespace: update.namespace,
            target: update.target,
            creates_row: update.creates_row,
        };
        let time = update.event_time_ms;
        match update.op {
            Op::Set(value) => {
                let reached_ms = (value >= meta.target).then_some(time);
                self.absolute.add(
                    key,
                    meta,
                    Latest {
                        value,
                        event_time_ms: time,
                        reached_ms,
                    },
                )
            }
            Op::Add(delta) => self.increment.add(
                key,
                meta,
                Sum {
                    delta,
                    last_event_ms: time,
                },
            ),
            Op::CountDay(day) => {
                self.daily_increment
                    .add(key, meta, Days(BTreeMap::from([(day, time)])))
            }
            Op::CompleteDay(day) => self.daily.add(
                key,
                meta,
                LatestDay {
                    day,
                    event_time_ms: time,
                },
            ),
        }
    }

    /// Distinct user-goal entries across all kinds.
    pub fn len(&self) -> usize {
        self.absolute.len() + self.increment.len() + self.daily_increment.len() + self.daily.len()
    }

    /// Nothing to flush: no entry and no deletion.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.deletions.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Updates applied before coalescing.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Takes everything out; `self` continues empty after the same sequence number.
    pub fn take(&mut self) -> Buffer {
        std::mem::replace(self, Buffer::starting_after(self.last_seq))
    }

    /// Puts back a buffer taken earlier whose flush failed. Its entries are older
    /// than everything applied since, and merge under the same rules.
    pub fn merge_back(&mut self, mut older: Buffer) {
        // What the older batch holds of a user deleted since was acknowledged
        // before that deletion.
        for pending in &self.deletions {
            let d = &pending.deletion;
            older.remove_user(&d.user_id, &d.namespace);
        }
        older.deletions.append(&mut self.deletions);
        self.deletions = older.deletions;
        self.absolute.absorb_older(older.absolute);
        self.increment.absorb_older(older.increment);
        self.daily_increment.absorb_older(older.daily_increment);
        self.daily.absorb_older(older.daily);
        self.last_seq = self.last_seq.max(older.last_seq);
        self.updates += older.updates;
    }
}

/// Replay (and anything else single-threaded) applies straight into a buffer.
impl crate::wal::Sink for Buffer {
    fn committed(&mut self, records: Vec<(u64, Record)>) {
        for (seq, record) in records {
            self.apply(seq, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(goal: &str, op: Op, time: i64) -> Record {
        Record::Update(Update {
            user_id: "u".into(),
            goal_id: goal.into(),
            challenge_id: "c".into(),
            namespace: "ns".into(),
            target: 10,
            creates_row: true,
            event_time_ms: time,
            event_id: String::new(),
            op,
        })
    }

    fn deletion(user: &str) -> Record {
        Record::Delete(Deletion {
            user_id: user.into(),
            namespace: "ns".into(),
            event_time_ms: 0,
            event_id: format!("gdpr-{user}"),
        })
    }

    #[test]
    fn a_deletion_drops_the_users_pending_entries_and_later_ones_start_afresh() {
        let mut b = Buffer::default();
        b.apply(1, update("inc", Op::Add(2), 1));
        b.apply(2, update("abs", Op::Set(4), 2));
        let mut other = update("inc", Op::Add(7), 3);
        if let Record::Update(u) = &mut other {
            u.user_id = "someone-else".into();
        }
        b.apply(3, other);
        b.apply(4, deletion("u"));
        assert!(b.absolute.is_empty());
        assert_eq!(b.increment.len(), 1, "only the other user's entry is left");
        b.apply(5, update("inc", Op::Add(3), 5));
        assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, 3);
        assert_eq!(b.deletions.len(), 1);
        assert_eq!(b.deletions[0].seq, 4);
        assert!(!b.is_empty());
    }

    #[test]
    fn a_failed_flush_merged_back_loses_what_a_newer_deletion_removed() {
        let mut b = Buffer::default();
        b.apply(1, update("inc", Op::Add(2), 1));
        b.apply(2, deletion("v"));
        let failed = b.take();
        b.apply(3, deletion("u"));
        b.apply(4, update("inc", Op::Add(5), 4));
        b.merge_back(failed);
        assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, 5);
        let seqs: Vec<u64> = b.deletions.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [2, 3], "deletions in sequence order");
    }

    fn key(goal: &str) -> Key {
        Key {
            user_id: "u".into(),
            goal_id: goal.into(),
        }
    }

    #[test]
    fn increments_sum_and_absolutes_keep_the_newest_event() {
        let mut b = Buffer::default();
        b.apply(1, update("inc", Op::Add(2), 10));
        b.apply(2, update("inc", Op::Add(3), 5));
        b.apply(3, update("abs", Op::Set(7), 20));
        b.apply(4, update("abs", Op::Set(3), 10)); // older event arriving later
        assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, 5);
        assert_eq!(b.absolute.get(&key("abs")).unwrap().1.value, 7);
        assert_eq!(b.len(), 2);
        assert_eq!(b.updates(), 4);
        assert_eq!(b.last_seq(), 4);
    }

    #[test]
    fn daily_increments_keep_one_per_day_and_daily_keeps_the_latest_day() {
        let mut b = Buffer::default();
        b.apply(1, update("di", Op::CountDay(5), 50));
        b.apply(2, update("di", Op::CountDay(5), 40));
        b.apply(3, update("di", Op::CountDay(6), 60));
        b.apply(4, update("d", Op::CompleteDay(6), 61));
        b.apply(5, update("d", Op::CompleteDay(5), 51));
        let days = &b.daily_increment.get(&key("di")).unwrap().1;
        assert_eq!(days.0, BTreeMap::from([(5, 50), (6, 60)]));
        assert_eq!(
            b.daily.get(&key("d")).unwrap().1,
            LatestDay {
                day: 6,
                event_time_ms: 61
            }
        );
        // A day arriving after a later one is not counted (as one by one).
        b.apply(6, update("di", Op::CountDay(4), 30));
        assert_eq!(
            b.daily_increment.get(&key("di")).unwrap().1 .0,
            BTreeMap::from([(5, 50), (6, 60)])
        );
    }

    #[test]
    fn an_absolute_goal_that_reached_its_target_stays_reached_when_the_value_falls() {
        let mut b = Buffer::default();
        b.apply(1, update("abs", Op::Set(4), 10));
        b.apply(2, update("abs", Op::Set(12), 20)); // target 10
        b.apply(3, update("abs", Op::Set(3), 30));
        b.apply(4, update("abs", Op::Set(50), 25)); // older than the last: skipped
        let latest = b.absolute.get(&key("abs")).unwrap().1;
        assert_eq!(
            latest,
            Latest {
                value: 3,
                event_time_ms: 30,
                reached_ms: Some(20)
            }
        );
    }

    #[test]
    fn a_failed_flush_merged_back_equals_never_having_swapped() {
        let ops = [
            update("inc", Op::Add(2), 1),
            update("abs", Op::Set(4), 2),
            update("di", Op::CountDay(1), 3),
            update("inc", Op::Add(5), 4),
            update("abs", Op::Set(1), 5),
            update("di", Op::CountDay(2), 6),
            update("d", Op::CompleteDay(2), 7),
        ];
        let mut straight = Buffer::default();
        for (i, u) in ops.iter().enumerate() {
            straight.apply(i as u64 + 1, u.clone());
        }
        let mut swapped = Buffer::default();
        for (i, u) in ops[..3].iter().enumerate() {
            swapped.apply(i as u64 + 1, u.clone());
        }
        let taken = swapped.take();
        assert!(swapped.is_empty());
        assert_eq!(taken.last_seq(), 3);
        for (i, u) in ops[3..].iter().enumerate() {
            swapped.apply(i as u64 + 4, u.clone());
        }
        swapped.merge_back(taken);
        assert_eq!(swapped.last_seq(), straight.last_seq());
        assert_eq!(swapped.increment.sorted(), straight.increment.sorted());
        assert_eq!(swapped.absolute.sorted(), straight.absolute.sorted());
        assert_eq!(
            swapped.daily_increment.sorted(),
            straight.daily_increment.sorted()
        );
        assert_eq!(swapped.daily.sorted(), straight.daily.sorted());
    }

    #[test]
    fn deltas_saturate_instead_of_overflowing() {
        let mut b = Buffer::default();
        b.apply(1, update("inc", Op::Add(i32::MAX), 1));
        b.apply(2, update("inc", Op::Add(i32::MAX), 2));
        assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, i32::MAX);
    }
}
