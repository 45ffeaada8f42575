"""The versioned model registry: v1, v2, ... with one promoted version, atomic promotion and rollback.

Layout under ``settings.registry_dir``::

    PROMOTED          JSON {"version": "vN", "promoted_at", "run_id", "reason"}: the version the service serves
    ROLLOUT           JSON: the canary rollout beside the promoted champion (smartrouter.routing.rollout)
    history.jsonl     one JSON line per event: register/reject/promote/force/rollback and
                      canary_start/canary_stage/canary_rollback/canary_complete/canary_abort/canary_busy
    .lock             file lock: version allocation and pointer changes are serialized across processes
    vN/serving/       the serving form (encoder.json, model.json, weights, its own checksums.json)
    vN/metrics.json   per-head metrics and the policy-value table (estimates, intervals, true value on world data)
    vN/gates.json     the gate results that decided the version's fate
    vN/card.json      the model card (inputs, training window, metrics overall and by slice, gates,
                      intended use, known limits, rollout history)
    vN/checksums.json sha256 of every immutable file (serving/*, metrics.json, gates.json)
    vN/version.json   status (candidate|rejected|promoted|retired), run_id, created_at, family

``version.json`` and ``card.json`` change as the version moves through its life (status, rollout
history), so they are not in ``checksums.json``; everything the service loads or a decision rests on is.

Atomicity: a version folder is assembled under a temporary name and renamed into place; the
pointer is written to a temporary file, fsynced and ``os.replace``d, so a reader sees either the
old or the new pointer, never half of one. Rejected versions are kept and never served; promoting
one needs ``force=True`` and a reason, both recorded. Rollback returns to the version promoted
before the current one (a stack replayed from the history).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock, Timeout

from smartrouter import atomic
from smartrouter.config import Settings, load_settings
from smartrouter.errors import ArtifactError, SmartrouterError

POINTER = "PROMOTED"
HISTORY = "history.jsonl"
LOCK = ".lock"
SERVING = "serving"
CHECKSUMS = "checksums.json"
VERSION_FILE = "version.json"
CARD_FILE = "card.json"
METRICS_FILE = "metrics.json"
GATES_FILE = "gates.json"
MUTABLE = frozenset({VERSION_FILE, CARD_FILE, CHECKSUMS})
STATUSES = ("candidate", "rejected", "canary", "promoted", "retired", "rolled_back")
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")

INTENDED_USE = (
    "Rank the eligible payment processors of one airline merchant's card payments by calibrated approval "
    "probability, for the routing service's first-attempt decision. Hard rules (Amex -> AMEX, currency support) "
    "are applied outside the model; the service falls back to static rules when the model is not confident."
)
KNOWN_LIMITS = [
    "Learns only from the merchant's own logged traffic of the training window; processors and segments with "
    "little randomized traffic are estimated with wide intervals.",
    "Policy value is estimated off-policy from logged propensities (first attempts of the test window); the true "
    "value is known only on the synthetic world.",
    "Retry routing and message (CIT/MIT) choice are not what this model's policy value measures.",
    "Approval behaviour drifts; the daily retrain and the regression gate are the guard.",
]


class RegistryError(SmartrouterError):
    """A registry operation cannot be done as asked (unknown version, nothing to roll back to, ...)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


_sha256 = atomic.sha256_file


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file in the same folder + fsync + os.replace: readers see the old or the new file, never half."""
    atomic.write_json(path, obj, indent=2)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing; the registry version is incomplete") from None
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the registry file is corrupt") from None


def _plain(obj: Any) -> Any:
    from smartrouter.notebook_tools import plain

    return plain(obj)


class Registry:
    """The model registry under ``settings.registry_dir`` (see the module docstring)."""

    def __init__(self, settings: Settings | None = None, root: str | Path | None = None, lock_timeout: float = 30.0) -> None:
        self.settings = settings or load_settings()
        self.root = Path(root) if root else Path(self.settings.registry_dir)
        self.lock_timeout = lock_timeout

    # ---------------------------------------------------------------- paths and small readers
    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER

    @property
    def history_path(self) -> Path:
        return self.root / HISTORY

    def _lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / LOCK), timeout=self.lock_timeout)

    def _locked(self) -> FileLock:
        lock = self._lock()
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(f"the registry {self.root} is locked by another process for > {self.lock_timeout:.0f} s; "
                                "retry when the other promotion/registration has finished") from None
        return lock

    def version_dir(self, version: str) -> Path:
        """Folder of ``version``; RegistryError when it is not a registered version."""
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise RegistryError(f"{version!r} is not a version name; versions are v1, v2, ... (see `smartrouter models list`)")
        path = self.root / version
        if not path.is_dir():
            known = ", ".join(v for v in self.versions()) or "none"
            raise RegistryError(f"version {version} does not exist in {self.root} (registered: {known})")
        return path

    def versions(self) -> list[str]:
        """Registered version names in order (v1, v2, ...)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in self.root.iterdir() if p.is_dir() and (m := _VERSION_RE.match(p.name))]
        return [name for _, name in sorted(found)]

    def _info(self, version: str) -> dict[str, Any]:
        return _read_json(self.version_dir(version) / VERSION_FILE)

    def history(self) -> list[dict[str, Any]]:
        """Every registry event, oldest first."""
        if not self.history_path.exists():
            return []
        out = []
        for line in self.history_path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line after a crash is ignored, never fatal
        return out

    def _append_history(self, event: dict[str, Any]) -> None:
        event = {"at": _now(), **event}
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps(event, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def pointer(self) -> dict[str, Any] | None:
        """The PROMOTED pointer's content, or None when nothing is promoted."""
        if not self.pointer_path.exists():
            return None
        data = _read_json(self.pointer_path)
        if not isinstance(data, dict) or not _VERSION_RE.match(str(data.get("version", ""))):
            raise ArtifactError(f"{self.pointer_path} does not name a version; promote one with `smartrouter models promote vN`")
        return data

    def promoted(self) -> tuple[str, Path] | None:
        """(version, its folder) of the promoted model, or None."""
        ptr = self.pointer()
        return None if ptr is None else (ptr["version"], self.root / ptr["version"])

    # ---------------------------------------------------------------- checksums
    @staticmethod
    def _checksum_files(folder: Path) -> dict[str, str]:
        out = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel in MUTABLE:
                continue
            out[rel] = _sha256(path)
        return out

    def verify(self, version: str) -> dict[str, Any]:
        """Check every file against checksums.json; ArtifactError naming the first bad file."""
        folder = self.version_dir(version)
        sums = _read_json(folder / CHECKSUMS)
        if not isinstance(sums, dict) or not sums:
            raise ArtifactError(f"{folder / CHECKSUMS} lists no files; the version is incomplete")
        for rel, digest in sums.items():
            path = folder / rel
            if not path.is_file():
                raise ArtifactError(f"{path} is missing (listed in {CHECKSUMS}); version {version} is incomplete, do not serve it")
            if _sha256(path) != digest:
                raise ArtifactError(f"{path} does not match its checksum in {folder / CHECKSUMS} (corrupt or edited); "
                                    f"do not serve {version}: roll back or promote another version")
        extra = set(self._checksum_files(folder)) - set(sums)
        if extra:
            raise ArtifactError(f"{folder} holds files not in {CHECKSUMS}: {', '.join(sorted(extra))}; the version was edited")
        if not (folder / SERVING).is_dir():
            raise ArtifactError(f"{folder / SERVING} is missing; version {version} has no serving form")
        return {"version": version, "files": len(sums), "ok": True}

    def load(self, version: str) -> Any:
        """Verify ``version`` and load its serving form (H5's loader re-checks the serving checksums)."""
        from smartrouter.models.serving import load_serving_model

        self.verify(version)
        return load_serving_model(self.version_dir(version) / SERVING)

    def load_promoted(self) -> tuple[str, Any] | None:
        """(version, ServingModel) of the promoted model, verified; None when nothing is promoted."""
        p = self.promoted()
        return None if p is None else (p[0], self.load(p[0]))

    # ---------------------------------------------------------------- register
    def register(self, run_dir: str | Path, family: str, metrics: Mapping[str, Any], gates: Mapping[str, Any],
                 status: str = "candidate", serving_dir: str | Path | None = None, reason: str = "") -> str:
        """Copy a run's serving form + metrics + gate results into a new version; returns "vN".

        ``status``: candidate (gates passed; promote it next), rejected (kept, never served) or
        promoted (register then promote at once, with ``reason``).
        """
        if status not in ("candidate", "rejected", "promoted"):
            raise RegistryError(f"status {status!r} cannot be registered; use candidate, rejected or promoted")
        run_dir = Path(run_dir)
        src = Path(serving_dir) if serving_dir else run_dir / "models" / family
        if (src / SERVING).is_dir():
            src = src / SERVING
        if not src.is_dir():
            raise ArtifactError(f"serving folder {src} does not exist; export the {family} model before registering it")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".incoming-{uuid.uuid4().hex[:12]}"
        try:
            shutil.copytree(src, tmp / SERVING)
            _write_json_atomic(tmp / METRICS_FILE, _plain(dict(metrics)))
            _write_json_atomic(tmp / GATES_FILE, _plain(dict(gates)))
            _write_json_atomic(tmp / CHECKSUMS, self._checksum_files(tmp))
            run_id = run_dir.name
            with self._locked():
                nums = [int(_VERSION_RE.match(v).group(1)) for v in self.versions()]
                version = f"v{max(nums, default=0) + 1}"
                created = _now()
                info = {"version": version, "status": "rejected" if status == "rejected" else "candidate",
                        "family": family, "run_id": run_id, "run_dir": str(run_dir), "created_at": created,
                        "decision": gates.get("decision"), "reasons": list(gates.get("reasons") or [])}
                _write_json_atomic(tmp / VERSION_FILE, info)
                _write_json_atomic(tmp / CARD_FILE, self._card(info, run_dir, tmp, metrics, gates))
                os.rename(tmp, self.root / version)  # the version appears whole or not at all
                self._append_history({"action": "reject" if status == "rejected" else "register", "version": version,
                                      "run_id": run_id, "family": family,
                                      "reason": "; ".join(info["reasons"]) if status == "rejected" else reason})
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if status == "rejected":
            self._lineage(version, run_id, "reject", "; ".join(info["reasons"]))
        if status == "promoted":
            self.promote(version, reason or "gates passed")
        return version

    def promote_or_canary(self, version: str, reason: str) -> dict[str, Any]:
        """What a daily-run promotion does: with a champion served and rollouts enabled, a canary beside it.

        The first model (nothing to compare with) and ``[rollout] enabled = false`` promote at once.
        While another canary is still rolling out, the version stays a candidate (recorded): a
        rollout takes days, daily runs must not restart it every morning.
        """
        from smartrouter.routing.rollout import load_rollout_config, read_rollout

        cfg = load_rollout_config()
        champion = self.pointer()
        if not cfg.enabled or champion is None or champion["version"] == version:
            return self.promote(version, reason)
        active = read_rollout(self.root)
        if active is not None and active["status"] == "active":
            with self._locked():
                self._append_history({"action": "canary_busy", "version": version, "reason":
                                      f"{reason}; not started: canary {active['candidate']} is still rolling out "
                                      f"({active['id']})"})
            return {"version": champion["version"], "canary": active["candidate"], "queued": version}
        return self.start_canary(version, reason)

    # ---------------------------------------------------------------- canary rollout
    def rollout(self) -> dict[str, Any] | None:
        """The ROLLOUT record (the active or the last rollout), or None when none was ever started."""
        from smartrouter.routing.rollout import read_rollout

        return read_rollout(self.root)

    def start_canary(self, version: str, reason: str, force: bool = False) -> dict[str, Any]:
        """Put ``version`` in the first rollout stage beside the promoted champion; returns the ROLLOUT record.

        A rejected version needs ``force`` and a reason, as for promotion; the version is verified
        and loaded first, like a promotion (a corrupt version never reaches a customer).
        """
        from smartrouter.routing.rollout import load_rollout_config, new_record, read_rollout, write_rollout

        reason = (reason or "").strip()
        cfg = load_rollout_config()
        with self._locked():
            info = self._info(version)
            champion = self.pointer()
            if champion is None:
                raise RegistryError(f"no champion is promoted, so {version} has nothing to be a canary beside; "
                                    f"promote it directly with `smartrouter models promote {version}`")
            if champion["version"] == version:
                raise RegistryError(f"{version} is the promoted champion already; a canary must be another version")
            active = read_rollout(self.root)
            if active is not None and active["status"] == "active":
                raise RegistryError(f"canary {active['candidate']} is rolling out ({active['id']}); "
                                    "finish it or `smartrouter rollout abort` before starting another")
            forced = info.get("status") in ("rejected", "rolled_back")
            if forced and not force:
                why = info.get("rolled_back_reason") or "; ".join(info.get("reasons") or []) or "it failed the gates"
                raise RegistryError(f"{version} was {info.get('status')} ({why}); to roll it out anyway add --force --reason \"...\"")
            if not reason:
                raise RegistryError(f"starting a canary of {version} needs a reason; add --reason \"...\"")
            if info.get("status") in ("promoted", "retired") and not force:
                raise RegistryError(f"{version} is {info.get('status')}; add --force to roll an old version out again")
            self.load(version)  # checksums + loadable, before any worker is told to load it
            record = new_record(version, champion["version"], cfg, reason, forced)
            write_rollout(self.root, record)
            self._set_status(version, "canary", canary_started_at=record["started_at"], rollout_id=record["id"])
            self._card_event(version, {"at": record["started_at"], "event": "canary_start", "reason": reason,
                                       "champion": champion["version"], "stage": record["stages"][0]["name"],
                                       "status": "canary", **({"forced": True} if forced else {})})
            self._append_history({"action": "canary_start", "version": version, "champion": champion["version"],
                                  "rollout_id": record["id"], "stage": record["stages"][0]["name"], "reason": reason,
                                  "forced": forced})
        self._lineage(version, info.get("run_id"), "canary_start", f"{record['id']}: {reason}")
        return record

    def _active_rollout(self) -> dict[str, Any]:
        from smartrouter.routing.rollout import RolloutError, read_rollout

        record = read_rollout(self.root)
        if record is None:
            raise RolloutError("no rollout has been started; nothing to change (a daily-run promotion or "
                               "`smartrouter rollout start vN` starts one)")
        if record["status"] != "active":
            raise RolloutError(f"rollout {record['id']} of {record['candidate']} already ended ({record['status']} at "
                               f"{record.get('ended_at')}); nothing to change")
        return record

    def note_check(self, verdict: dict[str, Any]) -> dict[str, Any]:
        """Record the controller's latest look (no stage change) in ROLLOUT; workers ignore it."""
        from smartrouter.routing.rollout import now_iso, write_rollout

        with self._locked():
            record = self._active_rollout()
            record["last_check"] = {"at": now_iso(), **verdict}
            write_rollout(self.root, record)
        return record

    def advance_rollout(self, from_index: int, verdict: dict[str, Any] | None = None, reason: str = "") -> dict[str, Any]:
        """Move the active rollout from stage ``from_index`` to the next (a stale index changes nothing)."""
        from smartrouter.routing.rollout import RolloutError, now_iso, write_rollout

        with self._locked():
            record = self._active_rollout()
            if record["stage_index"] != from_index:
                return record  # another controller moved it already: idempotent
            if from_index + 1 >= len(record["stages"]):
                raise RolloutError(f"{record['candidate']} is at its last stage ({record['stages'][-1]['name']}); "
                                   "completing it promotes the canary (the controller does that when it passes)")
            at = now_iso()
            old, new = record["stages"][from_index]["name"], record["stages"][from_index + 1]["name"]
            reason = reason or "; ".join((verdict or {}).get("reasons") or []) or "advanced"
            record["stage_index"] = from_index + 1
            record["stage_started_at"] = at
            record["last_check"] = {"at": at, **(verdict or {})}
            record["events"].append({"at": at, "event": "advance", "from": old, "stage": new, "reason": reason,
                                     "canary": (verdict or {}).get("canary"), "champion": (verdict or {}).get("champion")})
            write_rollout(self.root, record)
            self._card_event(record["candidate"], {"at": at, "event": f"canary {old} -> {new}", "reason": reason,
                                                   "status": "canary"})
            self._append_history({"action": "canary_stage", "version": record["candidate"], "rollout_id": record["id"],
                                  "from": old, "stage": new, "reason": reason})
        info = self._info(record["candidate"])
        self._lineage(record["candidate"], info.get("run_id"), "canary_stage", f"{record['id']}: {old} -> {new}: {reason}")
        return record

    def end_rollout(self, outcome: str, reason: str, verdict: dict[str, Any] | None = None) -> dict[str, Any]:
        """End the active rollout: completed (the canary is promoted), rolled_back or aborted (the champion stays)."""
        from smartrouter.routing.rollout import ENDED, now_iso, write_rollout

        if outcome not in ENDED:
            raise RegistryError(f"a rollout ends as one of {', '.join(ENDED)}, not {outcome!r}")
        reason = (reason or "").strip() or outcome
        with self._locked():
            record = self._active_rollout()
            cand, at = record["candidate"], now_iso()
            stage = record["stages"][record["stage_index"]]["name"]
            if outcome == "completed":
                self.load(cand)  # never promote a version that no longer verifies
                self._switch(cand, "promote", f"canary {record['id']} completed: {reason}")
            record.update(status=outcome, ended_at=at, end_reason=reason)
            if verdict is not None:
                record["last_check"] = {"at": at, **verdict}
            record["events"].append({"at": at, "event": outcome, "stage": stage, "reason": reason})
            write_rollout(self.root, record)  # workers drop the canary at their next look
            if outcome != "completed":
                status = "rolled_back" if outcome == "rolled_back" else "candidate"
                self._set_status(cand, status, **{f"{outcome}_at": at, f"{outcome}_reason": reason})
                self._card_event(cand, {"at": at, "event": f"canary {outcome} at {stage}", "reason": reason,
                                        "status": status})
            action = {"completed": "canary_complete", "rolled_back": "canary_rollback", "aborted": "canary_abort"}[outcome]
            self._append_history({"action": action, "version": cand, "champion": record["champion"],
                                  "rollout_id": record["id"], "stage": stage, "reason": reason})
        info = self._info(cand)
        self._lineage(cand, info.get("run_id"), action, f"{record['id']} at {stage}: {reason}")
        if outcome == "completed":  # the lineage store's promotions name the serving version, as for any promotion
            self._lineage(cand, info.get("run_id"), "promote", f"canary {record['id']} completed")
        return record

    def _card(self, info: dict[str, Any], run_dir: Path, folder: Path, metrics: Mapping[str, Any],
              gates: Mapping[str, Any]) -> dict[str, Any]:
        model_meta = {}
        try:
            model_meta = json.loads((folder / SERVING / "model.json").read_text())
        except (OSError, ValueError):
            pass
        split = None
        for name in ("split.json", "manifest.json"):
            try:
                data = json.loads((run_dir / name).read_text())
            except (OSError, ValueError):
                continue
            split = data if name == "split.json" else {"data_window": data.get("data_window"), "as_of": data.get("as_of")}
            break
        uncertain = [p for p, flag in (model_meta.get("uncertain") or {}).items() if flag]
        limits = list(KNOWN_LIMITS)
        if uncertain:
            limits.insert(0, f"Processors with too little history, served with a shrunk prior: {', '.join(uncertain)}.")
        return _plain({
            "model": {"version": info["version"], "family": info["family"], "run_id": info["run_id"],
                      "created_at": info["created_at"], "status": info["status"]},
            "inputs": {"processors": model_meta.get("processors"), "n_features": model_meta.get("n_features"),
                       "features": model_meta.get("feature_names"), "encoder": f"{SERVING}/encoder.json",
                       "calibration": [c.get("method", c.get("kind")) if isinstance(c, dict) else c
                                       for c in model_meta.get("calibration") or []]},
            "training_window": split,
            "metrics": {"overall": metrics.get("overall"), "per_head": metrics.get("heads"),
                        "by_slice": metrics.get("slices"), "headline": metrics.get("headline")},
            "policy_value": metrics.get("policy_value"),
            # the routing objective the evaluation and gates judged under (routing.toml [objective]), and the
            # approval, fee cost and net revenue of each policy under both objectives (smartrouter.money)
            "objective": (metrics.get("money") or {}).get("objective"),
            "money": metrics.get("money"),
            # results: each gate's verdict; the regression line's details name its test (non-inferiority or
            # superiority), the paired lift, its interval and the margin; family_choice: how the family was chosen
            "gates": {"decision": gates.get("decision"), "reasons": gates.get("reasons"), "results": gates.get("gates"),
                      "family_choice": gates.get("family_choice")},
            "intended_use": INTENDED_USE,
            "known_limits": limits,
            "rollout_history": [],
        })

    # ---------------------------------------------------------------- promote / rollback
    def _set_status(self, version: str, status: str, **extra: Any) -> None:
        folder = self.version_dir(version)
        info = _read_json(folder / VERSION_FILE)
        info["status"] = status
        info.update(extra)
        _write_json_atomic(folder / VERSION_FILE, info)

    def _card_event(self, version: str, event: dict[str, Any]) -> None:
        path = self.version_dir(version) / CARD_FILE
        try:
            card = _read_json(path)
        except ArtifactError:
            return  # the card is documentation: a damaged card never blocks a promotion or rollback
        card.setdefault("rollout_history", []).append(event)
        card.setdefault("model", {})["status"] = event.get("status", card.get("model", {}).get("status"))
        _write_json_atomic(path, card)

    def _switch(self, target: str, action: str, reason: str, forced: bool = False) -> dict[str, Any]:
        """Point PROMOTED at ``target`` (caller holds the lock and has verified it)."""
        current = self.pointer()
        prev = current["version"] if current else None
        info = self._info(target)
        at = _now()
        pointer = {"version": target, "promoted_at": at, "run_id": info.get("run_id"), "family": info.get("family"),
                   "reason": reason, "action": action, "previous": prev}
        if forced:
            pointer["forced"] = True
        _write_json_atomic(self.pointer_path, pointer)
        if prev and prev != target:
            self._set_status(prev, "retired", retired_at=at)
            self._card_event(prev, {"at": at, "event": f"retired by {action} to {target}", "status": "retired"})
        self._set_status(target, "promoted", promoted_at=at, **({"forced": True, "force_reason": reason} if forced else {}))
        self._card_event(target, {"at": at, "event": action, "reason": reason, "previous": prev, "status": "promoted",
                                  **({"forced": True} if forced else {})})
        self._append_history({"action": action, "version": target, "previous": prev, "reason": reason,
                              "run_id": info.get("run_id"), "forced": forced})
        return pointer

    def promote(self, version: str, reason: str, force: bool = False) -> dict[str, Any]:
        """Make ``version`` the served model (atomic pointer swap); returns the new pointer.

        A rejected version needs ``force=True`` and a non-empty reason (recorded). The version's
        checksums are verified and its serving form loaded first: a corrupt version is never promoted.
        """
        reason = (reason or "").strip()
        with self._locked():
            info = self._info(version)
            if info.get("status") == "rejected":
                if not force:
                    why = "; ".join(info.get("reasons") or []) or "it failed the gates"
                    raise RegistryError(f"{version} was rejected ({why}); to serve it anyway run "
                                        f"`smartrouter models promote {version} --force --reason \"...\"`")
                if not reason:
                    raise RegistryError(f"forcing rejected {version} needs a reason; add --reason \"why this is safe\"")
            if not reason:
                raise RegistryError(f"promoting {version} needs a reason; add --reason \"...\"")
            self.load(version)  # checksums + loadable, before the pointer moves
            forced = info.get("status") == "rejected"
            pointer = self._switch(version, "force" if forced else "promote", reason, forced=forced)
        self._lineage(version, info.get("run_id"), "force" if forced else "promote", reason)
        return pointer

    def _stack(self) -> list[str]:
        stack: list[str] = []
        for e in self.history():
            if e.get("action") in ("promote", "force"):
                stack.append(e["version"])
            elif e.get("action") == "rollback" and stack:
                stack.pop()
                if not stack or stack[-1] != e["version"]:
                    stack.append(e["version"])
        return stack

    def rollback(self, reason: str = "rollback") -> dict[str, Any]:
        """Restore the version promoted before the current one (atomic); returns the new pointer."""
        with self._locked():
            current = self.pointer()
            if current is None:
                raise RegistryError("nothing is promoted, so there is nothing to roll back; promote a version first")
            stack = self._stack()
            if stack and stack[-1] == current["version"]:
                stack.pop()
            if not stack:
                raise RegistryError(f"{current['version']} is the first promoted version: there is no earlier one to roll back to")
            target = stack[-1]
            self.load(target)  # never roll back onto a corrupt version
            pointer = self._switch(target, "rollback", reason or "rollback")
        self._lineage(target, pointer.get("run_id"), "rollback", reason or "rollback")
        return pointer

    def _lineage(self, version: str, run_id: str | None, action: str, reason: str) -> None:
        try:
            from smartrouter import lineage
        except ImportError:  # pragma: no cover - lineage is optional for the registry
            return
        try:
            lineage.record_promotion(version, run_id, action, reason, settings=self.settings)
        except Exception as exc:  # noqa: BLE001 - the registry's own history is the record; lineage is a copy
            import warnings

            warnings.warn(f"lineage store not updated for {action} {version}: {exc}", stacklevel=2)

    # ---------------------------------------------------------------- reading
    def list(self) -> list[dict[str, Any]]:
        """One row per version: version, status, family, run, created, promoted flag, headline numbers."""
        try:
            current = (self.pointer() or {}).get("version")
        except ArtifactError:
            current = None
        rows = []
        for v in self.versions():
            folder = self.root / v
            try:
                info = _read_json(folder / VERSION_FILE)
            except ArtifactError as exc:
                rows.append({"version": v, "status": "unreadable", "error": str(exc)})
                continue
            try:
                headline = (_read_json(folder / METRICS_FILE) or {}).get("headline") or {}
            except ArtifactError:
                headline = {}
            rows.append({"version": v, "status": info.get("status"), "family": info.get("family"),
                         "run_id": info.get("run_id"), "created_at": info.get("created_at"),
                         "promoted": v == current, "headline": headline})
        return rows

    def show(self, version: str) -> dict[str, Any]:
        """Everything about a version: version.json, the model card, metrics, gates, checksum status."""
        folder = self.version_dir(version)
        out = {"version": _read_json(folder / VERSION_FILE), "card": _read_json(folder / CARD_FILE),
               "metrics": _read_json(folder / METRICS_FILE), "gates": _read_json(folder / GATES_FILE)}
        try:
            out["integrity"] = self.verify(version)
        except ArtifactError as exc:
            out["integrity"] = {"version": version, "ok": False, "error": str(exc)}
        return out
