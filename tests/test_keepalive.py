"""Keep-alive connections are closed after a bounded lifetime (serve/keepalive.py), so clients rebalance."""

from __future__ import annotations

import asyncio
import sys

from smartrouter.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from serve.keepalive import ConnectionLifetime  # noqa: E402


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _request(mw: ConnectionLifetime, client: tuple) -> list[tuple]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    asyncio.run(mw({"type": "http", "client": client}, receive, send))
    return sent[0]["headers"]


def test_a_connection_is_told_to_close_once_it_has_lived_its_lifetime(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("serve.keepalive.time.monotonic", lambda: now[0])
    mw = ConnectionLifetime(_app, lifetime=2.0)
    a, b = ("127.0.0.1", 50001), ("127.0.0.1", 50002)
    assert (b"connection", b"close") not in _request(mw, a)
    now[0] += 1.0
    assert (b"connection", b"close") not in _request(mw, a)  # young: kept alive
    assert (b"connection", b"close") not in _request(mw, b)
    now[0] += 1.5
    assert (b"connection", b"close") in _request(mw, a)  # 2.5 s old: closed after this answer
    assert (b"connection", b"close") not in _request(mw, b)  # 1.5 s old
    assert (b"connection", b"close") not in _request(mw, a)  # the client's new connection starts over
    assert mw.closed == 1


def test_lifespan_and_other_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    mw = ConnectionLifetime(app)
    asyncio.run(mw({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
