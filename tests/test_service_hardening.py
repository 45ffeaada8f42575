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
