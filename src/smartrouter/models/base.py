"""What every approval-model family shares: uncertain-head priors, per-head calibration, export.

A family implements ``_fit_core`` (learn from ModelData), ``_head_proba`` (raw per-processor
probabilities, (n, P)), ``_global_proba`` (the processor-agnostic prediction, (n,)),
``_export_weights`` and ``global_importance``. Everything after the raw heads — the blend of
uncertain heads toward the global prediction and the per-head calibrators — is done here and in
the serving form with the same functions, which is what makes the parity test meaningful.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from smartrouter import atomic
from smartrouter import catalog
from smartrouter.models import calibration, metrics
from smartrouter.models.data import P, ModelData

FORMAT_VERSION = 1
MODEL_FILE = "model.json"
ENCODER_FILE = "encoder.json"
CHECKSUM_FILE = "checksums.json"

# A head is "uncertain" with fewer train rows than this, or fewer approvals/declines than
# MIN_CLASS; its raw prediction is shrunk toward the global one by n / (n + SHRINK_K).
MIN_ROWS = 2000
MIN_CLASS = 50
SHRINK_K = 1000.0


sha256_file = atomic.sha256_file  # one checksum definition for artifacts and the registry


# rows scored per call inside predict_raw: bounds a family's scoring copies, far above any per-call overhead
PREDICT_CHUNK_ROWS = 65_536


def canonical_json(obj: Any) -> str:
    """The JSON text every artifact is written with (sorted keys: stable checksums)."""
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False)


def blend_heads(head: np.ndarray, glob: np.ndarray | None, blend: np.ndarray) -> np.ndarray:
    """Shrink uncertain heads toward the global prediction: b·p_head + (1 - b)·p_global."""
    if glob is None or np.all(blend >= 1.0):
        return head
    return head * blend[None, :] + (1.0 - blend[None, :]) * glob[:, None]


def calibrate_heads(raw: np.ndarray, cals: list[dict[str, Any]]) -> np.ndarray:
    """Apply each head's calibrator to its column of raw probabilities."""
    out = np.empty(raw.shape, dtype=np.float64)
    for j, cal in enumerate(cals):
        out[:, j] = calibration.apply(cal, raw[:, j])
    return out


class ApprovalModel:
    """Base of the three families: ``fit(train, valid)``, ``predict_proba(X) -> (n, P)``, ``export(dir)``."""

    family = "base"
    defaults: dict[str, Any] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults) - {"min_rows", "min_class", "shrink_k", "seed"}
        if unknown:
            from smartrouter.errors import ConfigError

            raise ConfigError(f"{self.family} model has no parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        self.params: dict[str, Any] = {"min_rows": MIN_ROWS, "min_class": MIN_CLASS, "shrink_k": SHRINK_K, "seed": 0}
        self.params.update(self.defaults)
        self.params.update(params)
        self.processors = list(catalog.PROCESSORS)
        self.feature_names: list[str] = []
        self.calibrators: list[dict[str, Any]] = [{"method": "identity"}] * P
        self.blend = np.ones(P)
        self.n_train = np.zeros(P, dtype=np.int64)
        self.uncertain: dict[str, bool] = {p: True for p in self.processors}
        self.train_seconds = 0.0
        self.calibration_report: list[dict[str, Any]] = []
        self.history: dict[str, list[float]] = {}

    # ---------------------------------------------------------------- family hooks
    def _fit_core(self, train: ModelData, valid: ModelData) -> None:
        raise NotImplementedError

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _global_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _export_weights(self, folder: Path) -> dict[str, Any]:
        """Write the weight file(s) into ``folder``; return the family's config for model.json."""
        raise NotImplementedError

    def global_importance(self, data: ModelData) -> dict[str, float]:
        """Global feature importance, normalised to sum to 1 (family-specific definition)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def fit(self, train: ModelData, valid: ModelData) -> "ApprovalModel":
        """Fit the family on ``train``, early-stop/calibrate on ``valid`` (time-later rows)."""
        t0 = time.perf_counter()
        self.feature_names = list(train.feature_names) or [f"f{j}" for j in range(train.n_features)]
        counts, pos = train.head_counts(), train.head_positives()
        self.n_train = counts.astype(np.int64)
        unc = (counts < self.params["min_rows"]) | (pos < self.params["min_class"]) | (counts - pos < self.params["min_class"])
        self.uncertain = {p: bool(u) for p, u in zip(self.processors, unc)}
        self.blend = np.where(unc, counts / (counts + float(self.params["shrink_k"])), 1.0)
        self._fit_core(train, valid)
        self._calibrate(valid)
        self.train_seconds = time.perf_counter() - t0
        return self

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated per-processor probabilities (n, P), uncertain heads already blended.

        Scored in chunks of PREDICT_CHUNK_ROWS rows: a family's scoring may build per-processor copies
        of its rows (XGBoost scores P augmented copies of each row), which on 500K validation rows
        was 7 GB at once; every prediction depends on its own row only, so chunks change no number.
        """
        X = np.asarray(X, dtype=np.float32)
        out = np.empty((len(X), len(self.processors)), dtype=np.float64)
        for lo in range(0, len(X), PREDICT_CHUNK_ROWS):
            part = X[lo:lo + PREDICT_CHUNK_ROWS]
            glob = self._global_proba(part) if np.any(self.blend < 1.0) else None
            out[lo:lo + len(part)] = blend_heads(self._head_proba(part), glob, self.blend)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated approval probability of every processor for every row, (n, P) float64."""
        return calibrate_heads(self.predict_raw(X), self.calibrators)

    def _calibrate(self, valid: ModelData) -> None:
        raw = self.predict_raw(valid.X)
        cals, report = [], []
        for j, proc in enumerate(self.processors):
            m = valid.processor_idx == j
            y, p = valid.y[m], raw[m, j]
            cal = calibration.fit_calibrator(p, y, seed=int(self.params["seed"]))
            cals.append(cal)
            report.append({"processor": proc, "method": cal["method"], "n_valid": int(m.sum())})
        self.calibrators = cals
        self.calibration_report = report

    def evaluate(self, data: ModelData, *, calibrated: bool = True) -> list[dict[str, Any]]:
        """Per-head metrics (AUC, ECE, Brier, log loss) on the logged processor's rows.

        ``ece_floor`` beside ``ece``: what a perfectly calibrated head would show on as many rows
        (metrics.ece_noise_floor); the ECE target is judged on ``ece`` itself.
        """
        prob = self.predict_proba(data.X) if calibrated else self.predict_raw(data.X)
        rows = []
        for j, proc in enumerate(self.processors):
            m = data.processor_idx == j
            s = metrics.summary(data.y[m], prob[m, j])
            s["ece_floor"] = metrics.ece_noise_floor(prob[m, j], seed=int(self.params["seed"]))
            rows.append({"processor": proc, "uncertain": self.uncertain[proc], **s})
        return rows

    def metadata(self) -> dict[str, Any]:
        """The family-independent part of model.json."""
        import importlib.metadata as md

        versions = {}
        for pkg in ("numpy", "scikit-learn", "xgboost", "tensorflow-cpu", "keras"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "processors": self.processors,
            "feature_names": self.feature_names,
            "n_features": len(self.feature_names),
            "uncertain": self.uncertain,
            "blend": [float(b) for b in self.blend],
            "n_train": [int(n) for n in self.n_train],
            "calibration": self.calibrators,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()},
            "train_seconds": round(self.train_seconds, 3),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions,
        }

    def export(self, folder: str | Path, encoder_spec: dict[str, Any]) -> Path:
        """Write the self-contained serving form (encoder.json, model.json, weights, checksums.json).

        Written into a sibling temp folder and moved into place, so a reader never sees half an
        artifact; an existing folder is replaced.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            enc_text = canonical_json(encoder_spec)
            (tmp / ENCODER_FILE).write_text(enc_text)
            meta = self.metadata()
            meta["config"] = self._export_weights(tmp)
            meta["encoder_sha256"] = hashlib.sha256(enc_text.encode()).hexdigest()
            (tmp / MODEL_FILE).write_text(canonical_json(meta))
            sums = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
            (tmp / CHECKSUM_FILE).write_text(canonical_json(sums))
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def artifact_bytes(self, folder: str | Path) -> int:
        """Total size of an exported folder in bytes."""
        return int(sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file()))
