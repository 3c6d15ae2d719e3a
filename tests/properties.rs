//! Property tests (proptest) for the rules and the WAL record codec.
//!
//! - Coalescing: a sequence of records (updates of goals of every kind, one
//!   not assigned by default, and GDPR deletions) applied one by one
//!   (`model::apply_one`, the rule book) and the same sequence coalesced into
//!   buffers at random flush boundaries, some flushes failing and merged back,
//!   then applied as the SQL does (`model::apply_batch`), end in rows that agree.
//! - The interleaving of independent users changes nothing.
//! - A completed goal never regresses (it keeps counting), one by one or
//!   batch by batch; only a deletion removes it.
//! - Nothing acknowledged before a user's last deletion survives it: the rows
//!   are those of the records after it alone, wherever the flushes fall.
//! - An event never creates the row of a goal that is not assigned by default.
//! - The real SQL (`PgStore::apply` on a real PostgreSQL) ends where the rule
//!   book ends, batch boundaries anywhere.
//! - Every record round-trips through the codec; any one-byte change or
//!   truncation is detected; arbitrary bytes never panic the decoder, and what
//!   they decode to round-trips.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use challenge_event_handler::buffer::{Buffer, Key};
use challenge_event_handler::event::MAX_ID_LEN;
use challenge_event_handler::model::{self, After, Kind, Row, Rows};
use challenge_event_handler::rules::{Deletion, Op, Record, Update};
use challenge_event_handler::store::postgres::PgStore;
use challenge_event_handler::store::ProgressStore;
use challenge_event_handler::wal::codec;
use chrono::{NaiveDate, NaiveDateTime};
use common::pg;
use proptest::prelude::*;

const DAY_MS: i64 = 86_400_000;

/// One generated event: which user, which goal (or a deletion), a value and a time offset.
#[derive(Debug, Clone)]
struct Ev {
    user: u8,
    what: u8,
    value: i32,
    offset_ms: i64,
}

fn records(events: &[Ev]) -> Vec<Record> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| model::sample_record(i, e.user, e.what, e.value, e.offset_ms))
        .collect()
}

fn one_by_one(records: &[Record]) -> Rows {
    model::one_by_one(&model::seeded_rows(), records)
}

/// Flushes after each of `cuts`; those also in `failing` fail.
fn coalesced(records: &[Record], cuts: &[usize], failing: &[usize]) -> Rows {
    model::coalesced(&model::seeded_rows(), records, |i| {
        match (cuts.contains(&i), failing.contains(&i)) {
            (false, _) => After::Nothing,
            (true, false) => After::Flush,
            (true, true) => After::FailedFlush,
        }
    })
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        // Deletions (what = 5) one time in 12.
        (
            0u8..3,
            prop_oneof![11 => 0u8..5, 1 => Just(5u8)],
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
            for (key, was) in before.iter().filter(|(_, r)| r.completed) {
                let Some(now) = after.get(key) else {
                    prop_assert!(deleted.contains(&key.user_id.as_str()), "{key:?} vanished without a deletion");
                    continue;
                };
                if deleted.contains(&key.user_id.as_str()) {
                    continue; // deleted and made again from zero
                }
                prop_assert!(now.completed, "{key:?} was completed: {was:?}, now {now:?}");
                match now.kind {
                    Kind::Daily => prop_assert!(now.last_counted_day >= was.last_counted_day),
                    Kind::Absolute => prop_assert_eq!(now.completed_at, was.completed_at),
                    Kind::Increment | Kind::DailyIncrement => {
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
            model::apply_one(&mut rows, r);
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
                model::apply_batch(&mut rows, &buffer.take());
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
            let fresh = model::one_by_one(&Rows::new(), &after);
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

type DbRow = (
    String,
    String,
    i32,
    String,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
    Option<NaiveDate>,
);

/// The rows of users starting with `prefix`, as the model sees them.
async fn rows_in_db(pool: &sqlx::PgPool, prefix: &str) -> Rows {
    let rows: Vec<DbRow> = sqlx::query_as(
        "SELECT user_id, goal_id, progress, status, completed_at, last_event_at, last_counted_day
         FROM user_goal_progress WHERE starts_with(user_id, $1)",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .unwrap();
    let ms = |t: Option<NaiveDateTime>| t.map(|t| t.and_utc().timestamp_millis());
    rows.into_iter()
        .map(
            |(user_id, goal_id, progress, status, completed_at, last_event, day)| {
                let kind = match goal_id.as_str() {
                    "abs" => Kind::Absolute,
                    "inc" | "opt" => Kind::Increment,
                    "dinc" => Kind::DailyIncrement,
                    _ => Kind::Daily,
                };
                let row = Row {
                    kind,
                    progress,
                    completed: status == "completed",
                    completed_at: ms(completed_at),
                    last_event_ms: ms(last_event).unwrap_or(model::NO_EVENT),
                    last_counted_day: day.map(|d| {
                        (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
                    }),
                };
                (
                    Key {
                        user_id: user_id[prefix.len()..].to_owned(),
                        goal_id,
                    },
                    row,
                )
            },
        )
        .collect()
}

#[test]
fn the_sql_statements_agree_with_the_rule_book() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _context = rt.enter();
    let db = rt.block_on(pg::TestDb::new());
    // A small statement size, so batches also split across statements.
    let store = PgStore::connect_lazy(db.url.parse().unwrap(), 2, 3);
    rt.block_on(store.migrate()).unwrap();
    let lease = rt.block_on(store.lease("properties")).unwrap();
    let case = AtomicU64::new(0);
    let seq = AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let strategy = (events(), prop::collection::vec(0usize..80, 0..10));
    let result = runner.run(&strategy, |(events, cuts)| {
        let prefix = format!("case{}-", case.fetch_add(1, Ordering::Relaxed));
        let records = records(&events);
        let expected = one_by_one(&records);
        // The rows the challenge service made (model::seeded_rows).
        for user in ["u0", "u1"] {
            rt.block_on(
                sqlx::query(
                    "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, status)
                     VALUES ($1, 'opt', 'c', 'ns', 'not_started')",
                )
                .bind(format!("{prefix}{user}"))
                .execute(store.pool()),
            )
            .unwrap();
        }
        let mut buffer = Buffer::default();
        for (i, r) in records.iter().enumerate() {
            let r = match r.clone() {
                Record::Update(mut u) => {
                    u.user_id = format!("{prefix}{}", u.user_id);
                    Record::Update(u)
                }
                Record::Delete(mut d) => {
                    d.user_id = format!("{prefix}{}", d.user_id);
                    Record::Delete(d)
                }
            };
            buffer.apply(seq.fetch_add(1, Ordering::Relaxed) + 1, r);
            if cuts.contains(&i) || i + 1 == records.len() {
                let batch = buffer.take();
                rt.block_on(store.apply(&lease, batch.last_seq(), &batch))
                    .unwrap();
            }
        }
        let written = rt.block_on(rows_in_db(store.pool(), &prefix));
        prop_assert!(
            model::disagreements(&expected, &written).is_empty(),
            "rule book vs database:\n{}",
            model::describe(&expected, &written)
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
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

fn any_update() -> impl Strategy<Value = Update> {
    let op = prop_oneof![
        any::<i32>().prop_map(Op::Set),
        any::<i32>().prop_map(Op::Add),
        any::<i32>().prop_map(Op::CountDay),
        any::<i32>().prop_map(Op::CompleteDay),
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
    fn whatever_arbitrary_bytes_decode_to_re_encodes_to_itself(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(update) = codec::decode(&bytes) {
            prop_assert_eq!(codec::decode(&codec::encode(&update)).unwrap(), update);
        }
    }
}
