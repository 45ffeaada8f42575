-- EDA: the newest %(sample_rows)s attempts of [start, end) for row-level data checks.
-- Parameters: %(start)s, %(end)s (UTC, end exclusive), %(sample_rows)s.
SELECT *
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
ORDER BY CREATED_AT DESC
LIMIT %(sample_rows)s
