"""Per-head probability calibration: identity, temperature, Platt or isotonic, chosen on validation data.

A calibrator is a plain JSON dict (``{"method": ..., ...}``) so the serving form applies it with
numpy alone. Isotonic maps are stored as knots (x, y) at equal-mass quantiles of the validation
scores and applied with ``np.interp``: the knots keep the map monotone, smooth enough that float
rounding in the raw score cannot jump a step, and small enough for JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smartrouter.models import metrics

METHODS = ("identity", "temperature", "platt", "isotonic")
ISOTONIC_KNOTS = 64
# Below these sizes a head's validation data cannot choose a calibrator: it keeps identity or
# the one-parameter temperature (isotonic needs more data than a 2-parameter fit).
MIN_ROWS = 100
MIN_CLASS = 10
MIN_ROWS_ISOTONIC = 1000
CV_FOLDS = 3


def _logit(p: np.ndarray) -> np.ndarray:
    # np.minimum(np.maximum(..)) is np.clip's result without its Python-level dispatch (~4 us a call
    # on the per-decision path, where a few dozen probabilities are calibrated)
    p = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), metrics.EPS), 1 - metrics.EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def apply(cal: dict[str, Any], p: np.ndarray) -> np.ndarray:
    """Apply a calibrator spec to raw probabilities (numpy only; used by training and serving)."""
    method = cal["method"]
    p = np.asarray(p, dtype=np.float64)
    if method == "identity":
        return p
    if method == "temperature":
        return _sigmoid(_logit(p) / cal["t"])
    if method == "platt":
        return _sigmoid(cal["a"] * _logit(p) + cal["b"])
    if method == "isotonic":
        return np.interp(p, cal["x"], cal["y"])
    raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")


class HeadCalibrators:
    """The P per-head calibrators prepared for repeated use (the serving path): heads of the same closed
    form are applied in one vectorized call instead of one numpy call chain per head, with the same
    arithmetic as ``apply`` element by element (numpy's vector loops may round the last bit differently).
    A decision with every message configuration scored calibrates each family's k x P scores; one
    call per head cost ~5 us, so an ensemble's three calibrations were ~75 us of a 1 ms budget."""

    def __init__(self, cals: list[dict[str, Any]]) -> None:
        self.cals = cals
        affine = [j for j, c in enumerate(cals) if c["method"] in ("platt", "temperature")]
        self.affine = np.array(affine, dtype=np.intp)
        # z' = (a * z) / d + b: platt (a, d, b) = (a, 1, b); temperature (1, t, 0): z * 1 / t + 0 == z / t exactly
        self.a = np.array([float(cals[j]["a"]) if cals[j]["method"] == "platt" else 1.0 for j in affine])
        self.d = np.array([1.0 if cals[j]["method"] == "platt" else float(cals[j]["t"]) for j in affine])
        self.b = np.array([float(cals[j]["b"]) if cals[j]["method"] == "platt" else 0.0 for j in affine])
        self.isotonic = [(j, np.asarray(cals[j]["x"], dtype=np.float64), np.asarray(cals[j]["y"], dtype=np.float64))
                         for j, c in enumerate(cals) if c["method"] == "isotonic"]
        unknown = [c["method"] for c in cals if c["method"] not in METHODS]
        if unknown:
            raise ValueError(f"unknown calibration method {unknown[0]!r}; expected one of {METHODS}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated (n, P) probabilities from raw (n, P) ones; identity heads are copied."""
        out = np.array(raw, dtype=np.float64)  # a copy: identity heads stay as they are
        if self.affine.size == len(self.cals):  # every head affine (no gather/scatter needed)
            return _sigmoid((self.a * _logit(out)) / self.d + self.b)
        if len(self.affine):
            out[:, self.affine] = _sigmoid((self.a * _logit(out[:, self.affine])) / self.d + self.b)
        for j, x, y in self.isotonic:
            out[:, j] = np.interp(out[:, j], x, y)
        return out


def _fit_temperature(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.optimize import minimize_scalar

    z = _logit(p)
    res = minimize_scalar(lambda lt: metrics.logloss(y, _sigmoid(z / np.exp(lt))), bounds=(-3, 3), method="bounded")
    return {"method": "temperature", "t": float(np.exp(res.x))}


def _fit_platt(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.optimize import minimize

    z = _logit(p)

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.clip(_sigmoid(ab[0] * z + ab[1]), metrics.EPS, 1 - metrics.EPS)
        g = q - y
        val = -float(np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))
        return val, np.array([np.mean(g * z), np.mean(g)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return {"method": "platt", "a": float(res.x[0]), "b": float(res.x[1])}


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=metrics.EPS, y_max=1 - metrics.EPS, out_of_bounds="clip").fit(p, y)
    x = np.unique(np.quantile(p, np.linspace(0.0, 1.0, ISOTONIC_KNOTS + 1)))
    knots_y = np.maximum.accumulate(iso.predict(x))  # monotone by construction; accumulate guards rounding
    return {"method": "isotonic", "x": [float(v) for v in x], "y": [float(v) for v in knots_y]}


_FITTERS = {
    "identity": lambda p, y: {"method": "identity"},
    "temperature": _fit_temperature,
    "platt": _fit_platt,
    "isotonic": _fit_isotonic,
}


def candidate_methods(y: np.ndarray) -> list[str]:
    """Methods the amount of validation data can support."""
    n, pos = len(y), int(np.sum(y > 0.5))
    if n < MIN_ROWS or min(pos, n - pos) < MIN_CLASS:
        return ["identity"]
    if n < MIN_ROWS_ISOTONIC:
        return ["identity", "temperature", "platt"]
    return list(METHODS)


def fit_calibrator(p: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Choose the method with the lowest cross-validated log loss on (p, y), refit it on all rows.

    The choice is cross-validated (3 folds) because isotonic evaluated on its own fitting data
    always looks best. The returned spec records the CV log loss of every candidate.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    methods = candidate_methods(y)
    if methods == ["identity"]:
        return {"method": "identity", "cv_logloss": {}, "n": int(len(y))}
    folds = np.random.default_rng(seed).integers(0, CV_FOLDS, size=len(y))
    scores: dict[str, float] = {}
    for m in methods:
        if m == "platt" and _fit_platt(p, y)["a"] <= 0:
            scores[m] = float("inf")  # a decreasing map would reverse the head's ranking
            continue
        losses = []
        for k in range(CV_FOLDS):
            tr, te = folds != k, folds == k
            if te.sum() == 0 or len(np.unique(y[tr])) < 2:
                continue
            cal = _FITTERS[m](p[tr], y[tr])
            losses.append(metrics.logloss(y[te], apply(cal, p[te])) * te.sum())
        scores[m] = float(np.sum(losses) / len(y)) if losses else float("inf")
    # prefer the simpler method unless the richer one is clearly better (1e-4 nats)
    best = "identity"
    for m in methods:
        if scores[m] < scores[best] - 1e-4:
            best = m
    cal = _FITTERS[best](p, y)
    cal["cv_logloss"] = {m: metrics.clean(v) for m, v in scores.items()}
    cal["n"] = int(len(y))
    return cal


def validate_spec(cal: Any) -> str | None:
    """Why a calibrator spec is malformed, or None when it is fine."""
    if not isinstance(cal, dict) or cal.get("method") not in METHODS:
        return f"calibration method must be one of {METHODS}"
    m = cal["method"]
    try:
        if m == "temperature" and not float(cal["t"]) > 0:
            return "temperature must be > 0"
        if m == "platt":
            float(cal["a"]), float(cal["b"])
        if m == "isotonic":
            x, y = np.asarray(cal["x"], float), np.asarray(cal["y"], float)
            if x.ndim != 1 or x.shape != y.shape or len(x) < 1 or np.any(np.diff(x) < 0):
                return "isotonic knots must be two equal-length lists with x increasing"
    except (KeyError, TypeError, ValueError) as exc:
        return f"{m} calibrator is missing or has a bad parameter ({exc})"
    return None


def apply_scalar(cal: dict[str, Any], p: float) -> float:
    """``apply`` for one probability with the math module (the per-payment serving path)."""
    import bisect
    import math

    method = cal["method"]
    if method == "identity":
        return float(p)
    if method == "isotonic":
        xs, ys = cal["x"], cal["y"]
        if p <= xs[0]:
            return float(ys[0])
        if p >= xs[-1]:
            return float(ys[-1])
        i = bisect.bisect_right(xs, p)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return float(y0 + (p - x0) * (y1 - y0) / (x1 - x0)) if x1 > x0 else float(y1)
    q = min(max(float(p), metrics.EPS), 1 - metrics.EPS)
    z = math.log(q) - math.log1p(-q)
    z = z / cal["t"] if method == "temperature" else cal["a"] * z + cal["b"]
    return 1.0 / (1.0 + math.exp(-z))
