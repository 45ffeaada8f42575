"""The one feature encoder shared by training and serving.

Fitted on the training split, saved as a plain JSON spec beside the model, and rebuilt in the
service without pandas: ``transform(frame)`` (vectorized, training) and ``encode_payment(dict)``
(one payment, dicts/lists/math only) give the same vector (a test checks 10,000 rows).

Encoding per feature (smartrouter.features.MODEL_FEATURES is the list: every feature marked model_input):
- numeric: optional log1p (of max(x, 0)), missing -> the training mean, then standardized;
  a 0/1 missing indicator column when the training data had missing values;
- categorical "onehot": vocabulary of values seen >= min_count times in training (missing is the
  value ``__MISSING__``), everything else -> ``__UNKNOWN__``;
- categorical "hash" (CARD_BIN): crc32 of the value into K one-hot buckets (stable across
  processes); the BIN's real signal comes from the smoothed BIN x processor history features.
The processor is NOT an input: models score every processor from one vector.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from smartrouter import atomic
from smartrouter.errors import ArtifactError

ENCODER_FORMAT = "smartrouter.feature_encoder"
ENCODER_VERSION = 1
MISSING = "__MISSING__"
UNKNOWN = "__UNKNOWN__"
DEFAULT_MIN_COUNT = 20
DEFAULT_HASH_BUCKETS = 64


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return v != v  # NaN, NaT, pd.NA-like
    except (TypeError, ValueError):
        return False


def _category(v: Any) -> str:
    """The string a categorical value is looked up by (missing -> MISSING)."""
    if _is_missing(v):
        return MISSING
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _number(v: Any) -> float:
    if _is_missing(v):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


_derived: tuple | None = None  # (features.DERIVED_COLUMNS, features.derive_row), imported on first use


def _hash_bucket(value: str, buckets: int) -> int:
    return zlib.crc32(value.encode("utf-8")) % buckets


def _checksum(spec: Mapping[str, Any]) -> str:
    body = {k: v for k, v in spec.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class FeatureEncoder:
    """Feature dicts / frames -> float32 vectors; see the module docstring for the encoding."""

    def __init__(self, columns: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> None:
        self.columns = [dict(c) for c in columns]
        self.meta = dict(meta or {})
        names: list[str] = []
        self._offsets: list[int] = []
        for c in self.columns:
            self._offsets.append(len(names))
            names.extend(self._output_names(c))
        self.feature_names: list[str] = names
        self.dim = len(names)
        # per-column lookups, precomputed once for the per-payment path
        self._lookups: list[dict[str, int]] = [
            {v: i for i, v in enumerate(c["vocabulary"])} if c.get("encoding") == "onehot" else {} for c in self.columns
        ]
        # per-payment plan: numeric columns with log1p first (a slice, not a mask, selects them)
        num = [(c, off) for c, off in zip(self.columns, self._offsets) if c["kind"] == "numeric"]
        num.sort(key=lambda co: co[0]["transform"] != "log1p")
        self._num_names = [c["name"] for c, _ in num]
        self._num_offsets = np.array([off for _, off in num], dtype=np.int64)
        # missing indicators as two index arrays (which x entries have one, where it goes in the output),
        # so encode_payment sets them with one fancy assignment instead of a Python loop over every column
        self._num_ind_src = np.array([j for j, (c, _) in enumerate(num) if c["missing_indicator"]], dtype=np.int64)
        self._num_ind_dst = np.array([off + 1 for c, off in num if c["missing_indicator"]], dtype=np.int64)
        self._num_log = sum(c["transform"] == "log1p" for c, _ in num)
        self._num_zeros = np.zeros(self._num_log, dtype=np.float64)
        self._num_mean = np.array([c["mean"] for c, _ in num], dtype=np.float64)
        self._num_std = np.array([c["std"] for c, _ in num], dtype=np.float64)
        # (name, offset, vocabulary lookup or None for hashing, unknown index or bucket count)
        self._cat_plan = [
            (c["name"], off, lk, len(c["vocabulary"])) if c["encoding"] == "onehot" else (c["name"], off, None, c["buckets"])
            for c, off, lk in zip(self.columns, self._offsets, self._lookups) if c["kind"] == "categorical"
        ]

    # ------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        train_frame: Any,
        feature_defs: Iterable[Any] | None = None,
        *,
        min_count: int = DEFAULT_MIN_COUNT,
        hash_buckets: int = DEFAULT_HASH_BUCKETS,
    ) -> "FeatureEncoder":
        """Learn vocabularies and scaling from the training rows (pass only the train split)."""
        from smartrouter import features

        defs = list(feature_defs if feature_defs is not None else features.MODEL_FEATURES)
        missing = [f.name for f in defs if f.name not in train_frame.columns]
        if missing:
            raise ArtifactError(f"cannot fit the encoder: the frame lacks feature columns {missing[:5]}; "
                                "build it with features.build_training_table")
        if len(train_frame) == 0:
            raise ArtifactError("cannot fit the encoder on an empty frame; pass the training split")
        columns: list[dict[str, Any]] = []
        for f in defs:
            col = train_frame[f.name]
            spec: dict[str, Any] = {"name": f.name, "kind": f.kind, "group": f.group,
                                    "processor": f.processor}
            if f.kind == "numeric":
                x = cls._numeric_array(col, f.transform)
                ok = ~np.isnan(x)
                mean = float(x[ok].mean()) if ok.any() else 0.0
                std = float(x[ok].std()) if ok.sum() > 1 else 1.0
                spec.update(transform=f.transform, mean=mean, std=std if std > 1e-12 else 1.0,
                            missing_indicator=bool((~ok).any()))
            elif f.encoding == "hash":
                spec.update(encoding="hash", buckets=int(hash_buckets))
            else:
                values: dict[str, int] = {}
                for v, n in col.value_counts(dropna=False).items():  # distinct values only
                    values[_category(v)] = values.get(_category(v), 0) + int(n)
                vocab = sorted((v for v, n in values.items() if n >= min_count), key=lambda v: (-values[v], v))
                spec.update(encoding="onehot", vocabulary=[v for v in vocab if v != UNKNOWN])
            columns.append(spec)
        meta = {"n_train_rows": int(len(train_frame)), "min_count": int(min_count)}
        return cls(columns, meta)

    @staticmethod
    def _numeric_array(col: Any, transform: str) -> np.ndarray:
        import pandas as pd

        if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            x = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:  # object columns (e.g. booleans with None): the same per-value rule as encode_payment
            x = np.array([_number(v) for v in col.astype(object)], dtype=np.float64)
        if transform == "log1p":
            x = np.log1p(np.maximum(x, 0.0))
        return x

    @staticmethod
    def _output_names(c: Mapping[str, Any]) -> list[str]:
        name = c["name"]
        if c["kind"] == "numeric":
            return [name] + ([f"{name}__MISSING"] if c["missing_indicator"] else [])
        if c["encoding"] == "hash":
            return [f"{name}#{k}" for k in range(c["buckets"])]
        return [f"{name}={v}" for v in c["vocabulary"]] + [f"{name}={UNKNOWN}"]

    @property
    def input_columns(self) -> list[str]:
        """Raw feature column names the encoder reads."""
        return [c["name"] for c in self.columns]

    # ------------------------------------------------------------ encode
    def transform(self, frame: Any) -> np.ndarray:
        """Vectorized encoding of a frame with the feature columns -> float32 (n, d)."""
        import pandas as pd

        missing = [c["name"] for c in self.columns if c["name"] not in frame.columns]
        if missing:
            raise ArtifactError(f"frame lacks encoder input columns {missing[:5]}; build it with features.build_training_table")
        n = len(frame)
        out = np.zeros((n, self.dim), dtype=np.float32)
        rows = np.arange(n)
        for c, off, lookup in zip(self.columns, self._offsets, self._lookups):
            col = frame[c["name"]]
            if c["kind"] == "numeric":
                x = self._numeric_array(col, c["transform"])
                miss = np.isnan(x)
                z = (np.where(miss, c["mean"], x) - c["mean"]) / c["std"]
                out[:, off] = z
                if c["missing_indicator"]:
                    out[:, off + 1] = miss
            else:
                # factorize (hash-based) then map each distinct value once, with the same
                # _category rule as encode_payment; None and NaN are both MISSING
                codes, uniques = pd.factorize(col, use_na_sentinel=True)
                if c["encoding"] == "hash":
                    index_of = lambda v: _hash_bucket(v, c["buckets"])  # noqa: E731
                else:
                    index_of = lambda v: lookup.get(v, len(c["vocabulary"]))  # noqa: E731
                idx = np.array([index_of(_category(u)) for u in uniques] + [index_of(MISSING)], dtype=np.int64)
                out[rows, off + idx[codes]] = 1.0  # code -1 (missing) takes the last entry
        return out

    def encode_payment(self, payment: Mapping[str, Any]) -> np.ndarray:
        """One payment's vector (d,) float32 from a dict keyed by raw feature column names.

        Pandas-free, for the service. Missing keys count as missing values (like NaN in
        training); derived features (hour, domestic, hard/soft) are computed when absent.
        """
        global _derived
        if _derived is None:  # smartrouter.features imports pandas: only when first needed
            from smartrouter.features import DERIVED_COLUMNS, derive_row

            _derived = (frozenset(DERIVED_COLUMNS), derive_row)
        columns, derive = _derived
        if not payment.keys() >= columns:
            payment = {**derive(payment), **payment}
        get = payment.get
        # numeric block: the same numpy operations as transform(), on one row. Absent keys count as
        # missing; np.array turns None into NaN and bools into 0/1.
        raw = [get(n) for n in self._num_names]
        try:
            x = np.array(raw, dtype=np.float64)
        except (TypeError, ValueError):
            x = np.array([_number(v) for v in raw], dtype=np.float64)
        # in-place ufuncs on preallocated operands: on an 83-element row each numpy call costs more
        # than its arithmetic, so temporaries and scalar operands are avoided (same values as transform)
        k = self._num_log
        if k:
            xk = x[:k]
            np.maximum(xk, self._num_zeros, out=xk)  # NaN stays NaN
            np.log1p(xk, out=xk)
        miss = np.isnan(x)
        out = np.zeros(self.dim, dtype=np.float32)
        if np.count_nonzero(miss):  # missing -> the training mean (as transform's np.where does)
            np.copyto(x, self._num_mean, where=miss)
            out[self._num_ind_dst[miss[self._num_ind_src]]] = 1.0
        np.subtract(x, self._num_mean, out=x)
        np.divide(x, self._num_std, out=x)
        out[self._num_offsets] = x
        for name, off, lookup, unk in self._cat_plan:
            v = get(name)
            key = v if type(v) is str else _category(v)
            out[off + (_hash_bucket(key, unk) if lookup is None else lookup.get(key, unk))] = 1.0
        return out

    # ------------------------------------------------------------ spec
    def to_spec(self) -> dict[str, Any]:
        """Plain-JSON spec: format, version, columns, meta and a sha256 checksum of the rest."""
        spec = {
            "format": ENCODER_FORMAT,
            "version": ENCODER_VERSION,
            "dim": self.dim,
            "columns": copy.deepcopy(self.columns),
            "meta": copy.deepcopy(self.meta),
        }
        spec["checksum"] = _checksum(spec)
        return spec

    @classmethod
    def from_spec(cls, spec: Any, *, source: str = "encoder spec") -> "FeatureEncoder":
        """Rebuild from ``to_spec()`` output; anything malformed -> ArtifactError naming what is wrong."""

        def bad(why: str) -> ArtifactError:
            return ArtifactError(f"{source}: {why}; re-export the encoder with FeatureEncoder.to_spec()")

        if not isinstance(spec, Mapping):
            raise bad(f"expected a JSON object, got {type(spec).__name__}")
        if spec.get("format") != ENCODER_FORMAT:
            raise bad(f"format is {spec.get('format')!r}, expected {ENCODER_FORMAT!r}")
        if spec.get("version") != ENCODER_VERSION:
            raise bad(f"version {spec.get('version')!r} is not supported (this code reads version {ENCODER_VERSION})")
        if "checksum" not in spec:
            raise bad("checksum is missing")
        if spec["checksum"] != _checksum(spec):
            raise bad("checksum does not match the content (the file was edited or truncated)")
        columns = spec.get("columns")
        if not isinstance(columns, list) or not columns:
            raise bad("'columns' must be a non-empty list")
        seen: set[str] = set()
        for i, c in enumerate(columns):
            where = f"column {i} ({c.get('name') if isinstance(c, Mapping) else '?'})"
            if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
                raise bad(f"{where} has no name")
            if c["name"] in seen:
                raise bad(f"{where} is duplicated")
            seen.add(c["name"])
            kind = c.get("kind")
            if kind == "numeric":
                for key in ("mean", "std"):
                    if not isinstance(c.get(key), (int, float)) or not math.isfinite(c[key]):
                        raise bad(f"{where}: '{key}' must be a finite number")
                if c["std"] <= 0:
                    raise bad(f"{where}: 'std' must be positive")
                if c.get("transform") not in ("none", "log1p"):
                    raise bad(f"{where}: unknown transform {c.get('transform')!r}")
                if not isinstance(c.get("missing_indicator"), bool):
                    raise bad(f"{where}: 'missing_indicator' must be true/false")
            elif kind == "categorical":
                enc = c.get("encoding")
                if enc == "hash":
                    if not isinstance(c.get("buckets"), int) or c["buckets"] <= 0:
                        raise bad(f"{where}: 'buckets' must be a positive integer")
                elif enc == "onehot":
                    vocab = c.get("vocabulary")
                    if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab) or len(set(vocab)) != len(vocab):
                        raise bad(f"{where}: 'vocabulary' must be a list of distinct strings")
                else:
                    raise bad(f"{where}: unknown encoding {enc!r}")
            else:
                raise bad(f"{where}: unknown kind {kind!r}")
        enc = cls(columns, spec.get("meta") or {})
        if spec.get("dim") != enc.dim:
            raise bad(f"'dim' says {spec.get('dim')} but the columns give {enc.dim}")
        return enc

    def save(self, path: Any) -> None:
        """Write the spec as JSON atomically (temp file then os.replace)."""
        from pathlib import Path

        atomic.write_json(Path(path), self.to_spec(), indent=1, sort_keys=True, trailing_newline=False)

    @classmethod
    def load(cls, path: Any) -> "FeatureEncoder":
        """Read a spec written by save(); a missing or unreadable file -> ArtifactError naming it."""
        from pathlib import Path

        p = Path(path)
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{p}: encoder spec not found; train a model (or copy encoder.json) first") from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{p}: not a readable JSON encoder spec ({exc}); re-export it") from None
        return cls.from_spec(spec, source=str(p))
