-- The change detectors' state after each closed window, so that a restarted
-- worker resumes them where the last written window left them.
--
-- stream is 'score' (prediction windows) or 'error' (label windows). A window's
-- row is written before the row that marks the window written (window_profiles,
-- or the n_labeled row of performance_metrics), and a worker reads the latest
-- row at or before the last marked window: a row of a window whose write a
-- crash interrupted is never read, and the replay writes it again.
-- state is ChangeDetectorBank.stream_state: river's detectors, pickled (a few
-- KiB per stream). Only the latest rows are ever read; the TTL keeps a month
-- of them (a model silent for longer resumes with fresh detectors). It runs
-- on the server's insert time, not on computed_at, the worker's clock (which a
-- test or a replay may set in the past).

CREATE TABLE IF NOT EXISTS detector_states
(
    model_id      String,
    model_version String,
    stream        LowCardinality(String) COMMENT 'score or error',
    window_end    DateTime64(3, 'UTC') COMMENT 'the window after which the detectors were in this state',
    detectors     Array(String) COMMENT 'the detectors in state',
    state         String COMMENT 'ChangeDetectorBank.stream_state (pickled river detectors)',
    river_version String,
    computed_at   DateTime64(3, 'UTC'),
    written_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_end)
ORDER BY (model_id, model_version, stream, window_end)
TTL toDateTime(written_at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000;
