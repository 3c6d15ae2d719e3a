//! The rules as a model, for the property tests, the store suite and the
//! `rules_model` fuzz target.
//!
//! [`apply_one`] is the rule book (docs/DESIGN.md, "Progress rules"): what
//! one record, applied on its own in WAL order, does to the rows — for
//! M5 goals what AccelByte's handler does with a flush after every event.
//! [`apply_batch`] is what a flush does with a coalesced [`Buffer`]:
//! deletions first, the rows of goals assigned by default created where
//! the handler owns the table, then each entry applied to its row
//! ([`Buffer::plan`], the same code the store runs). The promise of
//! coalescing is that both end in the same rows, wherever the flushes fall.
//!
//! A small sample universe ([`sample_record`], [`seeded_rows`]) gives the
//! tests goals of every kind of both generations, and rows the challenge
//! service made: activated, claimed, inactive, and reset by a rotation.

use std::collections::BTreeMap;

use crate::buffer::{Buffer, Key};
use crate::rules::m5::{self, Rotation, Schedule};
use crate::rules::row::{micros, Micros, Row, Status};
use crate::rules::{utc_day, Deletion, Op, Record, Update};

pub type Rows = BTreeMap<Key, Row>;

/// Who creates rows: the handler (the embedded store, or a table it
/// created), for goals assigned by default; or only the challenge service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creates {
    DefaultGoals,
    Nothing,
}

fn key(update: &Update) -> Key {
    Key {
        user_id: update.user_id.clone(),
        goal_id: update.goal_id.clone(),
    }
}

/// Every row of the deleted user goes.
fn delete(rows: &mut Rows, deletion: &Deletion) {
    rows.retain(|key, _| key.user_id != deletion.user_id);
}

/// One record on its own: the rule book.
pub fn apply_one(rows: &mut Rows, record: &Record, creates: Creates) {
    let update = match record {
        Record::Delete(deletion) => return delete(rows, deletion),
        Record::Update(update) => update,
    };
    let key = key(update);
    let created;
    let row = match rows.get(&key) {
        Some(row) => row,
        None if creates == Creates::DefaultGoals && update.creates_row => {
            created = crate::rules::new_row(update);
            &created
        }
        None => return, // only the challenge service creates this row
    };
    let now = micros(update.event_time_ms);
    if let Some(next) = crate::rules::apply_update(row, update, now) {
        rows.insert(key, next);
    }
}

/// A coalesced batch applied once, as the flusher does.
pub fn apply_batch(rows: &mut Rows, batch: &Buffer, creates: Creates, now: Micros) {
    for pending in &batch.deletions {
        delete(rows, &pending.deletion);
    }
    if creates == Creates::DefaultGoals {
        for (key, _, row) in batch.new_rows() {
            rows.entry(key).or_insert(row);
        }
    }
    let plan = batch.plan(|key| rows.get(key), now);
    for (_, key, row) in plan.writes {
        rows.insert(key.clone(), row);
    }
}

/// How the rows of a sample goal are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Type rules whose completion time the rules fix exactly (absolute, daily).
    TypedExact,
    /// Type rules where a coalesced run completes at its last event (increments).
    TypedSummed,
    /// M5 goals: every column; `completed_at` exact unless a coalesced run
    /// completed the goal among its later events.
    M5,
}

/// The kind of a goal of the sample universe, by id.
pub fn kind_of(goal_id: &str) -> Kind {
    match goal_id {
        "abs" | "daily" => Kind::TypedExact,
        "inc" | "dinc" | "opt" => Kind::TypedSummed,
        _ => Kind::M5,
    }
}

/// Whether two rows of one goal say the same to the challenge service.
/// The type rules write `updated_at` at the flush, so it is not compared
/// for them; `completed_at` is compared where the rules fix it.
pub fn agrees(kind: Kind, a: &Row, b: &Row) -> bool {
    let completion = match kind {
        Kind::TypedExact => a.completed_at == b.completed_at,
        Kind::TypedSummed | Kind::M5 => a.completed_at.is_some() == b.completed_at.is_some(),
    };
    let common = a.progress == b.progress
        && a.status == b.status
        && a.claimed_at == b.claimed_at
        && a.is_active == b.is_active
        && completion;
    match kind {
        Kind::TypedExact | Kind::TypedSummed => {
            common
                && a.state.last_counted_day == b.state.last_counted_day
                && (kind != Kind::TypedExact || a.state.last_event_at == b.state.last_event_at)
        }
        Kind::M5 => {
            common
                && a.baseline == b.baseline
                && a.expires_at == b.expires_at
                && a.updated_at == b.updated_at
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
                (Some(x), Some(y)) => agrees(kind_of(&k.goal_id), x, y),
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
pub fn one_by_one(initial: &Rows, records: &[Record], creates: Creates) -> Rows {
    let mut rows = initial.clone();
    for record in records {
        apply_one(&mut rows, record, creates);
    }
    rows
}

/// `records` through the buffer into `initial`, flushed where `after(i)`
/// says and at the end.
pub fn coalesced(
    initial: &Rows,
    records: &[Record],
    creates: Creates,
    after: impl Fn(usize) -> After,
) -> Rows {
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
            _ => apply_batch(&mut rows, &batch, creates, micros(SAMPLE_BASE_MS)),
        }
    }
    rows
}

/// 2026-01-01T00:00:00Z (a Thursday).
pub const SAMPLE_BASE_MS: i64 = 1_767_225_600_000;

/// Users of the sample universe.
const SAMPLE_USERS: u8 = 3;

/// Kinds of record in the sample universe (see [`sample_record`]).
pub const SAMPLE_KINDS: u8 = 10;

const HOUR_MS: i64 = 3_600_000;

fn rotating(schedule: Schedule, reset_progress: bool, allow_reselection: bool) -> m5::Goal {
    m5::Goal {
        relative: true,
        rotation: Some(Rotation {
            schedule,
            reset_progress,
            allow_reselection,
        }),
    }
}

/// A small universe for the property tests and the `rules_model` fuzzer: the
/// `i`-th record of a sequence, for user `user % 3` and `what % 10`.
///
/// Type rules (times anywhere in ten days from 2026-01-01, except the
/// absolute goal's, which arrive in order as a user's stat updates do):
/// 0 absolute (target 10), 1 increment (target 12), 2 daily increment
/// (target 3), 3 daily, 4 an increment goal not assigned by default
/// (target 4; see [`seeded_rows`]). 5 a GDPR deletion of the user.
/// M5 goals (acknowledged every 40 minutes from 2026-01-01, so runs cross
/// days and a Monday; kind 9 anywhere in ten days, as a clock that jumps):
/// 6 relative daily rotation with reset and reselection (target 5, stat),
/// 7 relative weekly rotation without reset (target 3, login),
/// 8 absolute (target 20, stat), 9 relative daily rotation with reset and
/// no reselection (target 2, login).
pub fn sample_record(i: usize, user: u8, what: u8, value: i32, offset_ms: i64) -> Record {
    let any_time = SAMPLE_BASE_MS + offset_ms.rem_euclid(10 * 86_400_000);
    let in_order = SAMPLE_BASE_MS + i as i64 * 60_000;
    let acked = SAMPLE_BASE_MS + i as i64 * 40 * 60_000;
    let user_id = format!("u{}", user % SAMPLE_USERS);
    let stat = |value: i32, inc: i32, goal: m5::Goal| {
        Op::M5(m5::Step {
            goal,
            value: Some(value),
            inc,
        })
    };
    let login = |goal: m5::Goal| {
        Op::M5(m5::Step {
            goal,
            value: None,
            inc: 1,
        })
    };
    let absolute = m5::Goal {
        relative: false,
        rotation: None,
    };
    let (goal_id, target, time, op, creates_row) = match what % SAMPLE_KINDS {
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
        6 => (
            "rel-day",
            5,
            acked,
            stat(
                value.rem_euclid(40),
                value.rem_euclid(7) - 1,
                rotating(Schedule::Daily, true, true),
            ),
            true,
        ),
        7 => (
            "rel-week",
            3,
            acked,
            login(rotating(Schedule::Weekly, false, false)),
            true,
        ),
        8 => (
            "abs5",
            20,
            acked,
            stat(value.rem_euclid(30), value.rem_euclid(4), absolute),
            false,
        ),
        9 => (
            "rel-once",
            2,
            any_time,
            login(rotating(Schedule::Daily, true, false)),
            true,
        ),
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

/// The rows the challenge service made before the sample records:
/// - u0 and u1 activated "opt" (not assigned by default; u2 never gets it);
/// - "abs5" (not assigned by default) exists for u0 and u1, claimed for u1;
/// - u0's "rel-day" was claimed the day before (reselection allowed);
/// - u1's "rel-day" was reset by the service (not_started, baseline kept);
/// - u2's "rel-once" is inactive, u1's was claimed (no reselection).
pub fn seeded_rows() -> Rows {
    let at = micros(SAMPLE_BASE_MS - 2 * HOUR_MS);
    let k = |u: u8, goal: &str| Key {
        user_id: format!("u{u}"),
        goal_id: goal.into(),
    };
    let assigned = || Row::assigned(at);
    let claimed = |progress: i32, baseline: Option<i32>| Row {
        progress,
        status: Status::Claimed,
        completed_at: Some(at - 1_000_000),
        claimed_at: Some(at),
        baseline,
        ..Row::assigned(at)
    };
    let mut rows = Rows::new();
    rows.insert(k(0, "opt"), assigned());
    rows.insert(k(1, "opt"), assigned());
    rows.insert(k(0, "abs5"), assigned());
    rows.insert(k(1, "abs5"), claimed(25, None));
    rows.insert(k(0, "rel-day"), claimed(12, Some(4)));
    rows.insert(
        k(1, "rel-day"),
        Row {
            baseline: Some(30),
            ..Row::assigned(micros(SAMPLE_BASE_MS + HOUR_MS))
        },
    );
    rows.insert(
        k(2, "rel-once"),
        Row {
            is_active: false,
            ..Row::assigned(at)
        },
    );
    rows.insert(k(1, "rel-once"), claimed(3, Some(1)));
    rows
}

/// The disagreements of `a` and `b`, one line each.
pub fn describe(a: &Rows, b: &Rows) -> String {
    disagreements(a, b)
        .iter()
        .map(|(k, x, y)| format!("{}/{}: {x:?} vs {y:?}", k.user_id, k.goal_id))
        .collect::<Vec<_>>()
        .join("\n")
}
