-- The handler's own tables. Run at every start (idempotent) unless
-- NO_MIGRATE is set. user_goal_progress belongs to AccelByte's challenge
-- service: the handler never creates, alters or indexes it unless it owns it
-- (TABLE_OWNER=handler; then migrations/postgres/user_goal_progress.sql).

-- Per-instance flush watermark. A flush moves applied_seq in the same
-- transaction as the rows it covers, and only while its epoch is current.
CREATE TABLE IF NOT EXISTS challenge_event_handler_watermark (
    instance_id VARCHAR(100) PRIMARY KEY,
    epoch       BIGINT    NOT NULL,
    applied_seq BIGINT    NOT NULL DEFAULT 0,
    updated_at  TIMESTAMP NOT NULL DEFAULT NOW()
);

-- What the type rules keep per row beyond the service's columns: the newest
-- event applied (absolute goals) and the last UTC day counted (daily goals).
-- row_created_at is the row's created_at: state of a row the service
-- deleted and created again does not apply to the new one.
CREATE TABLE IF NOT EXISTS challenge_event_handler_goal_state (
    user_id          VARCHAR(100) NOT NULL,
    goal_id          VARCHAR(100) NOT NULL,
    row_created_at   TIMESTAMP    NOT NULL,
    last_event_at    TIMESTAMP    NULL,
    last_counted_day DATE         NULL,
    PRIMARY KEY (user_id, goal_id)
);

-- Decisions the handler keeps across starts (table_owner).
CREATE TABLE IF NOT EXISTS challenge_event_handler_settings (
    name       VARCHAR(100) PRIMARY KEY,
    value      TEXT         NOT NULL,
    updated_at TIMESTAMP    NOT NULL DEFAULT NOW()
);

-- The cluster's ledger of applied event ids (src/store/cluster.rs): the
-- tables of marks, newest first. The tables themselves are
-- challenge_event_handler_events_<unix seconds they began>.
CREATE TABLE IF NOT EXISTS challenge_event_handler_ledger (
    id         SMALLINT    PRIMARY KEY CHECK (id = 1),
    tables     TEXT[]      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- GDPR deletions as every replica must see them: a replica's flush drops
-- its pending updates of a user another replica deleted (not later than
-- deleted_at plus TOMBSTONE_SKEW). Removed after TOMBSTONE_RETENTION.
CREATE TABLE IF NOT EXISTS challenge_event_handler_tombstones (
    namespace   VARCHAR(100) NOT NULL,
    user_id     VARCHAR(100) NOT NULL,
    instance_id VARCHAR(100) NOT NULL,
    deleted_at  TIMESTAMPTZ  NOT NULL,
    applied_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, user_id, instance_id)
);
