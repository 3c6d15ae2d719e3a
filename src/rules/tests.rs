//! The goal index and the progress rules, event by event.
use super::*;

fn goal(id: &str, kind: GoalKind, source: Source, stat: Option<&str>, target: i32) -> GoalDef {
    GoalDef {
        challenge_id: "c".into(),
        goal_id: id.into(),
        rule: GoalRule::Typed(kind),
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
        received_ms: 4 * DAY_MS,
        kind: EventKind::Stat {
            stat_code: code.into(),
            latest_value: latest,
            inc,
        },
    }
}

#[test]
fn one_stat_event_moves_every_goal_on_its_stat_code_and_nothing_else() {
    let index = GoalIndex::new(
        Generation::Typed,
        vec![
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
        ],
    );
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
    let index = GoalIndex::new(
        Generation::Typed,
        vec![goal("login", GoalKind::Increment, Source::Login, None, 3)],
    );
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
    let index = GoalIndex::new(
        Generation::Typed,
        vec![goal("login", GoalKind::Increment, Source::Login, None, 3)],
    );
    let mut event = stat("x", 0.0, 0.0);
    event.kind = EventKind::GdprDeletion;
    // It holds from its arrival, later than its timestamp here.
    assert!(event.received_ms > event.time_ms);
    assert_eq!(
        index.records(&event),
        [Record::Delete(Deletion {
            user_id: "u1".into(),
            namespace: "ns".into(),
            event_time_ms: event.received_ms,
            event_id: "e1".into(),
        })]
    );
    // A producer clock ahead of ours: its timestamp, the later.
    event.time_ms = event.received_ms + 1_000;
    let [Record::Delete(deletion)] = &index.records(&event)[..] else {
        panic!("one deletion");
    };
    assert_eq!(deletion.event_time_ms, event.time_ms);
}

#[test]
fn an_update_carries_whether_its_goal_is_assigned_by_default() {
    let mut unassigned = goal("login", GoalKind::Increment, Source::Login, None, 3);
    unassigned.default_assigned = false;
    let index = GoalIndex::new(Generation::Typed, vec![unassigned]);
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

fn m5_goal(id: &str, source: Source, code: &str, relative: bool) -> GoalDef {
    GoalDef {
        challenge_id: "c".into(),
        goal_id: id.into(),
        rule: GoalRule::M5(m5::Goal {
            relative,
            rotation: None,
        }),
        source,
        stat_code: Some(code.into()),
        target: 5,
        default_assigned: true,
    }
}

fn m5_index() -> GoalIndex {
    GoalIndex::new(
        Generation::M5,
        vec![
            m5_goal("login-abs", Source::Login, "login_count", false),
            m5_goal("login-rel", Source::Login, "login_count", true),
            m5_goal("login-stat", Source::Statistic, "login_count", false),
            m5_goal("kills", Source::Statistic, "kills", true),
            m5_goal("kills-login", Source::Login, "kills", false),
            m5_goal("only-login", Source::Login, "streak", false),
        ],
    )
}

fn steps(index: &GoalIndex, event: &Event) -> Vec<(String, Option<i32>, i32, i64)> {
    updates(index, event)
        .into_iter()
        .map(|u| match u.op {
            Op::M5(step) => (u.goal_id, step.value, step.inc, u.event_time_ms),
            other => panic!("not an M5 op: {other:?}"),
        })
        .collect()
}

#[test]
fn an_m5_login_adds_one_to_each_login_goals_stat_code_and_moves_every_goal_on_it() {
    let index = m5_index();
    let mut event = stat("x", 0.0, 0.0);
    event.kind = EventKind::Login;
    let mut got = steps(&index, &event);
    got.sort();
    let at = event.received_ms;
    assert_eq!(
        got,
        [
            ("kills".to_string(), None, 1, at),
            ("kills-login".to_string(), None, 1, at),
            ("login-abs".to_string(), None, 1, at),
            ("login-rel".to_string(), None, 1, at),
            ("login-stat".to_string(), None, 1, at),
            ("only-login".to_string(), None, 1, at),
        ],
        "one update per goal, at the acknowledgement time"
    );
}

#[test]
fn an_m5_stat_event_moves_every_goal_on_its_code_only_if_a_statistic_goal_uses_it() {
    let index = m5_index();
    let mut got = steps(&index, &stat("kills", 42.7, 3.9));
    got.sort();
    let at = 4 * DAY_MS;
    assert_eq!(
        got,
        [
            ("kills".to_string(), Some(42), 3, at),
            ("kills-login".to_string(), Some(42), 3, at),
        ]
    );
    assert!(
        index.records(&stat("streak", 5.0, 1.0)).is_empty(),
        "only a login goal uses it"
    );
    assert!(index.records(&stat("unknown", 5.0, 1.0)).is_empty());
}

#[test]
fn m5_values_are_truncated_toward_zero_and_negative_ones_are_skipped() {
    let index = m5_index();
    assert_eq!(steps(&index, &stat("kills", -0.9, -0.9))[0].1, Some(0));
    assert_eq!(
        steps(&index, &stat("kills", 1e12, -1e12))[0].1,
        Some(i32::MAX)
    );
    assert_eq!(steps(&index, &stat("kills", 1e12, -1e12))[0].2, i32::MIN);
    let negative = stat("kills", -1.1, 1.0);
    assert!(index.records(&negative).is_empty());
    assert!(index.skips_negative_value(&negative));
    assert!(!index.skips_negative_value(&stat("unknown", -5.0, 1.0)));
    assert!(!GoalIndex::default().skips_negative_value(&negative));
}
