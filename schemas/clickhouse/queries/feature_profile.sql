-- title: How one feature's distribution moved
-- The profile of one feature per model version and window: missing rate,
-- mean, std and the 5th, 50th and 95th percentiles for numeric features
-- (NaN when not profiled), category counts for categorical ones. Compare
-- with drift_by_window to see what a drift score means in the data.
-- FINAL: a window written twice counts once.
-- param model_id: the model
-- param feature: the feature
SELECT
    model_version,
    window_start,
    window_end,
    kind,
    count,
    round(missing / count, 4) AS missing_rate,
    mean,
    std,
    if(indexOf(quantile_levels, 0.05) > 0, quantiles[indexOf(quantile_levels, 0.05)], nan) AS p05,
    if(indexOf(quantile_levels, 0.5) > 0, quantiles[indexOf(quantile_levels, 0.5)], nan) AS p50,
    if(indexOf(quantile_levels, 0.95) > 0, quantiles[indexOf(quantile_levels, 0.95)], nan) AS p95,
    categories
FROM window_profiles FINAL
WHERE model_id = {model_id:String}
  AND feature = {feature:String}
ORDER BY window_start, toUInt64OrZero(model_version)
