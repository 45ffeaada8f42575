"""Train/serve parity end to end: a real world, its feature table, a trained model, and /v1/route.

The offline path builds features in SQL (point-in-time joins over the warehouse) and encodes a
frame; the service builds them from the request's fields, its own online state (processor
health, BIN history replayed from the same outcomes) and the one-row encoder. For the same
attempts at the same times, /v1/route must return the probabilities the offline path computes.
"""

from __future__ import annotations

import datetime as dt
import math

import msgspec
import numpy as np
import pytest
from litestar.testing import TestClient

from routing_fakes import write_version
from smartrouter import features, messages, warehouse
from smartrouter.cli.serve import import_app_module
from smartrouter.config import load_settings
from smartrouter.models.serving import load_serving_model
from smartrouter.models.train import train_all
from smartrouter.routing import load_routing_config
from smartrouter.world import World, WorldParams

pytestmark = pytest.mark.slow
app_module = import_app_module()
DAYS, PER_DAY = 10, 1200


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path_factory.mktemp("warehouse")))
    mp.setenv("SMARTROUTER_WAREHOUSE", "local")
    settings = load_settings()
    world = World(WorldParams.small(days=DAYS, per_day=PER_DAY))
    warehouse.write_world(world, settings, progress=False)
    table = features.time_split(features.build_training_table(settings, world.start + dt.timedelta(days=1), world.end),
                                valid_days=2, test_days=2)
    out = tmp_path_factory.mktemp("models")
    train_all(table, families=["logistic"], params={"logistic": {"C": 0.2, "max_iter": 200, "min_rows": 300}}, out_dir=out)
    model = load_serving_model(out / "logistic")
    history = features.outcome_history(settings, world.start, world.end + dt.timedelta(days=1))
    yield {"settings": settings, "table": table, "model": model, "history": history}
    mp.undo()


def _request_body(row, fields, bool_fields) -> dict:
    body = {}
    for name, column in fields.items():
        if column not in row.index:
            continue
        v = row[column]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, (np.bool_,)):
            v = bool(v)
        if name in bool_fields:  # the warehouse keeps flags as 0/1
            v = bool(v)
        body[name] = v
    return body


def _offline_joint(model, rows):
    """Each processor's best ELIGIBLE (processor, configuration) probability, by the offline path:
    the frame encoder on the SQL feature rows with their message columns set to each configuration."""
    eligible = messages.eligible_matrix(rows)  # (n, configs)
    best = np.full((len(rows), len(model.processors)), -np.inf)
    for k, config in enumerate(messages.CONFIGS):
        if not eligible[:, k].any():
            continue
        scored = model.score_matrix(model.encoder.transform(messages.with_config(rows, config)))
        best = np.where(eligible[:, k, None], np.maximum(best, scored), best)
    assert np.isfinite(best).all()  # the merchant default is always eligible
    return best


@pytest.mark.parametrize("recommend", [False, True], ids=["as-sent", "joint"])
def test_route_probabilities_equal_the_offline_feature_table_and_model(setup, tmp_path, recommend):
    table, model = setup["table"], setup["model"]
    test = table[table["SPLIT"] == "test"]
    rows = test.iloc[:: max(1, len(test) // 60)].sort_values("CREATED_AT", kind="stable")
    # the offline path: SQL features, frame encoder; with recommendations on, a processor's served
    # probability is its best eligible message configuration's (smartrouter.routing.messages)
    offline = _offline_joint(model, rows) if recommend else model.score_matrix(model.encoder.transform(rows))
    write_version(tmp_path / "models", "v1")
    over = {"exploration": {"enabled": False}, "health": {"probe_share": 0.0}, "experiment": {"treatment_share": 1.0},
            "policy": {"min_confidence": 0.0}, "messages": {"recommend": recommend}}
    state = features.OnlineFeatureState()
    app = app_module.create_app(
        load_settings({"SMARTROUTER_HOME": str(tmp_path)}), routing_config=load_routing_config(overrides=over),
        model_loader=lambda path: model, rules_from_warehouse=False, features=state, poll=False, seed=1,
    )
    history = setup["history"]
    times = [t.to_pydatetime() for t in history["CREATED_AT"]]
    outcomes = list(zip(history["PROCESSOR"], times, history["STATUS"], history["ERROR_CATEGORY"], history["CARD_BIN"]))
    fields = app_module.PAYMENT_FIELD_COLUMNS
    hints = msgspec.structs.fields(app_module.RouteRequest)
    bool_fields = {f.name for f in hints if "bool" in repr(f.type)}
    h = 0
    worst = 0.0
    compared = 0
    with TestClient(app) as c:
        for i, (_, row) in enumerate(rows.iterrows()):
            at = row["CREATED_AT"].to_pydatetime()
            while h < len(outcomes) and outcomes[h][1] < at:  # the service has heard every earlier outcome
                state.observe(*outcomes[h])
                h += 1
            body = _request_body(row, fields, bool_fields)
            body["created_at"] = at.isoformat()
            r = c.post("/v1/route", json=body)
            assert r.status_code == 200, (r.status_code, r.text, body)
            d = r.json()
            assert d["model_version"] == "v1"
            for item in d["ranked"]:
                if item["probability"] is None:
                    continue
                j = model.processors.index(item["processor"])
                worst = max(worst, abs(item["probability"] - offline[i, j]))
                compared += 1
    assert compared >= 100
    assert worst <= 2e-6, f"served vs offline probability differs by {worst:.2e}"  # responses carry 6 decimals
