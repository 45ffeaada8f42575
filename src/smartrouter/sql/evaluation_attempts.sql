-- Every column of the attempts in a window, for the truth check: the world's oracle needs the full
-- attempt rows (order/user context the feature table does not carry). Parameters: %(start)s, %(end)s.
SELECT *
FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT
WHERE CREATED_AT >= %(start)s AND CREATED_AT <= %(end)s
