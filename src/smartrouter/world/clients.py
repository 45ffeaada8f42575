"""Router clients for the live loop: how `world.live.advance` asks the routing service for a processor.

``RouterClient`` is the protocol: ``route`` takes /v1/route JSON bodies (one time slice of
attempts) and returns the response bodies with the client-measured ``latency_ms`` added;
``report`` posts /v1/outcomes bodies; ``retry`` posts /v1/retry bodies (declined attempts) and
returns the advice, or None when the service gives none (an older service: 404), so the loop
falls back to the merchant's own retries. Two implementations:

- ``HttpClient(url, concurrency)``: the running service over HTTP (httpx, keep-alive, a slice's
  requests sent ``concurrency`` at a time) — what `smartrouter world advance --url` uses.
- ``InProcessClient``: the service's own handlers (serve/app.py) on a `Service` built by
  `ServiceDeps`, without HTTP — the same validation, decision and decision log, for fast tests.
  It runs the event clock (routing.toml ``[health] clock = "event"``): simulated ``created_at``
  runs ahead of the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import msgspec

from smartrouter.errors import ConfigError, SmartrouterError

# The event clock refuses an event more than max_ahead_seconds past the newest one. Night hours of a
# small world leave gaps of many minutes between payments, so the simulator allows the most the
# routing config accepts (the online features' slack, an hour); the guard it relaxes is against a
# merchant's broken clock, and these stamps are ours.
EVENT_MAX_AHEAD_SECONDS = 3600.0
HTTP_TIMEOUT_SECONDS = 30.0


class LiveError(SmartrouterError):
    """The live loop cannot go on (service unreachable or refusing, inconsistent live state); one line + fix."""


class RouterClient(Protocol):
    """What the live loop routes through (see module docstring)."""

    def route(self, requests: list[dict]) -> list[dict]: ...

    def report(self, outcomes: list[dict]) -> None: ...

    def retry(self, declined: list[dict]) -> list[dict] | None: ...

    def close(self) -> None: ...


def _clock_hint(text: str) -> str:
    if "event clock" in text:
        return ("; simulated time jumped further than the service's [health].max_ahead_seconds between two "
                f"payments: run the service with max_ahead_seconds = {EVENT_MAX_AHEAD_SECONDS:g} (or more traffic per day)")
    if "wall clock" in text:
        return ("; the service runs the wall clock: start it with a routing.toml whose [health] has "
                f'clock = "event" and max_ahead_seconds >= {EVENT_MAX_AHEAD_SECONDS:g} (SMARTROUTER_ROUTING_CONFIG)')
    return ""


class HttpClient:
    """The routing service over HTTP: keep-alive connections, ``concurrency`` requests in flight."""

    def __init__(self, url: str, concurrency: int = 8, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        import httpx

        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency={concurrency!r} must be a whole number >= 1; use e.g. --concurrency 8")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"service url {url!r} must start with http:// or https://; use e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.concurrency = concurrency
        self._no_retry = False
        self._httpx = httpx
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(base_url=self.url, timeout=timeout, limits=limits,
                                    headers={"content-type": "application/json"})
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="live-http") if concurrency > 1 else None
        try:
            r = self._client.get("/healthz")
        except httpx.HTTPError as exc:
            self.close()
            raise LiveError(f"cannot reach the routing service at {self.url} ({type(exc).__name__}: {exc}); "
                            "start it with `smartrouter serve` or use --in-process") from None
        if r.status_code != 200:
            self.close()
            raise LiveError(f"{self.url}/healthz answered {r.status_code}: is this the smartrouter service? "
                            "start it with `smartrouter serve` or use --in-process")

    def _retry_one(self, body: dict) -> dict | None:
        try:
            out, _ = self._post("/v1/retry", body, 200)
        except LiveError as exc:
            if " answered 404" in str(exc):
                return None
            raise
        return out

    def retry(self, declined: list[dict]) -> list[dict] | None:
        if self._no_retry:
            return None
        if self._pool is None or len(declined) <= 1:
            out = [self._retry_one(b) for b in declined]
        else:
            out = list(self._pool.map(self._retry_one, declined))
        if any(a is None for a in out):
            self._no_retry = True  # the service has no /v1/retry: the merchant's own retries from now on
            return None
        return out

    def _post(self, path: str, body: dict, expect: int) -> tuple[Any, float]:
        data = msgspec.json.encode(body)
        for attempt in (1, 2):
            t0 = time.perf_counter()
            try:
                r = self._client.post(path, content=data)
                break
            except self._httpx.RemoteProtocolError:
                # the server closed a keep-alive connection as we sent on it (its lifetime is short):
                # once more on a fresh connection
                if attempt == 2:
                    raise
            except self._httpx.HTTPError as exc:
                raise LiveError(f"the routing service at {self.url} failed on {path} ({type(exc).__name__}: {exc}); "
                                "check it is running (`smartrouter serve`)") from None
        ms = (time.perf_counter() - t0) * 1000.0
        if r.status_code != expect:
            text = r.text[:400].replace("\n", " ")
            raise LiveError(f"{self.url}{path} answered {r.status_code}: {text}{_clock_hint(text)}")
        return (msgspec.json.decode(r.content) if r.content else None), ms

    def _route_one(self, body: dict) -> dict:
        out, ms = self._post("/v1/route", body, 200)
        out["latency_ms"] = round(ms, 3)
        return out

    def _report_one(self, body: dict) -> None:
        self._post("/v1/outcomes", body, 202)

    def route(self, requests: list[dict]) -> list[dict]:
        if self._pool is None or len(requests) <= 1:
            return [self._route_one(b) for b in requests]
        return list(self._pool.map(self._route_one, requests))

    def report(self, outcomes: list[dict]) -> None:
        if self._pool is None or len(outcomes) <= 1:
            for b in outcomes:
                self._report_one(b)
        else:
            list(self._pool.map(self._report_one, outcomes))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._client.close()


class InProcessClient:
    """The service's handlers called in this process (no HTTP), on the event clock.

    ``service``: a built `Service` (its config must use the event clock); otherwise one is built
    from ``settings`` and routing.toml ($SMARTROUTER_ROUTING_CONFIG) with ``[health] clock =
    "event"`` forced, ``routing_overrides`` merged on top, and ``deps`` passed to `ServiceDeps`
    (e.g. ``rules=``, ``model_loader=``, ``seed_features=False`` in tests). The client starts the
    service (decision log, model poller) and stops it on ``close``.
    """

    def __init__(self, settings: Any = None, *, service: Any = None, routing_overrides: dict | None = None,
                 **deps: Any) -> None:
        from smartrouter.cli.serve import import_app_module
        from smartrouter.routing.config import load_routing_config
        from smartrouter.routing.service import ServiceDeps

        app = import_app_module()
        self._app = app
        if service is None:
            over: dict[str, Any] = {"health": {"clock": "event", "max_ahead_seconds": EVENT_MAX_AHEAD_SECONDS}}
            for section, values in (routing_overrides or {}).items():
                over.setdefault(section, {}).update(values)
            deps.setdefault("share_outcomes", False)  # one process: no other workers to tell
            service = ServiceDeps(settings=settings, routing_config=load_routing_config(overrides=over), **deps).build()
        if service.config.health.clock != "event":
            raise ConfigError(f"the in-process service runs the {service.config.health.clock!r} clock; the live loop's "
                              'simulated time needs [health] clock = "event" in its routing config')
        self.service = service
        self._loop = asyncio.new_event_loop()
        service.startup(self._loop)
        self._closed = False
        self._loop.run_until_complete(self._seeded())

    async def _seeded(self, seconds: float = 300.0) -> None:
        """Wait until the online features are seeded, as the HTTP loop waits for /readyz: routed
        meanwhile, the model arm would take the static rules (source fallback) for the first minutes."""
        deadline = time.monotonic() + seconds
        while self.service.online_features == "seeding" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the seeding thread installs its state on this loop

    async def _route_all(self, requests: list[dict]) -> list[dict]:
        app, svc, out = self._app, self.service, []
        from litestar.exceptions import HTTPException

        for body in requests:
            t0 = time.perf_counter()
            try:
                data = app.decode_body(msgspec.json.encode(body), app.RouteRequest)
                resp = await app.route.fn(data=data, svc=svc)
            except HTTPException as exc:
                raise LiveError(f"the in-process service refused a route request ({exc.status_code}: {exc.detail}); "
                                f"body {body!r}{_clock_hint(str(exc.detail))}") from None
            d = msgspec.to_builtins(resp)
            d["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
            out.append(d)
        return out

    async def _report_all(self, outcomes: list[dict]) -> None:
        app, svc = self._app, self.service
        from litestar.exceptions import HTTPException

        for body in outcomes:
            try:
                await app.outcomes.fn(data=app.decode_body(msgspec.json.encode(body), app.OutcomeRequest), svc=svc)
            except HTTPException as exc:
                raise LiveError(f"the in-process service refused an outcome ({exc.status_code}: {exc.detail}); "
                                f"body {body!r}") from None

    async def _retry_all(self, declined: list[dict]) -> list[dict]:
        app, svc, out = self._app, self.service, []
        from litestar.exceptions import HTTPException

        for body in declined:
            try:
                resp = await app.retry.fn(data=app.decode_body(msgspec.json.encode(body), app.RetryRequest), svc=svc)
            except HTTPException as exc:
                raise LiveError(f"the in-process service refused a retry request ({exc.status_code}: {exc.detail}); "
                                f"body {body!r}") from None
            out.append(msgspec.to_builtins(resp))
        return out

    def route(self, requests: list[dict]) -> list[dict]:
        return self._loop.run_until_complete(self._route_all(requests))

    def retry(self, declined: list[dict]) -> list[dict] | None:
        return self._loop.run_until_complete(self._retry_all(declined))

    def report(self, outcomes: list[dict]) -> None:
        self._loop.run_until_complete(self._report_all(outcomes))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.service.shutdown(self._loop)
        finally:
            self._loop.close()
