-- One row describing the attempts view: date range, volume, approval, label exclusions and the
-- Amex hard rule (an Amex card on another processor, or another brand on AMEX, is a violation).
-- APPROVAL_RATE counts every attempt in the denominator; LABELLED_APPROVAL_RATE leaves out
-- PROCESSING attempts, which are neither approvals nor declines.
SELECT
    MIN(CREATED_AT) AS FIRST_CREATED_AT,
    MAX(CREATED_AT) AS LAST_CREATED_AT,
    COUNT(DISTINCT TO_DATE(CREATED_AT)) AS DAYS,
    COUNT(*) AS ATTEMPTS,
    COUNT(DISTINCT ORDER_ID) AS ORDERS,
    COUNT_IF(STATUS = 'APPROVED') AS APPROVED,
    COUNT_IF(STATUS = 'DECLINED') AS DECLINED,
    COUNT_IF(STATUS = 'PROCESSING') AS PROCESSING,
    COUNT_IF(STATUS = 'APPROVED') / NULLIF(COUNT(*), 0) AS APPROVAL_RATE,
    COUNT_IF(STATUS = 'APPROVED') / NULLIF(COUNT_IF(STATUS IN ('APPROVED', 'DECLINED')), 0) AS LABELLED_APPROVAL_RATE,
    COUNT_IF((CARD_BRAND = 'AMEX') <> (PROCESSOR = 'AMEX')) AS AMEX_RULE_VIOLATIONS
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
