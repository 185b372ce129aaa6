-- Alerts, retraining and the model registry mirror, for dashboards.

CREATE TABLE IF NOT EXISTS alerts
(
    alert_id      String,
    model_id      String,
    model_version String,
    severity      Enum8('info' = 1, 'warning' = 2, 'critical' = 3),
    kind          LowCardinality(String),
    message       String,
    occurred_at   DateTime64(3, 'UTC'),
    window_start  Nullable(DateTime64(3, 'UTC')),
    window_end    Nullable(DateTime64(3, 'UTC'))
)
ENGINE = ReplacingMergeTree(occurred_at)
ORDER BY (model_id, alert_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per status change; FINAL (or argMax by updated_at) gives the current
-- status of each request. Evidence is kept twice: as the JSON array of the
-- RetrainRequest record, and as parallel arrays for ARRAY JOIN.
CREATE TABLE IF NOT EXISTS retrain_requests
(
    request_id            String,
    model_id              String,
    model_version         String,
    reason                Enum8('drift' = 1, 'performance' = 2, 'schedule' = 3, 'manual' = 4),
    requested_at          DateTime64(3, 'UTC'),
    evidence              String COMMENT 'JSON array of {metric, feature, value, threshold, window_start, window_end}',
    evidence_metric       Array(String),
    evidence_feature      Array(String),
    evidence_value        Array(Float64),
    evidence_threshold    Array(Float64),
    evidence_window_start Array(DateTime64(3, 'UTC')),
    evidence_window_end   Array(DateTime64(3, 'UTC')),
    status                Enum8('requested' = 1, 'training' = 2, 'registered' = 3, 'rejected' = 4, 'failed' = 5),
    error                 Nullable(String),
    registered_version    Nullable(String) COMMENT 'the model version trained for this request',
    updated_at            DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY request_id
SETTINGS non_replicated_deduplication_window = 1000;

-- A mirror of the registry; the registry database stays the source of truth.
CREATE TABLE IF NOT EXISTS model_versions
(
    model_id        String,
    version         String,
    status          LowCardinality(String),
    aliases         Array(String),
    artifact_sha256 String,
    dataset_uri     String,
    dataset_sha256  String,
    dataset_rows    UInt64,
    code_version    String,
    hyperparameters String COMMENT 'JSON object',
    metrics         Map(String, Float64),
    parent_version  Nullable(String),
    request_id      Nullable(String),
    created_at      DateTime64(3, 'UTC'),
    updated_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (model_id, version)
SETTINGS non_replicated_deduplication_window = 1000;
