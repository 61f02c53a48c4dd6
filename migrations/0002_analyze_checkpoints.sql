-- Analyzer checkpoints: one row per consumer group and task (partition
-- number p of the co-partitioned inputs). The engine state and the input
-- offsets it covers are written together, after the outputs they imply were
-- acknowledged by the broker; on assignment the analyzer restores the state
-- and resumes every input at these offsets.
CREATE TABLE IF NOT EXISTS analyze_checkpoints (
    consumer_group text        NOT NULL,
    task           integer     NOT NULL,
    -- postcard-encoded domain::engine::TaskState
    state          bytea       NOT NULL,
    -- {"<topic>": next_offset, ...} for the task's input partitions
    offsets        jsonb       NOT NULL,
    -- window shape the state was built with; another shape starts afresh
    config         text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, task)
);
