-- title: Every version of a model
-- The registry mirror of a model, newest state of each version: status,
-- aliases, training data, code, hyperparameters, metrics (train.<name>,
-- holdout.<name>), parent and retrain request.
-- FINAL: the mirror is rewritten on every registry change; without FINAL a
-- version appears once per sync.
-- param model_id: the model
SELECT
    version,
    status,
    aliases,
    created_at,
    updated_at,
    artifact_sha256,
    dataset_uri,
    dataset_sha256,
    dataset_rows,
    code_version,
    hyperparameters,
    metrics,
    parent_version,
    request_id
FROM model_versions FINAL
WHERE model_id = {model_id:String}
ORDER BY toUInt64OrZero(version)
