-- The schema that holds what the routing service writes back (the decision log).
CREATE SCHEMA IF NOT EXISTS PAYMENT_ML.SMARTROUTER
