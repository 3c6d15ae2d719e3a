//! Goal index and progress rules: `Event × goals → [Record]`, pure and without I/O.
//!
//! A [`Record`] is what the WAL stores: an [`Update`] of one user-goal row or a
//! GDPR [`Deletion`] of all of a user's rows. Records are self-contained
//! (docs/DESIGN.md, invariant 7): an update carries the user, goal, challenge,
//! namespace, target, whether the goal is assigned by default, the operation
//! (with the goal's rules) and the event's time and id, so replaying the WAL
//! never needs today's `challenges.json`.
//!
//! Two generations of `challenges.json`, one rule book each:
//! [`typed`] (goal `type` absolute / increment / daily) and [`m5`]
//! (`progressMode` and `rotation`); both apply to a [`row::Row`].

pub mod m5;
pub mod row;
pub mod typed;

use std::collections::HashMap;
use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::event::{Event, EventKind};

const DAY_MS: i64 = 86_400_000;

/// How a type-rules goal's progress moves (docs/DESIGN.md, "Progress rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoalKind {
    /// progress = the stat's latest value; the newest event wins.
    Absolute,
    /// progress += the stat's `inc` (1 if absent or ≤ 0), or 1 per login.
    Increment,
    /// progress += 1 at most once per user-goal per UTC day.
    DailyIncrement,
    /// completed once per UTC day (re-completes on a later day).
    Daily,
}

/// Which generation of rules a goal follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoalRule {
    /// A file without `progressMode` or `rotation`: the goal's `type`.
    Typed(GoalKind),
    /// AccelByte's current generation: `progressMode` and `rotation`.
    M5(m5::Goal),
}

/// Which generation a whole `challenges.json` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generation {
    /// Goal `type` absolute / increment / daily (the seed and AccelByte's M4 files).
    #[default]
    Typed,
    /// `requirement.progressMode` and goal-level `rotation` (AccelByte's M5 files).
    M5,
}

impl Generation {
    pub fn describe(self) -> &'static str {
        match self {
            Generation::Typed => "type rules (goal \"type\": absolute / increment / daily)",
            Generation::M5 => "M5 rules (\"progressMode\" and \"rotation\")",
        }
    }
}

/// Which events feed a goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Login,
    Statistic,
}

/// One goal of `challenges.json`, as far as progress is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalDef {
    pub challenge_id: String,
    pub goal_id: String,
    pub rule: GoalRule,
    pub source: Source,
    pub stat_code: Option<String>,
    pub target: i32,
    /// `defaultAssigned`: the challenge service gives every player this
    /// goal's row when it initializes the player; otherwise the row exists
    /// only once the player activates the goal.
    pub default_assigned: bool,
}

/// Goals by the events that move them; built once, O(1) lookup per event.
#[derive(Debug, Default)]
pub struct GoalIndex {
    generation: Generation,
    goals: Vec<Arc<GoalDef>>,
    /// Type rules: the login goals. M5: the goals of the login goals' stat codes.
    login: Vec<Arc<GoalDef>>,
    /// Type rules: statistic goals by stat code. M5: every goal by stat
    /// code, for the codes some statistic goal uses.
    by_stat: HashMap<String, Vec<Arc<GoalDef>>>,
}

impl GoalIndex {
    pub fn new(generation: Generation, goals: Vec<GoalDef>) -> Self {
        let goals: Vec<Arc<GoalDef>> = goals.into_iter().map(Arc::new).collect();
        let mut index = GoalIndex {
            generation,
            goals: goals.clone(),
            ..GoalIndex::default()
        };
        match generation {
            Generation::Typed => {
                for goal in goals {
                    match (goal.source, &goal.stat_code) {
                        (Source::Login, _) => index.login.push(goal),
                        (Source::Statistic, Some(code)) => {
                            index.by_stat.entry(code.clone()).or_default().push(goal)
                        }
                        (Source::Statistic, None) => {}
                    }
                }
            }
            Generation::M5 => {
                // AccelByte's handler: a login adds 1 to each login goal's stat
                // code, and a stat code (from a login or a stat event) moves
                // every goal that uses it, whatever its eventSource; a stat
                // event moves nothing unless a statistic goal uses its code.
                let mut by_code: HashMap<&str, Vec<Arc<GoalDef>>> = HashMap::new();
                for goal in &goals {
                    if let Some(code) = &goal.stat_code {
                        by_code.entry(code).or_default().push(goal.clone());
                    }
                }
                let mut login_codes: Vec<&str> = goals
                    .iter()
                    .filter(|g| g.source == Source::Login)
                    .filter_map(|g| g.stat_code.as_deref())
                    .collect();
                login_codes.sort_unstable();
                login_codes.dedup();
                for code in login_codes {
                    index.login.extend(by_code[code].iter().cloned());
                }
                for goal in &goals {
                    if let (Source::Statistic, Some(code)) = (goal.source, &goal.stat_code) {
                        index
                            .by_stat
                            .entry(code.clone())
                            .or_insert_with(|| by_code[code.as_str()].clone());
                    }
                }
            }
        }
        index
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// How many goals the index holds.
    pub fn len(&self) -> usize {
        self.goals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.goals.is_empty()
    }

    /// Every goal, in file order.
    pub fn goals(&self) -> impl Iterator<Item = &GoalDef> {
        self.goals.iter().map(|g| g.as_ref())
    }

    fn goals_for(&self, kind: &EventKind) -> &[Arc<GoalDef>] {
        match kind {
            EventKind::Login => &self.login,
            EventKind::GdprDeletion => &[],
            EventKind::Stat { stat_code, .. } => self
                .by_stat
                .get(stat_code)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        }
    }

    /// Whether M5 rules skip this event for a negative stat value (as
    /// AccelByte's handler does, with a warning), though goals use its code.
    pub fn skips_negative_value(&self, event: &Event) -> bool {
        match &event.kind {
            EventKind::Stat { latest_value, .. } => {
                self.generation == Generation::M5
                    && m5_value(*latest_value).is_none()
                    && !self.goals_for(&event.kind).is_empty()
            }
            _ => false,
        }
    }

    /// The records one event makes: an update per goal it moves (possibly
    /// none), or one deletion.
    pub fn records(&self, event: &Event) -> Vec<Record> {
        if event.kind == EventKind::GdprDeletion {
            return vec![Record::Delete(Deletion {
                user_id: event.user_id.clone(),
                namespace: event.namespace.clone(),
                event_time_ms: event.time_ms.max(event.received_ms),
                event_id: event.id.clone(),
            })];
        }
        let goals = self.goals_for(&event.kind);
        if self.skips_negative_value(event) {
            return Vec::new();
        }
        goals
            .iter()
            .map(|goal| {
                let (op, time_ms) = op_for(goal, event);
                Record::Update(Update {
                    user_id: event.user_id.clone(),
                    goal_id: goal.goal_id.clone(),
                    challenge_id: goal.challenge_id.clone(),
                    namespace: event.namespace.clone(),
                    target: goal.target,
                    creates_row: goal.default_assigned,
                    event_time_ms: time_ms,
                    event_id: event.id.clone(),
                    op,
                })
            })
            .collect()
    }
}

/// The operation and the time it counts at: the event's own time for the
/// type rules (days are the event's), the acknowledgement for M5 (periods
/// are decided by when the event was acknowledged).
fn op_for(goal: &GoalDef, event: &Event) -> (Op, i64) {
    let kind = match goal.rule {
        GoalRule::M5(rules) => {
            let (value, inc) = match &event.kind {
                EventKind::Stat {
                    latest_value, inc, ..
                } => (m5_value(*latest_value), *inc as i32),
                _ => (None, 1),
            };
            let step = m5::Step {
                goal: rules,
                value,
                inc,
            };
            return (Op::M5(step), event.received_ms);
        }
        GoalRule::Typed(kind) => kind,
    };
    let day = utc_day(event.time_ms);
    let op = match (kind, &event.kind) {
        (GoalKind::Absolute, EventKind::Stat { latest_value, .. }) => {
            Op::Set(saturate(*latest_value))
        }
        // Not reachable through a validated config (absolute goals are statistic goals);
        // a login moving an absolute goal counts as reaching 1.
        (GoalKind::Absolute, _) => Op::Set(1),
        (GoalKind::Increment, EventKind::Stat { inc, .. }) => Op::Add(increment_of(*inc)),
        (GoalKind::Increment, _) => Op::Add(1),
        (GoalKind::DailyIncrement, _) => Op::CountDay(day),
        (GoalKind::Daily, _) => Op::CompleteDay(day),
    };
    (op, event.time_ms)
}

/// The row the handler creates for a goal assigned by default, where it
/// owns the table: as the challenge service's Initialize makes it (nothing
/// counted, `assigned_at` and `updated_at` at `at_ms`, `expires_at` the end
/// of the period for a rotating goal).
pub fn assigned_row(rule: &GoalRule, at_ms: i64) -> row::Row {
    let mut row = row::Row::assigned(row::micros(at_ms));
    if let GoalRule::M5(m5::Goal {
        rotation: Some(rotation),
        ..
    }) = rule
    {
        let start = rotation.schedule.period_start(at_ms);
        row.expires_at = Some(row::micros(rotation.schedule.next_boundary(start)));
    }
    row
}

/// The row `update` would find had the handler created it (see [`assigned_row`]).
pub fn new_row(update: &Update) -> row::Row {
    let rule = match &update.op {
        Op::M5(step) => GoalRule::M5(step.goal),
        _ => GoalRule::Typed(GoalKind::Increment),
    };
    assigned_row(&rule, update.event_time_ms)
}

/// What one update does to `row` on its own (None: nothing): the rule
/// book. `now` is the type rules' `updated_at`.
pub fn apply_update(row: &row::Row, update: &Update, now: row::Micros) -> Option<row::Row> {
    let time = update.event_time_ms;
    let target = update.target;
    match &update.op {
        Op::Set(value) => typed::set(row, *value, time, (*value >= target).then_some(time), now),
        Op::Add(delta) => typed::add(row, *delta, target, time, now),
        Op::CountDay(day) => typed::count_day(row, *day, target, time, now),
        Op::CompleteDay(day) => typed::complete_day(row, *day, time, now),
        Op::M5(step) => m5::apply(row, step, target, time),
    }
}

/// An M5 stat value: truncated toward zero (as Go's `int(float64)`), None
/// when negative (skipped), at most the INT column's maximum.
fn m5_value(latest_value: f64) -> Option<i32> {
    let value = latest_value.trunc();
    (value >= 0.0).then_some(value as i32)
}

/// A stat value as progress: truncated toward zero, clamped to `0..=i32::MAX`.
fn saturate(value: f64) -> i32 {
    // `as` saturates at the bounds and maps NaN to 0; NaN is rejected earlier anyway.
    (value as i32).max(0)
}

/// The increment of a stat event: its `inc` truncated, or 1 when that is ≤ 0.
pub fn increment_of(inc: f64) -> i32 {
    let delta = inc as i32;
    if delta <= 0 {
        1
    } else {
        delta
    }
}

/// Days since 1970-01-01 (UTC) of a Unix time in milliseconds.
pub fn utc_day(time_ms: i64) -> i32 {
    time_ms.div_euclid(DAY_MS) as i32
}

/// What one event does to one user-goal row.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Op {
    /// Absolute goal: progress becomes this value, unless the row saw a newer event.
    Set(i32),
    /// Increment goal: progress grows by this much.
    Add(i32),
    /// Daily increment goal: progress grows by 1 if this UTC day was not counted yet.
    CountDay(i32),
    /// Daily goal: completed for this UTC day.
    CompleteDay(i32),
    /// An M5 goal (`progressMode`, `rotation`): what the event does, with
    /// the goal's rules; the update's time is when it was acknowledged.
    M5(m5::Step),
}

/// One acknowledged change to one `user_goal_progress` row.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Update {
    pub user_id: String,
    pub goal_id: String,
    pub challenge_id: String,
    pub namespace: String,
    pub target: i32,
    /// The goal's `defaultAssigned`: where the handler owns the table, a
    /// player's first event gives them this goal's row; otherwise only an
    /// existing, active row changes.
    pub creates_row: bool,
    /// Unix milliseconds: for the type rules the event's time (its
    /// `timestamp`, else arrival); for M5 goals when it was acknowledged.
    pub event_time_ms: i64,
    pub event_id: String,
    pub op: Op,
}

/// An acknowledged GDPR data deletion: every row of `user_id` in `namespace`
/// goes, and nothing acknowledged before it may bring one back.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Deletion {
    pub user_id: String,
    pub namespace: String,
    /// The time the deletion holds from, Unix milliseconds: the event's
    /// `timestamp`, or its arrival when that is later (always, unless the
    /// producer's clock is ahead). Its tombstone compares it with the times
    /// of other replicas' updates: the type rules' are their events' own, and
    /// an M5 update's is its acknowledgement, so a deletion delivered late
    /// must not hold from its older timestamp (an update acknowledged
    /// elsewhere before the deletion arrived would be written after it).
    pub event_time_ms: i64,
    pub event_id: String,
}

/// What the WAL stores, one per sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Record {
    Update(Update),
    Delete(Deletion),
}

impl Record {
    /// How many of `records` are GDPR deletions (pending until a flush
    /// applies them, whether a buffer holds them or the WAL alone does).
    pub fn deletions(records: &[(u64, Record)]) -> usize {
        records
            .iter()
            .filter(|(_, r)| matches!(r, Record::Delete(_)))
            .count()
    }

    pub fn user_id(&self) -> &str {
        match self {
            Record::Update(u) => &u.user_id,
            Record::Delete(d) => &d.user_id,
        }
    }

    /// The id of the event that made it.
    pub fn event_id(&self) -> &str {
        match self {
            Record::Update(u) => &u.event_id,
            Record::Delete(d) => &d.event_id,
        }
    }
}

#[cfg(test)]
mod tests;
