-- What the type rules keep per row (the newest event applied, the last UTC
-- day counted), in a table of the handler's own as on PostgreSQL, where
-- user_goal_progress belongs to the challenge service. The three columns an
-- older build added to user_goal_progress here are copied and no longer used.
CREATE TABLE IF NOT EXISTS challenge_event_handler_goal_state (
    user_id          TEXT NOT NULL,
    goal_id          TEXT NOT NULL,
    row_created_at   TEXT NOT NULL,
    last_event_at    TEXT NULL,
    last_counted_day TEXT NULL,
    PRIMARY KEY (user_id, goal_id)
);

INSERT INTO challenge_event_handler_goal_state
    (user_id, goal_id, row_created_at, last_event_at, last_counted_day)
SELECT user_id, goal_id, created_at, last_event_at, last_counted_day FROM user_goal_progress
WHERE last_event_at IS NOT NULL OR last_counted_day IS NOT NULL;
