//! A `user_goal_progress` row as the rules read and write it.
//!
//! The flush reads the rows its batch touches, applies the rules here in
//! Rust and writes back what changed (`src/store`): the SQL only moves
//! columns, so the rule book (`src/model.rs`), the coalesced buffer and
//! the database cannot disagree about a rule. Times are microseconds since
//! the Unix epoch, UTC, which is what PostgreSQL's `TIMESTAMP` holds, so a
//! column the rules leave alone is written back exactly as it was read.

/// Microseconds since the Unix epoch (UTC).
pub type Micros = i64;

/// Milliseconds (the WAL's unit) to microseconds.
pub fn micros(ms: i64) -> Micros {
    ms.saturating_mul(1000)
}

/// The `status` column (the challenge service's CHECK constraint allows these four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    NotStarted,
    InProgress,
    Completed,
    Claimed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotStarted => "not_started",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Claimed => "claimed",
        }
    }

    /// The column's text; None for anything the CHECK constraint forbids.
    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "not_started" => Some(Status::NotStarted),
            "in_progress" => Some(Status::InProgress),
            "completed" => Some(Status::Completed),
            "claimed" => Some(Status::Claimed),
            _ => None,
        }
    }
}

/// What the type rules keep per row beyond the service's columns, in the
/// handler's own table (`challenge_event_handler_goal_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoalState {
    /// The newest event applied (absolute goals are never set back by an older one).
    pub last_event_at: Option<Micros>,
    /// The last UTC day counted (daily and daily-increment goals), days since 1970-01-01.
    pub last_counted_day: Option<i32>,
}

impl GoalState {
    pub fn is_empty(&self) -> bool {
        self.last_event_at.is_none() && self.last_counted_day.is_none()
    }
}

/// The columns of one row that the rules decide or depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub progress: i32,
    pub status: Status,
    pub completed_at: Option<Micros>,
    pub claimed_at: Option<Micros>,
    pub is_active: bool,
    pub updated_at: Micros,
    pub expires_at: Option<Micros>,
    pub baseline: Option<i32>,
    pub state: GoalState,
}

impl Row {
    /// The row the challenge service inserts when it assigns a goal
    /// (Initialize, activation): nothing counted, active, updated at `at`.
    pub fn assigned(at: Micros) -> Row {
        Row {
            progress: 0,
            status: Status::NotStarted,
            completed_at: None,
            claimed_at: None,
            is_active: true,
            updated_at: at,
            expires_at: None,
            baseline: None,
            state: GoalState::default(),
        }
    }
}

/// Clamps a computed progress into the column (`INT`, `CHECK (progress >= 0)`).
pub fn progress_column(value: i64) -> i32 {
    value.clamp(0, i64::from(i32::MAX)) as i32
}

/// Clamps a computed baseline into the column (`INT`, may be negative).
pub fn int_column(value: i64) -> i32 {
    value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}
