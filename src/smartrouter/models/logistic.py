"""Per-processor logistic regression: one sklearn LogisticRegression per head, plus a global one.

Each head is fit only on the attempts its processor handled; the global model (all attempts,
processor-agnostic) is the prior uncertain heads are shrunk toward. Serving form: the stacked
coefficients (P, d) and intercepts in weights.npz, scored with one matrix product.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smartrouter.models.base import ApprovalModel
from smartrouter.models.data import P, ModelData

WEIGHTS_FILE = "weights.npz"


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


class LogisticModel(ApprovalModel):
    """One logistic regression per processor head."""

    family = "logistic"
    defaults: dict[str, Any] = {"C": 0.2, "max_iter": 500}  # C=0.2: ~300 sparse columns (hash buckets) overfit at C=1 on weeks of data

    def _fit_one(self, X: np.ndarray, y: np.ndarray, w: np.ndarray, fallback_rate: float) -> Any:
        from sklearn.linear_model import LogisticRegression

        if len(y) == 0 or len(np.unique(y)) < 2:
            return None, np.zeros(X.shape[1]), _logit(float(y.mean()) if len(y) else fallback_rate)
        lr = LogisticRegression(C=float(self.params["C"]), max_iter=int(self.params["max_iter"]))
        lr.fit(X, y, sample_weight=w)
        return lr, lr.coef_[0].astype(np.float64), float(lr.intercept_[0])

    def _fit_core(self, train: ModelData, valid: ModelData) -> None:
        rate = float(train.y.mean()) if len(train) else 0.5
        self.estimators: list[Any] = []
        self.W = np.zeros((P, train.n_features))
        self.b = np.zeros(P)
        for j in range(P):
            m = train.processor_idx == j
            est, w, b = self._fit_one(train.X[m], train.y[m], train.weight[m], rate)
            self.estimators.append(est)
            self.W[j], self.b[j] = w, b
        self.global_est, self.Wg, self.bg = self._fit_one(train.X, train.y, train.weight, rate)
        self.x_std = train.X.std(axis=0).astype(np.float64)
        self.x_mean = train.X.mean(axis=0).astype(np.float64)  # baseline of per-decision contributions

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        out = np.empty((len(X), P))
        for j, est in enumerate(self.estimators):
            out[:, j] = est.predict_proba(X)[:, 1] if est is not None else 1 / (1 + np.exp(-self.b[j]))
        return out

    def _global_proba(self, X: np.ndarray) -> np.ndarray:
        if self.global_est is None:
            return np.full(len(X), 1 / (1 + np.exp(-self.bg)))
        return self.global_est.predict_proba(X)[:, 1]

    def _export_weights(self, folder: Path) -> dict[str, Any]:
        with open(folder / WEIGHTS_FILE, "wb") as fh:
            np.savez(fh, W=self.W, b=self.b, Wg=self.Wg, bg=np.array([self.bg]), x_mean=self.x_mean)
        return {"weights": WEIGHTS_FILE, "shapes": {"W": list(self.W.shape), "b": [P], "Wg": [self.W.shape[1]], "bg": [1], "x_mean": [self.W.shape[1]]}}

    def global_importance(self, data: ModelData | None = None) -> dict[str, float]:
        """|coef| · std(feature) averaged over heads, weighted by each head's train rows."""
        w = self.n_train / max(self.n_train.sum(), 1)
        imp = (np.abs(self.W) * self.x_std[None, :] * w[:, None]).sum(axis=0)
        imp = imp / imp.sum() if imp.sum() > 0 else imp
        return dict(zip(self.feature_names, map(float, imp)))
