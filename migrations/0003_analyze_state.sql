-- Keyed analyzer state (at-least-once): one row per subject of a task, so
-- a checkpoint writes only the subjects that changed and deletes the ones
-- that went away, in the same transaction as the task's row in
-- analyze_checkpoints (whose `state` now holds the task's small meta:
-- watermarks and input bookkeeping) and the input offsets it covers.
CREATE TABLE IF NOT EXISTS analyze_state (
    consumer_group text    NOT NULL,
    task           integer NOT NULL,
    -- postcard-encoded domain::engine::SubjectKey
    subject        bytea   NOT NULL,
    -- postcard-encoded domain::engine::SubjectEntry
    entry          bytea   NOT NULL,
    PRIMARY KEY (consumer_group, task, subject)
);
