//! Property tests (proptest) for the rules and the WAL record codec.
//!
//! - Coalescing: a sequence of records (updates of goals of every kind of
//!   both generations — type rules and M5 with rotations — one not assigned
//!   by default, and GDPR deletions, on rows the challenge service made
//!   claimed, inactive or reset) applied one by one (`model::apply_one`,
//!   the rule book) and the same sequence coalesced into buffers at random
//!   flush boundaries, some flushes failing and merged back, then applied as
//!   the flush does (`model::apply_batch`), end in rows that agree; where
//!   the challenge service owns the table, no event creates a row.
//! - The interleaving of independent users changes nothing.
//! - A completed type-rules goal never regresses (it keeps counting), one by
//!   one or batch by batch; only a deletion removes it. Every row the rules
//!   write satisfies the table's CHECK constraints, and `completed` always
//!   comes with `completed_at`.
//! - Nothing acknowledged before a user's last deletion survives it: the rows
//!   are those of the records after it alone, wherever the flushes fall.
//! - An event never creates the row of a goal that is not assigned by default.
//! - (The real SQL of both stores is held to the rule book in
//!   tests/store_suite.rs.)
//! - Every record round-trips through the codec; any one-byte change or
//!   truncation is detected; arbitrary bytes never panic the decoder, and what
//!   they decode to round-trips.

use challenge_event_handler::buffer::{Buffer, Key};
use challenge_event_handler::event::MAX_ID_LEN;
use challenge_event_handler::model::{self, After, Creates, Kind, Rows};
use challenge_event_handler::rules::row::Status;
use challenge_event_handler::rules::{m5, Deletion, Op, Record, Update};
use challenge_event_handler::wal::codec;
use proptest::prelude::*;

#[path = "common/samples.rs"]
mod samples;
use samples::{events, records};

fn one_by_one(records: &[Record]) -> Rows {
    model::one_by_one(&model::seeded_rows(), records, Creates::DefaultGoals)
}

/// Flushes after each of `cuts`; those also in `failing` fail.
fn coalesced(records: &[Record], cuts: &[usize], failing: &[usize]) -> Rows {
    coalesced_as(Creates::DefaultGoals, records, cuts, failing)
}

fn coalesced_as(creates: Creates, records: &[Record], cuts: &[usize], failing: &[usize]) -> Rows {
    model::coalesced(&model::seeded_rows(), records, creates, |i| {
        match (cuts.contains(&i), failing.contains(&i)) {
            (false, _) => After::Nothing,
            (true, false) => After::Flush,
            (true, true) => After::FailedFlush,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn coalesced_batches_end_where_one_by_one_ends(
        events in events(),
        cuts in prop::collection::vec(0usize..80, 0..10),
        failing in prop::collection::vec(0usize..80, 0..4),
    ) {
        let records = records(&events);
        let sequential = one_by_one(&records);
        let batched = coalesced(&records, &cuts, &failing);
        prop_assert!(
            model::disagreements(&sequential, &batched).is_empty(),
            "{}",
            model::describe(&sequential, &batched)
        );
    }

    #[test]
    fn where_the_service_owns_the_table_events_only_update_its_rows_and_agree_coalesced(
        events in events(),
        cuts in prop::collection::vec(0usize..80, 0..10),
        failing in prop::collection::vec(0usize..80, 0..4),
    ) {
        let records = records(&events);
        let sequential = model::one_by_one(&model::seeded_rows(), &records, Creates::Nothing);
        let batched = coalesced_as(Creates::Nothing, &records, &cuts, &failing);
        prop_assert!(
            model::disagreements(&sequential, &batched).is_empty(),
            "{}",
            model::describe(&sequential, &batched)
        );
        let seeded = model::seeded_rows();
        for key in batched.keys() {
            prop_assert!(seeded.contains_key(key), "{key:?} was created by an event");
        }
    }

    #[test]
    fn every_row_the_rules_write_satisfies_the_tables_constraints(
        events in events(),
        cuts in prop::collection::vec(0usize..80, 0..10),
    ) {
        let records = records(&events);
        for rows in [one_by_one(&records), coalesced(&records, &cuts, &[])] {
            for (key, row) in &rows {
                prop_assert!(row.progress >= 0, "{key:?}: {row:?}");
                prop_assert!(row.claimed_at.is_none() || row.completed_at.is_some(), "{key:?}: {row:?}");
                if matches!(row.status, Status::Completed | Status::Claimed) {
                    prop_assert!(row.completed_at.is_some(), "completed without completed_at: {key:?}: {row:?}");
                }
            }
        }
    }

    #[test]
    fn the_interleaving_of_independent_users_does_not_matter(
        events in events(),
        picks in prop::collection::vec(0u8..3, 0..200),
        cuts in prop::collection::vec(0usize..80, 0..10),
    ) {
        let records = records(&events);
        // Each user's records in their own order; users interleaved by `picks`.
        let mut queues: Vec<std::collections::VecDeque<Record>> = vec![Default::default(); 3];
        for r in &records {
            let user: usize = r.user_id()[1..].parse().unwrap();
            queues[user].push_back(r.clone());
        }
        let mut shuffled = Vec::new();
        for p in picks {
            if let Some(u) = queues[p as usize].pop_front() {
                shuffled.push(u);
            }
        }
        for q in &mut queues {
            shuffled.extend(q.drain(..));
        }
        prop_assert_eq!(one_by_one(&records), one_by_one(&shuffled));
        let (a, b) = (coalesced(&records, &cuts, &[]), coalesced(&shuffled, &cuts, &[]));
        prop_assert!(model::disagreements(&a, &b).is_empty(), "{}", model::describe(&a, &b));
    }

    #[test]
    fn a_completed_goal_never_regresses_and_only_a_deletion_removes_it(
        events in events(),
        cuts in prop::collection::vec(0usize..80, 0..10),
    ) {
        let records = records(&events);
        // `deleted`: the users a deletion between `before` and `after` removed.
        let check = |before: &Rows, after: &Rows, deleted: &[&str]| -> Result<(), TestCaseError> {
            let completed = |key: &Key, r: &challenge_event_handler::rules::row::Row| {
                r.status == Status::Completed && model::kind_of(&key.goal_id) != Kind::M5
            };
            for (key, was) in before.iter().filter(|(k, r)| completed(k, r)) {
                let Some(now) = after.get(key) else {
                    prop_assert!(deleted.contains(&key.user_id.as_str()), "{key:?} vanished without a deletion");
                    continue;
                };
                if deleted.contains(&key.user_id.as_str()) {
                    continue; // deleted and made again from zero
                }
                prop_assert_eq!(now.status, Status::Completed, "{:?} was completed: {:?}, now {:?}", key, was, now);
                match key.goal_id.as_str() {
                    "daily" => prop_assert!(now.state.last_counted_day >= was.state.last_counted_day),
                    "abs" => prop_assert_eq!(now.completed_at, was.completed_at),
                    _ => {
                        prop_assert_eq!(now.completed_at, was.completed_at);
                        prop_assert!(now.progress >= was.progress, "{key:?}: {was:?} -> {now:?}");
                    }
                }
            }
            Ok(())
        };
        let deletions = |records: &[Record]| -> Vec<String> {
            records.iter().filter_map(|r| match r {
                Record::Delete(d) => Some(d.user_id.clone()),
                Record::Update(_) => None,
            }).collect()
        };
        let mut rows = model::seeded_rows();
        for r in &records {
            let before = rows.clone();
            model::apply_one(&mut rows, r, Creates::DefaultGoals);
            let deleted = deletions(std::slice::from_ref(r));
            check(&before, &rows, &deleted.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        let mut rows = model::seeded_rows();
        let mut buffer = Buffer::default();
        let mut since = 0;
        for (i, r) in records.iter().enumerate() {
            buffer.apply(i as u64 + 1, r.clone());
            if cuts.contains(&i) || i + 1 == records.len() {
                let before = rows.clone();
                model::apply_batch(&mut rows, &buffer.take(), Creates::DefaultGoals, 0);
                let deleted = deletions(&records[since..=i]);
                since = i + 1;
                check(&before, &rows, &deleted.iter().map(String::as_str).collect::<Vec<_>>())?;
            }
        }
    }

    #[test]
    fn nothing_acknowledged_before_a_users_last_deletion_survives_it(
        events in events(),
        cuts in prop::collection::vec(0usize..80, 0..10),
        failing in prop::collection::vec(0usize..80, 0..4),
    ) {
        let records = records(&events);
        let rows = coalesced(&records, &cuts, &failing);
        for user in ["u0", "u1", "u2"] {
            let Some(last) = records.iter().rposition(|r| {
                matches!(r, Record::Delete(d) if d.user_id == user)
            }) else {
                continue;
            };
            // The user's rows are those of the records after the deletion
            // alone, starting from nothing (the seeded rows went too).
            let after: Vec<Record> = records[last + 1..]
                .iter()
                .filter(|r| r.user_id() == user)
                .cloned()
                .collect();
            let fresh = model::one_by_one(&Rows::new(), &after, Creates::DefaultGoals);
            let mine: Rows = rows
                .iter()
                .filter(|(k, _)| k.user_id == user)
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
            prop_assert!(
                model::disagreements(&fresh, &mine).is_empty(),
                "{user} after its deletion at #{last}:\n{}",
                model::describe(&fresh, &mine)
            );
        }
    }

    #[test]
    fn an_event_never_creates_the_row_of_a_goal_not_assigned_by_default(
        events in events(),
        cuts in prop::collection::vec(0usize..80, 0..10),
    ) {
        let records = records(&events);
        let opt = |user: &str| Key { user_id: user.into(), goal_id: "opt".into() };
        for rows in [one_by_one(&records), coalesced(&records, &cuts, &[])] {
            // u2 never activated "opt"; u0 and u1 lose it at a deletion.
            prop_assert!(!rows.contains_key(&opt("u2")));
            for user in ["u0", "u1"] {
                let deleted = records.iter().any(|r| matches!(r, Record::Delete(d) if d.user_id == user));
                prop_assert_eq!(rows.contains_key(&opt(user)), !deleted);
            }
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop::string::string_regex(&format!(".{{0,{MAX_ID_LEN}}}")).unwrap()
}

fn any_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        4 => any_update().prop_map(Record::Update),
        1 => ((text(), text()), any::<i64>(), text()).prop_map(
            |((user_id, namespace), event_time_ms, event_id)| {
                Record::Delete(Deletion { user_id, namespace, event_time_ms, event_id })
            }
        ),
    ]
}

fn any_step() -> impl Strategy<Value = m5::Step> {
    let schedule = prop_oneof![
        Just(m5::Schedule::Daily),
        Just(m5::Schedule::Weekly),
        Just(m5::Schedule::Monthly)
    ];
    let rotation = prop::option::of((schedule, any::<bool>(), any::<bool>()).prop_map(
        |(schedule, reset_progress, allow_reselection)| m5::Rotation {
            schedule,
            reset_progress,
            allow_reselection,
        },
    ));
    (
        any::<bool>(),
        rotation,
        prop::option::of(any::<i32>()),
        any::<i32>(),
    )
        .prop_map(|(relative, rotation, value, inc)| m5::Step {
            goal: m5::Goal { relative, rotation },
            value,
            inc,
        })
}

fn any_update() -> impl Strategy<Value = Update> {
    let op = prop_oneof![
        any::<i32>().prop_map(Op::Set),
        any::<i32>().prop_map(Op::Add),
        any::<i32>().prop_map(Op::CountDay),
        any::<i32>().prop_map(Op::CompleteDay),
        any_step().prop_map(Op::M5),
    ];
    (
        (text(), text(), text(), text()),
        (any::<i32>(), any::<bool>()),
        any::<i64>(),
        text(),
        op,
    )
        .prop_map(
            |(
                (user_id, goal_id, challenge_id, namespace),
                (target, creates_row),
                event_time_ms,
                event_id,
                op,
            )| {
                Update {
                    user_id,
                    goal_id,
                    challenge_id,
                    namespace,
                    target,
                    creates_row,
                    event_time_ms,
                    event_id,
                    op,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn every_record_round_trips_and_any_damage_is_detected(
        original in any_record(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let record = codec::encode(&original);
        prop_assert!(record.len() <= codec::MAX_RECORD_BYTES);
        prop_assert_eq!(codec::decode(&record).unwrap(), original);
        let mut damaged = record.clone();
        let i = at.index(damaged.len());
        damaged[i] ^= flip;
        prop_assert!(codec::decode(&damaged).is_err(), "a flipped byte {i} went unnoticed");
        prop_assert!(codec::decode(&record[..i]).is_err(), "a record cut at {i} went unnoticed");
    }

    #[test]
    fn every_frame_round_trips_and_any_damage_is_detected(
        records in prop::collection::vec(any_record(), 1..20),
        first_seq in 1u64..u64::MAX / 2,
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let head = codec::FrameHead { first_seq, count: records.len() as u32, written_ms: 1_767_225_600_000 };
        let mut frame = Vec::new();
        codec::encode_frame(&head, &records, &mut frame);
        prop_assert_eq!(codec::decode_frame(&frame).unwrap(), (head, records));
        let mut damaged = frame.clone();
        let i = at.index(damaged.len());
        damaged[i] ^= flip;
        prop_assert!(codec::decode_frame(&damaged).is_err(), "a flipped byte {i} went unnoticed");
        prop_assert!(codec::decode_frame(&frame[..i]).is_err(), "a frame cut at {i} went unnoticed");
    }

    #[test]
    fn whatever_arbitrary_bytes_decode_to_re_encodes_to_itself(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(update) = codec::decode(&bytes) {
            prop_assert_eq!(codec::decode(&codec::encode(&update)).unwrap(), update);
        }
    }
}
