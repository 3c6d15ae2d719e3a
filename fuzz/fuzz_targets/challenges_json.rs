//! Arbitrary text as challenges.json (either generation): parsing never
//! panics; what it accepts is valid (ids within the table's limits, positive
//! targets, statistic goals with a stat code — M5: every goal — and a
//! rotation only on a relative goal) and what it rejects comes with at least
//! one problem.
#![no_main]

use challenge_event_handler::config::challenges;
use challenge_event_handler::event::MAX_ID_LEN;
use challenge_event_handler::rules::{Generation, GoalRule, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match challenges::parse(&text) {
        Ok(loaded) => {
            for goal in loaded.goals {
                assert!(!goal.goal_id.is_empty() && goal.goal_id.chars().count() <= MAX_ID_LEN);
                assert!(goal.target > 0);
                if goal.source == Source::Statistic || loaded.generation == Generation::M5 {
                    assert!(goal.stat_code.as_deref().is_some_and(|s| !s.is_empty()));
                }
                match (loaded.generation, goal.rule) {
                    (Generation::M5, GoalRule::M5(rules)) => {
                        assert!(rules.rotation.is_none() || rules.relative);
                    }
                    (Generation::Typed, GoalRule::Typed(_)) => {}
                    (generation, rule) => panic!("a {generation:?} file gave a {rule:?} goal"),
                }
            }
        }
        Err(problems) => assert!(!problems.is_empty()),
    }
});
