-- EDA: retries by the processor of the previous attempt and the processor retried on.
-- Parameters: %(start)s, %(end)s (UTC, end exclusive).
SELECT
    PREVIOUS_PROCESSOR,
    PROCESSOR AS RETRY_PROCESSOR,
    COUNT(*) AS RETRIES,
    COUNT_IF(STATUS = 'APPROVED') / NULLIF(COUNT_IF(STATUS <> 'PROCESSING'), 0) AS APPROVAL_RATE
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
  AND NUM_ATTEMPTS_ORDER > 1
GROUP BY 1, 2
ORDER BY 1, 2
