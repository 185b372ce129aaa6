-- title: Performance over time
-- Every performance metric of the whole population (segment '') per model
-- version and window, once labels arrived: accuracy, roc_auc, f1,
-- log_loss, brier, mae, rmse, ... Latency is left out (see
-- latency_over_time), and so are the label-free estimates (see
-- estimated_vs_realized).
-- FINAL: a window written twice counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    metric,
    window_start,
    window_end,
    value,
    n_labeled,
    n_predictions
FROM performance_metrics FINAL
WHERE model_id = {model_id:String}
  AND segment = ''
  AND NOT startsWith(metric, 'latency_')
  AND NOT startsWith(metric, 'estimated_')
  AND window_start >= {since:DateTime64(3, 'UTC')}
ORDER BY metric, toUInt64OrZero(model_version), window_start
