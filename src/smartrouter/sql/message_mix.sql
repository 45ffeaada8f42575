-- Message configurations sent per processor and card type in [start, end): attempts, definite
-- outcomes and approvals per (configuration, randomized or not), with how many of those attempts
-- were eligible for each toggle's "on" value (smartrouter.messages). Parameters: %(start)s, %(end)s.
SELECT
    PROCESSOR,
    CARD_TYPE,
    MCI_MSI_TYPE,
    AVS_DATA,
    MCC,
    COALESCE(MESSAGE_RANDOMIZED, 0) AS MESSAGE_RANDOMIZED,
    COUNT(*) AS ATTEMPTS,
    COUNT_IF(STATUS <> 'PROCESSING') AS RESOLVED,
    COUNT_IF(STATUS = 'APPROVED') AS APPROVED,
    SUM(COALESCE(STORED_CREDENTIAL, 0)) AS STORED_CREDENTIAL,
    SUM(COALESCE(BILLING_ADDRESS, 0)) AS BILLING_ADDRESS,
    SUM(COALESCE(TRAVEL_PACKAGE, 0)) AS TRAVEL_PACKAGE
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
