"""`make lab` starts JupyterLab for root and non-root users and offers the project kernel
(issue 11, finding 6: Jupyter refuses to run as root without --allow-root)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from smartrouter.config import REPO_ROOT

KERNEL = "smartrouter"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_lab_serves_the_project_kernel(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is missing; install it (Debian: apt-get install -y make)")
    port, token = _free_port(), secrets.token_hex(16)
    flags = f"--no-browser --ip=127.0.0.1 --port={port} --port-retries=0 --IdentityProvider.token={token}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))  # no stray files in ~/.local
    # `make lab` itself, as a user runs it; -o: never reinstall the venv from inside a test (a fresh
    # clone's `make test` has run setup already). The kernel spec is still registered if missing.
    proc = subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"LAB_FLAGS={flags}"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: make, jupyter and any kernel
    pgid = proc.pid
    log = tmp_path / "lab.log"
    try:
        url = f"http://127.0.0.1:{port}/api/kernelspecs"
        specs = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    specs = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        if specs is None:
            os.killpg(pgid, signal.SIGTERM)
            out = proc.communicate(timeout=30)[0]
            pytest.fail(f"`make lab` never answered on port {port} (exit {proc.returncode}):\n{out[-3000:]}")
        assert KERNEL in specs["kernelspecs"], f"kernels offered: {sorted(specs['kernelspecs'])}"
        assert specs["kernelspecs"][KERNEL]["spec"]["display_name"].startswith("smartrouter")
        # a wrong token is refused: the server is not open to anyone on the port
        bad = urllib.request.Request(url, headers={"Authorization": "token wrong"})
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(bad, timeout=5)
        assert denied.value.code == 403
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGTERM)  # Jupyter shuts down cleanly on SIGTERM
        try:
            out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            out = proc.communicate()[0]
        log.write_text(out or "")
        deadline = time.monotonic() + 30
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftover = _group_alive(pgid)
        if leftover:
            os.killpg(pgid, signal.SIGKILL)
    assert not leftover, f"processes of `make lab` outlived SIGTERM; log:\n{log.read_text()[-2000:]}"


def test_make_lab_keeps_jupyters_root_guard_for_other_users(tmp_path: Path) -> None:
    """--allow-root is added for root only: with `id -u` answering 1000, root gets Jupyter's refusal."""
    if os.getuid() != 0:
        pytest.skip("needs root: as a normal user the guard is Jupyter's own and `make lab` never adds the flag")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake / "id").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    flags = f"--no-browser --ip=127.0.0.1 --port={_free_port()} --port-retries=0"
    res = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"LAB_FLAGS={flags}"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Use --allow-root to bypass" in res.stdout + res.stderr, res.stdout + res.stderr
