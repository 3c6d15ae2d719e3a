//! The reference semantics of a `user_goal_progress` row, in plain Rust.
//!
//! [`apply_one`] is the rule book (docs/DESIGN.md, "Progress rules"): what one
//! record, applied on its own in WAL order, does to the rows. [`apply_batch`]
//! is what the flusher's SQL statements (`src/store/postgres.rs`) do with a
//! coalesced [`Buffer`]: deletions first, then the upserts. The promise of
//! coalescing is that both end in the same rows, wherever the flushes fall;
//! the property tests and the `rules_model` fuzz target check it, and
//! `the_sql_statements_agree_with_the_rule_book` (tests/properties.rs) checks
//! the real SQL against [`apply_one`].
//!
//! Rows the challenge service changed (`claimed`, `is_active = false`) are not
//! modelled: neither path ever writes them. Rows it created (a goal the player
//! activated) are: see [`seeded_rows`]. The model has one namespace.

use std::collections::BTreeMap;

use crate::buffer::{Buffer, Key};
use crate::rules::{utc_day, Deletion, Op, Record, Update};

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
    /// it; and for absolute goals the last event time, which orders later values.
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
            && (self.kind != Kind::Absolute || self.last_event_ms == other.last_event_ms)
    }

    /// A row the challenge service created when the player activated a goal:
    /// nothing counted yet, no event seen (`last_event_at` NULL).
    pub fn activated(kind: Kind) -> Row {
        Row {
            kind,
            progress: 0,
            completed: false,
            completed_at: None,
            last_event_ms: NO_EVENT,
            last_counted_day: None,
        }
    }
}

/// `last_event_ms` of a row no event has touched (`last_event_at` NULL).
pub const NO_EVENT: i64 = i64::MIN;

pub type Rows = BTreeMap<Key, Row>;

fn key(update: &Update) -> Key {
    Key {
        user_id: update.user_id.clone(),
        goal_id: update.goal_id.clone(),
    }
}

/// `delta` more on top of `row` at `time`: progress is never capped (a
/// completed, unclaimed goal keeps counting; the INT column saturates), the
/// goal completes once progress reaches `target`, and `completed_at` is set once.
fn increment(
    row: Option<&Row>,
    kind: Kind,
    delta: i32,
    target: i32,
    time: i64,
    day: Option<i32>,
) -> Row {
    let progress = row.map_or(0, |r| r.progress).saturating_add(delta);
    let completed = row.is_some_and(|r| r.completed) || progress >= target;
    Row {
        kind,
        progress,
        completed,
        completed_at: row
            .and_then(|r| r.completed_at)
            .or(completed.then_some(time)),
        last_event_ms: row.map_or(time, |r| r.last_event_ms.max(time)),
        last_counted_day: day.or(row.and_then(|r| r.last_counted_day)),
    }
}

/// A daily increment: `day` counted once, and only after the last day counted.
fn count_day(row: Option<&Row>, day: i32, target: i32, time: i64) -> Option<Row> {
    if row.is_some_and(|r| r.last_counted_day >= Some(day)) {
        return None;
    }
    Some(increment(
        row,
        Kind::DailyIncrement,
        1,
        target,
        time,
        Some(day),
    ))
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

/// An absolute goal set to `value` by an event at `time` (`reached_ms`: when
/// an event reached the target): progress follows the newest value, completed
/// or not; a completed goal stays completed at its first completion.
fn set(row: Option<&Row>, value: i32, time: i64, reached_ms: Option<i64>) -> Option<Row> {
    if row.is_some_and(|r| r.last_event_ms > time) {
        return None;
    }
    let completed_at = row.and_then(|r| r.completed_at).or(reached_ms);
    Some(Row {
        kind: Kind::Absolute,
        progress: value,
        completed: row.is_some_and(|r| r.completed) || reached_ms.is_some(),
        completed_at,
        last_event_ms: time,
        last_counted_day: None,
    })
}

/// Every row of the deleted user goes.
fn delete(rows: &mut Rows, deletion: &Deletion) {
    rows.retain(|key, _| key.user_id != deletion.user_id);
}

/// One record on its own: the rule book.
pub fn apply_one(rows: &mut Rows, record: &Record) {
    let update = match record {
        Record::Delete(deletion) => return delete(rows, deletion),
        Record::Update(update) => update,
    };
    let key = key(update);
    let row = rows.get(&key);
    if row.is_none() && !update.creates_row {
        return; // not assigned: only the challenge service creates this row
    }
    let time = update.event_time_ms;
    let target = update.target;
    let next = match update.op {
        Op::Set(value) => set(row, value, time, (value >= target).then_some(time)),
        Op::Add(delta) => Some(increment(row, Kind::Increment, delta, target, time, None)),
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
    for pending in &batch.deletions {
        delete(rows, &pending.deletion);
    }
    let may_write =
        |rows: &Rows, key: &Key, creates_row: bool| creates_row || rows.contains_key(key);
    for (key, meta, latest) in batch.absolute.sorted() {
        if !may_write(rows, key, meta.creates_row) {
            continue;
        }
        if let Some(next) = set(
            rows.get(key),
            latest.value,
            latest.event_time_ms,
            latest.reached_ms,
        ) {
            rows.insert(key.clone(), next);
        }
    }
    for (key, meta, sum) in batch.increment.sorted() {
        if !may_write(rows, key, meta.creates_row) {
            continue;
        }
        let next = increment(
            rows.get(key),
            Kind::Increment,
            sum.delta,
            meta.target,
            sum.last_event_ms,
            None,
        );
        rows.insert(key.clone(), next);
    }
    for (key, meta, days) in batch.daily_increment.sorted() {
        // One statement round per day, oldest first.
        for (&day, &time) in &days.0 {
            if !may_write(rows, key, meta.creates_row) {
                continue;
            }
            if let Some(next) = count_day(rows.get(key), day, meta.target, time) {
                rows.insert(key.clone(), next);
            }
        }
    }
    for (key, meta, latest) in batch.daily.sorted() {
        if !may_write(rows, key, meta.creates_row) {
            continue;
        }
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

/// `records` applied one by one to `initial`.
pub fn one_by_one(initial: &Rows, records: &[Record]) -> Rows {
    let mut rows = initial.clone();
    for record in records {
        apply_one(&mut rows, record);
    }
    rows
}

/// `records` through the buffer into `initial`, flushed where `after(i)`
/// says and at the end.
pub fn coalesced(initial: &Rows, records: &[Record], after: impl Fn(usize) -> After) -> Rows {
    let mut rows = initial.clone();
    let mut buffer = Buffer::default();
    let mut held: Option<Buffer> = None;
    for (i, record) in records.iter().enumerate() {
        buffer.apply(i as u64 + 1, record.clone());
        let last = i + 1 == records.len();
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

/// Users of the sample universe.
const SAMPLE_USERS: u8 = 3;

/// A small universe for the property tests and the `rules_model` fuzzer: the
/// `i`-th record of a sequence, for user `user % 3` and `what % 6` —
/// 0 an absolute goal (target 10; values arrive in time order, as a user's
/// stat updates do), 1 an increment goal (target 12), 2 a daily-increment goal
/// (target 3), 3 a daily goal, 4 an increment goal that is not assigned by
/// default (target 4; see [`seeded_rows`]), 5 a GDPR deletion of the user —
/// at `offset_ms` (taken modulo ten days) after 2026-01-01 for the kinds that
/// take any order. Targets are low so that goals complete and keep counting.
pub fn sample_record(i: usize, user: u8, what: u8, value: i32, offset_ms: i64) -> Record {
    let any_time = SAMPLE_BASE_MS + offset_ms.rem_euclid(10 * 86_400_000);
    let in_order = SAMPLE_BASE_MS + i as i64 * 60_000;
    let user_id = format!("u{}", user % SAMPLE_USERS);
    let (goal_id, target, time, op, creates_row) = match what % 6 {
        0 => ("abs", 10, in_order, Op::Set(value.rem_euclid(21)), true),
        1 => ("inc", 12, any_time, Op::Add(value.rem_euclid(5) + 1), true),
        2 => ("dinc", 3, any_time, Op::CountDay(utc_day(any_time)), true),
        3 => (
            "daily",
            1,
            any_time,
            Op::CompleteDay(utc_day(any_time)),
            true,
        ),
        4 => ("opt", 4, any_time, Op::Add(value.rem_euclid(3) + 1), false),
        _ => {
            return Record::Delete(Deletion {
                user_id,
                namespace: "ns".into(),
                event_time_ms: in_order,
                event_id: format!("e{i}"),
            })
        }
    };
    Record::Update(Update {
        user_id,
        goal_id: goal_id.into(),
        challenge_id: "c".into(),
        namespace: "ns".into(),
        target,
        creates_row,
        event_time_ms: time,
        event_id: format!("e{i}"),
        op,
    })
}

/// The rows the challenge service made before the sample records: users u0
/// and u1 activated the goal "opt" (not assigned by default); u2 did not, so
/// events never give u2 an "opt" row.
pub fn seeded_rows() -> Rows {
    (0..2)
        .map(|u| {
            (
                Key {
                    user_id: format!("u{u}"),
                    goal_id: "opt".into(),
                },
                Row::activated(Kind::Increment),
            )
        })
        .collect()
}

/// The disagreements of `a` and `b`, one line each.
pub fn describe(a: &Rows, b: &Rows) -> String {
    disagreements(a, b)
        .iter()
        .map(|(k, x, y)| format!("{}/{}: {x:?} vs {y:?}", k.user_id, k.goal_id))
        .collect::<Vec<_>>()
        .join("\n")
}
