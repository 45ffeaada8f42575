-- Every attempt created in [start, end) with its routing record (the training extract).
-- Parameters: %(start)s, %(end)s (timestamps, UTC).
SELECT *
FROM PAYMENT_ML.ABTESTING.ALL_VIEWS_FLAT
WHERE CREATED_AT >= %(start)s
  AND CREATED_AT < %(end)s
ORDER BY CREATED_AT, ATTEMPT_ID
