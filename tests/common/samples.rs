//! Generated record sequences over `model::sample_record`'s small universe,
//! shared by the property tests and the store suite.

#![allow(dead_code)]

use challenge_event_handler::model;
use challenge_event_handler::rules::Record;
use proptest::prelude::*;

const DAY_MS: i64 = 86_400_000;

/// One generated event: which user, which goal (or a deletion), a value and a time offset.
#[derive(Debug, Clone)]
pub struct Ev {
    pub user: u8,
    pub what: u8,
    pub value: i32,
    pub offset_ms: i64,
}

pub fn records(events: &[Ev]) -> Vec<Record> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| model::sample_record(i, e.user, e.what, e.value, e.offset_ms))
        .collect()
}

pub fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        // Deletions (what = 5) one time in 12; type rules (0..5) and M5
        // goals (6..10) equally often otherwise.
        (
            0u8..3,
            prop_oneof![11 => (0u8..9).prop_map(|w| if w < 5 { w } else { w + 1 }), 1 => Just(5u8)],
            any::<i32>(),
            0..10 * DAY_MS,
        )
            .prop_map(|(user, what, value, offset_ms)| Ev {
                user,
                what,
                value,
                offset_ms,
            }),
        0..80,
    )
}
