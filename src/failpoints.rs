//! Fault injection for the crash tests, built only with `--features failpoints`
//! (otherwise every point compiles to nothing). Points are switched on at
//! start-up with the `FAILPOINTS` environment variable of the `fail` crate,
//! e.g. `FAILPOINTS="flush-after-commit=return"`; `1*return` fires once.
//!
//! | point | where | effect |
//! | --- | --- | --- |
//! | `wal-fsync` | the WAL group commit's flush + fsync | the sync fails (an I/O error) |
//! | `wal-flush-only` | same place | the fsync is skipped: sled's `flush()` alone (the unsafe WAL the power-loss test must catch) |
//! | `wal-after-fsync` | after the fsync, before the buffer and the replies | the process aborts |
//! | `wal-marks-saved` | a group commit that truncates and appends: marks saved, its own frame not yet written | the process aborts |
//! | `flush-after-read` | a flush's transaction, between reading the rows and writing them | whatever is configured (a test sleeps there to change a row meanwhile; another panics there) |
//! | `flush-between-statements` | same place | the statement fails |
//! | `flush-mid-transaction` | same place | the process aborts |
//! | `flush-after-commit` | after COMMIT, before WAL truncation | the process aborts |
//! | `replay-mid` | start-up replay, after the first record | the process aborts |
//! | `owner-before-record` | start-up on PostgreSQL: who owns `user_goal_progress` decided, the choice not yet recorded | whatever is configured (a test sleeps there while another replica records its choice) |
//! | `upkeep-round` | a round of the cluster's upkeep, before it starts | whatever is configured (a test panics there: the round must count as failed, the upkeep go on) |
//! | `wal-before-open` | start-up: the WAL directory's identity recorded, the WAL not yet open (its lock not held) | whatever is configured (a test sleeps there to play a second process recording another identity) |
//!
//! The same builds read `TEST_CLOCK_OFFSET_MS` (src/clock.rs): milliseconds
//! added to the process's clock, so a crash test can acknowledge an event
//! before midnight and replay it after.

/// Aborts the process (as kill -9 would end it) when `name` is configured.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            eprintln!(concat!("failpoint ", $name, ": aborting"));
            std::process::abort()
        })
    };
}

/// Sets up the points named in `FAILPOINTS`; keep the guard for the process's life.
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
