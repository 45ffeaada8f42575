"""The one place that defines the model metrics: AUC, ECE (equal-mass bins), Brier and log loss.

Every number the notebooks, gates and benchmarks show about approval models comes from here, so
"ECE" means the same thing everywhere (15 equal-mass bins, weighted |mean(y) - mean(p)|).
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-7  # probabilities are clipped to [EPS, 1-EPS] before log loss
ECE_BINS = 15


def _arrays(y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if not (len(y) == len(p) == len(w)):
        raise ValueError(f"y, p and w differ in length: {len(y)}, {len(p)}, {len(w)}")
    return y, p, w


def auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y, p, w = _arrays(y, p, w)
    pos, neg = w * (y > 0.5), w * (y <= 0.5)
    if pos.sum() <= 0 or neg.sum() <= 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    p_sorted, pos_s, neg_s = p[order], pos[order], neg[order]
    # group ties so that a tied (positive, negative) pair counts 1/2
    _, start = np.unique(p_sorted, return_index=True)
    pos_g = np.add.reduceat(pos_s, start)
    neg_g = np.add.reduceat(neg_s, start)
    neg_below = np.cumsum(neg_g) - neg_g
    return float(((neg_below + 0.5 * neg_g) * pos_g).sum() / (pos.sum() * neg.sum()))


def ece(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``bins`` equal-mass bins of the predicted probability."""
    y, p, w = _arrays(y, p, w)
    if len(y) == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    total = 0.0
    for idx in np.array_split(order, min(bins, len(y))):
        wb = w[idx].sum()
        if wb > 0:
            total += abs(float((w[idx] * (y[idx] - p[idx])).sum()))
    return total / float(w.sum())


def ece_noise_floor(p: np.ndarray, w: np.ndarray | None = None, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these predictions would show on this many rows.

    Labels are drawn y ~ Bernoulli(p) ``draws`` times and the mean ``ece`` returned: ECE is an
    average of |mean(y) - mean(p)| per bin, so sampling noise alone makes it positive (about
    0.8·sqrt(p(1-p)·bins/n)). On ~2,600 rows and 15 bins that is ~0.02, so a head's ECE can only
    be read against this floor. It is a yardstick printed beside ``ece``, not a replacement.
    """
    _, p, w = _arrays(np.zeros(len(np.ravel(p))), p, w)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    p, w = p[order], w[order]
    groups = np.array_split(np.arange(len(p)), min(bins, len(p)))
    starts = np.array([g[0] for g in groups])
    wp = np.add.reduceat(w * p, starts)
    rng = np.random.default_rng(seed)
    total = 0.0
    for chunk in np.array_split(np.arange(draws), max(1, (draws * len(p)) // 5_000_000 + 1)):
        y = rng.random((len(chunk), len(p))) < p[None, :]
        wy = np.add.reduceat(y * w[None, :], starts, axis=1)
        total += float(np.abs(wy - wp[None, :]).sum())
    return total / (draws * float(w.sum()))


def brier(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean squared error of the probability."""
    y, p, w = _arrays(y, p, w)
    return float((w * (p - y) ** 2).sum() / w.sum()) if len(y) else float("nan")


def logloss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Binary cross-entropy (natural log), probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p, w = _arrays(y, p, w)
    if not len(y):
        return float("nan")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log1p(-p))).sum() / w.sum())


def summary(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    """All four metrics plus the row count, positive rate and mean prediction (plain floats)."""
    y_, p_, _ = _arrays(y, p, w)
    return {
        "n": int(len(y_)),
        "auc": auc(y, p, w),
        "ece": ece(y, p, w),
        "brier": brier(y, p, w),
        "logloss": logloss(y, p, w),
        "rate": float(y_.mean()) if len(y_) else float("nan"),
        "mean_p": float(p_.mean()) if len(p_) else float("nan"),
    }


def clean(value: float) -> float | None:
    """A float for JSON: NaN/inf become None."""
    return None if value is None or not math.isfinite(float(value)) else float(value)
