"""Holds the model the service scores with, and swaps it without dropping a request.

The registry's ``PROMOTED`` pointer (JSON {"version": "vN", ...}) names the version to serve;
its serving form lives in ``<registry>/<version>/serving/``. A poll thread (and `reload()`,
behind ``POST /admin/reload``) loads a new version and warms it *off the request path*, then
swaps one attribute (atomic in CPython): a request sees either the old model or the new one,
never a half-loaded one. A version that fails to load or warm is refused and remembered; the
old one keeps serving and `status()` says why (shown in /readyz and the metrics).
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

from smartrouter import catalog
from smartrouter.errors import ArtifactError

log = logging.getLogger("smartrouter.routing.model_holder")

POINTER = "PROMOTED"

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
                 poll_seconds: float = 5.0, on_change: Callable[[HolderStatus, str], None] | None = None) -> None:
        self.registry_dir = Path(registry_dir)
        self._loader = loader or default_loader
        self.poll_seconds = poll_seconds
        self._on_change = on_change
        self.current: LoadedModel | None = None
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
        """Load the promoted version if it is new (``force``: retry a refused one). Returns what happened."""
        with self._reload_lock:
            self.status.last_check = time.time()
            try:
                version = read_pointer(self.registry_dir)
            except ArtifactError as exc:
                self.status.last_error = str(exc)
                self._event(str(exc), "failed")
                return "failed"
            if version is None:
                return "none"
            if self.current is not None and version == self.current.version:
                return "unchanged"
            if version == self.status.failed_version and not force:
                return "refused"
            return self._load(version)

    def _load(self, version: str) -> str:
        path = self.registry_dir / version / "serving"
        t0 = time.perf_counter()
        try:
            if not path.is_dir():
                raise ArtifactError(f"promoted version {version} has no serving form at {path}; re-register it")
            model = self._loader(path)
            warm(model)
            rules_rows = _rules_snapshot(path)
        except Exception as exc:  # noqa: BLE001 - any failure means: refuse it, keep the old one
            self.status.failures += 1
            self.status.failed_version = version
            self.status.last_error = f"version {version} refused: {exc}"
            log.error("model %s refused, still serving %s: %s", version, self.version, exc)
            self._event(self.status.last_error, "failed")
            return "failed"
        seconds = time.perf_counter() - t0
        old = self.version
        self.current = LoadedModel(version, model, path, time.time(), seconds, rules_rows)  # the atomic swap
        self.status.version = version
        self.status.loaded_at = self.current.loaded_at
        self.status.reloads += 1
        self.status.failed_version = None
        self.status.last_error = None
        log.warning("serving model %s (was %s), loaded and warmed in %.3f s", version, old, seconds)
        self._event(f"serving {version} (was {old})", "loaded")
        return "loaded"

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
