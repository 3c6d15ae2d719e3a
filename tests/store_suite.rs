//! One store test suite, run against both implementations of the store seam:
//! PostgreSQL (a real server, tests/common/pg.rs) and the embedded SQLite
//! store (a file in a temp directory). Each case is written once, in
//! `cases`; the `suite!` macro instantiates it per backend.
//!
//! - The rules: random record sequences (every goal kind, a goal not
//!   assigned by default, GDPR deletions), coalesced at random flush
//!   boundaries and written by the store's real statements, end where the
//!   rule book (`model::apply_one`) ends.
//! - Rows the challenge service owns: claimed and inactive rows never change;
//!   an unassigned goal's row is only updated, never created.
//! - The watermark moves with the rows and only under the current epoch
//!   (fencing); it never goes backwards.
//! - A commit whose outcome is unknown is settled by reading the watermark
//!   back; a failed transaction moves neither rows nor watermark.
//! - A deletion removes the user's rows in its namespace only, and reports
//!   how many.

mod common;
#[path = "common/samples.rs"]
mod samples;

use challenge_event_handler::buffer::{Buffer, Key};
use challenge_event_handler::clock::{micros_of, naive_micros};
use challenge_event_handler::model::{self, Creates, Rows};
use challenge_event_handler::rules::row::{GoalState, Row, Status};
use challenge_event_handler::rules::{Deletion, Op, Record, Update};
use challenge_event_handler::store::{
    Database, Lease, Owner, Prepared, ProgressRow, ProgressStore, Store, StoreError, TableOwner,
};
use chrono::NaiveDate;
use proptest::prelude::*;

/// A fresh store of one backend, and what keeps it alive.
pub struct Fixture {
    pub store: Store,
    _db: Option<common::pg::TestDb>,
    _dir: Option<tempfile::TempDir>,
}

/// Rows are created for goals assigned by default, none else.
fn handler() -> Owner {
    Owner {
        table: TableOwner::Handler,
        defaults: Vec::new(),
    }
}

impl Fixture {
    /// PostgreSQL with `user_goal_progress` as the challenge service's
    /// migrations make it (tests/fixtures/challenge-service).
    async fn postgres() -> Fixture {
        let db = common::pg::TestDb::new().await;
        db.migrate_as_the_challenge_service().await;
        let store =
            Store::connect_lazy(&Database::Postgres(Box::new(db.url.parse().unwrap())), 2, 3);
        let prepared = store.prepare(None, true).await.expect("prepare");
        assert!(
            matches!(
                prepared,
                Prepared::Ready {
                    owner: TableOwner::Service,
                    ..
                }
            ),
            "{prepared:?}"
        );
        Fixture {
            store,
            _db: Some(db),
            _dir: None,
        }
    }

    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect_lazy(
            &Database::Sqlite(dir.path().join("data").join("progress.sqlite3")),
            2,
            3,
        );
        store.prepare(None, true).await.expect("prepare");
        Fixture {
            store,
            _db: None,
            _dir: Some(dir),
        }
    }

    /// Runs plain SQL (no parameters; the same text works on both backends).
    async fn exec(&self, sql: &str) {
        match &self.store {
            Store::Postgres(s) => sqlx::query(sql).execute(s.pool()).await.map(|_| ()),
            Store::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn rows(&self, user: &str) -> Vec<ProgressRow> {
        self.store
            .user_progress(user, None)
            .await
            .expect("read rows")
    }

    /// Inserts `rows` as the challenge service would have them.
    async fn seed(&self, prefix: &str, rows: &Rows) {
        let time = |t: Option<i64>| match t {
            Some(us) => format!("'{}'", naive_micros(us).format("%Y-%m-%d %H:%M:%S%.6f")),
            None => "NULL".into(),
        };
        for (key, row) in rows {
            self.exec(&format!(
                "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress,
                     status, completed_at, claimed_at, is_active, updated_at, expires_at, baseline_value)
                 VALUES ('{prefix}{}', '{}', 'c', 'ns', {}, '{}', {}, {}, {}, {}, {}, {})",
                key.user_id,
                key.goal_id,
                row.progress,
                row.status.as_str(),
                time(row.completed_at),
                time(row.claimed_at),
                row.is_active,
                time(Some(row.updated_at)),
                time(row.expires_at),
                row.baseline.map_or("NULL".into(), |b| b.to_string()),
            ))
            .await;
        }
    }
}

fn update(user: &str, goal: &str, op: Op, creates_row: bool) -> Record {
    Record::Update(Update {
        user_id: user.into(),
        goal_id: goal.into(),
        challenge_id: "c".into(),
        namespace: "ns".into(),
        target: 10,
        creates_row,
        event_time_ms: 1_767_225_600_000,
        event_id: String::new(),
        op,
    })
}

fn deletion(user: &str, namespace: &str) -> Record {
    Record::Delete(Deletion {
        user_id: user.into(),
        namespace: namespace.into(),
        event_time_ms: 1_767_225_600_000,
        event_id: format!("gdpr-{user}"),
    })
}

/// A batch of `records` with sequence numbers from `first`.
fn batch(first: u64, records: Vec<Record>) -> Buffer {
    let mut buffer = Buffer::starting_after(first - 1);
    for (i, r) in records.into_iter().enumerate() {
        buffer.apply(first + i as u64, r);
    }
    buffer
}

/// A batch from `first` of one update per (user, amount): Add(amount) to
/// goal "g", creating the row.
fn adds(first: u64, adds: &[(&str, i32)]) -> Buffer {
    let records = adds
        .iter()
        .map(|(user, add)| update(user, "g", Op::Add(*add), true))
        .collect();
    batch(first, records)
}

/// A new PostgreSQL database whose `user_goal_progress` the handler owns,
/// and a store on it with `connections` and `batch_size` (DB_MAX_CONNECTIONS,
/// DB_BATCH_SIZE).
async fn handler_owned(connections: u32, batch_size: usize) -> (common::pg::TestDb, Store) {
    let db = common::pg::TestDb::new().await;
    let store = Store::connect_lazy(
        &Database::Postgres(Box::new(db.url.parse().unwrap())),
        connections,
        batch_size,
    );
    store
        .prepare(Some(TableOwner::Handler), true)
        .await
        .expect("prepare");
    (db, store)
}

fn progress_of(rows: &[ProgressRow]) -> Vec<(&str, i32, &str)> {
    rows.iter()
        .map(|r| (r.goal_id.as_str(), r.progress, r.status.as_str()))
        .collect()
}

/// A stored row as the rules see it.
fn row_of(r: &ProgressRow) -> Row {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    Row {
        progress: r.progress,
        status: Status::parse(&r.status).expect("a valid status"),
        completed_at: r.completed_at.map(micros_of),
        claimed_at: r.claimed_at.map(micros_of),
        is_active: r.is_active,
        updated_at: micros_of(r.updated_at),
        expires_at: r.expires_at.map(micros_of),
        baseline: r.baseline_value,
        state: GoalState {
            last_event_at: r.last_event_at.map(micros_of),
            last_counted_day: r.last_counted_day.map(|d| (d - epoch).num_days() as i32),
        },
    }
}

/// A store's rows of users `u0`..`u2` (after `prefix`) as the model sees them.
async fn model_rows(store: &Store, prefix: &str) -> Rows {
    let mut rows = Rows::new();
    for u in 0..3 {
        let user = format!("{prefix}u{u}");
        for r in store.user_progress(&user, None).await.unwrap() {
            let key = Key {
                user_id: format!("u{u}"),
                goal_id: r.goal_id.clone(),
            };
            rows.insert(key, row_of(&r));
        }
    }
    rows
}

mod cases {
    use super::*;

    /// Random record sequences of both generations through the buffer and
    /// the store's real statements end where the rule book ends, with the
    /// handler creating rows (`creates`) or only updating them.
    pub fn the_statements_end_where_the_rule_book_ends(
        fixture: impl FnOnce(&tokio::runtime::Runtime) -> Fixture,
        creates: Creates,
    ) {
        let owner = match creates {
            Creates::DefaultGoals => handler(),
            Creates::Nothing => Owner::service(),
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let f = fixture(&rt);
        let lease = rt.block_on(f.store.lease("suite")).unwrap();
        let case = std::cell::Cell::new(0);
        let seq = std::cell::Cell::new(0u64);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
        let strategy = (samples::events(), prop::collection::vec(0usize..80, 0..10));
        let result = runner.run(&strategy, |(events, cuts)| {
            case.set(case.get() + 1);
            let prefix = format!("case{}-", case.get());
            let records = samples::records(&events);
            let expected = model::one_by_one(&model::seeded_rows(), &records, creates);
            rt.block_on(f.seed(&prefix, &model::seeded_rows()));
            let mut buffer = Buffer::starting_after(seq.get());
            for (i, r) in records.iter().enumerate() {
                let r = match r.clone() {
                    // Each case's own users and event ids (the ledger
                    // remembers ids across cases on PostgreSQL).
                    Record::Update(mut u) => {
                        u.user_id = format!("{prefix}{}", u.user_id);
                        u.event_id = format!("{prefix}{}", u.event_id);
                        Record::Update(u)
                    }
                    Record::Delete(mut d) => {
                        d.user_id = format!("{prefix}{}", d.user_id);
                        d.event_id = format!("{prefix}{}", d.event_id);
                        Record::Delete(d)
                    }
                };
                seq.set(seq.get() + 1);
                buffer.apply(seq.get(), r);
                if cuts.contains(&i) || i + 1 == records.len() {
                    let batch = buffer.take();
                    rt.block_on(f.store.apply(&lease, batch.last_seq(), &batch, &owner))
                        .unwrap();
                }
            }
            let written = rt.block_on(model_rows(&f.store, &prefix));
            prop_assert!(
                model::disagreements(&expected, &written).is_empty(),
                "rule book vs store:\n{}",
                model::describe(&expected, &written)
            );
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    pub async fn rows_the_challenge_service_owns_are_left_alone(f: Fixture) {
        f.exec(
            "INSERT INTO user_goal_progress
                 (user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at, is_active)
             VALUES ('ed', 'claimed', 'c', 'ns', 10, 'claimed', '2026-01-01 00:00:00', '2026-01-01 00:00:00', true),
                    ('ed', 'inactive', 'c', 'ns', 3, 'in_progress', NULL, NULL, false),
                    ('ed', 'activated', 'c', 'ns', 0, 'not_started', NULL, NULL, true)",
        )
        .await;
        let lease = f.store.lease("owner").await.unwrap();
        let b = batch(
            1,
            vec![
                update("ed", "claimed", Op::Add(5), true),
                update("ed", "inactive", Op::Set(50), true),
                update("ed", "activated", Op::Add(4), false),
                update("ed", "never-assigned", Op::Add(4), false),
                update("ed", "assigned", Op::Add(12), true),
            ],
        );
        f.store
            .apply(&lease, b.last_seq(), &b, &handler())
            .await
            .unwrap();
        assert_eq!(
            progress_of(&f.rows("ed").await),
            [
                ("activated", 4, "in_progress"),
                ("assigned", 12, "completed"),
                ("claimed", 10, "claimed"),
                ("inactive", 3, "in_progress"),
            ]
        );
    }

    pub async fn the_watermark_moves_with_the_rows_only_under_the_current_epoch(f: Fixture) {
        assert_eq!(f.store.watermark("w").await.unwrap(), None);
        let old = f.store.lease("w").await.unwrap();
        assert_eq!((old.epoch, old.applied_seq), (1, 0));
        let b = batch(1, vec![update("wa", "g", Op::Add(1), true); 3]);
        f.store.apply(&old, 3, &b, &handler()).await.unwrap();
        assert_eq!(f.store.applied_seq(&old).await.unwrap(), 3);

        // A newer process takes the instance over: the older one is fenced.
        let new = f.store.lease("w").await.unwrap();
        assert_eq!((new.epoch, new.applied_seq), (2, 3));
        let zombie = batch(4, vec![update("wz", "g", Op::Add(1), true)]);
        let err = f
            .store
            .apply(&old, 4, &zombie, &handler())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced { epoch: 1, .. }), "{err}");
        assert!(!err.is_transient());
        assert!(f.rows("wz").await.is_empty(), "a fenced flush wrote a row");
        assert!(matches!(
            f.store.applied_seq(&old).await,
            Err(StoreError::Fenced { .. })
        ));

        // A batch that follows a sequence number the watermark has passed
        // (a flush abandoned with its COMMIT in flight committed after all)
        // is refused and writes nothing: the watermark never goes backwards,
        // and what is below it is never written again.
        let late = batch(2, vec![update("wb", "g", Op::Add(1), true)]);
        let err = f.store.apply(&new, 2, &late, &handler()).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Ahead {
                    applied: 3,
                    after: 1
                }
            ),
            "{err}"
        );
        assert!(err.is_transient());
        assert!(f.rows("wb").await.is_empty(), "a refused flush wrote a row");
        let w = f.store.watermark("w").await.unwrap().unwrap();
        assert_eq!((w.epoch, w.applied_seq), (2, 3));
        assert_eq!(progress_of(&f.rows("wa").await), [("g", 3, "in_progress")]);
    }

    pub async fn a_commit_of_unknown_outcome_is_settled_by_the_watermark(f: Fixture) {
        let lease: Lease = f.store.lease("u").await.unwrap();
        let ok = batch(1, vec![update("ua", "g", Op::Add(2), true)]);
        f.store.apply(&lease, 1, &ok, &handler()).await.unwrap();
        // The flusher's question after a lost COMMIT reply: did it land?
        assert!(f.store.applied_seq(&lease).await.unwrap() >= ok.last_seq());

        // A transaction that fails part-way (here a user id over 100
        // characters, which the table refuses) moves neither rows nor watermark.
        let bad = batch(
            2,
            vec![
                update("ub", "g", Op::Add(1), true),
                update(&"x".repeat(101), "g", Op::Add(1), true),
            ],
        );
        let err = f
            .store
            .apply(&lease, 3, &bad, &handler())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err}");
        assert!(!err.is_transient());
        assert_eq!(f.store.applied_seq(&lease).await.unwrap(), 1);
        assert!(f.rows("ub").await.is_empty());
    }

    pub async fn a_deletion_removes_the_users_rows_in_its_namespace_only(f: Fixture) {
        // The same player in another namespace, with the handler's state of
        // that row (an absolute goal keeps its newest event's time).
        let mut elsewhere = update("gd", "elsewhere", Op::Set(7), true);
        if let Record::Update(u) = &mut elsewhere {
            u.namespace = "other".into();
        }
        let lease = f.store.lease("d").await.unwrap();
        let first = batch(
            1,
            vec![
                update("gd", "a", Op::Add(1), true),
                update("gd", "b", Op::Set(4), true),
                update("keep", "a", Op::Add(1), true),
                elsewhere,
            ],
        );
        f.store.apply(&lease, 4, &first, &handler()).await.unwrap();
        let state_elsewhere = |rows: &[ProgressRow]| {
            rows.iter()
                .find(|r| r.goal_id == "elsewhere")
                .and_then(|r| r.last_event_at)
        };
        assert!(state_elsewhere(&f.rows("gd").await).is_some());
        let second = batch(
            5,
            vec![
                deletion("gd", "ns"),
                update("gd", "a", Op::Add(5), true),
                deletion("nobody", "ns"),
            ],
        );
        let applied = f.store.apply(&lease, 7, &second, &handler()).await.unwrap();
        let counts: Vec<(&str, u64)> = applied
            .deleted
            .iter()
            .map(|d| (d.user_id.as_str(), d.rows))
            .collect();
        assert_eq!(counts, [("gd", 2), ("nobody", 0)]);
        assert_eq!(applied.deleted[0].event_id, "gdpr-gd");
        // After the deletion: the fresh start, and the other namespace's row.
        let gd = f.rows("gd").await;
        assert_eq!(
            progress_of(&gd),
            [("a", 5, "in_progress"), ("elsewhere", 7, "in_progress")]
        );
        // The other namespace's row keeps its state: a deletion in one
        // namespace must not make another's daily goal count a day again.
        assert!(state_elsewhere(&gd).is_some(), "{gd:?}");
        assert_eq!(
            progress_of(&f.rows("keep").await),
            [("a", 1, "in_progress")]
        );
    }

    pub async fn migrations_run_again_change_nothing(f: Fixture) {
        let lease = f.store.lease("m").await.unwrap();
        let b = batch(1, vec![update("ma", "g", Op::Add(2), true)]);
        f.store.apply(&lease, 1, &b, &handler()).await.unwrap();
        f.store.prepare(None, true).await.unwrap();
        f.store.prepare(None, true).await.unwrap();
        assert_eq!(progress_of(&f.rows("ma").await), [("g", 2, "in_progress")]);
        let one = f.store.user_progress("ma", Some("g")).await.unwrap();
        assert_eq!(one.len(), 1);
        assert!(f
            .store
            .user_progress("ma", Some("other"))
            .await
            .unwrap()
            .is_empty());
    }
}

macro_rules! suite {
    ($($backend:ident),*) => {$(
        mod $backend {
            use super::*;

            async fn fixture() -> Fixture {
                Fixture::$backend().await
            }

            #[test]
            fn the_statements_end_where_the_rule_book_ends_where_the_handler_creates_rows() {
                cases::the_statements_end_where_the_rule_book_ends(
                    |rt| rt.block_on(fixture()),
                    Creates::DefaultGoals,
                );
            }

            #[test]
            fn the_statements_end_where_the_rule_book_ends_where_they_only_update_rows() {
                cases::the_statements_end_where_the_rule_book_ends(
                    |rt| rt.block_on(fixture()),
                    Creates::Nothing,
                );
            }

            #[tokio::test]
            async fn rows_the_challenge_service_owns_are_left_alone() {
                cases::rows_the_challenge_service_owns_are_left_alone(fixture().await).await;
            }

            #[tokio::test]
            async fn the_watermark_moves_with_the_rows_only_under_the_current_epoch() {
                cases::the_watermark_moves_with_the_rows_only_under_the_current_epoch(fixture().await).await;
            }

            #[tokio::test]
            async fn a_commit_of_unknown_outcome_is_settled_by_the_watermark() {
                cases::a_commit_of_unknown_outcome_is_settled_by_the_watermark(fixture().await).await;
            }

            #[tokio::test]
            async fn a_deletion_removes_the_users_rows_in_its_namespace_only() {
                cases::a_deletion_removes_the_users_rows_in_its_namespace_only(fixture().await).await;
            }

            #[tokio::test]
            async fn migrations_run_again_change_nothing() {
                cases::migrations_run_again_change_nothing(fixture().await).await;
            }
        }
    )*};
}

suite!(postgres, sqlite);

/// A flush taken a chunk of players at a time (DB_BATCH_SIZE 1: chunks of 4
/// keys) writes what the same batch taken whole writes (10,000 keys), on a
/// table the handler owns: players' goals assigned by default (created at
/// each player's first update, as the service's Initialize gives them),
/// updates of rows that exist, and players with more keys than a chunk.
#[tokio::test]
async fn postgres_a_flush_in_chunks_of_players_writes_what_one_whole_flush_writes() {
    use challenge_event_handler::rules::{GoalKind, GoalRule};
    use challenge_event_handler::store::DefaultGoal;
    let owner = Owner {
        table: TableOwner::Handler,
        defaults: (0..3)
            .map(|g| DefaultGoal {
                goal_id: format!("d{g}"),
                challenge_id: "c".into(),
                rule: GoalRule::Typed(GoalKind::Increment),
            })
            .collect(),
    };
    let mut records = Vec::new();
    for user in 0..9 {
        // Player p has p % 4 + 1 goals of its own, updated twice, and one default goal.
        for goal in 0..(user % 4 + 1) {
            for step in 0..2 {
                let Record::Update(mut u) = update(
                    &format!("p{user}"),
                    &format!("g{goal}"),
                    Op::Add(step + goal + 1),
                    goal % 2 == 0,
                ) else {
                    unreachable!()
                };
                u.event_time_ms += i64::from(user * 1_000 + goal * 10 + step);
                records.push(Record::Update(u));
            }
        }
        records.push(update(&format!("p{user}"), "d1", Op::Add(user + 1), true));
    }
    let mut written = Vec::new();
    for batch_size in [1, 2_500] {
        let (db, store) = handler_owned(2, batch_size).await;
        // Player p0 exists already (one row): it gets no default goals now.
        sqlx::query(
            "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status, is_active)
             VALUES ('p0', 'g0', 'c', 'ns', 5, 'in_progress', true)",
        )
        .execute(&db.pool().await)
        .await
        .unwrap();
        let lease = store.lease("chunks").await.unwrap();
        let mut buffer = Buffer::starting_after(0);
        for (seq, r) in records.iter().enumerate() {
            buffer.apply(seq as u64 + 1, r.clone());
        }
        let applied = store
            .apply(&lease, buffer.last_seq(), &buffer, &owner)
            .await
            .unwrap();
        let mut rows = Vec::new();
        for user in 0..9 {
            for r in store
                .user_progress(&format!("p{user}"), None)
                .await
                .unwrap()
            {
                rows.push((
                    r.user_id.clone(),
                    r.goal_id.clone(),
                    r.progress,
                    r.status.clone(),
                    r.completed_at,
                    r.assigned_at,
                ));
            }
        }
        written.push((applied.rows, rows));
    }
    let (whole, chunked) = (&written[1], &written[0]);
    assert_eq!(chunked, whole, "chunks of 4 keys against one whole flush");
    // Every player but p0 got the three default goals; p0 only what it had
    // plus the goals its updates create.
    let goals_of = |user: &str| -> Vec<&str> {
        whole
            .1
            .iter()
            .filter(|r| r.0 == user)
            .map(|r| r.1.as_str())
            .collect()
    };
    assert_eq!(goals_of("p0"), ["d1", "g0"]);
    assert_eq!(goals_of("p3"), ["d0", "d1", "d2", "g0", "g2"]);
    assert!(whole.0 > 0);
}

/// The next chunk's rows are read ahead, outside the flush's transaction,
/// except in a flush that deletes users: from outside, a deleted player's
/// rows would still be there, and the player's fresh start after the
/// deletion (a row created again) would be lost. DB_BATCH_SIZE 1: every
/// player is a chunk of its own; two connections: one to read ahead with.
#[tokio::test]
async fn postgres_a_player_deleted_and_updated_in_one_chunked_flush_starts_afresh() {
    let (_db, store) = handler_owned(2, 1).await;
    let lease = store.lease("ahead").await.unwrap();
    let first = adds(1, &[("a", 1), ("b", 5), ("c", 7)]);
    store.apply(&lease, 3, &first, &handler()).await.unwrap();
    // Read ahead: a's chunk is read inside, b's and c's beside the writes.
    let second = adds(4, &[("a", 1), ("b", 1), ("c", 1)]);
    store.apply(&lease, 6, &second, &handler()).await.unwrap();
    let third = batch(
        7,
        vec![
            update("a", "g", Op::Add(1), true),
            deletion("b", "ns"),
            update("b", "g", Op::Add(2), true),
            update("c", "g", Op::Add(1), true),
        ],
    );
    let applied = store.apply(&lease, 10, &third, &handler()).await.unwrap();
    assert_eq!(applied.deleted.len(), 1);
    let progress = |user: &'static str| {
        let store = &store;
        async move {
            let rows = store.user_progress(user, None).await.unwrap();
            rows.iter()
                .map(|r| (r.goal_id.clone(), r.progress))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(progress("a").await, [("g".to_string(), 3)]);
    assert_eq!(
        progress("b").await,
        [("g".to_string(), 2)],
        "b's fresh start after the deletion"
    );
    assert_eq!(progress("c").await, [("g".to_string(), 9)]);
}

/// With one connection (DB_MAX_CONNECTIONS=1) the transaction holds it:
/// a chunked flush reads every chunk inside, one after the other, and
/// writes what it writes with a connection to spare.
#[tokio::test]
async fn postgres_a_chunked_flush_with_one_connection_reads_inside() {
    let mut written = Vec::new();
    for connections in [1, 2] {
        let (_db, store) = handler_owned(connections, 1).await;
        let lease = store.lease("one").await.unwrap();
        let users = ["a", "b", "c", "d"];
        for (n, add) in [(1, 1), (5, 2)] {
            let each: Vec<(&str, i32)> = users.iter().map(|u| (*u, add)).collect();
            let b = adds(n, &each);
            store
                .apply(&lease, b.last_seq(), &b, &handler())
                .await
                .unwrap();
        }
        let mut rows = Vec::new();
        for user in users {
            for r in store.user_progress(user, None).await.unwrap() {
                rows.push((r.user_id, r.goal_id, r.progress));
            }
        }
        written.push(rows);
    }
    assert_eq!(written[0], written[1], "one connection against two");
    assert_eq!(written[0].len(), 4);
    assert!(written[0].iter().all(|r| r.2 == 3), "{:?}", written[0]);
}

/// A database whose default isolation is REPEATABLE READ: the store's
/// sessions still run at READ COMMITTED, where a flush that waited for the
/// cluster lock sees what committed meanwhile.
#[tokio::test]
async fn postgres_sessions_run_at_read_committed_whatever_the_databases_default() {
    let db = common::pg::TestDb::new().await;
    let admin = db.pool().await;
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" SET default_transaction_isolation = 'repeatable read'"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let plain = sqlx::PgPool::connect(&db.url).await.unwrap();
    let default: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(&plain)
        .await
        .unwrap();
    assert_eq!(default, "repeatable read", "the database's default");
    let store = Store::connect_lazy(&Database::Postgres(Box::new(db.url.parse().unwrap())), 2, 3);
    let Store::Postgres(pg) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let mut tx = pg.pool().begin().await.unwrap();
    let level: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(level, "read committed");
}
