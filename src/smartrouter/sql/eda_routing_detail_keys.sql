-- EDA: the keys present in DYNAMIC_ROUTING_DETAIL (VARIANT) over the newest %(sample_rows)s attempts.
-- Parameters: %(start)s, %(end)s (UTC, end exclusive), %(sample_rows)s.
WITH recent AS (
    SELECT DYNAMIC_ROUTING_DETAIL
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
    ORDER BY CREATED_AT DESC
    LIMIT %(sample_rows)s
)
SELECT
    f.KEY AS DETAIL_KEY,
    COUNT(*) AS ROWS_WITH_KEY,
    MIN(TYPEOF(f.VALUE)) AS VALUE_TYPE
FROM recent r, LATERAL FLATTEN(INPUT => r.DYNAMIC_ROUTING_DETAIL) f
GROUP BY 1
ORDER BY 2 DESC, 1
