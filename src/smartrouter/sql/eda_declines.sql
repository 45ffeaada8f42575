-- EDA: declines by processor, hard/soft and error code.
-- Parameters: %(start)s, %(end)s (UTC, end exclusive).
SELECT
    PROCESSOR,
    HARD_SOFT,
    ERROR_CATEGORY,
    ERROR_CODE,
    COUNT(*) AS DECLINES
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
  AND STATUS = 'DECLINED'
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 5 DESC
