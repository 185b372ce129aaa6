-- Raw events, kept for drill-down and for the retrainer's training sets.
--
-- ReplacingMergeTree by (model_id, event_id): event_id is the idempotency key,
-- so an event delivered twice counts once (read with FINAL). The TTL runs on
-- ingested_at rather than event_time: ClickHouse drops rows whose TTL has
-- already expired while inserting them, so a TTL on event_time would silently
-- discard a backfill of old events.

CREATE TABLE IF NOT EXISTS predictions
(
    event_id        String,
    model_id        String,
    model_version   String,
    event_time      DateTime64(3, 'UTC'),
    numeric         Map(String, Float64) COMMENT 'every numeric input of the batch; NaN means missing',
    categorical     Map(String, String) COMMENT 'categorical inputs; an absent key means missing',
    prediction      Nullable(Float64),
    predicted_label Nullable(String),
    latency_ms      Nullable(Float64),
    attributes      Map(String, String) COMMENT 'segment tags',
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (model_id, event_id)
TTL toDateTime(ingested_at) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Ground truth, joined to predictions by event_id. Exactly one of label_value
-- (numeric labels) and label_class (string labels) is set. A label sent again
-- replaces the earlier one.
CREATE TABLE IF NOT EXISTS labels
(
    event_id    String,
    model_id    String,
    event_time  DateTime64(3, 'UTC'),
    label_value Nullable(Float64),
    label_class Nullable(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (model_id, event_id)
TTL toDateTime(ingested_at) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Input messages that could not be decoded or validated (they also go to the
-- dlq topic, unchanged). raw_base64 holds at most the first 64 KiB of the
-- message; raw_size is the full size.
CREATE TABLE IF NOT EXISTS rejected_events
(
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    reason       LowCardinality(String) COMMENT 'a reason code, as in the driftline-error header',
    detail       String,
    model_id     String COMMENT 'empty when unknown',
    raw_base64   String,
    raw_size     UInt64,
    received_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, partition, offset)
TTL toDateTime(received_at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000;
