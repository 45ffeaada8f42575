"""Serving forms: load an exported model folder and score payments without TensorFlow or pandas.

A folder holds ``encoder.json``, ``model.json`` (family, processors, uncertain flags, feature
names, calibration, family config), the weights (``weights.npz`` for logistic/dnn,
``booster.ubj`` + ``global.ubj`` + ``trees.npz`` for xgb; an ensemble has its members' folders under
``members/`` instead) and ``checksums.json`` (sha256 of every other file).
xgb scores one payment with the numpy-compiled trees (``xgb_numpy``: no xgboost call on the hot
path); batches (``score_matrix``) and SHAP contributions use the boosters, and loading checks that
both forms agree.
``load_serving_model`` verifies all of it — files present, checksums, encoder/model agreement,
array shapes — BEFORE building anything; any problem is an ArtifactError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from smartrouter import catalog
from smartrouter.errors import ArtifactError
from smartrouter.models import calibration
from smartrouter.models.base import (CHECKSUM_FILE, ENCODER_FILE, FORMAT_VERSION, MODEL_FILE, PREDICT_CHUNK_ROWS, blend_heads,
                                     sha256_file)
from smartrouter.models.crosses import CrossSet
from smartrouter.models.data import P, PassthroughEncoder
from smartrouter.models.dnn import numpy_forward
from smartrouter.models.ensemble import combine
from smartrouter.models.xgb import augment
from smartrouter.models.xgb_numpy import (CompiledTrees, FixedBatch, compile_booster, concat, gated_processors, own_row_trees,
                                          shared_trees, tree_reads, ungated_trees)

FAMILIES = ("logistic", "dnn", "xgb", "ensemble")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class ServingModel:
    """A loaded, verified serving form. Build it with ``load_serving_model``."""

    def __init__(self, folder: Path, meta: dict[str, Any], encoder: Any, arrays: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta
        self.family: str = meta["family"]
        self.processors: list[str] = list(meta["processors"])
        self.uncertain: dict[str, bool] = dict(meta["uncertain"])
        self.feature_names: list[str] = list(meta["feature_names"])
        self.encoder = encoder
        self.calibrators: list[dict[str, Any]] = meta["calibration"]
        self._calibration = calibration.HeadCalibrators(self.calibrators)  # the batch paths' vectorized form
        self.blend = np.asarray(meta["blend"], dtype=np.float64)
        self._needs_global = bool(np.any(self.blend < 1.0))
        self._blend_list: list[float] = self.blend.tolist()
        self._a = arrays
        self.load_seconds = 0.0
        if self.family == "xgb":
            d = len(self.feature_names)
            self._self_idx = arrays["self_idx"]
            # rows for one payment scored as every processor: filled in place per call
            self._one = np.zeros((P, d + P + self._self_idx.shape[0]), dtype=np.float32)
            self._one[np.arange(P), d + np.arange(P)] = 1.0
            head, glob = arrays["head_trees"], arrays["global_trees"]
            # a row scored as processor p walks the shared trees and p's gated trees only (XGBModel's
            # processor_rounds), the latter without their gate in a batch of their own (ungated_trees)
            self._gated = gated_processors(head, d, P)
            self._shared = shared_trees(self._gated)
            self._ungated = ungated_trees(head, self._gated) if np.any(self._gated >= 0) else None
            self._own_batch = self._own_trees_batch(np.arange(P), self._one.shape[1])
            k_head = len(self._shared)
            # one traversal serves both boosters: the global trees read the first d columns, which
            # every augmented row shares, so their value is taken from row 0
            self._biases = (head.bias, glob.bias)
            if self._needs_global:
                walk = np.concatenate([self._shared, head.n_trees + np.arange(glob.n_trees)])
                self._batch = FixedBatch(concat([head, glob]), P, self._one.shape[1], np.broadcast_to(walk, (P, len(walk))))
            else:
                self._batch = FixedBatch(head, P, self._one.shape[1], np.broadcast_to(self._shared, (P, k_head)))
            # leaf values @ this = (P, 2): sum over the head trees, sum over the global trees
            self._tree_sums = np.zeros((k_head + (glob.n_trees if self._needs_global else 0), 2))
            self._tree_sums[:k_head, 0] = 1.0
            self._tree_sums[k_head:, 1] = 1.0

    def _own_trees_batch(self, row_processor: np.ndarray, width: int) -> FixedBatch | None:
        """The batch of each row's own processor's ungated trees; None when the booster has none."""
        if self._ungated is None:
            return None
        rows = own_row_trees(self._gated, row_processor)
        return FixedBatch(self._ungated, len(row_processor), width, rows)

    # ---------------------------------------------------------------- scoring
    def _raw_matrix(self, X: np.ndarray) -> np.ndarray:
        a = self._a
        if self.family == "logistic":
            X64 = np.asarray(X, dtype=np.float64)
            z = X64 @ a["W"].T + a["b"]
            if len(a["crosses"]):
                z += a["crosses"].logits(X, a["cross_table"])
            head = _sigmoid(z)
            glob = _sigmoid(X64 @ a["Wg"] + a["bg"][0]) if self._needs_global else None
            return blend_heads(head, glob, self.blend)
        if self.family == "dnn":
            allh = numpy_forward(X, a["layers"], a.get("wide"))
            return blend_heads(allh[:, :P], allh[:, P], self.blend)
        n = len(X)
        rows = np.vstack([augment(X, np.full(n, p, dtype=np.int64), self._self_idx) for p in range(P)])
        head = a["booster"].inplace_predict(rows).astype(np.float64).reshape(P, n).T
        glob = a["global"].inplace_predict(np.asarray(X, np.float32)).astype(np.float64) if self._needs_global else None
        return blend_heads(head, glob, self.blend)

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, P) for encoded rows X (n, d)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"X must be (n, {len(self.feature_names)}), got {X.shape}")
        if len(X) <= PREDICT_CHUNK_ROWS:
            return self._calibration.apply(self._raw_matrix(X))
        # in chunks: the xgb path scores P augmented copies of every row (2.4 GB for a 330K-row test
        # window at once); every row's score depends on its own row only
        return np.vstack([self._calibration.apply(self._raw_matrix(X[lo:lo + PREDICT_CHUNK_ROWS]))
                          for lo in range(0, len(X), PREDICT_CHUNK_ROWS)])

    def _raw_one(self, x: np.ndarray) -> np.ndarray:
        if self.family == "xgb":
            d = len(x)
            rows = self._one
            rows[:, :d] = x
            if self._self_idx.shape[0]:
                rows[:, d + P :] = x[self._self_idx.T]
            sums = self._batch.leaf_values(rows) @ self._tree_sums
            if self._own_batch is not None:
                sums[:, 0] += self._own_batch.leaf_values(rows).sum(axis=1)
            sums = sums.tolist()
            # P scalars: plain math beats numpy's per-call overhead here
            bh, bg = self._biases
            head = [1.0 / (1.0 + math.exp(-(bh + s[0]))) for s in sums]
            if not self._needs_global:
                return np.array(head)
            glob = 1.0 / (1.0 + math.exp(-(bg + sums[0][1])))  # every row shares the global columns
            return np.array([b * h + (1.0 - b) * glob for b, h in zip(self._blend_list, head)])  # blend_heads, one row
        return self._raw_matrix(x[None, :])[0]

    def score_rows(self, X: np.ndarray) -> np.ndarray:
        """Calibrated (k, P) probabilities for a few encoded rows of ONE payment (its message
        configurations, smartrouter.routing.messages): one batched call, on xgb's compiled trees
        laid out for k x P rows (cached per k) instead of the boosters' slower batch path."""
        X = np.asarray(X, dtype=np.float32)
        k = len(X)
        if self.family != "xgb":
            return self._calibration.apply(self._raw_matrix(X))
        batches = self.__dict__.setdefault("_row_batches", {})
        d = X.shape[1]
        # The k rows differ only in a few columns (the message slots); a shared tree that reads none of
        # them gives every configuration the same leaf, and one that reads no processor column (one-hot
        # or SELF) gives every processor the same leaf. So the shared trees are walked in four groups: on
        # one row, on P rows (one per processor), on k rows (one per configuration), and only the trees
        # that read both on all k x P rows (measured on the default world's 1x model: 416 us for the 200
        # shared trees on 40 rows before this). The sums are the same leaves added in another order.
        varying = np.flatnonzero((X != X[:1]).any(axis=0))
        key = (k, varying.tobytes())
        if key not in batches:
            one = self._one
            width = one.shape[1]
            rows = np.tile(one, (k, 1))  # the processor one-hots are already in place
            # the global trees read only the d shared columns: k rows, not k x P
            glob_batch = FixedBatch(self._a["global_trees"], k, d) if self._needs_global else None
            reads = self.__dict__.get("_head_reads")
            if reads is None:
                reads = self.__dict__["_head_reads"] = tree_reads(self._a["head_trees"], width)
            by_processor = np.zeros(width, dtype=bool)
            by_processor[d:] = True  # processor one-hots and SELF columns
            by_config = np.zeros(width, dtype=bool)
            by_config[varying] = True
            if self._self_idx.shape[0]:  # a SELF column copies a varying column: it varies too
                by_config[d + P + np.flatnonzero(np.isin(self._self_idx, varying).any(axis=1))] = True
            shared = self._shared
            r_proc, r_conf = reads[shared][:, by_processor].any(axis=1), reads[shared][:, by_config].any(axis=1)
            groups = []
            for n_rows, mask in ((1, ~r_proc & ~r_conf), (P, r_proc & ~r_conf), (k, ~r_proc & r_conf), (k * P, r_proc & r_conf)):
                trees = shared[mask]
                groups.append(FixedBatch(self._a["head_trees"], n_rows, width, np.broadcast_to(trees, (n_rows, len(trees))))
                              if len(trees) else None)
            own = self._own_trees_batch(np.tile(np.arange(P), k), width)  # row i is scored as processor i % P
            batches[key] = (groups, own, rows, glob_batch)
        groups, own, rows, glob_batch = batches[key]
        rows3 = rows.reshape(k, P, -1)
        rows3[:, :, :d] = X[:, None, :]
        if self._self_idx.shape[0]:
            rows3[:, :, d + P :] = X[:, self._self_idx.T]
        bh, bg = self._biases
        g_one, g_proc, g_conf, g_all = groups
        margin = np.zeros((k, P))
        if g_all is not None:
            margin += g_all.leaf_values(rows).sum(axis=1).reshape(k, P)
        if g_one is not None:
            margin += g_one.leaf_values(rows[:1]).sum()
        if g_proc is not None:
            margin += g_proc.leaf_values(rows[:P]).sum(axis=1)[None, :]
        if g_conf is not None:
            margin += g_conf.leaf_values(np.ascontiguousarray(rows3[:, 0])).sum(axis=1)[:, None]
        if own is not None:
            margin += own.leaf_values(rows).sum(axis=1).reshape(k, P)
        head = _sigmoid(bh + margin)
        glob = _sigmoid(bg + glob_batch.leaf_values(np.ascontiguousarray(X)).sum(axis=1)) if glob_batch is not None else None
        return self._calibration.apply(blend_heads(head, glob, self.blend))

    def score(self, payment: dict[str, Any]) -> dict[str, float]:
        """Calibrated approval probability for every processor for one raw payment (no pandas, no TF)."""
        raw = self._raw_one(np.asarray(self.encoder.encode_payment(payment), dtype=np.float32))
        return {proc: calibration.apply_scalar(cal, float(raw[j])) for j, (proc, cal) in enumerate(zip(self.processors, self.calibrators))}

    def rank(self, payment: dict[str, Any], candidates: list[str] | None = None) -> list[tuple[str, float]]:
        """Eligible processors (hard rules ∩ candidates) best first, with their probabilities.

        Scores of ineligible processors are never returned, so an Amex card can only ever be
        ranked onto AMEX whatever the other heads say.
        """
        active = tuple(p for p in self.processors if candidates is None or p in candidates)
        eligible = catalog.eligible_processors(str(payment.get("CARD_BRAND")), str(payment.get("CURRENCY")), active)
        if not eligible:
            return []
        scores = self.score(payment)
        return sorted(((p, scores[p]) for p in eligible), key=lambda t: (-t[1], self.processors.index(t[0])))

    def contributions(self, payment: dict[str, Any], processor: str, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` features that moved ``processor``'s score most for this payment (log-odds units).

        xgb: SHAP values (pred_contribs); logistic: coef·(x − train mean), exact for a linear model;
        dnn: log-odds change when the feature is reset to its training mean (one feature at a time).
        """
        if processor not in self.processors:
            raise ValueError(f"unknown processor {processor!r}; one of {self.processors}")
        j = self.processors.index(processor)
        x = np.asarray(self.encoder.encode_payment(payment), dtype=np.float32)
        if self.family == "xgb":
            import xgboost as xgb

            row = augment(x[None, :], np.array([j]), self._self_idx)
            contrib = self._a["booster"].predict(xgb.DMatrix(row), pred_contribs=True)[0][:-1]
            names = self._a["aug_names"]
        elif self.family == "logistic":
            contrib = self._a["W"][j] * (x.astype(np.float64) - self._a["x_mean"])
            names = self.feature_names
            crosses = self._a["crosses"]
            if len(crosses):  # a cross is one input: its cell's weight against the training average
                cell = crosses.columns(x[None, :])[0].astype(np.float64) - self._a["c_mean"]
                per_cell = self._a["Wc"][j] * cell
                off = crosses.offsets
                contrib = np.concatenate([contrib, [per_cell[lo:hi].sum() for lo, hi in zip(off[:-1], off[1:])]])
                names = [*names, *crosses.names()]
        else:
            mean = self._a.get("x_mean")
            base = np.zeros_like(x) if mean is None else mean.astype(np.float32)
            Xa = np.repeat(x[None, :], len(x) + 1, axis=0)
            Xa[np.arange(len(x)), np.arange(len(x))] = base
            pr = np.clip(numpy_forward(Xa, self._a["layers"], self._a.get("wide"))[:, j], 1e-7, 1 - 1e-7)
            lo = np.log(pr / (1 - pr))
            contrib = lo[-1] - lo[:-1]
            names = self.feature_names
        order = np.argsort(-np.abs(contrib), kind="stable")[:top_k]
        return [(names[i], float(contrib[i])) for i in order]


class EnsembleServingModel(ServingModel):
    """The ensemble family's serving form: its members' calibrated log-odds averaged, then its own
    per-head calibrators (models.ensemble). Every scoring path of a member is reused as it is."""

    def __init__(self, folder: Path, meta: dict[str, Any], encoder: Any, members: dict[str, ServingModel]) -> None:
        super().__init__(folder, meta, encoder, {})
        self.members = members
        self._member_list = list(members.values())

    def _raw_matrix(self, X: np.ndarray) -> np.ndarray:
        return combine([m.score_matrix(X) for m in self._member_list])

    def _raw_one(self, x: np.ndarray) -> np.ndarray:
        return combine([m._calibration.apply(m._raw_one(x)[None, :]) for m in self._member_list])[0]

    def score_rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return self._calibration.apply(combine([m.score_rows(X) for m in self._member_list]))

    def contributions(self, payment: dict[str, Any], processor: str, top_k: int = 5) -> list[tuple[str, float]]:
        """The members' contributions (log-odds units) averaged, as the ensemble averages their log-odds;
        each feature under the name its member reports it by."""
        if processor not in self.processors:
            raise ValueError(f"unknown processor {processor!r}; one of {self.processors}")
        total: dict[str, float] = {}
        for m in self._member_list:
            for name, v in m.contributions(payment, processor, top_k=len(m.feature_names) + P):
                total[name] = total.get(name, 0.0) + v / len(self._member_list)
        return sorted(total.items(), key=lambda kv: -abs(kv[1]))[:top_k]


# -------------------------------------------------------------------- loading
def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder / name} is not readable JSON ({exc}); re-export the model") from None


def _weight_files(meta: dict[str, Any]) -> list[str]:
    cfg = meta.get("config") or {}
    if meta.get("family") == "ensemble":
        return []  # its members' folders, each verified by its own checksums (_load_members)
    if meta.get("family") == "xgb":
        # trees.npz is optional: folders exported before it existed are compiled at load time
        return [cfg.get("booster", "booster.ubj"), cfg.get("global_booster", "global.ubj"), *([cfg["trees"]] if cfg.get("trees") else [])]
    return [cfg.get("weights", "weights.npz")]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable weights file ({exc}); re-export the model") from None


def _shape_error(path: Path, what: str, got: Any, want: Any) -> ArtifactError:
    return ArtifactError(f"{path}: {what} has shape {tuple(got)}, expected {tuple(want)}; weights and encoder/processors disagree, re-export the model")


def _build_encoder(folder: Path, spec: Any) -> Any:
    try:
        if isinstance(spec, dict) and spec.get("kind") == PassthroughEncoder.KIND:
            return PassthroughEncoder.from_spec(spec)
        from smartrouter.encoder import FeatureEncoder

        return FeatureEncoder.from_spec(spec)
    except ArtifactError as exc:
        raise ArtifactError(f"{folder / ENCODER_FILE}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{folder / ENCODER_FILE} is not a valid encoder spec ({exc}); re-export the model") from None


def _load_compiled(folder: Path, cfg: dict[str, Any], boosters: dict[str, Any], head_width: int, d: int) -> dict[str, CompiledTrees]:
    """The compiled trees of both boosters (trees.npz, or compiled now for older exports), checked against the boosters."""
    tname = cfg.get("trees")
    out: dict[str, CompiledTrees] = {}
    if tname:
        tpath = folder / tname
        z = _load_npz(tpath)
        for key in ("head", "global"):
            try:
                out[key] = CompiledTrees.from_arrays(z, f"{key}_")
            except ValueError as exc:
                raise ArtifactError(f"{tpath}: {exc}; re-export the model") from None
    else:
        out = {"head": compile_booster(boosters["booster"]), "global": compile_booster(boosters["global"])}
    rng = np.random.default_rng(0)
    for key, bkey, width, bname in (("head", "booster", head_width, cfg.get("booster")), ("global", "global", d, cfg.get("global_booster"))):
        where = folder / (tname or bname)
        if out[key].n_features != width:
            raise _shape_error(where, f"{key} trees input width", (out[key].n_features,), (width,))
        # a few rows, one all-missing, must score as the booster does: catches trees from another model
        probe = rng.normal(size=(4, width)).astype(np.float32)
        probe[0] = np.nan
        probe[1, ::3] = np.nan
        gap = np.abs(out[key].predict(probe) - boosters[bkey].inplace_predict(probe).astype(np.float64)).max()
        if not gap < 1e-5:
            raise ArtifactError(f"{where}: the compiled {key} trees disagree with {folder / bname} (gap {gap:.2g}); re-export the model")
    return {"head_trees": out["head"], "global_trees": out["global"]}


def _load_members(folder: Path, meta: dict[str, Any], enc_text: str) -> dict[str, ServingModel]:
    """An ensemble's members, each a complete serving folder under ``members/`` whose checksums.json
    is the one model.json names (so the ensemble's own checksum covers every member file), trained
    with the ensemble's encoder."""
    mpath = folder / MODEL_FILE
    cfg = meta.get("config") or {}
    names, sums = cfg.get("members"), cfg.get("member_checksums")
    if not isinstance(names, list) or len(names) < 2 or not isinstance(sums, dict) or set(sums) != set(names):
        raise ArtifactError(f"{mpath}: config.members must list two or more member families, each with its checksum; re-export the model")
    members: dict[str, ServingModel] = {}
    for fam in names:
        if fam not in FAMILIES or fam == "ensemble":
            raise ArtifactError(f"{mpath}: member {fam!r} is not one of {FAMILIES[:-1]}; re-export the model")
        sub = folder / str(cfg.get("members_dir", "members")) / fam
        csum = sub / CHECKSUM_FILE
        if not csum.is_file():
            raise ArtifactError(f"{csum} is missing; the ensemble's member {fam} is incomplete, re-export the model")
        if sha256_file(csum) != sums[fam]:
            raise ArtifactError(f"{csum} is not the member {MODEL_FILE} names (checksum differs: replaced or edited); re-export the model")
        member = load_serving_model(sub)
        if member.family != fam:
            raise ArtifactError(f"{sub / MODEL_FILE}: family {member.family!r}, the ensemble lists it as {fam!r}; re-export the model")
        if (sub / ENCODER_FILE).read_text() != enc_text:
            raise ArtifactError(f"{sub / ENCODER_FILE} differs from {folder / ENCODER_FILE}: members must share the ensemble's encoder; re-export")
        members[fam] = member
    return members


def load_serving_model(folder: str | Path) -> ServingModel:
    """Verify and load an exported model folder; ArtifactError naming the file on any problem."""
    t0 = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist; export a model there or point to a registry version")
    for name in (CHECKSUM_FILE, MODEL_FILE, ENCODER_FILE):
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} is missing; the artifact is incomplete, re-export the model")
    sums = _read_json(folder, CHECKSUM_FILE)
    meta = _read_json(folder, MODEL_FILE)
    if not isinstance(sums, dict) or not isinstance(meta, dict):
        raise ArtifactError(f"{folder / CHECKSUM_FILE} or {folder / MODEL_FILE} is not a JSON object; re-export the model")
    required = [MODEL_FILE, ENCODER_FILE, *_weight_files(meta)]
    for name in required:
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder / name} is missing; the artifact is incomplete, re-export the model")
        if name not in sums:
            raise ArtifactError(f"{folder / CHECKSUM_FILE} has no checksum for {name}; re-export the model")
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in {CHECKSUM_FILE} but missing; re-export the model")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{path} does not match its checksum in {CHECKSUM_FILE} (corrupt or edited); re-export the model")

    # ---- model.json content
    mpath = folder / MODEL_FILE
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: format_version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    family = meta.get("family")
    if family not in FAMILIES:
        raise ArtifactError(f"{mpath}: unknown family {family!r}; expected one of {FAMILIES}")
    if list(meta.get("processors", [])) != list(catalog.PROCESSORS):
        raise ArtifactError(
            f"{mpath}: processors {meta.get('processors')} differ from catalog.PROCESSORS {list(catalog.PROCESSORS)}; retrain the model"
        )
    names = meta.get("feature_names")
    d = len(names) if isinstance(names, list) else -1
    if d <= 0 or meta.get("n_features") != d:
        raise ArtifactError(f"{mpath}: feature_names/n_features are missing or disagree")
    cals = meta.get("calibration")
    if not isinstance(cals, list) or len(cals) != P:
        raise ArtifactError(f"{mpath}: calibration must list one calibrator per processor ({P})")
    for proc, cal in zip(catalog.PROCESSORS, cals):
        why = calibration.validate_spec(cal)
        if why:
            raise ArtifactError(f"{mpath}: calibration of {proc}: {why}")
    blend = meta.get("blend")
    if not isinstance(blend, list) or len(blend) != P or not all(0.0 <= float(b) <= 1.0 for b in blend):
        raise ArtifactError(f"{mpath}: blend must be {P} weights in [0, 1]")
    if set((meta.get("uncertain") or {}).keys()) != set(catalog.PROCESSORS):
        raise ArtifactError(f"{mpath}: uncertain must flag every processor")

    # ---- encoder agrees with the model
    epath = folder / ENCODER_FILE
    enc_text = epath.read_text()
    if meta.get("encoder_sha256") != hashlib.sha256(enc_text.encode()).hexdigest():
        raise ArtifactError(f"{epath} is not the encoder this model was trained with (encoder_sha256 in {MODEL_FILE} differs)")
    encoder = _build_encoder(folder, json.loads(enc_text))
    if list(encoder.feature_names) != list(names):
        raise ArtifactError(
            f"{epath}: encoder has {len(encoder.feature_names)} features, {MODEL_FILE} expects {d} (names differ); re-export the model"
        )

    # ---- weights
    cfg = meta.get("config") or {}
    arrays: dict[str, Any] = {}
    if family == "ensemble":
        model = EnsembleServingModel(folder, meta, encoder, _load_members(folder, meta, enc_text))
        model.load_seconds = time.perf_counter() - t0
        return model
    if family == "logistic":
        wpath = folder / cfg.get("weights", "weights.npz")
        z = _load_npz(wpath)
        try:  # the learned crosses (models.crosses); exports made before them have none
            crosses = CrossSet.from_config(cfg.get("crosses") or [], d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{mpath}: config.crosses is not valid ({exc}); re-export the model") from None
        want = {"W": (P, d), "b": (P,), "Wg": (d,), "bg": (1,), "x_mean": (d,)}
        if len(crosses):
            want.update(Wc=(P, crosses.k), c_mean=(crosses.k,))
        for k, shape in want.items():
            if k not in z:
                raise ArtifactError(f"{wpath} lacks array {k!r}; re-export the model")
            if z[k].shape != shape:
                raise _shape_error(wpath, k, z[k].shape, shape)
        arrays = {k: z[k].astype(np.float64) for k in want}
        arrays["crosses"] = crosses
        arrays["cross_table"] = crosses.table(arrays["Wc"]) if len(crosses) else None
    elif family == "dnn":
        wpath = folder / cfg.get("weights", "weights.npz")
        z = _load_npz(wpath)
        n_layers = int(cfg.get("n_layers", 0))
        layers = []
        prev = d
        for i in range(n_layers):
            if f"W{i}" not in z or f"b{i}" not in z:
                raise ArtifactError(f"{wpath} lacks layer {i} (W{i}/b{i}); re-export the model")
            W, b = z[f"W{i}"], z[f"b{i}"]
            if W.ndim != 2 or W.shape[0] != prev or b.shape != (W.shape[1],):
                raise _shape_error(wpath, f"layer {i}", W.shape, (prev, b.shape[0] if b.ndim else "?"))
            layers.append((W.astype(np.float64), b.astype(np.float64)))
            prev = W.shape[1]
        if not layers or prev != P + 1:
            raise ArtifactError(f"{wpath}: the output layer has {prev} units, expected {P + 1} (one per processor + global)")
        wide = None
        if cfg.get("wide"):  # the linear path of a wide-and-deep export (older exports have none)
            if "wide" not in z:
                raise ArtifactError(f"{wpath} lacks array 'wide' that {MODEL_FILE} declares; re-export the model")
            if z["wide"].shape != (d, P + 1):
                raise _shape_error(wpath, "wide", z["wide"].shape, (d, P + 1))
            wide = z["wide"].astype(np.float64)
        arrays = {"layers": layers, "x_mean": z.get("x_mean"), "wide": wide}
    else:
        import xgboost as xgb

        self_idx = np.asarray(cfg.get("self_idx", []), dtype=np.int64).reshape(-1, P)
        if self_idx.size and (self_idx.min() < 0 or self_idx.max() >= d):
            raise ArtifactError(f"{mpath}: config.self_idx points outside the {d} encoder features")
        aug_names = list(cfg.get("aug_names", []))
        boosters = {}
        for key, name, width in (("booster", cfg.get("booster"), d + P + len(self_idx)), ("global", cfg.get("global_booster"), d)):
            bpath = folder / name
            b = xgb.Booster()
            try:
                b.load_model(str(bpath))
            except xgb.core.XGBoostError as exc:
                raise ArtifactError(f"{bpath} is not a readable XGBoost model ({str(exc).splitlines()[0]}); re-export") from None
            if b.num_features() != width:
                raise _shape_error(bpath, "input width", (b.num_features(),), (width,))
            b.set_param({"nthread": 1})  # one payment at a time: threads only add latency
            boosters[key] = b
        if len(aug_names) != d + P + len(self_idx):
            raise ArtifactError(f"{mpath}: config.aug_names has {len(aug_names)} names, expected {d + P + len(self_idx)}")
        arrays = {**boosters, **_load_compiled(folder, cfg, boosters, d + P + len(self_idx), d), "self_idx": self_idx, "aug_names": aug_names}
    model = ServingModel(folder, meta, encoder, arrays)
    model.load_seconds = time.perf_counter() - t0
    return model
