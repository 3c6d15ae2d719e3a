//! The reference semantics of a `user_goal_progress` row, in plain Rust.
//!
//! [`apply_one`] is the rule book (DESIGN.md, "Progress rules"): what one
//! update, applied on its own in WAL order, does to a row. [`apply_batch`] is
//! what the flusher's SQL statements (`src/store/postgres.rs`) do with a
//! coalesced [`Buffer`]. The promise of coalescing is that both end in the same
//! row, wherever the flushes fall; the property tests and the `rules_model`
//! fuzz target check it, and `the_sql_statements_agree_with_the_rule_book`
//! (tests/properties.rs) checks the real SQL against [`apply_one`].
//!
//! Rows the challenge service changed (`claimed`, `is_active = false`) are not
//! modelled: neither path ever writes them.

use std::collections::BTreeMap;

use crate::buffer::{Buffer, Key};
use crate::rules::{utc_day, Op, Update};

/// What a row's goal type is, as far as the rules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Absolute,
    Increment,
    DailyIncrement,
    Daily,
}

impl Kind {
    fn of(op: &Op) -> Kind {
        match op {
            Op::Set(_) => Kind::Absolute,
            Op::Add(_) => Kind::Increment,
            Op::CountDay(_) => Kind::DailyIncrement,
            Op::CompleteDay(_) => Kind::Daily,
        }
    }
}

/// The columns the rules decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: Kind,
    pub progress: i32,
    pub completed: bool,
    /// Event time (Unix ms) of the completion.
    pub completed_at: Option<i64>,
    pub last_event_ms: i64,
    pub last_counted_day: Option<i32>,
}

impl Row {
    /// Whether two rows say the same to the challenge service: progress,
    /// status and counted day always; the completion time exactly where the
    /// rules fix it (absolute and daily goals), otherwise only whether there is
    /// one — an increment goal completed inside one batch gets the batch's last
    /// event time, at most one flush interval after the event that completed
    /// it; the last event time only while the goal is open, where it orders
    /// later absolute values.
    pub fn agrees_with(&self, other: &Row) -> bool {
        let exact_completion = matches!(self.kind, Kind::Absolute | Kind::Daily);
        self.kind == other.kind
            && self.progress == other.progress
            && self.completed == other.completed
            && self.last_counted_day == other.last_counted_day
            && if exact_completion {
                self.completed_at == other.completed_at
            } else {
                self.completed_at.is_some() == other.completed_at.is_some()
            }
            && (self.completed
                || self.kind != Kind::Absolute
                || self.last_event_ms == other.last_event_ms)
    }
}

pub type Rows = BTreeMap<Key, Row>;

fn key(update: &Update) -> Key {
    Key {
        user_id: update.user_id.clone(),
        goal_id: update.goal_id.clone(),
    }
}

/// `prev + delta` toward `target`: (progress, completed), progress capped at the target.
fn add(prev: i32, delta: i32, target: i32) -> (i32, bool) {
    let total = i64::from(prev) + i64::from(delta);
    (
        total.min(i64::from(target)) as i32,
        total >= i64::from(target),
    )
}

/// `delta` more toward `target` at `time`; `None` once the goal is completed.
fn increment(
    row: Option<&Row>,
    kind: Kind,
    delta: i32,
    target: i32,
    time: i64,
    day: Option<i32>,
) -> Option<Row> {
    if row.is_some_and(|r| r.completed) {
        return None;
    }
    let (progress, completed) = add(row.map_or(0, |r| r.progress), delta, target);
    Some(Row {
        kind,
        progress,
        completed,
        completed_at: completed.then_some(time),
        last_event_ms: row.map_or(time, |r| r.last_event_ms.max(time)),
        last_counted_day: day.or(row.and_then(|r| r.last_counted_day)),
    })
}

/// A daily increment: `day` counted once, and only after the last day counted.
fn count_day(row: Option<&Row>, day: i32, target: i32, time: i64) -> Option<Row> {
    if row.is_some_and(|r| r.last_counted_day >= Some(day)) {
        return None;
    }
    increment(row, Kind::DailyIncrement, 1, target, time, Some(day))
}

/// A daily goal: completed for `day`, when that is later than its last day.
fn complete_day(row: Option<&Row>, day: i32, time: i64) -> Option<Row> {
    if row.is_some_and(|r| r.last_counted_day >= Some(day)) {
        return None;
    }
    Some(Row {
        kind: Kind::Daily,
        progress: 1,
        completed: true,
        completed_at: Some(time),
        last_event_ms: time,
        last_counted_day: Some(day),
    })
}

/// One update on its own: the rule book.
pub fn apply_one(rows: &mut Rows, update: &Update) {
    let key = key(update);
    let row = rows.get(&key);
    let time = update.event_time_ms;
    let target = update.target;
    let next = match update.op {
        Op::Set(value) => {
            if row.is_some_and(|r| r.completed || r.last_event_ms > time) {
                return;
            }
            let completed = value >= target;
            Some(Row {
                kind: Kind::Absolute,
                progress: value.min(target),
                completed,
                completed_at: completed.then_some(time),
                last_event_ms: time,
                last_counted_day: None,
            })
        }
        Op::Add(delta) => increment(row, Kind::Increment, delta, target, time, None),
        Op::CountDay(day) => count_day(row, day, target, time),
        Op::CompleteDay(day) => complete_day(row, day, time),
    };
    if let Some(next) = next {
        debug_assert_eq!(next.kind, Kind::of(&update.op));
        rows.insert(key, next);
    }
}

/// A coalesced batch applied once, as the flusher's statements do.
pub fn apply_batch(rows: &mut Rows, batch: &Buffer) {
    for (key, meta, latest) in batch.absolute.sorted() {
        let row = rows.get(key);
        if row.is_some_and(|r| r.completed || r.last_event_ms > latest.event_time_ms) {
            continue;
        }
        let completed = latest.reached_ms.is_some();
        let next = Row {
            kind: Kind::Absolute,
            progress: if completed { meta.target } else { latest.value },
            completed,
            completed_at: latest.reached_ms,
            last_event_ms: latest.event_time_ms,
            last_counted_day: None,
        };
        rows.insert(key.clone(), next);
    }
    for (key, meta, sum) in batch.increment.sorted() {
        let row = rows.get(key);
        let next = increment(
            row,
            Kind::Increment,
            sum.delta,
            meta.target,
            sum.last_event_ms,
            None,
        );
        if let Some(next) = next {
            rows.insert(key.clone(), next);
        }
    }
    for (key, meta, days) in batch.daily_increment.sorted() {
        // One statement round per day, oldest first.
        for (&day, &time) in &days.0 {
            if let Some(next) = count_day(rows.get(key), day, meta.target, time) {
                rows.insert(key.clone(), next);
            }
        }
    }
    for (key, _meta, latest) in batch.daily.sorted() {
        if let Some(next) = complete_day(rows.get(key), latest.day, latest.event_time_ms) {
            rows.insert(key.clone(), next);
        }
    }
}

/// Keys whose rows disagree between `a` and `b`, with both rows.
pub fn disagreements<'a>(
    a: &'a Rows,
    b: &'a Rows,
) -> Vec<(&'a Key, Option<&'a Row>, Option<&'a Row>)> {
    let mut keys: Vec<&Key> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            let same = match (x, y) {
                (Some(x), Some(y)) => x.agrees_with(y),
                (None, None) => true,
                _ => false,
            };
            (!same).then_some((k, x, y))
        })
        .collect()
}

/// What follows an update in [`coalesced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// The buffer is flushed.
    Flush,
    /// The buffer is taken for a flush that fails; its batch is merged back
    /// under the next one (as the flusher does).
    FailedFlush,
}

/// `updates` applied one by one.
pub fn one_by_one(updates: &[Update]) -> Rows {
    let mut rows = Rows::new();
    for update in updates {
        apply_one(&mut rows, update);
    }
    rows
}

/// `updates` through the buffer, flushed where `after(i)` says and at the end.
pub fn coalesced(updates: &[Update], after: impl Fn(usize) -> After) -> Rows {
    let mut rows = Rows::new();
    let mut buffer = Buffer::default();
    let mut held: Option<Buffer> = None;
    for (i, update) in updates.iter().enumerate() {
        buffer.apply(i as u64 + 1, update.clone());
        let last = i + 1 == updates.len();
        let what = if last { After::Flush } else { after(i) };
        if what == After::Nothing {
            continue;
        }
        let mut batch = buffer.take();
        if let Some(older) = held.take() {
            batch.merge_back(older);
        }
        match what {
            After::FailedFlush => held = Some(batch),
            _ => apply_batch(&mut rows, &batch),
        }
    }
    rows
}

/// 2026-01-01T00:00:00Z.
const SAMPLE_BASE_MS: i64 = 1_767_225_600_000;

/// A small universe for the property tests and the `rules_model` fuzzer: the
/// `i`-th update of a sequence, for user `user % 3` and goal `goal % 4` —
/// 0 absolute (target 10; values arrive in time order, as a user's stat
/// updates do), 1 increment (target 12), 2 daily increment (target 3),
/// 3 daily — at `offset_ms` (taken modulo ten days) after 2026-01-01 for the
/// kinds that take any order.
pub fn sample_update(i: usize, user: u8, goal: u8, value: i32, offset_ms: i64) -> Update {
    let any_time = SAMPLE_BASE_MS + offset_ms.rem_euclid(10 * 86_400_000);
    let (goal_id, target, time, op) = match goal % 4 {
        0 => (
            "abs",
            10,
            SAMPLE_BASE_MS + i as i64 * 60_000,
            Op::Set(value.rem_euclid(21)),
        ),
        1 => ("inc", 12, any_time, Op::Add(value.rem_euclid(5) + 1)),
        2 => ("dinc", 3, any_time, Op::CountDay(utc_day(any_time))),
        _ => ("daily", 1, any_time, Op::CompleteDay(utc_day(any_time))),
    };
    Update {
        user_id: format!("u{}", user % 3),
        goal_id: goal_id.into(),
        challenge_id: "c".into(),
        namespace: "ns".into(),
        target,
        event_time_ms: time,
        event_id: format!("e{i}"),
        op,
    }
}

/// The disagreements of `a` and `b`, one line each.
pub fn describe(a: &Rows, b: &Rows) -> String {
    disagreements(a, b)
        .iter()
        .map(|(k, x, y)| format!("{}/{}: {x:?} vs {y:?}", k.user_id, k.goal_id))
        .collect::<Vec<_>>()
        .join("\n")
}
