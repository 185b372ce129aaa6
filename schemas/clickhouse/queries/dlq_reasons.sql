-- title: Why input messages were rejected (DLQ reasons)
-- Messages refused by the worker (they went to the dlq topic unchanged) per
-- reason code and source topic over a time range of arrival, with the
-- models they named (empty when the message could not be read that far)
-- and one example of the detail.
-- FINAL: a message recorded twice (a redelivery) counts once.
-- param since: first arrival time to include (UTC)
-- param until: messages received at or after this time are left out (UTC)
SELECT
    reason,
    source_topic,
    count() AS messages,
    sum(raw_size) AS bytes,
    min(received_at) AS first_seen,
    max(received_at) AS last_seen,
    arraySort(groupUniqArray(model_id)) AS models,
    any(detail) AS example_detail
FROM rejected_events FINAL
WHERE received_at >= {since:DateTime64(3, 'UTC')}
  AND received_at < {until:DateTime64(3, 'UTC')}
GROUP BY reason, source_topic
ORDER BY messages DESC, reason, source_topic
