"""Retry optimization: whether, when and where to retry a declined attempt, within the networks' rules.

- `rules`: the card networks' retry rules (retry_rules.toml), checked on every retry decision;
- `model`: P(approved | declined attempt's context, next processor, delay), trained on retry rows
  with the routing models' encoder and calibration, shipped inside the serving form (``retry/``);
- `advice`: the decision the service answers on ``POST /v1/retry``;
- `simulate`: retry policies valued on order conversion with the world's truth, and off-policy on logs.
"""
