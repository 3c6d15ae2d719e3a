//! Property tests (proptest) for the rules and the WAL record codec.
//!
//! - Coalescing: a sequence of updates applied one by one (`model::apply_one`,
//!   the rule book) and the same sequence coalesced into buffers at random
//!   flush boundaries, some flushes failing and merged back, then applied as
//!   the SQL does (`model::apply_batch`), end in rows that agree.
//! - The interleaving of independent users changes nothing.
//! - A completed goal never regresses, one by one or batch by batch.
//! - The real SQL (`PgStore::apply` on a real PostgreSQL) ends where the rule
//!   book ends, batch boundaries anywhere.
//! - Every record round-trips through the codec; any one-byte change or
//!   truncation is detected; arbitrary bytes never panic the decoder, and what
//!   they decode to round-trips.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use challenge_event_handler::buffer::{Buffer, Key};
use challenge_event_handler::model::{self, After, Kind, Row, Rows};
use challenge_event_handler::rules::{Op, Update, MAX_ID_LEN};
use challenge_event_handler::store::postgres::PgStore;
use challenge_event_handler::store::ProgressStore;
use challenge_event_handler::wal::codec;
use chrono::{NaiveDate, NaiveDateTime};
use common::pg;
use proptest::prelude::*;

const DAY_MS: i64 = 86_400_000;

/// One generated event: which user, which goal, a value and a time offset.
#[derive(Debug, Clone)]
struct Ev {
    user: u8,
    goal: u8,
    value: i32,
    offset_ms: i64,
}

fn updates(events: &[Ev]) -> Vec<Update> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| model::sample_update(i, e.user, e.goal, e.value, e.offset_ms))
        .collect()
}

/// Flushes after each of `cuts`; those also in `failing` fail.
fn coalesced(updates: &[Update], cuts: &[usize], failing: &[usize]) -> Rows {
    model::coalesced(updates, |i| {
        match (cuts.contains(&i), failing.contains(&i)) {
            (false, _) => After::Nothing,
            (true, false) => After::Flush,
            (true, true) => After::FailedFlush,
        }
    })
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (0u8..3, 0u8..4, any::<i32>(), 0..10 * DAY_MS).prop_map(
            |(user, goal, value, offset_ms)| Ev {
                user,
                goal,
                value,
                offset_ms,
            },
        ),
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
        let updates = updates(&events);
        let sequential = model::one_by_one(&updates);
        let batched = coalesced(&updates, &cuts, &failing);
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
        let updates = updates(&events);
        // Each user's updates in their own order; users interleaved by `picks`.
        let mut queues: Vec<std::collections::VecDeque<Update>> = vec![Default::default(); 3];
        for u in &updates {
            let user: usize = u.user_id[1..].parse().unwrap();
            queues[user].push_back(u.clone());
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
        prop_assert_eq!(model::one_by_one(&updates), model::one_by_one(&shuffled));
        let (a, b) = (coalesced(&updates, &cuts, &[]), coalesced(&shuffled, &cuts, &[]));
        prop_assert!(model::disagreements(&a, &b).is_empty(), "{}", model::describe(&a, &b));
    }

    #[test]
    fn a_completed_goal_never_regresses(events in events(), cuts in prop::collection::vec(0usize..80, 0..10)) {
        let updates = updates(&events);
        let check = |before: &Rows, after: &Rows| -> Result<(), TestCaseError> {
            for (key, was) in before.iter().filter(|(_, r)| r.completed) {
                let now = &after[key];
                prop_assert!(now.completed, "{key:?} was completed: {was:?}, now {now:?}");
                prop_assert!(now.progress >= was.progress, "{key:?}: {was:?} -> {now:?}");
                if now.kind == model::Kind::Daily {
                    prop_assert!(now.last_counted_day >= was.last_counted_day);
                } else {
                    prop_assert_eq!(now, was, "a completed goal changed");
                }
            }
            Ok(())
        };
        let mut rows = Rows::new();
        for u in &updates {
            let before = rows.clone();
            model::apply_one(&mut rows, u);
            check(&before, &rows)?;
        }
        let mut rows = Rows::new();
        let mut buffer = Buffer::default();
        for (i, u) in updates.iter().enumerate() {
            buffer.apply(i as u64 + 1, u.clone());
            if cuts.contains(&i) || i + 1 == updates.len() {
                let before = rows.clone();
                model::apply_batch(&mut rows, &buffer.take());
                check(&before, &rows)?;
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
                    "inc" => Kind::Increment,
                    "dinc" => Kind::DailyIncrement,
                    _ => Kind::Daily,
                };
                let row = Row {
                    kind,
                    progress,
                    completed: status == "completed",
                    completed_at: ms(completed_at),
                    last_event_ms: ms(last_event).unwrap_or_default(),
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
        let updates = updates(&events);
        let expected = model::one_by_one(&updates);
        let mut buffer = Buffer::default();
        for (i, u) in updates.iter().enumerate() {
            let mut u = u.clone();
            u.user_id = format!("{prefix}{}", u.user_id);
            buffer.apply(seq.fetch_add(1, Ordering::Relaxed) + 1, u);
            if cuts.contains(&i) || i + 1 == updates.len() {
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

fn any_update() -> impl Strategy<Value = Update> {
    let op = prop_oneof![
        any::<i32>().prop_map(Op::Set),
        any::<i32>().prop_map(Op::Add),
        any::<i32>().prop_map(Op::CountDay),
        any::<i32>().prop_map(Op::CompleteDay),
    ];
    (
        (text(), text(), text(), text()),
        any::<i32>(),
        any::<i64>(),
        text(),
        op,
    )
        .prop_map(
            |((user_id, goal_id, challenge_id, namespace), target, event_time_ms, event_id, op)| {
                Update {
                    user_id,
                    goal_id,
                    challenge_id,
                    namespace,
                    target,
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
        update in any_update(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let record = codec::encode(&update);
        prop_assert!(record.len() <= codec::MAX_RECORD_BYTES);
        prop_assert_eq!(codec::decode(&record).unwrap(), update);
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
