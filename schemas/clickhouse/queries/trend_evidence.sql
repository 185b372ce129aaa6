-- title: Slow drift: trend evidence over time
-- The anytime-valid evidence of a slow trend per numeric feature and for
-- the model output (__prediction__), accumulated across the version's
-- windows since its reference (or its last re-baseline): value is the
-- e-value, threshold its alarm level (k / alpha for k streams), drifted 1
-- once it crossed. log10_evidence reads better on a chart: the e-value
-- spans many decades.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    feature,
    window_start,
    window_end,
    value,
    log10(greatest(value, 1e-300)) AS log10_evidence,
    p_value,
    threshold,
    drifted
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND metric = 'trend_evidence'
  AND window_start >= {since:DateTime64(3, 'UTC')}
ORDER BY feature, toUInt64OrZero(model_version), window_start
