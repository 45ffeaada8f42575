-- ABTESTING.ALL_VIEWS_FLAT: every attempt with its routing record, the starting point for EDA.
-- LEFT JOIN: an attempt the routing engine did not log keeps NULL routing columns.
-- The routing column list below is filled by warehouse.py from catalog.ROUTING_LOG_COLUMNS, each renamed
-- ROUTING_<column> so nothing clashes with the attempt's own columns.
CREATE OR REPLACE VIEW PAYMENT_ML.ABTESTING.ALL_VIEWS_FLAT AS
SELECT
    a.*,
    {{ROUTING_COLUMNS}}
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT a
LEFT JOIN PAYMENT_ML.SOURCES.VW_SMART_ROUTING_ATTEMPTS r
    ON r.ATTEMPT_ID = a.ATTEMPT_ID
