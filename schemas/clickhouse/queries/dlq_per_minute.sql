-- title: DLQ messages per minute and reason
-- Rejected input messages of a model per minute of arrival, reason code and
-- source topic. Messages that could not be read far enough to name a model
-- (model_id '') are included, since they may well be the model's. The
-- report's DLQ chart.
-- FINAL: a message recorded twice (a redelivery) counts once.
-- param model_id: the model
SELECT
    toDateTime64(toStartOfMinute(received_at), 3, 'UTC') AS minute,
    reason,
    source_topic,
    count() AS messages,
    countIf(model_id = '') AS unattributed
FROM rejected_events FINAL
WHERE model_id IN ({model_id:String}, '')
GROUP BY minute, reason, source_topic
ORDER BY minute, reason, source_topic
