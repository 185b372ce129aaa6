-- title: Top drifting features of the last N days
-- The input features of a model ranked by how many windows drifted: a
-- window counts when any metric of the feature crossed its threshold. Each
-- model version has its own windows, so a window shared by two versions
-- counts once per version. worst_score is the largest value / threshold
-- (1 = at the threshold) and worst_metric the metric that reached it.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
-- param model_id: the model
-- param days: how many days back to look (7 for "this week")
SELECT
    feature,
    uniqExactIf((model_version, window_start), drifted = 1) AS drifted_windows,
    uniqExact((model_version, window_start)) AS windows,
    round(drifted_windows / windows, 3) AS drifted_share,
    max(if(threshold > 0 AND isFinite(value), value / threshold, 0)) AS worst_score,
    argMax(metric, if(threshold > 0 AND isFinite(value), value / threshold, 0)) AS worst_metric,
    maxIfOrNull(window_end, drifted = 1) AS last_drifted
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND feature != '__prediction__'
  AND window_start >= now64(3) - INTERVAL {days:UInt16} DAY
GROUP BY feature
ORDER BY drifted_windows DESC, worst_score DESC, feature
