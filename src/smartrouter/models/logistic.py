"""Per-processor logistic regression: one L2-penalised logistic regression per head, plus a global one.

The global model (all attempts, processor-agnostic) is fit first, penalised toward 0 with ``C``;
each head is then fit only on the attempts its processor handled, penalised toward the global
coefficients with ``head_C``: a hierarchical prior, so a head with little history (ADYEN joins
late) stays close to the pooled model and departs from it only as far as its own data supports.
Heads the base class flags uncertain are also shrunk toward the global prediction.

Learned crosses (``crosses``, models.crosses): after that main-effects fit, pairs of payment
attributes are screened on the certain heads' residuals by a score test, and the pairs with
overwhelming evidence enter the certain heads as one indicator column per cell, pulled toward 0; the
heads are refit with them. That is how a linear head learns "this issuer's international cards
approve better on MIT" without any pair being named in code.

Serving form: the stacked coefficients (P, d) and intercepts in weights.npz, scored with one matrix
product, plus the crosses' cell weights (P, k) and their definition in model.json.

The fit is sklearn's objective (mean log loss + ||coef||² / (2·C·Σw), L-BFGS) solved with
scipy's bounded L-BFGS-B, because some weights have a known sign (data.MonotoneColumns): no score
may rise with any processor's recent timeout rate. That holds by construction, whatever the
data, rather than being hoped for from enough outages in the history.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from smartrouter.models.base import ApprovalModel
from smartrouter.models.crosses import CrossSet, select_crosses
from smartrouter.models.data import P, ModelData, MonotoneColumns, monotone_columns, processor_feature_columns

WEIGHTS_FILE = "weights.npz"
CHUNK_ROWS = 250_000  # rows per pass where a per-row quantity is computed over the whole train split


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


class SignedLinear:
    """The map between free parameters θ (with simple bounds) and sign-constrained coefficients β.

    Lone negative columns: β = θ ≤ 0. A (approval, timeout, decline) triple with raw-unit scales
    (sa, st, sd) is parameterised in raw units (up to one positive factor per triple) as τ ≤ 0
    (timeout weight), α ≥ 0, δ ≥ 0: β_t = st·τ, β_a = sa·(τ + α), β_d = sd·(τ + δ), i.e. the
    timeout weight is never above the approval or decline weight. Every other column: β = θ.
    """

    def __init__(self, d: int, mono: MonotoneColumns) -> None:
        self.d = d
        tri = np.asarray(mono.triples, dtype=np.int64).reshape(-1, 3)
        sc = np.asarray(mono.triple_scales, dtype=np.float64).reshape(-1, 3)
        # only the ratios matter for the constraint (a common positive factor per triple cancels);
        # dividing by the triple's geometric mean keeps θ on the scale of β, which the optimiser
        # needs (raw-unit weights are ~1/std, tens of times larger than the standardised ones)
        sc = sc / np.exp(np.log(sc).mean(axis=1, keepdims=True)) if len(sc) else sc
        self.ia, self.it, self.id = tri[:, 0], tri[:, 1], tri[:, 2]
        self.sa, self.st, self.sd = sc[:, 0], sc[:, 1], sc[:, 2]
        lo, hi = np.full(d, -np.inf), np.full(d, np.inf)
        hi[list(mono.negative)] = 0.0
        lo[self.ia], lo[self.id] = 0.0, 0.0
        hi[self.it] = 0.0
        self.lo, self.hi = lo, hi

    def with_zeros(self, columns: list[int]) -> "SignedLinear":
        """The same map with ``columns`` pinned at 0 (bounds [0, 0]: the fit never uses them)."""
        out = copy.copy(self)
        out.lo, out.hi = self.lo.copy(), self.hi.copy()
        out.lo[columns] = 0.0
        out.hi[columns] = 0.0
        return out

    def beta(self, theta: np.ndarray) -> np.ndarray:
        b = theta.copy()
        tau = theta[self.it]
        b[self.it] = self.st * tau
        b[self.ia] = self.sa * (tau + theta[self.ia])
        b[self.id] = self.sd * (tau + theta[self.id])
        return b

    def grad_theta(self, g: np.ndarray) -> np.ndarray:
        """Chain rule: dθ from dβ (the transpose of ``beta``'s linear map)."""
        out = g.copy()
        out[self.it] = self.st * g[self.it] + self.sa * g[self.ia] + self.sd * g[self.id]
        out[self.ia] = self.sa * g[self.ia]
        out[self.id] = self.sd * g[self.id]
        return out

    def theta(self, beta: np.ndarray) -> np.ndarray:
        """Inverse of ``beta``, clipped into the bounds (a feasible warm start)."""
        t = beta.copy()
        tau = np.minimum(beta[self.it] / self.st, 0.0)
        t[self.it] = tau
        t[self.ia] = beta[self.ia] / self.sa - tau
        t[self.id] = beta[self.id] / self.sd - tau
        return np.clip(t, self.lo, self.hi)


def fit_signed_logistic(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, *, C: float, signs: SignedLinear,
    max_iter: int = 500, tol: float = 1e-4, start: tuple[np.ndarray, float] | None = None,
    center: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int]:
    """(coef, intercept, iterations) of the L2 logistic regression with ``signs``' bounds.

    ``center``: the coefficients the penalty pulls toward (default 0); ``start``: a warm start.
    X stays float32 (two passes over it per evaluation, as sklearn's lbfgs does); the objective
    is sklearn's, so without constraints the solution is the one LogisticRegression(C) finds.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    wsum = float(w.sum())
    lam = 1.0 / (float(C) * wsum)
    d = X.shape[1]
    c0 = np.zeros(d) if center is None else np.asarray(center, dtype=np.float64)

    def loss_grad(v: np.ndarray) -> tuple[float, np.ndarray]:
        beta = signs.beta(v[:d])
        z = (X @ beta.astype(np.float32)).astype(np.float64) + v[d]
        dev = beta - c0
        loss = float(np.dot(w, np.logaddexp(0.0, z) - y * z)) / wsum + 0.5 * lam * float(dev @ dev)
        r = w * (expit(z) - y) / wsum
        g_beta = (r.astype(np.float32) @ X).astype(np.float64) + lam * dev
        return loss, np.append(signs.grad_theta(g_beta), r.sum())

    if start is None:
        rate = float(np.clip(np.dot(w, y) / wsum, 1e-4, 1 - 1e-4))
        v0 = np.append(np.zeros(d), np.log(rate / (1 - rate)))
    else:
        v0 = np.append(signs.theta(np.asarray(start[0], dtype=np.float64)), float(start[1]))
    bounds = list(zip(np.append(signs.lo, -np.inf), np.append(signs.hi, np.inf)))
    bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi) for lo, hi in bounds]
    res = minimize(loss_grad, v0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": int(max_iter), "maxls": 50, "gtol": float(tol), "ftol": 64 * np.finfo(float).eps})
    if res.nit >= int(max_iter):
        import warnings

        warnings.warn(f"logistic fit stopped at max_iter={max_iter} before converging ({res.message}); raise max_iter or lower C",
                      RuntimeWarning, stacklevel=2)
    return signs.beta(res.x[:d]), float(res.x[d]), int(res.nit)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class LogisticModel(ApprovalModel):
    """One logistic regression per processor head."""

    family = "logistic"
    # C=0.2: ~300 sparse columns (hash buckets) overfit at C=1 on weeks of data.
    # head_C=0.02: chosen on the default world's validation window (ADYEN head AUC 0.711 -> 0.726
    # against a prior at 0 with C; the big heads unchanged to ±0.0005).
    # monotone: sign bounds on the recent timeout rates (data.MonotoneColumns); False only to
    # show what the unconstrained fit does.
    # own_processor_only: a head reads its own processor's health and BIN history, not the
    # others' (the global model reads all). Another processor's health says nothing about how this
    # one will answer; in a linear head it only adds time-trend proxies (on the default world the
    # WORLDPAY head leaned on ADYEN's health: test ECE 0.018 -> 0.013 and overall AUC 0.7487 ->
    # 0.7493 without it).
    # crosses: at most this many learned attribute x attribute crosses in the heads (models.crosses:
    # chosen from the main-effects fit's residuals by a score test, then the heads are refit with one
    # indicator column per cell); 0 turns them off. cross_min_z: the evidence a pair needs (a normal
    # quantile; 303 pairs are screened per round on the default layout, and the largest of 303 null z's
    # is about 3, so z 5 buys no noise: a synthetic world without interactions gets none, tests/test_crosses.py).
    # The default world (no interaction terms) still gets a few, e.g. IS_DOMESTIC_CARD x DAYS_TO_DEPARTURE
    # at z 17.6: real structure the linear main effects miss (a step at short notice), not noise.
    # cross_max_cells / cross_min_rows: a cross is a table of at most this many cells, and a cell with
    # fewer training rows gets no column (it stays at the main effects).
    defaults: dict[str, Any] = {"C": 0.2, "head_C": 0.02, "max_iter": 500, "monotone": True, "own_processor_only": True,
                                "crosses": 6, "cross_min_z": 5.0, "cross_max_cells": 128, "cross_min_rows": 100}

    def _fit_one(self, X: np.ndarray, y: np.ndarray, w: np.ndarray, fallback_rate: float,
                 start: tuple[np.ndarray, float] | None = None, center: np.ndarray | None = None,
                 signs: SignedLinear | None = None) -> tuple[np.ndarray, float, int]:
        if len(y) == 0 or len(np.unique(y)) < 2:
            return np.zeros(X.shape[1]), _logit(float(y.mean()) if len(y) else fallback_rate), 0
        C = float(self.params["C"] if center is None else self.params["head_C"])
        return fit_signed_logistic(X, y, w, C=C, signs=signs or self.signs,
                                   max_iter=int(self.params["max_iter"]), start=start, center=center)

    def _fit_core(self, train: ModelData, valid: ModelData) -> None:
        rate = float(train.y.mean()) if len(train) else 0.5
        self.mono = monotone_columns(self.feature_names, train.feature_scale) if self.params["monotone"] else MonotoneColumns()
        self.signs = SignedLinear(train.n_features, self.mono)
        # the global model first: every head starts from it and is pulled toward it
        self.Wg, self.bg, it_g = self._fit_one(train.X, train.y, train.weight, rate)
        self.W = np.zeros((P, train.n_features))
        self.b = np.zeros(P)
        self.iterations = {"global": it_g}
        own = processor_feature_columns(self.feature_names) if self.params["own_processor_only"] else {}
        self.crosses = CrossSet([])
        self.Wc = np.zeros((P, 0))
        self.main_effects: tuple[np.ndarray, np.ndarray] | None = None
        self.cross_screen: list[dict[str, Any]] = []
        for j in range(P):
            self._fit_head(j, train, rate, own)
        if int(self.params["crosses"]) > 0:
            self._add_crosses(train, rate, own)
        self.x_std = train.X.std(axis=0).astype(np.float64)
        self.x_mean = train.X.mean(axis=0).astype(np.float64)  # baseline of per-decision contributions
        # the cell columns' means and spreads, a chunk at a time (the whole (n, k) block is never built)
        s1, s2 = np.zeros(self.crosses.k), np.zeros(self.crosses.k)
        for lo in range(0, len(train), CHUNK_ROWS):
            C = self.crosses.columns(train.X[lo:lo + CHUNK_ROWS]).astype(np.float64)
            s1 += C.sum(axis=0)
            s2 += (C * C).sum(axis=0)
        n = max(len(train), 1)
        self.c_mean = s1 / n
        self.c_std = np.sqrt(np.maximum(s2 / n - self.c_mean ** 2, 0.0))

    def _fit_head(self, j: int, train: ModelData, rate: float, own: dict[str, list[int]]) -> None:
        """Head ``j`` on its processor's rows, pulled toward the global coefficients; with the crosses'
        columns (``self.crosses``, pulled toward 0) once they are chosen."""
        others = sorted(c for p, cols in own.items() if p != self.processors[j] for c in cols)
        m = train.processor_idx == j
        signs, start, center = self.signs, (self.Wg, self.bg), self.Wg
        if len(self.crosses):
            d, k = train.n_features, self.crosses.k
            X = np.empty((int(m.sum()), d + k), dtype=np.float32)  # the head's rows and their cell columns, one copy
            X[:, :d] = train.X[m]
            X[:, d:] = self.crosses.columns(X[:, :d])
            signs = SignedLinear(X.shape[1], self.mono)
            start = (np.concatenate([self.W[j], np.zeros(k)]), self.b[j])  # from the main-effects fit
            center = np.concatenate([self.Wg, np.zeros(k)])
        else:
            X = train.X[m]
        coef, self.b[j], self.iterations[str(j)] = self._fit_one(
            X, train.y[m], train.weight[m], rate, start=start, center=center,
            signs=signs.with_zeros(others) if others else signs)
        self.W[j] = coef[: train.n_features]
        if len(self.crosses):
            self.Wc[j] = coef[train.n_features:]

    def _add_crosses(self, train: ModelData, rate: float, own: dict[str, list[int]]) -> None:
        """Screen attribute pairs on the main-effects heads' residuals; refit the certain heads with the chosen."""
        certain = np.array([not self.uncertain[p] for p in self.processors])
        head = np.where(certain[train.processor_idx], train.processor_idx, -1)
        # each row's probability under its own head (the fit the score test is taken at), a chunk at a time
        p = np.empty(len(train))
        W32 = self.W.T.astype(np.float32)
        for lo in range(0, len(train), CHUNK_ROWS):
            part = slice(lo, lo + CHUNK_ROWS)
            Z = (train.X[part] @ W32).astype(np.float64) + self.b
            p[part] = _sigmoid(Z[np.arange(len(Z)), train.processor_idx[part]])
        self.crosses, self.cross_screen = select_crosses(
            self.feature_names, train.X, train.y.astype(np.float64), train.weight.astype(np.float64), p, head, P,
            max_crosses=int(self.params["crosses"]), min_z=float(self.params["cross_min_z"]),
            max_cells=int(self.params["cross_max_cells"]), min_rows=int(self.params["cross_min_rows"]))
        self.Wc = np.zeros((P, self.crosses.k))
        if not len(self.crosses):
            return
        # the heads without crosses, kept: the DNN's linear path starts from a main-effects model (its
        # trunk learns what the payment's features add; it has no cross columns to carry the rest)
        self.main_effects = (self.W.copy(), self.b.copy())
        for j in np.flatnonzero(certain):  # an uncertain head keeps its main effects (it leans on the global model)
            self._fit_head(int(j), train, rate, own)
        self.history["crosses"] = [{"cross": c.name, "z": round(c.z, 2), "cells": len(c.cells)} for c in self.crosses.crosses]

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=np.float64) @ self.W.T + self.b
        if len(self.crosses):
            z += self.crosses.columns(X).astype(np.float64) @ self.Wc.T
        return _sigmoid(z)

    def _global_proba(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(np.asarray(X, dtype=np.float64) @ self.Wg + self.bg)

    def _export_weights(self, folder: Path) -> dict[str, Any]:
        with open(folder / WEIGHTS_FILE, "wb") as fh:
            np.savez(fh, W=self.W, b=self.b, Wg=self.Wg, bg=np.array([self.bg]), x_mean=self.x_mean, Wc=self.Wc,
                     c_mean=self.c_mean)
        k = self.crosses.k
        return {"weights": WEIGHTS_FILE, "shapes": {"W": list(self.W.shape), "b": [P], "Wg": [self.W.shape[1]], "bg": [1],
                                                    "x_mean": [self.W.shape[1]], "Wc": [P, k], "c_mean": [k]},
                "monotone": {"negative": list(self.mono.negative), "triples": [list(t) for t in self.mono.triples]},
                "iterations": self.iterations, "crosses": self.crosses.to_config()}

    def global_importance(self, data: ModelData | None = None) -> dict[str, float]:
        """|coef| · std(feature) averaged over heads, weighted by each head's train rows."""
        w = self.n_train / max(self.n_train.sum(), 1)
        imp = (np.abs(self.W) * self.x_std[None, :] * w[:, None]).sum(axis=0)
        # a cross counts as one input: the sum over its cell columns
        cell = (np.abs(self.Wc) * self.c_std[None, :] * w[:, None]).sum(axis=0)
        imp = np.concatenate([imp, [cell[lo:hi].sum() for lo, hi in zip(self.crosses.offsets[:-1], self.crosses.offsets[1:])]])
        imp = imp / imp.sum() if imp.sum() > 0 else imp
        return dict(zip([*self.feature_names, *self.crosses.names()], map(float, imp)))
