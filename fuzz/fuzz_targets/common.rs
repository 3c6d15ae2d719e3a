//! Invariants shared by the decode targets.

use challenge_event_handler::event::{Event, EventError, EventKind, TimeSource};
use challenge_event_handler::event::MAX_ID_LEN;
use challenge_event_handler::rules::{GoalDef, GoalIndex, GoalKind, Record, Source};
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
            if let EventKind::Stat {
                stat_code,
                latest_value,
                inc,
            } = &event.kind
            {
                assert!(!stat_code.is_empty());
                assert!(latest_value.is_finite() && inc.is_finite());
            }
            let records = index(&event).records(&event);
            if event.kind == EventKind::GdprDeletion {
                assert!(matches!(records.as_slice(), [Record::Delete(d)] if d.user_id == event.user_id));
            }
            // Every record the event makes round-trips through the WAL codec.
            for record in records {
                let bytes = codec::encode(&record);
                assert!(bytes.len() < codec::MAX_RECORD_BYTES);
                assert_eq!(codec::decode(&bytes).unwrap(), record);
            }
        }
    }
}

/// One goal of each kind on the event's own stat code (and on logins).
fn index(event: &Event) -> GoalIndex {
    let stat = match &event.kind {
        EventKind::Stat { stat_code, .. } => Some(stat_code.clone()),
        EventKind::Login | EventKind::GdprDeletion => None,
    };
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
        kinds
            .into_iter()
            .filter(|k| stat.is_some() || *k != GoalKind::Absolute)
            .enumerate()
            .map(|(i, kind)| GoalDef {
                challenge_id: "c".into(),
                goal_id: format!("g{i}"),
                kind,
                source,
                stat_code: stat.clone(),
                target: 10,
                default_assigned: i % 2 == 0,
            })
            .collect(),
    )
}
