-- title: Multivariate drift over time
-- The statistics of all numeric features together (feature
-- __multivariate__): reconstruction_error (the mean error of the window's
-- standardized rows through the reference's PCA) and correlation_change
-- (the largest change of a pairwise correlation), per version and window,
-- with the threshold for the window's size and the decision. They see a
-- change in how features relate that leaves every feature's own
-- distribution unchanged.
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
  AND feature = '__multivariate__'
  AND window_start >= {since:DateTime64(3, 'UTC')}
ORDER BY metric, toUInt64OrZero(model_version), window_start
