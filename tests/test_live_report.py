"""The live report on synthetic truth frames whose answers are known by construction: a model arm that
always picks the oracle-best (100 % of the gain), a rules arm (0 %), an outage with a known number of
failed attempts before the first failover, off-policy estimates from known propensities, and the page
(sections, index link, headless Chromium)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from smartrouter import live_report as LR
from smartrouter.config import load_settings

PROCS = ("WORLDPAY", "ADYEN", "ELAVON")
FIRST_DAY = dt.date(2026, 12, 1)
OUTAGE_DAY = 3  # 1-based live day of the synthetic outage of WORLDPAY, 10:00-14:00
OUTAGE_FAILURES = 7  # failed WORLDPAY attempts before the first failover decision


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL"):
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    return load_settings()


def synthetic_truth(days: int = 6, orders_per_day: int = 600, seed: int = 1, explore: float = 0.3) -> pd.DataFrame:
    """Arms in upper case as the engine writes them. Treatment: rules' choice on day 1, then the oracle-best with probability 1-explore, else uniform
    (propensities exact); control: the rules' choice. A WORLDPAY outage on day OUTAGE_DAY."""
    rng = np.random.default_rng(seed)
    rows = []
    aid = 0
    for d in range(days):
        day = FIRST_DAY + dt.timedelta(days=d)
        minutes = np.sort(rng.uniform(0, 24 * 60, orders_per_day))
        for o, minute in enumerate(minutes):
            order = f"o{d}-{o}"
            arm = "treatment" if o % 2 == 0 else "control"
            t = pd.Timestamp(day) + pd.Timedelta(minutes=float(minute))
            p = dict(zip(PROCS, rng.uniform(0.55, 0.95, len(PROCS))))
            outage = d + 1 == OUTAGE_DAY and 10 * 60 <= minute < 14 * 60
            if outage:
                p["WORLDPAY"] = 0.02
            rules = "WORLDPAY"  # the static rules always send here (no failover)
            best = max(p, key=p.get)
            for n in (1, 2):
                if arm == "control" or d == 0:
                    chosen, source, prop = rules, "rules", 1.0
                elif rng.random() < explore:
                    chosen, source = PROCS[rng.integers(len(PROCS))], "exploration"
                    prop = explore / len(PROCS) + (1 - explore) * (chosen == best)
                else:
                    chosen, source = best, "model"
                    prop = explore / len(PROCS) + (1 - explore)
                approved = bool(rng.random() < p[chosen])
                aid += 1
                rows.append({
                    "ATTEMPT_ID": f"a{aid}", "ORDER_ID": order, "DAY": day, "CREATED_AT": t + pd.Timedelta(seconds=n),
                    "ATTEMPT_NUMBER": n, "CURRENCY": "USD", "AMOUNT": 100.0, "AMOUNT_USD": 100.0, "CARD_BRAND": "VISA",
                    "CARD_TYPE": "CREDIT", "ARM": arm.upper(), "SOURCE": source,
                    "MODEL_VERSION": ("v1" if d < 3 else "v2") if arm == "treatment" and d > 0 else None,
                    "CHOSEN": chosen, "PROPENSITY": prop, "RULES_CHOICE": rules, "ORACLE_BEST": best,
                    "P_CHOSEN": p[chosen], "P_RULES": p[rules], "P_BEST": p[best],
                    "STATUS": "APPROVED" if approved else "DECLINED", "APPROVED": approved,
                    "OUTAGE_PROCESSORS": "WORLDPAY" if outage else "", "CHOSEN_IN_OUTAGE": outage and chosen == "WORLDPAY",
                    "LATENCY_MS": 2.0 + (aid % 100) / 10})
                if approved:
                    break
    return pd.DataFrame(rows)


def test_an_outage_of_a_processor_its_cards_cannot_leave_is_not_held_to_the_failover_bars() -> None:
    """Amex cards go only to AMEX: an AMEX outage has nothing to fail over to; the verdict says so
    instead of reporting that the service 'never stopped sending to it'."""
    assert not LR.has_alternative("AMEX") and LR.has_alternative("WORLDPAY")
    t = LR.prepare_truth(synthetic_truth(days=3, orders_per_day=300, explore=0.0))
    out = LR.outage_windows(t)
    out = out.assign(processor="AMEX")  # the same never-marked window, on the processor with no alternative
    v = LR.verdict(LR.day_table(t), out, pd.DataFrame(), {})
    assert v["outage_windows"] == 0 and v["outage_windows_without_alternative"] == len(out)
    assert v["outage_windows_not_marked"] == 0
    report = LR.LiveReport(LR.day_table(t), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), out, pd.DataFrame(),
                           verdict={**v, "treatment": LR.group_metrics(t[t["ARM"] == "treatment"])})
    text = LR.verdict_text(report)
    assert "never stopped sending" not in text and "nothing to fail over to" in text


def with_outage_detection(truth: pd.DataFrame) -> pd.DataFrame:
    """Rewrite the outage window so that the service sent OUTAGE_FAILURES failing attempts to WORLDPAY,
    then failed over (first 'failover' decision), then sent it probes only."""
    t = truth.sort_values("CREATED_AT").reset_index(drop=True)
    window = np.flatnonzero(t["OUTAGE_PROCESSORS"] == "WORLDPAY")
    pre, post = window[:OUTAGE_FAILURES], window[OUTAGE_FAILURES:]
    t.loc[pre, ["CHOSEN", "SOURCE", "STATUS", "APPROVED"]] = ["WORLDPAY", "model", "TIMEOUT", False]
    t.loc[pre, "P_CHOSEN"] = t.loc[pre, "P_RULES"]
    # after DOWN every arm fails over (to the best processor here) except for the treatment's probes
    wp = post[(t.loc[post, "CHOSEN"] == "WORLDPAY").to_numpy()]
    moved = wp[(t.loc[wp, "ARM"] == "CONTROL").to_numpy()] if len(wp) else wp
    moved = np.union1d(moved, post[:1])
    t.loc[moved, "CHOSEN"] = t.loc[moved, "ORACLE_BEST"]
    t.loc[moved, "P_CHOSEN"] = t.loc[moved, "P_BEST"]
    t.loc[moved, "SOURCE"] = "failover"
    t.loc[np.setdiff1d(wp, moved), "SOURCE"] = "exploration"
    assert (t.loc[pre, "ARM"] == "TREATMENT").any() and (t.loc[pre, "ARM"] == "CONTROL").any()  # both arms failed
    return t


def write_live(live: Path, truth: pd.DataFrame) -> None:
    (live / "truth").mkdir(parents=True)
    for day, frame in truth.groupby("DAY"):
        frame.to_parquet(live / "truth" / f"{day}.parquet")
    with open(live / "days.jsonl", "w") as fh:
        for day, frame in truth.groupby("DAY"):
            fh.write(json.dumps({"day": str(day), "orders": int(frame["ORDER_ID"].nunique()),
                                 "attempts": len(frame)}) + "\n")
        fh.write('{"day": "torn')  # a crash mid-append leaves a torn line: skipped


# ------------------------------------------------------------------ the per-day numbers
def test_gain_share_known_by_construction() -> None:
    t = LR.prepare_truth(synthetic_truth(explore=0.0))
    days = LR.day_table(t)
    treat = days[(days["arm"] == "treatment") & (days["day"] > 1) & (days["day"] != OUTAGE_DAY)]
    # the oracle-best every time: exactly all of the gain, and a zero-width interval (num = den per order)
    assert np.allclose(treat["gain_share"], 1.0, rtol=0, atol=1e-12)
    assert np.allclose(treat["gain_share_high"] - treat["gain_share_low"], 0.0, atol=1e-9)
    assert np.allclose(treat["approval_true"], treat["approval_best_true"], atol=1e-15)
    control = days[days["arm"] == "control"]
    assert np.allclose(control["gain_share"], 0.0, atol=1e-12)
    assert (control["lift_over_rules_pp"] == 0).all()
    first = days[(days["arm"] == "treatment") & (days["day"] == 1)].iloc[0]
    assert first["gain_share"] == pytest.approx(0.0, abs=1e-12)  # day 1: rules
    # the 'all' row is both arms together: its share lies between them, weighted by each arm's gap
    allrow = days[(days["arm"] == LR.ALL_ARMS) & (days["day"] == 2)].iloc[0]
    d2 = LR.first_attempts(t[t["DAY"] == FIRST_DAY + dt.timedelta(days=1)])
    gap = d2["P_BEST"] - d2["P_RULES"]
    assert allrow["gain_share"] == pytest.approx(gap[d2["ARM"] == "treatment"].sum() / gap.sum(), rel=1e-12)


def test_day_counts_conversion_latency_and_outage_losses() -> None:
    raw = synthetic_truth(days=3, orders_per_day=300, explore=0.3)
    t = LR.prepare_truth(raw)
    days = LR.day_table(t)
    for rec in days.to_dict("records"):
        part = t[t["DAY"] == rec["DAY"]]
        part = part if rec["arm"] == LR.ALL_ARMS else part[part["ARM"] == rec["arm"]]
        assert rec["attempts"] == len(part) and rec["orders"] == part["ORDER_ID"].nunique()
        # an order converts when any attempt is approved; here at most one per order is
        assert rec["orders_converted"] == int(part["APPROVED"].sum())
        assert rec["approval_first_observed"] == pytest.approx(part.loc[part["ATTEMPT_NUMBER"] == 1, "APPROVED"].mean())
        assert rec["exploration_share"] == pytest.approx((part["SOURCE"] == "exploration").mean())
        assert rec["latency_p50_ms"] <= rec["latency_p99_ms"]
        out = part[part["OUTAGE_PROCESSORS"] != ""]
        assert rec["approvals_lost_to_outages"] == pytest.approx((out["P_BEST"] - out["P_CHOSEN"]).sum(), abs=1e-9)
    # only the outage day loses approvals, and the rules arm (stuck on WORLDPAY at 2 %) loses most
    lost = days[days["arm"] == LR.ALL_ARMS].set_index("day")["approvals_lost_to_outages"]
    assert lost[1] == 0 and lost[2] == 0 and lost[3] > 0
    d3 = days[days["day"] == 3].set_index("arm")["approvals_lost_to_outages"]
    assert d3["control"] > d3["treatment"] > 0  # treatment explores into WORLDPAY sometimes
    blocks = LR.block_table(t)
    assert list(dict.fromkeys(blocks["block"])) == ["days 1–3"]
    assert blocks.loc[blocks["arm"] == LR.ALL_ARMS, "attempts"].iloc[0] == len(t)


def test_block_labels_and_versions() -> None:
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(7)]
    labels = LR.block_labels(days)
    assert [labels[d] for d in days] == ["days 1–3"] * 3 + ["days 4–6"] * 3 + ["day 7"]
    v = LR.version_spans(LR.prepare_truth(synthetic_truth(days=5, orders_per_day=50)))
    assert list(v["model_version"]) == ["v1", "v2"]
    assert v["first_served"].iloc[1].date() == FIRST_DAY + dt.timedelta(days=3)
    assert v["last_served"].iloc[0] < v["first_served"].iloc[1]


# ------------------------------------------------------------------ outage must-show
def test_outage_window_failed_attempts_before_down_and_gap_recovered() -> None:
    t = LR.prepare_truth(with_outage_detection(synthetic_truth(explore=0.0)))
    out = LR.outage_windows(t)
    assert len(out) == 1
    w = out.iloc[0]
    assert w["processor"] == "WORLDPAY" and w["how_marked"] == "first failover decision"
    assert w["failed_before_down"] == OUTAGE_FAILURES
    assert w["after_down_on_processor"] == w["after_down_probes"]  # probes only after DOWN
    assert w["start"].hour == 10 and w["end"] < pd.Timestamp(FIRST_DAY + dt.timedelta(days=OUTAGE_DAY - 1)) + pd.Timedelta(hours=14, seconds=3)
    # recovery in the window: the attempts sent to WORLDPAY before DOWN recover none of their gap
    inw = LR.first_attempts(t[t["OUTAGE_PROCESSORS"] == "WORLDPAY"])
    gap = inw["P_BEST"] - inw["P_RULES"]
    assert w[f"recovered_{LR.ALL_ARMS}"] == pytest.approx((inw["P_CHOSEN"] - inw["P_RULES"]).sum() / gap.sum(), rel=1e-12)
    tr = inw[inw["ARM"] == "treatment"]
    lost = (tr["P_BEST"] - tr["P_CHOSEN"]).sum()
    assert w["recovered_treatment"] == pytest.approx(1 - lost / (tr["P_BEST"] - tr["P_RULES"]).sum(), rel=1e-12)
    assert 0.5 < w["recovered_treatment"] < 1.0
    assert w["recovered_treatment_low"] < w["recovered_treatment"] < w["recovered_treatment_high"]


def test_outage_never_failed_over_uses_probes_only_rule() -> None:
    t = with_outage_detection(synthetic_truth(days=3, orders_per_day=300, explore=0.0))
    t.loc[t["SOURCE"] == "failover", "SOURCE"] = "model"  # no failover marker: fall back to "probes only after"
    w = LR.outage_windows(LR.prepare_truth(t)).iloc[0]
    assert w["how_marked"] == "probes only after this"
    assert w["failed_before_down"] == OUTAGE_FAILURES
    first = t.index[t["OUTAGE_PROCESSORS"] == "WORLDPAY"][0]
    t.loc[first, "STATUS"] = "PROCESSING"  # unresolved: not (yet) a failure the service could count
    assert LR.outage_windows(LR.prepare_truth(t)).iloc[0]["failed_before_down"] == OUTAGE_FAILURES - 1


def test_outage_label_counts_scenario_days_from_its_own_loop() -> None:
    scen = SimpleNamespace(outages=(SimpleNamespace(processor="WORLDPAY", day=1, start_minute=600,
                                                    duration_minutes=240, kind="timeouts", severity=0.9),))
    t = LR.prepare_truth(synthetic_truth(days=3, orders_per_day=200))
    # a second loop that started on the outage day: its day 1 is the third live day
    w = LR.outage_windows(t, scenario=[(FIRST_DAY, SimpleNamespace(outages=())),
                                       (FIRST_DAY + dt.timedelta(days=OUTAGE_DAY - 1), scen)]).iloc[0]
    assert w["kind"] == "timeouts"


def test_outage_never_marked_down_is_said_so() -> None:
    t = synthetic_truth(days=3, orders_per_day=300, explore=0.0)
    t = LR.prepare_truth(t)
    out = LR.outage_windows(t)  # the control arm keeps sending to WORLDPAY to the window's end, no failover
    assert out.iloc[0]["how_marked"] == LR.NOT_MARKED
    v = LR.verdict(LR.day_table(t), out, pd.DataFrame(), {})
    assert v["outage_windows_not_marked"] == 1 and v["outage_failed_before_down_max"] is None
    report = LR.LiveReport(LR.day_table(t), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), out, pd.DataFrame(),
                           verdict={**v, "treatment": LR.group_metrics(t[t["ARM"] == "treatment"])})
    text = LR.verdict_text(report)
    assert "in 1 of them it never stopped sending to it" in text and "after at most" not in text


def test_outage_matches_scenario_label() -> None:
    scen = SimpleNamespace(outages=(SimpleNamespace(processor="busiest", day=OUTAGE_DAY, start_minute=600,
                                                    duration_minutes=240, kind="timeouts", severity=0.9),))
    w = LR.outage_windows(LR.prepare_truth(synthetic_truth(days=3, orders_per_day=200)), scenario=scen).iloc[0]
    assert (w["kind"], w["severity"]) == ("timeouts", 0.9)
    scen.outages[0].day = 1  # a different day does not overlap
    w = LR.outage_windows(LR.prepare_truth(synthetic_truth(days=3, orders_per_day=200)), scenario=scen).iloc[0]
    assert w["kind"] is None


# ------------------------------------------------------------------ OPE must-show
def test_ope_served_equals_observed_and_rules_estimate_is_off_policy() -> None:
    t = LR.prepare_truth(synthetic_truth(days=6, orders_per_day=1500, explore=0.3, seed=7))
    ope = LR.ope_table(t, n_boot=200)
    assert list(dict.fromkeys(ope["block"])) == ["days 1–3", "days 4–6"]
    blocks = LR.block_labels(t["DAY"].unique())
    for rec in ope.to_dict("records"):
        part = LR.first_attempts(t[t["DAY"].map(blocks) == rec["block"]])
        part = part if rec["arm"] == LR.ALL_ARMS else part[part["ARM"] == rec["arm"]]
        if rec["policy"] == "served":
            # own propensities: weight 1 on every row, the estimate IS the observed approval
            assert rec["estimate"] == pytest.approx(part["APPROVED"].mean(), abs=1e-12)
            assert rec["truth"] == pytest.approx(part["P_CHOSEN"].mean(), abs=1e-12)
        else:
            assert rec["truth"] == pytest.approx(part["P_RULES"].mean(), abs=1e-12)
        half = (rec["ci_high"] - rec["ci_low"]) / 2
        assert half > 0
        # 2.5 half-widths (≈ 5 standard errors): a correct estimator misses this with probability ~1e-6
        assert abs(rec["estimate"] - rec["truth"]) <= 2.5 * half, rec
    # the rules' off-policy estimate on the treatment arm of days 4-6 really is off-policy: ignoring the
    # propensities (weight 1 on the rows where treatment happened to pick WORLDPAY) is biased, because
    # treatment picks WORLDPAY mostly when it is the best processor there.
    tr = LR.first_attempts(t[(t["ARM"] == "treatment") & (t["DAY"].map(blocks) == "days 4–6")])
    rec = ope[(ope["block"] == "days 4–6") & (ope["arm"] == "treatment") & (ope["policy"] == "rules")
              & (ope["estimator"] == "SNIPS")].iloc[0]
    naive = tr.loc[tr["CHOSEN"] == tr["RULES_CHOICE"], "APPROVED"].mean()
    assert abs(naive - rec["truth"]) > 3 * abs(rec["estimate"] - rec["truth"])


def test_ope_counts_invalid_propensities_and_rejects_unknown_processors() -> None:
    t = synthetic_truth(days=1, orders_per_day=20)
    t.loc[3, "PROPENSITY"] = 0.0  # a logging fault: counted (as the evaluation does), the row weighs as deterministic
    ope = LR.ope_table(LR.prepare_truth(t), n_boot=10)
    assert set(ope.loc[ope["arm"] == LR.ALL_ARMS, "invalid_propensities"]) == {1}
    t.loc[4, "CHOSEN"] = "NOPE"
    with pytest.raises(LR.LiveReportError, match=r"1 logged attempt\(s\) name no known processor.*attempt a5"):
        LR.ope_table(LR.prepare_truth(t), n_boot=10)


# ------------------------------------------------------------------ inputs
def test_missing_live_state_and_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LR.LiveReportError, match="no completed live day.*smartrouter live --days N"):
        LR.load_truth(tmp_path)
    (tmp_path / "truth").mkdir()
    synthetic_truth(days=1, orders_per_day=5).drop(columns=["P_RULES", "PROPENSITY"]).to_parquet(
        tmp_path / "truth" / "2026-12-01.parquet")
    with pytest.raises(LR.LiveReportError, match=r"2026-12-01.parquet lacks the truth column\(s\) PROPENSITY, P_RULES"):
        LR.load_truth(tmp_path)
    (tmp_path / "truth" / "2026-12-01.parquet").write_bytes(b"not parquet")
    with pytest.raises(LR.LiveReportError, match="not a readable parquet"):
        LR.load_truth(tmp_path)
    bad = synthetic_truth(days=1, orders_per_day=5)
    bad.loc[0, "P_BEST"] = 1.5
    with pytest.raises(LR.LiveReportError, match="P_BEST outside"):
        LR.prepare_truth(bad)


# ------------------------------------------------------------------ the page
def _report(settings, tmp_path: Path) -> tuple[LR.LiveReport, Path]:
    from smartrouter.notebook_tools import write_json_atomic

    live = tmp_path / "live"
    truth = with_outage_detection(synthetic_truth(days=4, orders_per_day=400, explore=0.1))
    write_live(live, truth)
    # the run that learned from day 2 (as_of = day 3) decided to promote v2
    run_id = "20261204T020000Z"
    write_json_atomic(settings.runs_dir / run_id / "manifest.json",
                      {"run_id": run_id, "status": "succeeded", "as_of": "2026-12-03", "model_version": "v2",
                       "gate": {"decision": "promoted", "reasons": ["beats rules by 1.2 pp"]}})
    # the loop record names the scenario the days ran (its day 3 = the third live day)
    scenario = tmp_path / "scen.toml"
    scenario.write_text('name = "t"\ndescription = "t"\n[[outage]]\nprocessor = "WORLDPAY"\nday = 3\n'
                        'start = "10:00"\nduration_minutes = 240\nkind = "declines"\nseverity = 0.8\n')
    (live / "loop.json").write_text(json.dumps({"format": 1, "loops": [{
        "id": "x", "scenario": str(scenario),
        "day_records": [{"date": str(FIRST_DAY + dt.timedelta(days=i)), "complete": True} for i in range(4)]}]}))
    report = LR.build_report(settings, live, n_boot=50)
    return report, LR.write_report(report, settings)


def test_report_sections_index_link_and_json(settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, path = _report(settings, tmp_path)
    assert path == settings.reports_dir / "live" / "index.html"
    page = path.read_text()
    for section in ("verdict", "plots", "days", "blocks", "models", "outages", "ope"):
        assert f'id="{section}"' in page, section
    assert "Over 4 simulated day(s) the model-routed arm" in page
    assert "promoted" in page and "beats rules by 1.2 pp" in page and ">v2<" in page
    assert f"after at most {OUTAGE_FAILURES} failed attempt(s)" in page
    assert "declines / 0.8" in page  # the window labelled from the loop's scenario
    assert " pp" in page and " %" in page
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")
    assert len(report.summaries) == 4  # the torn line is skipped
    assert report.gates["DAY"].tolist() == [FIRST_DAY + dt.timedelta(days=1)]
    index = (settings.reports_dir / "index.html").read_text()
    assert 'href="live/index.html"' in index
    # the CLI entry point: --json prints the same numbers
    assert LR.main_report(SimpleNamespace(json=True, live_dir=tmp_path / "live", scenario=None)) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not standard JSON"))
    assert out["verdict"]["outage_failed_before_down_max"] == OUTAGE_FAILURES
    assert out["verdict"]["days"] == 4 and len(out["days"]) == 4 * 3 and out["report"] == str(path)


@pytest.mark.slow
def test_live_report_in_headless_chromium(settings, tmp_path: Path) -> None:
    from test_reports import CHROMIUM, _chromium

    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.fail(f"{CHROMIUM} is missing; install it with tests/ensure_chromium.sh (make test does)")
    _, path = _report(settings, tmp_path)
    dom = _chromium(["--dump-dom", path.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "</body>" in dom.stdout.lower() and "Uncaught" not in dom.stderr
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', dom.stdout)
    assert images and all(len(base64.b64decode(i)) > 1000 for i in images)
    assert 'id="outages"' in dom.stdout and 'id="ope"' in dom.stdout


def test_report_arguments_parse_for_the_live_command(tmp_path: Path) -> None:
    import argparse

    p = LR.add_report_arguments(argparse.ArgumentParser())
    args = p.parse_args(["--json", "--live-dir", str(tmp_path)])
    assert args.json is True and args.live_dir == tmp_path and args.scenario is None
    with pytest.raises(LR.LiveReportError, match="no completed live day"):
        LR.main_report(args)


@pytest.mark.slow
def test_report_on_a_real_engine_day(tmp_path: Path) -> None:
    """One continuation day of a small world through the in-process service, with an outage of the busiest
    processor: the report reads the engine's truth as written and finds the window the scenario put there."""
    from routing_fakes import fake_loader, write_version
    from smartrouter import warehouse
    from smartrouter.world import World, WorldParams
    from smartrouter.world import live
    from smartrouter.world.scenario import Outage, Scenario

    end = dt.date(2025, 6, 30)
    env = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_LOCAL_DIR": str(tmp_path / "wh"),
           "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models"), "SMARTROUTER_RUNS_DIR": str(tmp_path / "runs"),
           "SMARTROUTER_REPORTS_DIR": str(tmp_path / "reports")}
    s = load_settings(env)
    warehouse.write_world(World(WorldParams.small(days=7, per_day=1500, end=end)), s, progress=False)
    write_version(tmp_path / "models", "v1", probs={"WORLDPAY": 0.70, "MIT": 0.82, "ELAVON": 0.75, "AMEX": 0.85,
                                                    "ADYEN": 0.60})
    scenario = Scenario(name="t", description="t", outages=(Outage(
        processor="busiest", day=1, start_minute=15 * 60, duration_minutes=240, kind="timeouts", severity=0.9),))
    client = live.InProcessClient(s, model_loader=fake_loader, seed_features=False, poll=False)
    try:
        live.advance(s, 1, client, scenario)
    finally:
        client.close()
    report = LR.build_report(s, scenario=scenario, n_boot=50)
    truth = pd.read_parquet(live.truth_path(s, end + dt.timedelta(days=1)))
    alls = report.days[report.days["arm"] == LR.ALL_ARMS].iloc[0]
    assert alls["attempts"] == len(truth) and alls["orders"] == truth["ORDER_ID"].nunique()
    assert set(report.days["arm"]) >= {"treatment", "control", LR.ALL_ARMS}
    wp = report.outages[(report.outages["processor"] == "WORLDPAY") & (report.outages["kind"] == "timeouts")]
    assert len(wp) == 1, report.outages
    start = pd.Timestamp(end + dt.timedelta(days=1)) + pd.Timedelta(hours=15)
    assert start <= wp["start"].iloc[0] < start + pd.Timedelta(minutes=5)
    served = report.ope[(report.ope["policy"] == "served") & (report.ope["arm"] == LR.ALL_ARMS)]
    first = truth[truth["ATTEMPT_NUMBER"] == 1]
    assert np.allclose(served["estimate"], first["STATUS"].eq("APPROVED").mean(), atol=1e-12)
    assert np.allclose(served["truth"], first["P_CHOSEN"].mean(), atol=1e-12)
    page = LR.write_report(report, s).read_text()
    assert 'id="outages"' in page and "WORLDPAY" in page


def test_json_has_no_nan_when_a_share_is_undefined() -> None:
    t = synthetic_truth(days=1, orders_per_day=40)
    t["P_RULES"] = t["P_BEST"]  # the rules already pick the best: no gain to take, the share is undefined
    t = LR.prepare_truth(t)
    days = LR.day_table(t)
    assert days["gain_share"].isna().all()
    empty = pd.DataFrame()
    report = LR.LiveReport(days, empty, empty, empty, empty, empty,
                           verdict={"treatment": LR.group_metrics(t[t["ARM"] == "treatment"])})
    text = json.dumps(report.to_json())
    assert "NaN" not in text and json.loads(text)["verdict"]["treatment"]["gain_share"] is None
    assert "rules already best" in LR._share_ci(float("nan"), float("nan"), float("nan"))


def test_an_unreadable_loop_record_only_costs_the_labels(tmp_path: Path) -> None:
    (tmp_path / "loop.json").write_text("{torn")
    assert LR.loop_scenarios(tmp_path) == []
    assert LR.loop_scenarios(tmp_path / "nowhere") == []
