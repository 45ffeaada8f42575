-- Which model versions served decisions in a time window, most decisions first (the drift check
-- compares the day's rows with the training rows of the version that served them).
-- Parameters: %(start)s, %(end)s (UTC, end exclusive).
SELECT MODEL_VERSION, COUNT(*) AS DECISIONS
FROM PAYMENT_ML.SMARTROUTER.DECISION_LOG
WHERE KIND = 'decision' AND MODEL_VERSION IS NOT NULL
  AND CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
GROUP BY MODEL_VERSION
ORDER BY DECISIONS DESC
