"""XGBoost approval model: ONE booster with the processor as a feature, plus per-processor trees.

Why one model rather than one per processor: most of what decides approval (card, issuer,
fraud cohort, airline context) is shared by all processors, so one booster learns it from every
attempt and a processor with little history (ADYEN) borrows that strength. It also serves all
processors in ONE predict call (P rows) and gives SHAP contributions from one model.

Why per-processor trees on top (``processor_rounds``): routing needs the DIFFERENCES between
processors, and in the shared booster they come only from sparse splits on the processor columns,
which compete with the main effects every processor shares for each tree's splits (on the default
world xgb got 84 % of the oracle's gain over the rules against ~93 % for logistic/dnn). So after the
shared booster, each certain processor gets trees boosted on its own rows only, starting from the
shared booster's margin: they learn what is specific to that processor (its interactions with
card, issuer, ...), as the logistic family's heads are pulled toward its global model. Each such
tree is wrapped under a root split on the processor's one-hot column (``gate_tree``) and appended
to the shared booster, so the exported booster, its compiled numpy trees and SHAP are unchanged in
form: one booster over the augmented rows.

Each training row is [X, one-hot(processor), SELF columns]: for every per-processor feature
group (health, BIN history — see data.per_processor_groups) a SELF column holds the value of the
scored processor's own member, so "this processor's recent timeout rate" is one column the trees
can split on, with a monotone (non-increasing) constraint on the recent timeout/error rates, SELF and
raw (data.MonotoneColumns.negative, the definition every family shares), in the shared and the
per-processor trees alike (a gate splits on a one-hot column only, so monotonicity holds). A second
small booster without processor columns is the global prior for uncertain heads.

Boosting happens in two call sites: ``_fit_core`` (the shared and the global booster) and
``_fit_processor_trees`` (one booster per processor, each batch carrying the shared booster's
margin as ``base_margin``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from smartrouter import catalog
from smartrouter.models.base import ApprovalModel
from smartrouter.models.data import P, ModelData, monotone_columns, per_processor_groups, processor_feature_columns
from smartrouter.models.engine import BatchSource, batches_of, fit_booster
from smartrouter.models.xgb_numpy import compile_booster

BOOSTER_FILE = "booster.ubj"
GLOBAL_FILE = "global.ubj"
TREES_FILE = "trees.npz"  # both boosters compiled to numpy arrays (xgb_numpy): the per-payment serving path
# rows per batch fed to the boosting engine: above xgboost's fixed cost per batch (~100K+), far below a table
FIT_BATCH_ROWS = 250_000


def gpu_available() -> bool:
    """True when this xgboost build has CUDA and an NVIDIA driver is visible."""
    import xgboost as xgb

    return bool(xgb.build_info().get("USE_CUDA")) and shutil.which("nvidia-smi") is not None


def augment(X: np.ndarray, proc: np.ndarray, self_idx: np.ndarray) -> np.ndarray:
    """[X, one-hot(proc), X[own member of each group]] as float32 — training and serving share it.

    ``self_idx`` is (n_groups, P): column of group g's member for processor p.
    """
    n = len(X)
    out = np.empty((n, X.shape[1] + P + self_idx.shape[0]), dtype=np.float32)
    d = X.shape[1]
    out[:, :d] = X
    out[:, d : d + P] = 0.0
    out[np.arange(n), d + proc] = 1.0
    if self_idx.shape[0]:
        out[:, d + P :] = X[np.arange(n)[:, None], self_idx[:, proc].T]
    return out


def all_processor_rows(X: np.ndarray, self_idx: np.ndarray) -> np.ndarray:
    """Augmented rows for every (row, processor): block p holds all rows scored as processor p."""
    n = len(X)
    return np.vstack([augment(X, np.full(n, p, dtype=np.int64), self_idx) for p in range(P)])


GATE_ROOT_PARENT = 2147483647  # xgboost's "no parent" marker for a root


def gate_tree(tree: dict[str, Any], column: int) -> dict[str, Any]:
    """An xgboost JSON tree wrapped under a new root that splits on the 0/1 ``column``.

    Rows with column < 0.5 (another processor) reach a leaf of value 0; rows with 1 go on through
    the original tree, whose nodes shift by 2. The margin is therefore unchanged for the gated
    processor and untouched for the others: a per-processor tree inside the one shared booster.
    """
    n = int(tree["tree_param"]["num_nodes"])

    def shifted(children: list[int]) -> list[int]:
        return [c + 2 if c >= 0 else -1 for c in children]

    out = dict(tree)
    out["left_children"] = [1, -1, *shifted(tree["left_children"])]
    out["right_children"] = [2, -1, *shifted(tree["right_children"])]
    out["parents"] = [GATE_ROOT_PARENT, 0, 0, *[q + 2 for q in tree["parents"][1:]]]
    out["split_indices"] = [column, 0, *tree["split_indices"]]
    out["split_conditions"] = [0.5, 0.0, *tree["split_conditions"]]
    out["split_type"] = [0, 0, *tree["split_type"]]
    out["default_left"] = [1, 0, *tree["default_left"]]
    out["base_weights"] = [0.0, 0.0, *tree["base_weights"]]
    out["loss_changes"] = [0.0, 0.0, *tree["loss_changes"]]
    cover = float(tree["sum_hessian"][0])
    out["sum_hessian"] = [cover, 0.0, *tree["sum_hessian"]]
    out["tree_param"] = {**tree["tree_param"], "num_nodes": str(n + 2)}
    return out


def append_trees(booster: Any, trees: list[dict[str, Any]]) -> Any:
    """A new booster: ``booster``'s trees then ``trees`` (JSON, same input width), one boosting round each."""
    import xgboost as xgb

    if not trees:
        return booster
    model = json.loads(booster.save_raw("json"))
    gbm = model["learner"]["gradient_booster"]["model"]
    start = len(gbm["trees"])
    for k, t in enumerate(trees):
        gbm["trees"].append({**t, "id": start + k})
    n = len(gbm["trees"])
    gbm["tree_info"] = [0] * n
    gbm["gbtree_model_param"] = {**gbm["gbtree_model_param"], "num_trees": str(n)}
    gbm["iteration_indptr"] = list(range(n + 1))
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(model).encode()))
    return out


class XGBModel(ApprovalModel):
    """One XGBoost booster over [X, processor one-hot, SELF columns]."""

    family = "xgb"
    defaults: dict[str, Any] = {
        "n_estimators": 400,
        "max_depth": 6,
        "learning_rate": 0.08,
        "subsample": 0.9,
        "colsample_bytree": 0.8,
        "min_child_weight": 5.0,
        "reg_lambda": 1.0,
        "early_stopping_rounds": 30,
        "monotone": True,
        "nthread": 0,
        # self_only: a processor's own features (health, BIN history) reach the trees only as the
        # SELF columns of the processor being scored; their raw per-processor copies are held
        # constant in training, so no tree splits on another processor's health (a time-trend
        # proxy: on the default world WORLDPAY test ECE 0.021 -> 0.016, AUC 0.7433 -> 0.7456).
        # Serving still passes the raw values; no tree reads them.
        "self_only": True,
        # processor_rounds: after the shared booster, each certain processor gets its own trees, boosted
        # on that processor's rows only from the shared booster's margin and gated on its processor
        # column (see ``gate_tree``), so they learn what differs between processors (the routing
        # decision) instead of competing with the shared main effects for splits. 0 turns them off.
        # Measured on the default world (seed 42, the table's last 5 weeks: 220K train rows), share of
        # the oracle's gain over the rules on the test window: none 84.2 %, 200 rounds of depth 6
        # 87.1 %, 300 rounds of depth 3 88.6 % (early-stopped at 6-98 per processor); the shared
        # booster forbidden to split on the processor as well: 88.2 %. Full tables: default world 84.5 ->
        # 89.9 %, seed-7 interactions world 87.8 -> 90.8 %, seed-4242 interactions world (daily run)
        # 81.4 -> 88.5 % (the other families 88.4 / 88.8 %). Serving walks each processor's trees only
        # on its own rows, without their gate (xgb_numpy.ungated_trees). 0 turns them off.
        "processor_rounds": 300,
        "processor_max_depth": 3,  # shallow: a processor's deviation from the shared margin, not a second model
    }

    def _xgb_params(self, constraints: list[int] | None) -> dict[str, Any]:
        p = self.params
        out = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "device": "cuda" if gpu_available() else "cpu",
            "max_depth": int(p["max_depth"]),
            "eta": float(p["learning_rate"]),
            "subsample": float(p["subsample"]),
            "colsample_bytree": float(p["colsample_bytree"]),
            "min_child_weight": float(p["min_child_weight"]),
            "lambda": float(p["reg_lambda"]),
            "seed": int(p["seed"]),
            "verbosity": 0,
        }
        if int(p["nthread"]) > 0:
            out["nthread"] = int(p["nthread"])
        if constraints and any(constraints):
            out["monotone_constraints"] = "(" + ",".join(map(str, constraints)) + ")"
        return out

    def _fit_core(self, train: ModelData, valid: ModelData) -> None:
        groups = per_processor_groups(self.feature_names)
        self.group_stems = list(groups)
        self.self_idx = np.array([groups[s] for s in self.group_stems], dtype=np.int64).reshape(len(groups), P)
        d = train.n_features
        self.aug_names = (
            self.feature_names + [f"PROCESSOR={p}" for p in catalog.PROCESSORS] + [f"SELF:{s}" for s in self.group_stems]
        )
        # every recent timeout-rate column is non-increasing, so raising processor p's timeout rate
        # can only lower (never raise) any score: p's own via its SELF column, the others' via the raw
        # column; a SELF group is constrained when all its members are (its missing-value
        # indicators are not rates and stay free)
        negative = set(monotone_columns(self.feature_names).negative)
        raw = [-1 if j in negative else 0 for j in range(d)] + [0] * P
        sign = [-1 if all(j in negative for j in groups[s]) else 0 for s in self.group_stems]
        constraints = raw + sign if self.params["monotone"] else None
        self.monotone = constraints
        held = self._held_constant()
        # models.engine.fit_booster (SMARTROUTER_TRAIN_ENGINE: here, or on Dask): "hist" only reads each
        # value's bin, so the rows are binned into a QuantileDMatrix (~1 byte per value) fed batch by
        # batch, each batch augmented when it is read: the augmented float copy of every train row (2.9 GB
        # for 2M rows) never exists at once. The valid rows are binned on the train rows' cuts.
        bst, curve = fit_booster(
            self._xgb_params(constraints),
            self._augmented_batches(train, held),
            self._augmented_batches(valid, held),
            num_boost_round=int(self.params["n_estimators"]),
            early_stopping_rounds=int(self.params["early_stopping_rounds"]),
        )
        best = int(getattr(bst, "best_iteration", bst.num_boosted_rounds() - 1))
        self.booster = bst[: best + 1]  # keep only the early-stopped trees: serving needs no iteration_range
        self.history = {"loss": curve["train"]["logloss"], "val_loss": curve["valid"]["logloss"], "best_iteration": best}
        if int(self.params["processor_rounds"]) > 0:
            self.booster = self._fit_processor_trees(self.booster, train, valid, held, constraints)
        # the processor-agnostic prior: same settings, no processor columns, half the rounds
        gparams = self._xgb_params(raw[:d] if self.params["monotone"] else None)
        g, _ = fit_booster(
            gparams,
            batches_of(train.X, train.y, train.weight, rows=FIT_BATCH_ROWS),
            batches_of(valid.X, valid.y, valid.weight, rows=FIT_BATCH_ROWS),
            num_boost_round=max(int(self.params["n_estimators"]) // 2, 1),
            early_stopping_rounds=int(self.params["early_stopping_rounds"]),
        )
        self.global_booster = g[: int(getattr(g, "best_iteration", g.num_boosted_rounds() - 1)) + 1]
        for b in (self.booster, self.global_booster):
            b.set_param({"device": "cpu"})  # predictions and export on CPU, as the service runs

    def _fit_processor_trees(self, shared: Any, train: ModelData, valid: ModelData, held: np.ndarray,
                             constraints: list[int] | None) -> Any:
        """The shared booster plus, per certain processor, trees boosted on its rows from the shared margin."""
        import xgboost as xgb

        d = train.n_features
        params = {**self._xgb_params(constraints), "max_depth": int(self.params["processor_max_depth"])}
        trees: list[list[dict[str, Any]]] = []
        self.history["processor_best_iteration"] = {}
        for j, proc in enumerate(self.processors):
            if self.uncertain[proc] or not np.any(valid.processor_idx == j):
                continue  # blended toward the global prior (too few rows of its own), or nothing to early-stop on
            sets = []
            for part in (train, valid):
                m = part.processor_idx == j
                rows = self._training_rows(part.subset(m), held)
                margin = shared.inplace_predict(rows, predict_type="margin")
                sets.append(xgb.QuantileDMatrix(rows, label=part.y[m], weight=part.weight[m], base_margin=margin,
                                                ref=sets[0] if sets else None))
                del rows
            bst = xgb.train(params, sets[0], num_boost_round=int(self.params["processor_rounds"]), evals=[(sets[1], "valid")],
                            early_stopping_rounds=int(self.params["early_stopping_rounds"]), verbose_eval=False)
            best = int(getattr(bst, "best_iteration", bst.num_boosted_rounds() - 1))
            self.history["processor_best_iteration"][proc] = best
            model = json.loads(bst[: best + 1].save_raw("json"))
            trees.append([gate_tree(t, d + j) for t in model["learner"]["gradient_booster"]["model"]["trees"]])
        return append_trees(shared, [t for group in trees for t in group])

    def _held_constant(self) -> np.ndarray:
        """Raw per-processor feature columns that have a SELF copy (see ``self_only``)."""
        if not self.params["self_only"]:
            return np.zeros(0, dtype=np.int64)
        own = {j for cols in processor_feature_columns(self.feature_names).values() for j in cols}
        return np.array(sorted(own & set(self.self_idx.ravel().tolist())), dtype=np.int64)

    def _augmented_batches(self, data: ModelData, held: np.ndarray) -> BatchSource:
        """``_training_rows`` of ``data`` in batches of FIT_BATCH_ROWS, each made when it is read."""
        def open_batches() -> Any:
            for lo in range(0, len(data), FIT_BATCH_ROWS):
                hi = min(lo + FIT_BATCH_ROWS, len(data))
                rows = augment(data.X[lo:hi], data.processor_idx[lo:hi], self.self_idx)
                rows[:, held] = 0.0  # a constant column offers no split
                yield rows, data.y[lo:hi], data.weight[lo:hi]

        return BatchSource(open_batches)

    def _training_rows(self, data: ModelData, held: np.ndarray) -> np.ndarray:
        rows = augment(data.X, data.processor_idx, self.self_idx)
        rows[:, held] = 0.0  # a constant column offers no split
        return rows

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        rows = all_processor_rows(X, self.self_idx)
        return self.booster.predict(xgb.DMatrix(rows)).astype(np.float64).reshape(P, len(X)).T

    def _global_proba(self, X: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        return self.global_booster.predict(xgb.DMatrix(X)).astype(np.float64)

    def contributions(self, X: np.ndarray, processor: str) -> np.ndarray:
        """SHAP contributions (n, d_aug + 1) of the booster for rows scored as ``processor`` (last = bias)."""
        import xgboost as xgb

        proc = np.full(len(X), catalog.PROCESSOR_INDEX[processor], dtype=np.int64)
        return self.booster.predict(xgb.DMatrix(augment(X, proc, self.self_idx)), pred_contribs=True)

    def _export_weights(self, folder: Path) -> dict[str, Any]:
        self.booster.save_model(str(folder / BOOSTER_FILE))
        self.global_booster.save_model(str(folder / GLOBAL_FILE))
        compiled = {**compile_booster(self.booster).to_arrays("head_"), **compile_booster(self.global_booster).to_arrays("global_")}
        with open(folder / TREES_FILE, "wb") as fh:  # export writes into a temp folder, moved into place whole
            np.savez(fh, **compiled)
        return {
            "booster": BOOSTER_FILE,
            "global_booster": GLOBAL_FILE,
            "trees": TREES_FILE,
            "group_stems": self.group_stems,
            "self_idx": self.self_idx.tolist(),
            "aug_names": self.aug_names,
            "monotone": self.monotone,
            "best_iteration": self.history.get("best_iteration"),
            "processor_best_iteration": self.history.get("processor_best_iteration", {}),
        }

    def global_importance(self, data: ModelData | None = None) -> dict[str, float]:
        """Total gain per input column; SELF and processor columns are reported under their own names."""
        score = self.booster.get_score(importance_type="total_gain")
        imp = np.zeros(len(self.aug_names))
        for k, v in score.items():
            imp[int(k[1:])] = v
        imp = imp / imp.sum() if imp.sum() > 0 else imp
        return dict(zip(self.aug_names, map(float, imp)))
