-- Windowed monitoring results, written by the streams worker when a window closes.
--
-- Every table is a ReplacingMergeTree keyed by what identifies one result, so a
-- window that is written twice (a retried insert, or a replay after a crash)
-- counts once: read with FINAL, or aggregate with argMax(..., computed_at).
-- non_replicated_deduplication_window lets an insert retried with the same
-- insert_deduplication_token be dropped at insert time as well.
-- All timestamps are DateTime64(3, 'UTC'), i.e. epoch milliseconds.
-- Statements must stay idempotent (IF NOT EXISTS): ClickHouse DDL is not
-- transactional, so a migration interrupted halfway is simply applied again.

CREATE TABLE IF NOT EXISTS drift_metrics
(
    model_id      String,
    model_version String,
    feature       String COMMENT 'input feature, or __prediction__ for the model output',
    metric        LowCardinality(String) COMMENT 'psi, ks, wasserstein, jensenshannon, hellinger, chi2, missing_rate, new_category_rate, adwin, page_hinkley, ...',
    window_start  DateTime64(3, 'UTC'),
    window_end    DateTime64(3, 'UTC'),
    value         Float64,
    p_value       Nullable(Float64),
    threshold     Float64,
    drifted       UInt8,
    n_reference   UInt64,
    n_current     UInt64,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, feature, metric, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per model version and closed window: the summary of a DriftReport
-- (its per-feature metrics are in drift_metrics).
CREATE TABLE IF NOT EXISTS drift_reports
(
    model_id          String,
    model_version     String,
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    n_current         UInt64,
    n_reference       UInt64,
    drifted_features  Array(String),
    n_metrics         UInt32 COMMENT 'metrics computed in this window',
    n_drifted_metrics UInt32 COMMENT 'of which crossed their threshold',
    computed_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

-- The mergeable profile of one feature in one window. Numeric features fill
-- the moments, quantiles and histogram; categorical features fill categories.
-- mean, std, min and max are NaN when the window holds no value.
CREATE TABLE IF NOT EXISTS window_profiles
(
    model_id        String,
    model_version   String,
    feature         String,
    kind            LowCardinality(String) COMMENT 'numeric or categorical',
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    count           UInt64 COMMENT 'events in the window, missing values included',
    missing         UInt64,
    mean            Float64,
    std             Float64,
    min             Float64,
    max             Float64,
    quantile_levels Array(Float64),
    quantiles       Array(Float64),
    bin_edges       Array(Float64) COMMENT 'len(histogram) + 1 edges, usually those of the reference profile',
    histogram       Array(UInt64),
    categories      Map(String, UInt64) COMMENT 'category -> count',
    computed_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, feature, window_start, window_end)
SETTINGS non_replicated_deduplication_window = 1000;

-- Performance once labels arrive, and serving latency. Latency lives here too,
-- as metrics latency_p50, latency_p95 and latency_p99 (milliseconds); for them
-- n_labeled counts the predictions that carried a latency.
CREATE TABLE IF NOT EXISTS performance_metrics
(
    model_id      String,
    model_version String,
    segment       String COMMENT 'empty for the whole population, else key=value',
    metric        LowCardinality(String) COMMENT 'accuracy, auc, log_loss, mae, rmse, ..., latency_p50, latency_p95, latency_p99',
    window_start  DateTime64(3, 'UTC'),
    window_end    DateTime64(3, 'UTC'),
    value         Float64,
    n_labeled     UInt64,
    n_predictions UInt64 DEFAULT 0 COMMENT 'predictions in the window, labelled or not',
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, segment, metric, window_start)
SETTINGS non_replicated_deduplication_window = 1000;
