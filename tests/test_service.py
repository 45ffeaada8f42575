"""The Litestar service over HTTP: contracts, bad input, admin, outage replay, reload under load, parity."""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta

import pytest
from litestar.testing import TestClient

from routing_fakes import RULE_ROWS, FakeModel, body, fake_loader, promote_pointer, write_version
from smartrouter.cli.serve import import_app_module
from smartrouter.config import load_settings
from smartrouter.routing import load_routing_config, read_records

app_module = import_app_module()
TOKEN = "s3cret-token"
T0 = datetime(2024, 5, 6, 14, 0, 0)


def make_app(tmp_path, *, token=TOKEN, routing=None, loader=fake_loader, **kw):
    env = {"SMARTROUTER_HOME": str(tmp_path)}
    if token:
        env["SMARTROUTER_ADMIN_TOKEN"] = token
    over = {"exploration": {"enabled": False}, "health": {"probe_share": 0.0}, "experiment": {"treatment_share": 1.0},
            "reload": {"poll_seconds": 0.02}}
    for k, v in (routing or {}).items():
        over.setdefault(k, {}).update(v)
    kw.setdefault("poll", False)
    kw.setdefault("seed_features", False)  # no warehouse here; test_cold_start_* covers seeding
    return app_module.create_app(
        load_settings(env), routing_config=load_routing_config(overrides=over), model_loader=loader,
        rules=list(RULE_ROWS), rules_from_warehouse=False, seed=5, **kw,
    )


@pytest.fixture
def client(tmp_path):
    with TestClient(make_app(tmp_path)) as c:
        yield c


def test_no_model_serves_rules_and_says_so(client):
    r = client.post("/v1/route", json=body())
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["source"] == "rules" and d["chosen"] == "WORLDPAY" and d["model_version"] is None
    assert [x["processor"] for x in d["ranked"]] == ["WORLDPAY", "MIT", "ELAVON"]
    assert d["arm"] == "treatment" and d["propensity"] == 1.0 and len(d["request_id"]) == 32
    ready = client.get("/readyz").json()
    assert ready["serving"] == "rules" and ready["model_version"] is None and ready["rules_source"] == "given"
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/schema/openapi.json").json()
    assert "/v1/route" in schema["paths"] and "RouteRequest" in str(schema["components"])


BAD = [
    ("malformed json", b'{"order_id": "O-1", "amount": ', None),
    ("missing field", {k: v for k, v in body().items() if k != "currency"}, "currency"),
    ("wrong type", body(amount="lots"), "amount"),
    ("wrong type int", body(num_attempts_order="two"), "num_attempts_order"),
    ("unknown currency", body(currency="EUR"), "currency"),
    ("unknown brand", body(card_brand="DINERS"), "card_brand"),
    ("unknown processor", body(candidates=["WORLDPAY", "STRIPE"]), "candidates[1]"),
    ("negative amount", body(amount=-5), "amount"),
    ("absurd amount", body(amount=5e9), "amount"),
    ("bad bin", body(card_bin="41x111"), "card_bin"),
    ("unknown previous code", body(previous_order_error_code="ZZ"), "previous_order_error_code"),
    ("not an object", b"[1, 2, 3]", None),
]


@pytest.mark.parametrize("name,payload,key", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_field(client, name, payload, key):
    r = client.post("/v1/route", content=payload, headers={"content-type": "application/json"}) if isinstance(payload, bytes) \
        else client.post("/v1/route", json=payload)
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text and "File \"" not in r.text
    if key is not None:
        assert key in [e["key"] for e in r.json()["extra"]]


def test_bad_outcome_and_oversized_body(client):
    r = client.post("/v1/outcomes", json={"processor": "STRIPE", "status": "APPROVED"})
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "processor"
    r = client.post("/v1/outcomes", json={"processor": "MIT", "status": "DECLINED", "error_code": "999"})
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "error_code"
    r = client.post("/v1/outcomes", json={"processor": "MIT", "status": "MAYBE"})
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "status"
    r = client.post("/v1/route", json=body(bank="B" * 50_000))
    assert r.status_code == 413


def test_no_eligible_processor_is_422(client):
    r = client.post("/v1/route", json=body(currency="USD", candidates=["MIT"]))
    assert r.status_code == 422 and "candidates" in r.json()["detail"]


def test_internal_error_never_leaks_a_stack_trace(tmp_path):
    app = make_app(tmp_path)
    app.state.service.router.decide = lambda *a, **k: 1 / 0
    with TestClient(app) as c:
        r = c.post("/v1/route", json=body())
    assert r.status_code == 500
    assert "ZeroDivision" not in r.text and "Traceback" not in r.text and r.json()["detail"].startswith("internal error")


def test_admin_needs_the_token(tmp_path):
    with TestClient(make_app(tmp_path)) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["result"] == "none"
    with TestClient(make_app(tmp_path / "b", token=None)) as c:  # no token configured: admin refuses everyone
        assert c.post("/admin/reload", headers={"Authorization": "Bearer "}).status_code == 401


def test_parity_route_probabilities_equal_the_offline_model(tmp_path):
    """The probabilities /v1/route returns are the serving model's for the same row, unchanged."""
    write_version(tmp_path / "models", "v1")
    app = make_app(tmp_path, loader=lambda p: FakeModel(amount_slope=0.3))
    offline = FakeModel(amount_slope=0.3)
    rng = random.Random(0)
    with TestClient(app) as c:
        for i in range(50):
            b = body(order_id=f"P{i}", amount=round(rng.uniform(50, 20000), 2), currency=rng.choice(["MXN", "USD"]))
            d = c.post("/v1/route", json=b).json()
            expected = offline.score({"AMOUNT": b["amount"]})
            assert d["model_version"] == "v1" and d["source"] in ("model", "fallback")
            for item in d["ranked"]:
                assert item["probability"] == pytest.approx(expected[item["processor"]], abs=1e-6)


def test_cold_start_serves_rules_until_online_features_are_trustworthy(tmp_path):
    """History cannot be loaded (no warehouse): the model waits until live outcomes cover the windows."""
    write_version(tmp_path / "models", "v1")
    app = make_app(tmp_path, seed_features=True)
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["online_features"] == "seeding" and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = c.get("/readyz").json()
        assert ready["online_features"] == "failed"
        assert any("model waits until live outcomes cover the feature windows" in n for n in ready["notes"])
        d = c.post("/v1/route", json=body(created_at=T0.isoformat())).json()
        assert d["source"] == "fallback" and "online features not ready (history still loading): static rules" in d["reasons"]
        for i in range(0, 61 * 60, 60):  # live outcomes for an hour: the configured warm-up
            t = T0 + timedelta(seconds=i)
            c.post("/v1/outcomes", json={"processor": "MIT", "status": "APPROVED", "created_at": t.isoformat()})
        d = c.post("/v1/route", json=body(created_at=(T0 + timedelta(minutes=30)).isoformat())).json()
        assert d["source"] == "fallback"  # half an hour of live history is not enough
        d = c.post("/v1/route", json=body(created_at=(T0 + timedelta(minutes=61)).isoformat())).json()
        assert d["source"] == "model"


def test_explain_adds_contributions(tmp_path):
    write_version(tmp_path / "models", "v1")
    with TestClient(make_app(tmp_path)) as c:
        d = c.post("/v1/route?explain=true", json=body()).json()
        assert d["contributions"][0] == {"feature": "AMOUNT", "value": -0.1}
        assert c.post("/v1/route", json=body()).json()["contributions"] is None


def test_ab_assignment_is_deterministic_over_http(tmp_path):
    with TestClient(make_app(tmp_path, routing={"experiment": {"treatment_share": 0.5}})) as c:
        arms = {f"K{i}": c.post("/v1/route", json=body(order_id=f"K{i}")).json()["arm"] for i in range(60)}
        again = {k: c.post("/v1/route", json=body(order_id=k, amount=99.0)).json()["arm"] for k in arms}
    assert arms == again and set(arms.values()) == {"control", "treatment"}


def test_outage_replay_marks_down_fails_over_probes_and_restores(tmp_path):
    """A WORLDPAY outage (90 % timeouts for 10 minutes) replayed through /v1/route + /v1/outcomes."""
    write_version(tmp_path / "models", "v1", probs={"WORLDPAY": 0.85, "MIT": 0.80, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.6})
    app = make_app(tmp_path, routing={"health": {"probe_share": 0.02}})
    rng = random.Random(11)
    outage = (T0 + timedelta(minutes=5), T0 + timedelta(minutes=15))
    failing_before_down = 0
    down_at = None
    log: list[tuple[datetime, dict, str]] = []
    with TestClient(app) as c:
        wp_state = "UP"
        for i in range(400):  # one payment every 3 s for 20 minutes
            t = T0 + timedelta(seconds=3 * i)
            d = c.post("/v1/route", json=body(order_id=f"R{i}", created_at=t.isoformat())).json()
            proc = d["chosen"]
            in_outage = outage[0] <= t < outage[1]
            if proc == "WORLDPAY" and in_outage and rng.random() < 0.9:
                out = {"processor": proc, "status": "TIMEOUT", "created_at": t.isoformat()}
            else:
                ok = rng.random() < 0.8
                out = {"processor": proc, "status": "APPROVED" if ok else "DECLINED", "created_at": t.isoformat()}
                if not ok:
                    out["error_code"] = "05"
            o = c.post("/v1/outcomes", json={**out, "request_id": d["request_id"]})
            assert o.status_code == 202
            state = o.json()["state"]
            if down_at is None and proc == "WORLDPAY" and out["status"] == "TIMEOUT":
                failing_before_down += 1
            if down_at is None and state == "DOWN":
                down_at = t
            log.append((t, d, wp_state))  # WORLDPAY's state when the decision was made
            if proc == "WORLDPAY":
                wp_state = state
        health = {p["processor"]: p for p in c.get("/v1/processors/health").json()["processors"]}
        metrics = c.get("/metrics").text
    assert down_at is not None and failing_before_down <= 20
    during = [d for t, d, st in log if st == "DOWN" and t < outage[1]]
    moved = [d for d in during if d["chosen"] == "MIT"]
    probes = [d for d in during if d["chosen"] == "WORLDPAY"]
    assert len(moved) / len(during) > 0.95
    assert all(d["source"] == "failover" for d in moved)
    assert any(r.startswith("WORLDPAY down since 14:0") for r in moved[0]["reasons"])
    assert probes and all(d["source"] == "exploration" and any("probe" in r for r in d["reasons"]) for d in probes)
    after = [d for t, d, _ in log if t > outage[1] + timedelta(minutes=2)]
    assert after and all(d["chosen"] == "WORLDPAY" and d["source"] == "model" for d in after[-100:])
    assert health["WORLDPAY"]["state"] == "UP"
    assert 'smartrouter_processor_transitions_total{from_state="DEGRADED",processor="WORLDPAY",to_state="DOWN"} 1.0' in metrics
    assert 'to_state="RECOVERING"' in metrics and 'from_state="RECOVERING",processor="WORLDPAY",to_state="UP"' in metrics


def test_reload_under_load_switches_versions_without_failed_requests(tmp_path):
    reg = tmp_path / "models"
    write_version(reg, "v1")
    app = make_app(tmp_path, poll=True)
    statuses, versions = [], []
    stop = threading.Event()

    def promote_later():
        time.sleep(0.3)
        write_version(reg, "v2", probs={"WORLDPAY": 0.9, "MIT": 0.5, "ELAVON": 0.5, "AMEX": 0.9, "ADYEN": 0.5})
        time.sleep(0.3)
        write_version(reg, "v3", broken=True)  # refused: v2 keeps serving
        time.sleep(0.3)
        stop.set()

    with TestClient(app) as c:
        th = threading.Thread(target=promote_later)
        th.start()
        i = 0
        while not stop.is_set() or i < 50:
            r = c.post("/v1/route", json=body(order_id=f"L{i}"))
            statuses.append(r.status_code)
            versions.append(r.json()["model_version"])
            i += 1
        th.join()
        ready = c.get("/readyz").json()
        metrics = c.get("/metrics").text
    assert set(statuses) == {200}
    assert versions[0] == "v1" and versions[-1] == "v2"
    switch = versions.index("v2")
    assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}  # one clean switch
    assert "v3" not in versions
    assert ready["model_version"] == "v2" and "v3 refused" in ready["model_error"]
    assert 'smartrouter_model_info{version="v2"} 1.0' in metrics and "smartrouter_model_load_failed 1.0" in metrics
    # the replaced version is set to 0, not cleared (clearing is a no-op with several workers)
    assert 'smartrouter_model_info{version="v1"} 0.0' in metrics


def test_decisions_and_outcomes_are_logged_and_flushed_on_shutdown(tmp_path):
    with TestClient(make_app(tmp_path)) as c:
        ids = [c.post("/v1/route", json=body(order_id=f"D{i}")).json()["request_id"] for i in range(20)]
        c.post("/v1/outcomes", json={"processor": "WORLDPAY", "status": "APPROVED", "request_id": ids[0]})
        m = c.get("/metrics").text
    decisions = list(read_records(tmp_path / "data" / "state" / "decisions", kind="decision"))
    outcomes = list(read_records(tmp_path / "data" / "state" / "decisions", kind="outcome"))
    assert [d["request_id"] for d in decisions] == ids
    assert decisions[0]["payment"]["ORDER_ID"] == "D0" and decisions[0]["source"] == "rules"
    assert outcomes[0]["request_id"] == ids[0] and outcomes[0]["outcome_kind"] == "approved"
    assert 'smartrouter_decisions_total{arm="treatment",source="rules"} 20.0' in m
    assert 'smartrouter_outcomes_total{kind="approved",processor="WORLDPAY"} 1.0' in m
    assert "smartrouter_decision_latency_seconds_bucket" in m


def test_parity_with_a_real_serving_form_through_the_registry(tmp_path):
    """H5's exported logistic model, loaded from a registry version by the real loader (checksums
    verified): the router's probabilities equal the trained model's predict_proba on the same rows."""
    models = pytest.importorskip("smartrouter.models")
    from smartrouter.models.data import PassthroughEncoder, synthetic

    data = synthetic(n=3000, d=8, seed=2)
    train, valid = data.part("train"), data.part("valid")
    model = models.make_model("logistic", seed=0)
    model.fit(train, valid)
    reg = tmp_path / "models"
    model.export(reg / "v1" / "serving", PassthroughEncoder(data.feature_names).to_spec())
    promote_pointer(reg, "v1")
    app = make_app(tmp_path, loader=None, features=None)  # loader=None: the real smartrouter.models.serving loader
    svc = app.state.service
    assert svc.holder.version == "v1" and type(svc.holder.current.model).__name__ == "ServingModel"
    test = data.part("test")
    offline = model.predict_proba(test.X[:200])
    router = svc.router
    for i in range(200):
        p = {"ORDER_ID": f"Q{i}", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "AMOUNT": 100.0,
             "CARD_BIN": "411111", **{n: float(v) for n, v in zip(data.feature_names, test.X[i])}}
        d = router.decide(p)
        for proc, prob in d.ranked:
            assert prob == pytest.approx(float(offline[i, models_index(proc)]), abs=1e-5)
    with TestClient(app) as c:  # and over HTTP the served version is the registry's
        assert c.post("/v1/route", json=body()).json()["model_version"] == "v1"


def models_index(processor: str) -> int:
    from smartrouter import catalog

    return catalog.PROCESSOR_INDEX[processor]
