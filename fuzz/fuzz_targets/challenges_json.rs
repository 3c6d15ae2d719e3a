//! Arbitrary text as challenges.json: parsing never panics; what it accepts
//! is valid (ids within the table's limits, positive targets, statistic goals
//! with a stat code) and what it rejects comes with at least one problem.
#![no_main]

use challenge_event_handler::config::challenges;
use challenge_event_handler::event::MAX_ID_LEN;
use challenge_event_handler::rules::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match challenges::parse(&text) {
        Ok(goals) => {
            for goal in goals {
                assert!(!goal.goal_id.is_empty() && goal.goal_id.chars().count() <= MAX_ID_LEN);
                assert!(goal.target > 0);
                if goal.source == Source::Statistic {
                    assert!(goal.stat_code.as_deref().is_some_and(|s| !s.is_empty()));
                }
            }
        }
        Err(problems) => assert!(!problems.is_empty()),
    }
});
