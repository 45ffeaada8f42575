"""Keep-alive connections are closed after a bounded lifetime, so load rebalances across workers.

uvicorn's workers accept from one shared listening socket, and a client with keep-alive keeps
talking to the worker that accepted it. When a worker dies, its clients reconnect, all to the
survivor, and stay there: the replacement worker got 0 of the next 80,000 requests (issue 11,
item 9). Answering ``Connection: close`` on the first response after a connection has lived
``LIFETIME_SECONDS`` makes every client reconnect that often, and each reconnect lands on
whichever worker accepts first (an idle, newly started one is usually first). Cost: one TCP
handshake per connection every few seconds (bench/bench_failover.py measures the whole effect).

`create_app` is what `smartrouter serve` runs: serve/app.py's application behind this middleware.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

# How long a keep-alive connection lives. Short enough that a respawned worker gets its share
# within seconds of starting (the failover bar is 10 s); long enough that reconnecting is noise.
LIFETIME_SECONDS = 2.0
_PRUNE_EVERY = 4096  # connections the table may hold before entries of closed connections are dropped


class ConnectionLifetime:
    """ASGI middleware: ``Connection: close`` on a connection's first response after ``lifetime`` seconds."""

    def __init__(self, app: Any, lifetime: float = LIFETIME_SECONDS) -> None:
        self.app = app
        self.lifetime = lifetime
        self._born: dict[Any, float] = {}  # (client host, port) = one TCP connection -> first request seen
        self.closed = 0

    def __getattr__(self, name: str) -> Any:  # `app.state` and friends stay reachable through the wrapper
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or client is None:
            return await self.app(scope, receive, send)
        key = tuple(client)
        now = time.monotonic()
        born = self._born.get(key)
        if born is None:
            if len(self._born) >= _PRUNE_EVERY:
                self._prune(now)
            self._born[key] = now
            return await self.app(scope, receive, send)
        if now - born < self.lifetime:
            return await self.app(scope, receive, send)
        del self._born[key]
        self.closed += 1

        async def send_closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_closing)

    def _prune(self, now: float) -> None:
        # entries of connections the client closed itself; a reused (host, port) would at worst be closed once early
        stale = now - 4 * self.lifetime
        self._born = {k: t for k, t in self._born.items() if t >= stale}


def create_app() -> ConnectionLifetime:
    """The routing service (serve/app.py) with bounded keep-alive lifetimes (uvicorn ``--factory``)."""
    from serve.app import create_app as build

    return ConnectionLifetime(build())
