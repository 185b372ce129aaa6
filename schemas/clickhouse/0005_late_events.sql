-- Late events per prediction window (issue 11, finding 9).
--
-- A prediction (or logged feature) row is late when its own window was already
-- closed when it arrived: it stays in the raw predictions table but is left out
-- of the drift windows. late_events counts it in the first window of its model
-- version to close after it arrived: the first window whose end is above the
-- watermark in force at its arrival (the largest event time seen before it, in
-- the order the messages arrived, less the allowed lateness). A backlog read and
-- a live read of the same log count the same rows in the same windows.
-- Rows written before this migration read 0.

ALTER TABLE drift_reports
    ADD COLUMN IF NOT EXISTS late_events UInt64 DEFAULT 0
    COMMENT 'rows of this model version that arrived late (their window already closed) after the previous window closed; counted in the first window to close after their arrival'
    AFTER n_drifted_metrics;
