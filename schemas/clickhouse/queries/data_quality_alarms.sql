-- title: Data-quality alarms
-- Every data-quality alarm of the model (rows of kind data_quality whose
-- drifted is 1): missing values, new categories or values outside the
-- reference's range above the reference's own rate by more than the
-- threshold. value is the window's rate, threshold the rate it crossed.
-- They are their own alarm class: no distance gate hides them, and the
-- policy's data_quality trigger reads them.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    feature,
    metric,
    window_start,
    window_end,
    value,
    threshold,
    n_current
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND kind = 'data_quality'
  AND drifted = 1
  AND window_start >= {since:DateTime64(3, 'UTC')}
ORDER BY window_start DESC, toUInt64OrZero(model_version), feature, metric
