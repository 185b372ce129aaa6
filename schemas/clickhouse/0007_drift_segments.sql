-- Per-segment drift: drift_metrics rows for one segment of the traffic.
--
-- segment is '' for the whole population (every row written before this
-- column existed reads as ''), else key=value, as in performance_metrics: the
-- drift of the model output and of the window's top features among the events
-- whose attribute key had that value (policy monitoring.segments).
--
-- The column joins the sorting key, so that a segment's row never replaces
-- the population's row of the same feature, metric and window in the
-- ReplacingMergeTree. ClickHouse allows that only for a column added in the
-- same ALTER and without a DEFAULT expression (a String's default is '' anyway).
-- The primary key stays as it was. Read the population with segment = ''.

ALTER TABLE drift_metrics
    ADD COLUMN IF NOT EXISTS segment String COMMENT 'empty for the whole population, else key=value',
    MODIFY ORDER BY (model_id, model_version, feature, metric, window_start, segment);
