"""State shared by workers and hosts (smartrouter.routing.state_store) and event times checked against a clock.

A worker that starts while another holds a processor DOWN must start from that state (issue 11,
item 7), with the embedded single-host store and with Redis; an outcome stamped in the future is
refused and can neither erase a failure window nor break the online features (item 8).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from routing_fakes import RULE_ROWS, fake_loader, payment, write_version
from smartrouter import features
from smartrouter.clock import EVENT, EventClock, EventTimeError
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.routing import load_routing_config
from smartrouter.routing.config import HealthConfig
from smartrouter.routing.health import DECLINE, FAILURE, SUCCESS, HealthTracker
from smartrouter.routing.service import ServiceDeps

# the bar: a worker that starts while a processor is DOWN sends it at most this share
# (the probes that test its recovery are probe_share = 2 %)
MAX_SHARE_TO_DOWN = 0.03
DECISIONS = 3000


def make_service(home: Path, store: str = "local"):
    env = {"SMARTROUTER_HOME": str(home), "SMARTROUTER_STATE_DIR": str(home / "state"),
           "SMARTROUTER_REGISTRY_DIR": str(home / "models"), "SMARTROUTER_STATE_STORE": store}
    over = {"exploration": {"enabled": False}, "experiment": {"treatment_share": 1.0}}
    return ServiceDeps(settings=load_settings(env), routing_config=load_routing_config(overrides=over),
                       model_loader=fake_loader, rules=list(RULE_ROWS), rules_from_warehouse=False,
                       poll=False, seed=3, seed_features=False).build()


@pytest.fixture
def home():
    path = Path(tempfile.mkdtemp(prefix="sr-state-"))  # short: the peer bus' socket paths are limited
    write_version(path / "models", "v1")  # the fake model ranks MIT first for MXN VISA CREDIT
    yield path
    shutil.rmtree(path, ignore_errors=True)


def share_to(svc, processor: str, n: int = DECISIONS) -> float:
    at = time.time()
    chosen = [svc.router.decide(payment(ORDER_ID=f"O-{i}"), at=at).chosen for i in range(n)]
    return chosen.count(processor) / n


def take_down(svc, processor: str) -> None:
    now = time.time()
    for i in range(30):
        svc.take_outcome(processor, "TIMEOUT", None, now - 30 + i, None, None, None)
    assert svc.router.health.state(processor) == "DOWN"


def wait_for(predicate, seconds: float = 10.0, loop=None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        if loop is not None:
            loop.run_until_complete(asyncio.sleep(0.05))
        else:
            time.sleep(0.05)
    return predicate()


def test_a_starting_worker_takes_over_health_from_the_local_snapshot(home):
    loop = asyncio.new_event_loop()
    a = make_service(home)
    a.startup(loop)
    try:
        assert share_to(a, "MIT") > 0.9  # the model's choice while MIT is UP
        take_down(a, "MIT")
        snapshot = home / "state" / "shared-state.json"
        assert wait_for(lambda: snapshot.exists() and '"DOWN"' in snapshot.read_text())
        b = make_service(home)  # a replacement worker (crash, kill -9, respawn) starting now
        assert b.router.health.state("MIT") == "UP"
        b.startup(loop)
        try:
            assert b.router.health.state("MIT") == "DOWN", b.state_note
            assert share_to(b, "MIT") <= MAX_SHARE_TO_DOWN
        finally:
            b.shutdown(loop)
    finally:
        a.shutdown(loop)
        loop.close()


def test_a_stale_snapshot_is_not_taken_over(home):
    loop = asyncio.new_event_loop()
    a = make_service(home)
    a.startup(loop)
    take_down(a, "MIT")
    snapshot = home / "state" / "shared-state.json"
    assert wait_for(lambda: snapshot.exists() and '"DOWN"' in snapshot.read_text())
    a.shutdown(loop)
    text = snapshot.read_text()
    import json

    data = json.loads(text)
    data["written"] -= a.config.health.window_seconds + 1  # nobody kept it current for a whole window
    snapshot.write_text(json.dumps(data))
    b = make_service(home)
    b.startup(loop)
    try:
        assert b.router.health.state("MIT") == "UP" and "old" in b.state_note
    finally:
        b.shutdown(loop)
        loop.close()


# ------------------------------------------------------------------ Redis: several hosts
@pytest.fixture
def redis_url():
    """A real redis-server on a free port, in a temporary folder (installed when missing)."""
    if shutil.which("redis-server") is None:
        subprocess.run(["bash", str(REPO_ROOT / "tests" / "ensure_redis.sh")], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="sr-redis-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    assert wait_for(lambda: _pings(client)), "redis-server did not start"
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def test_hosts_agree_through_redis_and_a_late_host_starts_from_the_stream(home, redis_url, tmp_path):
    loop = asyncio.new_event_loop()
    other_home = Path(tempfile.mkdtemp(prefix="sr-host2-"))
    write_version(other_home / "models", "v1")
    a = make_service(home, redis_url)
    b = make_service(other_home, redis_url)  # another host: its own state folder, no peer bus in common
    a.startup(loop)
    b.startup(loop)
    try:
        assert a.store.kind == "redis" and b.store.kind == "redis"
        take_down(a, "MIT")  # every outcome reaches host A only
        assert wait_for(lambda: b.router.health.state("MIT") == "DOWN", loop=loop), "host B never heard the outage"
        assert share_to(b, "MIT") <= MAX_SHARE_TO_DOWN
        # a decision made on host B whose outcome reaches host A: B resolves its segment and BIN from the stream
        pay = payment(ORDER_ID="O-x", CARD_BIN="522222")
        d = b.router.decide(pay, at=time.time())
        segment = b.router.bandit.segment_of(pay)
        prior = a.router.bandit.posterior(d.chosen, segment)
        a.take_outcome(d.chosen, "APPROVED", None, time.time(), d.request_id, None, None)
        later = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(minutes=1)
        for host in (a, b):
            assert wait_for(lambda: host.router.bandit.posterior(d.chosen, segment) == (prior[0] + 1, prior[1]), loop=loop)
            assert host.router.features.bin_features("522222", later)[f"BIN_{d.chosen}_OUTCOMES"] == 1.0
        third = Path(tempfile.mkdtemp(prefix="sr-host3-"))
        write_version(third / "models", "v1")
        c = make_service(third, redis_url)  # a host that starts after the outage
        assert c.router.health.state("MIT") == "UP"
        c.startup(loop)
        try:
            assert c.router.health.state("MIT") == "DOWN", c.state_note
            assert share_to(c, "MIT") <= MAX_SHARE_TO_DOWN
            # its replay holds the same recent outcomes as the hosts that heard them live
            assert c.router.health.export_state()["MIT"]["events"] == a.router.health.export_state()["MIT"]["events"]
        finally:
            c.shutdown(loop)
    finally:
        b.shutdown(loop)
        a.shutdown(loop)
        loop.close()


# ------------------------------------------------------------------ item 8: event times
def test_a_future_outcome_is_refused_and_the_failure_window_survives(home):
    svc = make_service(home)
    now = time.time()
    for i in range(14):  # 14 timeouts in the last 15 outcomes
        svc.take_outcome("ELAVON", "TIMEOUT" if i else "APPROVED", None, now - 60 + i, None, None, None)
    before = svc.router.health.snapshot(at=now)["ELAVON"]
    assert before["window_outcomes"] == 14 and svc.router.health.state("ELAVON") == "DOWN"
    with pytest.raises(EventTimeError, match="ahead of the service's wall clock"):
        svc.take_outcome("ELAVON", "APPROVED", None, now + 3600, None, None, None)
    # the same record arriving from another worker or the stream is not recorded either
    svc.router.observe_outcome("ELAVON", "APPROVED", at=now + 3600)
    assert svc.router.health.rejected_future == 1
    assert svc.router.health.snapshot(at=now)["ELAVON"] == before
    # a late outcome (reported after the fact) is kept, in time order, and erases nothing
    svc.take_outcome("ELAVON", "TIMEOUT", None, now - 300, None, None, None)
    assert svc.router.health.snapshot(at=now)["ELAVON"]["window_outcomes"] == 15


def test_health_window_is_not_erased_by_an_outcome_ahead_within_the_tolerance():
    h = HealthTracker(HealthConfig())
    now = time.time()
    for i in range(10):
        h.observe("WORLDPAY", FAILURE if i % 5 == 0 else DECLINE, at=now - 500 + i)
    h.observe("WORLDPAY", SUCCESS, at=now + 250)  # admitted (< 300 s ahead) but the window still ends now
    assert h.snapshot(at=now)["WORLDPAY"]["window_outcomes"] == 10
    assert h.snapshot(at=now + 250)["WORLDPAY"]["window_outcomes"] == 1  # its own window: [now - 350, now + 250]


def _history(state: features.OnlineFeatureState, now: datetime) -> None:
    for i in range(600):
        at = now - timedelta(minutes=120) + timedelta(seconds=12 * i)
        state.observe(("MIT", "ELAVON", "WORLDPAY")[i % 3], at, "APPROVED" if i % 4 else "DECLINED",
                      None if i % 4 else ("PROCESSOR_ERROR" if i % 8 == 0 else "ISSUER_DECLINE"), "411111")


def test_online_features_ignore_a_future_outcome_and_a_future_query():
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    clean, poisoned = features.OnlineFeatureState(), features.OnlineFeatureState()
    _history(clean, now)
    _history(poisoned, now)
    # 90 minutes ahead: past the counters' slack, so before the fix every later query raised
    assert poisoned.observe("MIT", now + timedelta(minutes=90), "DECLINED", "PROCESSOR_ERROR", "411111") is False
    assert poisoned.rejected_future == 1
    poisoned.health_features(now + timedelta(minutes=90))  # a request stamped that far ahead
    for minute in range(3):
        at = now + timedelta(minutes=minute)
        assert dict(poisoned.health_features(at)) == dict(clean.health_features(at))
        assert poisoned.bin_features("411111", at) == clean.bin_features("411111", at)
        assert set(poisoned.health_features(at)) == set(features.HEALTH_COLUMNS)
    assert poisoned.errors == 0


def test_event_clock_follows_simulated_time_but_refuses_a_jump():
    clock = EventClock(EVENT, 300.0)
    sim = time.time() + 10 * 86400  # a simulator ten days ahead of the wall clock
    state = features.OnlineFeatureState(clock=clock)
    start = datetime.fromtimestamp(sim, tz=timezone.utc).replace(tzinfo=None)
    for i in range(100):
        assert state.observe("MIT", start + timedelta(seconds=30 * i), "APPROVED", None, "411111")
    with pytest.raises(EventTimeError):
        clock.check(sim + 30 * 100 + 3600)
    assert EventClock().admits(sim) is False  # the wall clock would refuse the simulator's times


def test_a_feature_failure_is_counted_logged_once_and_exposed(caplog, monkeypatch):
    state = features.OnlineFeatureState()
    now = datetime.now(timezone.utc).replace(tzinfo=None)

    def broken(minute):
        raise ValueError("counter corrupted")

    monkeypatch.setattr(state, "_shared", broken)
    with caplog.at_level(logging.ERROR, logger="smartrouter.features"):
        for _ in range(50):
            assert state.health_features(now) == {}
            assert state.bin_features("411111", now) == {}
    assert state.errors == 100 and "counter corrupted" in state.last_error
    assert len([r for r in caplog.records if "online features failed" in r.getMessage()]) == 1


def test_post_outcome_an_hour_ahead_is_400_and_later_decisions_keep_their_features(home):
    from litestar.testing import TestClient

    from smartrouter.cli.serve import import_app_module

    env = {"SMARTROUTER_HOME": str(home), "SMARTROUTER_STATE_DIR": str(home / "state"),
           "SMARTROUTER_REGISTRY_DIR": str(home / "models")}
    app = import_app_module().create_app(load_settings(env), model_loader=fake_loader, rules=list(RULE_ROWS),
                                         rules_from_warehouse=False, poll=False, seed=3, seed_features=False,
                                         share_outcomes=False)
    svc = app.state.service
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with TestClient(app) as client:
        for i in range(20):
            r = client.post("/v1/outcomes", json={"processor": "ELAVON", "status": "TIMEOUT" if i % 2 else "APPROVED",
                                                  "card_bin": "411111", "created_at": (now - timedelta(minutes=5, seconds=-i)).isoformat()})
            assert r.status_code == 202
        before = dict(svc.router._enrich(payment(), time.time()))
        health_before = svc.router.health.snapshot()
        r = client.post("/v1/outcomes", json={"processor": "ELAVON", "status": "APPROVED",
                                              "created_at": (now + timedelta(hours=1)).isoformat()})
        assert r.status_code == 400 and "created_at" in r.text and "ahead" in r.text
        after = dict(svc.router._enrich(payment(), time.time()))
        assert set(features.HEALTH_COLUMNS) <= set(after) and after == before
        assert svc.router.features.errors == 0
        assert svc.router.health.snapshot() == health_before  # the failure window survives
        r = client.post("/v1/route", json={"order_id": "O-9", "amount": 10.0, "currency": "MXN", "card_bin": "411111",
                                           "card_brand": "VISA", "card_type": "CREDIT"})
        assert r.status_code == 200 and r.json()["source"] in ("model", "failover", "exploration")
        # a decision stamped an hour ahead is refused the same way (its features would be read at a time to come)
        r = client.post("/v1/route", json={"order_id": "O-10", "amount": 10.0, "currency": "MXN", "card_bin": "411111",
                                           "card_brand": "VISA", "card_type": "CREDIT",
                                           "created_at": (now + timedelta(hours=1)).isoformat()})
        assert r.status_code == 400 and "created_at" in r.text and "ahead" in r.text


def test_when_redis_stops_answering_the_workers_of_a_host_still_agree(home, redis_url):
    """Redis down: outcomes go over the peer bus to this host's workers; Redis back: the stream again."""
    from smartrouter.routing import peers, state_store

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a pid for worker B's bus
    loop = asyncio.new_event_loop()
    a, b = make_service(home, redis_url), make_service(home, redis_url)
    try:
        for svc, pid in ((a, os.getpid()), (b, other.pid)):
            svc.bus = peers.PeerBus(home / "state" / "peers", pid=pid).open()
            peers.attach(svc.bus, loop, svc.on_peer_message)
            svc.store = state_store.open_store(svc.settings, svc.config)
            svc.store.load(svc.router)
            svc.store.start(svc.router, loop, lambda outcomes, r=svc.router: state_store.apply_outcomes(r, outcomes))
        a.bus._refresh(force=True)
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        import redis

        redis.Redis(port=port).shutdown(nosave=True)
        a.take_outcome("MIT", "TIMEOUT", None, time.time(), None, None, None)  # the write fails: A notices
        assert wait_for(lambda: a.store.degraded, loop=loop), "the failed write went unnoticed"
        take_down(a, "MIT")
        assert wait_for(lambda: b.router.health.state("MIT") == "DOWN", loop=loop), "worker B never heard the outage"
    finally:
        for svc in (a, b):
            if svc.bus is not None:
                peers.detach(svc.bus, loop)
                svc.bus.close()
            if svc.store is not None:
                svc.store.stop()
        other.kill()
        other.wait()
        loop.close()


def test_an_outcome_a_little_ahead_does_not_slide_the_feature_windows_past_now():
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    state = features.OnlineFeatureState()
    _history(state, now)
    assert state.observe("MIT", now + timedelta(minutes=4), "APPROVED", None, "411111")  # admitted: < 300 s ahead
    now_minute = features.minute_number(now)
    for w, wc in state._health["MIT"].items():
        # a query now is answered from the running totals, not by re-summing what slid out
        assert wc.lo <= now_minute - features.HEALTH_WINDOWS[w]


def test_event_clock_service_seeds_online_features_up_to_simulated_time(tmp_path):
    """The live loop's simulated days run ahead of the wall clock: a service started mid-simulation
    (event clock) seeds its online features up to the warehouse's newest outcome, not up to today."""
    import datetime as dt

    from smartrouter import warehouse
    from smartrouter.routing.service import seed_online_features
    from smartrouter.world import World, WorldParams

    today = datetime.now(timezone.utc).date()
    env = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_STATE_DIR": str(tmp_path / "state"),
           "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models"), "SMARTROUTER_LOCAL_DIR": str(tmp_path / "wh"),
           "SMARTROUTER_WAREHOUSE": "local"}
    settings = load_settings(env)
    warehouse.write_world(World(WorldParams.small(days=2, per_day=400, end=today + dt.timedelta(days=3))), settings,
                          progress=False)
    last = features.last_attempt_time(settings)
    assert last is not None and last.date() == today + dt.timedelta(days=3)
    volume_24h = [c for c in features.HEALTH_COLUMNS if c.endswith("VOLUME") and "24H" in c.upper()]
    assert volume_24h
    for mode, expect_history in (("event", True), ("wall", False)):
        over = {"health": {"clock": mode}}
        svc = ServiceDeps(settings=settings, routing_config=load_routing_config(overrides=over), model_loader=fake_loader,
                          rules=list(RULE_ROWS), rules_from_warehouse=False, poll=False, seed=3,
                          seed_features=False).build()
        loop = asyncio.new_event_loop()
        try:
            seed_online_features(svc, loop)
            loop.run_until_complete(asyncio.sleep(0))  # the install is scheduled on the loop
            assert svc.online_features == "seeded"
            enriched = svc.router._enrich(payment(), last.replace(tzinfo=timezone.utc).timestamp())
            seen = sum(float(enriched.get(c) or 0.0) for c in volume_24h)
            assert (seen > 0) == expect_history, (mode, seen)
        finally:
            loop.close()
