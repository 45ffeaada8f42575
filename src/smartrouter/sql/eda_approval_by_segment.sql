-- EDA: approval per processor within each segment of brand, currency, card type and amount band.
-- Amount bands are quartiles of the amount within its currency (Q1 = smallest).
-- Approval counts only definite outcomes (PROCESSING rows are neither approvals nor declines).
-- Parameters: %(start)s, %(end)s (UTC, end exclusive).
WITH labelled AS (
    SELECT
        PROCESSOR, CARD_BRAND, CURRENCY, CARD_TYPE,
        -- Quartiles within each currency: pesos and dollars are not on one scale.
        'Q' || NTILE(4) OVER (PARTITION BY CURRENCY ORDER BY AMOUNT) AS AMOUNT_BAND,
        IFF(STATUS = 'APPROVED', 1, 0) AS APPROVED
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
      AND STATUS <> 'PROCESSING'
)
SELECT 'CARD_BRAND' AS DIMENSION, CARD_BRAND AS SEGMENT, PROCESSOR, COUNT(*) AS ATTEMPTS, AVG(APPROVED) AS APPROVAL_RATE
FROM labelled GROUP BY 1, 2, 3
UNION ALL
SELECT 'CURRENCY', CURRENCY, PROCESSOR, COUNT(*), AVG(APPROVED) FROM labelled GROUP BY 1, 2, 3
UNION ALL
SELECT 'CARD_TYPE', CARD_TYPE, PROCESSOR, COUNT(*), AVG(APPROVED) FROM labelled GROUP BY 1, 2, 3
UNION ALL
SELECT 'AMOUNT_BAND', AMOUNT_BAND, PROCESSOR, COUNT(*), AVG(APPROVED) FROM labelled GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
