"""A compact, pickle-free file for handing a result from one stage to the next (04_evaluate -> 05_gate).

Why not pickle: a pickle of the whole ``RunEvaluation`` was ~170 MB on the default world (every frame
with every column as Python objects, the same arrays many times over), runs code on load, and breaks
silently when a class changes between the two stages. This format is one zip file, written atomically:

    meta.json              {"format", "version", "root": <the value as JSON, arrays/frames by reference>}
    arrays/<sha256>.npy    each distinct numpy array once (content-addressed: the many identical
                           per-row "ones" denominators and shared outcome-model matrices are stored once),
                           deflate-compressed; never an object array (no pickle inside either)
    frames/<sha256>.parquet  each DataFrame as zstd parquet (dtypes, categories and index kept)

A value may also name **derived** fields (``derived={"first": fn, "values.terms": fn, ...}``, dotted paths
from the root, computed in order from the fields already loaded): at save time each one is computed and
compared with the value's own, and only when they are *exactly* equal is the field left out of the file
and recomputed on load (so the file is never lossy; a derivation that stops matching just stores the field).

The value is walked generically: dataclasses (only ``smartrouter.*`` classes are re-created on load),
dicts (string or tuple keys), lists, tuples, numpy arrays and scalars, pandas frames and series, and
plain JSON values. A field someone adds to ``RunEvaluation`` travels without touching this module as
long as it is built from those; anything else (a set, an open model, a lambda) is refused at save time,
naming where it sits, so it never gets lost on the way to the gate.

Loading says clearly what is wrong: a missing file (run the stage that writes it), a corrupt one, a
file from an older format, or a dataclass whose fields no longer match the code (re-run the stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from smartrouter import atomic
from smartrouter.errors import ArtifactError, ConfigError

FORMAT = "smartrouter.handoff"
VERSION = 1
META = "meta.json"
_TRUSTED_PREFIX = "smartrouter."  # the only modules a dataclass is re-created from


class HandoffError(ArtifactError):
    """A hand-off file is missing, corrupt, from another format version, or does not match the code."""


class _Writer:
    def __init__(self, skip: frozenset[str] = frozenset()) -> None:
        self.arrays: dict[str, bytes] = {}
        self.frames: dict[str, bytes] = {}
        self.skip = skip  # paths ("value.<field>...") of derived fields left out of the file

    def array(self, a: np.ndarray, where: str) -> dict[str, Any]:
        restore_object = False
        if a.dtype == object:
            # object arrays of strings (pandas' usual) become fixed-width unicode: npy without pickle
            flat = a.ravel()
            if not all(isinstance(v, str) for v in flat):
                kinds = sorted({type(v).__name__ for v in flat if not isinstance(v, str)})
                raise ConfigError(f"{where} is an object array holding {', '.join(kinds)}: the hand-off stores only "
                                  "numeric, boolean or string arrays; convert it before saving")
            a = a.astype(str) if len(flat) else np.empty(a.shape, dtype="<U1")
            restore_object = True
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        data = buf.getvalue()
        key = hashlib.sha256(data).hexdigest()
        self.arrays.setdefault(key, data)
        return {"__array__": key, **({"object": True} if restore_object else {})}

    def frame(self, f: pd.DataFrame, where: str) -> dict[str, Any]:
        bad = [c for c in f.columns if not isinstance(c, str)]
        if bad:
            raise ConfigError(f"{where} has non-string column names {bad[:3]}: the hand-off stores frames as parquet; "
                              "rename the columns to strings")
        buf = io.BytesIO()
        try:
            f.to_parquet(buf, engine="pyarrow", compression="zstd", index=True)
        except Exception as exc:  # pyarrow names the column it cannot store
            raise ConfigError(f"{where} cannot be stored as parquet ({type(exc).__name__}: {exc}); "
                              "give its columns one plain type each") from None
        data = buf.getvalue()
        key = hashlib.sha256(data).hexdigest()
        self.frames.setdefault(key, data)
        return {"__frame__": key}

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
            return int(value)
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, (float, np.floating)):
            v = float(value)
            return v if math.isfinite(v) else {"__float__": repr(v)}  # JSON has no NaN/inf
        if isinstance(value, np.ndarray):
            return self.array(value, where)
        if isinstance(value, pd.DataFrame):
            return self.frame(value, where)
        if isinstance(value, pd.Series):
            name = value.name if isinstance(value.name, str) else "__series__"
            return {"__series__": self.frame(value.to_frame(name), where)["__frame__"], "name": value.name
                    if value.name is None or isinstance(value.name, (str, int, float)) else str(value.name)}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            cls = type(value)
            fields = {f.name: ({"__derived__": True} if f"{where}.{f.name}" in self.skip
                               else self.encode(getattr(value, f.name), f"{where}.{f.name}"))
                      for f in dataclasses.fields(value)}
            return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"__dict__": {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
            return {"__items__": [[self.encode(k, f"{where} key {k!r}"), self.encode(v, f"{where}[{k!r}]")]
                                  for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"{where} is a {type(value).__module__}.{type(value).__name__}, which the hand-off cannot "
                          "store (numbers, strings, arrays, frames, dicts, lists, tuples and smartrouter dataclasses "
                          "only); convert it to one of those before saving")


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set(root: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        root = getattr(root, part)
    object.__setattr__(root, last, value)


def same(a: Any, b: Any) -> bool:
    """Exact equality of hand-off values (arrays bit for bit, NaN equal to NaN; frames with dtypes and index)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (pd.DataFrame, pd.Series)) or isinstance(b, (pd.DataFrame, pd.Series)):
        def dtypes(x: Any) -> list[Any]:
            return list(x.dtypes) if isinstance(x, pd.DataFrame) else [x.dtype]

        return type(a) is type(b) and a.equals(b) and dtypes(a) == dtypes(b) and a.index.equals(b.index) \
            and list(a.columns if isinstance(a, pd.DataFrame) else [a.name]) == list(b.columns if isinstance(b, pd.DataFrame) else [b.name])
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _derives(fn: Callable[[Any], Any], value: Any, path: str) -> bool:
    try:
        return same(fn(value), _get(value, path))
    except Exception:  # noqa: BLE001 - a derivation that no longer fits the value: store the field itself
        return False


def save(value: Any, path: str | Path, derived: Mapping[str, Callable[[Any], Any]] | None = None) -> Path:
    """Write ``value`` to ``path`` as a hand-off file (atomically: a reader sees the old file or the new one).

    ``derived``: dotted field paths -> how to recompute them from ``value``; a field is left out only
    when its recomputation equals it exactly (see the module docstring). ``load`` needs the same map.
    """
    skip = [p for p, fn in (derived or {}).items() if _derives(fn, value, p)]
    w = _Writer(frozenset(f"value.{p}" for p in skip))
    root = w.encode(value, "value")
    meta = {"format": FORMAT, "version": VERSION, "derived": skip, "root": root}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(META, json.dumps(meta, separators=(",", ":")), compress_type=zipfile.ZIP_DEFLATED)
        for key, data in w.arrays.items():
            z.writestr(f"arrays/{key}.npy", data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
        for key, data in w.frames.items():  # parquet is compressed already
            z.writestr(f"frames/{key}.parquet", data, compress_type=zipfile.ZIP_STORED)
    return atomic.write_bytes(Path(path), buf.getvalue())


class _Reader:
    def __init__(self, z: zipfile.ZipFile, path: Path, fix: str) -> None:
        self.z, self.path, self.fix = z, path, fix
        self.arrays: dict[str, np.ndarray] = {}

    def _entry(self, name: str) -> bytes:
        try:
            return self.z.read(name)
        except KeyError:
            raise HandoffError(f"{self.path} is incomplete: {name} is missing; {self.fix}") from None

    def array(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            self.arrays[key] = np.load(io.BytesIO(self._entry(f"arrays/{key}.npy")), allow_pickle=False)
        return self.arrays[key].copy()  # a value may be mutated by its reader; shared storage must not leak

    def frame(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self._entry(f"frames/{key}.parquet")), engine="pyarrow")

    def decode(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            return value
        if "__derived__" in value:
            return None  # recomputed once the whole value is loaded
        if "__float__" in value:
            return float(value["__float__"])
        if "__array__" in value:
            a = self.array(value["__array__"])
            return a.astype(object) if value.get("object") else a
        if "__frame__" in value:
            return self.frame(value["__frame__"])
        if "__series__" in value:
            f = self.frame(value["__series__"])
            s = f.iloc[:, 0]
            s.name = value.get("name")
            return s
        if "__tuple__" in value:
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(value["__tuple__"]))
        if "__dict__" in value:
            return {k: self.decode(v, f"{where}[{k!r}]") for k, v in value["__dict__"].items()}
        if "__items__" in value:
            return {_hashable(self.decode(k, f"{where} key")): self.decode(v, f"{where}[...]") for k, v in value["__items__"]}
        if "__dataclass__" in value:
            return self._dataclass(value, where)
        raise HandoffError(f"{self.path}: unknown entry at {where} ({sorted(value)[:3]}); {self.fix}")

    def _dataclass(self, value: dict[str, Any], where: str) -> Any:
        name = str(value["__dataclass__"])
        module, _, qual = name.partition(":")
        if not (module + ".").startswith(_TRUSTED_PREFIX):
            raise HandoffError(f"{self.path}: {where} names class {name}, outside smartrouter; the file was not "
                               f"written by this code; {self.fix}")
        try:
            cls: Any = importlib.import_module(module)
            for part in qual.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            raise HandoffError(f"{self.path}: class {name} ({where}) no longer exists in the code; {self.fix}") from None
        if not dataclasses.is_dataclass(cls):
            raise HandoffError(f"{self.path}: {name} ({where}) is no longer a dataclass; {self.fix}")
        stored = value.get("fields") or {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        extra = sorted(set(stored) - set(known))
        missing = sorted(n for n, f in known.items() if n not in stored and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if extra or missing:
            what = "; ".join(x for x in (f"fields the code no longer has: {', '.join(extra)}" if extra else "",
                                         f"fields the file lacks: {', '.join(missing)}" if missing else "") if x)
            raise HandoffError(f"{self.path} was written by other code ({name} at {where}: {what}); {self.fix}")
        kwargs = {k: self.decode(v, f"{where}.{k}") for k, v in stored.items()}
        init = {k: v for k, v in kwargs.items() if known[k].init}
        obj = cls(**init)
        for k, v in kwargs.items():
            if not known[k].init:
                object.__setattr__(obj, k, v)
        return obj


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def load(path: str | Path, *, fix: str = "re-run the stage that wrote it",
         derived: Mapping[str, Callable[[Any], Any]] | None = None) -> Any:
    """Read a hand-off file written by ``save`` (with the same ``derived`` map); HandoffError naming the cause
    and ``fix`` when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise HandoffError(f"{path} does not exist; {fix}")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                meta = json.loads(z.read(META))
            except KeyError:
                raise HandoffError(f"{path} has no {META}: not a hand-off file; {fix}") from None
            except ValueError as exc:
                raise HandoffError(f"{path}: {META} is not JSON ({exc}); the file is corrupt; {fix}") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise HandoffError(f"{path} is not a {FORMAT} file; {fix}")
            if meta.get("version") != VERSION:
                raise HandoffError(f"{path} is format version {meta.get('version')}, this code reads version {VERSION} "
                                   f"(written by older or newer code); {fix}")
            skipped = list(meta.get("derived") or [])
            unknown = [p for p in skipped if p not in (derived or {})]
            if unknown:
                raise HandoffError(f"{path} leaves out {', '.join(unknown)} for the code to recompute, and this code "
                                   f"does not know how (written by other code); {fix}")
            value = _Reader(z, path, fix).decode(meta.get("root"), "value")
        for p in (q for q in (derived or {}) if q in skipped):  # in the map's order: later ones may use earlier
            _set(value, p, derived[p](value))
        return value
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise HandoffError(f"{path} is corrupt ({type(exc).__name__}: {exc}); {fix}") from None
    except HandoffError:
        raise
    except (ValueError, TypeError) as exc:  # a damaged npy/parquet entry that passed the zip CRC check
        raise HandoffError(f"{path} could not be read ({type(exc).__name__}: {exc}); the file is corrupt; {fix}") from None
