"""The Litestar edge over `smartrouter.routing`: typed requests in, decisions out, nothing else.

`create_app()` builds the application; `uvicorn --factory serve.app:create_app` (what
`smartrouter serve` runs) serves it. Handlers validate, call the router, log and count; all
decision logic lives in the library. Request/response models are msgspec Structs, so the
OpenAPI schema (served at /schema) is generated from the same declarations that validate.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import os
import re
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from smartrouter import catalog
from smartrouter.config import Settings, load_settings
from smartrouter.errors import SmartrouterError
from smartrouter.routing.config import RoutingConfig, load_routing_config
from smartrouter.routing.decision_log import DecisionLog
from smartrouter.routing.health import STATES, Transition
from smartrouter.routing.model_holder import ModelHolder
from smartrouter.routing import peers
from smartrouter.routing.health import outcome_kind
from smartrouter.routing.policy import NoEligibleProcessor, Router, owner_of, rules_from_sources

log = logging.getLogger("smartrouter.serve")
_MISSING = re.compile(r"missing required field `([^`]+)`")

# ---------------------------------------------------------------- request / response models
Currency = Literal[catalog.CURRENCIES]  # type: ignore[valid-type]
Brand = Literal[catalog.CARD_BRANDS]  # type: ignore[valid-type]
CardType = Literal[catalog.CARD_TYPES]  # type: ignore[valid-type]
Processor = Literal[catalog.PROCESSORS]  # type: ignore[valid-type]
MessageType = Literal[catalog.MESSAGE_TYPES]  # type: ignore[valid-type]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Bin = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6,8}$", description="6-8 digit card BIN")]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2")]
NonNeg = Annotated[float, msgspec.Meta(ge=0, le=1e9)]


class RouteRequest(msgspec.Struct, kw_only=True):
    """The payment context the merchant's router sends for one attempt."""

    order_id: Id
    amount: Annotated[float, msgspec.Meta(gt=0, description="in the payment's currency")]
    currency: Currency
    card_bin: Bin
    card_brand: Brand
    card_type: CardType
    user_id: Id | None = None
    payment_id: Id | None = None
    attempt_id: Id | None = None
    card_country: Country | None = None
    card_level: Literal[catalog.CARD_LEVELS] | None = None  # type: ignore[valid-type]
    bank: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    mci_msi_type: MessageType = "CIT"
    avs_checked: bool | None = None
    num_attempts_order: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1
    previous_order_error_code: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    previous_processor: Processor | None = None
    sec_since_previous_attempt: NonNeg | None = None
    avg_sec_between_payment_attempts: NonNeg | None = None
    order_country_code: Country | None = None
    is_returning_customer: bool | None = None
    user_recency_days: NonNeg | None = None
    user_frequency: Annotated[int, msgspec.Meta(ge=0, le=100000)] | None = None
    user_monetary: NonNeg | None = None
    fraud_rate_cohort: Literal[catalog.FRAUD_COHORTS] | None = None  # type: ignore[valid-type]
    browsing_minutes: NonNeg | None = None
    flight_type: Literal[catalog.FLIGHT_TYPES] | None = None  # type: ignore[valid-type]
    days_to_departure: Annotated[int, msgspec.Meta(ge=0, le=400)] | None = None
    passengers: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None
    fare_class: Literal[catalog.FARE_CLASSES] | None = None  # type: ignore[valid-type]
    channel: Literal[catalog.CHANNELS] | None = None  # type: ignore[valid-type]
    device: Literal[catalog.DEVICES] | None = None  # type: ignore[valid-type]
    browser: Literal[catalog.BROWSERS] | None = None  # type: ignore[valid-type]
    created_at: datetime | None = None
    candidates: Annotated[list[Processor], msgspec.Meta(min_length=1, max_length=len(catalog.PROCESSORS))] | None = None
    explain: bool = False


class RankedProcessor(msgspec.Struct):
    processor: str
    probability: float | None


class Contribution(msgspec.Struct):
    feature: str
    value: float


class RouteResponse(msgspec.Struct):
    """The decision: ranked processors, the choice, its source and reasons, model and arm."""

    request_id: str
    chosen: str
    source: str
    ranked: list[RankedProcessor]
    reasons: list[str]
    model_version: str | None
    arm: str
    propensity: float
    shadow_choice: str | None = None
    contributions: list[Contribution] | None = None


class OutcomeRequest(msgspec.Struct, kw_only=True):
    """The outcome of one attempt, as the merchant's router saw it."""

    processor: Processor
    status: Literal["APPROVED", "DECLINED", "TIMEOUT", "ERROR"]
    request_id: Id | None = None
    order_id: Id | None = None
    attempt_id: Id | None = None
    error_code: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=600_000)] | None = None
    created_at: datetime | None = None
    card_bin: Bin | None = None
    currency: Currency | None = None
    card_brand: Brand | None = None
    card_type: CardType | None = None


class OutcomeResponse(msgspec.Struct):
    accepted: bool
    processor: str
    kind: str
    state: str


class ProcessorHealth(msgspec.Struct):
    processor: str
    state: str
    since: str | None
    window_outcomes: int
    window_failure_rate: float | None
    recent_failure_rate: float | None
    consecutive_successes: int


class HealthResponse(msgspec.Struct):
    processors: list[ProcessorHealth]
    worker: int = 0  # the pid of the worker that answered (all workers share outcomes)


class ReloadResponse(msgspec.Struct):
    result: str
    model_version: str | None
    last_error: str | None


class ReadyResponse(msgspec.Struct):
    ready: bool
    model_version: str | None
    serving: str
    rules_source: str
    model_error: str | None
    decision_log_dropped: int
    notes: list[str]
    online_features: str = "off"  # off | seeding | seeded | failed: history the health/BIN features start from
    worker: int = 0  # this worker's pid
    peers: int = 0  # other workers it shares outcomes with
    peer_messages_dropped: int = 0


# ---------------------------------------------------------------- service state
# request field -> the warehouse column (and feature) it carries: the upper-cased name, except where
# the warehouse's own spelling is kept for the feature but not inflicted on the API
_COLUMN_SPELLING = {"avg_sec_between_payment_attempts": "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"}
PAYMENT_FIELD_COLUMNS = {
    f: _COLUMN_SPELLING.get(f, f.upper())
    for f in RouteRequest.__struct_fields__ if f not in ("candidates", "explain", "created_at")
}


MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    With several workers (`smartrouter serve --workers N` sets PROMETHEUS_MULTIPROC_DIR), every
    worker writes its values to files there and a scrape of any worker reports all of them:
    counters and the histogram summed over workers, gauges as the maximum over live workers
    (processor state: 1 if any worker sees it; all workers share outcomes, so they agree).
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
                            registry=r, multiprocess_mode="livemax")
        self.model = Gauge("smartrouter_model_info", "1 for the model version being served", ["version"], registry=r,
                           multiprocess_mode="livemax")
        self.model_versions_shown: set[str] = set()  # every version this worker has labelled
        self.model_failed = Gauge("smartrouter_model_load_failed", "1 when the last model load was refused", registry=r,
                                  multiprocess_mode="livemax")
        self.reloads = Counter("smartrouter_model_reloads", "Model load attempts", ["result"], registry=r)
        self.log_dropped = Gauge("smartrouter_decision_log_dropped", "Log records dropped (buffer full)", registry=r,
                                 multiprocess_mode="livesum")
        self.bad_requests = Counter("smartrouter_rejected_requests", "Requests answered 4xx", ["status"], registry=r)

    def exposition(self) -> bytes:
        """The text a scrape returns: this worker's registry, or every worker's files."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def worker_exit(self) -> None:
        """Drop this worker's live gauges from the shared files (counters stay: they are history)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


@dataclass
class Service:
    """Everything a handler needs, injected as the `svc` dependency."""

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
                         segment: tuple | None, card_bin: str | None) -> str:
        kind = self.router.observe_outcome(processor, status, error_code=error_code, at=at, segment=segment, card_bin=card_bin)
        if self.bus is not None:
            self.bus.publish(peers.message(peers.OUTCOME, self.bus.pid, processor=processor, status=status,
                                           error_code=error_code, at=at, segment=segment, card_bin=card_bin))
        return kind

    def take_outcome(self, processor: str, status: str, error_code: str | None, at: float, request_id: str | None,
                     segment: tuple | None, card_bin: str | None) -> str:
        """One outcome from the merchant: applied here and in every other worker; returns its kind.

        The worker that made the decision is the one that knows its segment and BIN: when the
        request id names another live worker, the outcome goes there to be resolved and shared.
        """
        segment, card_bin, mine = self.router.resolve(request_id, segment, card_bin)
        owner = owner_of(request_id)
        bus = self.bus
        if not mine and bus is not None and owner is not None and owner != bus.pid and bus.has_peer(owner):
            sent = bus.send(owner, peers.message(peers.FORWARD, bus.pid, processor=processor, status=status,
                                                 error_code=error_code, at=at, request_id=request_id,
                                                 segment=segment, card_bin=card_bin))
            if sent:
                return outcome_kind(status, error_code)
        return self._apply_and_share(processor, status, error_code, at, segment, card_bin)

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


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the merchant's timestamps are naive UTC, like the warehouse's
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _bad(key: str, message: str) -> ValidationException:
    return ValidationException(detail=f"Validation failed: {key}: {message}", extra=[{"key": key, "message": message, "source": "body"}])


# ---------------------------------------------------------------- handlers
@post("/v1/route", summary="Rank processors for one payment", status_code=200)
async def route(data: RouteRequest, svc: Service, explain: bool = False) -> RouteResponse:
    """Eligible processors ranked with calibrated approval probabilities, the choice and why."""
    if data.amount > svc.config.policy.max_amount:
        raise _bad("amount", f"{data.amount} exceeds the maximum {svc.config.policy.max_amount:g}; send the amount in currency units")
    if data.previous_order_error_code is not None and data.previous_order_error_code not in catalog.ERROR_CODES:
        raise _bad("previous_order_error_code", f"unknown code {data.previous_order_error_code!r}; use one of {', '.join(catalog.ERROR_CODES)}")
    payment = {col: getattr(data, f) for f, col in PAYMENT_FIELD_COLUMNS.items()}
    at = _epoch(data.created_at) or time.time()
    payment["CREATED_AT"] = datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None)
    try:
        d = svc.router.decide(payment, candidates=data.candidates, explain=explain or data.explain, at=at)
    except NoEligibleProcessor as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    m = svc.metrics
    m.decisions.labels(d.source, d.arm).inc()
    if d.fallback_reason:
        m.fallbacks.labels(d.fallback_reason).inc()
    m.latency.observe(d.latency_ms / 1000.0)
    svc.decision_log.append_lazy(d.record, payment)  # the record is built by the log's writer thread
    return RouteResponse(
        request_id=d.request_id,
        chosen=d.chosen,
        source=d.source,
        ranked=[RankedProcessor(p, prob) for p, prob in d.ranked],
        reasons=d.reasons,
        model_version=d.model_version,
        arm=d.arm,
        propensity=d.propensity,
        shadow_choice=d.shadow_choice,
        contributions=[Contribution(n, v) for n, v in d.contributions] if d.contributions is not None else None,
    )


@post("/v1/outcomes", summary="Report the outcome of an attempt", status_code=202)
async def outcomes(data: OutcomeRequest, svc: Service) -> OutcomeResponse:
    """Feeds processor health, exploration posteriors, online features and the decision log."""
    if data.error_code is not None and data.error_code not in catalog.ERROR_CODES:
        raise _bad("error_code", f"unknown code {data.error_code!r}; use one of {', '.join(catalog.ERROR_CODES)}")
    at = _epoch(data.created_at) or time.time()
    segment = None
    if data.currency and data.card_brand and data.card_type and data.request_id is None:
        payment = {"CURRENCY": data.currency, "CARD_BRAND": data.card_brand, "CARD_TYPE": data.card_type}
        segment = svc.router.bandit.segment_of(payment)
    kind = svc.take_outcome(data.processor, data.status, data.error_code, at, data.request_id, segment, data.card_bin)
    svc.metrics.outcomes.labels(data.processor, kind).inc()
    svc.decision_log.append_lazy(_outcome_record, data, kind, at)
    return OutcomeResponse(True, data.processor, kind, svc.router.health.state(data.processor))


def _outcome_record(data: OutcomeRequest, kind: str, at: float) -> dict[str, Any]:
    rec = msgspec.structs.asdict(data)
    rec.update(kind="outcome", outcome_kind=kind, at=at,
               created_at=datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None).isoformat())
    return rec


@get("/v1/processors/health", summary="Each processor's state and recent rates")
async def processors_health(svc: Service) -> HealthResponse:
    snap = svc.router.health.snapshot()
    return HealthResponse([
        ProcessorHealth(
            processor=p,
            state=s["state"],
            since=datetime.fromtimestamp(s["since"], tz=timezone.utc).isoformat() if s["since"] else None,
            window_outcomes=s["window_outcomes"],
            window_failure_rate=s["window_failure_rate"],
            recent_failure_rate=s["recent_failure_rate"],
            consecutive_successes=s["consecutive_successes"],
        )
        for p, s in snap.items()
    ], worker=os.getpid())


def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Admin calls need `Authorization: Bearer $SMARTROUTER_ADMIN_TOKEN`; with no token set, none pass."""
    token = connection.app.state.service.settings.admin_token
    given = connection.headers.get("authorization", "")
    if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise NotAuthorizedException(detail="admin call refused: send 'Authorization: Bearer <SMARTROUTER_ADMIN_TOKEN>'")


@post("/admin/reload", guards=[admin_guard], summary="Load the promoted model now", status_code=200, sync_to_thread=True)
def admin_reload(svc: Service) -> ReloadResponse:
    """Loads and warms the promoted version in a worker thread, then swaps it in."""
    result = svc.holder.reload()
    if svc.bus is not None:  # the other workers load it now too, not at their next poll
        svc.bus.publish(peers.message(peers.RELOAD, svc.bus.pid))
    return ReloadResponse(result, svc.holder.version, svc.holder.status.last_error)


@get("/healthz", summary="Liveness", media_type=MediaType.JSON)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: what is serving and what is degraded")
async def readyz(svc: Service) -> Response[ReadyResponse]:
    h = svc.holder
    notes = list(svc.notes)
    if svc.rules_source.startswith("none"):
        notes.append("no static rules loaded: fallback order for rule-routed payments")
    if h.status.last_error:
        notes.append(h.status.last_error)
    if svc.decision_log.error:
        notes.append(svc.decision_log.error)
    body = ReadyResponse(
        ready=True,
        model_version=h.version,
        serving="model" if h.version else "rules",
        rules_source=svc.rules_source,
        model_error=h.status.last_error,
        decision_log_dropped=svc.decision_log.dropped,
        notes=notes,
        online_features=svc.online_features,
        worker=os.getpid(),
        peers=len(svc.bus.peers) if svc.bus is not None else 0,
        peer_messages_dropped=svc.bus.dropped if svc.bus is not None else 0,
    )
    return Response(body, status_code=200)


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST, include_in_schema=False)
async def metrics(svc: Service) -> Response[bytes]:
    svc.refresh_gauges()
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@get("/v1/constant", summary="Constant response (the framework's floor, for benchmarks)", include_in_schema=False)
async def constant() -> dict[str, str]:
    return {"chosen": "WORLDPAY"}


@post("/v1/constant", include_in_schema=False, status_code=200)
async def constant_post(data: dict[str, Any]) -> dict[str, str]:
    return {"chosen": "WORLDPAY"}


# ---------------------------------------------------------------- errors: never a stack trace
def _client_error(request: Request, exc: HTTPException) -> Response:
    if 400 <= exc.status_code < 500:
        request.app.state.service.metrics.bad_requests.labels(str(exc.status_code)).inc()
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    extra = getattr(exc, "extra", None)
    if extra:
        if isinstance(extra, list):
            extra = [_name_missing_field(e) for e in extra]
        body["extra"] = extra
    return Response(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _name_missing_field(item: Any) -> Any:
    """msgspec reports a missing field against the whole body ('data'); name the field instead."""
    if isinstance(item, dict) and item.get("key") == "data":
        match = _MISSING.search(str(item.get("message", "")))
        if match:
            return {**item, "key": match.group(1)}
    return item


def _server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SmartrouterError):
        return Response({"status_code": 503, "detail": str(exc)}, status_code=503)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response({"status_code": 500, "detail": "internal error; the service log has the details"}, status_code=500)


# ---------------------------------------------------------------- the factory
def _seed_features(svc: Service, loop: asyncio.AbstractEventLoop) -> None:
    """Seed the online feature state from the warehouse's last 28 days (background, best effort).

    Until it is installed the router serves treatment payments by the static rules (see
    `Router.features_pending`); the swap happens on the event loop's thread, so it never races a
    decision or an outcome, and outcomes heard meanwhile are replayed into the new state.
    """
    try:
        from smartrouter import features

        until = datetime.now(timezone.utc).replace(tzinfo=None)
        frame = features.outcome_history(svc.settings, until - timedelta(days=28), until)
        state = features.OnlineFeatureState.from_history(frame)
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
        _freeze_heap()

    loop.call_soon_threadsafe(install)


def _freeze_heap() -> None:
    """Move everything alive now (model, rules, seeded online state: ~0.5M objects) out of the GC's reach.

    A full collection walks every tracked object; over the seeded state it takes ~0.5 s, a pause
    every request queued behind it would see. These objects live as long as the process, so
    tracking them buys nothing (gc.freeze, as CPython's docs advise for long-lived servers).
    """
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    *,
    routing_config: RoutingConfig | None = None,
    model_loader: Callable[[Path], Any] | None = None,
    rules: Any = None,
    features: Any = "auto",
    fallback_router: Any = "auto",
    poll: bool = True,
    seed: int | None = None,
    rules_from_warehouse: bool = True,
    seed_features: bool = True,
    share_outcomes: bool = True,
) -> Litestar:
    """Build the service (settings/config/loader/rules injectable for tests)."""
    settings = settings or load_settings()
    config = routing_config or load_routing_config()
    metrics_ = Metrics()

    def on_transition(tr: Transition) -> None:
        metrics_.transitions.labels(tr.processor, tr.old, tr.new).inc()
        if services:  # gauges follow the change at once: a scrape may reach another worker
            services[0].refresh_gauges()

    services: list[Service] = []

    holder = ModelHolder(
        settings.registry_dir, loader=model_loader, poll_seconds=config.reload_poll_seconds,
        on_change=lambda status, result: (metrics_.reloads.labels(result).inc(), services and services[0].refresh_gauges()),
    )
    holder.check()  # the first load happens before the first request
    if rules is None:
        snapshot = holder.current.rules_rows if holder.current is not None else None
        rules, rules_source = rules_from_sources(settings if rules_from_warehouse else None, snapshot)
    else:
        rules_source = "given"
        if isinstance(rules, list):
            from smartrouter.rules import RulesEngine

            rules = RulesEngine(rules)
    if features == "auto":
        try:
            from smartrouter.features import OnlineFeatureState

            features = OnlineFeatureState()
        except Exception:  # noqa: BLE001
            features = None
    else:
        seed_features = False
    if fallback_router == "auto":
        try:
            from smartrouter.policies import SuccessRateRouter

            fallback_router = SuccessRateRouter()
        except Exception:  # noqa: BLE001
            fallback_router = None
    router = Router(config, rules, holder, features=features, fallback_router=fallback_router,
                    on_transition=on_transition, seed=seed)
    dlog = DecisionLog(settings.state_dir / "decisions", config.decision_log.queue_size,
                       config.decision_log.segment_records, config.decision_log.flush_seconds)
    svc = Service(settings, config, router, holder, dlog, metrics_, rules_source, poll=poll)
    services.append(svc)

    def startup(app: Litestar) -> None:
        if share_outcomes:
            try:
                bus = peers.PeerBus(settings.state_dir / "peers").open()
                peers.attach(bus, asyncio.get_running_loop(), svc.on_peer_message)
                svc.bus = bus
            except OSError as exc:  # serve on our own rather than not at all; /readyz says so
                svc.notes.append(f"outcomes not shared with other workers: {exc}")
                log.warning("peer bus unavailable: %s", exc)
        svc.refresh_gauges()
        _freeze_heap()
        dlog.start()
        if poll:
            holder.start()
        if seed_features and features is not None:
            svc.online_features = "seeding"
            router.features_pending()
            threading.Thread(target=_seed_features, args=(svc, asyncio.get_running_loop()), name="seed-features",
                             daemon=True).start()

    def shutdown(app: Litestar) -> None:
        holder.stop()
        if svc.bus is not None:
            peers.detach(svc.bus, asyncio.get_running_loop())
            svc.bus.close()
            svc.bus = None
        dlog.close()
        metrics_.worker_exit()

    app = Litestar(
        route_handlers=[route, outcomes, processors_health, admin_reload, healthz, readyz, metrics, constant, constant_post],
        dependencies={"svc": Provide(lambda: svc, sync_to_thread=False, use_cache=True)},
        on_startup=[startup],
        on_shutdown=[shutdown],
        exception_handlers={HTTPException: _client_error, Exception: _server_error},
        request_max_body_size=config.max_body_bytes,
        logging_config=None,  # uvicorn / the host configures logging; no per-request log lines
        openapi_config=OpenAPIConfig(title="smartrouter", version="1.0.0", path="/schema"),
        debug=False,
    )
    app.state.service = svc
    return app
