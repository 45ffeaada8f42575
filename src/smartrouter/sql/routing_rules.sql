-- The merchant's static routing rules, every column the rules engine reads (evaluation, gates).
-- Parameters: %(merchant)s.
SELECT RULE_ID, MERCHANT, CURRENCY, CARD_BRAND, CARD_TYPE, PROCESSOR, PRIORITY, SHADOW_MODE, ACTIVE_FROM
FROM PAYMENT_ML.SOURCES.VW_ROUTING_MERCHANT_RULE
WHERE MERCHANT = %(merchant)s
ORDER BY CURRENCY, CARD_BRAND, CARD_TYPE, PRIORITY, RULE_ID
