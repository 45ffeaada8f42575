-- Every line of the service's decision log as shipped (decisions and outcomes), in log order:
-- the A/B readout (smartrouter.abtest) parses RECORD, the whole JSON line.
SELECT RECORD
FROM PAYMENT_ML.SMARTROUTER.DECISION_LOG
ORDER BY SEGMENT_FILE, LINE_NO
