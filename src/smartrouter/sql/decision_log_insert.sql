-- One decision-log line (`smartrouter decisions ship`, executemany).
INSERT INTO PAYMENT_ML.SMARTROUTER.DECISION_LOG (
    SEGMENT_FILE, LINE_NO, KIND, REQUEST_ID, ORDER_ID, CREATED_AT, PROCESSOR, SOURCE, ARM, PROPENSITY,
    MODEL_VERSION, STATUS, OUTCOME_KIND, ERROR_CODE, RECORD, SHIPPED_AT
) VALUES (
    %(segment_file)s, %(line_no)s, %(kind)s, %(request_id)s, %(order_id)s, %(created_at)s, %(processor)s,
    %(source)s, %(arm)s, %(propensity)s, %(model_version)s, %(status)s, %(outcome_kind)s, %(error_code)s,
    %(record)s, %(shipped_at)s
)
