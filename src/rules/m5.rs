//! The M5 rules: `requirement.progressMode` (absolute / relative) and
//! goal-level `rotation`, as AccelByte's current handler applies them
//! (docs/DESIGN.md, "Progress rules"), with this project's four decided
//! differences:
//!
//! 1. results never depend on flush timing: [`apply`] is what one event
//!    does, and a coalesced [`Run`] of events gives the same row;
//! 2. `completed` always comes with a `completed_at`;
//! 3. a relative row the challenge service reset (`not_started`, its
//!    baseline kept) is re-baselined by the next event, as if the baseline
//!    were NULL;
//! 4. an event's rotation period is decided by when it was acknowledged
//!    (the record's time), never by when the flush runs; events of one
//!    user-goal from two periods are never coalesced.
//!
//! Besides: an event from an earlier period than the row's last update (it
//! was acknowledged before a boundary the row has since crossed) does not
//! count toward the later period of a goal that resets, and updates a goal
//! that keeps its progress as an event of the current period would.

use bincode::{Decode, Encode};
use chrono::{Datelike, NaiveDate};

use super::row::{int_column, micros, progress_column, Row, Status};

const DAY_MS: i64 = 86_400_000;
/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const CE_TO_UNIX_DAYS: i64 = 719_163;

/// When a rotating goal's period ends (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Schedule {
    /// Every day at 00:00.
    Daily,
    /// Every Monday at 00:00.
    Weekly,
    /// The 1st of every month at 00:00.
    Monthly,
}

impl Schedule {
    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Daily => "daily",
            Schedule::Weekly => "weekly",
            Schedule::Monthly => "monthly",
        }
    }

    /// The start of the period `time_ms` falls in (Unix ms).
    pub fn period_start(self, time_ms: i64) -> i64 {
        let day = time_ms.div_euclid(DAY_MS);
        let first_day = match self {
            Schedule::Daily => day,
            // 1970-01-01 was a Thursday, three days after a Monday.
            Schedule::Weekly => day - (day + 3).rem_euclid(7),
            Schedule::Monthly => match date_of(day) {
                Some(date) => day - i64::from(date.day0()),
                None => day,
            },
        };
        first_day.saturating_mul(DAY_MS)
    }

    /// The start of the period after the one starting at `start_ms`.
    pub fn next_boundary(self, start_ms: i64) -> i64 {
        let day = start_ms.div_euclid(DAY_MS);
        let next_day = match self {
            Schedule::Daily => day + 1,
            Schedule::Weekly => day + 7,
            Schedule::Monthly => {
                match date_of(day).and_then(|d| d.checked_add_months(chrono::Months::new(1))) {
                    Some(next) => i64::from(next.num_days_from_ce()) - CE_TO_UNIX_DAYS,
                    None => day + 31,
                }
            }
        };
        next_day.saturating_mul(DAY_MS)
    }
}

fn date_of(unix_day: i64) -> Option<NaiveDate> {
    let ce = i32::try_from(unix_day.checked_add(CE_TO_UNIX_DAYS)?).ok()?;
    NaiveDate::from_num_days_from_ce_opt(ce)
}

/// A goal's `rotation` (only when enabled; a disabled rotation is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Rotation {
    pub schedule: Schedule,
    /// `onExpiry.resetProgress`: a new period starts from zero.
    pub reset_progress: bool,
    /// `onExpiry.allowReselection`: a claimed goal can be completed and
    /// claimed again in a later period.
    pub allow_reselection: bool,
}

/// How an M5 goal counts: its progress mode and rotation. Every record
/// carries it, so replay never depends on today's `challenges.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Goal {
    /// `progressMode: relative`: progress holds the raw stat value, and the
    /// goal counts `progress − baseline_value`.
    pub relative: bool,
    pub rotation: Option<Rotation>,
}

/// What one event does to one M5 goal: the stat's value (none for a login)
/// and its increment (1 for a login).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Step {
    pub goal: Goal,
    pub value: Option<i32>,
    pub inc: i32,
}

/// The rotation period an event acknowledged at `at_ms` falls in:
/// (start, next boundary), Unix ms.
fn period(goal: &Goal, at_ms: i64) -> Option<(i64, i64)> {
    goal.rotation.map(|r| {
        let start = r.schedule.period_start(at_ms);
        (start, r.schedule.next_boundary(start))
    })
}

/// One event acknowledged at `at_ms`, on its own: the rule book.
/// `None`: the row does not change (inactive, claimed without
/// reselection, or an event that belongs to a period the row has left).
pub fn apply(row: &Row, step: &Step, target: i32, at_ms: i64) -> Option<Row> {
    let goal = &step.goal;
    let (reset, reselect) = goal
        .rotation
        .map_or((false, false), |r| (r.reset_progress, r.allow_reselection));
    let claimed = row.status == Status::Claimed;
    if !row.is_active || (claimed && !reselect) {
        return None;
    }
    let period = period(goal, at_ms);
    if let Some((_, next)) = period {
        if reset && row.updated_at >= micros(next) {
            return None; // late: that period's progress was reset since
        }
    }
    let at = micros(at_ms);
    let stale = period.is_some_and(|(start, _)| row.updated_at < micros(start));
    let relative = goal.relative;
    let inc = i64::from(step.inc);
    let target = i64::from(target);
    let new = i64::from(progress_column(
        step.value.map_or(i64::from(row.progress) + inc, i64::from),
    ));
    // A row the service reset (progress 0, not_started) keeps its old
    // baseline; count from this event. The handler writes not_started too,
    // when a claimed row's new period begins with an event of no increment:
    // that baseline is real, and kept as upstream keeps it, unless the
    // stat's value was 0 (then the row reads as a reset). The expiry would
    // tell the two apart, but rows whose `updated_at` was moved by hand
    // (upstream's own E2E scripts do) keep a later one, and mistaking a
    // reset for the handler's row completes the goal at once on the old
    // baseline, the more common and the worse of the two.
    let base = if relative && row.status == Status::NotStarted && row.progress == 0 {
        None
    } else {
        row.baseline.map(i64::from)
    };
    let reaches = |b: i64| new - b >= target;
    let rebase = Some(int_column(new - inc));

    let baseline = if !relative {
        row.baseline
    } else if stale && (claimed || reset) {
        rebase
    } else if stale || base.is_some() {
        base.map(int_column)
    } else {
        rebase
    };

    let was_completed = row.status == Status::Completed;
    let status = if claimed && stale {
        if inc >= target {
            Status::Completed
        } else if inc > 0 {
            Status::InProgress
        } else {
            Status::NotStarted
        }
    } else if claimed {
        Status::Claimed
    } else if (was_completed && !(relative && stale && reset))
        || (!relative && new >= target)
        || (relative && stale && reset && inc >= target)
        || (relative && !(stale && reset) && base.is_some_and(reaches))
        || (relative && base.is_none() && inc >= target)
    {
        Status::Completed
    } else {
        Status::InProgress
    };

    let kept = row.completed_at;
    let completed_at = if claimed && stale {
        (inc >= target).then_some(at)
    } else if claimed || (was_completed && !(relative && stale && reset)) {
        kept
    } else if (!relative && new >= target && kept.is_none())
        || (relative && stale && reset && inc >= target)
        || (relative && !stale && kept.is_none() && base.is_some_and(reaches))
        || (relative && base.is_none() && inc >= target)
    {
        Some(at)
    } else if relative && stale && reset {
        None
    } else {
        kept
    };
    // Difference 2: never `completed` without a time.
    let completed_at = if status == Status::Completed {
        completed_at.or(Some(at))
    } else {
        completed_at
    };

    let mut next = row.clone();
    next.progress = new as i32;
    next.baseline = baseline;
    next.status = status;
    next.completed_at = completed_at;
    next.claimed_at = if claimed && stale {
        None
    } else {
        row.claimed_at
    };
    // A late event (a goal without reset: it counts in the row's period)
    // must not date the row's expiry to a period the row has left.
    let row_period = match period {
        Some((_, end)) if row.updated_at >= micros(end) => {
            self::period(goal, row.updated_at.div_euclid(1000))
        }
        _ => period,
    };
    next.expires_at = match row_period {
        Some((_, end)) if stale || row.expires_at.is_none() => Some(micros(end)),
        _ => row.expires_at,
    };
    next.updated_at = row.updated_at.max(at);
    Some(next)
}

/// An M5 event as the buffer keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ev {
    pub value: Option<i32>,
    pub inc: i32,
    pub at_ms: i64,
}

/// The events of a run after its first two, composed. After two events of
/// one period the row is no longer stale and a relative row has its
/// baseline, so what the rest do depends only on these figures: exact for
/// every column except `completed_at`, which (when the goal completes
/// among them) is the time of the last of them, at most a flush interval
/// after the event that completed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The logins before the first stat value: their increments' sum…
    pre_sum: i64,
    /// …and the highest running sum on the way (None: there were none).
    pre_max: Option<i64>,
    /// From the first stat value on: (progress at the end, highest progress on the way).
    valued: Option<(i64, i64)>,
    /// The newest acknowledgement time.
    last_ms: i64,
}

fn clamp(value: i64) -> i64 {
    i64::from(progress_column(value))
}

impl Tail {
    fn of(ev: &Ev) -> Tail {
        let mut tail = Tail {
            pre_sum: 0,
            pre_max: None,
            valued: None,
            last_ms: ev.at_ms,
        };
        tail.push(ev);
        tail
    }

    fn push(&mut self, ev: &Ev) {
        self.then(&Tail {
            pre_sum: if ev.value.is_none() {
                i64::from(ev.inc)
            } else {
                0
            },
            pre_max: ev.value.is_none().then_some(i64::from(ev.inc)),
            valued: ev.value.map(|v| (i64::from(v), i64::from(v))),
            last_ms: ev.at_ms,
        });
    }

    /// `later`'s events after this one's.
    fn then(&mut self, later: &Tail) {
        match (&mut self.valued, later.valued) {
            (None, _) => {
                let reach = later.pre_max.map(|m| self.pre_sum + m);
                self.pre_max = self.pre_max.max(reach);
                self.pre_sum += later.pre_sum;
                self.valued = later.valued;
            }
            (Some((end, max)), None) => {
                if let Some(m) = later.pre_max {
                    *max = (*max).max(clamp(*end + m));
                }
                *end = clamp(*end + later.pre_sum);
            }
            (Some((end, max)), Some((later_end, later_max))) => {
                if let Some(m) = later.pre_max {
                    *max = (*max).max(clamp(*end + m));
                }
                *max = (*max).max(later_max);
                *end = later_end;
            }
        }
        self.last_ms = self.last_ms.max(later.last_ms);
    }

    /// What these events do to `row`, which a run's first two left
    /// current and (relative goals) baselined.
    fn apply(&self, row: &Row, relative: bool, target: i32, next_boundary: Option<i64>) -> Row {
        let target = i64::from(target);
        let threshold = if relative {
            debug_assert!(
                row.baseline.is_some(),
                "a run's first two events set the baseline"
            );
            row.baseline.map_or(i64::MAX, |b| i64::from(b) + target)
        } else {
            target
        };
        let start = i64::from(row.progress);
        let reached = self.pre_max.is_some_and(|m| clamp(start + m) >= threshold)
            || self.valued.is_some_and(|(_, max)| max >= threshold);
        let mut next = row.clone();
        next.progress = self
            .valued
            .map_or(clamp(start + self.pre_sum), |(end, _)| end) as i32;
        if row.status != Status::Claimed {
            if row.status == Status::Completed || reached {
                next.status = Status::Completed;
                next.completed_at = row.completed_at.or(Some(micros(self.last_ms)));
            } else {
                next.status = Status::InProgress;
            }
        }
        if row.expires_at.is_none() {
            next.expires_at = next_boundary.map(micros);
        }
        next.updated_at = row.updated_at.max(micros(self.last_ms));
        next
    }
}

/// Consecutive events of one user-goal with the same rules and target, in
/// one rotation period, coalesced: the first two exactly (whether the row
/// is stale, or has a baseline, is only known at the flush), the rest as a
/// [`Tail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub goal: Goal,
    pub target: i32,
    /// The start of the period its events fall in (None: the goal does not rotate).
    pub period: Option<i64>,
    first: Ev,
    second: Option<Ev>,
    tail: Option<Tail>,
    /// How many events it holds.
    pub events: u32,
}

impl Run {
    pub fn new(goal: Goal, target: i32, ev: Ev) -> Run {
        Run {
            goal,
            target,
            period: period(&goal, ev.at_ms).map(|(start, _)| start),
            first: ev,
            second: None,
            tail: None,
            events: 1,
        }
    }

    /// Whether an event of `goal` with `target` at `at_ms` belongs to this run.
    fn takes(&self, goal: &Goal, target: i32, at_ms: i64) -> bool {
        self.goal == *goal
            && self.target == target
            && self.period == period(goal, at_ms).map(|(start, _)| start)
    }

    fn push(&mut self, ev: Ev) {
        self.events += 1;
        match (&self.second, &mut self.tail) {
            (None, _) => self.second = Some(ev),
            (Some(_), Some(tail)) => tail.push(&ev),
            (Some(_), None) => self.tail = Some(Tail::of(&ev)),
        }
    }

    /// Appends `later` (a run of the same goal and period).
    fn append(&mut self, later: Run) {
        let events = self.events + later.events;
        self.push(later.first);
        if let Some(second) = later.second {
            self.push(second);
        }
        if let Some(tail) = later.tail {
            match &mut self.tail {
                Some(mine) => mine.then(&tail),
                None => self.tail = Some(tail),
            }
        }
        self.events = events;
    }

    /// What the run does to `row` (None: nothing).
    pub fn apply(&self, row: &Row) -> Option<Row> {
        let step = |ev: &Ev| Step {
            goal: self.goal,
            value: ev.value,
            inc: ev.inc,
        };
        let mut next = apply(row, &step(&self.first), self.target, self.first.at_ms)?;
        if let Some(second) = &self.second {
            if let Some(after) = apply(&next, &step(second), self.target, second.at_ms) {
                next = after;
            }
        }
        if let Some(tail) = &self.tail {
            let boundary = self
                .goal
                .rotation
                .zip(self.period)
                .map(|(r, start)| r.schedule.next_boundary(start));
            next = tail.apply(&next, self.goal.relative, self.target, boundary);
        }
        Some(next)
    }

    /// The earliest acknowledgement time in the run.
    pub fn first_ms(&self) -> i64 {
        self.first.at_ms
    }
}

/// Every pending M5 run of one user-goal, in acknowledgement order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runs(pub Vec<Run>);

impl Runs {
    pub fn of(step: &Step, target: i32, at_ms: i64) -> Runs {
        let ev = Ev {
            value: step.value,
            inc: step.inc,
            at_ms,
        };
        Runs(vec![Run::new(step.goal, target, ev)])
    }

    /// `later` after these.
    pub fn then(&mut self, later: Runs) {
        for run in later.0 {
            match self.0.last_mut() {
                Some(last) if last.takes(&run.goal, run.target, run.first.at_ms) => {
                    last.append(run)
                }
                _ => self.0.push(run),
            }
        }
    }

    /// What they do to `row`, oldest first (None: nothing).
    pub fn apply(&self, row: &Row) -> Option<Row> {
        let mut current: Option<Row> = None;
        for run in &self.0 {
            if let Some(next) = run.apply(current.as_ref().unwrap_or(row)) {
                current = Some(next);
            }
        }
        current
    }

    pub fn events(&self) -> u32 {
        self.0.iter().map(|r| r.events).sum()
    }

    pub fn first_ms(&self) -> i64 {
        self.0.first().map_or(0, Run::first_ms)
    }
}

#[cfg(test)]
mod tests;
