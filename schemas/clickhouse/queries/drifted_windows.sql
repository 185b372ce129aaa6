-- title: Windows in which a model drifted
-- Every closed window of a model (per version) in which at least one metric
-- crossed its threshold, with the features and metrics that did. The model
-- output appears as the feature __prediction__.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
-- param until: windows starting at or after this time are left out (UTC)
SELECT
    model_version,
    window_start,
    window_end,
    arraySort(groupUniqArrayIf(feature, drifted = 1)) AS drifted_features,
    arraySort(groupUniqArrayIf(metric, drifted = 1)) AS drifted_metric_names,
    countIf(drifted = 1) AS drifted_metrics,
    count() AS metrics,
    max(n_current) AS n_current
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND window_start >= {since:DateTime64(3, 'UTC')}
  AND window_start < {until:DateTime64(3, 'UTC')}
GROUP BY model_version, window_start, window_end
HAVING drifted_metrics > 0
ORDER BY window_start, toUInt64OrZero(model_version)
