"""The service's edge under hostile input, readiness, metrics and reload (issue 11, items 10-14)."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

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
