//! Goal index and progress rules: `Event × goals → [Record]`, pure and without I/O.
//!
//! A [`Record`] is what the WAL stores: an [`Update`] of one user-goal row or a
//! GDPR [`Deletion`] of all of a user's rows. Records are self-contained
//! (docs/DESIGN.md, invariant 7): an update carries the user, goal, challenge,
//! namespace, target, whether it may create the row, the operation and the
//! event's time and id, so replaying the WAL never needs today's
//! `challenges.json`.

use std::collections::HashMap;
use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::event::{Event, EventKind};

const DAY_MS: i64 = 86_400_000;

/// How a goal's progress moves (docs/DESIGN.md, "Progress rules").
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
    pub kind: GoalKind,
    pub source: Source,
    pub stat_code: Option<String>,
    pub target: i32,
    /// `defaultAssigned` (true when absent): an event may create this goal's
    /// row. When false, the challenge service creates the row when the player
    /// activates the goal, and an event only updates an existing, active row.
    pub default_assigned: bool,
}

/// Goals by the events that move them; built once, O(1) lookup per event.
#[derive(Debug, Default)]
pub struct GoalIndex {
    login: Vec<Arc<GoalDef>>,
    by_stat: HashMap<String, Vec<Arc<GoalDef>>>,
    goals: usize,
}

impl GoalIndex {
    pub fn new(goals: Vec<GoalDef>) -> Self {
        let mut index = GoalIndex {
            goals: goals.len(),
            ..GoalIndex::default()
        };
        for goal in goals.into_iter().map(Arc::new) {
            match (goal.source, &goal.stat_code) {
                (Source::Login, _) => index.login.push(goal),
                (Source::Statistic, Some(code)) => {
                    index.by_stat.entry(code.clone()).or_default().push(goal)
                }
                (Source::Statistic, None) => {}
            }
        }
        index
    }

    /// How many goals the index holds.
    pub fn len(&self) -> usize {
        self.goals
    }

    pub fn is_empty(&self) -> bool {
        self.goals == 0
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

    /// The records one event makes: an update per goal it moves (possibly
    /// none), or one deletion.
    pub fn records(&self, event: &Event) -> Vec<Record> {
        if event.kind == EventKind::GdprDeletion {
            return vec![Record::Delete(Deletion {
                user_id: event.user_id.clone(),
                namespace: event.namespace.clone(),
                event_time_ms: event.time_ms,
                event_id: event.id.clone(),
            })];
        }
        self.goals_for(&event.kind)
            .iter()
            .map(|goal| {
                Record::Update(Update {
                    user_id: event.user_id.clone(),
                    goal_id: goal.goal_id.clone(),
                    challenge_id: goal.challenge_id.clone(),
                    namespace: event.namespace.clone(),
                    target: goal.target,
                    creates_row: goal.default_assigned,
                    event_time_ms: event.time_ms,
                    event_id: event.id.clone(),
                    op: op_for(goal.kind, event),
                })
            })
            .collect()
    }
}

fn op_for(kind: GoalKind, event: &Event) -> Op {
    let day = utc_day(event.time_ms);
    match (kind, &event.kind) {
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
    }
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
}

/// One acknowledged change to one `user_goal_progress` row.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Update {
    pub user_id: String,
    pub goal_id: String,
    pub challenge_id: String,
    pub namespace: String,
    pub target: i32,
    /// Whether this update may create the row (the goal's `defaultAssigned`);
    /// when false it only changes a row that exists and is active.
    pub creates_row: bool,
    /// The event's time (its `timestamp`, else arrival), Unix milliseconds.
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
    /// The event's time (its `timestamp`, else arrival), Unix milliseconds.
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
mod tests {
    use super::*;

    fn goal(id: &str, kind: GoalKind, source: Source, stat: Option<&str>, target: i32) -> GoalDef {
        GoalDef {
            challenge_id: "c".into(),
            goal_id: id.into(),
            kind,
            source,
            stat_code: stat.map(Into::into),
            target,
            default_assigned: true,
        }
    }

    fn updates(index: &GoalIndex, event: &Event) -> Vec<Update> {
        index
            .records(event)
            .into_iter()
            .map(|r| match r {
                Record::Update(u) => u,
                Record::Delete(d) => panic!("unexpected deletion {d:?}"),
            })
            .collect()
    }

    fn stat(code: &str, latest: f64, inc: f64) -> Event {
        Event {
            id: "e1".into(),
            namespace: "ns".into(),
            user_id: "u1".into(),
            time_ms: 3 * DAY_MS + 5,
            kind: EventKind::Stat {
                stat_code: code.into(),
                latest_value: latest,
                inc,
            },
        }
    }

    #[test]
    fn one_stat_event_moves_every_goal_on_its_stat_code_and_nothing_else() {
        let index = GoalIndex::new(vec![
            goal(
                "abs",
                GoalKind::Absolute,
                Source::Statistic,
                Some("kills"),
                10,
            ),
            goal(
                "inc",
                GoalKind::Increment,
                Source::Statistic,
                Some("kills"),
                10,
            ),
            goal(
                "dinc",
                GoalKind::DailyIncrement,
                Source::Statistic,
                Some("kills"),
                10,
            ),
            goal("day", GoalKind::Daily, Source::Statistic, Some("kills"), 1),
            goal(
                "other",
                GoalKind::Increment,
                Source::Statistic,
                Some("deaths"),
                10,
            ),
            goal("login", GoalKind::Increment, Source::Login, None, 10),
        ]);
        let ops: Vec<_> = updates(&index, &stat("kills", 7.9, 2.5))
            .into_iter()
            .map(|u| (u.goal_id, u.op))
            .collect();
        assert_eq!(
            ops,
            [
                ("abs".to_string(), Op::Set(7)),
                ("inc".to_string(), Op::Add(2)),
                ("dinc".to_string(), Op::CountDay(3)),
                ("day".to_string(), Op::CompleteDay(3)),
            ]
        );
        assert!(index.records(&stat("unknown", 1.0, 1.0)).is_empty());
    }

    #[test]
    fn a_login_adds_one_to_login_increment_goals() {
        let index = GoalIndex::new(vec![goal(
            "login",
            GoalKind::Increment,
            Source::Login,
            None,
            3,
        )]);
        let mut event = stat("x", 0.0, 0.0);
        event.kind = EventKind::Login;
        let updates = updates(&index, &event);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].op, Op::Add(1));
        assert_eq!(updates[0].target, 3);
        assert_eq!(updates[0].event_id, "e1");
    }

    #[test]
    fn a_gdpr_deletion_is_one_record_whatever_the_goals() {
        let index = GoalIndex::new(vec![goal(
            "login",
            GoalKind::Increment,
            Source::Login,
            None,
            3,
        )]);
        let mut event = stat("x", 0.0, 0.0);
        event.kind = EventKind::GdprDeletion;
        assert_eq!(
            index.records(&event),
            [Record::Delete(Deletion {
                user_id: "u1".into(),
                namespace: "ns".into(),
                event_time_ms: event.time_ms,
                event_id: "e1".into(),
            })]
        );
    }

    #[test]
    fn an_update_carries_whether_its_goal_is_assigned_by_default() {
        let mut unassigned = goal("login", GoalKind::Increment, Source::Login, None, 3);
        unassigned.default_assigned = false;
        let index = GoalIndex::new(vec![unassigned]);
        let mut event = stat("x", 0.0, 0.0);
        event.kind = EventKind::Login;
        assert!(!updates(&index, &event)[0].creates_row);
    }

    #[test]
    fn increments_are_truncated_and_become_one_when_not_positive() {
        assert_eq!(increment_of(2.9), 2);
        assert_eq!(increment_of(0.0), 1);
        assert_eq!(increment_of(0.7), 1);
        assert_eq!(increment_of(-5.0), 1);
        assert_eq!(increment_of(1e300), i32::MAX);
    }

    #[test]
    fn absolute_values_are_clamped_into_the_int_column() {
        assert_eq!(saturate(-3.0), 0);
        assert_eq!(saturate(1e12), i32::MAX);
        assert_eq!(saturate(41.99), 41);
    }

    #[test]
    fn utc_days_split_at_midnight_and_handle_times_before_1970() {
        assert_eq!(utc_day(0), 0);
        assert_eq!(utc_day(DAY_MS - 1), 0);
        assert_eq!(utc_day(DAY_MS), 1);
        assert_eq!(utc_day(-1), -1);
    }
}
