//! Invariants shared by the decode targets.

use challenge_event_handler::event::{Event, EventError, EventKind, TimeSource};
use challenge_event_handler::event::MAX_ID_LEN;
use challenge_event_handler::rules::m5::{self, Rotation, Schedule};
use challenge_event_handler::rules::{
    Generation, GoalDef, GoalIndex, GoalKind, GoalRule, Op, Record, Source,
};
use challenge_event_handler::wal::codec;

/// A fixed "now", so runs are reproducible.
pub const NOW: i64 = 1_767_225_600_000;

/// A body that is not a valid message: INVALID_ARGUMENT naming the type.
#[allow(dead_code)]
pub fn check_malformed(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status
        .message()
        .starts_with("the request body is not a valid "));
}

pub fn check(result: Result<(Event, TimeSource), EventError>) {
    match result {
        Err(e) => {
            let status = tonic::Status::from(e.clone());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.message(), e.to_string());
        }
        Ok((event, _)) => {
            assert!(!event.user_id.is_empty());
            assert!(event.user_id.chars().count() <= MAX_ID_LEN);
            // What reaches PostgreSQL as text holds no NUL (it would fail
            // every flush), nor a log line any other control character.
            for text in [&event.user_id, &event.namespace, &event.id] {
                assert!(!text.chars().any(char::is_control), "{text:?}");
            }
            if let EventKind::Stat { stat_code, .. } = &event.kind {
                assert!(!stat_code.chars().any(char::is_control), "{stat_code:?}");
            }
            if let EventKind::Stat {
                stat_code,
                latest_value,
                inc,
            } = &event.kind
            {
                assert!(!stat_code.is_empty());
                assert!(latest_value.is_finite() && inc.is_finite());
            }
            for index in [typed_index(&event), m5_index(&event)] {
                let records = index.records(&event);
                if event.kind == EventKind::GdprDeletion {
                    assert!(matches!(records.as_slice(), [Record::Delete(d)] if d.user_id == event.user_id));
                }
                // Every record the event makes round-trips through the WAL codec;
                // an M5 update counts at the acknowledgement, with a value ≥ 0.
                for record in records {
                    if let Record::Update(u) = &record {
                        if let Op::M5(step) = &u.op {
                            assert_eq!(u.event_time_ms, event.received_ms);
                            assert!(step.value.is_none_or(|v| v >= 0));
                        }
                    }
                    let bytes = codec::encode(&record);
                    assert!(bytes.len() < codec::MAX_RECORD_BYTES);
                    assert_eq!(codec::decode(&bytes).unwrap(), record);
                }
            }
        }
    }
}

/// The event's stat code, if it has one.
fn code_of(event: &Event) -> Option<String> {
    match &event.kind {
        EventKind::Stat { stat_code, .. } => Some(stat_code.clone()),
        EventKind::Login | EventKind::GdprDeletion => None,
    }
}

/// M5 goals on the event's stat code (or `login_count` for logins): absolute,
/// relative, and relative with each rotation.
fn m5_index(event: &Event) -> GoalIndex {
    let code = code_of(event).unwrap_or_else(|| "login_count".into());
    let source = if code_of(event).is_some() {
        Source::Statistic
    } else {
        Source::Login
    };
    let rotation = |schedule| {
        Some(Rotation {
            schedule,
            reset_progress: true,
            allow_reselection: false,
        })
    };
    let goals = [
        (false, None),
        (true, None),
        (true, rotation(Schedule::Daily)),
        (true, rotation(Schedule::Weekly)),
        (true, rotation(Schedule::Monthly)),
    ];
    GoalIndex::new(
        Generation::M5,
        goals
            .into_iter()
            .enumerate()
            .map(|(i, (relative, rotation))| GoalDef {
                challenge_id: "c".into(),
                goal_id: format!("m{i}"),
                rule: GoalRule::M5(m5::Goal { relative, rotation }),
                source,
                stat_code: Some(code.clone()),
                target: 10,
                default_assigned: i % 2 == 0,
            })
            .collect(),
    )
}

/// One goal of each kind on the event's own stat code (and on logins).
fn typed_index(event: &Event) -> GoalIndex {
    let stat = code_of(event);
    let source = if stat.is_some() {
        Source::Statistic
    } else {
        Source::Login
    };
    let kinds = [
        GoalKind::Absolute,
        GoalKind::Increment,
        GoalKind::DailyIncrement,
        GoalKind::Daily,
    ];
    GoalIndex::new(
        Generation::Typed,
        kinds
            .into_iter()
            .filter(|k| stat.is_some() || *k != GoalKind::Absolute)
            .enumerate()
            .map(|(i, kind)| GoalDef {
                challenge_id: "c".into(),
                goal_id: format!("g{i}"),
                rule: GoalRule::Typed(kind),
                source,
                stat_code: stat.clone(),
                target: 10,
                default_assigned: i % 2 == 0,
            })
            .collect(),
    )
}
