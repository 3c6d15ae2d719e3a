-- user_goal_progress exactly as AccelByte's challenge service creates it
-- (its migrations 001_create_user_goal_progress and 002_add_baseline_value,
-- extend-challenge-service @ dae35d9): the same columns, constraints,
-- indexes and comments, so `pg_dump --schema-only -t user_goal_progress`
-- cannot tell who created it. The handler runs this only when it owns the
-- table (TABLE_OWNER=handler) and the table does not exist, in one
-- transaction holding golang-migrate's advisory lock, and then records
-- version 2 in schema_migrations, so a challenge service started later
-- finds nothing to migrate. tests/table_owner.rs checks both orders.
CREATE TABLE user_goal_progress (
    user_id VARCHAR(100) NOT NULL,
    goal_id VARCHAR(100) NOT NULL,
    challenge_id VARCHAR(100) NOT NULL,
    namespace VARCHAR(100) NOT NULL,
    progress INT NOT NULL DEFAULT 0,
    status VARCHAR(20) NOT NULL DEFAULT 'not_started',
    completed_at TIMESTAMP NULL,
    claimed_at TIMESTAMP NULL,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
    is_active BOOLEAN NOT NULL DEFAULT true,
    assigned_at TIMESTAMP NULL,
    expires_at TIMESTAMP NULL,
    baseline_value INT NULL,
    PRIMARY KEY (user_id, goal_id),
    CONSTRAINT check_status CHECK (status IN ('not_started', 'in_progress', 'completed', 'claimed')),
    CONSTRAINT check_progress_non_negative CHECK (progress >= 0),
    CONSTRAINT check_claimed_implies_completed CHECK (claimed_at IS NULL OR completed_at IS NOT NULL)
);

CREATE INDEX idx_user_goal_progress_user_challenge ON user_goal_progress(user_id, challenge_id);
CREATE INDEX idx_user_goal_progress_user_active ON user_goal_progress(user_id, is_active) WHERE is_active = true;
CREATE INDEX idx_user_goal_count ON user_goal_progress(user_id);
CREATE INDEX idx_user_goal_lookup ON user_goal_progress(user_id, goal_id);
CREATE INDEX idx_user_goal_active_only ON user_goal_progress(user_id) WHERE is_active = true;

COMMENT ON TABLE user_goal_progress IS 'Tracks user progress for challenge goals';
COMMENT ON COLUMN user_goal_progress.user_id IS 'AGS user identifier from JWT';
COMMENT ON COLUMN user_goal_progress.goal_id IS 'Goal identifier from config file';
COMMENT ON COLUMN user_goal_progress.challenge_id IS 'Parent challenge identifier';
COMMENT ON COLUMN user_goal_progress.namespace IS 'For debugging only - each deployment operates in single namespace';
COMMENT ON COLUMN user_goal_progress.progress IS 'Current progress value (e.g., 7 kills out of 10)';
COMMENT ON COLUMN user_goal_progress.status IS 'not_started -> in_progress -> completed -> claimed';
COMMENT ON COLUMN user_goal_progress.completed_at IS 'Timestamp when goal requirement was met';
COMMENT ON COLUMN user_goal_progress.claimed_at IS 'Timestamp when reward was granted';
COMMENT ON COLUMN user_goal_progress.is_active IS 'M3: Whether goal is assigned to user (controls event processing)';
COMMENT ON COLUMN user_goal_progress.assigned_at IS 'M3: When goal was assigned to user';
COMMENT ON COLUMN user_goal_progress.expires_at IS 'M5: When assignment expires (NULL = permanent)';
COMMENT ON COLUMN user_goal_progress.baseline_value IS 'M5: Stat value at goal activation for relative progress (NULL = absolute mode or not yet initialized)';
