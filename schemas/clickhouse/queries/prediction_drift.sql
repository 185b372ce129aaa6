-- title: Prediction drift over time
-- The drift of the model output (feature __prediction__) per version,
-- metric and window, with each metric's threshold: the first sign of
-- trouble when labels arrive late.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    metric,
    window_start,
    window_end,
    value,
    p_value,
    threshold,
    drifted,
    n_current
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND feature = '__prediction__'
  AND window_start >= {since:DateTime64(3, 'UTC')}
ORDER BY metric, toUInt64OrZero(model_version), window_start
