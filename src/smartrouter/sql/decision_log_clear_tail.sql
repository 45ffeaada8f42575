-- Rows of one segment from a line on: removed before that part is (re)loaded, so a load that
-- failed after inserting but before recording its progress never leaves duplicates.
DELETE FROM PAYMENT_ML.SMARTROUTER.DECISION_LOG
WHERE SEGMENT_FILE = %(segment_file)s AND LINE_NO >= %(from_line)s
