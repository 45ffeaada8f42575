"""Where the service's workers (and hosts) keep the state they learn from outcomes, so that they agree.

Processor health and the exploration posteriors are learned from outcomes. Every worker must see
every outcome, and a worker that starts late (a crash, ``kill -9``, uvicorn respawning it, a new
host) must start from the current state, not from "everything UP". ``SMARTROUTER_STATE_STORE``
picks one of two stores:

- ``local`` (default, one host): outcomes travel between workers on the peer bus
  (`smartrouter.routing.peers`), and every worker writes the state it holds to a snapshot file in
  the state folder (atomically: at once after a health state change, twice a second while the
  state changes otherwise, every few seconds when it does not).
  A starting worker loads the newest snapshot before it serves. Snapshots older than the health
  window are ignored: nobody alive kept them current.
- ``redis://host:port/db`` (several hosts): every accepted outcome is ``XADD``ed to a Redis stream
  (trimmed to the health window with ``MINID``); each worker reads the stream in a thread
  (``XREAD BLOCK``) and applies other workers' outcomes on its event loop. Workers also ``SET`` a
  snapshot with the id of the last stream entry it covers; a starting worker loads it and replays
  the stream after that id before it serves, so it has what every other worker has.

Online features are not in the snapshot: each worker seeds them from the warehouse (28 days) and
from the live outcomes it hears from then on.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from smartrouter import atomic
from smartrouter.routing.health import FAILURE, SUCCESS, outcome_kind

log = logging.getLogger("smartrouter.routing.state_store")

SNAPSHOT_FILE = "shared-state.json"
_WRITE_SECONDS = 0.5  # how often a changed state is written
_TRANSITION_POLL_SECONDS = 0.05  # a health state change is written within this (a respawn may come right after)
_REFRESH_SECONDS = 5.0  # how often an unchanged one is (so its age says a live worker holds it)
_PREFIX = "smartrouter:"


def export_state(router: Any) -> dict:
    """What a starting worker needs from this one: processor health and exploration posteriors."""
    return {"health": router.health.export_state(), "bandit": router.bandit.export_state()}


def import_state(router: Any, state: dict) -> list[str]:
    """Take over ``export_state``'s result; returns the processors that are not UP in it."""
    router.bandit.import_state(state.get("bandit", []))
    return router.health.import_state(state.get("health", {}))


class _SnapshotWriter:
    """A thread that writes this worker's state somewhere at once after a health transition, else every
    ``_WRITE_SECONDS`` while it changes (and every ``_REFRESH_SECONDS`` anyway)."""

    def __init__(self, router: Any, write: Callable[[dict, Any], None], mark: Callable[[], Any] = lambda: None) -> None:
        self.router = router
        self._write = write
        self._mark = mark  # read before the export: what the exported state covers at least
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-snapshot", daemon=True)
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last, last_at, due = None, 0.0, 0.0
        seen = self.router.health.transition_count
        while not self._stop.wait(_TRANSITION_POLL_SECONDS):
            changed = self.router.health.transition_count != seen
            if not changed and time.monotonic() < due:
                continue
            seen, due = self.router.health.transition_count, time.monotonic() + _WRITE_SECONDS
            try:
                mark = self._mark()
                state = export_state(self.router)  # both trackers lock: safe from this thread
                text = json.dumps(state, sort_keys=True)
                now = time.time()
                if text != last or now - last_at >= _REFRESH_SECONDS:
                    self._write(state, mark)
                    last, last_at = text, now
                    self.written += 1
            except Exception:  # noqa: BLE001 - a failed write must not stop the next one
                log.exception("state snapshot not written")


class LocalStore:
    """One host: the peer bus carries outcomes; a snapshot file hands the state to a starting worker."""

    kind = "local"
    shares_outcomes = False  # the peer bus does
    degraded = False
    errors = 0  # the same read-outs as RedisStore's (a failed snapshot write is logged by the writer)
    last_error: str | None = None

    def __init__(self, state_dir, max_age_seconds: float) -> None:
        self.path = state_dir / SNAPSHOT_FILE
        self.max_age_seconds = max_age_seconds
        self._writer: _SnapshotWriter | None = None

    def load(self, router: Any) -> str:
        """Take over the newest snapshot if one is current; returns a line for the log and /readyz."""
        try:
            snap = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "no state snapshot: starting with every processor UP"
        except (OSError, ValueError) as exc:
            return f"state snapshot {self.path} unreadable ({exc}): starting with every processor UP"
        age = time.time() - float(snap.get("written", 0.0))
        if age > self.max_age_seconds:
            return f"state snapshot is {age:.0f} s old (> {self.max_age_seconds:g} s): starting with every processor UP"
        not_up = import_state(router, snap)
        return f"state taken over from worker {snap.get('pid')} ({age:.1f} s old): " + (", ".join(not_up) or "all UP")

    def start(self, router: Any, loop: Any, apply: Callable[[list[dict]], None]) -> None:
        def write(state: dict, _mark: Any) -> None:
            state = dict(state, written=time.time(), pid=os.getpid())
            atomic.write_bytes(self.path, json.dumps(state).encode())

        self._writer = _SnapshotWriter(router, write)
        self._writer.start()

    def publish(self, outcome: dict) -> None:  # the peer bus shares outcomes on one host
        pass

    def stop(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None


class RedisStore:
    """Several hosts: a Redis stream of outcomes, read by every worker; a snapshot key for starting workers."""

    kind = "redis"
    shares_outcomes = True

    def __init__(self, url: str, window_seconds: float, prefix: str = _PREFIX) -> None:
        import redis  # only needed when configured

        self.url = url
        self.window_ms = int(window_seconds * 1000)
        self.stream = prefix + "outcomes"
        self.snapshot_key = prefix + "snapshot"
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.last_id = "0-0"  # the newest stream entry read
        self.applied_id = "0-0"  # the newest stream entry this worker's state holds
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._writer: _SnapshotWriter | None = None
        self.published = 0
        self.received = 0
        self.errors = 0
        self.last_error: str | None = None
        # True while writes to Redis fail: outcomes then go to this host's workers over the peer bus,
        # so they at least agree with each other (other hosts miss them until Redis answers again)
        self.degraded = False

    # ------------------------------------------------------------------ start: catch up before serving
    def load(self, router: Any) -> str:
        """Load the snapshot and replay the stream after it (blocking: runs before the worker serves)."""
        import redis

        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"Redis at {self.url} does not answer ({exc}); start it (make serve does when "
                                  "SMARTROUTER_STATE_STORE names this host) or set SMARTROUTER_STATE_STORE=local") from None
        raw = self.client.get(self.snapshot_key)
        note = "no state snapshot in Redis"
        start = "-"
        if raw:
            snap = json.loads(raw)
            not_up = import_state(router, snap)
            start = "(" + snap["id"]
            self.last_id = self.applied_id = snap["id"]
            note = f"state taken over from {snap.get('worker')}: " + (", ".join(not_up) or "all UP")
        replayed = 0
        while True:
            entries = self.client.xrange(self.stream, min=start, max="+", count=10_000)
            if not entries:
                break
            self._apply_now(router, entries)
            replayed += len(entries)
            start = "(" + self.last_id
        return f"{note}; {replayed} outcomes replayed from the stream"

    def _apply_now(self, router: Any, entries: list) -> None:
        outcomes = []
        for entry_id, fields in entries:
            self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            outcomes.append(json.loads(fields[b"o"]))
        for o in outcomes:
            _observe(router, o)
        self.applied_id = self.last_id

    # ------------------------------------------------------------------ running
    def start(self, router: Any, loop: Any, apply: Callable[[list[dict]], None]) -> None:
        """Start the reader (entries of other workers -> ``apply`` on ``loop``), the writer and the snapshots."""
        def deliver(outcomes: list[dict], entry_id: str) -> None:  # on the loop's thread
            if outcomes:
                apply(outcomes)
            self.applied_id = entry_id

        def read() -> None:
            import redis

            client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)
            while not self._stop.is_set():
                try:
                    got = client.xread({self.stream: self.last_id}, count=1000, block=1000)
                except redis.RedisError as exc:
                    self._failed(exc)
                    self._stop.wait(1.0)
                    continue
                mine, theirs = self.worker.encode(), []
                for _, entries in got or ():
                    for entry_id, fields in entries:
                        self.last_id = entry_id.decode()
                        if fields.get(b"w") != mine:  # our own were applied when we took them
                            theirs.append(json.loads(fields[b"o"]))
                self.received += len(theirs)
                if got:
                    loop.call_soon_threadsafe(deliver, theirs, self.last_id)

        def write() -> None:
            import redis

            while not self._stop.is_set():
                try:
                    first = self._outbox.get(timeout=0.5)
                except queue.Empty:
                    if self.degraded:  # nothing is queued while degraded: ask Redis whether it is back
                        try:
                            self.degraded = not self.client.ping()
                        except redis.RedisError:
                            pass
                    continue
                batch = [first]
                while len(batch) < 1000:
                    try:
                        batch.append(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                minid = f"{int(time.time() * 1000) - self.window_ms}-0"
                try:
                    pipe = self.client.pipeline(transaction=False)
                    for o in batch:
                        pipe.xadd(self.stream, {"w": self.worker, "o": json.dumps(o)}, minid=minid, approximate=True)
                    pipe.execute()
                    self.published += len(batch)
                    self.degraded = False
                except redis.RedisError as exc:
                    self.degraded = True  # the service shares over the peer bus meanwhile (this host only)
                    self._failed(exc)

        def snapshot(state: dict, covered: str) -> None:
            # the state was exported after applied_id was read, so it holds at least every entry up to it
            import redis

            state = dict(state, id=covered, worker=self.worker, written=time.time())
            try:
                self.client.set(self.snapshot_key, json.dumps(state), px=self.window_ms)
            except redis.RedisError as exc:  # counted and logged like the stream's errors, not a traceback each time
                self._failed(exc)

        for target, name in ((read, "state-stream-read"), (write, "state-stream-write")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._writer = _SnapshotWriter(router, snapshot, mark=lambda: self.applied_id)
        self._writer.start()

    def publish(self, outcome: dict) -> None:
        """Queue one outcome (already applied here) for the stream; never blocks the caller."""
        self._outbox.put(outcome)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.last_error is None or self.errors % 100 == 1:
            log.warning("Redis state store: %s (%d errors)", exc, self.errors)
        self.last_error = str(exc)

    def stop(self) -> None:
        if self._writer is not None:
            self._writer.stop()
        deadline = time.monotonic() + 2.0  # let queued outcomes reach the stream
        while not self._outbox.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        for t in self._threads:
            t.join(timeout=3)
        self.client.close()


def _observe(router: Any, o: dict) -> None:
    """Apply one shared outcome (the dict `outcome()` or `resolution()` builds) to ``router``."""
    seg = o.get("segment")
    segment = tuple(seg) if seg is not None else None
    if o.get("resolves"):
        _apply_resolution(router, o, segment)
        return
    router.observe_outcome(o["processor"], o["status"], error_code=o.get("error_code"), at=o["at"],
                           segment=segment, card_bin=o.get("card_bin"))


def _apply_resolution(router: Any, o: dict, segment: tuple | None) -> None:
    """The part of an outcome only its decision's segment and BIN make possible (health already has it)."""
    kind = outcome_kind(o["status"], o.get("error_code"))
    if kind == FAILURE:  # a processor failure counts in health only, never for the segment's issuers
        return
    approved = kind == SUCCESS
    if segment is not None:
        router.bandit.observe(o["processor"], segment, approved)
        fallback = getattr(router, "fallback_router", None)
        if fallback is not None and hasattr(fallback, "observe"):
            fallback.observe(tuple(str(v) for v in segment[:3]), o["processor"], approved)
    if o.get("card_bin") and getattr(router, "features", None) is not None:
        when = datetime.fromtimestamp(o["at"], tz=timezone.utc).replace(tzinfo=None)
        router.features.observe_bin(o["processor"], when, approved, o["card_bin"])


def outcome(processor: str, status: str, error_code: str | None, at: float, segment: tuple | None,
            card_bin: str | None, request_id: str | None = None) -> dict:
    """One outcome as the stores carry it; ``request_id`` when the worker that took it could not resolve it."""
    o = {"processor": processor, "status": status, "error_code": error_code, "at": at,
         "segment": list(segment) if segment is not None else None, "card_bin": card_bin}
    if request_id is not None:
        o["request_id"] = request_id
    return o


def apply_outcomes(router: Any, outcomes: list[dict], publish: Callable[[dict], None] | None = None) -> None:
    """Apply outcomes heard from other workers (on the event loop's thread, like the handlers).

    An outcome taken on another host names its request id when that host could not resolve it;
    the worker that made the decision (the one holding the id) publishes its segment and BIN as a
    resolution, which every worker applies to the posteriors and the BIN history.
    """
    for o in outcomes:
        try:
            _observe(router, o)
            rid = o.get("request_id")
            if rid and publish is not None:
                segment, card_bin, mine = router.resolve(rid, None, o.get("card_bin"))
                if mine:
                    # a BIN the outcome carried was counted when it was taken: only one it lacked is added now
                    bin_only = None if o.get("card_bin") else card_bin
                    r = dict(outcome(o["processor"], o["status"], o.get("error_code"), o["at"], segment, bin_only),
                             resolves=rid)
                    _apply_resolution(router, r, segment)
                    publish(r)
        except Exception:  # noqa: BLE001 - one bad entry must not stop the rest
            log.exception("shared outcome %r not applied", o)


def open_store(settings: Any, config: Any) -> LocalStore | RedisStore:
    """The store ``SMARTROUTER_STATE_STORE`` names (health window = how far back state matters)."""
    window = config.health.window_seconds
    if settings.state_store == "local":
        return LocalStore(settings.state_dir, max_age_seconds=window)
    return RedisStore(settings.state_store, window_seconds=window)
