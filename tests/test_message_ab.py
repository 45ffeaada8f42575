"""The "with vs without message recommendations" A/B: the arm, what each arm sends, and its readout.

Inside the model arm, SHA-256(ab_salt:order) < [messages] ab_share gets message recommendations
("with"); the rest are routed by the same model scoring the payment as sent and send the merchant's
default ("without"). The readout (`abtest.readout(split="messages")`) reads it like the model split,
and on world data `abtest.true_lift` gives the lift the world truly had on the same orders.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from routing_fakes import fake_loader, write_version
from smartrouter import abtest, messages, warehouse
from smartrouter.config import load_settings
from smartrouter.errors import ConfigError
from smartrouter.routing.config import load_routing_config
from smartrouter.routing.decision_log import read_records
from smartrouter.routing.experiment import CONTROL, TREATMENT
from smartrouter.routing.messages import WITH, WITHOUT, JointScorer
from smartrouter.world import World, WorldParams
from smartrouter.world import live

END = dt.date(2025, 6, 30)
DAY1 = END + dt.timedelta(days=1)
PROBS = {"WORLDPAY": 0.70, "MIT": 0.82, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.60}
# the fake model believes sending the billing address helps by 3 pp: the "with" arm sends AVS where allowed
AVS_BONUS = {"AVS_DATA": {"1": 0.03}}
AB = {"messages": {"ab_share": 0.5}, "experiment": {"treatment_share": 1.0}}


def scorer(**messages_over) -> JointScorer:
    return JointScorer(load_routing_config(overrides={"messages": messages_over}), seed=0)


# ------------------------------------------------------------------ the arm
def test_the_message_arm_is_fixed_per_order_independent_of_the_model_arm_and_follows_the_share():
    s = scorer(ab_share=0.3)
    keys = [f"ORD{i:06d}" for i in range(20_000)]
    arms = [s.arm_of(k, TREATMENT, shadow=False) for k in keys]
    assert arms == [s.arm_of(k, TREATMENT, shadow=False) for k in keys]  # no state, no randomness
    n_with = arms.count(WITH)
    # binomial(20,000, 0.3): 5 standard deviations (sqrt(20,000 * 0.3 * 0.7) = 65)
    assert abs(n_with - 6_000) < 5 * 65
    # independent of the model-vs-rules split (its own salt): the "with" share is the same in both halves
    model_arm = load_routing_config()
    from smartrouter.routing.experiment import Experiment

    exp = Experiment(model_arm.experiment)
    by_model_arm = Counter((exp.assign(k), a) for k, a in zip(keys, arms))
    for arm in (CONTROL, TREATMENT):
        n = by_model_arm[(arm, WITH)] + by_model_arm[(arm, WITHOUT)]
        assert abs(by_model_arm[(arm, WITH)] / n - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5


@pytest.mark.parametrize("arm, shadow, recommend", [(CONTROL, False, True), (TREATMENT, True, True),
                                                    (TREATMENT, False, False)])
def test_no_message_arm_where_no_recommendation_could_be_sent(arm, shadow, recommend):
    assert scorer(recommend=recommend, ab_share=0.5).arm_of("ORD1", arm, shadow) is None


def test_share_one_puts_everyone_with_and_zero_everyone_without():
    keys = [f"K{i}" for i in range(500)]
    assert {scorer(ab_share=1.0).arm_of(k, TREATMENT, False) for k in keys} == {WITH}
    assert {scorer(ab_share=0.0).arm_of(k, TREATMENT, False) for k in keys} == {WITHOUT}


@pytest.mark.parametrize("over, named", [({"ab_share": 1.5}, "[messages].ab_share"),
                                         ({"ab_salt": "smartrouter-ab-2024"}, "[messages].ab_salt"),
                                         ({"ab_salt": " "}, "[messages].ab_salt")])
def test_a_bad_message_ab_setting_is_named(over, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_routing_config(overrides={"messages": over})


# ------------------------------------------------------------------ one live day through the service
@pytest.fixture(scope="module")
def ab_day(tmp_path_factory):
    """One live day of a small world routed in process with the message A/B at 50 % (everyone in the
    model arm), a fake model that believes AVS data helps: (settings, truth of the day, decision records)."""
    root = tmp_path_factory.mktemp("msgab")
    settings = load_settings({"SMARTROUTER_HOME": str(root), "SMARTROUTER_LOCAL_DIR": str(root / "wh"),
                              "SMARTROUTER_REGISTRY_DIR": str(root / "models"), "SMARTROUTER_STATE_DIR": str(root / "state")})
    warehouse.write_world(World(WorldParams.small(days=7, per_day=1500, end=END)), settings, progress=False)
    write_version(root / "models", "v1", probs=PROBS, message_bonus=AVS_BONUS)
    client = live.InProcessClient(settings, model_loader=fake_loader, seed_features=False, poll=False,
                                  routing_overrides=AB)
    try:
        live.advance(settings, 1, client)
    finally:
        client.close()
    truth = pd.read_parquet(live.truth_path(settings, DAY1))
    records = list(read_records(settings.state_dir / "decisions"))
    return settings, truth, records


def test_each_arm_sends_what_it_should(ab_day):
    _, truth, records = ab_day
    decisions = [r for r in records if r.get("kind") == "decision"]
    by_arm = {a: [d for d in decisions if d["message_arm"] == a] for a in (WITH, WITHOUT)}
    assert len(by_arm[WITH]) + len(by_arm[WITHOUT]) == len(decisions)  # every model-arm decision is in the test
    assert by_arm[WITH] and by_arm[WITHOUT]
    # without: the merchant's default, never a recommendation, the reason says so
    for d in by_arm[WITHOUT]:
        assert d["message_source"] == "holdout" and d["message_recommendations"] == []
        assert d["message_config"]["key"] == messages.config_key(messages.default_config(d["payment"]))
        assert any("held out of message recommendations" in r for r in d["reasons"])
    # with: recommendations, and AVS data sent wherever the payment allows it (what the fake model believes)
    assert all(d["message_recommendations"] for d in by_arm[WITH] if d["source"] == "model")
    allowed = [d for d in by_arm[WITH] if d["message_source"] == "model" and d["payment"].get("BILLING_ADDRESS")]
    assert allowed and all(d["message_config"]["fields"]["AVS_DATA"] == 1 for d in allowed)
    # the truth file carries the arm of every attempt; "without" attempts sent the default, so their truth is unchanged
    assert set(truth["MESSAGE_ARM"]) == {WITH, WITHOUT}
    held = truth[truth["MESSAGE_ARM"] == WITHOUT]
    assert (held["MESSAGE_CONFIG"] == held["DEFAULT_CONFIG"]).all()
    assert np.array_equal(held["P_CHOSEN"].to_numpy(), held["P_CHOSEN_DEFAULT_CONFIG"].to_numpy())
    # every order keeps its arm over its attempts
    assert truth.groupby("ORDER_ID")["MESSAGE_ARM"].nunique().max() == 1


def test_the_readout_of_the_message_split_and_its_truth(ab_day):
    _, truth, records = ab_day
    routing = load_routing_config(overrides=AB)
    result = abtest.readout(records, routing_config=routing, split="messages")
    assert result["split"]["name"] == "messages" and result["split"]["treatment_share"] == 0.5
    assert not result["srm"]["flagged"]
    n_with = sum(1 for r in records if r.get("kind") == "decision" and r["message_arm"] == WITH)
    assert sum(row["payments"] for row in result["per_arm"] if row["ARM"] == TREATMENT) <= n_with
    assert "with message recommendations" in result["summary"]
    true = abtest.true_lift(live_truth(truth), "messages")
    first = truth[truth["ATTEMPT_NUMBER"] == 1]
    assert true["n_control"] + true["n_treatment"] == len(first)
    p_with = first.loc[first["MESSAGE_ARM"] == WITH, "P_CHOSEN"].mean()
    p_without = first.loc[first["MESSAGE_ARM"] == WITHOUT, "P_CHOSEN"].mean()
    assert true["lift"] == pytest.approx(p_with - p_without, abs=1e-12)
    # the message part: the "with" orders' chosen processors under their default message
    w = first[first["MESSAGE_ARM"] == WITH]
    assert true["message_part"] == pytest.approx((w["P_CHOSEN"] - w["P_CHOSEN_DEFAULT_CONFIG"]).mean(), abs=1e-12)
    cov = abtest.covers(result, true)
    lo, hi = result["lift"]["always_valid"]["ci_low"], result["lift"]["always_valid"]["ci_high"]
    assert cov["always_valid"] == (lo <= true["lift"] <= hi)


def live_truth(frame: pd.DataFrame) -> pd.DataFrame:
    from smartrouter.live_report import prepare_truth

    return prepare_truth(frame)


def test_the_model_split_still_reads_the_model_arm_only(ab_day):
    _, truth, records = ab_day
    with pytest.raises(abtest.NoDataError, match="both arms need orders"):
        abtest.true_lift(live_truth(truth), "model")  # treatment_share 1.0: no control orders in this day
    with pytest.raises(abtest.NoDataError, match="model-vs-rules split is not running"):
        abtest.readout(records, routing_config=load_routing_config(overrides=AB), split="model")
    with pytest.raises(abtest.NoDataError, match="only 'with' orders"):  # a share of 1.0: no message test either
        everyone_with = [{**r, "message_arm": WITH} if r.get("kind") == "decision" else r for r in records]
        abtest.readout(everyone_with, routing_config=load_routing_config(overrides=AB), split="messages")


def test_the_cli_reads_the_message_split_with_its_truth_and_names_a_log_without_it(ab_day, tmp_path, monkeypatch, capsys):
    from smartrouter.cli import main

    settings, _, _ = ab_day
    cfg = tmp_path / "routing.toml"
    text = load_routing_source().replace("treatment_share = 0.5", "treatment_share = 1.0")
    assert "ab_share = 1.0" in text  # the shipped default: no test
    cfg.write_text(text.replace("ab_share = 1.0", "ab_share = 0.5"))
    monkeypatch.setenv("SMARTROUTER_ROUTING_CONFIG", str(cfg))
    out = tmp_path / "readout.json"
    rc = main([ "experiment", "readout", "--split", "messages", "--decisions-dir", str(settings.state_dir / "decisions"),
               "--truth", str(live.live_dir(settings)), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "split messages" in text and "truth (world oracle" in text
    saved = json.loads(out.read_text())
    assert saved["truth"]["split"] == "messages" and "covered" in saved["truth"]
    # a log from before the message A/B (no message_arm anywhere): one line naming the setting, exit 2
    old = tmp_path / "old"
    old.mkdir()
    for seg in (settings.state_dir / "decisions").glob("*.jsonl*"):
        lines = [json.loads(x) for x in seg.read_text().splitlines() if x.strip()]
        for rec in lines:
            rec.pop("message_arm", None)
        (old / seg.name).write_text("".join(json.dumps(r) + "\n" for r in lines))
    rc = main(["experiment", "readout", "--split", "messages", "--decisions-dir", str(old)])
    err = capsys.readouterr().err
    assert rc == 2 and "ab_share" in err


def load_routing_source() -> str:
    from smartrouter.routing.config import DEFAULT_PATH

    return DEFAULT_PATH.read_text()


@pytest.mark.slow
def test_the_readout_notebook_reports_the_message_ab(ab_day, tmp_path, monkeypatch):
    """06_readout executed (papermill, the project kernel) on the A/B day's log: both readouts recorded."""
    import papermill

    from smartrouter.config import REPO_ROOT

    settings, _, records = ab_day
    cfg = tmp_path / "routing.toml"
    text = load_routing_source()
    cfg.write_text(text.replace("ab_share = 1.0", "ab_share = 0.5").replace("treatment_share = 0.5", "treatment_share = 1.0"))
    monkeypatch.setenv("SMARTROUTER_ROUTING_CONFIG", str(cfg))
    for name, path in (("HOME", settings.home), ("LOCAL_DIR", settings.local_dir), ("STATE_DIR", settings.state_dir)):
        monkeypatch.setenv(f"SMARTROUTER_{name}", str(path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "06_readout.ipynb"), str(run_dir / "06_readout.ipynb"),
                               parameters={"run_dir": str(run_dir), "decisions_dir": str(settings.state_dir / "decisions")},
                               kernel_name="smartrouter", progress_bar=False, cwd=str(REPO_ROOT / "notebooks"))
    recorded = json.loads((run_dir / "metrics.json").read_text())["06_readout"]
    saved = json.loads((run_dir / "readout_messages.json").read_text())
    assert recorded["message_readout_available"] is True and recorded["message_readout_srm"] is False
    assert recorded["message_readout_lift_pp"] == pytest.approx(saved["lift"]["lift"] * 100, abs=1e-9)
    expect = abtest.readout(records, routing_config=load_routing_config(cfg), split="messages")
    assert saved["lift"]["n_treatment"] == expect["lift"]["n_treatment"]
    assert saved["lift"]["n_control"] == expect["lift"]["n_control"]
