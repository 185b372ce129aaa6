-- title: Models known to the warehouse
-- Every model with monitoring results: its versions, how many windows were
-- closed, how many of them drifted, and the event-time range they cover.
-- Start here to find the model_id the other queries take.
-- FINAL: a window written twice (a retried insert, a replay) counts once.
SELECT
    model_id,
    arraySort(x -> toUInt64OrZero(x), groupUniqArray(model_version)) AS versions,
    uniqExact((model_version, window_start)) AS windows,
    uniqExactIf((model_version, window_start), drifted = 1) AS drifted_windows,
    min(window_start) AS first_window,
    max(window_end) AS last_window
FROM drift_metrics FINAL
WHERE segment = ''
GROUP BY model_id
ORDER BY last_window DESC, model_id
