-- Decision-log rows stamped at or after a time: the live loop removes those of a simulated day whose
-- generation was cut short (the engine redoes that day, so its first try's decisions never happened).
DELETE FROM PAYMENT_ML.SMARTROUTER.DECISION_LOG
WHERE CREATED_AT >= %(since)s
