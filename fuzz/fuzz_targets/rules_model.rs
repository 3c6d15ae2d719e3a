//! Rules: any sequence of records (updates of every goal kind of both
//! generations — type rules, M5 absolute and relative with rotations — one
//! goal not assigned by default, GDPR deletions, on rows the challenge
//! service made claimed, inactive or reset) applied one by one to the rule
//! book (`model::apply_one`) ends in the same rows as the same sequence
//! through the coalescing buffer, flushed — or failing and merged back —
//! wherever the input says (`model::apply_batch`, what the store does),
//! whether the handler creates rows or only updates them.
#![no_main]

use challenge_event_handler::model::{self, After, Creates};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Step {
    user: u8,
    goal: u8,
    value: i32,
    offset_ms: i64,
    after: u8,
}

fuzz_target!(|steps: Vec<Step>| {
    let steps = &steps[..steps.len().min(256)];
    let records: Vec<_> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| model::sample_record(i, s.user, s.goal, s.value, s.offset_ms))
        .collect();
    let seeded = model::seeded_rows();
    for creates in [Creates::DefaultGoals, Creates::Nothing] {
        let one_by_one = model::one_by_one(&seeded, &records, creates);
        let coalesced = model::coalesced(&seeded, &records, creates, |i| match steps[i].after % 8 {
            0 => After::Flush,
            1 => After::FailedFlush,
            _ => After::Nothing,
        });
        assert!(
            model::disagreements(&one_by_one, &coalesced).is_empty(),
            "{creates:?}:\n{}",
            model::describe(&one_by_one, &coalesced)
        );
    }
});
