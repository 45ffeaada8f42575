-- Attempts of one merchant per UTC day in [start, end): how the features stage cuts the window into
-- chunks that each fit in memory (features.plan_chunks). One cheap scan, no outcomes needed.
SELECT
    TO_DATE(CREATED_AT) AS DAY,
    COUNT(*) AS ATTEMPTS
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE MERCHANT = %(merchant)s
  AND CREATED_AT >= %(start)s::TIMESTAMP_NTZ
  AND CREATED_AT < %(end)s::TIMESTAMP_NTZ
GROUP BY 1
ORDER BY 1
