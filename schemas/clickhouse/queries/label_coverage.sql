-- title: Label coverage and raw accuracy per hour
-- Drill-down into the raw events: per hour of event time and model
-- version, how many predictions there were, how many have a label yet, and
-- the accuracy of the score at a 0.5 cut-off against numeric 0/1 labels.
-- Labels often arrive hours late, so the latest hours show low coverage.
-- FINAL: an event or label delivered twice counts once.
-- param model_id: the model
-- param since: first event time to include (UTC)
-- param until: events at or after this time are left out (UTC)
SELECT
    toStartOfHour(p.event_time) AS hour,
    p.model_version AS model_version,
    count() AS predictions,
    countIf(l.event_id IS NOT NULL) AS labelled,
    round(labelled / predictions, 3) AS label_rate,
    round(avgIf((p.prediction >= 0.5) = (l.label_value >= 0.5), l.label_value IS NOT NULL AND p.prediction IS NOT NULL), 4)
        AS accuracy_at_half
FROM (
    SELECT event_id, model_version, event_time, prediction FROM predictions FINAL
    WHERE model_id = {model_id:String}
      AND event_time >= {since:DateTime64(3, 'UTC')}
      AND event_time < {until:DateTime64(3, 'UTC')}
) AS p
LEFT JOIN (SELECT event_id, label_value FROM labels FINAL WHERE model_id = {model_id:String}) AS l ON l.event_id = p.event_id
GROUP BY hour, model_version
ORDER BY hour, toUInt64OrZero(model_version)
SETTINGS join_use_nulls = 1
