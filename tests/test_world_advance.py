"""`world advance` (issue 12 item 1): continuation days routed by the service, written like real logs."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from routing_fakes import write_version, fake_loader
from smartrouter import catalog, warehouse
from smartrouter.config import load_settings
from smartrouter.errors import ConfigError, WarehouseError
from smartrouter.world import World, WorldParams
from smartrouter.world import live
from smartrouter.world.generate import ATTEMPTS_PER_ORDER, WEEKDAY_FACTOR
from smartrouter.world.scenario import Outage, ProcessorChange, Scenario, Traffic
from http_helpers import stop_server

END = dt.date(2025, 6, 30)
PARAMS = dict(days=7, per_day=1500, end=END)
DAY1, DAY2 = END + dt.timedelta(days=1), END + dt.timedelta(days=2)
# model scores (FakeModel): MIT best for pesos, so the model arm visibly differs from the rules
PROBS = {"WORLDPAY": 0.70, "MIT": 0.82, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.60}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small world built once; each test works on its own copy."""
    root = tmp_path_factory.mktemp("world")
    s = load_settings({"SMARTROUTER_HOME": str(root), "SMARTROUTER_LOCAL_DIR": str(root / "wh")})
    warehouse.write_world(World(WorldParams.small(**PARAMS)), s, progress=False)
    return root / "wh"


@pytest.fixture
def settings(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "wh")
    write_version(tmp_path / "models", "v1", probs=PROBS)
    return load_settings({"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_LOCAL_DIR": str(tmp_path / "wh"),
                          "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models")})


def client(settings, **over):
    """The service in process: the world's rules from the warehouse, a fake promoted model."""
    return live.InProcessClient(settings, model_loader=fake_loader, seed_features=False, poll=False, **over)


def _query(settings, sql: str, params=None) -> pd.DataFrame:
    return warehouse.query_frame(sql, params, settings=settings)


def _fingerprint_before(settings, end: dt.datetime) -> tuple:
    """Rows and an order-independent content hash of the world's own days (both tables)."""
    out = []
    for table in (catalog.ATTEMPTS_VIEW, catalog.ROUTING_LOG_VIEW):
        with warehouse.connect(settings) as conn:
            out.append(conn.raw._duck_conn.execute(
                f"SELECT COUNT(*), COALESCE(BIT_XOR(HASH(t)), 0) FROM {table} t WHERE CREATED_AT < ?", [end]).fetchone())
    return tuple(out)


class CrashingClient:
    """Raises on the first request stamped at or after ``at`` (a crash mid-day)."""

    def __init__(self, inner, at: dt.datetime) -> None:
        self.inner, self.at, self.calls = inner, at.isoformat(), 0

    def route(self, requests):
        if any(r["created_at"] >= self.at for r in requests):
            raise RuntimeError("simulated crash")
        self.calls += len(requests)
        return self.inner.route(requests)

    def report(self, outcomes):
        self.inner.report(outcomes)

    def close(self):
        self.inner.close()


def _new_rows(settings, table: str) -> pd.DataFrame:
    return _query(settings, f"SELECT * FROM {table} WHERE CREATED_AT >= %(d)s", {"d": dt.datetime(DAY1.year, DAY1.month, DAY1.day)})


# ---------------------------------------------------------------------------------------------
def test_two_days_land_like_real_logs_with_a_sane_truth(settings):
    world_end = dt.datetime(DAY1.year, DAY1.month, DAY1.day)
    before = _fingerprint_before(settings, world_end)
    c = client(settings)
    try:
        days = live.advance(settings, 2, c)
    finally:
        c.close()
    assert [d.day for d in days] == [DAY1, DAY2] and [d.index for d in days] == [1, 2]
    assert live.completed_days(settings) == [DAY1, DAY2]
    assert [d.to_json() for d in live.read_days(settings)] == [d.to_json() for d in days]
    assert _fingerprint_before(settings, world_end) == before  # the world's own days untouched

    att = _new_rows(settings, catalog.ATTEMPTS_VIEW)
    log = _new_rows(settings, catalog.ROUTING_LOG_VIEW)
    truth = pd.concat([pd.read_parquet(live.truth_path(settings, d)) for d in (DAY1, DAY2)], ignore_index=True)
    n = sum(d.attempts for d in days)
    assert len(att) == len(log) == len(truth) == n > 2000
    all_ids = _query(settings, f"SELECT COUNT(*) AS N, COUNT(DISTINCT ATTEMPT_ID) AS U FROM {catalog.ATTEMPTS_VIEW}")
    assert all_ids["N"][0] == all_ids["U"][0]  # ids unique over the world and the live days
    assert set(att["ATTEMPT_ID"]) == set(log["ATTEMPT_ID"]) == set(truth["ATTEMPT_ID"])
    created = pd.to_datetime(att["CREATED_AT"])
    assert created.min() >= world_end and created.max() < world_end + pd.Timedelta(days=2)
    assert list(att.columns) == list(catalog.ATTEMPT_COLUMNS) and list(truth.columns) == list(live.TRUTH_COLUMNS)
    # retries as the merchant does them: numbered, after the previous attempt, with its processor
    retries = att[att["NUM_ATTEMPTS_ORDER"] > 1]
    assert len(retries) > 0 and retries["PREVIOUS_PROCESSOR"].notna().all() and (retries["SEC_SINCE_PREVIOUS_ATTEMPT"] >= 3).all()

    # the service's decision, in DYNAMIC_ROUTING_DETAIL and the routing log, agreeing with the truth
    detail = att.set_index("ATTEMPT_ID")["DYNAMIC_ROUTING_DETAIL"].map(json.loads)
    log = log.set_index("ATTEMPT_ID")
    tr = truth.set_index("ATTEMPT_ID")
    ids = detail.index
    prop = detail.map(lambda d: d["propensity"])
    assert np.allclose(prop.to_numpy(float), log.loc[ids, "PROPENSITY"].to_numpy(float))
    assert np.allclose(prop.to_numpy(float), tr.loc[ids, "PROPENSITY"].to_numpy(float))
    assert ((prop > 0) & (prop <= 1)).all() and (prop < 1).any()  # exploration logs its propensity
    assert set(detail.map(lambda d: d["arm"])) == {"TREATMENT", "CONTROL"}
    assert {"model", "rules"} <= set(detail.map(lambda d: d["source"]))
    assert (detail.map(lambda d: d["chosen"]) == att.set_index("ATTEMPT_ID").loc[ids, "PROCESSOR"]).all()
    assert (detail.map(lambda d: d["chosen"] in d["candidates"])).all()
    assert set(detail[detail.map(lambda d: d["source"]) == "model"].map(lambda d: d["model_version"])) == {"v1"}
    assert (log.loc[ids, "ALGORITHM_TYPE"] == live.SERVED_ALGORITHM_PREFIX + tr.loc[ids, "SOURCE"].str.upper()).all()
    assert (log["LATENCY_MS"] > 0).all()

    # truth: the best is at least as good as what was chosen and what the rules would choose
    eps = 1e-12
    assert (truth["P_BEST"] >= truth["P_CHOSEN"] - eps).all() and (truth["P_BEST"] >= truth["P_RULES"] - eps).all()
    assert ((truth["P_CHOSEN"] > 0) & (truth["P_CHOSEN"] < 1)).all()
    # approvals are drawn from P_CHOSEN: the observed count within 4 binomial standard deviations
    p = truth["P_CHOSEN"].to_numpy()
    sd = math.sqrt(float((p * (1 - p)).sum()))
    assert abs(truth["APPROVED"].sum() - p.sum()) <= 4 * sd
    assert (truth["APPROVED"] == (att.set_index("ATTEMPT_ID").loc[truth["ATTEMPT_ID"], "STATUS"] == "APPROVED").to_numpy()).all()
    # the control arm is the static rules: its first attempts go where the rules say (no outage ⇒ no failover)
    ctrl = truth[(truth["ARM"] == "CONTROL") & (truth["SOURCE"] == "rules") & (truth["ATTEMPT_NUMBER"] == 1)]
    assert len(ctrl) > 100 and (ctrl["CHOSEN"] == ctrl["RULES_CHOICE"]).all()


def test_crash_mid_day_then_rerun_redoes_only_that_day(settings, monkeypatch):
    inner = client(settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing = CrashingClient(inner, dt.datetime(DAY2.year, DAY2.month, DAY2.day, 12))
        live.advance(settings, 2, crashing)
    inner.close()
    assert crashing.calls > live.read_days(settings)[0].route_calls  # it did route part of day 2
    assert live.completed_days(settings) == [DAY1]
    day1_rows = len(_new_rows(settings, catalog.ATTEMPTS_VIEW))
    assert day1_rows == live.read_days(settings)[0].attempts  # nothing of day 2 in the warehouse

    # a crash after the day's warehouse commit, before its truth file: the redo replaces the rows
    real = live._write_truth
    calls = {"n": 0}

    def die_once(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("crash before the truth file")
        return real(*a, **k)

    monkeypatch.setattr(live, "_write_truth", die_once)
    c = client(settings)
    with pytest.raises(RuntimeError, match="before the truth file"):
        live.advance(settings, 1, c)
    c.close()
    assert live.completed_days(settings) == [DAY1]
    c = client(settings)
    try:
        (day2,) = live.advance(settings, 1, c)
    finally:
        c.close()
    assert live.completed_days(settings) == [DAY1, DAY2] and len(live.read_days(settings)) == 2
    att = _new_rows(settings, catalog.ATTEMPTS_VIEW)
    log = _new_rows(settings, catalog.ROUTING_LOG_VIEW)
    assert len(att) == len(log) == day1_rows + day2.attempts
    assert att["ATTEMPT_ID"].is_unique and log["ATTEMPT_ID"].is_unique

    # a warehouse that lost the live days (the world rebuilt with the same parameters) is not continued
    with warehouse.connect(settings, read_only=False) as conn:
        conn.raw._duck_conn.execute(f"DELETE FROM {catalog.ATTEMPTS_VIEW} WHERE CREATED_AT >= ?",
                                    [dt.datetime(DAY2.year, DAY2.month, DAY2.day)])
    with pytest.raises(live.LiveError, match="warehouse was rebuilt or changed"):
        live.advance(settings, 1, CrashingClient(None, dt.datetime(2000, 1, 1)))
    # a rebuilt world (another fingerprint) is not continued with the old live days
    info = json.loads(warehouse.world_file(settings).read_text())
    info["fingerprint"] = "0" * 16
    warehouse.world_file(settings).write_text(json.dumps(info))
    with pytest.raises(live.LiveError, match="continues another build of the world"):
        live.advance(settings, 1, CrashingClient(None, dt.datetime(2000, 1, 1)))


def test_scenario_outage_disable_and_traffic_reach_the_truth(settings):
    busy = Outage(processor="busiest", day=1, start_minute=15 * 60, duration_minutes=240, kind="timeouts", severity=0.9)
    scenario = Scenario(name="t", description="t", outages=(busy,),
                        processor_changes=(ProcessorChange(day=1, start_minute=0, processor="ADYEN", action="disable"),),
                        traffic=(Traffic(day=1, days=1, multiplier=1.5),))
    c = client(settings)
    try:
        (day,) = live.advance(settings, 1, c, scenario)
    finally:
        c.close()
    truth = pd.read_parquet(live.truth_path(settings, DAY1))
    t = pd.to_datetime(truth["CREATED_AT"])
    start = pd.Timestamp(DAY1) + pd.Timedelta(hours=15)
    inside = (t >= start) & (t < start + pd.Timedelta(hours=4))
    # "busiest" resolved to the processor with most attempts in the history (WORLDPAY in this world)
    assert (truth.loc[inside, "OUTAGE_PROCESSORS"].str.split(",").map(lambda s: "WORLDPAY" in s)).all()
    wp = truth[truth["CHOSEN"] == "WORLDPAY"]
    failed = wp["STATUS"].isin(["TIMEOUT", "ERROR"])
    in_wp = inside[wp.index]
    n_in = int(in_wp.sum())
    assert n_in >= 10 and (wp.loc[in_wp, "CHOSEN_IN_OUTAGE"]).all()
    rate_in = failed[in_wp].mean()
    assert abs(rate_in - 0.9) <= 4 * math.sqrt(0.9 * 0.1 / n_in) + 0.01  # the world's background ~0.004 on top
    assert failed[~in_wp].mean() < 0.1  # outside the window: background errors (and the world's own incidents)
    assert (wp.loc[in_wp, "P_CHOSEN"] <= 0.1 + 1e-12).all()
    # the service fails over: far fewer payments go to WORLDPAY during the outage than before it
    before = (t >= start - pd.Timedelta(hours=4)) & (t < start)
    share = lambda rows: (truth.loc[rows, "CHOSEN"] == "WORLDPAY").mean()  # noqa: E731
    assert share(inside) < 0.5 * share(before)
    # ADYEN disabled all day: never offered, never chosen, never the oracle's best
    att = _new_rows(settings, catalog.ATTEMPTS_VIEW)
    detail = att["DYNAMIC_ROUTING_DETAIL"].map(json.loads)
    assert not detail.map(lambda d: "ADYEN" in d["candidates"] or "ADYEN" in d["scores"]).any()
    amex = att["CARD_BRAND"] == catalog.AMEX_BRAND
    assert (detail[~amex].map(lambda d: d["skip_reasons"]["ADYEN"]) == "disabled (out of rotation)").all()
    assert "ADYEN" not in set(truth["CHOSEN"]) | set(truth["ORACLE_BEST"])
    # traffic x1.5: the order count is Poisson around 1.5 x the day's usual orders
    lam = PARAMS["per_day"] * WEEKDAY_FACTOR[DAY1.weekday()] / WEEKDAY_FACTOR.mean() * 1.5 / ATTEMPTS_PER_ORDER
    assert abs(day.orders - lam) <= 5 * math.sqrt(lam)


def test_bad_input_is_a_clear_error_and_writes_nothing(settings, tmp_path, monkeypatch, capsys):
    c = client(settings)
    try:
        with pytest.raises(ConfigError, match="days=0"):
            live.advance(settings, 0, c)
        empty = load_settings({"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_LOCAL_DIR": str(tmp_path / "none")})
        with pytest.raises(WarehouseError, match="not built"):
            live.advance(empty, 1, c)
    finally:
        c.close()
    assert not live.live_dir(settings).exists() and not live.live_dir(empty).exists()
    from smartrouter.cli import main

    monkeypatch.setenv("SMARTROUTER_HOME", str(settings.home))
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(settings.local_dir))
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "y"\n[[outage]]\nprocessor = "FOO"\nday = 1\nstart = "10:00"\n'
                   'duration_minutes = 10\nseverity = 0.5\n')
    for argv, needle in (
        (["world", "advance", "--scenario", str(bad), "--in-process"], "FOO"),
        (["world", "advance", "--scenario", "no-such-scenario", "--in-process"], "shipped scenarios"),
        (["world", "advance", "--url", "http://127.0.0.1:9"], "cannot reach the routing service"),
        (["world", "advance", "--days", "0", "--in-process"], "--days 0"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not live.live_dir(settings).exists()


def test_continuation_incidents_leave_the_world_alone():
    """Incidents of the live days come from their own seed stream: the world's own are unchanged,
    a day's incidents are the same whichever days were asked for before, and they occur at the world's rate."""
    from smartrouter.world.entities import OUTAGES_PER_DAY, continuation_outages

    params = WorldParams.small(**PARAMS)
    world = World(params)
    active = world.effects.active_from_sec
    a = continuation_outages(params, active, params.days + 3)
    b = continuation_outages(params, active, params.days + 3)
    assert np.array_equal(a.start, b.start) and np.array_equal(a.processor, b.processor)
    assert World(params).outages.start.tolist() == world.outages.start.tolist()
    counts = [len(continuation_outages(params, active, params.days + d)) for d in range(600)]
    lam = OUTAGES_PER_DAY * 600
    assert abs(sum(counts) - lam) <= 5 * math.sqrt(lam)
    starts = np.concatenate([continuation_outages(params, active, params.days + d).start - (params.days + d) * 86400.0
                             for d in range(60)])
    assert ((starts >= 14 * 3600) & (starts <= 27 * 3600)).all()  # local daytime 08-21 h = 14-27 h UTC


@pytest.mark.slow
def test_a_day_over_http_through_a_real_server(settings, tmp_path):
    """`smartrouter serve` (event clock) routes a live day over HTTP; every decision is in its decision log
    at the simulated time, and the rows land as in process."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from smartrouter.config import REPO_ROOT
    from smartrouter.routing import read_records
    from smartrouter.routing.config import DEFAULT_PATH

    cfg = tmp_path / "routing.toml"
    text = DEFAULT_PATH.read_text()
    assert 'clock = "wall"' in text and "max_ahead_seconds = 300" in text
    cfg.write_text(text.replace('clock = "wall"', 'clock = "event"').replace("max_ahead_seconds = 300", "max_ahead_seconds = 3600"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "state"
    env = dict(os.environ, SMARTROUTER_HOME=str(settings.home), SMARTROUTER_LOCAL_DIR=str(settings.local_dir),
               SMARTROUTER_REGISTRY_DIR=str(tmp_path / "no-models"), SMARTROUTER_STATE_DIR=str(state),
               SMARTROUTER_ROUTING_CONFIG=str(cfg), SMARTROUTER_WAREHOUSE="local")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen([sys.executable, "-m", "smartrouter", "serve", "--workers", "1", "--port", str(port)],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.3)
        c = live.HttpClient(url, concurrency=4)
        try:
            (day,) = live.advance(settings, 1, c)
        finally:
            c.close()
    finally:
        stop_server(server)
    att = _new_rows(settings, catalog.ATTEMPTS_VIEW)
    truth = pd.read_parquet(live.truth_path(settings, DAY1))
    assert len(att) == len(truth) == day.attempts == day.route_calls > 1000
    detail = att["DYNAMIC_ROUTING_DETAIL"].map(json.loads)
    assert set(detail.map(lambda d: d["source"])) <= {"rules", "hard_rule", "failover", "fallback"}  # no model served
    decisions = {r["request_id"]: r for r in read_records(state / "decisions", kind="decision")}
    ids = detail.map(lambda d: d["request_id"])
    assert set(ids) <= set(decisions)
    at = np.array([decisions[i]["at"] for i in ids])
    created = (pd.to_datetime(att["CREATED_AT"]) - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
    assert np.allclose(at, created, atol=1e-3)  # the request's created_at is the simulated time
    assert (truth["LATENCY_MS"] > 0).all()


def test_live_truth_is_the_world_oracle_continued():
    """Without a scenario or incidents, the live truth of every processor is the world's Oracle at that time
    (drift and seasonality continue past the span), and a scenario outage changes only its processor and window."""
    from smartrouter.world.entities import continuation_outages
    from smartrouter.world.generate import _DayGenerator

    params = WorldParams.small(**PARAMS)
    world = World(params)
    active = world.effects.active_from_sec
    day = next(d for d in range(params.days + 1, params.days + 60)
               if not len(continuation_outages(params, active, d)) and not len(continuation_outages(params, active, d - 1)))
    g = _DayGenerator(world, day)
    g._orders()
    n = g.n
    enc = g._encode(np.arange(n), g.t0, np.ones(n, dtype=np.int64), np.full(n, -1), np.full(n, np.nan), np.full(n, -1))
    msg = (np.arange(n) % 3 == 0).astype(np.int64)
    p, es, pi, inside = live._Truth(world, None, day).matrix(enc, msg, g.t0)
    oracle = world.oracle()
    for j, name in enumerate(catalog.PROCESSORS):
        want = oracle.probabilities(enc, np.full(n, j), msg)
        ok = want > 0  # the oracle says 0 where ineligible; the live truth leaves eligibility to `available`
        assert np.allclose(p[ok, j], want[ok], rtol=1e-12, atol=0), name
    assert not inside.any()
    cont_day = day - params.days + 1
    sc = Scenario(name="t", description="t", outages=(
        Outage(processor="MIT", day=cont_day, start_minute=600, duration_minutes=60, kind="declines", severity=0.5),))
    p2, es2, pi2, inside2 = live._Truth(world, sc, day).matrix(enc, msg, g.t0)
    sec = g.t0 - day * 86400.0
    win = (sec >= 36000) & (sec < 39600)
    mit = catalog.PROCESSOR_INDEX["MIT"]
    assert win.any() and np.allclose(p2[win, mit], 0.5 * p[win, mit], rtol=1e-12)
    others = np.ones(p.shape, dtype=bool)
    others[win, mit] = False
    assert np.array_equal(p2[others], p[others]) and np.array_equal(inside2[:, mit], win)


def test_issuer_step_and_processor_changes_in_the_truth():
    """An issuer step shifts the approval logit of its bank's cards on its processors from its start;
    a processor disabled then enabled is out of rotation exactly in between."""
    from smartrouter.world.generate import _DayGenerator
    from smartrouter.world.entities import BANK_NAMES
    from smartrouter.world.scenario import IssuerStep

    params = WorldParams.small(**PARAMS)
    world = World(params)
    day = params.days  # continuation day 1
    g = _DayGenerator(world, day)
    g._orders()
    n = g.n
    enc = g._encode(np.arange(n), g.t0, np.ones(n, dtype=np.int64), np.full(n, -1), np.full(n, np.nan), np.full(n, -1))
    msg = np.zeros(n, dtype=np.int64)
    sc = Scenario(name="t", description="t",
                  issuer_steps=(IssuerStep(day=1, start_minute=720, logit_shift=-1.0, bank="BANORTE", bins=(),
                                           processors=("WORLDPAY",)),),
                  processor_changes=(ProcessorChange(day=1, start_minute=300, processor="ELAVON", action="disable"),
                                     ProcessorChange(day=1, start_minute=900, processor="ELAVON", action="enable")))
    _, _, pi0, _ = live._Truth(world, None, day).matrix(enc, msg, g.t0)
    truth = live._Truth(world, sc, day)
    _, _, pi1, _ = truth.matrix(enc, msg, g.t0)
    logit = lambda x: np.log(x / (1 - x))  # noqa: E731
    sec = g.t0 - day * 86400.0
    hit = (enc.bank_idx == BANK_NAMES.index("BANORTE")) & (sec >= 720 * 60)
    wp = catalog.PROCESSOR_INDEX["WORLDPAY"]
    assert hit.sum() > 10
    assert np.allclose(logit(pi1[hit, wp]) - logit(pi0[hit, wp]), -1.0, atol=1e-9)
    assert np.array_equal(pi1[~hit, wp], pi0[~hit, wp])
    other = np.ones(pi0.shape[1], dtype=bool)
    other[wp] = False
    assert np.array_equal(pi1[:, other], pi0[:, other])
    avail = truth.available(g.t0, g.brand, g.currency)
    el = catalog.PROCESSOR_INDEX["ELAVON"]
    could = truth.elig[g.brand, g.currency][:, el]
    off = (sec >= 300 * 60) & (sec < 900 * 60)
    assert could.any() and np.array_equal(avail[:, el], could & ~off)


def test_the_in_process_client_routes_only_once_online_features_are_seeded(settings):
    """Like the HTTP loop, which waits for /readyz: routed while the features still seed, the model
    arm would take the static rules (source fallback) for the first minutes of the first day."""
    c = live.InProcessClient(settings, model_loader=fake_loader, poll=False)  # seeding on, as in the loop
    try:
        assert c.service.online_features == "seeded"
    finally:
        c.close()


class RecommendingClient:
    """Adds a ``message_config`` to every answer of ``inner`` (what a service recommending messages says)."""

    def __init__(self, inner, key: str) -> None:
        self.inner, self.key = inner, key

    def route(self, requests):
        return [{**a, "message_config": {"key": self.key}, "message_propensity": 0.5, "message_randomized": True}
                for a in self.inner.route(requests)]

    def report(self, outcomes):
        self.inner.report(outcomes)

    def close(self):
        self.inner.close()


def test_live_day_sends_a_recommended_message_only_where_the_payment_may(settings):
    from smartrouter import messages

    key = "MIT/AVS/4511"  # needs a stored credential and a billing address: many payments may not
    c = RecommendingClient(client(settings), key)
    try:
        (day,) = live.advance(settings, 1, c)
    finally:
        c.close()
    att = _new_rows(settings, catalog.ATTEMPTS_VIEW).set_index("ATTEMPT_ID")
    truth = pd.read_parquet(live.truth_path(settings, DAY1)).set_index("ATTEMPT_ID").loc[att.index]
    codes = messages.config_codes(att)
    elig = messages.eligible_matrix(att)
    assert elig[np.arange(len(att)), codes].all()  # never an ineligible message
    may = elig[:, messages.CONFIG_KEYS.index(key)]
    assert 0.1 < may.mean() < 0.9
    sent = np.array(messages.CONFIG_KEYS, dtype=object)[codes]
    assert (sent[may] == key).all()
    default = messages.default_config(att)
    assert (codes[~may] == default[~may]).all()  # ... else the merchant's default
    assert (truth["MESSAGE_CONFIG"].to_numpy() == sent).all()
    assert (truth["DEFAULT_CONFIG"].to_numpy() == np.array(messages.CONFIG_KEYS, dtype=object)[default]).all()
    # the logged propensity and randomization follow the answer where its message was sent
    assert np.allclose(att["MESSAGE_PROPENSITY"].to_numpy(float), np.where(may, 0.5, 1.0))
    assert (att["MESSAGE_RANDOMIZED"].to_numpy() == may.astype(int)).all()
    # the truth of the default message differs only where another message was sent
    same = codes == default
    assert np.allclose(truth["P_CHOSEN"][same], truth["P_CHOSEN_DEFAULT_CONFIG"][same], rtol=0, atol=1e-12)
    assert (np.abs(truth["P_CHOSEN"][~same] - truth["P_CHOSEN_DEFAULT_CONFIG"][~same]) > 0).mean() > 0.99
    assert (att["AVS_CHECKED"].astype(bool) == (att["AVS_DATA"] == 1)).all()


class EchoClient:
    """No service: chooses the first candidate and keeps every request body (no retry advice)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def route(self, requests):
        self.bodies += requests
        return [{"request_id": f"r{len(self.bodies)}-{i}", "chosen": b["candidates"][0], "arm": "CONTROL",
                 "source": "rules", "propensity": 1.0, "latency_ms": 0.1} for i, b in enumerate(requests)]

    def report(self, outcomes):
        pass

    def close(self):
        pass


def test_request_bodies_carry_the_message_fields_the_schema_accepts(settings, monkeypatch):
    from smartrouter import messages

    # a service whose schema knows the eligibility facts (bools) and the MCC; not AVS_DATA
    monkeypatch.setattr(live, "_message_fields", lambda: {"mci_msi_type": False, "avs_checked": True, "mcc": False,
                                                          "stored_credential": True, "billing_address": True,
                                                          "travel_package": True})
    c = EchoClient()
    live.advance(settings, 1, c)
    assert c.bodies and all("avs_data" not in b for b in c.bodies)
    assert {type(b["stored_credential"]) for b in c.bodies} == {bool} and {b["mcc"] for b in c.bodies} == {"4511"}
    # each body's message is the merchant default for its facts, and it is what the attempt logged
    att = _new_rows(settings, catalog.ATTEMPTS_VIEW).set_index("ATTEMPT_ID")
    for b in c.bodies[:500]:
        row = att.loc[b["attempt_id"]]
        assert b["stored_credential"] == bool(row["STORED_CREDENTIAL"]) and b["mci_msi_type"] == row["MCI_MSI_TYPE"]
        assert messages.default_config(b) == messages.CONFIGS[messages.config_codes(row.to_frame().T)[0]]
    assert (att["MESSAGE_PROPENSITY"] == 1.0).all() and (att["MESSAGE_RANDOMIZED"] == 0).all()


def test_a_day_routed_by_the_service_sends_only_allowed_messages(settings):
    from smartrouter import messages

    c = client(settings)
    try:
        (day,) = live.advance(settings, 1, c)
    finally:
        c.close()
    att = _new_rows(settings, catalog.ATTEMPTS_VIEW)
    truth = pd.read_parquet(live.truth_path(settings, DAY1)).set_index("ATTEMPT_ID").loc[att["ATTEMPT_ID"]]
    codes = messages.config_codes(att)
    assert messages.eligible_matrix(att)[np.arange(len(att)), codes].all()
    assert (truth["MESSAGE_CONFIG"].to_numpy() == np.array(messages.CONFIG_KEYS, dtype=object)[codes]).all()
    prop = att["MESSAGE_PROPENSITY"].to_numpy(float)
    assert ((prop > 0) & (prop <= 1)).all()
    # the control arm keeps the merchant's message: what it sends is the default, truth unchanged
    ctrl = (truth["ARM"] == "CONTROL").to_numpy()
    assert ctrl.any() and (codes[ctrl] == messages.default_config(att)[ctrl]).all()
    assert np.allclose(truth["P_CHOSEN"][ctrl], truth["P_CHOSEN_DEFAULT_CONFIG"][ctrl], rtol=0, atol=1e-12)
