"""The model-facing dataset: encoded X, the logged processor, the label, weights and the split.

Every model family trains on ``ModelData`` arrays, never on a frame: the contract is
(X float32 (n, d), processor_idx int (n,), y (n,), weight (n,)), with the processor index from
``catalog.PROCESSOR_INDEX``. The processor is not a column of X; models output one probability
per processor.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from smartrouter import catalog
from smartrouter.errors import DataCheckError

P = len(catalog.PROCESSORS)
SPLITS = ("train", "valid", "test")
# 1/propensity is clipped here before self-normalisation: a 1 % propensity must not make one
# attempt weigh as much as a hundred.
WEIGHT_CLIP = 20.0


@dataclass
class ModelData:
    """Arrays one model family trains or is evaluated on (one row per labelled attempt)."""

    X: np.ndarray  # float32 (n, d)
    processor_idx: np.ndarray  # int64 (n,), index into catalog.PROCESSORS
    y: np.ndarray  # float32 (n,), 1 = approved
    weight: np.ndarray  # float32 (n,), 1 unless importance weighting is on
    split: np.ndarray  # object (n,), train / valid / test
    feature_names: list[str] = field(default_factory=list)
    propensity: np.ndarray | None = None  # float64 (n,), logged propensity of the chosen processor
    experiment: np.ndarray | None = None  # bool (n,), row was routed by the randomized experiment arm
    eligible: np.ndarray | None = None  # bool (n, P), processors the router could have chosen
    # per COLUMN, not per row: raw units per encoded unit (the encoder's std for standardised
    # numeric columns, NaN for indicators and one-hots). None: X is in raw units (synthetic data).
    feature_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        for name in ("X", "processor_idx", "weight", "split"):
            if len(getattr(self, name)) != n:
                raise DataCheckError(f"ModelData.{name} has {len(getattr(self, name))} rows, y has {n}; build all arrays from one frame")
        if self.X.ndim != 2:
            raise DataCheckError(f"ModelData.X must be 2-D (n, d), got shape {self.X.shape}")
        if n and (self.processor_idx.min() < 0 or self.processor_idx.max() >= P):
            raise DataCheckError(f"processor_idx outside 0..{P - 1}; use catalog.PROCESSOR_INDEX")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def subset(self, mask: np.ndarray) -> "ModelData":
        """Rows where ``mask`` is true (a boolean mask or an index array).

        Rows that form one contiguous run (a time split of a time-sorted table) come back as views
        of these arrays, not copies: on the default world that saves a second 1.2 GB copy of X when
        train_all splits it. The arrays of a ModelData are never written in place, so sharing is safe.
        """
        rows = _contiguous(mask, len(self))
        sel = mask if rows is None else rows
        opt = lambda a: None if a is None else a[sel]  # noqa: E731
        return replace(
            self,
            X=self.X[sel],
            processor_idx=self.processor_idx[sel],
            y=self.y[sel],
            weight=self.weight[sel],
            split=self.split[sel],
            propensity=opt(self.propensity),
            experiment=opt(self.experiment),
            eligible=opt(self.eligible),
        )

    def part(self, name: str) -> "ModelData":
        """The rows of one split (train / valid / test)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.subset(self.split == name)

    def head_counts(self) -> np.ndarray:
        """Rows per processor head, shape (P,)."""
        return np.bincount(self.processor_idx, minlength=P)

    def head_positives(self) -> np.ndarray:
        """Approved rows per processor head, shape (P,)."""
        return np.bincount(self.processor_idx, weights=self.y, minlength=P)


def _contiguous(mask: np.ndarray, n: int) -> slice | None:
    """``slice(start, stop)`` when ``mask`` (boolean of length n, or indices) picks exactly the rows start..stop-1 in order."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        if len(mask) != n:
            return None  # let numpy raise its own error for a mask of the wrong length
        idx = np.flatnonzero(mask)
    elif mask.ndim == 1 and np.issubdtype(mask.dtype, np.integer):
        idx = mask
    else:
        return None
    if len(idx) == 0 or idx[0] < 0 or idx[-1] >= n:
        return None
    if idx[-1] - idx[0] + 1 != len(idx) or (len(idx) > 1 and not np.all(np.diff(idx) == 1)):
        return None
    return slice(int(idx[0]), int(idx[-1]) + 1)


def importance_weights(propensity: np.ndarray, processor_idx: np.ndarray, clip: float = WEIGHT_CLIP) -> np.ndarray:
    """w = 1/propensity clipped to [1, clip], self-normalised to mean 1 within each processor's rows.

    Normalising per processor keeps each head's effective sample size and loss scale; only the
    balance between its segments changes (rarely-routed segments weigh more).
    """
    prop = np.asarray(propensity, dtype=np.float64)
    prop = np.where(np.isfinite(prop) & (prop > 0), prop, 1.0)
    w = np.clip(1.0 / prop, 1.0, clip)
    out = np.empty_like(w)
    for p in range(P):
        m = processor_idx == p
        if m.any():
            out[m] = w[m] / w[m].mean()
    return out.astype(np.float32)


def _parse_candidates(value: Any) -> list[str] | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    try:
        return [str(v) for v in value]
    except TypeError:
        return None


def eligibility_matrix(frame: Any) -> np.ndarray:
    """(n, P) bool: hard-rule eligibility (catalog.eligible_processors) ∩ logged CANDIDATES when present."""
    n = len(frame)
    out = np.zeros((n, P), dtype=bool)
    brands = frame["CARD_BRAND"].astype(str).to_numpy() if "CARD_BRAND" in frame else np.array(["VISA"] * n)
    curr = frame["CURRENCY"].astype(str).to_numpy() if "CURRENCY" in frame else np.array(["MXN"] * n)
    cands = frame["CANDIDATES"].to_numpy() if "CANDIDATES" in frame else [None] * n
    cache: dict[tuple[str, str], list[int]] = {}
    for i in range(n):
        key = (brands[i], curr[i])
        if key not in cache:
            cache[key] = [catalog.PROCESSOR_INDEX[p] for p in catalog.eligible_processors(*key)]
        idx = cache[key]
        c = _parse_candidates(cands[i])
        if c is not None:
            idx = [j for j in idx if catalog.PROCESSORS[j] in c]
        out[i, idx] = True
    return out


def from_frame(frame: Any, encoder: Any, *, importance_weighting: bool = False, clip: float = WEIGHT_CLIP) -> ModelData:
    """Build ModelData from a training table (H4's layout) and a fitted FeatureEncoder."""
    missing = [c for c in ("PROCESSOR", "APPROVED", "SPLIT") if c not in frame.columns]
    if missing:
        raise DataCheckError(f"training table lacks column(s) {missing}; build it with features.build_training_table + time_split")
    unknown = sorted(set(frame["PROCESSOR"].astype(str)) - set(catalog.PROCESSORS))
    if unknown:
        raise DataCheckError(f"training table has processors {unknown} not in catalog.PROCESSORS; add them to the catalog")
    proc = frame["PROCESSOR"].astype(str).map(catalog.PROCESSOR_INDEX).to_numpy(dtype=np.int64)
    y = frame["APPROVED"].to_numpy(dtype=np.float32)
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataCheckError("APPROVED must be 0/1 (PROCESSING rows excluded); use checks.labelled on the frame first")
    prop = frame["PROPENSITY"].to_numpy(dtype=np.float64) if "PROPENSITY" in frame else None
    weight = (
        importance_weights(prop, proc, clip) if importance_weighting and prop is not None else np.ones(len(frame), np.float32)
    )
    experiment = None
    if "EXPERIMENT_ARM" in frame:
        experiment = frame["EXPERIMENT_ARM"].astype(str).str.upper().eq("EXPERIMENT").to_numpy()
    X = np.ascontiguousarray(encoder.transform(frame), dtype=np.float32)
    return ModelData(
        X=X,
        processor_idx=proc,
        y=y,
        weight=weight,
        split=frame["SPLIT"].astype(str).to_numpy(dtype=object),
        feature_names=list(encoder.feature_names),
        propensity=prop,
        experiment=experiment,
        eligible=eligibility_matrix(frame),
        feature_scale=encoded_scale(encoder),
    )


# what from_frame reads besides the encoder's inputs (the ones the table has)
_FRAME_COLUMNS = ("PROCESSOR", "APPROVED", "SPLIT", "PROPENSITY", "EXPERIMENT_ARM", "CARD_BRAND", "CURRENCY", "CANDIDATES")


def from_table(path: Any, encoder: Any, *, max_rows: Mapping[str, int | None] | None = None, seed: int = 0,
               importance_weighting: bool = False, clip: float = WEIGHT_CLIP, batch_rows: int = 250_000) -> ModelData:
    """ModelData of the feature table on disk (``features.write_training_table``), encoded batch by batch.

    Only the encoded rows are ever whole in memory: each batch of the table is read, encoded into its
    rows of a preallocated X and dropped, so the peak is X plus one batch, whatever the history's length.
    ``max_rows``: {split: cap} keeps a seeded uniform sample of that split (``features.iter_sample``:
    the rows ``from_frame`` + a seeded subset would keep). Splits come in time order (train, valid, test),
    as in the table.
    """
    from smartrouter import features

    caps = dict(max_rows or {})
    schema = features.table_dataset(path).schema.names
    missing = [c for c in ("PROCESSOR", "APPROVED", "SPLIT") if c not in schema]
    if missing:
        raise DataCheckError(f"feature table {path} lacks column(s) {missing}; rebuild it with the features stage")
    columns = list(dict.fromkeys([*encoder.input_columns, *(c for c in _FRAME_COLUMNS if c in schema)]))
    counts = features.value_counts(path, "SPLIT")
    sizes = {s: min(int(counts.get(s, 0)), int(caps.get(s) or counts.get(s, 0))) for s in SPLITS}
    n = sum(sizes.values())
    X = np.empty((n, encoder.dim), dtype=np.float32)
    fields = ("processor_idx", "y", "split", "propensity", "experiment", "eligible")
    pieces: dict[str, list[Any]] = {f: [] for f in fields}
    pos = 0
    for split in SPLITS:
        for batch in features.iter_sample(path, max_rows=caps.get(split) or None, seed=seed, columns=columns,
                                          filter=features.split_is(split), batch_rows=batch_rows):
            part = from_frame(batch, encoder)
            X[pos:pos + len(part)] = part.X
            pos += len(part)
            for f in fields:  # every array but X (copied above); the batch's X goes with ``part``
                pieces[f].append(getattr(part, f))
    if pos != n:
        raise DataCheckError(f"feature table {path} changed while it was read ({pos} rows, {n} counted); rerun the stage")
    if n == 0:
        raise DataCheckError(f"feature table {path} has no rows; rebuild it with the features stage")

    def joined(f: str) -> Any:
        arrays = pieces[f]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    proc, prop = joined("processor_idx"), joined("propensity")
    weight = (importance_weights(prop, proc, clip) if importance_weighting and prop is not None
              else np.ones(n, np.float32))
    return ModelData(
        X=X,
        processor_idx=proc,
        y=joined("y"),
        weight=weight,
        split=joined("split"),
        feature_names=list(encoder.feature_names),
        propensity=prop,
        experiment=joined("experiment"),
        eligible=joined("eligible"),
        feature_scale=encoded_scale(encoder),
    )


def encoded_scale(encoder: Any) -> np.ndarray | None:
    """Raw units per encoded unit of every encoder output column (NaN where no single scale applies).

    A standardised numeric column ``z = (f(x) - mean) / std`` moves by ``1/std`` per raw unit when
    ``f`` is the identity, so its scale is ``std``; log1p columns, indicators and one-hots get NaN.
    Linear models need it to state constraints in the features' own units (see monotone_columns).
    """
    columns = getattr(encoder, "columns", None)
    if columns is None:
        return None
    pos = {n: i for i, n in enumerate(encoder.feature_names)}
    out = np.full(len(encoder.feature_names), np.nan)
    for c in columns:
        if c.get("kind") == "numeric" and c.get("transform", "none") == "none" and c["name"] in pos:
            out[pos[c["name"]]] = float(c["std"]) if float(c.get("std") or 0) > 0 else np.nan
    return out


# ------------------------------------------------------------------ per-processor feature groups
def per_processor_groups(feature_names: list[str]) -> dict[str, list[int]]:
    """Feature stems that exist once for every processor: {stem: [column index per processor]}.

    A stem is the feature name with the processor's name replaced by ``{P}`` (e.g.
    ``HEALTH_TIMEOUT_RATE_1H_{P}``). Names where only some processors appear (``CARD_BRAND=AMEX``,
    ``MCI_MSI_TYPE=MIT``) are not groups, so the message type and the Amex brand are never mistaken
    for processors.
    """
    tokens = "|".join(sorted(catalog.PROCESSORS, key=len, reverse=True))
    pat = re.compile(rf"(?<![A-Z0-9])({tokens})(?![A-Z0-9])")
    groups: dict[str, dict[str, int]] = {}
    for j, name in enumerate(feature_names):
        found = pat.findall(name.upper())
        if len(found) != 1:
            continue
        stem = pat.sub("{P}", name.upper())
        groups.setdefault(stem, {})
        if found[0] in groups[stem]:
            groups[stem][found[0]] = -1  # ambiguous: the same processor twice under one stem
        else:
            groups[stem][found[0]] = j
    return {
        stem: [g[p] for p in catalog.PROCESSORS]
        for stem, g in sorted(groups.items())
        if len(g) == P and all(v >= 0 for v in g.values())
    }


def processor_feature_columns(feature_names: list[str]) -> dict[str, list[int]]:
    """Encoded columns of each processor's own features (health, BIN history; missing indicators too).

    From the one feature definition (``features.Feature.per_processor``), not from name patterns, so
    a payment column that merely names a processor (``PREVIOUS_PROCESSOR=MIT``) is not one of them.
    """
    from smartrouter import features

    out: dict[str, list[int]] = {p: [] for p in catalog.PROCESSORS}
    for j, name in enumerate(feature_names):
        f = features.FEATURES_BY_NAME.get(name.split("__")[0])
        if f is not None and f.per_processor and f.processor in out:
            out[f.processor].append(j)
    return out


# ------------------------------------------------------------------ sign-constrained inputs
NEGATIVE_METRIC = "TIMEOUT_RATE"  # timeouts + processor errors (features.outcome_kind): never good news
TRIPLE_METRICS = ("APPROVAL_RATE", "TIMEOUT_RATE", "DECLINE_RATE")  # shares of one window's outcomes, summing to 1


@dataclass(frozen=True)
class MonotoneColumns:
    """Inputs whose effect on every score has a known direction; the one definition all families use.

    ``negative``: every processor's recent timeout/processor-error rate, in every health window.
    No score may rise with any of them (XGBoost: monotone constraints; logistic and the DNN's
    linear path: weights bounded at <= 0).
    ``triples``: (approval, timeout, decline) rate columns of one processor and window, with each
    column's raw-unit scale. The three are shares of the same outcomes, so a burst of timeouts in
    the online state moves share from approvals and declines to timeouts; linear models keep the
    timeout weight at or below both others (in raw units), so such a move can never raise a score.
    A triple whose scales are unknown is left out (its timeout column stays in ``negative``).
    """

    negative: tuple[int, ...] = ()
    triples: tuple[tuple[int, int, int], ...] = ()
    triple_scales: tuple[tuple[float, float, float], ...] = ()

    @property
    def columns(self) -> list[int]:
        """Every constrained column (they enter the DNN through its linear path only)."""
        return sorted(set(self.negative) | {j for t in self.triples for j in t})


def monotone_columns(feature_names: list[str], feature_scale: np.ndarray | None = None) -> MonotoneColumns:
    """The sign-constrained columns of an encoded feature vector (see MonotoneColumns).

    Column names come from ``features.health_column``, the single definition of the health
    features; ``feature_scale`` is ``ModelData.feature_scale`` (None: X is in raw units).
    """
    from smartrouter import features

    pos = {n: i for i, n in enumerate(feature_names)}
    negative, triples, scales = [], [], []
    for proc in catalog.PROCESSORS:
        for win in features.HEALTH_WINDOWS:
            timeout = pos.get(features.health_column(proc, win, NEGATIVE_METRIC))
            if timeout is None:
                continue
            negative.append(timeout)
            cols = [pos.get(features.health_column(proc, win, m)) for m in TRIPLE_METRICS]
            if any(c is None for c in cols):
                continue
            sc = [1.0] * 3 if feature_scale is None else [float(feature_scale[c]) for c in cols]
            if all(np.isfinite(v) and v > 0 for v in sc):
                triples.append(tuple(cols))
                scales.append(tuple(sc))
    return MonotoneColumns(tuple(negative), tuple(triples), tuple(scales))  # type: ignore[arg-type]


def synthetic(n: int = 20_000, d: int = 24, seed: int = 0, *, late_processor_rows: int = 150) -> ModelData:
    """A synthetic ModelData with per-processor effects and per-processor health rates (tests, benches).

    Columns: ``d`` generic features, then for each processor its 1-hour approval, timeout and
    decline rates (``features.health_column`` names; the three sum to 1), in raw units. The
    approval falls with the logged processor's timeout rate. The last processor (ADYEN) gets
    only ``late_processor_rows`` rows, like a late joiner.
    """
    from smartrouter import features

    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(n, d)).astype(np.float32)
    timeouts = rng.beta(1, 30, size=(n, P))
    approvals = (1 - timeouts) * rng.beta(16, 3, size=(n, P))
    declines = 1 - timeouts - approvals
    health = np.stack([approvals, timeouts, declines], axis=2).reshape(n, 3 * P).astype(np.float32)
    X = np.hstack([X0, health])
    names = [f"F{j}" for j in range(d)]
    names += [features.health_column(p, "1H", m) for p in catalog.PROCESSORS for m in TRIPLE_METRICS]
    share = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    proc = rng.choice(P, size=n, p=share)
    late = rng.choice(n, size=min(late_processor_rows, n), replace=False)
    proc[late] = P - 1
    base = rng.normal(scale=0.6, size=(d,))
    per = rng.normal(scale=0.5, size=(P, d))
    bias = np.array([1.6, 1.2, 1.4, 1.8, 1.3])
    logit = X0 @ base + np.einsum("nd,nd->n", X0, per[proc]) + bias[proc] - 12.0 * timeouts[np.arange(n), proc]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    cut = np.array(["train"] * n, dtype=object)
    cut[int(n * 0.7) : int(n * 0.85)] = "valid"
    cut[int(n * 0.85) :] = "test"
    prop = np.where(rng.random(n) < 0.1, 0.25, 1.0)
    elig = np.ones((n, P), bool)
    return ModelData(X, proc.astype(np.int64), y, np.ones(n, np.float32), cut, names, prop, prop < 1, elig)


class PassthroughEncoder:
    """An encoder whose payment dict already holds the encoded features by name (synthetic data, benches).

    The real one is ``smartrouter.encoder.FeatureEncoder``; this stand-in has the same serving
    surface (``feature_names``, ``encode_payment``, ``transform``, ``to_spec``/``from_spec``).
    """

    KIND = "passthrough"

    def __init__(self, feature_names: list[str]) -> None:
        self.feature_names = list(feature_names)
        self._pos = {n: i for i, n in enumerate(self.feature_names)}

    def encode_payment(self, payment: dict[str, Any]) -> np.ndarray:
        """Vector of the named values (missing or None → 0.0)."""
        x = np.zeros(len(self.feature_names), dtype=np.float32)
        for k, v in payment.items():
            i = self._pos.get(k)
            if i is not None and v is not None:
                x[i] = v
        return x

    def transform(self, frame: Any) -> np.ndarray:
        """The named columns of a frame as float32."""
        return frame[self.feature_names].to_numpy(dtype=np.float32)

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.KIND, "feature_names": self.feature_names}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "PassthroughEncoder":
        return cls(list(spec["feature_names"]))
