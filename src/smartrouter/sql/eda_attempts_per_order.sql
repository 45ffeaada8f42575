-- EDA: how many attempts orders take, and how often the order ends approved.
-- Parameters: %(start)s, %(end)s (UTC, end exclusive; an order belongs to the window of its first attempt).
WITH orders AS (
    SELECT
        ORDER_ID,
        COUNT(*) AS N_ATTEMPTS,
        MAX(IFF(STATUS = 'APPROVED', 1, 0)) AS APPROVED
    FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
    WHERE CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
    GROUP BY ORDER_ID
)
SELECT N_ATTEMPTS, COUNT(*) AS ORDERS, AVG(APPROVED) AS ORDER_APPROVAL_RATE
FROM orders
GROUP BY 1
ORDER BY 1
