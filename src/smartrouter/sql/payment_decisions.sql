-- The decision-log records the service shipped for one order (smartrouter payment), in log order.
-- Parameter: %(order_id)s.
SELECT RECORD
FROM PAYMENT_ML.SMARTROUTER.DECISION_LOG
WHERE ORDER_ID = %(order_id)s
ORDER BY SEGMENT_FILE, LINE_NO
