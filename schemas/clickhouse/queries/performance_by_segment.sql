-- title: Performance by segment
-- One performance metric per model version and segment (attribute
-- key=value, e.g. region=north) over a time range: weighted_value weighs
-- each window by its labelled rows; worst_window and best_window bound the
-- spread between windows. Segments with the lowest value come first.
-- FINAL: a window written twice counts once.
-- param model_id: the model
-- param metric: the metric, e.g. accuracy, roc_auc, mae
-- param since: first window start to include (UTC)
-- param until: windows starting at or after this time are left out (UTC)
SELECT
    model_version,
    segment,
    round(sum(value * n_labeled) / sum(n_labeled), 4) AS weighted_value,
    round(min(value), 4) AS worst_window,
    round(max(value), 4) AS best_window,
    count() AS windows,
    sum(n_labeled) AS labelled_rows
FROM performance_metrics FINAL
WHERE model_id = {model_id:String}
  AND metric = {metric:String}
  AND segment != ''
  AND window_start >= {since:DateTime64(3, 'UTC')}
  AND window_start < {until:DateTime64(3, 'UTC')}
GROUP BY model_version, segment
HAVING labelled_rows > 0
ORDER BY toUInt64OrZero(model_version), weighted_value, segment
