-- Processor health, point in time: for every minute m in which a target attempt was created and
-- every processor, the outcome counts over the windows [m - w, m) in whole minutes, i.e. only
-- outcomes created STRICTLY BEFORE the attempt's minute (never the attempt itself or later).
-- Outcome kinds (features.outcome_kind is the same rule in Python): APPROVED; TIMEOUT = a
-- decline with ERROR_CATEGORY = PROCESSOR_ERROR (timeouts and processor errors); DECLINED = any
-- other decline. PROCESSING rows are not outcomes. Long output; Python pivots to wide.
--
-- How: one running total per processor over per-minute outcome counts, read at zero-count
-- marker rows placed at m and at m - w (a marker sorts before the outcomes of its own minute, so
-- it reads "everything before this minute"); window count = total(m) - total(m - w). One sort
-- and a streaming sum: much cheaper than RANGE frames, and plain Snowflake SQL.
WITH outcomes AS (
    SELECT
        PROCESSOR,
        DATEDIFF('minute', '1970-01-01 00:00:00'::TIMESTAMP_NTZ, CREATED_AT) AS MINUTE_NUM,
        COUNT_IF(STATUS = 'APPROVED') AS N_APPROVED,
        COUNT_IF(STATUS = 'DECLINED' AND ERROR_CATEGORY = %(timeout_category)s) AS N_TIMEOUT,
        COUNT_IF(STATUS = 'DECLINED' AND COALESCE(ERROR_CATEGORY, '') <> %(timeout_category)s) AS N_DECLINED
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE MERCHANT = %(merchant)s
      AND STATUS IN ('APPROVED', 'DECLINED')
      AND CREATED_AT >= %(history_start)s::TIMESTAMP_NTZ
      AND CREATED_AT < %(end)s::TIMESTAMP_NTZ
    GROUP BY 1, 2
),
target_minutes AS (
    SELECT DISTINCT DATEDIFF('minute', '1970-01-01 00:00:00'::TIMESTAMP_NTZ, CREATED_AT) AS MINUTE_NUM
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE MERCHANT = %(merchant)s
      AND CREATED_AT >= %(start)s::TIMESTAMP_NTZ
      AND CREATED_AT < %(end)s::TIMESTAMP_NTZ
),
lags AS (
    SELECT 0 AS LAG_MIN
    UNION ALL SELECT %(w_15m)s
    UNION ALL SELECT %(w_1h)s
    UNION ALL SELECT %(w_24h)s
    UNION ALL SELECT %(w_prior)s
),
stream AS (
    SELECT PROCESSOR, MINUTE_NUM, NULL AS TARGET_MINUTE, NULL AS LAG_MIN, 1 AS IS_OUTCOME,
           N_APPROVED, N_TIMEOUT, N_DECLINED
    FROM outcomes
    UNION ALL
    SELECT p.PROCESSOR, t.MINUTE_NUM - l.LAG_MIN, t.MINUTE_NUM, l.LAG_MIN, 0, 0, 0, 0
    FROM target_minutes AS t
    CROSS JOIN (SELECT DISTINCT PROCESSOR FROM outcomes) AS p
    CROSS JOIN lags AS l
),
running AS (
    SELECT
        PROCESSOR, TARGET_MINUTE, LAG_MIN, IS_OUTCOME,
        SUM(N_APPROVED) OVER (PARTITION BY PROCESSOR ORDER BY MINUTE_NUM, IS_OUTCOME
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS C_A,
        SUM(N_TIMEOUT) OVER (PARTITION BY PROCESSOR ORDER BY MINUTE_NUM, IS_OUTCOME
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS C_T,
        SUM(N_DECLINED) OVER (PARTITION BY PROCESSOR ORDER BY MINUTE_NUM, IS_OUTCOME
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS C_D
    FROM stream
)
SELECT
    TARGET_MINUTE AS MINUTE_NUM,
    PROCESSOR,
    SUM(IFF(LAG_MIN = 0, C_A, 0)) - SUM(IFF(LAG_MIN = %(w_15m)s, C_A, 0)) AS A_15M,
    SUM(IFF(LAG_MIN = 0, C_T, 0)) - SUM(IFF(LAG_MIN = %(w_15m)s, C_T, 0)) AS T_15M,
    SUM(IFF(LAG_MIN = 0, C_D, 0)) - SUM(IFF(LAG_MIN = %(w_15m)s, C_D, 0)) AS D_15M,
    SUM(IFF(LAG_MIN = 0, C_A, 0)) - SUM(IFF(LAG_MIN = %(w_1h)s, C_A, 0)) AS A_1H,
    SUM(IFF(LAG_MIN = 0, C_T, 0)) - SUM(IFF(LAG_MIN = %(w_1h)s, C_T, 0)) AS T_1H,
    SUM(IFF(LAG_MIN = 0, C_D, 0)) - SUM(IFF(LAG_MIN = %(w_1h)s, C_D, 0)) AS D_1H,
    SUM(IFF(LAG_MIN = 0, C_A, 0)) - SUM(IFF(LAG_MIN = %(w_24h)s, C_A, 0)) AS A_24H,
    SUM(IFF(LAG_MIN = 0, C_T, 0)) - SUM(IFF(LAG_MIN = %(w_24h)s, C_T, 0)) AS T_24H,
    SUM(IFF(LAG_MIN = 0, C_D, 0)) - SUM(IFF(LAG_MIN = %(w_24h)s, C_D, 0)) AS D_24H,
    -- the processor's own issuer approval (approvals / issuer decisions, timeouts left out as in
    -- the BIN history) over the BIN-history window: the smoothing prior
    SUM(IFF(LAG_MIN = 0, C_A, 0)) - SUM(IFF(LAG_MIN = %(w_prior)s, C_A, 0)) AS A_PRIOR,
    SUM(IFF(LAG_MIN = 0, C_A + C_D, 0)) - SUM(IFF(LAG_MIN = %(w_prior)s, C_A + C_D, 0)) AS N_PRIOR
FROM running
WHERE IS_OUTCOME = 0
GROUP BY 1, 2
ORDER BY 1, 2
