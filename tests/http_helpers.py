"""What the tests that start a real server share: plain JSON calls and a clean stop."""

from __future__ import annotations

import json
import subprocess
import urllib.request


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:  # a new connection each time: any worker may answer
        return json.loads(r.read())


def post_json(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (the service drains and exits), SIGKILL after 30 s."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
