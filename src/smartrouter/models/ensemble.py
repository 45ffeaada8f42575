"""The ensemble family: the mean of other families' calibrated log-odds, recalibrated per head.

Why: the families err differently. The logistic heads carry every per-processor main effect
smoothly; XGBoost's trees (with their per-processor trees) find sharp attribute x attribute x
processor cells a linear head cannot express, but are noisier on the main effects. Their mean ranks
processors better than either, measured as the true share of the oracle's gain over the static rules
(04_evaluate, world truth; README "The ensemble family" has the numbers and their commands).

How: each member's calibrated probability p_m is turned into log-odds, the ensemble's raw probability
is sigmoid(mean_m logit(p_m)) (a geometric mean of odds: one member cannot pull a probability to 0 or
1 alone), and the base class fits one calibrator per head on the validation window, as for every family.
Members (``members``, default ``DEFAULT_MEMBERS``) are families trained in the same run, on the same
rows and encoder: nothing is fitted here but the calibrators. Uncertain heads need no blending of
their own: every member has already shrunk them toward its global prediction.

Serving form: the members' complete serving folders under ``members/<family>/`` (each verified by
its own checksums.json) and model.json listing them with the sha256 of each member's checksums.json,
so a member swapped or edited after export fails the ensemble's own checksum chain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from smartrouter.errors import ConfigError
from smartrouter.models.base import CHECKSUM_FILE, ENCODER_FILE, ApprovalModel
from smartrouter.models.data import P, ModelData

FAMILY = "ensemble"
MEMBERS_DIR = "members"
# Probabilities are clipped to [EPS, 1 - EPS] before their log-odds: a member's calibrator may
# return exactly 0 or 1 (isotonic steps), whose log-odds are infinite.
EPS = 1e-6


def member_logits(probs: list[np.ndarray]) -> np.ndarray:
    """The mean of the members' log-odds, (n, P), from their calibrated probabilities."""
    z = None
    for p in probs:
        # np.minimum(np.maximum(..)): np.clip's result without its per-call dispatch cost (the decision path)
        p = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), EPS), 1.0 - EPS)
        z = np.log(p) - np.log1p(-p) if z is None else z + (np.log(p) - np.log1p(-p))
    return z / len(probs)


def combine(probs: list[np.ndarray]) -> np.ndarray:
    """The ensemble's raw probability: sigmoid of the mean of the members' log-odds."""
    return 1.0 / (1.0 + np.exp(-member_logits(probs)))


def sha256_text(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The members by default: the two families that err most differently (a linear model of per-processor
# main effects, and trees that find attribute x attribute x processor cells). The DNN is left out
# because its wide path is the logistic model again (with it the mean was -0.3 to +0.35 points of the
# oracle's gain from the pair's on five worlds: no consistent gain) and because every member is walked
# on every decision: scoring one payment's 8 message configurations (score_rows) took 724 us p50 for
# the three against 488 us for xgb alone on the default world's models (a loaded machine), where the
# whole decision has a 1 ms p99 budget (bench_messages).
DEFAULT_MEMBERS: tuple[str, ...] = ("logistic", "xgb")


def member_families(params: Mapping[str, Any] | None) -> list[str]:
    """The families an ensemble with these parameters combines, checked (at least two, no ensemble)."""
    members = list(dict.fromkeys((params or {}).get("members") or DEFAULT_MEMBERS))
    if len(members) < 2 or FAMILY in members:
        raise ConfigError(f"the ensemble combines at least two other families of the same run, got members "
                          f"{members}; set 03_train.ensemble_members to e.g. logistic,xgb")
    return members


class EnsembleModel(ApprovalModel):
    """Mean of fitted members' calibrated log-odds; ``set_members`` before ``fit``."""

    family = FAMILY
    defaults: dict[str, Any] = {"members": DEFAULT_MEMBERS}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.params["members"] = tuple(member_families(self.params))
        self.member_models: dict[str, ApprovalModel] = {}

    def set_members(self, trained: Mapping[str, ApprovalModel]) -> None:
        """Take the members (``params["members"]``) from the models this run trained."""
        missing = [f for f in self.params["members"] if f not in trained]
        if missing:
            raise ConfigError(f"the ensemble's members {missing} were not trained in this run; add them to "
                              f"03_train.families before ensemble (e.g. {','.join(self.params['members'])},ensemble)")
        members = {f: trained[f] for f in self.params["members"]}
        names = [list(m.feature_names) for m in members.values()]
        if any(n != names[0] for n in names):
            raise ConfigError("the ensemble's members were trained on different encoders; train them in one run")
        self.member_models = members

    # ---------------------------------------------------------------- family hooks
    def _fit_core(self, train: ModelData, valid: ModelData) -> None:
        if not self.member_models:
            raise ConfigError("the ensemble has no members; train it with train_encoded after two or more families")
        if list(train.feature_names) and list(train.feature_names) != list(next(iter(self.member_models.values())).feature_names):
            raise ConfigError("the ensemble's rows are encoded differently from its members'; train them in one run")
        # every member already shrinks its uncertain heads toward its global prediction
        self.blend = np.ones(P)
        self.history = {}

    def _member_probs(self, X: np.ndarray) -> list[np.ndarray]:
        return [m.predict_proba(X) for m in self.member_models.values()]

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        return combine(self._member_probs(X))

    def _global_proba(self, X: np.ndarray) -> np.ndarray:  # blend is all ones: never called
        raise NotImplementedError("the ensemble has no global head; its members blend their own")

    def _export_weights(self, folder: Path) -> dict[str, Any]:
        spec = json.loads((folder / ENCODER_FILE).read_text())
        sums = {}
        for fam, model in self.member_models.items():
            sub = model.export(folder / MEMBERS_DIR / fam, spec)
            sums[fam] = sha256_text(sub / CHECKSUM_FILE)
        return {"members": list(self.member_models), "members_dir": MEMBERS_DIR, "member_checksums": sums,
                "combine": "mean_logit"}

    def global_importance(self, data: ModelData) -> dict[str, float]:
        """The members' importances averaged (each sums to 1; names each family reports)."""
        total: dict[str, float] = {}
        for m in self.member_models.values():
            for name, v in m.global_importance(data).items():
                total[name] = total.get(name, 0.0) + float(v) / len(self.member_models)
        return total

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["members"] = list(self.member_models)
        return meta

    def artifact_bytes(self, folder: str | Path) -> int:
        return int(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()))
