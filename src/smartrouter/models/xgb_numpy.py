"""XGBoost trees compiled to flat numpy arrays, evaluated without xgboost on the hot path.

Why: scoring one payment means P augmented rows through ~100 trees; a ``Booster.inplace_predict``
call costs ~1-2 ms of fixed overhead (DMatrix proxy, thread pool, config), far above the work
itself. Here every tree of a booster is one slice of shared node arrays and a small batch is
walked level by level over ALL trees at once: ``node`` is an (rows, trees) index array and each
level is a handful of numpy gathers, so a payment costs ~depth x 10 tiny numpy calls.

Semantics match xgboost exactly: features and thresholds are float32 and a row goes left when
``x < threshold``; a missing value (NaN) follows the node's ``default_left``. Leaves point to
themselves, so rows that reach a leaf early simply stay there for the remaining levels. The
margin is ``logit(base_score)`` (xgboost >= 2 stores base_score in probability space for
binary:logistic) plus the sum of leaf values; probabilities are its sigmoid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# the arrays of one compiled booster, as stored in trees.npz under a prefix ("head_", "global_")
ARRAY_KEYS = ("feature", "threshold", "children", "nan_right", "value", "roots", "meta")


@dataclass(frozen=True)
class CompiledTrees:
    """One booster as flat node arrays (node ids are global over all trees).

    ``children[2*i]`` / ``children[2*i+1]`` are node i's left / right child (a leaf's are itself),
    ``nan_right[i]`` where a NaN goes right, ``value[i]`` the leaf value (0 on split nodes),
    ``roots[t]`` tree t's root. ``depth`` levels reach every leaf.
    """

    feature: np.ndarray  # int64 (N,) split column, 0 on leaves
    threshold: np.ndarray  # float32 (N,)
    children: np.ndarray  # int64 (2N,)
    nan_right: np.ndarray  # bool (N,)
    value: np.ndarray  # float64 (N,)
    roots: np.ndarray  # int64 (T,)
    depth: int
    bias: float  # margin added to the leaf sum: logit(base_score)
    n_features: int

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self.roots)

    # ------------------------------------------------------------ evaluation
    def leaves(self, X: np.ndarray) -> np.ndarray:
        """Leaf node id (n, trees) reached by each float32 row of X (n, >= n_features)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        n, width = X.shape
        flat = X.ravel()
        node = np.tile(self.roots, (n, 1))
        if self.depth == 0:
            return node
        row_off = (np.arange(n, dtype=np.int64) * width)[:, None]
        has_nan = bool(np.isnan(flat).any())
        feature, threshold, children, nan_right = self.feature, self.threshold, self.children, self.nan_right
        for _ in range(self.depth):
            x = flat[row_off + feature[node]]
            # x >= t is False for NaN (-> left); nodes whose default is right get NaN sent right
            go_right = x >= threshold[node]
            if has_nan:
                go_right |= np.isnan(x) & nan_right[node]
            node = children[2 * node + go_right]
        return node

    def margin(self, X: np.ndarray) -> np.ndarray:
        """Raw margin (n,) = bias + sum of the leaf values."""
        return self.bias + self.value[self.leaves(X)].sum(axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probability (n,) for binary:logistic, as ``Booster.predict`` returns it."""
        return 1.0 / (1.0 + np.exp(-self.margin(X)))

    # ------------------------------------------------------------ storage
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays to store (``np.savez``) under ``prefix``."""
        meta = np.array([self.depth, self.n_features, self.bias], dtype=np.float64)
        arrays = {
            "feature": self.feature.astype(np.int32),
            "threshold": self.threshold,
            "children": self.children.astype(np.int32),
            "nan_right": self.nan_right,
            "value": self.value,
            "roots": self.roots.astype(np.int32),
            "meta": meta,
        }
        return {prefix + k: v for k, v in arrays.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "CompiledTrees":
        """Rebuild from ``to_arrays`` output; ValueError naming the array when anything is inconsistent."""
        missing = [prefix + k for k in ARRAY_KEYS if prefix + k not in arrays]
        if missing:
            raise ValueError(f"lacks arrays {missing}")
        a = {k: np.asarray(arrays[prefix + k]) for k in ARRAY_KEYS}
        meta = a["meta"]
        if meta.shape != (3,) or not np.all(np.isfinite(meta)):
            raise ValueError(f"{prefix}meta must be 3 finite numbers (depth, n_features, bias), got shape {meta.shape}")
        depth, n_features, bias = int(meta[0]), int(meta[1]), float(meta[2])
        n = len(a["feature"])
        for k, shape in (("threshold", (n,)), ("children", (2 * n,)), ("nan_right", (n,)), ("value", (n,))):
            if a[k].shape != shape:
                raise ValueError(f"{prefix}{k} has shape {a[k].shape}, expected {shape}")
        if a["feature"].ndim != 1 or a["roots"].ndim != 1:
            raise ValueError(f"{prefix}feature and {prefix}roots must be 1-D")
        if n and (a["feature"].min() < 0 or a["feature"].max() >= n_features):
            raise ValueError(f"{prefix}feature points outside the {n_features} input columns")
        for k in ("children", "roots"):
            if a[k].size and (a[k].min() < 0 or a[k].max() >= n):
                raise ValueError(f"{prefix}{k} points outside the {n} nodes")
        if depth < 0 or (n and depth > n):
            raise ValueError(f"{prefix}meta depth {depth} is impossible for {n} nodes")
        return cls(
            feature=a["feature"].astype(np.int64),
            threshold=a["threshold"].astype(np.float32),
            children=a["children"].astype(np.int64),
            nan_right=a["nan_right"].astype(bool),
            value=a["value"].astype(np.float64),
            roots=a["roots"].astype(np.int64),
            depth=depth,
            bias=bias,
            n_features=n_features,
        )


def concat(parts: list[CompiledTrees]) -> CompiledTrees:
    """One CompiledTrees holding every tree of ``parts`` (in order), for a single traversal.

    The bias is dropped (0): callers sum their own tree slices and add each part's bias.
    Rows must be at least as wide as the widest part.
    """
    offset = 0
    feature, threshold, children, nan_right, value, roots = [], [], [], [], [], []
    for p in parts:
        feature.append(p.feature)
        threshold.append(p.threshold)
        children.append(p.children + offset)
        nan_right.append(p.nan_right)
        value.append(p.value)
        roots.append(p.roots + offset)
        offset += len(p.feature)
    return CompiledTrees(
        feature=np.concatenate(feature),
        threshold=np.concatenate(threshold),
        children=np.concatenate(children),
        nan_right=np.concatenate(nan_right),
        value=np.concatenate(value),
        roots=np.concatenate(roots),
        depth=max(p.depth for p in parts),
        bias=0.0,
        n_features=max(p.n_features for p in parts),
    )


def _tree_depth(left: np.ndarray, right: np.ndarray) -> int:
    """Number of levels from the root (node 0) to the deepest leaf."""
    depth, frontier = 0, [0]
    while True:
        nxt = [c for i in frontier if left[i] >= 0 for c in (left[i], right[i])]
        if not nxt:
            return depth
        depth, frontier = depth + 1, nxt


def compile_booster(booster: Any) -> CompiledTrees:
    """Compile an ``xgboost.Booster`` (gbtree, binary:logistic, numeric splits) into CompiledTrees."""
    model = json.loads(booster.save_raw("json"))
    learner = model["learner"]
    objective = learner["objective"]["name"]
    if objective != "binary:logistic":
        raise ValueError(f"only binary:logistic boosters compile (this one is {objective}); retrain with that objective")
    gbm = learner["gradient_booster"]
    if gbm.get("name") != "gbtree":
        raise ValueError(f"only gbtree boosters compile (this one is {gbm.get('name')}); retrain with booster='gbtree'")
    param = learner["learner_model_param"]
    if int(param.get("num_target", "1")) != 1 or int(param.get("num_class", "0")) > 1:
        raise ValueError("only single-output boosters compile")
    # base_score is a string like "[8.2038E-1]" (a vector since xgboost 2) in probability space
    base = float(str(param["base_score"]).strip("[]").split(",")[0])
    n_features = int(param["num_feature"])
    trees = gbm["model"]["trees"]
    feature, threshold, children, nan_right, value, roots = [], [], [], [], [], []
    depth = 0
    offset = 0
    for t in trees:
        left = np.asarray(t["left_children"], dtype=np.int64)
        right = np.asarray(t["right_children"], dtype=np.int64)
        if any(int(s) != 0 for s in t.get("split_type", [])):
            raise ValueError("categorical splits are not supported; encode categories as one-hot columns")
        if int(t["tree_param"].get("size_leaf_vector", "1")) > 1:
            raise ValueError("vector leaves are not supported")
        leaf = left < 0
        idx = np.arange(len(left), dtype=np.int64)
        cond = np.asarray(t["split_conditions"], dtype=np.float64)
        # leaves loop onto themselves so extra levels keep them in place
        ch = np.empty(2 * len(left), dtype=np.int64)
        ch[0::2] = np.where(leaf, idx, left) + offset
        ch[1::2] = np.where(leaf, idx, right) + offset
        feature.append(np.where(leaf, 0, np.asarray(t["split_indices"], dtype=np.int64)))
        threshold.append(np.where(leaf, 0.0, cond).astype(np.float32))
        children.append(ch)
        nan_right.append(~np.asarray(t["default_left"], dtype=bool) & ~leaf)
        value.append(np.where(leaf, cond, 0.0))  # a leaf's split_condition holds its (eta-scaled) value
        roots.append(offset)
        depth = max(depth, _tree_depth(left, right))
        offset += len(left)
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return CompiledTrees(
        feature=np.concatenate(feature) if trees else empty_i,
        threshold=np.concatenate(threshold) if trees else empty_f.astype(np.float32),
        children=np.concatenate(children) if trees else empty_i,
        nan_right=np.concatenate(nan_right) if trees else np.zeros(0, bool),
        value=np.concatenate(value) if trees else empty_f,
        roots=np.asarray(roots, dtype=np.int64),
        depth=depth,
        bias=math.log(base / (1.0 - base)),
        n_features=n_features,
    )


STEP_LEVELS = 3  # a step decides 2^3-1 = 7 nodes: with one pad they fill the 8 bytes of a uint64
_PACK = np.uint64(0x0102040810204080)  # (8 bytes of 0/1, little-endian) * _PACK >> 56 = byte i as bit i
_SHIFT = np.uint64(56)


def _outcome_table(k: int) -> np.ndarray:
    """For a perfect subtree of ``k`` levels: leaf position (0..2^k-1) reached for each 8-bit code of
    its decisions (bit h is "node h in heap order goes right"; bits past 2^k-2 are ignored)."""
    codes = np.arange(256, dtype=np.int64)
    h = np.zeros_like(codes)
    pos = np.zeros_like(codes)
    for m in range(k):
        pos = 2 * pos + ((codes >> h) & 1)
        h = 2 ** (m + 1) - 1 + pos
    return pos.astype(np.int64)


class FixedBatch:
    """CompiledTrees laid out for exactly ``n_rows`` rows of ``width`` columns: the one-payment path.

    Why: for a handful of rows the cost is the NUMBER of numpy calls (~1-3 us each), not the
    work. Every tree is padded to a perfect tree of its booster's depth (a leaf above the bottom
    becomes a subtree whose leaves all carry its value, so the padded splits' direction is moot)
    and the levels are cut into steps of at most 3. One step gathers the 7 split columns (+1 pad)
    of each row's current subtree, compares them all at once, packs the 8 bool bytes into a code
    (viewed as one uint64, multiply-shift) and looks up which of the 2^k subtree leaves the row
    reaches. Depth 6 costs ~17 numpy calls instead of ~6 per level. Columns carry the row offset, so one flat
    gather reads every row. Deeper than ``MAX_PERFECT_DEPTH`` (padding would cost too much
    memory) falls back to ``CompiledTrees.leaves``.

    ``row_trees`` (n_rows, k) lets each row walk its own k trees instead of all of them: a booster
    with per-processor gated trees (``gated_processors``) is walked as the shared trees
    (``shared_trees``) for every row plus, in a second batch, the row's own processor's trees
    without their gate (``ungated_trees``, ``own_row_trees``), not every processor's. The layout is
    per (row, tree) either way, so this costs nothing at call time; ``leaf_values`` returns
    (n_rows, k) in ``row_trees``' order.
    """

    MAX_PERFECT_DEPTH = 10

    def __init__(self, trees: CompiledTrees, n_rows: int, width: int, row_trees: np.ndarray | None = None) -> None:
        if width < trees.n_features:
            raise ValueError(f"rows of width {width} are narrower than the trees' {trees.n_features} columns")
        if row_trees is None:
            row_trees = np.broadcast_to(np.arange(trees.n_trees, dtype=np.int64), (n_rows, trees.n_trees))
        row_trees = np.asarray(row_trees, dtype=np.int64)
        if row_trees.ndim != 2 or row_trees.shape[0] != n_rows:
            raise ValueError(f"row_trees must be ({n_rows}, k), got {row_trees.shape}")
        if row_trees.size and (row_trees.min() < 0 or row_trees.max() >= trees.n_trees):
            raise ValueError(f"row_trees points outside the {trees.n_trees} trees")
        self.trees, self.n_rows, self.width, self.row_trees = trees, n_rows, width, row_trees
        self._perfect = 0 < trees.depth <= self.MAX_PERFECT_DEPTH
        if not self._perfect:
            return
        depth, n_trees = trees.depth, trees.n_trees
        k_row = row_trees.shape[1]  # trees walked per row
        # node id at every position of the padded perfect trees, level by level (leaves loop onto
        # themselves in ``children``, which is exactly the padding)
        levels = [trees.roots[:, None]]
        for _ in range(depth):
            a = levels[-1]
            nxt = np.empty((n_trees, 2 * a.shape[1]), dtype=np.int64)
            nxt[:, 0::2] = trees.children[2 * a]
            nxt[:, 1::2] = trees.children[2 * a + 1]
            levels.append(nxt)
        n_steps = -(-depth // STEP_LEVELS)
        ks = [depth // n_steps + (1 if s < depth % n_steps else 0) for s in range(n_steps)]
        row_off = (np.arange(n_rows, dtype=np.int64) * width)[:, None, None, None]
        self._steps: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        start = 0
        for k in ks:
            # heap-ordered nodes of every subtree rooted at level ``start``: (trees, 2^start, 2^k - 1),
            # then each row's own trees: (rows, k_row, 2^start, 2^k - 1)
            parts = [levels[start + m].reshape(n_trees, 2**start, 2**m) for m in range(k)]
            ids = np.concatenate(parts, axis=2)[row_trees]
            shape = (*ids.shape[:3], 8)  # rows, trees, subtrees, 8 decision slots
            cols = np.zeros(shape, dtype=np.int64)
            thr = np.full(shape, np.inf, dtype=np.float32)  # pad slots: any outcome, the table ignores them
            nanr = np.zeros(shape, dtype=bool)
            cols[..., : ids.shape[3]] = trees.feature[ids]
            cols += row_off
            thr[..., : ids.shape[3]] = trees.threshold[ids]
            nanr[..., : ids.shape[3]] = trees.nan_right[ids]
            self._steps.append((2**k, cols.reshape(-1, 8), thr.reshape(-1, 8), nanr.reshape(-1, 8), _outcome_table(k)))
            start += k
        self._values = trees.value[levels[depth]][row_trees].ravel()  # (rows*k_row*2^depth,)
        self._first = (np.arange(n_rows * k_row, dtype=np.int64)).reshape(n_rows, k_row)
        # the first step always starts at the roots: its columns/thresholds are gathered once here
        _, cols0, thr0, nanr0, _ = self._steps[0]
        self._step0 = (cols0[self._first], thr0[self._first], nanr0[self._first])

    def leaf_values(self, X: np.ndarray) -> np.ndarray:
        """Leaf value (n_rows, trees) reached by each row of the float32 array X (n_rows, width)."""
        if X.shape != (self.n_rows, self.width):
            raise ValueError(f"X must be ({self.n_rows}, {self.width}), got {X.shape}")
        if not self._perfect:
            return np.take_along_axis(self.trees.value[self.trees.leaves(X)], self.row_trees, axis=1)
        flat = np.ascontiguousarray(X, dtype=np.float32).ravel()
        has_nan = math.isnan(flat.sum())  # one cheap reduction; inf - inf only costs the NaN-aware path
        idx = self._first  # subtree index, row and tree included
        for step, (n_out, cols, thr, nanr, outcome) in enumerate(self._steps):
            c, t, nr = self._step0 if step == 0 else (cols.take(idx, axis=0), thr.take(idx, axis=0), nanr)
            x = flat.take(c)
            right = x >= t  # False for NaN: NaN goes left ...
            if has_nan:  # ... unless the node's default is right
                right |= np.isnan(x) & (nr if step == 0 else nr.take(idx, axis=0))
            code = (right.view(np.uint64).reshape(idx.shape) * _PACK) >> _SHIFT
            idx = idx * n_out + outcome.take(code)
        return self._values.take(idx)


def gated_processors(trees: CompiledTrees, first_column: int, n_processors: int) -> np.ndarray:
    """For every tree, the processor whose gated tree it is (``models.xgb.gate_tree``), else -1.

    A gated tree's root splits on processor j's 0/1 column (``first_column + j``) at 0.5 and its
    left child is a leaf of value exactly 0: rows of every other processor get nothing from it.
    A tree of the shared booster never has that form (a leaf right under the root holds a fitted,
    non-zero value), and were one mistaken, its rows of other processors would only skip a tree
    whose left side adds 0 to them, which is the same margin.
    """
    root = trees.roots
    left = trees.children[2 * root]
    feat = trees.feature[root]
    is_gate = (
        (trees.children[2 * left] == left)  # left child is a leaf ...
        & (trees.value[left] == 0.0)  # ... adding nothing
        & (left != root)  # the root itself splits
        & (trees.threshold[root] == np.float32(0.5))
        & (feat >= first_column) & (feat < first_column + n_processors)
    )
    return np.where(is_gate, feat - first_column, -1).astype(np.int64)


def _levels_below(children: np.ndarray, roots: np.ndarray) -> int:
    """Number of levels from ``roots`` to the deepest leaf under them (a leaf's children are itself)."""
    depth, frontier = 0, roots
    while True:
        inner = frontier[children[2 * frontier] != frontier]
        if not len(inner):
            return depth
        frontier, depth = np.concatenate([children[2 * inner], children[2 * inner + 1]]), depth + 1


def tree_reads(trees: CompiledTrees, width: int) -> np.ndarray:
    """(trees, width) bool: the columns each tree splits on (a tree that reads none of the columns in
    which two rows differ gives both rows the same leaf)."""
    out = np.zeros((trees.n_trees, width), dtype=bool)
    nodes = trees.roots[:, None]
    tree = np.arange(trees.n_trees)[:, None]
    for _ in range(trees.depth):
        left, right = trees.children[2 * nodes], trees.children[2 * nodes + 1]
        split = left != nodes  # a leaf's children are itself
        out[np.broadcast_to(tree, nodes.shape)[split], trees.feature[nodes[split]]] = True
        nodes = np.concatenate([left, right], axis=1)
    return out


def shared_trees(gated: np.ndarray) -> np.ndarray:
    """Indices of the trees no processor gate guards: every row walks them."""
    return np.flatnonzero(gated < 0)


def ungated_trees(trees: CompiledTrees, gated: np.ndarray) -> CompiledTrees:
    """Each gated tree's right subtree, in booster order, then one single-leaf tree of value 0.

    A row scored as processor p passes p's gates, so it reaches exactly the right subtree of each of
    p's gated trees: walking those, and not the gate, gives the same leaves. They are shallow
    (``processor_max_depth``, one step of ``FixedBatch``) where the shared trees are deep, so walking
    them in their own batch costs a fraction of padding them to the shared trees' depth (measured:
    116 of them for 40 rows, 39 us against ~200 us). The last tree pads the rows of a processor with
    fewer trees than the most (``own_row_trees``). The bias is 0: the shared trees carry it.
    """
    gate_roots = trees.roots[gated >= 0]
    pad = len(trees.feature)  # one extra node: a leaf of value 0
    roots = np.append(trees.children[2 * gate_roots + 1], pad)
    children = np.append(trees.children, [pad, pad])
    return CompiledTrees(
        feature=np.append(trees.feature, 0),
        threshold=np.append(trees.threshold, np.float32(np.inf)),
        children=children,
        nan_right=np.append(trees.nan_right, False),
        value=np.append(trees.value, 0.0),
        roots=roots,
        depth=_levels_below(children, roots),
        bias=0.0,
        n_features=trees.n_features,
    )


def own_row_trees(gated: np.ndarray, row_processor: np.ndarray) -> np.ndarray:
    """(rows, k) indices into ``ungated_trees(trees, gated)`` for ``FixedBatch(row_trees=)``: the row's
    processor's trees, padded with the zero tree (the last one) to the most any processor has."""
    owner = gated[gated >= 0]
    pad = len(owner)
    own = {int(p): np.flatnonzero(owner == p) for p in np.unique(row_processor)}
    width = max((len(v) for v in own.values()), default=0)
    out = np.full((len(row_processor), width), pad, dtype=np.int64)
    for r, p in enumerate(row_processor):
        mine = own[int(p)]
        out[r, : len(mine)] = mine
    return out
