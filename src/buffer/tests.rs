//! The buffer's coalescing, merge-back and deletion rules.

use super::*;

fn update(goal: &str, op: Op, time: i64) -> Record {
    Record::Update(Update {
        user_id: "u".into(),
        goal_id: goal.into(),
        challenge_id: "c".into(),
        namespace: "ns".into(),
        target: 10,
        creates_row: true,
        event_time_ms: time,
        event_id: String::new(),
        op,
    })
}

fn deletion(user: &str) -> Record {
    Record::Delete(Deletion {
        user_id: user.into(),
        namespace: "ns".into(),
        event_time_ms: 0,
        event_id: format!("gdpr-{user}"),
    })
}

#[test]
fn a_deletion_drops_the_users_pending_entries_and_later_ones_start_afresh() {
    let mut b = Buffer::default();
    b.apply(1, update("inc", Op::Add(2), 1));
    b.apply(2, update("abs", Op::Set(4), 2));
    let mut other = update("inc", Op::Add(7), 3);
    if let Record::Update(u) = &mut other {
        u.user_id = "someone-else".into();
    }
    b.apply(3, other);
    b.apply(4, deletion("u"));
    assert!(b.absolute.is_empty());
    assert_eq!(b.increment.len(), 1, "only the other user's entry is left");
    b.apply(5, update("inc", Op::Add(3), 5));
    assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, 3);
    assert_eq!(b.deletions.len(), 1);
    assert_eq!(b.deletions[0].seq, 4);
    assert!(!b.is_empty());
}

#[test]
fn a_failed_flush_merged_back_loses_what_a_newer_deletion_removed() {
    let mut b = Buffer::default();
    b.apply(1, update("inc", Op::Add(2), 1));
    b.apply(2, deletion("v"));
    let failed = b.take();
    b.apply(3, deletion("u"));
    b.apply(4, update("inc", Op::Add(5), 4));
    b.merge_back(failed);
    assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, 5);
    let seqs: Vec<u64> = b.deletions.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [2, 3], "deletions in sequence order");
}

fn key(goal: &str) -> Key {
    Key {
        user_id: "u".into(),
        goal_id: goal.into(),
    }
}

#[test]
fn increments_sum_and_absolutes_keep_the_newest_event() {
    let mut b = Buffer::default();
    b.apply(1, update("inc", Op::Add(2), 10));
    b.apply(2, update("inc", Op::Add(3), 5));
    b.apply(3, update("abs", Op::Set(7), 20));
    b.apply(4, update("abs", Op::Set(3), 10)); // older event arriving later
    assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, 5);
    assert_eq!(b.absolute.get(&key("abs")).unwrap().1.value, 7);
    assert_eq!(b.len(), 2);
    assert_eq!(b.updates(), 4);
    assert_eq!(b.last_seq(), 4);
}

#[test]
fn daily_increments_keep_one_per_day_and_daily_keeps_the_latest_day() {
    let mut b = Buffer::default();
    b.apply(1, update("di", Op::CountDay(5), 50));
    b.apply(2, update("di", Op::CountDay(5), 40));
    b.apply(3, update("di", Op::CountDay(6), 60));
    b.apply(4, update("d", Op::CompleteDay(6), 61));
    b.apply(5, update("d", Op::CompleteDay(5), 51));
    let days = &b.daily_increment.get(&key("di")).unwrap().1;
    assert_eq!(days.0, BTreeMap::from([(5, 50), (6, 60)]));
    assert_eq!(
        b.daily.get(&key("d")).unwrap().1,
        LatestDay {
            day: 6,
            event_time_ms: 61
        }
    );
    // A day arriving after a later one is not counted (as one by one).
    b.apply(6, update("di", Op::CountDay(4), 30));
    assert_eq!(
        b.daily_increment.get(&key("di")).unwrap().1 .0,
        BTreeMap::from([(5, 50), (6, 60)])
    );
}

#[test]
fn an_absolute_goal_that_reached_its_target_stays_reached_when_the_value_falls() {
    let mut b = Buffer::default();
    b.apply(1, update("abs", Op::Set(4), 10));
    b.apply(2, update("abs", Op::Set(12), 20)); // target 10
    b.apply(3, update("abs", Op::Set(3), 30));
    b.apply(4, update("abs", Op::Set(50), 25)); // older than the last: skipped
    let latest = b.absolute.get(&key("abs")).unwrap().1;
    assert_eq!(
        latest,
        Latest {
            value: 3,
            event_time_ms: 30,
            reached_ms: Some(20)
        }
    );
}

#[test]
fn a_failed_flush_merged_back_equals_never_having_swapped() {
    let ops = [
        update("inc", Op::Add(2), 1),
        update("abs", Op::Set(4), 2),
        update("di", Op::CountDay(1), 3),
        update("inc", Op::Add(5), 4),
        update("abs", Op::Set(1), 5),
        update("di", Op::CountDay(2), 6),
        update("d", Op::CompleteDay(2), 7),
    ];
    let mut straight = Buffer::default();
    for (i, u) in ops.iter().enumerate() {
        straight.apply(i as u64 + 1, u.clone());
    }
    let mut swapped = Buffer::default();
    for (i, u) in ops[..3].iter().enumerate() {
        swapped.apply(i as u64 + 1, u.clone());
    }
    let taken = swapped.take();
    assert!(swapped.is_empty());
    assert_eq!(taken.last_seq(), 3);
    for (i, u) in ops[3..].iter().enumerate() {
        swapped.apply(i as u64 + 4, u.clone());
    }
    swapped.merge_back(taken);
    assert_eq!(swapped.last_seq(), straight.last_seq());
    assert_eq!(swapped.increment.sorted(), straight.increment.sorted());
    assert_eq!(swapped.absolute.sorted(), straight.absolute.sorted());
    assert_eq!(
        swapped.daily_increment.sorted(),
        straight.daily_increment.sorted()
    );
    assert_eq!(swapped.daily.sorted(), straight.daily.sorted());
}

#[test]
fn deltas_saturate_instead_of_overflowing() {
    let mut b = Buffer::default();
    b.apply(1, update("inc", Op::Add(i32::MAX), 1));
    b.apply(2, update("inc", Op::Add(i32::MAX), 2));
    assert_eq!(b.increment.get(&key("inc")).unwrap().1.delta, i32::MAX);
}

#[test]
fn only_a_batch_with_type_rule_entries_reads_the_handlers_goal_state() {
    use crate::rules::m5::{Goal, Step};
    let m5 = Op::M5(Step {
        goal: Goal {
            relative: false,
            rotation: None,
        },
        value: Some(3),
        inc: 3,
    });
    let mut b = Buffer::default();
    assert!(!b.reads_goal_state(), "an empty batch reads nothing");
    b.apply(1, update("m5", m5, 1));
    assert!(!b.reads_goal_state(), "M5's rules never read the state");
    b.apply(2, update("inc", Op::Add(1), 2));
    assert!(b.reads_goal_state(), "the type rules read last_event_at");
    let mut d = Buffer::default();
    d.apply(1, update("daily", Op::CountDay(20_000), 1));
    assert!(d.reads_goal_state(), "and last_counted_day");
}

/// A buffer with an update of every goal for every user (increments and
/// absolutes alternating), in that order.
fn every_user_every_goal(users: &[String], goals: &[String]) -> Buffer {
    let mut b = Buffer::default();
    let mut seq = 0;
    for user in users {
        for (i, goal) in goals.iter().enumerate() {
            seq += 1;
            let op = if i % 2 == 0 { Op::Add(1) } else { Op::Set(1) };
            let Record::Update(mut u) = update(goal, op, seq as i64) else {
                unreachable!()
            };
            u.user_id = user.clone();
            b.apply(seq, Record::Update(u));
        }
    }
    b
}

proptest::proptest! {
    /// The entries come in key order (then kind) whatever the user ids:
    /// shared or short prefixes, NUL bytes, multi-byte characters.
    #[test]
    fn entries_come_in_key_order_whatever_the_user_ids(
        users in proptest::collection::vec("(bench-|\\x00|é|[a-c]{0,20}){0,3}[0-9]{0,3}", 1..40),
        goals in proptest::collection::vec("[ab]{0,2}", 1..4),
    ) {
        let b = every_user_every_goal(&users, &goals);
        let entries = b.entries();
        let got: Vec<(&Key, u8)> = entries.as_slice().iter().map(|(k, _, e)| (*k, e.order())).collect();
        let mut want = got.clone();
        want.sort();
        proptest::prop_assert_eq!(got, want);
    }

    #[test]
    fn chunks_hold_whole_players_within_the_bound_and_keep_every_entry_in_order(
        users in proptest::collection::vec("[a-d]{1,3}", 1..30),
        goals in proptest::collection::vec("[abc]{1,2}", 1..6),
        max_keys in 1usize..12,
    ) {
        let b = every_user_every_goal(&users, &goals);
        let whole: Vec<(Key, u8)> = b.entries().as_slice().iter().map(|(k, _, e)| ((*k).clone(), e.order())).collect();
        let chunks = b.entries().into_user_chunks(max_keys);
        let mut joined = Vec::new();
        let mut players_seen: Vec<String> = Vec::new();
        for chunk in &chunks {
            let entries = chunk.as_slice();
            proptest::prop_assert!(!entries.is_empty());
            let mut keys: Vec<&Key> = entries.iter().map(|(k, _, _)| *k).collect();
            keys.dedup();
            let mut players: Vec<&str> = keys.iter().map(|k| k.user_id.as_str()).collect();
            players.dedup();
            // Within the bound, unless one player alone is over it.
            proptest::prop_assert!(keys.len() <= max_keys || players.len() == 1);
            for p in players {
                // No player is split over two chunks.
                proptest::prop_assert!(!players_seen.iter().any(|q| q == p));
                players_seen.push(p.to_owned());
            }
            joined.extend(entries.iter().map(|(k, _, e)| ((*k).clone(), e.order())));
        }
        proptest::prop_assert_eq!(joined, whole);
    }
}

/// One event of the spill property: its records (users and deltas, or a
/// deletion) under one id, or under none.
#[derive(Debug, Clone)]
struct Event {
    id: bool,
    records: Vec<(u8, i32)>,
    deletes: Option<u8>,
}

fn event_strategy() -> impl proptest::strategy::Strategy<Value = Event> {
    use proptest::prelude::*;
    (
        any::<bool>(),
        // One record per user-goal an event (as a real event moves each
        // goal of its player once).
        proptest::collection::btree_map(0u8..8, 1i32..5, 1..4)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
        proptest::option::weighted(0.1, 0u8..8),
    )
        .prop_map(|(id, records, deletes)| Event {
            id,
            records,
            deletes,
        })
}

/// The records of `event` number `n`, from sequence number `seq`.
fn records_of(n: usize, event: &Event, seq: &mut u64) -> Vec<(u64, Record)> {
    let id = if event.id {
        format!("e{n}")
    } else {
        String::new()
    };
    let mut out = Vec::new();
    for (user, delta) in &event.records {
        let Record::Update(mut u) = update("g", Op::Add(*delta), n as i64) else {
            unreachable!()
        };
        u.user_id = format!("u{user}");
        u.event_id = id.clone();
        *seq += 1;
        out.push((*seq, Record::Update(u)));
    }
    if let Some(user) = event.deletes {
        let Record::Delete(mut d) = deletion(&format!("u{user}")) else {
            unreachable!()
        };
        d.event_id = id.clone();
        *seq += 1;
        out.push((*seq, Record::Delete(d)));
    }
    out
}

fn snapshot(b: &Buffer) -> (String, Vec<(String, u64)>) {
    let increments = format!("{:?}", b.increment.sorted());
    let deletions = b
        .deletions
        .iter()
        .map(|d| (d.deletion.user_id.clone(), d.seq))
        .collect();
    (increments, deletions)
}

proptest::proptest! {
    /// A bounded buffer that spills and is refilled from the log between
    /// flushes hands the flushes every record exactly once, in order, never
    /// splits an event between two flushes, never holds much more than its
    /// bound, and its batches, applied in turn, leave what one unbounded
    /// buffer would.
    #[test]
    fn a_bounded_buffer_spills_and_refills_without_losing_splitting_or_doubling_anything(
        events in proptest::collection::vec(event_strategy(), 1..80),
        flush_after in proptest::collection::vec(proptest::bool::weighted(0.2), 80),
        bound in 1usize..6,
        slice in 1u64..8,
    ) {
        use crate::wal::Sink;
        let mut log: Vec<(u64, Record)> = Vec::new();
        let mut whole = Buffer::default();
        let mut b = Buffer::bounded(0, bound);
        let mut batches: Vec<Buffer> = Vec::new();
        let mut frames: Vec<u64> = Vec::new(); // the last seq of each event
        let mut seq = 0;
        let refill = |b: &mut Buffer, log: &[(u64, Record)], frames: &[u64]| {
            while let Some(after) = b.spilled_after() {
                // Whole frames of about `slice` records, as the writer reads.
                let last = frames.last().copied().unwrap_or(0);
                let end = frames.iter().copied().find(|f| *f >= after + slice && *f > after).unwrap_or(last);
                let records = log.iter().filter(|(s, _)| *s > after && *s <= end).cloned().collect();
                if b.refill(records, end == last) != Refill::More {
                    break;
                }
            }
        };
        for (n, event) in events.iter().enumerate() {
            let records = records_of(n, event, &mut seq);
            frames.push(seq);
            log.extend(records.iter().cloned());
            whole.committed(records.clone());
            b.committed(records);
            // Never more than the bound, but for the rest of one event.
            proptest::prop_assert!(b.len() + b.deletions.len() <= bound + 4);
            if flush_after[n] {
                refill(&mut b, &log, &frames);
                batches.push(b.take());
            }
        }
        loop {
            refill(&mut b, &log, &frames);
            let batch = b.take();
            let done = batch.is_empty() && b.spilled_after().is_none();
            batches.push(batch);
            if done {
                break;
            }
        }
        let mut upto = 0;
        let mut updates = 0;
        let mut marks = std::collections::HashSet::new();
        let mut merged = Buffer::default();
        for batch in batches {
            proptest::prop_assert!(batch.last_seq() >= upto);
            upto = batch.last_seq();
            updates += batch.updates();
            for mark in &batch.events {
                proptest::prop_assert!(marks.insert(*mark), "an event in two flushes");
            }
            let mut newer = batch;
            newer.merge_back(merged);
            merged = newer;
        }
        proptest::prop_assert_eq!(upto, seq);
        proptest::prop_assert_eq!(updates, whole.updates());
        proptest::prop_assert_eq!(snapshot(&merged), snapshot(&whole));
    }
}

#[test]
fn a_batch_retried_through_an_outage_stays_within_the_bound_however_slowly_players_arrive() {
    use crate::wal::Sink;
    let mut b = Buffer::bounded(0, 3);
    let mut in_doubt: Option<Buffer> = None;
    let mut seq = 0;
    for n in 0..50 {
        // One new player between two failed attempts.
        seq += 1;
        let Record::Update(mut u) = update("g", Op::Add(1), n) else {
            unreachable!()
        };
        u.user_id = format!("p{n}");
        b.committed(vec![(seq, Record::Update(u))]);
        let batch = b.next_batch(in_doubt.take());
        assert!(
            batch.len() + b.len() <= 2 * 3,
            "{} keys in the batch and {} in the buffer after {n} players",
            batch.len(),
            b.len()
        );
        in_doubt = Some(batch); // the attempt failed
    }
    // Back: the batch in doubt, then what waits, then what is in the WAL only.
    let batch = b.next_batch(in_doubt.take());
    assert_eq!(
        batch.last_seq(),
        3,
        "the first three players, retried alone"
    );
    assert_eq!(b.spilled_after(), Some(6));
}

/// `goal`'s record of event `id`: an increment of 1.
fn delivered(id: &str, goal: &str) -> Record {
    match update(goal, Op::Add(1), 0) {
        Record::Update(u) => Record::Update(Update {
            event_id: id.into(),
            ..u
        }),
        other => other,
    }
}

#[test]
fn an_event_delivered_again_after_its_mark_expired_counts_once_when_rebuilt() {
    // E (two goals), F, E again later, then E again right after itself.
    let records: Vec<(u64, Record)> = [
        delivered("E", "g1"),
        delivered("E", "g2"),
        delivered("F", "g1"),
        delivered("E", "g1"),
        delivered("E", "g2"),
        delivered("E", "g1"),
        delivered("E", "g2"),
        delivered("", "g2"), // no id: never deduplicated
    ]
    .into_iter()
    .enumerate()
    .map(|(i, r)| (i as u64 + 11, r))
    .collect();
    let mut b = Buffer::starting_after(10);
    for (seq, r) in records.clone() {
        b.apply(seq, r);
    }
    assert!(b.repeated_events(), "{:?}", b.events);
    assert_eq!(b.increment.get(&key("g1")).unwrap().1.delta, 4);

    let (first, dropped) = Buffer::first_deliveries(10, 18, records);
    assert_eq!(dropped, 2);
    assert!(!first.repeated_events());
    assert_eq!(first.increment.get(&key("g1")).unwrap().1.delta, 2); // E, F
    assert_eq!(first.increment.get(&key("g2")).unwrap().1.delta, 2); // E, the one without id
    assert_eq!((first.after(), first.last_seq()), (10, 18));

    // One delivery of an event with several goals is not a repeat.
    let mut once = Buffer::starting_after(0);
    once.apply(1, delivered("G", "g1"));
    once.apply(2, delivered("G", "g2"));
    once.apply(3, delivered("H", "g1"));
    assert!(!once.repeated_events());
}
