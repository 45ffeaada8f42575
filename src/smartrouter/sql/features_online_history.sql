-- Outcomes (APPROVED / DECLINED; PROCESSING is not one) created in [since, until), in time order:
-- what the service's online feature state is seeded from, and what the leakage check recounts.
SELECT PROCESSOR, CREATED_AT, STATUS, ERROR_CATEGORY, CARD_BIN, ATTEMPT_ID
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE MERCHANT = %(merchant)s
  AND STATUS IN ('APPROVED', 'DECLINED')
  AND CREATED_AT >= %(since)s::TIMESTAMP_NTZ
  AND CREATED_AT < %(until)s::TIMESTAMP_NTZ
ORDER BY CREATED_AT, ATTEMPT_ID
