-- Attempts whose message configuration was drawn at random among the payment's eligible ones
-- (MESSAGE_RANDOMIZED = 1) with a definite outcome, in [start, end): the rows the approval deltas
-- by toggle are estimated from. Every column, because the world's oracle needs the whole attempt
-- for the true deltas. Parameters: %(start)s, %(end)s.
SELECT *
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE MESSAGE_RANDOMIZED = 1
  AND STATUS <> 'PROCESSING'
  AND CREATED_AT >= %(start)s AND CREATED_AT < %(end)s
ORDER BY CREATED_AT, ATTEMPT_ID
