-- The service's decision log in the warehouse (`smartrouter decisions ship` loads it from the
-- local JSONL segments). One row per decision or outcome; (SEGMENT_FILE, LINE_NO) is the key
-- that makes a retried load idempotent. RECORD is the whole JSON line (PARSE_JSON(RECORD) for
-- fields without a column of their own, e.g. the ranked processors or the payment context).
CREATE TABLE IF NOT EXISTS PAYMENT_ML.SMARTROUTER.DECISION_LOG (
    SEGMENT_FILE VARCHAR NOT NULL,
    LINE_NO INTEGER NOT NULL,
    KIND VARCHAR,
    REQUEST_ID VARCHAR,
    ORDER_ID VARCHAR,
    CREATED_AT TIMESTAMP_NTZ,
    PROCESSOR VARCHAR,
    SOURCE VARCHAR,
    ARM VARCHAR,
    PROPENSITY FLOAT,
    MODEL_VERSION VARCHAR,
    STATUS VARCHAR,
    OUTCOME_KIND VARCHAR,
    ERROR_CODE VARCHAR,
    RECORD VARCHAR,
    SHIPPED_AT TIMESTAMP_NTZ
)
