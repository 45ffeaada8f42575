"""Per-processor rolling health from outcomes: UP -> DEGRADED -> DOWN -> RECOVERING -> UP.

Only the processor's own failures count (timeouts, processor errors); an issuer decline means
the processor answered, so it counts as a healthy response. The state is decided on the last
``recent_outcomes`` outcomes inside a ``window_seconds`` window, so a busy processor is caught
within a handful of failures and a quiet one is not judged on stale outcomes.

A DOWN processor gets no traffic except probes (a small share chosen by the policy); the first
successful probe moves it to RECOVERING, where its traffic ramps up (`admit_share`: from
``recovery_ramp_start`` of the payments it would win to all of them), and ``recovery_successes``
consecutive successes bring it back UP (a failure on the way sends it back DOWN). Every state change is logged and passed
to ``on_transition`` (the service counts them in its metrics).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from smartrouter import catalog
from smartrouter.routing.config import HealthConfig
from smartrouter.clock import EventClock

log = logging.getLogger("smartrouter.routing.health")

UP, DEGRADED, DOWN, RECOVERING = "UP", "DEGRADED", "DOWN", "RECOVERING"
STATES: tuple[str, ...] = (UP, DEGRADED, DOWN, RECOVERING)

# outcome kinds
SUCCESS = "approved"
DECLINE = "declined"  # issuer said no: the processor is healthy
FAILURE = "failure"  # timeout or processor error: the processor is not


def outcome_kind(status: str, error_code: str | None = None, error_category: str | None = None) -> str:
    """Map an outcome (APPROVED / DECLINED + code / TIMEOUT / ERROR) to success, decline or failure."""
    status = status.upper()
    if status == "APPROVED":
        return SUCCESS
    if status in ("TIMEOUT", "ERROR"):
        return FAILURE
    if error_category is None and error_code is not None and error_code in catalog.ERROR_CODES:
        error_category = catalog.ERROR_CODES[error_code].category
    if error_category == catalog.PROCESSOR_ERROR_CATEGORY:
        return FAILURE
    return DECLINE


def clock_label(ts: float) -> str:
    """HH:MM in UTC, the form reasons use ("ELAVON down since 14:02")."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%H:%M")


@dataclass
class _Proc:
    state: str = UP
    since: float = 0.0
    events: deque = field(default_factory=deque)  # (ts, failed: bool), newest right
    consecutive_ok: int = 0
    newest: float = float("-inf")  # newest outcome time seen
    outcomes: int = 0
    failures: int = 0


@dataclass(frozen=True)
class Transition:
    processor: str
    old: str
    new: str
    at: float
    reason: str


class HealthTracker:
    """Rolling health per processor; thread-safe; times are epoch seconds (event time)."""

    def __init__(
        self,
        config: HealthConfig,
        processors: tuple[str, ...] = catalog.PROCESSORS,
        on_transition: Callable[[Transition], None] | None = None,
        clock: EventClock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or EventClock.from_config(config)
        self.rejected_future = 0  # outcomes too far ahead of the clock, not recorded
        self._procs: dict[str, _Proc] = {p: _Proc() for p in processors}
        self._lock = threading.Lock()
        self._on_transition = on_transition
        self.transitions: deque[Transition] = deque(maxlen=200)
        self.transition_count = 0  # every state change so far (the snapshot writer hands them on at once)

    # ------------------------------------------------------------------ reads
    def state(self, processor: str) -> str:
        """Current state of one processor (UP for an unknown one)."""
        p = self._procs.get(processor)
        return p.state if p is not None else UP

    def since(self, processor: str) -> float:
        return self._procs[processor].since

    def is_down(self, processor: str) -> bool:
        p = self._procs.get(processor)
        return p is not None and p.state == DOWN

    def admit_share(self, processor: str) -> float:
        """Share of the payments it would win that a processor should get now: 1, or a ramp while RECOVERING."""
        p = self._procs.get(processor)
        if p is None or p.state in (UP, DEGRADED):
            return 1.0
        if p.state == DOWN:
            return 0.0
        c = self.config
        start = c.recovery_ramp_start
        return min(1.0, start + (1.0 - start) * p.consecutive_ok / c.recovery_successes)

    def any_down(self) -> bool:
        return any(p.state == DOWN for p in self._procs.values())

    def describe(self, processor: str) -> str:
        """Words for a reason line, e.g. 'ELAVON down since 14:02'."""
        p = self._procs[processor]
        return f"{processor} {p.state.lower()} since {clock_label(p.since)}"

    def snapshot(self, at: float | None = None) -> dict[str, dict]:
        """Each processor's state, since and recent rates (for /v1/processors/health)."""
        at = self.clock.now() if at is None else at
        horizon = at - self.config.window_seconds
        out: dict[str, dict] = {}
        with self._lock:
            for name, p in self._procs.items():
                # read-only: a health read at another time than the outcomes' must not drop any of them
                window = [f for t, f in p.events if horizon <= t <= at]
                n = len(window)
                fails = sum(window)
                recent = window[-self.config.recent_outcomes :]
                r_fail = sum(recent)
                out[name] = {
                    "state": p.state,
                    "since": p.since,
                    "window_outcomes": n,
                    "window_failure_rate": (fails / n) if n else None,
                    "recent_failure_rate": (r_fail / len(recent)) if recent else None,
                    "consecutive_successes": p.consecutive_ok,
                    "outcomes_total": p.outcomes,
                    "failures_total": p.failures,
                }
        return out

    # ------------------------------------------------------------------ writes
    def observe(self, processor: str, kind: str, at: float | None = None) -> Transition | None:
        """Record one outcome (kind from `outcome_kind`); returns the state change it caused, if any.

        An outcome further ahead of the reference clock than it allows is not recorded (counted in
        ``rejected_future``): it would move the window past every real outcome. A late one is placed
        in time order and never moves the window back or forward.
        """
        at = self.clock.now() if at is None else at
        if not self.clock.admits(at):
            self.rejected_future += 1
            return None
        failed = kind == FAILURE
        with self._lock:
            p = self._procs.get(processor)
            if p is None:
                return None
            p.outcomes += 1
            p.failures += failed
            p.newest = max(p.newest, at)
            if at < p.newest - self.config.window_seconds:
                return None  # too late to be inside the window: counted in the totals only
            ev = p.events
            if not ev or ev[-1][0] <= at:
                ev.append((at, failed))
            else:  # out of order: keep time order, so "the last N outcomes" means the newest N
                i = len(ev)  # a late outcome is usually only a little late: search from the newest end
                while i > 0 and ev[i - 1][0] > at:
                    i -= 1
                ev.insert(i, (at, failed))
            self._trim(p, self._horizon_now(p))
            p.consecutive_ok = 0 if failed else p.consecutive_ok + 1
            change = self._next_state(p, failed)
            if change is None:
                return None
            new, reason = change
            tr = Transition(processor, p.state, new, at, reason)
            p.state, p.since = new, at
            if new in (UP, RECOVERING):
                # Judge the recovered processor on what happens from now on, not on the outage.
                p.events.clear()
                if new == RECOVERING:
                    p.events.append((at, False))
        self.transitions.append(tr)
        self.transition_count += 1
        log.warning("processor %s: %s -> %s at %s (%s)", processor, tr.old, tr.new, clock_label(at), reason)
        if self._on_transition is not None:
            self._on_transition(tr)
        return tr

    def _horizon_now(self, p: _Proc) -> float:
        """The time the window ends at: the newest outcome, but never past the reference clock.

        So an outcome admitted a little ahead of the clock does not push real, recent outcomes out.
        """
        return min(p.newest, self.clock.now())

    def _trim(self, p: _Proc, at: float) -> None:
        horizon = at - self.config.window_seconds
        ev = p.events
        while ev and ev[0][0] < horizon:
            ev.popleft()

    # ------------------------------------------------------------------ hand-over to a starting worker
    def export_state(self) -> dict:
        """What a worker that starts now needs to continue from this one's state (JSON-able, small).

        Only the newest ``recent_outcomes`` outcomes per processor are kept: they alone decide the
        state machine's next step.
        """
        keep = self.config.recent_outcomes
        with self._lock:
            return {name: {"state": p.state, "since": p.since, "newest": p.newest if p.events or p.outcomes else None,
                           "consecutive_ok": p.consecutive_ok,
                           "outcomes": p.outcomes, "failures": p.failures,
                           "events": [[t, bool(f)] for t, f in _newest(p.events, keep)]}
                    for name, p in self._procs.items()}

    def import_state(self, state: dict) -> list[str]:
        """Take over ``export_state()``'s result (from a live worker or the shared store); returns the processors not UP."""
        not_up = []
        with self._lock:
            for name, s in state.items():
                p = self._procs.get(name)
                if p is None:
                    continue
                p.state, p.since = str(s["state"]), float(s["since"])
                p.newest = float(s["newest"]) if s.get("newest") is not None else float("-inf")
                p.consecutive_ok, p.outcomes, p.failures = int(s["consecutive_ok"]), int(s["outcomes"]), int(s["failures"])
                p.events = deque((float(t), bool(f)) for t, f in s["events"])
                if p.state != UP:
                    not_up.append(f"{name} {p.state}")
        return not_up

    def _next_state(self, p: _Proc, failed: bool) -> tuple[str, str] | None:
        c = self.config
        if p.state == DOWN:
            return (RECOVERING, "probe succeeded") if not failed else None
        if p.state == RECOVERING:
            if failed:
                return DOWN, "failed while recovering"
            if p.consecutive_ok >= c.recovery_successes:
                return UP, f"{p.consecutive_ok} consecutive successes"
            return None
        recent = _newest(p.events, c.recent_outcomes)  # not list(events): the window may hold ~10^6
        n = len(recent)
        fails = sum(1 for _, f in recent if f)
        rate = fails / n if n else 0.0
        if fails >= c.down_min_failures and rate >= c.down_failure_rate:
            return DOWN, f"{fails} of last {n} outcomes failed"
        if p.state == UP and fails >= c.degraded_min_failures and rate >= c.degraded_failure_rate:
            return DEGRADED, f"{fails} of last {n} outcomes failed"
        if p.state == DEGRADED and rate < c.recovered_failure_rate and n >= min(c.recent_outcomes, 10):
            return UP, f"failure rate {rate:.0%} over last {n} outcomes"
        return None


def _newest(events: deque, n: int) -> list:
    """The newest ``n`` events, oldest first, without copying the whole window."""
    out = list(itertools.islice(reversed(events), n))
    out.reverse()
    return out
