-- BIN x processor approval history, point in time: for every (BIN, minute) of a target attempt
-- and every processor that has seen the BIN, the approvals and outcomes of that BIN on that
-- processor over [m - w, m) in whole minutes: strictly before the attempt's minute, so a training
-- row never sees its own outcome. Python smooths it toward the processor prior.
WITH outcomes AS (
    SELECT
        CARD_BIN,
        PROCESSOR,
        DATEDIFF('minute', '1970-01-01 00:00:00'::TIMESTAMP_NTZ, CREATED_AT) AS MINUTE_NUM,
        COUNT_IF(STATUS = 'APPROVED') AS N_APPROVED,
        COUNT(*) AS N_OUTCOMES
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE MERCHANT = %(merchant)s
      AND STATUS IN ('APPROVED', 'DECLINED')
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
markers AS (
    SELECT t.CARD_BIN, k.PROCESSOR, t.MINUTE_NUM, 0 AS N_APPROVED, 0 AS N_OUTCOMES, 1 AS IS_TARGET
    FROM targets AS t
    JOIN (SELECT DISTINCT CARD_BIN, PROCESSOR FROM outcomes) AS k
        ON k.CARD_BIN = t.CARD_BIN
),
stream AS (
    SELECT CARD_BIN, PROCESSOR, MINUTE_NUM, N_APPROVED, N_OUTCOMES, 0 AS IS_TARGET FROM outcomes
    UNION ALL
    SELECT CARD_BIN, PROCESSOR, MINUTE_NUM, N_APPROVED, N_OUTCOMES, IS_TARGET FROM markers
),
windowed AS (
    SELECT
        CARD_BIN,
        PROCESSOR,
        MINUTE_NUM,
        IS_TARGET,
        SUM(N_APPROVED) OVER (PARTITION BY CARD_BIN, PROCESSOR ORDER BY MINUTE_NUM RANGE BETWEEN %(w_bin)s PRECEDING AND 1 PRECEDING) AS BIN_APPROVED,
        SUM(N_OUTCOMES) OVER (PARTITION BY CARD_BIN, PROCESSOR ORDER BY MINUTE_NUM RANGE BETWEEN %(w_bin)s PRECEDING AND 1 PRECEDING) AS BIN_OUTCOMES
    FROM stream
)
SELECT
    CARD_BIN,
    MINUTE_NUM,
    PROCESSOR,
    COALESCE(BIN_APPROVED, 0) AS BIN_APPROVED,
    COALESCE(BIN_OUTCOMES, 0) AS BIN_OUTCOMES
FROM windowed
WHERE IS_TARGET = 1 AND COALESCE(BIN_OUTCOMES, 0) > 0
