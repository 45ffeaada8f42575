-- EDA: attempts and outcomes per day and processor in [start, end) (volume, trend, a new PSP's arrival).
-- Parameters: %(start)s, %(end)s (UTC, end exclusive).
SELECT
    TO_DATE(CREATED_AT) AS DAY,
    PROCESSOR,
    COUNT(*) AS ATTEMPTS,
    COUNT_IF(STATUS = 'APPROVED') AS APPROVED,
    COUNT_IF(STATUS = 'DECLINED') AS DECLINED,
    COUNT_IF(STATUS = 'PROCESSING') AS PROCESSING,
    COUNT(DISTINCT ORDER_ID) AS ORDERS
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
GROUP BY 1, 2
ORDER BY 1, 2
