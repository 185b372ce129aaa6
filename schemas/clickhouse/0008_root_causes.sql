-- Where a drifted window's drift comes from (driftline.streams.core.explain).
--
-- One row per model version and drifted prediction window: the features
-- ranked by standardized effect size, the segments (policy
-- monitoring.segments) the drift concentrates in and their share of the
-- window, and one sentence for people. root_cause is the whole RootCause as
-- JSON (format 1); the other columns are its headline, for SQL.

CREATE TABLE IF NOT EXISTS root_causes
(
    model_id          String,
    model_version     String,
    window_start      DateTime64(3, 'UTC'),
    window_end        DateTime64(3, 'UTC'),
    n_current         UInt64,
    top_feature       String COMMENT 'the feature with the largest effect',
    top_effect        Float64 COMMENT 'its effect, in reference standard deviations (Cohen''s w for categories)',
    top_segment       String COMMENT 'key=value where the drift concentrates most, empty when it is spread',
    top_segment_share Float64 COMMENT 'that segment''s share of the window''s events (0 when none)',
    summary           String,
    root_cause        String COMMENT 'RootCause.to_dict() as JSON',
    computed_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_id, model_version, window_start)
SETTINGS non_replicated_deduplication_window = 1000;
