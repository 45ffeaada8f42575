-- Attempts of one merchant in [start, end) with their routing-log record (the logging policy
-- needed for off-policy evaluation). PROCESSING rows are kept here so the caller can count them
-- before dropping them from the labels. MINUTE_NUM = whole minutes since the epoch (UTC), the
-- time key every point-in-time feature is joined on.
SELECT
    a.* EXCLUDE (DYNAMIC_ROUTING_DETAIL),
    DATEDIFF('minute', '1970-01-01 00:00:00'::TIMESTAMP_NTZ, a.CREATED_AT) AS MINUTE_NUM,
    COALESCE(r.EXPERIMENT_ARM, a.DYNAMIC_ROUTING_DETAIL:arm::VARCHAR) AS EXPERIMENT_ARM,
    COALESCE(r.ALGORITHM_TYPE, a.DYNAMIC_ROUTING_DETAIL:algorithm::VARCHAR) AS ALGORITHM_TYPE,
    COALESCE(r.PROPENSITY, a.DYNAMIC_ROUTING_DETAIL:propensity::FLOAT) AS PROPENSITY,
    COALESCE(TO_JSON(r.CANDIDATES), TO_JSON(a.DYNAMIC_ROUTING_DETAIL:candidates)) AS CANDIDATES,
    -- the routing service's decision source (model/rules/failover/exploration/...); NULL for the
    -- merchant's own logger, whose records carry none: tells the evaluation whose propensity it is
    a.DYNAMIC_ROUTING_DETAIL:source::VARCHAR AS ROUTING_SOURCE
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT AS a
LEFT JOIN PAYMENT_ML.SOURCES.VW_SMART_ROUTING_ATTEMPTS AS r
    ON r.ATTEMPT_ID = a.ATTEMPT_ID
WHERE a.MERCHANT = %(merchant)s
  AND a.CREATED_AT >= %(start)s::TIMESTAMP_NTZ
  AND a.CREATED_AT < %(end)s::TIMESTAMP_NTZ
ORDER BY a.CREATED_AT, a.ATTEMPT_ID
