"""The Litestar edge over `smartrouter.routing`: typed requests in, decisions out, nothing else.

`create_app()` builds the application; `uvicorn --factory serve.app:create_app` (what
`smartrouter serve` runs) serves it. Handlers validate, call the router, log and count; all
decision logic and the service state (metrics, outcome sharing, start-up) live in the library
(`smartrouter.routing.service`). Request/response models are msgspec Structs, so the
OpenAPI schema (served at /schema) is generated from the same declarations that validate.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST

from smartrouter import catalog, messages
from smartrouter.config import Settings
from smartrouter.errors import SmartrouterError
from smartrouter.routing.policy import NoEligibleProcessor
from smartrouter.clock import EventTimeError
from smartrouter.routing.service import Service, ServiceDeps
from smartrouter.retry.serving import RetryService, retry_service

log = logging.getLogger("smartrouter.serve")

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
# the codes the handlers accept, as the schema's enum (the catalog is the one list)
ErrorCode = Literal[tuple(catalog.ERROR_CODES)]  # type: ignore[valid-type]


class RouteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
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
    # the message as the merchant would send it and the facts that decide which messages are allowed
    # (smartrouter.messages; an absent fact allows nothing beyond the always-allowed values)
    avs_data: bool | None = None
    mcc: Literal[messages.MCC_VALUES] | None = None  # type: ignore[valid-type]
    stored_credential: bool | None = None
    billing_address: bool | None = None
    travel_package: bool | None = None
    num_attempts_order: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1
    previous_order_error_code: ErrorCode | None = None
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


class MessageConfig(msgspec.Struct):
    key: str  # e.g. MIT/AVS/4511 (smartrouter.messages.config_key)
    fields: dict[str, str | int]  # mci_msi_type, avs_data, mcc as the message carries them


class MessageRecommendation(msgspec.Struct):
    processor: str
    message_config: MessageConfig
    probability: float
    reason: str


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
    # the message configuration to send with ``chosen`` and how it was chosen (model | exploration |
    # default | off), its propensity, 1 when drawn at random among the eligible ones; the top pairs
    message_config: MessageConfig | None = None
    message_source: str | None = None
    message_propensity: float | None = None
    message_randomized: int = 0
    message_recommendations: list[MessageRecommendation] | None = None
    # the message A/B arm of the order (with | without recommendations), null outside the model arm
    message_arm: str | None = None


def _message(config: dict[str, Any]) -> MessageConfig:
    return MessageConfig(config["key"], {k.lower(): v for k, v in config["fields"].items()})


class OutcomeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The outcome of one attempt, as the merchant's router saw it."""

    processor: Processor
    status: Literal["APPROVED", "DECLINED", "TIMEOUT", "ERROR"]
    request_id: Id | None = None
    order_id: Id | None = None
    attempt_id: Id | None = None
    error_code: ErrorCode | None = None
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


class RetryRequest(RouteRequest, kw_only=True, forbid_unknown_fields=True):
    """The declined attempt (the route request's fields, ``num_attempts_order`` its number) and its outcome,
    with the card's recent retries as the merchant's router counts them (retry_rules.toml)."""

    error_code: ErrorCode  # the decline (or processor error) of the attempt
    processor: Processor  # where the declined attempt went
    card_retries_24h: Annotated[int, msgspec.Meta(ge=0, le=100000)]  # retries of this card in the last 24 h
    card_retries_30d: Annotated[int, msgspec.Meta(ge=0, le=100000)]  # ... and the last 30 days
    merchant_advice_code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$", description="Mastercard MAC")] | None = None


class ExpectedValue(msgspec.Struct):
    now: float | None
    later: float | None
    stop: float


class RetryResponse(msgspec.Struct):
    """Retry or not, when (bucket and seconds), where (ranked processors), what each option is worth, and why."""

    retry: bool
    delay: str | None
    delay_seconds: float | None
    processor: str | None
    ranked: list[RankedProcessor]
    expected_value: ExpectedValue
    rule: str
    reasons: list[str]
    source: str
    model_version: str | None


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
    not_ready: list[str] = []  # why this worker should get no traffic (empty when ready)
    serving_note: str | None = None  # why the served version is not the promoted one
    feature_errors: int = 0  # online feature computations that failed on payments (since start)
    online_features: str = "off"  # off | seeding | seeded | failed: history the health/BIN features start from
    worker: int = 0  # this worker's pid
    peers: int = 0  # other workers it shares outcomes with
    peer_messages_dropped: int = 0
    canary: str | None = None  # the rollout's canary this worker serves beside the champion ("v5 canary-10 (10 %)")
    canary_error: str | None = None  # why the rollout's canary is not served here (the champion serves all)


# ---------------------------------------------------------------- request -> payment columns
# request field -> the warehouse column (and feature) it carries: the upper-cased name, except where
# the warehouse's own spelling is kept for the feature but not inflicted on the API
_COLUMN_SPELLING = {"avg_sec_between_payment_attempts": "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"}
PAYMENT_FIELD_COLUMNS = {
    f: _COLUMN_SPELLING.get(f, f.upper())
    for f in RouteRequest.__struct_fields__ if f not in ("candidates", "explain", "created_at")
}


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the merchant's timestamps are naive UTC, like the warehouse's
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _bad(key: str, message: str) -> ValidationException:
    return ValidationException(detail=f"Validation failed: {key}: {message}", extra=[{"key": key, "message": message, "source": "body"}])


# ---------------------------------------------------------------- request bodies: strict, typed, never a 500
# Litestar decodes a body to builtins and converts them with msgspec's strict=False (a string "1500"
# becomes 1500.0), and lets UnicodeDecodeError / RecursionError through as 500s. Bodies are decoded
# here instead, straight into the request Struct: types as declared, unknown fields refused (the
# Structs forbid them), every failure a 400 that names the field or the problem.
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
_DECODERS: dict[Any, msgspec.json.Decoder] = {}


def decode_body(raw: bytes, target: Any) -> Any:
    """``raw`` JSON decoded strictly into ``target``; a 400 naming the field or the problem otherwise."""
    decoder = _DECODERS.get(target)
    if decoder is None:
        decoder = _DECODERS[target] = msgspec.json.Decoder(target, strict=True)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at, field_ = _AT.search(message), _FIELD.search(message)
        key = (at.group(1) if at else "") or (field_.group(1) if field_ else "body")
        if "unknown field" in message:
            message += "; check its spelling against the fields listed at /schema"
        elif message.startswith("Invalid enum value"):
            allowed = _allowed(target, key)
            if allowed:
                message += f"; use one of {', '.join(allowed)}"
        raise _bad(key, message) from None
    except msgspec.DecodeError as exc:
        raise _bad("body", f"{exc}; send one JSON object") from None
    except UnicodeDecodeError as exc:  # msgspec decodes JSON strings' bytes as UTF-8 and lets this through
        raise _bad("body", f"a JSON string is not valid UTF-8 ({exc.reason} at byte {exc.start} of the string); "
                           "send UTF-8 text") from None
    except RecursionError:
        raise _bad("body", "JSON nested deeper than the decoder's recursion limit; send a flat JSON object") from None


def _allowed(target: Any, key: str) -> tuple[str, ...]:
    """The literal values a top-level field of a Struct accepts (for the error message)."""
    hints = {f.name: f.type for f in msgspec.structs.fields(target)} if isinstance(target, type) else {}
    stack, out = [hints.get(key.split("[", 1)[0])], []
    while stack:
        t = stack.pop()
        if get_origin(t) is Literal:
            out.extend(str(a) for a in get_args(t))
        else:
            stack.extend(get_args(t))
    return tuple(out)


class StrictRequest(Request):
    """The app's request class: its JSON body is `decode_body` into the handler's ``data`` type.

    Litestar hands what `json()` returns to its signature model, which passes a Struct of the
    declared type through unchanged; the OpenAPI schema is still generated from the declaration.
    """

    async def json(self) -> Any:
        field_ = self.route_handler.parsed_data_field
        return decode_body(await self.body(), field_.annotation if field_ is not None else Any)


# ---------------------------------------------------------------- handlers
@post("/v1/route", summary="Rank processors for one payment", status_code=200)
async def route(data: RouteRequest, svc: Service, explain: bool = False) -> RouteResponse:
    """Eligible processors ranked with calibrated approval probabilities, the choice and why."""
    if data.amount > svc.config.policy.max_amount:
        raise _bad("amount", f"{data.amount} exceeds the maximum {svc.config.policy.max_amount:g}; send the amount in currency units")
    payment = {col: getattr(data, f) for f, col in PAYMENT_FIELD_COLUMNS.items()}
    at = _epoch(data.created_at) or time.time()
    try:  # the same event-time check as outcomes: the features would be computed at a time that has not come
        svc.router.health.clock.check(at)
    except EventTimeError as exc:
        raise _bad("created_at", str(exc)) from None
    payment["CREATED_AT"] = datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None)
    if data.avs_data is None:  # a client of the older schema says it with avs_checked
        payment["AVS_DATA"] = data.avs_checked
    for t in messages.TOGGLES:  # a message the request's own facts forbid is a contradiction, not a default
        if payment.get(t.column) == t.on and payment.get(t.eligibility) is False:  # True == 1 for AVS
            raise _bad(t.column.lower(), f"{t.column.lower()}={t.on!r} needs {t.eligibility.lower()}=true "
                                         f"(smartrouter.messages eligibility); send {t.off!r} or correct the fact")
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
        message_config=_message(d.message_config) if d.message_config is not None else None,
        message_source=d.message_source,
        message_propensity=d.message_propensity,
        message_randomized=int(d.message_source == "exploration"),
        message_recommendations=[MessageRecommendation(r["processor"], _message(r["message_config"]), r["probability"], r["reason"])
                                 for r in d.message_recommendations],
        message_arm=d.message_arm,
    )


@post("/v1/outcomes", summary="Report the outcome of an attempt", status_code=202)
async def outcomes(data: OutcomeRequest, svc: Service) -> OutcomeResponse:
    """Feeds processor health, exploration posteriors, online features and the decision log."""
    at = _epoch(data.created_at) or time.time()
    segment = None
    if data.currency and data.card_brand and data.card_type and data.request_id is None:
        payment = {"CURRENCY": data.currency, "CARD_BRAND": data.card_brand, "CARD_TYPE": data.card_type}
        segment = svc.router.bandit.segment_of(payment)
    try:
        kind = svc.take_outcome(data.processor, data.status, data.error_code, at, data.request_id, segment, data.card_bin)
    except EventTimeError as exc:  # a future stamp would slide every window past the real outcomes
        raise _bad("created_at", str(exc)) from None
    svc.metrics.outcomes.labels(data.processor, kind).inc()
    svc.decision_log.append_lazy(_outcome_record, data, kind, at)
    return OutcomeResponse(True, data.processor, kind, svc.router.health.state(data.processor))


def _outcome_record(data: OutcomeRequest, kind: str, at: float) -> dict[str, Any]:
    rec = msgspec.structs.asdict(data)
    rec.update(kind="outcome", outcome_kind=kind, at=at,
               created_at=datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None).isoformat())
    return rec


@post("/v1/retry", summary="Advise whether, when and where to retry a declined attempt", status_code=200)
async def retry(data: RetryRequest, svc: Service) -> RetryResponse:
    """Within the card networks' retry rules: retry yes/no, the delay bucket, ranked processors and the
    expected value of retrying now, later or stopping."""
    rs = retry_service(svc)
    limit = rs.rules.max_attempts
    if data.num_attempts_order > limit:
        raise _bad("num_attempts_order", f"{data.num_attempts_order} is beyond the order's {limit} attempts "
                                         "(retry_rules.toml [order] max_attempts); send the declined attempt's number")
    if data.amount > svc.config.policy.max_amount:
        raise _bad("amount", f"{data.amount} exceeds the maximum {svc.config.policy.max_amount:g}; send the amount in currency units")
    if data.card_retries_30d < data.card_retries_24h:
        raise _bad("card_retries_30d", f"{data.card_retries_30d} is below card_retries_24h ({data.card_retries_24h}); "
                                       "the 30-day count includes the last 24 h")
    payment = {col: getattr(data, f) for f, col in PAYMENT_FIELD_COLUMNS.items()}
    at = _epoch(data.created_at) or time.time()
    try:
        svc.router.health.clock.check(at)
    except EventTimeError as exc:
        raise _bad("created_at", str(exc)) from None
    payment["CREATED_AT"] = datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None)
    try:
        adv, version = rs.advise(payment, code=data.error_code, processor=data.processor, attempt_number=data.num_attempts_order,
                                 retries_24h=data.card_retries_24h, retries_30d=data.card_retries_30d, at=at,
                                 merchant_advice_code=data.merchant_advice_code, candidates=data.candidates)
    except NoEligibleProcessor as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return RetryResponse(
        retry=adv.retry, delay=adv.delay, delay_seconds=adv.delay_seconds, processor=adv.processor,
        ranked=[RankedProcessor(p, prob) for p, prob in adv.ranked],
        expected_value=ExpectedValue(adv.ev["now"], adv.ev["later"], adv.ev["stop"]),
        rule=adv.rule, reasons=adv.reasons, source=adv.source, model_version=version,
    )


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


@post("/admin/reload", guards=[admin_guard], summary="Load the promoted model now", status_code=200, sync_to_thread=True,
      responses={409: ResponseSpec(ReloadResponse, description="the promoted version was refused; the old one serves")})
def admin_reload(svc: Service) -> Response[ReloadResponse]:
    """Loads and warms the promoted version in a worker thread, then swaps it in.

    200 when the promoted version serves (or nothing is promoted); 409 when it was refused: the
    body names the version still serving and why.
    """
    result = svc.request_reload()
    body = ReloadResponse(result, svc.holder.version, svc.holder.status.last_error)
    return Response(body, status_code=409 if result == "failed" else 200)


@get("/healthz", summary="Liveness", media_type=MediaType.JSON)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: what is serving and what is degraded",
     responses={503: ResponseSpec(ReadyResponse, description="not ready: `not_ready` says why")})
async def readyz(svc: Service) -> Response[ReadyResponse]:
    """200 when this worker should get traffic; 503 naming every reason when not (see `Service.readiness`)."""
    h = svc.holder
    readiness = svc.readiness()
    svc.metrics.ready.set(1.0 if readiness.ready else 0.0)
    notes = list(svc.notes)
    if h.status.last_error:
        notes.append(h.status.last_error)
    if svc.decision_log.error:
        notes.append(svc.decision_log.error)
    body = ReadyResponse(
        ready=readiness.ready,
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
        not_ready=readiness.reasons,
        serving_note=h.status.serving_note,
        feature_errors=int(getattr(svc.router.features, "errors", 0) or 0),
        canary=h.status.canary,
        canary_error=h.status.canary_error,
    )
    return Response(body, status_code=200 if readiness.ready else 503)


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST, include_in_schema=False)
async def metrics(svc: Service) -> Response[bytes]:
    svc.refresh_gauges()
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@get("/v1/constant", summary="Constant response (the framework's floor, for benchmarks)", include_in_schema=False)
async def constant() -> dict[str, str]:
    return {"chosen": "WORLDPAY"}


@post("/v1/constant", include_in_schema=False, status_code=200)
async def constant_post(request: Request) -> dict[str, str]:
    decode_body(await request.body(), dict[str, Any])  # the same body, decoded the way /v1/route's is
    return {"chosen": "WORLDPAY"}


# ---------------------------------------------------------------- errors: never a stack trace
def _client_error(request: Request, exc: HTTPException) -> Response:
    if 400 <= exc.status_code < 500:
        request.app.state.service.metrics.bad_requests.labels(str(exc.status_code)).inc()
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    extra = getattr(exc, "extra", None)
    if extra:
        body["extra"] = extra
    return Response(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SmartrouterError):
        return Response({"status_code": 503, "detail": str(exc)}, status_code=503)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response({"status_code": 500, "detail": "internal error; the service log has the details"}, status_code=500)


# ---------------------------------------------------------------- the factory
BENCH_ROUTES_ENV = "SMARTROUTER_BENCH_ROUTES"
HANDLERS = [route, outcomes, retry, processors_health, admin_reload, healthz, readyz, metrics]


def create_app(settings: Settings | None = None, **options: Any) -> Litestar:
    """Build the service (``options``: the fields of `ServiceDeps`, injectable for tests) and its routes.

    The benchmark's constant endpoints are mounted only with SMARTROUTER_BENCH_ROUTES=1
    (`bench/bench_serve.py` sets it): a production app answers nothing it does not route.
    """
    svc = ServiceDeps(settings=settings, **options).build()
    svc.retry = RetryService(svc.router)  # retry_rules.toml read now: a bad file stops the start, not a payment
    handlers = list(HANDLERS)
    if os.environ.get(BENCH_ROUTES_ENV) == "1":
        handlers += [constant, constant_post]
    app = Litestar(
        route_handlers=handlers,
        dependencies={"svc": Provide(lambda: svc, sync_to_thread=False, use_cache=True)},
        on_startup=[lambda app: svc.startup(asyncio.get_running_loop())],
        on_shutdown=[lambda app: svc.shutdown(asyncio.get_running_loop())],
        exception_handlers={HTTPException: _client_error, Exception: _server_error},
        request_class=StrictRequest,
        request_max_body_size=svc.config.max_body_bytes,
        logging_config=None,  # uvicorn / the host configures logging; no per-request log lines
        openapi_config=OpenAPIConfig(title="smartrouter", version="1.0.0", path="/schema"),
        debug=False,
    )
    app.state.service = svc
    return app
