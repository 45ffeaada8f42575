"""Holds the model the service scores with, and swaps it without dropping a request.

The registry's ``PROMOTED`` pointer (JSON {"version": "vN", ...}) names the version to serve;
its serving form lives in ``<registry>/<version>/serving/``. A poll thread (and `reload()`,
behind ``POST /admin/reload``) loads a new version and warms it *off the request path*, then
swaps one attribute (atomic in CPython): a request sees either the old model or the new one,
never a half-loaded one. A version that fails to load or warm is refused and remembered; the
old one keeps serving and `status` says why (shown in /readyz and the metrics).

The fleet converges on one version: every successful load is recorded in ``fleet_record``
(shared by the workers of a host), and a worker that starts while the pointer names a version it
cannot load serves the version recorded there (else the latest earlier promotion in the
registry's history that loads), as the workers that refused it keep doing, instead of the rules.

A canary rollout (``<registry>/ROLLOUT``, see `smartrouter.routing.rollout`) is read at every
check too: the canary version is loaded and warmed the same way, off the request path, and
published as one `Canary` (model + rollout id + stage + share + salt) in ``canary``; a stage
change swaps only that small object. A canary that fails to load is refused and remembered
(``status.canary_error``): the champion goes on serving every payment.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from smartrouter import atomic, catalog
from smartrouter.errors import ArtifactError

log = logging.getLogger("smartrouter.routing.model_holder")

POINTER = "PROMOTED"
HISTORY = "history.jsonl"  # the registry's event log (smartrouter.registry), read for earlier promotions
_PROMOTIONS = ("promote", "force", "rollback")
_FALLBACK_TRIES = 3  # versions tried when the promoted one is refused at start (each load takes ~1 s at most)

# A plausible payment used to warm a freshly loaded model (first-call costs happen here, not
# on a customer's payment) and to check it answers sane probabilities before it may serve.
WARM_PAYMENT: dict[str, Any] = {
    "ORDER_ID": "warmup", "USER_ID": "warmup", "AMOUNT": 1850.0, "CURRENCY": "MXN", "CARD_BIN": "411111",
    "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "CARD_COUNTRY": "MX", "MCI_MSI_TYPE": "CIT",
    "NUM_ATTEMPTS_ORDER": 1, "PREVIOUS_ORDER_ERROR_CODE": None,
}


@dataclass(frozen=True)
class LoadedModel:
    version: str
    model: Any
    path: Path
    loaded_at: float
    load_seconds: float
    rules_rows: list[dict] | None = None


@dataclass(frozen=True)
class Canary:
    """The rollout's canary as a worker serves it: the model and the stage it routes at."""

    loaded: LoadedModel
    rollout_id: str
    stage: str
    share: float
    shadow: bool
    salt: str
    champion: str


@dataclass
class HolderStatus:
    version: str | None = None
    loaded_at: float | None = None
    last_check: float | None = None
    last_error: str | None = None
    failed_version: str | None = None
    reloads: int = 0
    failures: int = 0
    events: list[str] = field(default_factory=list)
    serving_note: str | None = None  # why the served version is not the promoted one (None when it is)
    canary: str | None = None  # "v5 canary-10 (10 %)" while a canary serves beside the champion
    canary_error: str | None = None  # why the rollout's canary is not loaded (the champion serves all)


def default_loader(path: Path) -> Any:
    """H5's serving-form loader (imported lazily: the service starts without a model stack)."""
    try:
        from smartrouter.models.serving import load_serving_model
    except ImportError as exc:
        raise ArtifactError(f"cannot import smartrouter.models.serving ({exc}); install the package with its models") from None
    return load_serving_model(path)


def read_pointer(registry_dir: Path) -> str | None:
    """The promoted version named by the registry pointer, or None when nothing is promoted."""
    path = Path(registry_dir) / POINTER
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        version = json.loads(raw)["version"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ArtifactError(f"registry pointer {path} is not JSON with a 'version'; re-promote a version") from None
    if not isinstance(version, str) or not version:
        raise ArtifactError(f"registry pointer {path} names no version; re-promote a version")
    return version


def warm(model: Any, payment: dict | None = None) -> None:
    """Score a sample payment a few times; raise ArtifactError if the answer is not sane."""
    payment = dict(payment or WARM_PAYMENT)
    for _ in range(3):
        scores = model.score(payment)
    missing = [p for p in catalog.PROCESSORS if p not in scores]
    if missing:
        raise ArtifactError(f"model scores no probability for {', '.join(missing)}; re-export its serving form")
    bad = {p: v for p, v in scores.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0)}
    if bad:
        raise ArtifactError(f"model returned probabilities outside [0, 1]: {bad}; re-export its serving form")


class ModelHolder:
    """The current serving model: poll + explicit reload, load and warm off the request path."""

    def __init__(self, registry_dir: str | Path, loader: Callable[[Path], Any] | None = None,
                 poll_seconds: float = 5.0, on_change: Callable[[HolderStatus, str], None] | None = None,
                 fleet_record: str | Path | None = None) -> None:
        self.registry_dir = Path(registry_dir)
        self.fleet_record = Path(fleet_record) if fleet_record is not None else None
        self._loader = loader or default_loader
        self.poll_seconds = poll_seconds
        self._on_change = on_change
        self.current: LoadedModel | None = None
        self.canary: Canary | None = None
        self._canary_failed: str | None = None  # rollout id whose canary was refused (retried on reload)
        self.status = HolderStatus()
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str | None:
        cur = self.current
        return cur.version if cur is not None else None

    def _event(self, text: str, result: str) -> None:
        self.status.events = (self.status.events + [f"{time.strftime('%H:%M:%S')} {text}"])[-20:]
        if self._on_change is not None:
            self._on_change(self.status, result)

    def check(self, force: bool = False) -> str:
        """Load the promoted version if it is new (``force``: retry a refused one), then follow the rollout."""
        with self._reload_lock:
            result = self._check_pointer(force)
            self._check_canary(force)
            return result

    def _check_canary(self, force: bool) -> None:
        """Serve the rollout's canary at its current stage beside the champion, or none."""
        from smartrouter.routing.rollout import ACTIVE, current_stage, read_rollout

        try:
            record = read_rollout(self.registry_dir)
        except ArtifactError as exc:
            record = None
            self.status.canary_error = str(exc)
        champion = self.current
        if record is None or record.get("status") != ACTIVE or champion is None \
                or champion.version != record.get("champion") or record.get("candidate") == champion.version:
            if self.canary is not None:
                self._event(f"canary {self.canary.loaded.version} dropped (rollout {record and record.get('status')})", "canary")
            self.canary = None
            self.status.canary = None
            if record is not None and record.get("status") == ACTIVE and champion is not None \
                    and champion.version != record.get("champion"):
                self.status.canary_error = (f"rollout {record['id']} runs beside {record['champion']}, this worker serves "
                                            f"{champion.version}: no canary here")
            return
        stage = current_stage(record)
        cur = self.canary
        if cur is not None and cur.rollout_id == record["id"] and cur.loaded.version == record["candidate"]:
            loaded = cur.loaded
            if cur.stage == stage["name"]:
                return
        else:
            if self._canary_failed == record["id"] and not force:
                return
            version = record["candidate"]
            path = self.registry_dir / version / "serving"
            t0 = time.perf_counter()
            try:
                model, rules_rows = self._read(version, path)
            except Exception as exc:  # noqa: BLE001 - a canary that cannot load never serves; the champion does
                self._canary_failed = record["id"]
                self.canary = None
                self.status.canary = None
                self.status.canary_error = f"canary {version} refused, the champion serves every payment: {exc}"
                log.error("%s", self.status.canary_error)
                self._event(self.status.canary_error, "failed")
                return
            loaded = LoadedModel(version, model, path, time.time(), time.perf_counter() - t0, rules_rows)
        self.canary = Canary(loaded, record["id"], stage["name"], float(stage["share"]), bool(stage["shadow"]),
                             record["salt"], record["champion"])  # one attribute: the atomic swap
        self._canary_failed = None
        self.status.canary_error = None
        self.status.canary = f"{loaded.version} {stage['name']} ({float(stage['share']):.0%}{', shadow' if stage['shadow'] else ''})"
        self._event(f"canary {self.status.canary} beside {champion.version}", "canary")

    def _check_pointer(self, force: bool) -> str:
        """The promoted pointer: load a new version, keep the old one when it is refused (caller holds the lock)."""
        self.status.last_check = time.time()
        try:
            version = read_pointer(self.registry_dir)
        except ArtifactError as exc:
            self.status.last_error = str(exc)
            self._event(str(exc), "failed")
            if self.current is None:
                self._fall_back(None)
            return "failed"
        if version is None:
            return "none"
        if self.current is not None and version == self.current.version:
            if self.status.last_error is not None or self.status.serving_note is not None:
                # the pointer names what we serve again: an earlier refusal is history, not a fault
                self._clear_error()
                self._event(f"pointer names {version} again, which is serving; earlier error cleared", "unchanged")
            return "unchanged"
        if version == self.status.failed_version and not force:
            return "refused"
        canary = self.canary
        if canary is not None and canary.loaded.version == version:  # a completed canary: already loaded and warm
            old = self.version
            c = canary.loaded
            self._swap(version, c.model, c.path, c.load_seconds, c.rules_rows)
            self._clear_error()
            self._event(f"serving {version} (was {old}), the canary that completed its rollout", "loaded")
            return "loaded"
        result = self._load(version)
        if result == "failed" and self.current is None:
            self._fall_back(version)
        return result

    def _clear_error(self) -> None:
        self.status.failed_version = None
        self.status.last_error = None
        self.status.serving_note = None

    def _load(self, version: str) -> str:
        path = self.registry_dir / version / "serving"
        t0 = time.perf_counter()
        try:
            model, rules_rows = self._read(version, path)
        except Exception as exc:  # noqa: BLE001 - any failure means: refuse it, keep the old one
            self.status.failures += 1
            self.status.failed_version = version
            self.status.last_error = f"version {version} refused: {exc}"
            log.error("model %s refused, still serving %s: %s", version, self.version, exc)
            self._event(self.status.last_error, "failed")
            return "failed"
        old = self.version
        self._swap(version, model, path, time.perf_counter() - t0, rules_rows)
        self._clear_error()
        self._event(f"serving {version} (was {old})", "loaded")
        return "loaded"

    def _read(self, version: str, path: Path) -> tuple[Any, list[dict] | None]:
        """Load and warm one version's serving form (raises whatever refuses it)."""
        if not path.is_dir():
            raise ArtifactError(f"version {version} has no serving form at {path}; re-register it")
        model = self._loader(path)
        warm(model)
        return model, _rules_snapshot(path)

    def _swap(self, version: str, model: Any, path: Path, seconds: float, rules_rows: list[dict] | None) -> None:
        old = self.version
        self.current = LoadedModel(version, model, path, time.time(), seconds, rules_rows)  # the atomic swap
        self.status.version = version
        self.status.loaded_at = self.current.loaded_at
        self.status.reloads += 1
        log.warning("serving model %s (was %s), loaded and warmed in %.3f s", version, old, seconds)
        if self.fleet_record is not None:  # the other workers (and the next to start) converge on it
            try:
                atomic.write_json(self.fleet_record, {"version": version, "loaded_at": time.time()})
            except OSError as exc:
                log.warning("could not record the served version in %s: %s", self.fleet_record, exc)

    def _fallback_versions(self, refused: str | None) -> list[tuple[str, str]]:
        """(version, where it came from) to serve instead of a refused promotion, best first."""
        out: list[tuple[str, str]] = []
        if self.fleet_record is not None:
            try:
                recorded = json.loads(self.fleet_record.read_text(encoding="utf-8")).get("version")
                if isinstance(recorded, str) and recorded:
                    out.append((recorded, f"the version this host's workers last loaded ({self.fleet_record})"))
            except (OSError, ValueError, AttributeError):
                pass
        try:
            lines = (self.registry_dir / HISTORY).read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        for line in reversed(lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn line after a crash
            if isinstance(event, dict) and event.get("action") in _PROMOTIONS and isinstance(event.get("version"), str):
                out.append((event["version"], f"an earlier promotion in {HISTORY}"))
        seen: set[str] = {refused} if refused else set()
        return [(v, src) for v, src in out if not (v in seen or seen.add(v))][:_FALLBACK_TRIES]

    def _fall_back(self, refused: str | None) -> None:
        """Nothing serves and the promoted version is refused: serve the version the fleet last loaded."""
        why = self.status.last_error
        for version, source in self._fallback_versions(refused):
            path = self.registry_dir / version / "serving"
            t0 = time.perf_counter()
            try:
                model, rules_rows = self._read(version, path)
            except Exception as exc:  # noqa: BLE001 - try the next one
                log.error("fallback version %s refused too: %s", version, exc)
                continue
            self._swap(version, model, path, time.perf_counter() - t0, rules_rows)
            self.status.serving_note = (f"serving {version}, {source}, because the promoted one is refused ({why}); "
                                        "fix or re-promote it, then POST /admin/reload")
            self._event(self.status.serving_note, "fallback")
            return
    def reload(self) -> str:
        """Explicit reload (POST /admin/reload): also retries a version refused before."""
        return self.check(force=True)

    # ------------------------------------------------------------------ poll thread
    def start(self) -> None:
        """Start polling the pointer every ``poll_seconds`` in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception:  # pragma: no cover - never let the poller die
                log.exception("model poll failed")


def _rules_snapshot(serving_dir: Path) -> list[dict] | None:
    """Static-rules rows saved next to the model (rules.json), if the export wrote them."""
    for name in ("rules.json", "rules_snapshot.json"):
        path = serving_dir / name
        if path.is_file():
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
                return rows if isinstance(rows, list) else None
            except json.JSONDecodeError:
                return None
    return None
