"""The routing service's state, without HTTP: what `serve/app.py`'s handlers are given.

`ServiceDeps(...).build()` assembles a `Service` (settings, routing config, model holder, static
rules, online features, router, decision log, metrics); `Service.startup(loop)` /
`Service.shutdown(loop)` start and stop what runs beside the requests (outcome sharing with the
other workers, the model poller, the decision log's writer, the feature-seeding thread). Tests
drive a `Service` directly; the Litestar factory only wires it to routes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from smartrouter.clock import EVENT
from smartrouter.config import Settings, load_settings
from smartrouter.routing import peers, state_store
from smartrouter.routing.config import RoutingConfig, load_routing_config
from smartrouter.routing.decision_log import DecisionLog
from smartrouter.routing.health import STATES, Transition, outcome_kind
from smartrouter.routing.model_holder import ModelHolder
from smartrouter.routing.policy import Router, owner_of, rules_from_sources

log = logging.getLogger("smartrouter.serve")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Where a host's workers record the model version they last loaded (see ModelHolder: a worker that
# starts while the pointer names a version it cannot load serves this one, like the others).
FLEET_RECORD = "model/serving.json"
# How often a worker without static rules tries to read them again (the warehouse may be back).
RULES_RETRY_SECONDS = 30.0
_DB_PID = re.compile(r"_(\d+)\.db$")
# How far back the online features' history reaches when a worker starts (the longest feature window is 24 h;
# the BIN history reads 28 days).
SEED_HISTORY_DAYS = 28


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per service).

    With several workers (`smartrouter serve --workers N` sets PROMETHEUS_MULTIPROC_DIR), every
    worker writes its values to files there and a scrape of any worker reports all of them:
    counters and the histogram summed over workers (a dead worker's counts stay: they are history).
    Processor state and model version are states every worker agrees on (they share outcomes and
    the registry pointer): they report the most recent value any live worker wrote, so a state
    left behind by a worker that was killed (kill -9 runs no exit hook) never shows next to the
    current one; the files of dead workers' live gauges are removed at scrape time.
    Health transitions are counted by every worker that makes them.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        self.decisions = Counter("smartrouter_decisions", "Routing decisions", ["source", "arm"], registry=r)
        self.fallbacks = Counter("smartrouter_fallbacks", "Decisions that fell back, by reason", ["reason"], registry=r)
        self.latency = Histogram(
            "smartrouter_decision_latency_seconds", "In-process decision latency", registry=r,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
        )
        self.outcomes = Counter("smartrouter_outcomes", "Outcomes received", ["processor", "kind"], registry=r)
        self.transitions = Counter(
            "smartrouter_processor_transitions", "Processor health state changes", ["processor", "from_state", "to_state"], registry=r
        )
        self.states = Gauge("smartrouter_processor_state", "1 for the processor's current state", ["processor", "state"],
                            registry=r, multiprocess_mode="livemostrecent")
        self.model = Gauge("smartrouter_model_info", "1 for the model version being served", ["version"], registry=r,
                           multiprocess_mode="livemostrecent")
        self.model_versions_shown: set[str] = set()  # every version this worker has labelled
        self.model_failed = Gauge("smartrouter_model_load_failed", "1 when the last model load was refused", registry=r,
                                  multiprocess_mode="livemax")
        self.reloads = Counter("smartrouter_model_reloads", "Model load attempts", ["result"], registry=r)
        self.log_dropped = Gauge("smartrouter_decision_log_dropped", "Log records dropped (buffer full)", registry=r,
                                 multiprocess_mode="livesum")
        self.bad_requests = Counter("smartrouter_rejected_requests", "Requests answered 4xx", ["status"], registry=r)
        # set by each /readyz probe (readiness is computed there, with the probe's own bookkeeping); the least
        # ready live worker wins, so one worker out of service shows as 0
        self.ready = Gauge("smartrouter_ready", "1 when the worker's last /readyz answered ready, 0 when not",
                           registry=r, multiprocess_mode="livemin")
        from smartrouter.drift_metrics import DriftGauges

        self.drift = DriftGauges(r)  # smartrouter_drift_*: the latest `smartrouter drift check` report

    def exposition(self) -> bytes:
        """The text a scrape returns: this worker's registry, or every worker's files."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        reap_dead_workers(os.environ[MULTIPROCESS_ENV])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def worker_exit(self) -> None:
        """Drop this worker's live gauges from the shared files (counters stay: they are history)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def reap_dead_workers(folder: str) -> list[int]:
    """Remove the live-gauge files of worker processes that no longer exist; returns their pids.

    A worker killed with SIGKILL never runs `worker_exit`, so its live gauges would be reported
    for ever. ``os.kill(pid, 0)`` asks whether the pid exists (PermissionError: it does, another
    user's). A reused pid keeps a dead worker's file until that process exits too: harmless, as
    the most recent value wins for the states that matter.
    """
    from prometheus_client import multiprocess

    dead: list[int] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return dead
    for pid in {int(m.group(1)) for n in names if n.startswith("gauge_live") and (m := _DB_PID.search(n))}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
            dead.append(pid)
        except PermissionError:
            pass
    return dead


@dataclass
class Readiness:
    """Whether this worker should get traffic, and every reason it should not."""

    ready: bool
    reasons: list[str]


@dataclass
class Service:
    """Everything a handler needs: the router, the model holder, the decision log, metrics, and their state."""

    settings: Settings
    config: RoutingConfig
    router: Router
    holder: ModelHolder
    decision_log: DecisionLog
    metrics: Metrics
    rules_source: str
    poll: bool = True
    notes: list[str] = field(default_factory=list)
    online_features: str = "off"
    bus: peers.PeerBus | None = None  # outcome sharing with the other workers (None: on its own)
    share_outcomes: bool = True
    seed_features: bool = False
    rules_from_warehouse: bool = True
    draining: bool = False  # set when the worker is told to stop: /readyz answers 503 so a balancer drains it
    _feature_errors_seen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    store: Any = None  # state_store.LocalStore | RedisStore: hands state to starting workers (and hosts)
    state_note: str | None = None  # what this worker started from (the store's words)
    retry: Any = None  # smartrouter.retry.serving.RetryService: made on the first POST /v1/retry

    # ------------------------------------------------------------------ outcomes, shared across workers
    def on_peer_message(self, msg: peers.PeerMessage) -> None:
        """Apply what another worker heard (runs on the event loop's thread, like the handlers)."""
        if msg.kind == peers.RELOAD:
            threading.Thread(target=self.holder.reload, name="peer-reload", daemon=True).start()
            return
        segment = tuple(msg.segment) if msg.segment is not None else None
        if msg.kind == peers.FORWARD:  # we made this decision: resolve it, apply it, tell everyone
            segment, card_bin, _ = self.router.resolve(msg.request_id, segment, msg.card_bin)
            self._apply_and_share(msg.processor, msg.status, msg.error_code, msg.at, segment, card_bin)
        elif msg.kind == peers.OUTCOME:
            self.router.observe_outcome(msg.processor, msg.status, error_code=msg.error_code, at=msg.at,
                                        segment=segment, card_bin=msg.card_bin)

    def _apply_and_share(self, processor: str, status: str, error_code: str | None, at: float,
                         segment: tuple | None, card_bin: str | None, unresolved: str | None = None) -> str:
        kind = self.router.observe_outcome(processor, status, error_code=error_code, at=at, segment=segment, card_bin=card_bin)
        if self.store is not None and self.store.shares_outcomes and not self.store.degraded:  # Redis: every host reads it
            # an id no worker of this host holds may be another host's: its owner resolves it from the stream
            self.store.publish(state_store.outcome(processor, status, error_code, at, segment, card_bin, unresolved))
        elif self.bus is not None:
            self.bus.publish(peers.message(peers.OUTCOME, self.bus.pid, processor=processor, status=status,
                                           error_code=error_code, at=at, segment=segment, card_bin=card_bin))
        return kind

    def take_outcome(self, processor: str, status: str, error_code: str | None, at: float, request_id: str | None,
                     segment: tuple | None, card_bin: str | None) -> str:
        """One outcome from the merchant: applied here and in every other worker; returns its kind.

        The worker that made the decision is the one that knows its segment and BIN: when the
        request id names another live worker, the outcome goes there to be resolved and shared.
        Raises `EventTimeError` (answered 400) for an outcome stamped too far ahead of the clock.
        """
        self.router.health.clock.check(at)
        segment, card_bin, mine = self.router.resolve(request_id, segment, card_bin)
        owner = owner_of(request_id)
        bus = self.bus
        if not mine and bus is not None and owner is not None and owner != bus.pid and bus.has_peer(owner):
            sent = bus.send(owner, peers.message(peers.FORWARD, bus.pid, processor=processor, status=status,
                                                 error_code=error_code, at=at, request_id=request_id,
                                                 segment=segment, card_bin=card_bin))
            if sent:
                return outcome_kind(status, error_code)
        unresolved = request_id if (not mine and request_id is not None and segment is None) else None
        return self._apply_and_share(processor, status, error_code, at, segment, card_bin, unresolved)

    def request_reload(self) -> str:
        """Load the promoted version now (and tell the other workers to); returns the holder's result."""
        result = self.holder.reload()
        if self.bus is not None:  # the other workers load it now too, not at their next poll
            self.bus.publish(peers.message(peers.RELOAD, self.bus.pid))
        return result

    # ------------------------------------------------------------------ readiness
    def readiness(self) -> Readiness:
        """Ready unless: no static rules, the model waits for online features, features fail, or draining.

        Called by each /readyz probe; "features fail" means the feature state counted new errors
        since the previous probe (a balancer probes every few seconds).
        """
        reasons: list[str] = []
        if self.draining:
            reasons.append("draining: the worker is shutting down (SIGTERM); send new payments elsewhere")
        if self.rules_source.startswith("none"):
            reasons.append(f"no static rules source: {self.rules_source}; rule-routed payments get the fallback "
                           f"order (model / success rates); retried every {RULES_RETRY_SECONDS:g} s")
        router = self.router
        if self.holder.current is not None and router.features is not None \
                and not router.features_warm(router.health.clock.now()):
            reasons.append(f"online features {self.online_features}: the model waits for their history, "
                           "static rules route its payments meanwhile")
        errors = getattr(router.features, "errors", None)
        if isinstance(errors, int):
            if errors > self._feature_errors_seen:
                reasons.append(f"online features failing for payments ({errors - self._feature_errors_seen} errors "
                               f"since the last probe, {errors} in all; last: {getattr(router.features, 'last_error', None)}): "
                               "the model scores without them")
            self._feature_errors_seen = errors
        return Readiness(not reasons, reasons)

    def begin_drain(self) -> None:
        """Stop being ready (a balancer drains this worker); requests already here are still answered."""
        if not self.draining:
            self.draining = True
            log.warning("worker %d draining: /readyz answers 503", os.getpid())

    def install_drain_signal(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Chain `begin_drain` in front of the server's SIGTERM handler (uvicorn's, in the worker's main thread).

        The lifespan's shutdown hook comes only after the server has stopped accepting and
        finished in-flight requests, too late to tell a balancer. Here the worker stops being
        ready at once and, with ``[http].drain_seconds``, keeps serving that long (on ``loop``)
        before the server's own shutdown starts; a second SIGTERM stops it at once. Returns False
        where there is no Python handler to chain (not the main thread, or no server installed one).
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False
        delay = self.config.drain_seconds

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.draining or delay <= 0 or loop is None:
                self.begin_drain()
                previous(signum, frame)
                return
            self.begin_drain()
            log.warning("worker %d stops in %g s ([http].drain_seconds)", os.getpid(), delay)
            # the handler may interrupt the loop mid-step: hand the timer to it the thread-safe way
            loop.call_soon_threadsafe(loop.call_later, delay, previous, signum, None)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    # ------------------------------------------------------------------ static rules
    def retry_rules(self) -> bool:
        """Read the static rules again (warehouse, then the served model's snapshot); True once they serve."""
        current = self.holder.current
        rules, source = rules_from_sources(self.settings, current.rules_rows if current is not None else None,
                                           read_warehouse=self.rules_from_warehouse)
        if rules is None:
            self.rules_source = source
            return False
        self.router.set_rules(rules)
        self.rules_source = source
        log.warning("static rules loaded from %s", source)
        return True

    def _retry_rules_until_loaded(self) -> None:
        while not self._stop.wait(RULES_RETRY_SECONDS):
            try:
                if self.retry_rules():
                    return
            except Exception:  # pragma: no cover - never let the retry thread die
                log.exception("reading the static rules failed")

    # ------------------------------------------------------------------ metrics
    def refresh_gauges(self) -> None:
        """Bring the scrape-time gauges (states, model, log) up to date."""
        m = self.metrics
        for name, snap in self.router.health.snapshot().items():
            for s in STATES:
                m.states.labels(name, s).set(1.0 if snap["state"] == s else 0.0)
        # not Gauge.clear(): prometheus_client does not implement it in multiprocess mode (the
        # default, 2 workers), so a replaced version would keep reporting 1 next to the new one
        current = self.holder.version
        for version in m.model_versions_shown - {current}:
            m.model.labels(version).set(0.0)
        if current:
            m.model.labels(current).set(1.0)
            m.model_versions_shown.add(current)
        m.model_failed.set(1.0 if self.holder.status.failed_version else 0.0)
        m.log_dropped.set(self.decision_log.dropped)
        m.drift.refresh(self.settings.reports_dir)

    # ------------------------------------------------------------------ life cycle
    def startup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start sharing outcomes, the decision log, the model poller and the feature seeding (on the event loop)."""
        if self.share_outcomes:
            try:
                bus = peers.PeerBus(self.settings.state_dir / "peers").open()
                peers.attach(bus, loop, self.on_peer_message)
                self.bus = bus
            except OSError as exc:  # serve on our own rather than not at all; /readyz says so
                self.notes.append(f"outcomes not shared with other workers: {exc}")
                log.warning("peer bus unavailable: %s", exc)
            self._start_store(loop)
        if self.router.features is not None:  # one reference clock for health and features
            self.router.features.clock = self.router.health.clock
        self.install_drain_signal(loop)
        self.refresh_gauges()
        freeze_heap()
        self.decision_log.start()
        if self.poll:
            self.holder.start()
        if self.rules_source.startswith("none"):
            threading.Thread(target=self._retry_rules_until_loaded, name="rules-retry", daemon=True).start()
        if self.seed_features and self.router.features is not None:
            self.online_features = "seeding"
            self.router.features_pending()
            threading.Thread(target=seed_online_features, args=(self, loop), name="seed-features", daemon=True).start()

    def _start_store(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take over the current state (before this worker serves), then keep handing it on."""
        try:
            store = state_store.open_store(self.settings, self.config)
            note = store.load(self.router)
        except (ConnectionError, ImportError, OSError) as exc:  # serve on this host's view rather than not at all
            self.notes.append(f"shared state store unavailable, this worker shares with its host only: {exc}")
            log.error("state store %s unavailable: %s", self.settings.state_store, exc)
            store = state_store.LocalStore(self.settings.state_dir, self.config.health.window_seconds)
            note = store.load(self.router)
        store.start(self.router, loop, lambda outcomes: state_store.apply_outcomes(self.router, outcomes, store.publish))
        self.store, self.state_note = store, note
        log.warning("worker %d: %s", os.getpid(), note)

    def shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop the poller, leave the peer bus, flush the decision log, drop this worker's gauges."""
        self.begin_drain()
        self._stop.set()
        if self.store is not None:
            self.store.stop()
            self.store = None
        self.holder.stop()
        if self.bus is not None:
            peers.detach(self.bus, loop)
            self.bus.close()
            self.bus = None
        self.decision_log.close()
        self.metrics.worker_exit()
        # the process is ending: hand the frozen heap back to the collector so the interpreter's
        # teardown frees it (frozen cycles are never collected; native bindings report them as leaks)
        gc.unfreeze()


def seed_online_features(svc: Service, loop: asyncio.AbstractEventLoop) -> None:
    """Seed the online feature state from the warehouse's last 28 days (background, best effort).

    Until it is installed the router serves treatment payments by the static rules (see
    `Router.features_pending`); the swap happens on the event loop's thread, so it never races a
    decision or an outcome, and outcomes heard meanwhile are replayed into the new state.
    """
    try:
        from smartrouter import features

        until = datetime.now(timezone.utc).replace(tzinfo=None)
        if svc.router.health.clock.mode == EVENT:
            # simulated time (the live loop) runs ahead of the wall clock: a service (re)started
            # mid-simulation seeds up to the newest outcome the warehouse holds, not up to today
            last = features.last_attempt_time(svc.settings)
            if last is not None and last >= until:
                until = last + timedelta(seconds=1)
        frame = features.outcome_history(svc.settings, until - timedelta(days=SEED_HISTORY_DAYS), until)
        state = features.OnlineFeatureState.from_history(frame, clock=svc.router.health.clock)
        n = len(frame)
        del frame
    except Exception as exc:  # noqa: BLE001 - serve without history rather than not at all
        svc.online_features = "failed"
        svc.notes.append(f"online features not seeded from the warehouse ({exc}); the model waits until live "
                         "outcomes cover the feature windows, static rules meanwhile")
        log.warning("online features not seeded: %s", exc)
        return

    def install() -> None:
        replayed = svc.router.install_features(state, until)
        svc.online_features = "seeded"
        log.warning("online features seeded from %d outcomes (+%d heard while loading)", n, replayed)
        freeze_heap()

    loop.call_soon_threadsafe(install)


def freeze_heap() -> None:
    """Move everything alive now (model, rules, seeded online state: ~0.5M objects) out of the GC's reach.

    A full collection walks every tracked object; over the seeded state it takes ~0.5 s, a pause
    every request queued behind it would see. These objects live as long as the process, so
    tracking them buys nothing (gc.freeze, as CPython's docs advise for long-lived servers).
    """
    gc.collect()
    gc.freeze()


@dataclass
class ServiceDeps:
    """What a service is built from; every field has the production default (tests inject fakes).

    ``rules``: a RulesEngine, rule rows, or None to read them (warehouse view, then the model's
    snapshot); ``features`` / ``fallback_router``: "auto" builds the package's own, None goes without.
    """

    settings: Settings | None = None
    routing_config: RoutingConfig | None = None
    model_loader: Callable[[Path], Any] | None = None
    rules: Any = None
    features: Any = "auto"
    fallback_router: Any = "auto"
    poll: bool = True
    seed: int | None = None
    rules_from_warehouse: bool = True
    seed_features: bool = True
    share_outcomes: bool = True

    def build(self) -> Service:
        """Load the model, the rules and the features, and assemble the service (nothing runs until `startup`)."""
        settings = self.settings or load_settings()
        config = self.routing_config or load_routing_config()
        metrics = Metrics()
        services: list[Service] = []  # filled below; the callbacks fire only once the service exists

        def on_transition(tr: Transition) -> None:
            metrics.transitions.labels(tr.processor, tr.old, tr.new).inc()
            if services:  # gauges follow the change at once: a scrape may reach another worker
                services[0].refresh_gauges()

        def on_change(status: Any, result: str) -> None:
            metrics.reloads.labels(result).inc()
            if services:
                services[0].refresh_gauges()

        holder = ModelHolder(settings.registry_dir, loader=self.model_loader, poll_seconds=config.reload_poll_seconds,
                             on_change=on_change, fleet_record=settings.state_dir / FLEET_RECORD)
        holder.check()  # the first load happens before the first request
        rules, rules_source = self._rules(settings, holder)
        features, seed_features = self.features, self.seed_features
        if features == "auto":
            try:
                from smartrouter.features import OnlineFeatureState

                features = OnlineFeatureState()
            except Exception:  # noqa: BLE001
                features = None
        else:
            seed_features = False  # given features are the caller's to fill
        fallback_router = self.fallback_router
        if fallback_router == "auto":
            try:
                from smartrouter.policies import SuccessRateRouter

                fallback_router = SuccessRateRouter()
            except Exception:  # noqa: BLE001
                fallback_router = None
        router = Router(config, rules, holder, features=features, fallback_router=fallback_router,
                        on_transition=on_transition, seed=self.seed)
        fallback_note = None
        if config.policy.fallback_rules == "optimized":  # routing.toml: the fallback by `rules install`'s table
            from smartrouter.rule_search import load_optimized

            router.fallback_rules, where = load_optimized(settings.registry_dir)
            fallback_note = f"fallback rules: {where}" + ("" if router.fallback_rules is not None else
                                                          "; the merchant's rules route the fallback")
        dlog = DecisionLog(settings.state_dir / "decisions", config.decision_log.queue_size,
                           config.decision_log.segment_records, config.decision_log.flush_seconds)
        svc = Service(settings, config, router, holder, dlog, metrics, rules_source, poll=self.poll,
                      share_outcomes=self.share_outcomes, seed_features=seed_features,
                      rules_from_warehouse=self.rules_from_warehouse)
        if fallback_note:
            svc.notes.append(fallback_note)
        services.append(svc)
        return svc

    def _rules(self, settings: Settings, holder: ModelHolder) -> tuple[Any, str]:
        rules = self.rules
        if rules is None:
            snapshot = holder.current.rules_rows if holder.current is not None else None
            return rules_from_sources(settings, snapshot, read_warehouse=self.rules_from_warehouse)
        if isinstance(rules, list):
            from smartrouter.rules import RulesEngine

            rules = RulesEngine(rules)
        return rules, "given"
