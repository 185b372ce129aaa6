-- title: Lineage of the current champion
-- The version of a model that holds the champion alias, with where it came
-- from: its training data (URI, hash, rows), code version, hyperparameters
-- and metrics, its parent version (and the parent's metrics), and the
-- retrain request that produced it with the request's reason and evidence.
-- model_versions mirrors the registry (the registry stays the source of
-- truth; `driftline registry show` reads it).
-- FINAL: the mirror is rewritten on every registry change; without FINAL an
-- earlier champion would still appear.
-- param model_id: the model
SELECT
    v.model_id AS model_id,
    v.version AS version,
    v.status AS status,
    v.aliases AS aliases,
    v.created_at AS created_at,
    v.artifact_sha256 AS artifact_sha256,
    v.dataset_uri AS dataset_uri,
    v.dataset_sha256 AS dataset_sha256,
    v.dataset_rows AS dataset_rows,
    v.code_version AS code_version,
    v.hyperparameters AS hyperparameters,
    v.metrics AS metrics,
    v.parent_version AS parent_version,
    p.metrics AS parent_metrics,
    v.request_id AS request_id,
    r.reason AS request_reason,
    r.requested_at AS requested_at,
    r.evidence AS evidence
FROM (SELECT * FROM model_versions FINAL WHERE model_id = {model_id:String} AND has(aliases, 'champion')) AS v
LEFT JOIN (SELECT * FROM model_versions FINAL WHERE model_id = {model_id:String}) AS p ON p.version = v.parent_version
LEFT JOIN (SELECT * FROM retrain_requests FINAL WHERE model_id = {model_id:String}) AS r ON r.request_id = v.request_id
SETTINGS join_use_nulls = 1
