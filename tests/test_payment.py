"""`smartrouter payment` (issue 17 item 8): one order's attempts, each with the decision behind it, the
features at decision time, the outcome and the truth -- on training history (no decision log) and on a
live day routed by the service in process (decision log entries)."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from routing_fakes import fake_loader, write_version
from smartrouter import catalog, features, payment, warehouse
from smartrouter.cli import main
from smartrouter.config import load_settings
from smartrouter.world import World, WorldParams
from smartrouter.world import live

END = dt.date(2025, 6, 30)
DAY1 = END + dt.timedelta(days=1)
PROBS = {"WORLDPAY": 0.70, "MIT": 0.82, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.60}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small world plus one live day routed by the service in process (a fake promoted model v1)."""
    root = tmp_path_factory.mktemp("payment")
    env = {"SMARTROUTER_HOME": str(root), "SMARTROUTER_LOCAL_DIR": str(root / "wh"),
           "SMARTROUTER_REGISTRY_DIR": str(root / "models"), "SMARTROUTER_STATE_DIR": str(root / "state"),
           "SMARTROUTER_RUNS_DIR": str(root / "runs"), "SMARTROUTER_REPORTS_DIR": str(root / "reports")}
    settings = load_settings(env)
    warehouse.write_world(World(WorldParams.small(days=7, per_day=1200, end=END)), settings, progress=False)
    write_version(root / "models", "v1", probs=PROBS)
    client = live.InProcessClient(settings, model_loader=fake_loader, seed_features=False, poll=False)
    try:
        live.advance(settings, 1, client)
    finally:
        client.close()
    return settings, env


def _order_with(settings, where: str) -> str:
    q = (f"SELECT ORDER_ID FROM {catalog.ATTEMPTS_VIEW} WHERE NUM_ATTEMPTS_ORDER >= 2 AND {where} "
         "ORDER BY ORDER_ID LIMIT 1")
    got = warehouse.query_frame(q, {"d": dt.datetime(DAY1.year, DAY1.month, DAY1.day)}, settings=settings)
    assert len(got), f"no retried order with {where}"
    return str(got["ORDER_ID"].iloc[0])


def test_history_order_every_attempt_in_order_with_features_and_truth(world):
    settings, _ = world
    order = _order_with(settings, "CREATED_AT < %(d)s")
    s = payment.story(order, settings)
    att = warehouse.query_frame(f"SELECT * FROM {catalog.ATTEMPTS_VIEW} WHERE ORDER_ID = %(o)s", {"o": order}, settings=settings)
    assert s["n_attempts"] == len(att) >= 2 and s["order"]["ORDER_ID"] == order and s["found_by"] == "order id"
    assert [a["NUM_ATTEMPTS_ORDER"] for a in s["attempts"]] == list(range(1, len(att) + 1))
    assert [a["CREATED_AT"] for a in s["attempts"]] == sorted(a["CREATED_AT"] for a in s["attempts"])
    for a in s["attempts"]:
        # history was routed by the merchant's logger: no decision, and the story says who routed it
        assert a["decision"] is None and a["routing_log"]["ALGORITHM_TYPE"] in a["decision_note"]
        assert a["routing_log"]["CHOSEN_PROCESSOR"] == a["PROCESSOR"]
        t = a["truth"]["probabilities"]
        assert set(t) == set(catalog.PROCESSORS) and t[a["PROCESSOR"]] > 0 and a["truth"]["best"] in t
        assert a["truth"]["regret_pp"] >= 0
    # features as of each attempt equal the training table built over the whole day (the window it was cut from
    # does not matter: point-in-time), column for column
    day = pd.Timestamp(s["attempts"][0]["CREATED_AT"]).normalize().to_pydatetime()
    table = features.build_training_table(settings, day, day + dt.timedelta(days=1)).set_index("ATTEMPT_ID")
    for a in s["attempts"]:
        if a["STATUS"] == "PROCESSING":
            continue
        row = table.loc[a["ATTEMPT_ID"]]
        for name, value in a["features"].items():
            ref = row[name]
            if isinstance(value, float) or value is None:
                assert (value is None and pd.isna(ref)) or value == pytest.approx(float(ref), abs=1e-12), name
            else:
                assert value == ref, name
    by_attempt = payment.story(s["attempts"][-1]["ATTEMPT_ID"], settings, with_features=False)
    assert by_attempt["found_by"] == "attempt id" and by_attempt["order"]["ORDER_ID"] == order
    assert [a["ATTEMPT_ID"] for a in by_attempt["attempts"]] == [a["ATTEMPT_ID"] for a in s["attempts"]]


def test_live_order_shows_each_attempts_decision(world, tmp_path, capsys):
    settings, env = world
    order = _order_with(settings, "CREATED_AT >= %(d)s")
    s = payment.story(order, settings)
    assert s["with_decision"] == s["n_attempts"] >= 2
    truth_day = pd.read_parquet(live.truth_path(settings, DAY1)).set_index("ATTEMPT_ID")
    for a in s["attempts"]:
        d = a["decision"]
        detail = a["routing_log"]
        assert d["chosen"] == a["PROCESSOR"] == detail["CHOSEN_PROCESSOR"]
        assert d["arm"].upper() == detail["EXPERIMENT_ARM"] and d["propensity"] == pytest.approx(detail["PROPENSITY"])
        assert d["source"] and isinstance(d["reasons"], list) and d["ranked"]
        assert d["ranked"][0][0] in catalog.PROCESSORS
        if d["source"] == "model":
            assert d["model_version"] == "v1"
        # the world oracle continued is the live day's truth for the chosen processor (no scenario here)
        assert a["truth"]["chosen"] == pytest.approx(float(truth_day.loc[a["ATTEMPT_ID"], "P_CHOSEN"]), abs=1e-6)
        assert a["truth"]["live_day"]["CHOSEN"] == a["PROCESSOR"]
    json.dumps(s, default=str)  # the --json output

    out = tmp_path / "p.html"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["payment", order, "--html", str(out), "--no-features"]) == 0
        text = capsys.readouterr().out
        assert main(["payment", "O-does-not-exist"]) == 2
        assert "no order or attempt 'O-does-not-exist'" in capsys.readouterr().err
    page = out.read_text()
    for a in s["attempts"]:
        assert a["ATTEMPT_ID"] in text and a["ATTEMPT_ID"] in page and a["decision"]["request_id"] in page
    assert "decision " in text and "ranked:" in text and "truth:" in text


def test_unknown_or_empty_id_is_a_clear_error(world):
    settings, _ = world
    with pytest.raises(payment.PaymentNotFound, match="give an ORDER_ID"):
        payment.story("A-nope", settings)
    with pytest.raises(payment.ConfigError, match="give an order id"):
        payment.story("  ", settings)


def test_decisions_found_in_a_log_folder_given_by_hand(world, tmp_path):
    """A decision log gathered from another host (--decisions-dir) is read like the local one."""
    settings, _ = world
    order = _order_with(settings, "CREATED_AT >= %(d)s")
    moved = tmp_path / "gathered"
    shutil.copytree(settings.state_dir / "decisions", moved)
    bare = load_settings({"SMARTROUTER_HOME": str(settings.home), "SMARTROUTER_LOCAL_DIR": str(settings.local_dir),
                          "SMARTROUTER_STATE_DIR": str(tmp_path / "empty-state"),
                          "SMARTROUTER_REGISTRY_DIR": str(settings.registry_dir)})
    assert payment.story(order, bare, with_features=False)["with_decision"] == 0
    s = payment.story(order, bare, decisions_dirs=[moved], with_features=False)
    assert s["with_decision"] == s["n_attempts"] and str(moved) in s["decision_logs_searched"]
    assert np.all([a["features"] is None for a in s["attempts"]])
