"""Approval models: one calibrated probability per processor for every payment.

Families (``FAMILIES``): ``logistic`` (one LR per processor), ``dnn`` (Keras multi-head network,
masked loss), ``xgb`` (one booster, processor as a feature), ``ensemble`` (the mean of the run's other
families' calibrated log-odds, recalibrated; trained after them). Train with ``models.train.train_all``;
serve with ``models.serving.load_serving_model`` (no TensorFlow, no pandas on the per-payment path).
Importing this package does not import TensorFlow, scikit-learn or xgboost.
"""

from __future__ import annotations

from typing import Any

from smartrouter.errors import ConfigError

FAMILY_NAMES: tuple[str, ...] = ("logistic", "dnn", "xgb", "ensemble")


def model_class(family: str) -> Any:
    """The class implementing ``family`` (imported lazily)."""
    if family == "logistic":
        from smartrouter.models.logistic import LogisticModel

        return LogisticModel
    if family == "dnn":
        from smartrouter.models.dnn import DNNModel

        return DNNModel
    if family == "xgb":
        from smartrouter.models.xgb import XGBModel

        return XGBModel
    if family == "ensemble":
        from smartrouter.models.ensemble import EnsembleModel

        return EnsembleModel
    raise ConfigError(f"unknown model family {family!r}; choose from {', '.join(FAMILY_NAMES)}")


def make_model(family: str, **params: Any) -> Any:
    """A new, unfitted model of ``family`` with ``params`` over the family defaults."""
    return model_class(family)(**params)
