-- Materialized state of udo-stream (DESIGN §5). Kafka is the source of truth;
-- these tables are projections that the `materialize-postgres` group rebuilds
-- idempotently: every event table is keyed by the producer's event_id (or a
-- natural key) and keeps `payload_hash`, a UUIDv5 (SHA-1) of the event's
-- canonical JSON, so a reused event_id with a different payload is detected
-- and sent to the DLQ instead of overwriting what is stored. No column
-- depends on wall-clock time of the write except consumer_offsets.updated_at,
-- so replaying a topic leaves every table byte-for-byte unchanged.
--
-- `project_contexts.embedding` is created without a dimension: the dimension
-- is configuration (UDO_EMBEDDING_DIM), so the sink's startup code turns the
-- column into vector(N) once, builds the HNSW index, and on every later start
-- checks that N still matches.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE projects (
    project_id    text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);

-- Every context chunk event (UPSERT or DELETE), without content: the
-- idempotency and reuse check of chunk events, and the tombstones that keep
-- an older UPSERT from resurrecting a chunk a newer DELETE removed.
CREATE TABLE project_context_events (
    event_id     uuid PRIMARY KEY,
    payload_hash uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    source       text NOT NULL,
    project_id   text NOT NULL,
    file_path    text NOT NULL,
    chunk_index  integer NOT NULL CHECK (chunk_index >= 0),
    op           text NOT NULL CHECK (op IN ('UPSERT', 'DELETE'))
);
CREATE INDEX project_context_events_key
    ON project_context_events (project_id, file_path, chunk_index, occurred_at DESC, event_id DESC);

-- Current chunks: the newest UPSERT per (project, file, chunk) by
-- (occurred_at, event_id), unless a newer DELETE removed it.
CREATE TABLE project_contexts (
    project_id  text NOT NULL,
    file_path   text NOT NULL,
    chunk_index integer NOT NULL CHECK (chunk_index >= 0),
    event_id    uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    source      text NOT NULL,
    content     text NOT NULL,
    embedding   vector,
    PRIMARY KEY (project_id, file_path, chunk_index)
);

-- Decision logs with their predicted uncertainty.
CREATE TABLE uncertainty_logs (
    event_id          uuid PRIMARY KEY,
    payload_hash      uuid NOT NULL,
    occurred_at       timestamptz NOT NULL,
    source            text NOT NULL,
    project_id        text NOT NULL,
    component         text NOT NULL,
    decision          text NOT NULL,
    uncertainty_score smallint NOT NULL CHECK (uncertainty_score BETWEEN 0 AND 100),
    rationale         text
);
CREATE INDEX uncertainty_logs_subject ON uncertainty_logs (project_id, component, occurred_at);

CREATE TABLE uncertainty_feedback (
    event_id     uuid PRIMARY KEY,
    payload_hash uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    source       text NOT NULL,
    project_id   text NOT NULL,
    component    text NOT NULL,
    decision_id  uuid NOT NULL,
    rating       smallint NOT NULL CHECK (rating IN (-1, 1)),
    correction   text
);
CREATE INDEX uncertainty_feedback_decision ON uncertainty_feedback (decision_id);
CREATE INDEX uncertainty_feedback_subject ON uncertainty_feedback (project_id, component, occurred_at);

-- Raw latency samples (bulk-loaded with COPY).
CREATE TABLE latency_samples (
    event_id     uuid PRIMARY KEY,
    payload_hash uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    source       text NOT NULL,
    component    text NOT NULL,
    endpoint     text NOT NULL,
    latency_ms   double precision NOT NULL CHECK (latency_ms >= 0 AND latency_ms < 'Infinity'),
    outcome      text NOT NULL CHECK (outcome IN ('OK', 'ERROR', 'TIMEOUT')),
    status_code  integer
);
CREATE INDEX latency_samples_component ON latency_samples (component, occurred_at);

-- Closed latency windows (per component, and per component and endpoint).
CREATE TABLE latency_windows (
    event_id     uuid PRIMARY KEY,
    payload_hash uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    source       text NOT NULL,
    subject      text NOT NULL,
    component    text NOT NULL,
    endpoint     text,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    count        bigint NOT NULL,
    error_count  bigint NOT NULL,
    error_rate   double precision NOT NULL,
    p50_ms       double precision NOT NULL,
    p95_ms       double precision NOT NULL,
    p99_ms       double precision NOT NULL
);
CREATE INDEX latency_windows_subject ON latency_windows (subject, window_end);
CREATE INDEX latency_windows_component ON latency_windows (component, window_end);

-- Closed uncertainty windows per (project, component).
CREATE TABLE uncertainty_windows (
    event_id        uuid PRIMARY KEY,
    payload_hash    uuid NOT NULL,
    occurred_at     timestamptz NOT NULL,
    source          text NOT NULL,
    subject         text NOT NULL,
    component       text NOT NULL,
    project_id      text,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    ratings         bigint NOT NULL,
    positive        bigint NOT NULL,
    approval_rate   double precision NOT NULL,
    wilson_lower    double precision NOT NULL,
    uncertainty     double precision NOT NULL,
    decisions       bigint NOT NULL,
    predicted_mean  double precision,
    calibration_gap double precision
);
CREATE INDEX uncertainty_windows_subject ON uncertainty_windows (project_id, component, window_end);

CREATE TABLE alerts (
    event_id     uuid PRIMARY KEY,
    payload_hash uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    source       text NOT NULL,
    rule         text NOT NULL,
    subject      text NOT NULL,
    component    text NOT NULL,
    project_id   text,
    severity     text NOT NULL CHECK (severity IN ('WARNING', 'CRITICAL')),
    status       text NOT NULL CHECK (status IN ('FIRING', 'RESOLVED')),
    value        double precision NOT NULL,
    threshold    double precision NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    message      text NOT NULL
);
CREATE INDEX alerts_subject ON alerts (subject, rule, severity, window_end);

CREATE TABLE degradations (
    event_id            uuid PRIMARY KEY,
    payload_hash        uuid NOT NULL,
    occurred_at         timestamptz NOT NULL,
    source              text NOT NULL,
    component           text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('DEGRADED', 'RECOVERED')),
    reason              text NOT NULL,
    p95_ms              double precision NOT NULL,
    error_rate          double precision NOT NULL,
    consecutive_windows integer NOT NULL,
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL
);
CREATE INDEX degradations_component ON degradations (component, window_end);

CREATE TABLE promotions (
    event_id      uuid PRIMARY KEY,
    payload_hash  uuid NOT NULL,
    occurred_at   timestamptz NOT NULL,
    source        text NOT NULL,
    store         text NOT NULL,
    from_role     text NOT NULL CHECK (from_role IN ('SHADOW', 'PRIMARY')),
    to_role       text NOT NULL CHECK (to_role IN ('SHADOW', 'PRIMARY')),
    success_ratio double precision NOT NULL,
    attempts      integer NOT NULL,
    lag           bigint NOT NULL,
    reason        text NOT NULL
);
CREATE INDEX promotions_store ON promotions (store, occurred_at);

-- Current health per component: the newest degradation event by
-- (window end, event id); DEGRADED → DEGRADED, RECOVERED → HEALTHY.
CREATE TABLE health_state (
    component  text PRIMARY KEY,
    status     text NOT NULL CHECK (status IN ('HEALTHY', 'DEGRADED')),
    since      timestamptz NOT NULL,
    event_id   uuid NOT NULL,
    reason     text NOT NULL,
    p95_ms     double precision NOT NULL,
    error_rate double precision NOT NULL
);

-- Next offset to consume per group and partition, written in the same
-- transaction as the rows it covers; consumers seek here on assignment.
CREATE TABLE consumer_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
