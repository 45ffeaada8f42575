"""The A/B readout (smartrouter.abtest) over synthetic decision logs with known rates."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from smartrouter import abtest
from config_edits import assert_edit_refused
from smartrouter.routing.config import load_routing_config
from smartrouter.routing.experiment import CONTROL, TREATMENT, Experiment

START = datetime(2026, 11, 1)


def make_log(days: int, per_day: int, rate_c: float, rate_t: float, *, seed: int = 0, share: float = 0.5,
             skew: float = 0.0, harm_brand: str | None = None, harm: float = 0.0, versions: tuple[str, ...] = ("v1",),
             latency_t: float = 1.0, retry: bool = True) -> list[dict]:
    """Decision + outcome records as the service writes them: orders split by the service's own hash.

    ``skew``: that share of control orders is dropped (a broken split); ``harm_brand``: treatment
    approval of that brand lowered by ``harm``; ``versions`` serve the treatment arm in turn, day by day.
    """
    cfg = load_routing_config().experiment
    exp = Experiment(type(cfg)(**{**cfg.__dict__, "treatment_share": share}))
    rng = np.random.default_rng(seed)
    recs: list[dict] = []
    brands = ("VISA", "MASTERCARD", "AMEX")
    for d in range(days):
        version = versions[min(d * len(versions) // days, len(versions) - 1)]
        for i in range(per_day):
            oid = f"o{seed}-{d}-{i}"
            arm = exp.assign(oid)
            if arm == CONTROL and skew and rng.random() < skew:
                continue
            brand = brands[i % 3]
            rate = rate_t if arm == TREATMENT else rate_c
            if arm == TREATMENT and brand == harm_brand:
                rate -= harm
            at = START + timedelta(days=d, seconds=int(86_400 * i / per_day))
            approved = rng.random() < rate
            for attempt in (1, 2) if (retry and not approved) else (1,):
                rid = f"{oid}-{attempt}"
                ok = approved if attempt == 1 else rng.random() < 0.3
                recs.append({"kind": "decision", "request_id": rid, "arm": arm, "chosen": "WORLDPAY" if i % 2 else "MIT",
                             "source": "model" if arm == TREATMENT else "rules",
                             "model_version": version, "latency_ms": 2.0 if arm == TREATMENT else 1.0,
                             "created_at": (at + timedelta(seconds=attempt)).isoformat(),
                             "payment": {"ORDER_ID": oid, "NUM_ATTEMPTS_ORDER": attempt, "CARD_BRAND": brand,
                                         "CURRENCY": "MXN" if i % 4 else "USD", "CARD_TYPE": "CREDIT", "AMOUNT": 100.0}})
                recs.append({"kind": "outcome", "request_id": rid, "status": "APPROVED" if ok else "DECLINED",
                             "latency_ms": 300.0 * (latency_t if arm == TREATMENT else 1.0), "order_id": oid})
    return recs


def test_readout_recovers_the_rates_and_declares_a_clear_winner():
    r = abtest.readout(make_log(8, 1500, 0.78, 0.84, seed=1))
    lift = r["lift"]
    n_t, n_c = lift["n_treatment"], lift["n_control"]
    # each estimate within 4 standard errors of its true rate
    assert abs(lift["treatment"] - 0.84) < 4 * math.sqrt(0.84 * 0.16 / n_t)
    assert abs(lift["control"] - 0.78) < 4 * math.sqrt(0.78 * 0.22 / n_c)
    av, fh = lift["always_valid"], lift["fixed_horizon"]
    assert av["ci_low"] <= 0.06 <= av["ci_high"]
    assert av["ci_high"] - av["ci_low"] > fh["ci_high"] - fh["ci_low"]  # the price of reading it daily
    assert r["decision"]["winner"] == TREATMENT, r["decision"]
    assert r["srm"]["checked"] and not r["srm"]["flagged"]
    assert len(r["daily_looks"]) == 8
    arms = {row["ARM"]: row for row in r["per_arm"]}
    assert set(arms) == {CONTROL, TREATMENT}
    # payments = attempts with an outcome: every declined first attempt was retried once
    assert arms[TREATMENT]["payments"] > arms[TREATMENT]["orders"]
    assert arms[TREATMENT]["order_conversion"] > arms[TREATMENT]["first_attempt_approval"]
    assert r["impact"]["approved_orders_per_day"] == pytest.approx(lift["lift"] * r["impact"]["orders_per_day"])
    assert "pp" in r["summary"] and "Decision: treatment wins" in r["summary"]
    json.dumps(r)  # JSON-ready (no NaN objects, no numpy)


def test_no_winner_without_enough_days_even_when_significant():
    r = abtest.readout(make_log(3, 6000, 0.75, 0.85, seed=2))
    d = r["decision"]
    assert d["winner"] is None and d["conditions"]["significant"] and not d["conditions"]["enough_days"]
    assert any("day(s) of data" in why for why in d["reasons"])


def test_latency_regression_blocks_the_winner():
    r = abtest.readout(make_log(8, 1500, 0.78, 0.84, seed=3, latency_t=1.3))
    assert r["latency_regression"] > 0.10
    assert r["decision"]["winner"] is None and not r["decision"]["conditions"]["latency_ok"]


def test_a_skewed_split_is_flagged_as_srm_and_blocks_the_winner():
    r = abtest.readout(make_log(8, 1500, 0.78, 0.84, seed=4, skew=0.15))
    assert r["srm"]["flagged"] and r["srm"]["p_value"] < 1e-3
    assert r["decision"]["winner"] is None and "sample-ratio" in " ".join(r["decision"]["reasons"])
    assert "WARNING" in r["summary"]


def test_a_harmed_slice_is_found_after_correction_and_processor_is_not_tested():
    # overall +4.7 pp (a winner but for the slice), AMEX -10 pp
    r = abtest.readout(make_log(8, 1500, 0.78, 0.90, seed=5, harm_brand="AMEX", harm=0.22))
    harm = {(h["slice"], h["value"]): h for h in r["harm"]}
    assert harm[("brand", "AMEX")]["harmed"]
    assert not harm[("brand", "VISA")]["harmed"] and not harm[("brand", "MASTERCARD")]["harmed"]
    assert not harm[("processor", "WORLDPAY")]["tested"]
    d = r["decision"]
    assert d["winner"] is None and d["conditions"]["significant"] and "brand=AMEX" in " ".join(d["reasons"])


def test_worse_treatment_makes_control_the_winner():
    r = abtest.readout(make_log(8, 1500, 0.84, 0.78, seed=6))
    assert r["decision"]["winner"] == CONTROL


def test_each_model_version_is_compared_with_the_control_of_its_own_days():
    r = abtest.readout(make_log(8, 2000, 0.78, 0.84, seed=7, versions=("v1", "v2")))
    by = {v["model_version"]: v for v in r["versions_vs_control"]}
    assert set(by) == {"v1", "v2"}
    for v in by.values():  # control orders of the version's own 4 days only: about half of all control orders
        assert v["n_control"] < 0.6 * r["lift"]["n_control"]
    assert {(row["ARM"], row["MODEL_VERSION"]) for row in r["per_version"]} >= {(TREATMENT, "v1"), (TREATMENT, "v2")}


def test_readout_from_a_folder_of_segments(tmp_path: Path):
    recs = make_log(2, 200, 0.8, 0.8, seed=8)
    (tmp_path / "decisions-20261101T000000-1-0001.jsonl").write_text("\n".join(json.dumps(x) for x in recs) + "\n{partial")
    loaded, where = abtest.load_records(tmp_path)
    assert len(loaded) == len(recs) and where == str(tmp_path)


def test_no_data_is_a_clear_error(tmp_path: Path):
    with pytest.raises(abtest.NoDataError, match="no decision log in"):
        abtest.load_records(tmp_path)
    with pytest.raises(abtest.NoDataError, match="holds no decisions"):
        abtest.readout([])
    only_decisions = [r for r in make_log(1, 50, 0.8, 0.8) if r["kind"] == "decision"]
    with pytest.raises(abtest.NoDataError, match="no outcome"):
        abtest.readout(only_decisions)


def test_readout_cli_without_data_exits_2_naming_the_cause(tmp_path: Path, capsys):
    from smartrouter.cli import main

    assert main(["experiment", "readout", "--decisions-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no decision log in" in err and "\n" not in err.strip()


def test_readout_cli_json(tmp_path: Path, capsys):
    from smartrouter.cli import main

    recs = make_log(2, 300, 0.8, 0.8, seed=9)
    (tmp_path / "decisions-20261101T000000-1-0001.jsonl").write_text("\n".join(json.dumps(x) for x in recs) + "\n")
    out = tmp_path / "r.json"
    assert main(["experiment", "readout", "--decisions-dir", str(tmp_path), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["decision"]["winner"] is None and json.loads(out.read_text())["lift"] == printed["lift"]


@pytest.mark.parametrize("edit, key", [
    (("[winner]", "[winner]\nmin_weeks = 2"), "min_weeks"),
    (('primary_metric = "first_attempt_approval"', 'primary_metric = "revenue"'), "primary_metric"),
    (("min_days = 7", 'min_days = "seven"'), "min_days"),
    (("alpha = 0.001", "alpha = 1.5"), "[srm] alpha"),
    (('slices = ["brand", "currency", "card_type", "processor"]', 'slices = ["bin"]'), "[harm] slices"),
    (("max_latency_regression = 0.10", ""), "max_latency_regression"),
])
def test_bad_config_names_the_key(tmp_path: Path, edit, key):
    assert_edit_refused(abtest.load_config, abtest.CONFIG_PATH, tmp_path, edit, key)


def test_a_canary_beside_its_champion_is_compared_head_to_head():
    """v2 takes every other treatment order on days 5-8 (a canary) and approves 8 pp more than v1."""
    recs = make_log(8, 1500, 0.78, 0.80, seed=10)
    rng = np.random.default_rng(10)
    outcome = {r["request_id"]: r for r in recs if r["kind"] == "outcome"}
    for r in recs:
        if r["kind"] != "decision" or r["arm"] != TREATMENT or r["created_at"] < "2026-11-05":
            continue
        if int(r["payment"]["ORDER_ID"].rsplit("-", 1)[1]) % 2:
            r["model_version"] = "v2"
            if r["payment"]["NUM_ATTEMPTS_ORDER"] == 1:
                outcome[r["request_id"]]["status"] = "APPROVED" if rng.random() < 0.88 else "DECLINED"
    res = abtest.readout(recs)
    (h2h,) = res["versions_head_to_head"]
    assert (h2h["champion"], h2h["challenger"]) == ("v1", "v2") and h2h["from"] >= "2026-11-05"
    assert h2h["always_valid_ci_low"] <= 0.08 <= h2h["always_valid_ci_high"] and h2h["always_valid_p_value"] < 0.05
    # one promotion after another (no overlap) is not a head-to-head comparison
    assert abtest.readout(make_log(8, 300, 0.8, 0.8, seed=11, versions=("v1", "v2")))["versions_head_to_head"] == []
