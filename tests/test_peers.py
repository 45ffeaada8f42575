"""Several workers, one view: outcomes shared between worker processes (smartrouter.routing.peers)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta

import pytest

from routing_fakes import RULE_ROWS, body, fake_loader
from smartrouter.cli.serve import import_app_module
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.routing import load_routing_config, peers
from smartrouter.routing.policy import owner_of
from http_helpers import get_json as _get, post_json as _post, stop_server

app_module = import_app_module()
T0 = datetime(2024, 5, 6, 14, 0, 0)


@pytest.fixture
def other_pid():
    """A live process whose pid stands in for a second worker."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def short_dir(tmp_path_factory):
    # AF_UNIX socket paths are limited to ~100 bytes; pytest's tmp paths can be long
    import tempfile

    return tempfile.mkdtemp(prefix="sr-peers-")


def test_bus_delivers_to_live_peers_and_forgets_dead_ones(tmp_path_factory, other_pid):
    folder = short_dir(tmp_path_factory)
    a = peers.PeerBus(folder).open()
    b = peers.PeerBus(folder, pid=other_pid).open()
    a._refresh(force=True)  # peers are re-read every second; B joined after A read them
    try:
        assert a.peers == [other_pid] and b.peers == [os.getpid()]
        sent = peers.message(peers.OUTCOME, a.pid, processor="ELAVON", status="TIMEOUT", at=1.5,
                             segment=("MXN", "VISA", "CREDIT"), card_bin="415231")
        assert a.publish(sent) == 1
        got = b.receive()
        assert got == [sent] and got[0].segment == ["MXN", "VISA", "CREDIT"]
        assert b.receive() == []  # nothing left, and receive never blocks
        # a worker that died without cleaning up: its socket is skipped and removed
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = peers.PeerBus(folder, pid=dead.pid).open()
        stale._sock.close()  # crashed: the file stays behind
        assert os.path.exists(stale.path)
        a._refresh(force=True)
        assert a.peers == [other_pid] and not os.path.exists(stale.path)
    finally:
        a.close()
        b.close()


def test_a_worker_that_joins_gets_the_next_outcome_without_waiting_for_the_refresh(tmp_path_factory, other_pid):
    """A binds first; B binds after A read the folder. A's next publish reaches B at once (the folder's
    mtime changed), not a refresh period later: a respawned worker misses none of its peers' outcomes."""
    folder = short_dir(tmp_path_factory)
    a = peers.PeerBus(folder).open()
    try:
        assert a.peers == []
        b = peers.PeerBus(folder, pid=other_pid).open()
        try:
            sent = peers.message(peers.OUTCOME, a.pid, processor="MIT", status="TIMEOUT", at=2.0)
            assert a.publish(sent) == 1  # well within the 1 s refresh period
            assert b.receive() == [sent]
        finally:
            b.close()
        assert a.publish(sent) == 0  # and a peer that left is dropped as promptly
    finally:
        a.close()


def test_a_peer_that_stops_reading_never_blocks_the_sender(tmp_path_factory, other_pid):
    folder = short_dir(tmp_path_factory)
    a = peers.PeerBus(folder).open()
    b = peers.PeerBus(folder, pid=other_pid).open()
    a._refresh(force=True)
    try:
        msg = peers.message(peers.OUTCOME, a.pid, processor="MIT", status="APPROVED", at=1.0)
        taken = sum(a.publish(msg) for _ in range(50_000))
        assert a.dropped == 50_000 - taken > 0  # the peer's queue filled; the rest were dropped and counted
        got = b.receive()
        assert len(got) == taken and all(m == msg for m in got)
    finally:
        a.close()
        b.close()


def make_service(state_dir, pid):
    env = {"SMARTROUTER_HOME": str(state_dir), "SMARTROUTER_STATE_DIR": str(state_dir)}
    over = {"exploration": {"enabled": False}, "health": {"probe_share": 0.0}, "experiment": {"treatment_share": 1.0}}
    app = app_module.create_app(load_settings(env), routing_config=load_routing_config(overrides=over),
                                model_loader=fake_loader, rules=list(RULE_ROWS), rules_from_warehouse=False,
                                poll=False, seed=3, seed_features=False)
    svc = app.state.service
    svc.router.pid, svc.router._id_suffix = pid, f"{pid:08x}"  # this "worker" issues request ids as pid
    svc.bus = peers.PeerBus(os.path.join(state_dir, "peers"), pid=pid).open()
    return svc


def pump(*services):
    """Deliver every waiting message (what the event loop's reader does in a worker)."""
    for _ in range(5):
        for svc in services:
            for msg in svc.bus.receive():
                svc.on_peer_message(msg)


def test_two_workers_share_health_posteriors_and_bin_history(tmp_path_factory, other_pid):
    folder = short_dir(tmp_path_factory)
    a, b = make_service(folder, os.getpid()), make_service(folder, other_pid)
    a.bus._refresh(force=True)
    try:
        payment = {"ORDER_ID": "O1", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "CARD_BIN": "415231"}
        at = T0.timestamp()
        d = b.router.decide(dict(payment), at=at)
        assert owner_of(d.request_id) == other_pid
        segment = b.router.bandit.segment_of(payment)
        # the outcome reaches worker A, which did not decide: A forwards it to B, B resolves and shares
        kind = a.take_outcome(d.chosen, "APPROVED", None, at + 1, d.request_id, None, None)
        assert kind == "approved"
        pump(b, a)
        for svc in (a, b):
            assert svc.router.bandit.posterior(d.chosen, segment) == (2.0, 1.0)
            hist = svc.router.features.bin_features("415231", T0 + timedelta(minutes=2))
            assert hist[f"BIN_{d.chosen}_OUTCOMES"] == 1.0
        # an outage seen only by worker A takes the processor down in B too
        for i in range(30):
            a.take_outcome("ELAVON", "TIMEOUT", None, at + 10 + i, None, None, None)
        pump(b)
        assert a.router.health.state("ELAVON") == "DOWN" and b.router.health.state("ELAVON") == "DOWN"
        # an outcome whose deciding worker is gone is applied where it lands (and still shared)
        b.bus.close()
        orphan = "0" * 24 + f"{other_pid:08x}"
        a.bus._refresh(force=True)
        a.take_outcome("MIT", "APPROVED", None, at + 50, orphan, None, None)
        assert a.router.health.snapshot(at=at + 60)["MIT"]["window_outcomes"] == 1
    finally:
        a.bus.close()
        b.bus.close()


def test_request_ids_name_their_worker():
    assert owner_of("ab" * 12 + "0000beef") == 0xBEEF
    assert owner_of(None) is None and owner_of("short") is None and owner_of("z" * 32) is None


# ------------------------------------------------------------------ the real thing: two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def test_smartrouter_serve_with_two_workers_agrees_on_an_outage_and_reports_all_metrics(tmp_path_factory):
    """`smartrouter serve --workers 2`: an outage reported to whichever worker takes it is seen by both."""
    import tempfile

    home = tempfile.mkdtemp(prefix="sr-2w-")
    port = _free_port()
    env = dict(os.environ, SMARTROUTER_HOME=home, SMARTROUTER_STATE_DIR=home, SMARTROUTER_PORT=str(port),
               SMARTROUTER_WAREHOUSE="local", SMARTROUTER_LOCAL_DIR=os.path.join(home, "no-warehouse"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen([sys.executable, "-m", "smartrouter", "serve", "--workers", "2", "--port", str(port)],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        workers: dict[int, dict] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (len(workers) == 2 and all(w["peers"] == 1 for w in workers.values())):
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                r = _get(url + "/readyz")
                workers[r["worker"]] = r
            except OSError:
                time.sleep(0.2)
        assert len(workers) == 2 and all(w["peers"] == 1 for w in workers.values()), workers
        now = datetime.utcnow()
        for i in range(25):  # ELAVON times out; each outcome lands on whichever worker accepts it
            _post(url + "/v1/outcomes", {"processor": "ELAVON", "status": "TIMEOUT",
                                        "created_at": (now + timedelta(seconds=i)).isoformat()})
        states: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(states) < 2 or set(states.values()) != {"DOWN"}):
            h = _get(url + "/v1/processors/health")
            states[h["worker"]] = next(p["state"] for p in h["processors"] if p["processor"] == "ELAVON")
        assert len(states) == 2 and set(states.values()) == {"DOWN"}, states
        # a scrape of either worker counts every outcome once
        for _ in range(4):
            text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
            got = re.search(r'smartrouter_outcomes_total\{kind="failure",processor="ELAVON"\} ([\d.]+)', text)
            assert got and float(got.group(1)) == 25.0, text[:2000]
        d = _post(url + "/v1/route", body(order_id="X1", card_brand="VISA", currency="MXN"))
        assert d["chosen"] != "ELAVON"
    finally:
        stop_server(server)
    assert not os.listdir(os.path.join(home, "peers")), "workers remove their sockets on shutdown"
