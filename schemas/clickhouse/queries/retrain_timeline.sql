-- title: Retrain timeline
-- Every retrain request of a model in its current status, oldest first:
-- why it was asked for (reason and the features in its evidence), which
-- version it was trained from, how it ended (status, error) and the
-- version it registered, with that version's status and aliases now.
-- evidence_end is the end of the latest window in the request's evidence:
-- where, in event time, the trouble was seen.
-- FINAL: retrain_requests gets one row per status change, and keeps only
-- the latest once parts merge; FINAL gives that latest one every time.
-- param model_id: the model
SELECT
    r.request_id AS request_id,
    r.reason AS reason,
    r.model_version AS from_version,
    r.requested_at AS requested_at,
    r.status AS status,
    r.updated_at AS updated_at,
    r.error AS error,
    r.registered_version AS registered_version,
    arraySort(arrayDistinct(r.evidence_feature)) AS evidence_features,
    length(r.evidence_metric) AS evidence_items,
    if(empty(r.evidence_window_end), NULL, arrayMax(r.evidence_window_end)) AS evidence_end,
    v.status AS version_status,
    v.aliases AS version_aliases
FROM (SELECT * FROM retrain_requests FINAL WHERE model_id = {model_id:String}) AS r
LEFT JOIN (SELECT version, status, aliases FROM model_versions FINAL WHERE model_id = {model_id:String}) AS v
    ON v.version = r.registered_version
ORDER BY r.requested_at, r.request_id
SETTINGS join_use_nulls = 1
