-- title: Alerts of a model
-- Every alert raised for a model, oldest first, with the window it is
-- about (when it is about one).
-- FINAL: an alert published twice counts once.
-- param model_id: the model
SELECT
    occurred_at,
    severity,
    kind,
    model_version,
    message,
    window_start,
    window_end,
    alert_id
FROM alerts FINAL
WHERE model_id = {model_id:String}
ORDER BY occurred_at, alert_id
