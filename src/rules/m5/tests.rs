//! The M5 rules, case by case. The cases marked `upstream` replay
//! AccelByte's own repository tests of the flush SQL
//! (extend-challenge-common, `postgres_goal_repository_rotation_test.go`)
//! as single events: a seeded row, one event, the columns they assert.

use super::*;
use crate::rules::row::Micros;

const HOUR_MS: i64 = 3_600_000;
/// 2026-03-04 (a Wednesday) 12:00 UTC: "now" in these cases.
const NOW: i64 = 1_772_625_600_000;

fn midnight() -> i64 {
    Schedule::Daily.period_start(NOW)
}

fn us(ms: i64) -> Micros {
    micros(ms)
}

fn daily(reset: bool, reselect: bool) -> Goal {
    Goal {
        relative: true,
        rotation: Some(Rotation {
            schedule: Schedule::Daily,
            reset_progress: reset,
            allow_reselection: reselect,
        }),
    }
}

const RELATIVE: Goal = Goal {
    relative: true,
    rotation: None,
};
const ABSOLUTE: Goal = Goal {
    relative: false,
    rotation: None,
};

fn seeded(progress: i32, status: Status, baseline: Option<i32>, updated_ms: i64) -> Row {
    let mut row = Row::assigned(us(updated_ms));
    row.progress = progress;
    row.status = status;
    row.baseline = baseline;
    if matches!(status, Status::Completed | Status::Claimed) {
        row.completed_at = Some(us(updated_ms - HOUR_MS));
    }
    if status == Status::Claimed {
        row.claimed_at = Some(us(updated_ms));
    }
    row
}

fn stat(goal: Goal, value: i32, inc: i32) -> Step {
    Step {
        goal,
        value: Some(value),
        inc,
    }
}

fn login(goal: Goal) -> Step {
    Step {
        goal,
        value: None,
        inc: 1,
    }
}

#[test]
fn periods_start_at_midnight_on_monday_and_on_the_first_in_utc() {
    // 2026-03-04 12:00 is a Wednesday.
    assert_eq!(Schedule::Daily.period_start(NOW), NOW - 12 * HOUR_MS);
    assert_eq!(
        Schedule::Weekly.period_start(NOW),
        NOW - 12 * HOUR_MS - 2 * 24 * HOUR_MS
    );
    assert_eq!(
        Schedule::Monthly.period_start(NOW),
        NOW - 12 * HOUR_MS - 3 * 24 * HOUR_MS
    );
    let start = Schedule::Monthly.period_start(NOW);
    // March has 31 days; February 2026 has 28.
    assert_eq!(
        Schedule::Monthly.next_boundary(start),
        start + 31 * 24 * HOUR_MS
    );
    let feb = Schedule::Monthly.period_start(start - 1);
    assert_eq!(start - feb, 28 * 24 * HOUR_MS);
    assert_eq!(
        Schedule::Weekly.next_boundary(Schedule::Weekly.period_start(NOW))
            - Schedule::Weekly.period_start(NOW),
        7 * 24 * HOUR_MS
    );
    // A Monday is its own week's start; the instant before midnight is the day before.
    let monday = Schedule::Weekly.period_start(NOW);
    assert_eq!(Schedule::Weekly.period_start(monday), monday);
    assert_eq!(
        Schedule::Daily.period_start(monday - 1),
        monday - 24 * HOUR_MS
    );
    // Far-off times do not panic.
    for t in [i64::MIN, i64::MAX, 0, -1] {
        for s in [Schedule::Daily, Schedule::Weekly, Schedule::Monthly] {
            let start = s.period_start(t);
            let _ = s.next_boundary(start);
        }
    }
}

#[test]
fn upstream_a_rotated_row_gets_a_new_baseline() {
    let row = seeded(105, Status::InProgress, Some(100), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &stat(daily(true, false), 108, 3), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (108, Some(105), Status::InProgress)
    );
    assert_eq!(r.expires_at, Some(us(midnight() + 24 * HOUR_MS)));
    assert_eq!(r.updated_at, us(NOW));
}

#[test]
fn upstream_a_completed_goal_is_reset_by_rotation() {
    let row = seeded(110, Status::Completed, Some(100), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &stat(daily(true, false), 115, 5), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (115, Some(110), Status::InProgress)
    );
    assert_eq!(r.completed_at, None);
}

#[test]
fn upstream_a_claimed_goal_without_reselection_is_untouched() {
    let row = seeded(
        110,
        Status::Claimed,
        Some(100),
        midnight() - 7 * 24 * HOUR_MS,
    );
    assert_eq!(
        apply(&row, &stat(daily(true, false), 120, 5), 10, NOW),
        None
    );
    // A goal without rotation never allows reselection.
    assert_eq!(apply(&row, &stat(RELATIVE, 120, 5), 10, NOW), None);
}

#[test]
fn upstream_an_absolute_goal_keeps_a_null_baseline() {
    let row = seeded(5, Status::InProgress, None, NOW - HOUR_MS);
    let r = apply(&row, &stat(ABSOLUTE, 8, 3), 20, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (8, None, Status::InProgress)
    );
}

#[test]
fn upstream_the_first_relative_event_sets_the_baseline() {
    let row = seeded(0, Status::NotStarted, None, NOW - 5 * 60_000);
    let r = apply(&row, &stat(RELATIVE, 153, 3), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (153, Some(150), Status::InProgress)
    );
}

#[test]
fn upstream_a_completed_goal_without_reset_stays_completed_across_a_rotation() {
    let row = seeded(110, Status::Completed, Some(100), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &stat(daily(false, false), 115, 5), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (115, Some(100), Status::Completed)
    );
    assert_eq!(r.completed_at, row.completed_at);
}

#[test]
fn upstream_a_claimed_goal_with_reselection_starts_again_in_a_new_period() {
    let row = seeded(
        110,
        Status::Claimed,
        Some(100),
        midnight() - 7 * 24 * HOUR_MS,
    );
    let r = apply(&row, &stat(daily(true, true), 120, 5), 10, NOW).unwrap();
    assert_eq!((r.status, r.baseline), (Status::InProgress, Some(115)));
    assert_eq!((r.claimed_at, r.completed_at), (None, None));
    // With an increment of its own that reaches the target it completes at once.
    let r = apply(&row, &stat(daily(true, true), 130, 12), 10, NOW).unwrap();
    assert_eq!(
        (r.status, r.completed_at, r.claimed_at),
        (Status::Completed, Some(us(NOW)), None)
    );
    // And without any increment it is not started.
    let r = apply(&row, &stat(daily(true, true), 110, 0), 10, NOW).unwrap();
    assert_eq!((r.status, r.completed_at), (Status::NotStarted, None));
}

#[test]
fn upstream_without_reset_a_rotation_keeps_the_baseline() {
    let row = seeded(105, Status::InProgress, Some(100), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &stat(daily(false, false), 108, 3), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (108, Some(100), Status::InProgress)
    );
}

#[test]
fn upstream_a_login_adds_one_and_rebaselines_on_rotation() {
    let row = seeded(5, Status::InProgress, Some(3), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &login(daily(true, false)), 5, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (6, Some(5), Status::InProgress)
    );
}

#[test]
fn a_claimed_goal_with_reselection_keeps_counting_within_its_period() {
    let row = seeded(110, Status::Claimed, Some(100), NOW - HOUR_MS);
    let r = apply(&row, &stat(daily(true, true), 125, 15), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.status, r.claimed_at),
        (125, Status::Claimed, row.claimed_at)
    );
}

#[test]
fn inactive_rows_never_change() {
    let mut row = seeded(1, Status::InProgress, Some(0), NOW - HOUR_MS);
    row.is_active = false;
    assert_eq!(apply(&row, &stat(RELATIVE, 50, 1), 10, NOW), None);
    assert_eq!(apply(&row, &login(ABSOLUTE), 1, NOW), None);
}

#[test]
fn quirk_a_completed_always_comes_with_completed_at() {
    // Upstream: relative, stale, no reset, baseline set, new − baseline ≥ target
    // completes the row but leaves completed_at NULL; here it gets the event's time.
    let row = seeded(105, Status::InProgress, Some(100), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &stat(daily(false, false), 115, 10), 10, NOW).unwrap();
    assert_eq!(
        (r.status, r.completed_at),
        (Status::Completed, Some(us(NOW)))
    );
}

#[test]
fn quirk_b_a_stale_row_without_reset_keeps_a_null_baseline_until_the_next_event() {
    let row = seeded(0, Status::NotStarted, None, midnight() - 2 * HOUR_MS);
    let goal = daily(false, false);
    let r = apply(&row, &stat(goal, 40, 4), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (40, None, Status::InProgress)
    );
    let r = apply(&r, &stat(goal, 43, 3), 10, NOW + 1).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (43, Some(40), Status::InProgress)
    );
}

#[test]
fn quirk_c_a_row_the_service_reset_is_rebaselined_by_the_next_event() {
    // The service's reset: progress 0, not_started, completed_at NULL, the
    // old baseline and the old period's expiry kept.
    let mut row = seeded(0, Status::NotStarted, Some(100), NOW - HOUR_MS);
    row.expires_at = Some(us(midnight() + 24 * HOUR_MS));
    // Upstream would compare 130 with the old baseline 100 and complete at once.
    let r = apply(&row, &stat(daily(true, true), 130, 2), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (130, Some(128), Status::InProgress)
    );
    assert_eq!(r.completed_at, None);
}

#[test]
fn a_late_event_without_reset_dates_the_expiry_to_the_rows_period() {
    let weekly = Goal {
        relative: true,
        rotation: Some(Rotation {
            schedule: Schedule::Weekly,
            reset_progress: false,
            allow_reselection: false,
        }),
    };
    let monday = Schedule::Weekly.period_start(NOW);
    let next_monday = Schedule::Weekly.next_boundary(monday);
    // The service made the row this Monday at 10:00, no expiry yet; the
    // event was acknowledged Sunday 23:59:59, last week.
    let row = seeded(0, Status::NotStarted, None, monday + 10 * HOUR_MS);
    assert_eq!(row.expires_at, None);
    let r = apply(&row, &stat(weekly, 20, 2), 10, monday - 1_000).unwrap();
    assert_eq!(r.expires_at, Some(us(next_monday)), "not this Monday, past");
    assert_eq!(r.updated_at, us(monday + 10 * HOUR_MS));
}

#[test]
fn a_not_started_row_a_new_period_left_keeps_its_baseline_as_upstream_keeps_it() {
    // Claimed yesterday; today's first event has no increment: not_started
    // with a real baseline (not the service's reset, which zeroes progress).
    let row = seeded(12, Status::Claimed, Some(9), midnight() - 2 * HOUR_MS);
    let goal = daily(true, true);
    let r = apply(&row, &stat(goal, 10, -2), 3, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (10, Some(12), Status::NotStarted)
    );
    let r = apply(&r, &stat(goal, 13, 3), 3, NOW + 1).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (13, Some(12), Status::InProgress),
        "upstream counts 13 - 12 = 1"
    );
    // The same when the stat's value went back to 0 reads as the service's
    // reset (docs/DESIGN.md): counted from the next event, where upstream
    // counts 3 - 50.
    let row = seeded(50, Status::Claimed, Some(40), midnight() - 2 * HOUR_MS);
    let r = apply(&row, &stat(goal, 0, -50), 3, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (0, Some(50), Status::NotStarted)
    );
    let r = apply(&r, &stat(goal, 3, 3), 3, NOW + 1).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (3, Some(0), Status::Completed)
    );
    // Without reset: the next period's event compares with the kept baseline.
    let goal = daily(false, true);
    let row = seeded(160, Status::Claimed, Some(100), midnight() - 30 * HOUR_MS);
    let r = apply(&row, &stat(goal, 148, -2), 10, midnight() - 2 * HOUR_MS).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (148, Some(150), Status::NotStarted)
    );
    let r = apply(&r, &stat(goal, 170, 2), 10, NOW).unwrap();
    assert_eq!(
        (r.progress, r.baseline, r.status),
        (170, Some(150), Status::Completed),
        "upstream counts 170 - 150 = 20"
    );
}

#[test]
fn an_absolute_goal_completes_at_its_target_and_stays_completed_when_the_value_falls() {
    let row = seeded(0, Status::NotStarted, None, NOW - HOUR_MS);
    let r = apply(&row, &stat(ABSOLUTE, 0, 0), 5, NOW).unwrap();
    assert_eq!(
        r.status,
        Status::InProgress,
        "any event moves not_started to in_progress"
    );
    let r = apply(&r, &stat(ABSOLUTE, 7, 7), 5, NOW + 1).unwrap();
    assert_eq!(
        (r.progress, r.status, r.completed_at),
        (7, Status::Completed, Some(us(NOW + 1)))
    );
    let r = apply(&r, &stat(ABSOLUTE, 2, -5), 5, NOW + 2).unwrap();
    assert_eq!(
        (r.progress, r.status, r.completed_at),
        (2, Status::Completed, Some(us(NOW + 1)))
    );
    // A login on an absolute login goal adds one.
    let r = apply(&r, &login(ABSOLUTE), 5, NOW + 3).unwrap();
    assert_eq!(r.progress, 3);
}

#[test]
fn an_event_from_a_period_the_row_has_left_does_not_count_toward_the_new_one() {
    // The row was updated after midnight (by the service or another replica);
    // an event acknowledged before midnight arrives now.
    let row = seeded(0, Status::NotStarted, Some(100), midnight() + HOUR_MS);
    let late = midnight() - 1;
    assert_eq!(
        apply(&row, &stat(daily(true, true), 120, 5), 10, late),
        None
    );
    // Without reset the progress carries over: applied like an event of today.
    let row = seeded(3, Status::InProgress, Some(0), midnight() + HOUR_MS);
    let r = apply(&row, &login(daily(false, false)), 10, late).unwrap();
    assert_eq!((r.progress, r.updated_at), (4, row.updated_at));
}

#[test]
fn the_period_is_the_acknowledgement_time_not_the_flush_time() {
    // Acknowledged at 23:59:59.999 and applied whenever: yesterday's event.
    let row = seeded(5, Status::InProgress, Some(0), midnight() - 5 * HOUR_MS);
    let goal = daily(true, true);
    let r = apply(&row, &stat(goal, 10, 5), 10, midnight() - 1).unwrap();
    assert_eq!(
        (r.status, r.updated_at),
        (Status::Completed, us(midnight() - 1))
    );
    assert_eq!(r.expires_at, Some(us(midnight())));
    // The first event after midnight starts the new period.
    let r = apply(&r, &stat(goal, 12, 2), 10, midnight()).unwrap();
    assert_eq!(
        (r.status, r.baseline, r.completed_at),
        (Status::InProgress, Some(10), None)
    );
}

/// Every field of `Ev`-sized events: value or login, small numbers.
fn events_of(spec: &[(Option<i32>, i32)], start_ms: i64) -> Vec<Ev> {
    spec.iter()
        .enumerate()
        .map(|(i, &(value, inc))| Ev {
            value,
            inc,
            at_ms: start_ms + i as i64,
        })
        .collect()
}

fn one_by_one(row: &Row, goal: Goal, target: i32, events: &[Ev]) -> Option<Row> {
    let mut current: Option<Row> = None;
    for ev in events {
        let step = Step {
            goal,
            value: ev.value,
            inc: ev.inc,
        };
        if let Some(next) = apply(current.as_ref().unwrap_or(row), &step, target, ev.at_ms) {
            current = Some(next);
        }
    }
    current
}

fn coalesced(row: &Row, goal: Goal, target: i32, events: &[Ev], cut: usize) -> Option<Row> {
    let runs_of = |evs: &[Ev]| {
        let mut runs: Option<Runs> = None;
        for ev in evs {
            let step = Step {
                goal,
                value: ev.value,
                inc: ev.inc,
            };
            let one = Runs::of(&step, target, ev.at_ms);
            match &mut runs {
                Some(r) => r.then(one),
                None => runs = Some(one),
            }
        }
        runs
    };
    // Coalesced in two parts, then joined (as a failed flush merged back is).
    let (a, b) = events.split_at(cut.min(events.len()));
    let mut runs = match (runs_of(a), runs_of(b)) {
        (Some(mut a), Some(b)) => {
            a.then(b);
            a
        }
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return None,
    };
    runs.0.shrink_to_fit();
    runs.apply(row)
}

/// Rows agree except for `completed_at` inside a coalesced tail (a time
/// within the run rather than the exact event's).
fn agree(a: &Option<Row>, b: &Option<Row>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            let mut b = b.clone();
            b.completed_at = match (a.completed_at, b.completed_at) {
                (Some(x), Some(_)) => Some(x),
                (_, other) => other,
            };
            *a == b
        }
        (None, None) => true,
        _ => false,
    }
}

#[test]
fn a_coalesced_run_ends_where_its_events_one_by_one_end() {
    let specs: &[&[(Option<i32>, i32)]] = &[
        &[
            (Some(10), 1),
            (None, 1),
            (None, 1),
            (Some(14), 2),
            (None, 1),
            (Some(3), -11),
            (None, 1),
        ],
        &[
            (None, 1),
            (None, 1),
            (None, 1),
            (None, 1),
            (None, 1),
            (None, 1),
            (None, 1),
        ],
        &[
            (Some(100), 0),
            (Some(101), 1),
            (Some(130), 29),
            (Some(105), -25),
            (None, 1),
        ],
        &[
            (Some(0), 0),
            (Some(0), 0),
            (Some(9), 9),
            (None, 1),
            (None, 1),
        ],
    ];
    let goals = [
        ABSOLUTE,
        RELATIVE,
        daily(true, true),
        daily(false, false),
        daily(true, false),
    ];
    let rows = [
        seeded(0, Status::NotStarted, None, midnight() - 2 * HOUR_MS),
        seeded(7, Status::InProgress, Some(2), NOW - HOUR_MS),
        seeded(50, Status::Completed, Some(1), midnight() - 30 * HOUR_MS),
        seeded(50, Status::Claimed, Some(40), midnight() - 30 * HOUR_MS),
        seeded(0, Status::NotStarted, Some(90), NOW - HOUR_MS),
    ];
    for spec in specs {
        let events = events_of(spec, NOW);
        for goal in goals {
            for row in &rows {
                for target in [1, 3, 10, 40] {
                    let expected = one_by_one(row, goal, target, &events);
                    for cut in 0..=events.len() {
                        let got = coalesced(row, goal, target, &events, cut);
                        assert!(
                            agree(&expected, &got),
                            "goal {goal:?} target {target} row {row:?} events {spec:?} cut {cut}:\n one by one {expected:?}\n coalesced  {got:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn events_of_two_periods_are_never_coalesced_into_one_run() {
    let goal = daily(true, true);
    let mut runs = Runs::of(&stat(goal, 10, 1), 10, midnight() - 1);
    runs.then(Runs::of(&stat(goal, 11, 1), 10, midnight() - 1));
    runs.then(Runs::of(&stat(goal, 12, 1), 10, midnight()));
    assert_eq!(runs.0.len(), 2);
    assert_eq!(runs.events(), 3);
    // A goal without rotation has one run whatever the time.
    let mut runs = Runs::of(&stat(RELATIVE, 10, 1), 10, midnight() - 1);
    runs.then(Runs::of(
        &stat(RELATIVE, 11, 1),
        10,
        midnight() + 5 * 24 * HOUR_MS,
    ));
    assert_eq!(runs.0.len(), 1);
}
