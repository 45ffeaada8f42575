-- EDA: timeouts and processor errors per processor per time bucket (outages show as spikes).
-- Parameters: %(start)s, %(end)s (UTC, end exclusive), %(bucket_minutes)s.
SELECT
    TIME_SLICE(CREATED_AT, %(bucket_minutes)s, 'MINUTE') AS BUCKET,
    PROCESSOR,
    COUNT(*) AS ATTEMPTS,
    COUNT_IF(ERROR_CODE = 'TIMEOUT') AS TIMEOUTS,
    COUNT_IF(ERROR_CATEGORY = 'PROCESSOR_ERROR') AS PROCESSOR_ERRORS,
    COUNT_IF(STATUS = 'APPROVED') AS APPROVED
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
GROUP BY 1, 2
ORDER BY 1, 2
