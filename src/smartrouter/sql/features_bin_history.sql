-- BIN x processor approval history, point in time: for every (BIN, minute m) of a target attempt
-- and every processor that has seen the BIN, the approvals and outcomes of that BIN on that
-- processor over [m - w, m) in whole minutes: strictly before the attempt's minute, so a training
-- row never sees its own outcome. Python smooths it toward the processor prior.
-- Only the issuer's decisions count (approvals and issuer declines): a timeout or processor
-- error says how the processor was doing, not how the BIN's issuer decides, and the health
-- features carry it. Counted here, one outage would depress the BIN's history on that processor
-- for the next 28 days (seen: a 2-day WORLDPAY outage lowered its BIN rates for the whole week after).
-- How: running totals per (BIN, processor) read at marker rows at m and m - w (see
-- features_health.sql); window count = total(m) - total(m - w).
WITH outcomes AS (
    SELECT
        CARD_BIN,
        PROCESSOR,
        DATEDIFF('minute', '1970-01-01 00:00:00'::TIMESTAMP_NTZ, CREATED_AT) AS MINUTE_NUM,
        COUNT_IF(STATUS = 'APPROVED') AS N_APPROVED,
        COUNT(*) AS N_OUTCOMES
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE MERCHANT = %(merchant)s
      AND (STATUS = 'APPROVED' OR (STATUS = 'DECLINED' AND COALESCE(ERROR_CATEGORY, '') <> %(timeout_category)s))
      AND CREATED_AT >= %(history_start)s::TIMESTAMP_NTZ
      AND CREATED_AT < %(end)s::TIMESTAMP_NTZ
    GROUP BY 1, 2, 3
),
targets AS (
    SELECT DISTINCT CARD_BIN, DATEDIFF('minute', '1970-01-01 00:00:00'::TIMESTAMP_NTZ, CREATED_AT) AS MINUTE_NUM
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE MERCHANT = %(merchant)s
      AND CREATED_AT >= %(start)s::TIMESTAMP_NTZ
      AND CREATED_AT < %(end)s::TIMESTAMP_NTZ
),
lags AS (
    SELECT 0 AS LAG_MIN
    UNION ALL SELECT %(w_bin)s
),
stream AS (
    SELECT CARD_BIN, PROCESSOR, MINUTE_NUM, NULL AS TARGET_MINUTE, NULL AS LAG_MIN, 1 AS IS_OUTCOME,
           N_APPROVED, N_OUTCOMES
    FROM outcomes
    UNION ALL
    SELECT t.CARD_BIN, k.PROCESSOR, t.MINUTE_NUM - l.LAG_MIN, t.MINUTE_NUM, l.LAG_MIN, 0, 0, 0
    FROM targets AS t
    JOIN (SELECT DISTINCT CARD_BIN, PROCESSOR FROM outcomes) AS k
        ON k.CARD_BIN = t.CARD_BIN
    CROSS JOIN lags AS l
),
running AS (
    SELECT
        CARD_BIN, PROCESSOR, TARGET_MINUTE, LAG_MIN, IS_OUTCOME,
        SUM(N_APPROVED) OVER (PARTITION BY CARD_BIN, PROCESSOR ORDER BY MINUTE_NUM, IS_OUTCOME
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS C_A,
        SUM(N_OUTCOMES) OVER (PARTITION BY CARD_BIN, PROCESSOR ORDER BY MINUTE_NUM, IS_OUTCOME
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS C_N
    FROM stream
)
SELECT
    CARD_BIN,
    TARGET_MINUTE AS MINUTE_NUM,
    PROCESSOR,
    SUM(IFF(LAG_MIN = 0, C_A, 0)) - SUM(IFF(LAG_MIN = %(w_bin)s, C_A, 0)) AS BIN_APPROVED,
    SUM(IFF(LAG_MIN = 0, C_N, 0)) - SUM(IFF(LAG_MIN = %(w_bin)s, C_N, 0)) AS BIN_OUTCOMES
FROM running
WHERE IS_OUTCOME = 0
GROUP BY 1, 2, 3
HAVING SUM(IFF(LAG_MIN = 0, C_N, 0)) - SUM(IFF(LAG_MIN = %(w_bin)s, C_N, 0)) > 0
