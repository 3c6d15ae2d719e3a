-- The embedded store: user_goal_progress as the PostgreSQL schema has it
-- (same columns, status values and checks), in SQLite types. Timestamps are
-- UTC text 'YYYY-MM-DD HH:MM:SS.SSS', days 'YYYY-MM-DD': both order as text.
CREATE TABLE IF NOT EXISTS user_goal_progress (
    user_id          TEXT    NOT NULL CHECK (length(user_id) <= 100),
    goal_id          TEXT    NOT NULL CHECK (length(goal_id) <= 100),
    challenge_id     TEXT    NOT NULL CHECK (length(challenge_id) <= 100),
    namespace        TEXT    NOT NULL CHECK (length(namespace) <= 100),
    progress         INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL DEFAULT 'not_started',
    completed_at     TEXT    NULL,
    claimed_at       TEXT    NULL,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    is_active        BOOLEAN NOT NULL DEFAULT 1,
    assigned_at      TEXT    NULL,
    expires_at       TEXT    NULL,
    baseline_value   INTEGER NULL,
    target_value     INTEGER NULL,
    last_event_at    TEXT    NULL,
    last_counted_day TEXT    NULL,
    PRIMARY KEY (user_id, goal_id),
    CONSTRAINT check_status CHECK (status IN ('not_started', 'in_progress', 'completed', 'claimed')),
    CONSTRAINT check_progress_non_negative CHECK (progress >= 0),
    CONSTRAINT check_claimed_implies_completed CHECK (claimed_at IS NULL OR completed_at IS NOT NULL)
);

CREATE INDEX IF NOT EXISTS idx_user_goal_progress_user_challenge
    ON user_goal_progress (user_id, challenge_id);

CREATE TABLE IF NOT EXISTS challenge_event_handler_watermark (
    instance_id TEXT    PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
