-- Data quality as its own alarm class in drift_metrics.
--
-- The drift engine now writes two classes of rows: "drift" (the distribution
-- moved: psi, ks, wasserstein, jensenshannon, hellinger, chi2, mean_shift,
-- log_std_ratio) and "data_quality" (missing_rate, new_category_rate,
-- out_of_range_rate), each carrying its own decision in drifted. Rows written
-- before this column existed read as 'drift', as the engine then decided one
-- alarm per feature; new metric names need no schema change.

ALTER TABLE drift_metrics
    ADD COLUMN IF NOT EXISTS kind LowCardinality(String) DEFAULT 'drift'
    COMMENT 'alarm class of the metric: drift or data_quality';
