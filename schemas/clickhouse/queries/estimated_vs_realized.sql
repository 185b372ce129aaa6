-- title: Estimated and realized performance side by side
-- Per version, window and metric (accuracy, precision, recall, f1,
-- roc_auc) of the whole population: the label-free estimate written when
-- the prediction window closed, with its 95% band, next to the metric
-- realized once labels arrived (NULL until then). error is realized minus
-- estimated; covered says whether the band held the realized value.
-- Only windows with an estimate are listed.
-- FINAL: a window written twice counts once.
-- param model_id: the model
-- param since: first window start to include (UTC)
SELECT
    model_version,
    base AS metric,
    window_start,
    max(window_end) AS window_end,
    anyIf(value, part = 'estimate') AS estimated,
    anyIf(value, part = 'lower') AS estimated_lower,
    anyIf(value, part = 'upper') AS estimated_upper,
    anyIfOrNull(value, part = 'realized') AS realized,
    maxIf(n_labeled, part = 'realized') AS n_labeled,
    maxIf(n_predictions, part = 'estimate') AS n_predictions,
    realized - estimated AS error,
    realized BETWEEN estimated_lower AND estimated_upper AS covered
FROM
(
    SELECT
        model_version,
        window_start,
        window_end,
        value,
        n_labeled,
        n_predictions,
        multiIf(
            NOT startsWith(metric, 'estimated_'), 'realized',
            endsWith(metric, '_lower'), 'lower',
            endsWith(metric, '_upper'), 'upper',
            'estimate'
        ) AS part,
        replaceRegexpAll(metric, '^estimated_|_lower$|_upper$', '') AS base
    FROM performance_metrics FINAL
    WHERE model_id = {model_id:String}
      AND segment = ''
      AND window_start >= {since:DateTime64(3, 'UTC')}
)
WHERE base IN ('accuracy', 'precision', 'recall', 'f1', 'roc_auc')
GROUP BY model_version, base, window_start
HAVING countIf(part = 'estimate') > 0
ORDER BY metric, toUInt64OrZero(model_version), window_start
