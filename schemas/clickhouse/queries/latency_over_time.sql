-- title: Serving latency over time
-- Latency percentiles in milliseconds per model version and window, as the
-- producers reported them (latency_ms of each prediction). n_with_latency
-- counts the predictions that carried a latency. A percentile the window
-- did not report is NULL.
-- FINAL: a window written twice counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    window_start,
    window_end,
    anyOrNullIf(value, metric = 'latency_p50') AS p50,
    anyOrNullIf(value, metric = 'latency_p95') AS p95,
    anyOrNullIf(value, metric = 'latency_p99') AS p99,
    max(n_labeled) AS n_with_latency
FROM performance_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND metric IN ('latency_p50', 'latency_p95', 'latency_p99')
  AND window_start >= {since:DateTime64(3, 'UTC')}
GROUP BY model_version, window_start, window_end
ORDER BY toUInt64OrZero(model_version), window_start
