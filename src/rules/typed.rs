//! The type rules: goal `type` absolute / increment / daily and
//! `"daily": true`, the generation of `challenges.json` without
//! `progressMode` (docs/DESIGN.md, "Progress rules").
//!
//! Each function is what one update (or one coalesced buffer entry, which
//! is the same operation with summed or latest values) does to an existing
//! row; `None` means the row does not change. Inactive rows never change;
//! claimed rows are frozen, except that a daily goal completes again on a
//! later UTC day (and becomes claimable again). `now` is the flush's time,
//! which becomes `updated_at`, as in AccelByte's handler.

use super::row::{micros, progress_column, Micros, Row, Status};

/// An absolute goal set to `value` by an event at `time_ms`; `reached_ms`:
/// when an event (of a coalesced run, the first) reached the target.
/// Progress follows the newest value; a completed goal stays completed at
/// its first completion; an event older than the newest applied is skipped.
pub fn set(
    row: &Row,
    value: i32,
    time_ms: i64,
    reached_ms: Option<i64>,
    now: Micros,
) -> Option<Row> {
    let time = micros(time_ms);
    if !row.is_active
        || row.status == Status::Claimed
        || row.state.last_event_at.is_some_and(|last| last > time)
    {
        return None;
    }
    let was_completed = row.status == Status::Completed;
    let mut next = row.clone();
    next.progress = value;
    next.status = if was_completed || reached_ms.is_some() {
        Status::Completed
    } else {
        Status::InProgress
    };
    next.completed_at = if was_completed {
        row.completed_at
    } else {
        reached_ms.map(micros)
    };
    next.state.last_event_at = Some(time);
    next.updated_at = now;
    Some(next)
}

/// `delta` more (an increment goal; a daily-increment goal counting `day`):
/// never capped (the INT column saturates), completed once progress
/// reaches `target`, `completed_at` set once, at `time_ms`.
pub fn add(row: &Row, delta: i32, target: i32, time_ms: i64, now: Micros) -> Option<Row> {
    if !row.is_active || row.status == Status::Claimed {
        return None;
    }
    let progress = progress_column(i64::from(row.progress) + i64::from(delta));
    let was_completed = row.status == Status::Completed;
    let completed = was_completed || progress >= target;
    let mut next = row.clone();
    next.progress = progress;
    next.status = if completed {
        Status::Completed
    } else {
        Status::InProgress
    };
    next.completed_at = if was_completed {
        row.completed_at
    } else {
        completed.then_some(micros(time_ms))
    };
    next.updated_at = now;
    Some(next)
}

/// A daily increment: `day` counted once, and only after the last day counted.
pub fn count_day(row: &Row, day: i32, target: i32, time_ms: i64, now: Micros) -> Option<Row> {
    if row.state.last_counted_day >= Some(day) {
        return None;
    }
    let mut next = add(row, 1, target, time_ms, now)?;
    next.state.last_counted_day = Some(day);
    next.state.last_event_at = next.state.last_event_at.max(Some(micros(time_ms)));
    Some(next)
}

/// A daily goal: completed for `day` when that is later than its last day,
/// even when claimed (which makes it claimable again).
pub fn complete_day(row: &Row, day: i32, time_ms: i64, now: Micros) -> Option<Row> {
    if !row.is_active || row.state.last_counted_day >= Some(day) {
        return None;
    }
    let time = micros(time_ms);
    let mut next = row.clone();
    next.progress = 1;
    next.status = Status::Completed;
    next.completed_at = Some(time);
    next.claimed_at = None;
    next.state.last_event_at = Some(time);
    next.state.last_counted_day = Some(day);
    next.updated_at = now;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 9_000_000;

    fn row() -> Row {
        Row::assigned(0)
    }

    #[test]
    fn an_absolute_goal_follows_the_newest_value_and_stays_completed() {
        let r = set(&row(), 4, 10, None, NOW).unwrap();
        assert_eq!((r.progress, r.status), (4, Status::InProgress));
        let r = set(&r, 12, 20, Some(20), NOW).unwrap();
        assert_eq!(
            (r.progress, r.status, r.completed_at),
            (12, Status::Completed, Some(20_000))
        );
        let r = set(&r, 3, 30, None, NOW).unwrap();
        assert_eq!(
            (r.progress, r.status, r.completed_at),
            (3, Status::Completed, Some(20_000))
        );
        assert_eq!(
            set(&r, 50, 25, Some(25), NOW),
            None,
            "older than the newest applied"
        );
    }

    #[test]
    fn increments_are_never_capped_and_complete_once() {
        let r = add(&row(), 8, 10, 5, NOW).unwrap();
        assert_eq!(
            (r.progress, r.status, r.completed_at),
            (8, Status::InProgress, None)
        );
        let r = add(&r, 4, 10, 6, NOW).unwrap();
        assert_eq!(
            (r.progress, r.status, r.completed_at),
            (12, Status::Completed, Some(6_000))
        );
        let r = add(&r, i32::MAX, 10, 7, NOW).unwrap();
        assert_eq!((r.progress, r.completed_at), (i32::MAX, Some(6_000)));
    }

    #[test]
    fn claimed_and_inactive_rows_are_frozen_except_a_daily_goal_on_a_later_day() {
        let mut claimed = row();
        claimed.status = Status::Claimed;
        claimed.completed_at = Some(1);
        claimed.claimed_at = Some(2);
        claimed.state.last_counted_day = Some(3);
        assert_eq!(add(&claimed, 1, 5, 0, NOW), None);
        assert_eq!(set(&claimed, 1, 0, None, NOW), None);
        assert_eq!(complete_day(&claimed, 3, 0, NOW), None);
        let again = complete_day(&claimed, 4, 7, NOW).unwrap();
        assert_eq!((again.status, again.claimed_at), (Status::Completed, None));
        let mut inactive = row();
        inactive.is_active = false;
        assert_eq!(complete_day(&inactive, 4, 7, NOW), None);
        assert_eq!(add(&inactive, 1, 5, 0, NOW), None);
    }

    #[test]
    fn a_day_is_counted_once_and_only_after_the_last_day_counted() {
        let r = count_day(&row(), 5, 2, 1, NOW).unwrap();
        assert_eq!(count_day(&r, 5, 2, 2, NOW), None);
        assert_eq!(count_day(&r, 4, 2, 2, NOW), None);
        let r = count_day(&r, 6, 2, 3, NOW).unwrap();
        assert_eq!(
            (r.progress, r.status, r.state.last_counted_day),
            (2, Status::Completed, Some(6))
        );
    }
}
