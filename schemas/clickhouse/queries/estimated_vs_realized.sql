-- title: Estimated and realized performance side by side
-- Per version, prediction window and metric (accuracy, precision, recall,
-- f1, roc_auc) of the whole population: the label-free estimate written
-- when the prediction window closed, with its 95% band, next to the metric
-- realized ON THE SAME PREDICTIONS once their labels arrived. The realized
-- side is computed here from the raw `predictions` and `labels` tables
-- (joined on model_id and event_id), over the predictions whose event time
-- falls in the estimate's window [window_start, window_end), whatever the
-- labels' own event time: a label logged hours later still grades its
-- prediction's window. (The worker's realized rows in performance_metrics
-- are keyed by the label's event time, so they are not used here.)
-- Decision rule as the worker's: the predicted label when it is a binary
-- word or 0/1 (1/true/yes/positive..., 0/false/no/negative...), else
-- score >= 0.5; labels: label_value, else label_class read the same way.
-- roc_auc is the Mann-Whitney statistic of the scores (ties count half).
-- n_labeled: the window's predictions with a label so far; n_predictions:
-- the window's scored predictions, from the estimate. realized is NULL until
-- a label arrived (or where the metric is undefined, e.g. one class only),
-- and for all windows when the worker does not write raw predictions.
-- error is realized minus estimated; covered says whether the band held the
-- realized value. Only windows with an estimate are listed.
-- FINAL: a window, event or label written twice counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    e.model_version AS model_version,
    e.metric AS metric,
    e.window_start AS window_start,
    e.window_end AS window_end,
    e.estimated AS estimated,
    e.estimated_lower AS estimated_lower,
    e.estimated_upper AS estimated_upper,
    multiIf(
        e.metric = 'accuracy', r.accuracy,
        e.metric = 'precision', r.precision,
        e.metric = 'recall', r.recall,
        e.metric = 'f1', r.f1,
        r.roc_auc
    ) AS realized,
    toUInt64(ifNull(r.n_labeled, 0)) AS n_labeled,
    e.n_predictions AS n_predictions,
    realized - estimated AS error,
    realized BETWEEN estimated_lower AND estimated_upper AS covered
FROM
(
    SELECT
        model_version,
        base AS metric,
        window_start,
        max(window_end) AS window_end,
        anyIf(value, part = 'estimate') AS estimated,
        anyIf(value, part = 'lower') AS estimated_lower,
        anyIf(value, part = 'upper') AS estimated_upper,
        maxIf(n_predictions, part = 'estimate') AS n_predictions
    FROM
    (
        SELECT
            model_version,
            window_start,
            window_end,
            value,
            n_predictions,
            multiIf(endsWith(metric, '_lower'), 'lower', endsWith(metric, '_upper'), 'upper', 'estimate') AS part,
            replaceRegexpAll(metric, '^estimated_|_lower$|_upper$', '') AS base
        FROM performance_metrics FINAL
        WHERE model_id = {model_id:String}
          AND segment = ''
          AND startsWith(metric, 'estimated_')
          AND window_start >= {since:DateTime64(3, 'UTC')}
    )
    WHERE base IN ('accuracy', 'precision', 'recall', 'f1', 'roc_auc')
    GROUP BY model_version, base, window_start
    HAVING countIf(part = 'estimate') > 0
) AS e
LEFT JOIN
(
    SELECT
        model_version,
        window_start,
        countIf(has_label) AS n_labeled,
        countIf(decided AND predicted = 1 AND y = 1) AS tp,
        countIf(decided AND predicted = 1 AND y = 0) AS fp,
        countIf(decided AND predicted = 0 AND y = 1) AS fn,
        countIf(decided AND predicted = 0 AND y = 0) AS tn,
        groupArrayIf((assumeNotNull(score), assumeNotNull(y)), ranked) AS scored,
        if(tp + fp + fn + tn > 0, (tp + tn) / (tp + fp + fn + tn), NULL) AS accuracy,
        if(tp + fp > 0, tp / (tp + fp), NULL) AS precision,
        if(tp + fn > 0, tp / (tp + fn), NULL) AS recall,
        if(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), NULL) AS f1,
        if(
            countIf(ranked AND y = 1) > 0 AND countIf(ranked AND y = 0) > 0,
            arrayAUC(arrayMap(t -> t.1, scored), arrayMap(t -> t.2, scored)),
            NULL
        ) AS roc_auc
    FROM
    (
        SELECT
            w.model_version AS model_version,
            w.window_start AS window_start,
            p.prediction AS score,
            multiIf(
                lower(trim(p.predicted_label)) IN ('true', 't', 'yes', 'y', 'positive', 'pos'), 1,
                lower(trim(p.predicted_label)) IN ('false', 'f', 'no', 'n', 'negative', 'neg'), 0,
                toFloat64OrNull(trim(p.predicted_label)) IN (0, 1), toUInt8(toFloat64OrNull(trim(p.predicted_label))),
                p.prediction IS NULL, NULL,
                toUInt8(p.prediction >= 0.5)
            ) AS predicted,
            l.event_id IS NOT NULL AS has_label,
            multiIf(
                l.label_value IS NOT NULL, l.label_value,
                lower(trim(l.label_class)) IN ('true', 't', 'yes', 'y', 'positive', 'pos'), 1.0,
                lower(trim(l.label_class)) IN ('false', 'f', 'no', 'n', 'negative', 'neg'), 0.0,
                toFloat64OrNull(trim(l.label_class))
            ) AS y,
            predicted IS NOT NULL AND y IN (0, 1) AS decided,
            score IS NOT NULL AND y IN (0, 1) AS ranked
        FROM
        (
            SELECT event_id, model_version, event_time, prediction, predicted_label
            FROM predictions FINAL
            WHERE model_id = {model_id:String}
              AND event_time >= {since:DateTime64(3, 'UTC')}
        ) AS p
        -- the window a prediction belongs to: the latest estimate window starting at or before it
        ASOF INNER JOIN
        (
            SELECT DISTINCT model_version, window_start, window_end
            FROM performance_metrics FINAL
            WHERE model_id = {model_id:String}
              AND segment = ''
              AND metric = 'estimated_accuracy'
              AND window_start >= {since:DateTime64(3, 'UTC')}
        ) AS w
            ON p.model_version = w.model_version AND p.event_time >= w.window_start
        LEFT JOIN
        (
            SELECT event_id, label_value, label_class FROM labels FINAL WHERE model_id = {model_id:String}
        ) AS l ON l.event_id = p.event_id
        WHERE p.event_time < w.window_end
    )
    GROUP BY model_version, window_start
) AS r ON r.model_version = e.model_version AND r.window_start = e.window_start
ORDER BY metric, toUInt64OrZero(model_version), window_start
SETTINGS join_use_nulls = 1
