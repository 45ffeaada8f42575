"""Learned crosses: the pairs of payment attributes whose joint cells a per-processor linear head needs.

A linear head gives each attribute value one weight, so it cannot say "this bank's international
payments approve better on MIT" when neither the bank nor international travel does so alone. Such
attribute x attribute x processor effects move the best processor of whole segments (README "A world
with interactions"). Naming the pairs in code would fit one world; instead the logistic family finds
them in its own residuals:

1. after its main-effects fit, every candidate pair of payment attributes (categorical one-hot groups,
   numeric attributes cut at their training deciles) is scored by the Rao score test for adding the
   pair's cells to every certain head at once: T = Σ over heads and cells of (Σ residual)² / Σ p(1-p),
   chi-square with df = cells minus the main effects already fitted under no interaction, read as a
   normal quantile z (``chi2_z``);
2. the pairs with overwhelming evidence (z above ``min_z``, best first, at most ``max_crosses``)
   become indicator columns, one per cell with enough rows, and the heads are refit with them.

Cheap (one bincount per pair), no pair named anywhere, and a world without such terms selects few or
none. The candidates are the payment's own attributes: not the message configuration (its effects
have their own crosses, features.MESSAGE_CROSSES, and the message advice varies it), not the retry
context, not a processor's health or BIN history (per processor by definition).

Everything here reads the encoded rows X, so training and serving compute the same cells from the
same vector, and the serving form needs nothing beyond its encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

CANDIDATE_GROUPS = ("card", "transaction", "user")  # features.Feature.group values whose attributes may be crossed
# a numeric attribute's cells: its training deciles. Quartiles were measured first: an effect that turns at
# a fixed amount (a peso band) falls between quartiles, and on an interactions world (seed 5150, whose
# strongest term is amount band x currency) logistic reached 87.9 % of the oracle's gain with quartiles,
# 89.9 % with deciles
NUMERIC_QUANTILES = tuple(q / 10 for q in range(1, 10))
MAX_DISTINCT_AS_LEVELS = 4  # a numeric with at most this many values (a flag, a count) keeps one cell per value
SCREEN_SAMPLE_ROWS = 200_000  # rows that set the numeric cut points (quantiles move little beyond this)
MIN_CELL_INFORMATION = 5.0
CELL_SHRINK = 10.0  # forward selection's one-step cell estimate S / (V + this): a thin cell moves little  # a head's cell enters the score test with Σ p(1-p) above this (~20+ rows)


@dataclass(frozen=True)
class CrossAttribute:
    """One attribute as a cell code 0..n_levels-1 read off an encoded row.

    Categorical: the index of the hot column among ``columns`` (its unknown column included).
    Numeric: the bin of the encoded value ``columns[0]`` between ``edges``.
    """

    name: str
    columns: tuple[int, ...]
    edges: tuple[float, ...] = ()

    @property
    def numeric(self) -> bool:
        return len(self.columns) == 1

    @property
    def n_levels(self) -> int:
        return len(self.edges) + 1 if self.numeric else len(self.columns)

    def codes(self, X: np.ndarray) -> np.ndarray:
        if self.numeric:
            return np.searchsorted(np.asarray(self.edges, dtype=np.float32), X[:, self.columns[0]], side="right").astype(np.int64)
        return np.asarray(X[:, list(self.columns)].argmax(axis=1), dtype=np.int64)

    def code_one(self, x: np.ndarray) -> int:
        if self.numeric:
            return int(np.searchsorted(np.asarray(self.edges, dtype=np.float32), x[self.columns[0]], side="right"))
        return int(x[list(self.columns)].argmax())

    def level_name(self, level: int, feature_names: Sequence[str]) -> str:
        if not self.numeric:
            return feature_names[self.columns[level]]
        lo = "-inf" if level == 0 else f"{self.edges[level - 1]:.3g}"
        hi = "inf" if level == len(self.edges) else f"{self.edges[level]:.3g}"
        return f"{self.name} in ({lo}, {hi}] (standardised)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "columns": list(self.columns), "edges": list(self.edges)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CrossAttribute":
        return cls(str(d["name"]), tuple(int(c) for c in d["columns"]), tuple(float(e) for e in d.get("edges", ())))


def candidate_attributes(feature_names: Sequence[str], X: np.ndarray) -> list[CrossAttribute]:
    """The payment attributes of an encoded layout that may be crossed (module docstring), cut on ``X``'s rows."""
    from smartrouter import features, messages

    excluded = set(messages.MESSAGE_COLUMNS) | set(features.MESSAGE_CROSSES)
    onehot: dict[str, list[int]] = {}
    numeric: list[tuple[str, int]] = []
    for j, name in enumerate(feature_names):
        base = name.split("=", 1)[0]
        f = features.FEATURES_BY_NAME.get(base)
        if f is None or f.per_processor or f.group not in CANDIDATE_GROUPS or base in excluded:
            continue
        if f.kind == "categorical" and f.encoding == "onehot" and "=" in name:
            onehot.setdefault(base, []).append(j)
        elif f.kind == "numeric" and name == base:
            numeric.append((base, j))
    out = [CrossAttribute(name, tuple(cols)) for name, cols in onehot.items() if len(cols) >= 2]
    rng = np.random.default_rng(0)
    rows = np.arange(len(X)) if len(X) <= SCREEN_SAMPLE_ROWS else np.sort(rng.choice(len(X), SCREEN_SAMPLE_ROWS, replace=False))
    for name, j in numeric:
        x = np.asarray(X[rows, j], dtype=np.float32)
        distinct = np.unique(x[: 100_000])
        if len(distinct) <= MAX_DISTINCT_AS_LEVELS:
            edges = (distinct[:-1] + distinct[1:]) / 2.0  # one cell per value
        else:
            edges = np.unique(np.quantile(x, NUMERIC_QUANTILES).astype(np.float32))
        if len(edges):
            out.append(CrossAttribute(name, (j,), tuple(float(e) for e in edges)))
    return out


@dataclass(frozen=True)
class Cross:
    """One selected pair: its kept cells (each an indicator column) and the evidence that chose it."""

    a: CrossAttribute
    b: CrossAttribute
    cells: tuple[int, ...]  # cell ids a_code * b.n_levels + b_code, in column order
    z: float

    @property
    def name(self) -> str:
        return f"{self.a.name} x {self.b.name}"

    def cell_ids(self, X: np.ndarray) -> np.ndarray:
        return self.a.codes(X) * self.b.n_levels + self.b.codes(X)

    def column_of_cell(self) -> np.ndarray:
        """(n_cells,) column offset of every cell within this cross, -1 for a cell without a column."""
        lut = np.full(self.a.n_levels * self.b.n_levels, -1, dtype=np.int64)
        lut[list(self.cells)] = np.arange(len(self.cells))
        return lut

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "cells": list(self.cells), "z": float(self.z)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Cross":
        return cls(CrossAttribute.from_dict(d["a"]), CrossAttribute.from_dict(d["b"]), tuple(int(c) for c in d["cells"]),
                   float(d.get("z", 0.0)))


class CrossSet:
    """The selected crosses as indicator columns appended to the encoded rows (k in all).

    Every cross's cell is computed for all crosses at once (``cell_index``): a categorical attribute's
    code is a dot product with 0..L-1 on its one-hot columns (exactly one is hot), a numeric one's the
    count of its cut points at or below the value, so a payment's crosses cost a dozen array operations
    however many there are (the decision path's budget is a millisecond).
    """

    def __init__(self, crosses: Sequence[Cross]) -> None:
        self.crosses = list(crosses)
        self.offsets = np.cumsum([0, *[len(c.cells) for c in self.crosses]])
        self.k = int(self.offsets[-1])
        attrs = list(dict.fromkeys(a for c in self.crosses for a in (c.a, c.b)))
        self._attrs = attrs
        self._ia = np.array([attrs.index(c.a) for c in self.crosses], dtype=np.int64)
        self._ib = np.array([attrs.index(c.b) for c in self.crosses], dtype=np.int64)
        self._nb = np.array([c.b.n_levels for c in self.crosses], dtype=np.int64)
        sizes = [c.a.n_levels * c.b.n_levels for c in self.crosses]
        self._cell_base = np.cumsum([0, *sizes])[:-1].astype(np.int64)  # each cross's cells in one shared index
        self._lut = np.concatenate([c.column_of_cell() + np.where(c.column_of_cell() >= 0, off, 0)
                                    for c, off in zip(self.crosses, self.offsets)]) if self.crosses else np.zeros(0, np.int64)
        self._compiled: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.crosses)

    def _plan(self, d: int) -> Any:
        if self._compiled is None or self._compiled[0] != d:
            V = np.zeros((d, len(self._attrs)), dtype=np.float32)  # categorical codes: X @ V
            num_cols, num_edges, num_attr = [], [], []
            for i, a in enumerate(self._attrs):
                if a.numeric:
                    for e in a.edges:
                        num_cols.append(a.columns[0])
                        num_edges.append(e)
                        num_attr.append(i)
                else:
                    V[list(a.columns), i] = np.arange(len(a.columns), dtype=np.float32)
            agg = np.zeros((len(num_cols), len(self._attrs)), dtype=np.float32)  # numeric codes: (x >= edges) @ agg
            agg[np.arange(len(num_cols)), num_attr] = 1.0
            self._compiled = (d, (V, np.array(num_cols, dtype=np.int64), np.array(num_edges, dtype=np.float32), agg))
        return self._compiled[1]

    def cell_index(self, X: np.ndarray) -> np.ndarray:
        """(n, crosses) each row's cell of each cross, in the shared cell index (``table`` rows)."""
        X = np.asarray(X, dtype=np.float32)
        V, num_cols, num_edges, agg = self._plan(X.shape[1])
        codes = X @ V
        if len(num_cols):
            codes += (X[:, num_cols] >= num_edges).astype(np.float32) @ agg
        codes = codes.astype(np.int64)  # small integers, exact in float32
        return self._cell_base + codes[:, self._ia] * self._nb + codes[:, self._ib]

    def columns(self, X: np.ndarray) -> np.ndarray:
        """(n, k) float32 0/1: the cell column of each cross that each row falls in (none for a rare cell)."""
        out = np.zeros((len(X), self.k), dtype=np.float32)
        if not self.k:
            return out
        col = self._lut[self.cell_index(X)]
        r, c = np.nonzero(col >= 0)
        out[r, col[r, c]] = 1.0
        return out

    def table(self, Wc: np.ndarray) -> np.ndarray:
        """(cells, P) each cell's weight per head from the (P, k) column weights (0 for a cell without a column)."""
        out = np.zeros((len(self._lut), Wc.shape[0]), dtype=np.float64)
        has = self._lut >= 0
        out[has] = np.asarray(Wc, dtype=np.float64).T[self._lut[has]]
        return out

    def logits(self, X: np.ndarray, table: np.ndarray) -> np.ndarray:
        """(n, P) what the crosses add to each head's log-odds: Σ over crosses of the row's cell weight."""
        return table[self.cell_index(X)].sum(axis=1)

    def hot(self, x: np.ndarray) -> list[int]:
        """The hot columns of one encoded row (at most one per cross)."""
        out = []
        for c, off in zip(self.crosses, self.offsets):
            col = int(c.column_of_cell()[c.a.code_one(x) * c.b.n_levels + c.b.code_one(x)])
            if col >= 0:
                out.append(int(off) + col)
        return out

    def names(self) -> list[str]:
        return [c.name for c in self.crosses]

    def column_names(self, feature_names: Sequence[str]) -> list[str]:
        out = []
        for c in self.crosses:
            for cell in c.cells:
                la, lb = divmod(cell, c.b.n_levels)
                out.append(f"{c.a.level_name(la, feature_names)} x {c.b.level_name(lb, feature_names)}")
        return out

    def to_config(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.crosses]

    @classmethod
    def from_config(cls, cfg: Sequence[Mapping[str, Any]], d: int) -> "CrossSet":
        """From model.json; ValueError when a cross points outside the ``d`` encoded columns or has bad cells."""
        crosses = [Cross.from_dict(c) for c in cfg]
        for c in crosses:
            cols = [*c.a.columns, *c.b.columns]
            if min(cols) < 0 or max(cols) >= d:
                raise ValueError(f"cross {c.name} reads columns outside the {d} encoded features")
            n = c.a.n_levels * c.b.n_levels
            if len(set(c.cells)) != len(c.cells) or (c.cells and (min(c.cells) < 0 or max(c.cells) >= n)):
                raise ValueError(f"cross {c.name} lists cells outside its {n} cells")
        return cls(crosses)


def chi2_z(T: float, df: float) -> float:
    """The standard normal quantile with the upper tail of a chi-square(df) statistic T: comparable
    across pairs of very different sizes, and finite far into the tail (from log p, no underflow).

    scipy's ``chi2.logsf`` returns -inf once the tail is below ~1e-308 (T 1,500 at 3 df, met on a
    world with strong interactions); there the tail's asymptotic series is used:
    log Q(a, x) = -x + (a-1) log x - lgamma(a) + log(1 + (a-1)/x + (a-1)(a-2)/x² + ...), a = df/2, x = T/2.
    """
    from scipy import special, stats

    T = max(float(T), 0.0)
    log_p = float(stats.chi2.logsf(T, df))
    if not np.isfinite(log_p):
        a, x = df / 2.0, T / 2.0
        log_p = -x + (a - 1.0) * np.log(x) - float(special.gammaln(a)) + float(np.log1p((a - 1.0) / x + (a - 1.0) * (a - 2.0) / x ** 2))
    return float(-special.ndtri_exp(log_p))


def _pair_cells(codes: Sequence[np.ndarray], attributes: Sequence[CrossAttribute], i: int, j: int,
                head: np.ndarray, n_heads: int) -> tuple[np.ndarray, int, int]:
    na, nb = attributes[i].n_levels, attributes[j].n_levels
    return head * (na * nb) + codes[i] * nb + codes[j], na, nb


def score_pairs(attributes: Sequence[CrossAttribute], codes: Sequence[np.ndarray], r: np.ndarray, v: np.ndarray,
                head: np.ndarray, n_heads: int, *, max_cells: int) -> list[tuple[float, int, int]]:
    """(z, i, j) for every pair of ``attributes`` with at most ``max_cells`` cells, best first.

    ``codes``: each attribute's cell code per row; ``r``, ``v``: each row's weighted residual y - p and
    information p(1-p) under its own head ``head`` (0..n_heads-1). The score test of adding the pair's
    cells to every head: T = Σ_head,cell S² / V with S the cell's residual sum and V its information,
    df = the cells that enter minus the main effects (levels of each attribute seen, minus one) already
    in the head.
    """
    out = []
    for i in range(len(attributes)):
        for j in range(i + 1, len(attributes)):
            if attributes[i].n_levels * attributes[j].n_levels > max_cells:
                continue
            idx, na, nb = _pair_cells(codes, attributes, i, j, head, n_heads)
            S = np.bincount(idx, r, n_heads * na * nb).reshape(n_heads, na, nb)
            V = np.bincount(idx, v, n_heads * na * nb).reshape(n_heads, na, nb)
            ok = V > MIN_CELL_INFORMATION
            T = float((S[ok] ** 2 / V[ok]).sum())
            # per head: cells that enter, minus the levels of a and of b they span, plus one
            df = float(ok.sum() - ok.any(axis=2).sum() - ok.any(axis=1).sum() + ok.any(axis=(1, 2)).sum())
            if df > 0:
                out.append((chi2_z(T, df), i, j))
    out.sort(key=lambda t: -t[0])
    return out


def select_crosses(feature_names: Sequence[str], X: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray,
                   head: np.ndarray, n_heads: int, *, max_crosses: int, min_z: float, max_cells: int,
                   min_rows: int) -> tuple[CrossSet, list[dict[str, Any]]]:
    """The crosses to add (module docstring) and the screening table (each round's best pairs).

    Forward selection: after a pair is chosen, each row's log-odds moves by its head-cell's one-step
    Newton estimate (S / (V + CELL_SHRINK)) and every pair is scored again on the new residuals, so a
    second pair that only restates the first (the same hours through another column, a browser that
    stands for the channel) loses its evidence instead of taking a slot.
    ``p``: each row's fitted probability under its own head ``head`` (-1 = not screened).
    """
    attributes = candidate_attributes(feature_names, X)
    keep = np.flatnonzero(head >= 0)  # rows of certain heads; X itself is never copied
    head = head[keep].astype(np.int64)
    w = w[keep]
    y = y[keep]
    logit = np.log(np.clip(p[keep], 1e-9, 1 - 1e-9) / np.clip(1.0 - p[keep], 1e-9, 1.0))
    codes = [a.codes(X)[keep] for a in attributes]
    table: list[dict[str, Any]] = []
    chosen: list[Cross] = []
    while len(chosen) < max_crosses:
        q = 1.0 / (1.0 + np.exp(-logit))
        r, v = w * (y - q), w * q * (1.0 - q)
        scored = [t for t in score_pairs(attributes, codes, r, v, head, n_heads, max_cells=max_cells)
                  if not any(c.a is attributes[t[1]] and c.b is attributes[t[2]] for c in chosen)]
        table.append({"round": len(chosen) + 1,
                      "best": [{"pair": f"{attributes[i].name} x {attributes[j].name}", "z": round(float(z), 2)}
                               for z, i, j in scored[:5]]})
        if not scored or scored[0][0] < min_z:
            break
        z, i, j = scored[0]
        a, b = attributes[i], attributes[j]
        counts = np.bincount(a.codes(X) * b.n_levels + b.codes(X), minlength=a.n_levels * b.n_levels)
        cells = tuple(int(c) for c in np.flatnonzero(counts >= min_rows))
        chosen.append(Cross(a, b, cells, float(z)))
        idx, na, nb = _pair_cells(codes, attributes, i, j, head, n_heads)
        S = np.bincount(idx, r, n_heads * na * nb)
        V = np.bincount(idx, v, n_heads * na * nb)
        logit = logit + (S / (V + CELL_SHRINK))[idx]
    return CrossSet([c for c in chosen if c.cells]), table
