//! How the updates of one user-goal coalesce: a value per goal kind and
//! its merge rule, the same rule the rule book applies one update at a
//! time (`src/model.rs` states both; the property tests check they agree).

use std::collections::BTreeMap;

use crate::rules::m5::Runs;

/// How two pending values for one key combine. `self` is the older one;
/// it becomes the two combined.
pub trait Coalesce: Sized {
    fn merge(&mut self, newer: Self);
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
    fn merge(&mut self, newer: Self) {
        if newer.event_time_ms >= self.event_time_ms {
            *self = Latest {
                reached_ms: self.reached_ms.or(newer.reached_ms),
                ..newer
            }
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
    fn merge(&mut self, newer: Self) {
        self.delta = self.delta.saturating_add(newer.delta);
        self.last_event_ms = self.last_event_ms.max(newer.last_event_ms);
    }
}

/// Daily increment goal: the UTC days to count, each with its first event
/// time. One by one, a day is counted only when it is later than the last day
/// counted, so a day that arrives after a later one is dropped here too: the
/// result never depends on where the flushes fell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Days(pub BTreeMap<i32, i64>);

impl Coalesce for Days {
    fn merge(&mut self, newer: Self) {
        let last = self.0.keys().next_back().copied();
        for (day, time) in newer.0 {
            if last.is_none_or(|last| day > last) {
                self.0.entry(day).or_insert(time);
            }
        }
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
    fn merge(&mut self, newer: Self) {
        // The same day keeps its first event; an older day changes nothing.
        if newer.day > self.day {
            *self = newer;
        }
    }
}

/// M5 goals: the runs of events, one per rotation period (`src/rules/m5.rs`).
impl Coalesce for Runs {
    fn merge(&mut self, newer: Self) {
        self.then(newer);
    }
}
