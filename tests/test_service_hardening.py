"""The service's edge under hostile input, readiness, metrics and reload (issue 11, items 10-14)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from litestar.testing import TestClient

from http_helpers import stop_server
from routing_fakes import RULE_ROWS, body, fake_loader
from smartrouter.cli.serve import import_app_module
from smartrouter.config import load_settings
from smartrouter.routing import load_routing_config
from smartrouter.routing.service import Service, ServiceDeps

app_module = import_app_module()
TOKEN = "s3cret-token"
QUIET = {"exploration": {"enabled": False}, "health": {"probe_share": 0.0}, "experiment": {"treatment_share": 1.0}}


def deps(tmp_path, **kw) -> ServiceDeps:
    env = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_ADMIN_TOKEN": TOKEN}
    kw.setdefault("rules", list(RULE_ROWS))
    kw.setdefault("rules_from_warehouse", False)
    kw.setdefault("poll", False)
    kw.setdefault("seed_features", False)
    kw.setdefault("share_outcomes", False)
    return ServiceDeps(settings=load_settings(env), routing_config=load_routing_config(overrides=QUIET),
                       model_loader=fake_loader, seed=5, **kw)


def make_app(tmp_path, **kw):
    d = deps(tmp_path, **kw)
    return app_module.create_app(d.settings, **{k: v for k, v in vars(d).items() if k != "settings"})


# ---------------------------------------------------------------- 14: the service without HTTP, bench routes behind a flag
def test_the_service_decides_and_learns_without_http(tmp_path):
    svc = deps(tmp_path).build()
    assert isinstance(svc, Service) and svc.rules_source == "given"
    d = svc.router.decide({"ORDER_ID": "O1", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "AMOUNT": 10.0})
    assert d.chosen == "WORLDPAY" and d.source == "rules"
    assert svc.take_outcome("WORLDPAY", "TIMEOUT", None, 1.0, d.request_id, None, None) == "failure"
    svc.refresh_gauges()
    assert b'smartrouter_processor_state{processor="WORLDPAY",state="UP"} 1.0' in svc.metrics.exposition()


def test_benchmark_routes_are_mounted_only_behind_the_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("SMARTROUTER_BENCH_ROUTES", raising=False)
    with TestClient(make_app(tmp_path / "prod")) as c:
        assert c.get("/v1/constant").status_code == 404
        assert c.post("/v1/constant", json=body()).status_code == 404
    monkeypatch.setenv("SMARTROUTER_BENCH_ROUTES", "1")
    with TestClient(make_app(tmp_path / "bench")) as c:
        assert c.get("/v1/constant").json() == {"chosen": "WORLDPAY"}
        assert c.post("/v1/constant", json=body()).status_code == 200


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTROUTER_BENCH_ROUTES", "1")
    with TestClient(make_app(tmp_path)) as c:
        yield c


def post_raw(c, path: str, raw: bytes):
    return c.post(path, content=raw, headers={"content-type": "application/json"})


def assert_400(r, *words: str, key: str | None = None) -> dict:
    assert r.status_code == 400, r.text
    d = r.json()
    assert "Traceback" not in r.text and "internal error" not in r.text
    for w in words:
        assert w in d["detail"], (w, d["detail"])
    if key is not None:
        assert key in [e["key"] for e in d["extra"]], d
    return d


# ---------------------------------------------------------------- 10: client garbage is a 400, never a 500
@pytest.mark.parametrize("path,raw", [
    ("/v1/route", b'{"order_id": "O-\xff\xfe", "amount": 10.0, "currency": "MXN", "card_bin": "411111", '
                  b'"card_brand": "VISA", "card_type": "CREDIT"}'),
    ("/v1/outcomes", b'{"processor": "MIT", "status": "APPROVED", "order_id": "\xc3\x28"}'),
    ("/v1/constant", b'{"order_id": "\xff"}'),
], ids=["route", "outcomes", "bench"])
def test_invalid_utf8_inside_a_json_string_is_a_400(client, path, raw):
    assert_400(post_raw(client, path, raw), "not valid UTF-8", key="body")


DEEP = 5000


@pytest.mark.parametrize("path,prefix", [
    ("/v1/route", b'{"order_id": '),  # a known field
    ("/v1/route", b'{"nested": '),  # an unknown one
    ("/v1/outcomes", b'{"processor": "MIT", "status": "APPROVED", "error_code": '),
    ("/v1/constant", b'{"x": '),
], ids=["route-field", "route-unknown", "outcomes", "bench"])
def test_json_nested_5000_deep_is_a_400(client, path, prefix):
    raw = prefix + b"[" * DEEP + b"]" * DEEP + b"}"
    assert len(raw) < 16_384  # under the body limit: the decoder, not the size check, must refuse it
    assert_400(post_raw(client, path, raw))


# ---------------------------------------------------------------- 11: unknown fields, strict types, the schema's codes
def test_a_misspelt_field_is_a_400_naming_it(client):
    d = assert_400(client.post("/v1/route", json=body(candidate=["ELAVON"])), "candidate", key="candidate")
    assert "unknown field" in d["detail"] and "/schema" in d["detail"]
    assert_400(client.post("/v1/outcomes", json={"processor": "MIT", "status": "APPROVED", "latency": 5}), key="latency")


@pytest.mark.parametrize("field,value", [
    ("amount", "1500"), ("num_attempts_order", "2"), ("avs_checked", "true"), ("passengers", 2.0), ("explain", 1),
])
def test_types_are_strict_no_numeric_strings(client, field, value):
    assert_400(client.post("/v1/route", json=body(**{field: value})), key=field)


def test_outcome_types_are_strict(client):
    assert_400(client.post("/v1/outcomes", json={"processor": "MIT", "status": "APPROVED", "latency_ms": "12"}),
               key="latency_ms")


def test_the_schema_lists_the_error_codes_the_handlers_accept(client):
    from smartrouter import catalog

    schemas = client.get("/schema/openapi.json").json()["components"]["schemas"]

    def enum_of(model: str, field: str) -> set:
        prop = schemas[model]["properties"][field]
        options = prop.get("oneOf", [prop])
        return {v for o in options for v in o.get("enum", []) if v is not None}

    assert enum_of("OutcomeRequest", "error_code") == set(catalog.ERROR_CODES)
    assert enum_of("RouteRequest", "previous_order_error_code") == set(catalog.ERROR_CODES)
    d = assert_400(client.post("/v1/outcomes", json={"processor": "MIT", "status": "DECLINED", "error_code": "999"}),
                   key="error_code")
    assert "use one of " + ", ".join(catalog.ERROR_CODES) in d["detail"]
    assert_400(client.post("/v1/route", json=body(previous_order_error_code="ZZ")), key="previous_order_error_code")
    good = sorted(catalog.ERROR_CODES)[0]
    assert client.post("/v1/outcomes", json={"processor": "MIT", "status": "DECLINED", "error_code": good}).status_code == 202


# ---------------------------------------------------------------- 13: no invented rules outside the local world
def failing_reader(*args, **kwargs):
    raise ConnectionError("warehouse unreachable (test)")


def test_snowflake_without_rules_never_routes_by_the_world_rules(tmp_path, monkeypatch):
    from smartrouter import warehouse

    monkeypatch.setattr(warehouse, "query_frame", failing_reader)
    env = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_WAREHOUSE": "snowflake"}
    settings = load_settings(env)
    assert settings.warehouse == "snowflake"
    svc = ServiceDeps(settings=settings, routing_config=load_routing_config(overrides=QUIET), model_loader=fake_loader,
                      rules=None, poll=False, seed_features=False, share_outcomes=False, seed=5).build()
    assert svc.router.rules is None
    assert svc.rules_source.startswith("none") and "warehouse unreachable" in svc.rules_source
    assert "synthetic world" in svc.rules_source and "SMARTROUTER_WAREHOUSE=snowflake" in svc.rules_source
    r = svc.readiness()
    assert not r.ready and any("no static rules source" in x for x in r.reasons)
    d = svc.router.decide({"ORDER_ID": "O1", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "AMOUNT": 10.0})
    assert d.source == "fallback" and d.fallback_reason == "no_rule"  # success rates / catalog order, no invented rules
    # the warehouse comes back: the retry (every RULES_RETRY_SECONDS in a served worker) loads the merchant's rules
    import pandas as pd

    monkeypatch.setattr(warehouse, "query_frame", lambda *a, **k: pd.DataFrame(RULE_ROWS))
    assert svc.retry_rules() and svc.rules_source == "warehouse" and svc.readiness().ready
    assert svc.router.decide({"ORDER_ID": "O2", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT",
                              "AMOUNT": 10.0}).source == "rules"


def test_the_local_world_still_falls_back_to_its_own_rules(tmp_path, monkeypatch):
    from smartrouter import warehouse
    from smartrouter.routing.policy import rules_from_sources

    monkeypatch.setattr(warehouse, "query_frame", failing_reader)
    rules, source = rules_from_sources(load_settings({"SMARTROUTER_HOME": str(tmp_path)}))
    assert rules is not None and source == "package default (world rules)"


def test_no_rules_source_is_a_503_over_http(tmp_path, monkeypatch):
    from smartrouter import warehouse

    monkeypatch.setattr(warehouse, "query_frame", failing_reader)
    app = app_module.create_app(load_settings({"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_WAREHOUSE": "snowflake"}),
                                routing_config=load_routing_config(overrides=QUIET), model_loader=fake_loader,
                                poll=False, seed_features=False, share_outcomes=False)
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and not r.json()["ready"]
        assert any("no static rules source" in x for x in r.json()["not_ready"])
        assert c.post("/v1/route", json=body()).json()["source"] == "fallback"


# ---------------------------------------------------------------- 12b: readiness is real
def test_ready_when_all_is_well(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["not_ready"] == []


def test_readiness_waits_for_online_features_while_a_model_is_meant_to_serve(tmp_path):
    from routing_fakes import write_version

    write_version(tmp_path / "models", "v1")
    with TestClient(make_app(tmp_path, seed_features=True)) as c:  # no warehouse here: seeding fails
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["online_features"] == "seeding" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["online_features"] == "failed"
        assert any("online features failed" in x for x in r.json()["not_ready"])
        # live outcomes that cover the warm-up (60 min) make the model trustworthy: ready again
        start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=61)
        c.post("/v1/outcomes", json={"processor": "MIT", "status": "APPROVED", "created_at": start.isoformat()})
        assert c.get("/readyz").status_code == 200


class CountingFeatures:
    """Online features whose computation fails (counted, like OnlineFeatureState's `errors`)."""

    def __init__(self):
        self.errors = 0
        self.last_error = None

    def health_features(self, at):
        self.errors += 1
        self.last_error = "ValueError: boom"
        return {}

    def bin_features(self, bin, at):
        return {}

    def observe(self, *a, **k):
        pass


def test_failing_online_features_make_the_worker_unready_until_they_stop(tmp_path):
    from routing_fakes import write_version

    write_version(tmp_path / "models", "v1")
    feats = CountingFeatures()
    with TestClient(make_app(tmp_path, features=feats)) as c:
        assert c.get("/readyz").status_code == 200
        for i in range(3):
            assert c.post("/v1/route", json=body(order_id=f"F{i}")).status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and any("failing for payments (3 errors" in x for x in r.json()["not_ready"])
        assert r.json()["feature_errors"] == 3
        assert c.get("/readyz").status_code == 200  # no new failures since the last probe


def test_sigterm_starts_draining_before_the_server_shuts_down(tmp_path):
    import signal

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))  # stands in for uvicorn's handler
    try:
        app = make_app(tmp_path)
        svc = app.state.service
        with TestClient(app) as c:
            assert svc.install_drain_signal()  # startup runs off the main thread under TestClient; uvicorn's is main
            assert c.get("/readyz").status_code == 200
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
            assert seen == [signal.SIGTERM]  # the server's own handler still runs
            r = c.get("/readyz")
            assert r.status_code == 503 and any(x.startswith("draining") for x in r.json()["not_ready"])
            assert c.post("/v1/route", json=body()).status_code == 200  # what still arrives is answered
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- 12c/d: reload status, errors cleared, a fleet that converges
def admin(c):
    return c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})


def test_reload_of_a_refused_version_is_409_and_the_error_clears_when_the_pointer_is_fixed(tmp_path):
    from routing_fakes import promote_pointer, write_version

    reg = tmp_path / "models"
    write_version(reg, "v1")
    with TestClient(make_app(tmp_path)) as c:
        assert admin(c).status_code == 200
        write_version(reg, "v2", broken=True)
        r = admin(c)
        assert r.status_code == 409, r.text
        assert r.json()["result"] == "failed" and r.json()["model_version"] == "v1" and "v2 refused" in r.json()["last_error"]
        assert "v2 refused" in c.get("/readyz").json()["model_error"]
        promote_pointer(reg, "v1")  # the operator points back at the good version
        svc = c.app.state.service
        assert svc.holder.check() == "unchanged"  # what the poller does
        ready = c.get("/readyz").json()
        assert ready["model_error"] is None and ready["model_version"] == "v1" and not any("refused" in n for n in ready["notes"])
        assert "smartrouter_model_load_failed 0.0" in c.get("/metrics").text
        assert admin(c).status_code == 200


def test_a_worker_started_while_the_pointer_names_a_corrupt_version_serves_what_the_fleet_serves(tmp_path):
    from routing_fakes import write_version

    reg = tmp_path / "models"
    write_version(reg, "v1")
    first = deps(tmp_path).build()  # an older worker: loaded v1 (and recorded it for the fleet)
    assert first.holder.version == "v1"
    write_version(reg, "v2", broken=True)
    assert first.holder.check() == "failed" and first.holder.version == "v1"
    with TestClient(make_app(tmp_path)) as c:  # a worker (re)started now
        d = c.post("/v1/route", json=body()).json()
        assert d["model_version"] == "v1" and d["source"] == "model"
        r = c.get("/readyz")
        ready = r.json()
        assert r.status_code == 200 and ready["serving"] == "model" and ready["model_version"] == "v1"
        assert "serving v1" in ready["serving_note"] and "v2 refused" in ready["serving_note"]
        write_version(reg, "v3")  # a good promotion: everyone moves on, the note goes
        assert c.app.state.service.holder.check() == "loaded"
        assert c.get("/readyz").json()["serving_note"] is None


def test_without_a_fleet_record_a_fresh_worker_falls_back_to_the_registry_history(tmp_path):
    import json as _json

    from routing_fakes import write_version

    reg = tmp_path / "models"
    write_version(reg, "v1")
    write_version(reg, "v2", broken=True)
    (reg / "history.jsonl").write_text("\n".join(_json.dumps(e) for e in [
        {"action": "promote", "version": "v1"}, {"action": "promote", "version": "v2", "previous": "v1"}]) + "\n")
    svc = deps(tmp_path).build()
    assert svc.holder.version == "v1" and svc.holder.status.failed_version == "v2"
    assert "earlier promotion" in svc.holder.status.serving_note


# ---------------------------------------------------------------- 12a: a killed worker's gauges
_WORKER = """
import os, signal, sys, time
from smartrouter.routing.service import Metrics
m = Metrics()
state = sys.argv[1]
for s in ("UP", "DEGRADED", "DOWN", "RECOVERING"):
    m.states.labels("WORLDPAY", s).set(1.0 if s == state else 0.0)
print("written", flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # no exit hook runs, as with kill -9
time.sleep(60)
"""


def test_a_killed_workers_gauges_are_dropped_and_the_latest_state_wins(tmp_path, monkeypatch):
    import subprocess
    import sys

    folder = tmp_path / "prom"
    folder.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(folder))
    dead = subprocess.run([sys.executable, "-c", _WORKER, "DOWN", "kill"], env=env, capture_output=True, text=True)
    assert "written" in dead.stdout and dead.returncode == -9
    alive = subprocess.Popen([sys.executable, "-c", _WORKER, "UP", "live"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout.readline().strip() == "written"
        assert any(f"_{alive.pid}.db" in n for n in os.listdir(folder))
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
        from smartrouter.routing.service import Metrics

        text = Metrics().exposition().decode()
        assert 'smartrouter_processor_state{processor="WORLDPAY",state="DOWN"} 0.0' in text, text
        assert 'smartrouter_processor_state{processor="WORLDPAY",state="UP"} 1.0' in text
        assert not any(n.startswith("gauge_live") and f"_{alive.pid}.db" not in n for n in os.listdir(folder))
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------- routing.toml is read strictly
@pytest.mark.parametrize("text,named", [
    ("[reload]\npoll_second = 5\n", "poll_second"),
    ("[http]\nmax_body = 1\n", "max_body"),
    ("[reload]\npoll_seconds = \"5\"\n", "[reload].poll_seconds"),
    ("[http]\nmax_body_bytes = 2048.5\n", "[http].max_body_bytes"),
    ("[polcy]\nmin_confidence = 0.3\n", "polcy"),
    ("[policy]\nmin_confidance = 0.3\n", "min_confidance"),
    ("policy = 3\n", "policy"),
])
def test_routing_toml_rejects_unknown_keys_and_wrong_types_naming_key_and_file(tmp_path, text, named):
    from smartrouter.errors import ConfigError

    path = tmp_path / "routing.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_routing_config(path)
    assert named in str(exc.value) and str(path) in str(exc.value)


# ---------------------------------------------------------------- 12a for real: `smartrouter serve --workers 2`, kill -9
def _http(url: str, payload: dict | None = None) -> tuple[int, bytes]:
    import json as _json
    import urllib.error
    import urllib.request

    data = _json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # a new connection each time: any worker may answer
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _state_lines(text: str, processor: str) -> dict[str, float]:
    import re

    return {m.group(1): float(m.group(2)) for m in re.finditer(
        rf'smartrouter_processor_state\{{processor="{processor}",state="(\w+)"\}} ([\d.]+)', text)}


@pytest.mark.slow
def test_metrics_after_kill_9_of_a_worker_report_one_state_per_processor():
    import json as _json
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    from smartrouter.config import REPO_ROOT

    home = tempfile.mkdtemp(prefix="sr-metrics-")  # short: the peer bus' socket paths are limited
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, SMARTROUTER_HOME=home, SMARTROUTER_STATE_DIR=home, SMARTROUTER_PORT=str(port),
               SMARTROUTER_WAREHOUSE="local", SMARTROUTER_LOCAL_DIR=os.path.join(home, "no-warehouse"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen([sys.executable, "-m", "smartrouter", "serve", "--workers", "2", "--port", str(port)],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def workers(want: set | None = None, seconds: float = 120) -> dict[int, dict]:
        seen: dict[int, dict] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (len(seen) == 2 and all(w["peers"] == 1 for w in seen.values())):
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                status, raw = _http(url + "/readyz")
                r = _json.loads(raw)
                seen[r["worker"]] = r
            except (OSError, ValueError):
                time.sleep(0.2)
        return seen

    def states_everywhere(processor: str, state: str, seconds: float = 30) -> bool:
        deadline = time.monotonic() + seconds
        seen: dict[int, str] = {}
        while time.monotonic() < deadline:
            h = _json.loads(_http(url + "/v1/processors/health")[1])
            seen[h["worker"]] = next(p["state"] for p in h["processors"] if p["processor"] == processor)
            if len(seen) == 2 and set(seen.values()) == {state}:
                return True
        return False

    try:
        first = workers()
        assert len(first) == 2, first
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        for i in range(25):  # WORLDPAY times out, on whichever worker takes each outcome
            _http(url + "/v1/outcomes", {"processor": "WORLDPAY", "status": "TIMEOUT",
                                         "created_at": (now - timedelta(seconds=60 - i)).isoformat()})
        assert states_everywhere("WORLDPAY", "DOWN")
        for _ in range(4):  # both workers have written DOWN = 1
            assert _state_lines(_http(url + "/metrics")[1].decode(), "WORLDPAY")["DOWN"] == 1.0
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)  # no exit hook: its gauge file stays behind
        after = workers()
        assert len(after) == 2 and victim not in after, after
        for i in range(12):  # WORLDPAY is back: a success makes it RECOVERING, 5 in a row UP
            _http(url + "/v1/outcomes", {"processor": "WORLDPAY", "status": "APPROVED",
                                         "created_at": (now - timedelta(seconds=20 - i)).isoformat()})
        assert states_everywhere("WORLDPAY", "UP")
        for _ in range(6):  # any worker answers the scrape: each reports one state, the current one
            states = _state_lines(_http(url + "/metrics")[1].decode(), "WORLDPAY")
            assert states == {"UP": 1.0, "DEGRADED": 0.0, "DOWN": 0.0, "RECOVERING": 0.0}, states
        leftovers = [n for n in os.listdir(os.path.join(home, "prometheus")) if n.startswith("gauge_live") and str(victim) in n]
        assert not leftovers, leftovers
    finally:
        stop_server(server)


@pytest.mark.slow
def test_sigterm_on_a_real_server_drains_for_drain_seconds_then_stops(tmp_path):
    import json as _json
    import signal
    import socket
    import subprocess
    import sys

    from smartrouter.config import REPO_ROOT
    from smartrouter.routing.config import DEFAULT_PATH

    drain = 3.0
    cfg = tmp_path / "routing.toml"
    cfg.write_text(DEFAULT_PATH.read_text().replace("drain_seconds = 0", f"drain_seconds = {drain}"))
    assert load_routing_config(cfg).drain_seconds == drain
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = str(tmp_path)
    env = dict(os.environ, SMARTROUTER_HOME=home, SMARTROUTER_STATE_DIR=home, SMARTROUTER_PORT=str(port),
               SMARTROUTER_WAREHOUSE="local", SMARTROUTER_LOCAL_DIR=os.path.join(home, "no-warehouse"),
               SMARTROUTER_ROUTING_CONFIG=str(cfg))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen([sys.executable, "-m", "smartrouter", "serve", "--workers", "1", "--port", str(port)],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and status != 200:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                status = _http(url + "/readyz")[0]
            except OSError:
                time.sleep(0.2)
        assert status == 200
        server.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        seen_draining = False
        routed = 0
        while time.monotonic() - t0 < drain - 1.0:  # inside the drain window: not ready, still serving
            status, raw = _http(url + "/readyz")
            assert status == 503, raw
            seen_draining = seen_draining or any(x.startswith("draining") for x in _json.loads(raw)["not_ready"])
            routed += _http(url + "/v1/route", body())[0] == 200
            time.sleep(0.1)
        assert seen_draining and routed >= 5
        server.wait(timeout=30)  # then it stops by itself
        assert time.monotonic() - t0 >= drain - 0.5
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
