-- EDA: attempts and approvals per experiment arm in [start, end) (A/B sample-size check).
-- Parameters: %(start)s, %(end)s (UTC, end exclusive).
SELECT
    COALESCE(ROUTING_EXPERIMENT_ARM, 'UNLOGGED') AS ARM,
    COUNT(*) AS ATTEMPTS,
    COUNT_IF(STATUS = 'APPROVED') / NULLIF(COUNT_IF(STATUS <> 'PROCESSING'), 0) AS APPROVAL_RATE
FROM PAYMENT_ML.ABTESTING.ALL_VIEWS_FLAT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
GROUP BY 1
ORDER BY 1
