-- title: Drift per feature and window
-- One row per model version, feature and closed window: score is the worst
-- metric relative to its threshold (value / threshold; 1 = at the
-- threshold), any_drifted is 1 when any metric crossed its threshold, and
-- metrics lists every metric as (metric, value, threshold, drifted). The
-- model output is the feature __prediction__. The report's heatmap.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    feature,
    window_start,
    window_end,
    max(if(threshold > 0 AND isFinite(value), value / threshold, 0)) AS score,
    max(drifted) AS any_drifted,
    countIf(drifted = 1) AS drifted_metrics,
    arraySort(groupArray((metric, value, threshold, drifted))) AS metrics
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND window_start >= {since:DateTime64(3, 'UTC')}
GROUP BY model_version, feature, window_start, window_end
ORDER BY toUInt64OrZero(model_version), feature, window_start
