-- user_goal_progress, compatible with AccelByte's challenge service (same
-- names, types and check constraints). Idempotent: on a database where the
-- challenge service already created the table, only the columns this handler
-- needs are added.
CREATE TABLE IF NOT EXISTS user_goal_progress (
    user_id        VARCHAR(100) NOT NULL,
    goal_id        VARCHAR(100) NOT NULL,
    challenge_id   VARCHAR(100) NOT NULL,
    namespace      VARCHAR(100) NOT NULL,
    progress       INT          NOT NULL DEFAULT 0,
    status         VARCHAR(20)  NOT NULL DEFAULT 'not_started',
    completed_at   TIMESTAMP    NULL,
    claimed_at     TIMESTAMP    NULL,
    created_at     TIMESTAMP    NOT NULL DEFAULT NOW(),
    updated_at     TIMESTAMP    NOT NULL DEFAULT NOW(),
    is_active      BOOLEAN      NOT NULL DEFAULT true,
    assigned_at    TIMESTAMP    NULL,
    expires_at     TIMESTAMP    NULL,
    baseline_value INT          NULL,
    PRIMARY KEY (user_id, goal_id),
    CONSTRAINT check_status CHECK (status IN ('not_started', 'in_progress', 'completed', 'claimed')),
    CONSTRAINT check_progress_non_negative CHECK (progress >= 0),
    CONSTRAINT check_claimed_implies_completed CHECK (claimed_at IS NULL OR completed_at IS NOT NULL)
);

-- Columns of later challenge-service versions, for databases created by an older one.
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS is_active BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS assigned_at TIMESTAMP NULL;
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS expires_at TIMESTAMP NULL;
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS baseline_value INT NULL;

-- What the progress rules need (all nullable; the challenge service ignores them):
-- the goal's target when last written, the newest event applied (absolute goals
-- are never overwritten by an older event) and the last UTC day counted (daily
-- and daily-increment goals).
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS target_value INT NULL;
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS last_event_at TIMESTAMP NULL;
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS last_counted_day DATE NULL;

CREATE INDEX IF NOT EXISTS idx_user_goal_progress_user_challenge
    ON user_goal_progress (user_id, challenge_id);

-- Per-instance flush watermark. A flush moves applied_seq in the same
-- transaction as the rows it covers, and only while its epoch is current.
CREATE TABLE IF NOT EXISTS challenge_event_handler_watermark (
    instance_id VARCHAR(100) PRIMARY KEY,
    epoch       BIGINT    NOT NULL,
    applied_seq BIGINT    NOT NULL DEFAULT 0,
    updated_at  TIMESTAMP NOT NULL DEFAULT NOW()
);
