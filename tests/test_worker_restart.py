"""A real `kill -9` of a uvicorn worker while a processor is DOWN: the respawned worker starts DOWN too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta

import pytest

from routing_fakes import body
from smartrouter.config import REPO_ROOT
from http_helpers import get_json as _get, post_json as _post, stop_server

pytestmark = pytest.mark.slow
MAX_SHARE_TO_DOWN = 0.03  # the bar (probes are 2 %)




def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(url: str, want: int, seconds: float = 120) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(seen) < want:
        try:
            r = _get(url + "/readyz")
            seen[r["worker"]] = r
        except OSError:
            time.sleep(0.2)
    return seen


def test_kill_9_of_a_worker_while_a_processor_is_down():
    home = tempfile.mkdtemp(prefix="sr-kill-")
    port = _free_port()
    env = dict(os.environ, SMARTROUTER_HOME=home, SMARTROUTER_STATE_DIR=home, SMARTROUTER_PORT=str(port),
               SMARTROUTER_WAREHOUSE="local", SMARTROUTER_LOCAL_DIR=os.path.join(home, "no-warehouse"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server_log = open(os.path.join(home, "server.log"), "wb")  # the workers' own words, shown on a failure
    server = subprocess.Popen([sys.executable, "-m", "smartrouter", "serve", "--workers", "2", "--port", str(port),
                               "--log-level", "warning"], env=env, cwd=REPO_ROOT, stdout=server_log, stderr=subprocess.STDOUT)

    def said() -> str:
        return open(os.path.join(home, "server.log"), encoding="utf-8", errors="replace").read()[-4000:]

    url = f"http://127.0.0.1:{port}"
    try:
        first = _workers(url, 2)
        assert len(first) == 2, (first, said())
        down = _post(url + "/v1/route", body(order_id="K-first", card_brand="VISA", currency="MXN"))["chosen"]
        now = datetime.utcnow()
        for i in range(25):  # the processor these payments go to times out
            _post(url + "/v1/outcomes", {"processor": down, "status": "TIMEOUT",
                                        "created_at": (now - timedelta(seconds=30 - i)).isoformat()})
        time.sleep(1.5)  # both workers hold it DOWN, and their snapshots say so
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        replacement = None
        while time.monotonic() < deadline and replacement is None:  # uvicorn respawns the dead worker
            try:
                w = _get(url + "/readyz")["worker"]
                if w not in first:
                    replacement = w
            except OSError:
                time.sleep(0.1)
        assert replacement is not None, "uvicorn did not respawn the killed worker\n" + said()
        chosen: list[str] = []
        deadline = time.monotonic() + 60
        while len(chosen) < 1000 and time.monotonic() < deadline:  # decisions of the replacement only
            d = _post(url + "/v1/route", body(order_id=f"K-{len(chosen)}", card_brand="VISA", currency="MXN"))
            if int(d["request_id"][-8:], 16) == replacement:
                chosen.append(d["chosen"])
        assert len(chosen) >= 300, f"only {len(chosen)} decisions reached the replacement\n" + said()
        share = chosen.count(down) / len(chosen)
        assert share <= MAX_SHARE_TO_DOWN, f"the replacement sent {share:.1%} of {len(chosen)} to the DOWN {down}\n" + said()
    finally:
        stop_server(server)
        server_log.close()
