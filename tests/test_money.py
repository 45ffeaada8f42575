"""Money: fee arithmetic (by hand), the fee schedule's errors, the routing objective's ranking (net revenue
picks the cheaper processor when approvals tie, never leaves the approval floor), the router's choice under
both objectives, and the evaluation's and gates' money fields."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, money
from smartrouter import evaluation as E
from smartrouter.errors import ConfigError
from smartrouter.policies import greedy_choice
from smartrouter.routing.config import ObjectiveConfig, load_routing_config

from config_edits import assert_edit_refused
from eval_fakes import FakeOracle, FakeRules, model_probs, synthetic_log

APPROVAL = ObjectiveConfig("approval", 1.0)
NET = ObjectiveConfig("net_revenue", 1.0)


@pytest.fixture(scope="module")
def schedule():
    return money.load_schedule(money.CONFIG_PATH)


# ---------------------------------------------------------------- fee arithmetic, by hand from fees.toml
# (amount, card type, currency, card country, processor, fee): each line computed from the shipped table
HAND = [
    # domestic MXN credit: percent x amount + fixed_mxn
    (1000.0, "CREDIT", "MXN", "MX", "WORLDPAY", 0.026 * 1000 + 3.00),  # 29.00
    (1000.0, "CREDIT", "MXN", "MX", "MIT", 0.0215 * 1000 + 2.50),  # 24.00
    (1000.0, "CREDIT", "MXN", "MX", "AMEX", 0.033 * 1000 + 4.00),  # 37.00: Amex dearest
    # foreign card: + cross_border_percent
    (2000.0, "DEBIT", "MXN", "US", "ELAVON", (0.0175 + 0.012) * 2000 + 3.50),  # 62.50
    # USD on a processor that settles pesos: + conversion_percent, fixed_usd
    (100.0, "DEBIT", "USD", "US", "ELAVON", (0.0175 + 0.012 + 0.018) * 100 + 0.20),  # 4.95
    # USD on one that settles dollars: no conversion
    (100.0, "DEBIT", "USD", "US", "WORLDPAY", (0.019 + 0.010) * 100 + 0.18),  # 3.08
    (250.0, "PREPAID", "USD", "MX", "ADYEN", 0.020 * 250 + 0.12),  # 5.12
    # a card country the payment does not carry counts as domestic
    (500.0, "PREPAID", "MXN", None, "MIT", 0.0185 * 500 + 2.50),  # 11.75
]


def test_fees_by_hand_frame_and_scalar_paths_agree(schedule):
    frame = pd.DataFrame([{"AMOUNT": a, "CARD_TYPE": t, "CURRENCY": c, "CARD_COUNTRY": k} for a, t, c, k, _, _ in HAND])
    expected = np.array([f for *_, f in HAND])
    by_row = money.fee(frame, [p for *_, p, _ in HAND], schedule)
    np.testing.assert_allclose(by_row, expected, rtol=0, atol=1e-9)
    matrix = money.fee_matrix(frame, schedule)
    assert matrix.shape == (len(HAND), len(catalog.PROCESSORS))
    for i, (a, t, c, k, p, f) in enumerate(HAND):
        one = money.payment_fees({"AMOUNT": a, "CARD_TYPE": t, "CURRENCY": c, "CARD_COUNTRY": k}, schedule)
        assert one[p] == pytest.approx(f, abs=1e-9)
        assert list(one.values()) == pytest.approx(matrix[i].tolist(), abs=1e-12)


def test_net_revenue_and_report_currency(schedule):
    frame = pd.DataFrame({"AMOUNT": [1000.0, 100.0], "CARD_TYPE": ["CREDIT", "DEBIT"], "CURRENCY": ["MXN", "USD"],
                          "CARD_COUNTRY": ["MX", "US"]})
    prob = np.full((2, len(catalog.PROCESSORS)), 0.5)
    net = money.net_revenue(frame, prob, schedule)
    w = catalog.PROCESSOR_INDEX["WORLDPAY"]
    assert net[0, w] == pytest.approx(0.5 * (1000 - 29.0)) and net[1, w] == pytest.approx(0.5 * (100 - 3.08))
    mxn = money.to_report(net, frame["CURRENCY"], schedule)
    assert mxn[1, w] == pytest.approx(17.5 * 0.5 * (100 - 3.08)) and mxn[0, w] == pytest.approx(net[0, w])
    assert money.fmt_money(1234567.4) == "MXN 1,234,567" and money.fmt_money(-12.6, "USD", True) == "-USD 13"
    assert money.fmt_money(None) == "-"
    assert money.fmt_range({"lift": 1000.0, "ci_low": -5.0, "ci_high": 2000.0}, signed=True) == "+MXN 1,000 [-5, +2,000]"


def test_unknown_card_type_in_data_is_named(schedule):
    frame = pd.DataFrame({"AMOUNT": [10.0], "CARD_TYPE": ["CHARGE"], "CURRENCY": ["MXN"], "CARD_COUNTRY": ["MX"]})
    with pytest.raises(ConfigError, match=r"CARD_TYPE values \['CHARGE'\].*CREDIT, DEBIT, PREPAID"):
        money.fee_matrix(frame, schedule)
    with pytest.raises(ConfigError, match="AMOUNT"):
        money.fee_matrix(frame.drop(columns=["AMOUNT"]), schedule)


# ---------------------------------------------------------------- the schedule's errors
@pytest.mark.parametrize("edit, key", [
    (("percent = 0.026\n", "percent = -0.026\n"), "[processors.WORLDPAY.CREDIT] percent = -0.026 is negative"),
    (("fixed_mxn = 2.50\n", "fixed_mxn = -1.0\n"), "[processors.MIT.CREDIT] fixed_mxn = -1.0 is negative"),
    (("percent = 0.026\n", "percent = 2.6\n"), "share of the amount (0.021 = 2.1 %), not a percentage"),
    (("cross_border_percent = 0.010\n", ""), "lacks [processors.WORLDPAY.CREDIT] cross_border_percent"),
    (("percent = 0.026\n", 'percent = "2.6%"\n'), "percent = '2.6%' must be a number"),
    (("MXN = 1.0", "MXN = 0.9"), "[fx] MXN = 0.9 must be 1.0"),
    (('settlement_currencies = ["MXN"]', 'settlement_currencies = ["EUR"]'),
     "settlement_currencies = ['EUR'] must list currencies from MXN, USD"),
    (("values_are_examples = true", 'values_are_examples = "yes"'), "values_are_examples = 'yes' must be true or false"),
    (("[processors.MIT.DEBIT]", "[processors.MIT.CHARGE]"), "[processors.MIT.CHARGE] is not a card type"),
])
def test_schedule_errors_name_the_key_and_the_fix(tmp_path, edit, key):
    assert_edit_refused(money.load_schedule, money.CONFIG_PATH, tmp_path, edit, key)


def test_unknown_and_incomplete_processors_are_named(tmp_path):
    text = money.CONFIG_PATH.read_text()
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(text.replace("[processors.ADYEN", "[processors.STRIPE"))
    with pytest.raises(ConfigError, match=r"\[processors.STRIPE\] is not a processor; the processors are WORLDPAY"):
        money.load_schedule(renamed)
    no_prepaid = tmp_path / "no_prepaid.toml"  # ELAVON's PREPAID table cut out
    no_prepaid.write_text(text.split("[processors.ELAVON.PREPAID]")[0] + "[processors.AMEX]" + text.split("[processors.AMEX]")[1])
    with pytest.raises(ConfigError, match=r"ELAVON has no fees for card type\(s\) PREPAID; add \[processors.ELAVON.PREPAID\]"):
        money.load_schedule(no_prepaid)


def test_shipped_schedule_is_marked_as_examples_and_env_picks_another_file(schedule, tmp_path, monkeypatch):
    assert schedule.values_are_examples and "EXAMPLES" in schedule.describe()["warning"]
    text = money.CONFIG_PATH.read_text()
    assert "THE SHIPPED VALUES ARE EXAMPLES" in text
    # realistic: 1.5-3.5 % base rates, Amex the dearest for every card type
    for t in catalog.CARD_TYPES:
        rates = {p: schedule.terms[p][t]["percent"] for p in catalog.PROCESSORS}
        assert all(0.015 <= r <= 0.035 for r in rates.values())
        assert max(rates, key=rates.get) == "AMEX"
    other = tmp_path / "contract.toml"
    other.write_text(text.replace("values_are_examples = true", "values_are_examples = false"))
    monkeypatch.setenv(money.CONFIG_ENV, str(other))
    assert money.default_schedule().values_are_examples is False and money.default_schedule().describe()["warning"] is None


def test_objective_is_read_from_routing_toml_and_checked():
    assert load_routing_config().objective == ObjectiveConfig("approval", 1.0)  # the shipped default
    cfg = load_routing_config(overrides={"objective": {"name": "net_revenue", "floor_pp": 0.5}})
    assert money.objective(cfg) == ObjectiveConfig("net_revenue", 0.5)
    with pytest.raises(ConfigError, match=r"\[objective\].name = 'profit'; use one of approval, net_revenue"):
        load_routing_config(overrides={"objective": {"name": "profit"}})
    with pytest.raises(ConfigError, match=r"\[objective\].floor_pp = -1 must be within"):
        load_routing_config(overrides={"objective": {"floor_pp": -1}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) floor in \[objective\]"):
        load_routing_config(overrides={"objective": {"floor": 1.0}})


# ---------------------------------------------------------------- the ranking
def test_net_revenue_picks_the_cheaper_processor_when_approvals_tie(schedule):
    pay = {"AMOUNT": 1000.0, "CARD_TYPE": "CREDIT", "CURRENCY": "MXN", "CARD_COUNTRY": "MX"}
    eligible = ["WORLDPAY", "MIT", "ELAVON", "ADYEN"]
    scores = {"WORLDPAY": 0.85, "MIT": 0.85, "ELAVON": 0.85, "ADYEN": 0.85}
    fees = money.payment_fees(pay, schedule)
    by_fee = sorted(eligible, key=lambda p: fees[p])
    assert money.rank(eligible, scores, pay, NET, schedule) == by_fee  # MIT 24.00 < ADYEN 25.70 < ELAVON < WORLDPAY
    assert by_fee[0] == "MIT"
    # under approval the tie goes to catalog order, as policies.greedy_choice breaks it
    assert money.rank(eligible, scores, pay, APPROVAL, schedule)[0] == "WORLDPAY"


def test_ranking_never_leaves_the_floor_and_approval_is_the_greedy_policy(schedule):
    rng = np.random.default_rng(5)
    n, P = 4000, len(catalog.PROCESSORS)
    prob = rng.uniform(0.5, 0.95, (n, P))
    mask = rng.random((n, P)) < 0.7
    mask[np.arange(n), rng.integers(0, P, n)] = True
    frame = pd.DataFrame({"AMOUNT": np.exp(rng.normal(7, 1, n)), "CARD_TYPE": rng.choice(catalog.CARD_TYPES, n),
                          "CURRENCY": "MXN", "CARD_COUNTRY": rng.choice(["MX", "US"], n)})
    net = money.net_revenue(frame, prob, schedule)
    best = np.where(mask, prob, -1).max(axis=1)
    for floor in (0.0, 0.5, 2.0):
        obj = ObjectiveConfig("net_revenue", floor)
        choice = money.preference_order(prob, mask, obj, net)[:, 0]
        r = np.arange(n)
        assert mask[r, choice].all()
        assert (prob[r, choice] >= best - floor / 100 - 1e-12).all()  # never outside the floor
        inside = mask & (prob >= best[:, None] - floor / 100 - 1e-12)
        # and, inside it, the most net revenue
        assert (net[r, choice] >= np.where(inside, net, -np.inf).max(axis=1) - 1e-9).all()
    appr = money.preference_order(prob, mask, APPROVAL)[:, 0]
    np.testing.assert_array_equal(appr, greedy_choice(prob, mask))
    moved = (money.preference_order(prob, mask, ObjectiveConfig("net_revenue", 2.0), net)[:, 0] != appr).mean()
    assert moved > 0  # a 2 pp floor lets fees change the choice (2.1 % of these rows)
    # floor 0: only exact ties in probability may move (none with continuous probabilities)
    np.testing.assert_array_equal(money.preference_order(prob, mask, ObjectiveConfig("net_revenue", 0.0), net)[:, 0], appr)


def test_floor_binds_even_when_a_cheaper_processor_earns_more(schedule):
    pay = {"AMOUNT": 1500.0, "CARD_TYPE": "CREDIT", "CURRENCY": "MXN", "CARD_COUNTRY": "MX"}
    scores = {"WORLDPAY": 0.800, "MIT": 0.799}
    # WORLDPAY: 0.800 x (1500 - 42.00) = 1166.40; MIT: 0.799 x (1500 - 34.75) = 1170.73
    assert money.rank(["WORLDPAY", "MIT"], scores, pay, NET, schedule) == ["MIT", "WORLDPAY"]
    assert money.rank(["WORLDPAY", "MIT"], scores, pay, ObjectiveConfig("net_revenue", 0.05), schedule) == ["WORLDPAY", "MIT"]
    # a payment the schedule cannot price is ranked by approval, never failed
    assert money.rank(["WORLDPAY", "MIT"], scores, dict(pay, CARD_TYPE="CHARGE"), NET, schedule) == ["WORLDPAY", "MIT"]


def test_router_choice_under_both_objectives():
    from routing_fakes import RULE_ROWS, FakeModel, payment
    from smartrouter.routing import Router
    from smartrouter.routing.model_holder import LoadedModel
    from smartrouter.rules import RulesEngine

    class Holder:
        def __init__(self, model):
            self.current = LoadedModel("v1", model, None, 0.0, 0.0)

    model = FakeModel({"WORLDPAY": 0.800, "MIT": 0.799, "ELAVON": 0.70, "AMEX": 0.85, "ADYEN": 0.60})

    def router(name: str) -> Router:
        cfg = load_routing_config(overrides={"exploration": {"enabled": False}, "health": {"probe_share": 0.0},
                                             "experiment": {"treatment_share": 1.0}, "objective": {"name": name}})
        return Router(cfg, RulesEngine(RULE_ROWS), Holder(model), seed=1)

    pay = payment(AMOUNT=1500.0, CARD_TYPE="CREDIT", CURRENCY="MXN", CARD_COUNTRY="MX")
    a, n = router("approval").decide(dict(pay)), router("net_revenue").decide(dict(pay))
    assert a.source == n.source == "model"
    assert a.chosen == "WORLDPAY" and [p for p, _ in a.ranked][:2] == ["WORLDPAY", "MIT"]
    assert n.chosen == "MIT" and [p for p, _ in n.ranked][:2] == ["MIT", "WORLDPAY"]
    # the decision says why: both probabilities and fees (1500 MXN credit at home: MIT 34.75, WORLDPAY 42.00)
    assert ("objective net_revenue: MIT (p=0.799, fee MXN 34.75) earns more net of fees than WORLDPAY (p=0.800, "
            "fee MXN 42.00), within the 1 pp approval floor") in n.reasons
    assert not any("objective" in r for r in a.reasons)
    # a payment where approval and net revenue agree carries no objective reason
    agree = router("net_revenue").decide(dict(pay, ORDER_ID="O-2"), candidates=["WORLDPAY", "ELAVON"])
    assert agree.chosen == "WORLDPAY" and not any("objective" in r for r in agree.reasons)


# ---------------------------------------------------------------- evaluation and gates
@pytest.fixture(scope="module")
def evaluated():
    frame, truth, _ = synthetic_log(n=12_000, eps=0.3, seed=21)
    # the model knows the truth: ranking by net revenue must then earn at least what ranking by approval does
    ev = E.evaluate_run(frame, {"logistic": truth.copy(), "noisy": model_probs(truth, 0.4)}, FakeRules(),
                        oracle=FakeOracle(frame, truth), n_boot=30, seed=3, compare_modes=False)
    return ev


def test_evaluation_shows_approval_fee_and_net_revenue_for_both_objectives(evaluated, schedule):
    ev = evaluated
    m = ev.money
    assert m["available"] and m["objective"] == {"name": "approval", "floor_pp": 1.0}
    assert m["schedule"]["values_are_examples"] is True and m["schedule"]["fx"]["rates"]["USD"] == 17.5
    rows = {r["policy"]: r for r in m["policies"]}
    assert set(rows) == {"static_rules", "model:logistic", "model:logistic@net_revenue", "model:noisy",
                         "model:noisy@net_revenue", "oracle"}
    for r in rows.values():
        assert r["approval"]["ci_low"] <= r["approval"]["estimate"] <= r["approval"]["ci_high"]
        for key in ("fee_per_day_mxn", "fee_per_day_usd", "net_revenue_per_day_mxn", "net_revenue_per_day_usd"):
            cell = r[key]
            assert cell["ci_low"] <= cell["estimate"] <= cell["ci_high"] and cell["true"] is not None
        assert r["net_revenue_per_day_usd"]["estimate"] == pytest.approx(r["net_revenue_per_day_mxn"]["estimate"] / 17.5)
        assert sum(m["traffic_mix"][r["policy"]].values()) == pytest.approx(1.0)
    # the approval objective's policy is the evaluation's model policy: same approval estimate (DR)
    assert rows["model:logistic"]["approval"]["estimate"] == pytest.approx(ev.values.estimate("model:logistic", "DR"))
    t_app, t_net = rows["model:logistic"], rows["model:logistic@net_revenue"]
    # with the true probabilities, per payment the net choice earns at least the approval choice and gives up
    # at most the floor: so do their true means
    assert t_net["net_revenue_per_day_mxn"]["true"] >= t_app["net_revenue_per_day_mxn"]["true"]
    assert t_net["approval"]["true"] >= t_app["approval"]["true"] - 0.01
    assert m["traffic_mix"]["model:logistic"] != m["traffic_mix"]["model:logistic@net_revenue"]
    # the true fee cost, by hand: the truth x each chosen processor's fee, per first attempt x attempts per day
    pi = money.money_terms(ev, schedule, APPROVAL).policies["model:logistic"]
    fee_mxn = money.to_report(money.fee_matrix(ev.first, schedule), ev.first["CURRENCY"], schedule)
    by_hand = float((pi * ev.truth_matrix * fee_mxn).sum(axis=1).mean()) * len(ev.first) / m["days"]
    assert t_app["fee_per_day_mxn"]["true"] == pytest.approx(by_hand, rel=1e-9)
    assert t_app["lift_vs_rules"]["net_revenue_per_day_mxn"]["true"] == pytest.approx(
        t_app["net_revenue_per_day_mxn"]["true"] - rows["static_rules"]["net_revenue_per_day_mxn"]["true"])
    # the JSON a run writes and the model card's metrics carry it
    assert ev.to_json()["money"] == m
    assert E.registry_metrics(ev, "logistic")["money"]["objective"]["name"] == "approval"
    flat = money.headline_metrics(m)
    assert flat["money_objective"] == "approval" and "net_revenue_per_day_mxn_model_logistic_net_revenue" in flat
    sentence = money.sentence(m, "logistic")
    assert "EXAMPLES" in sentence and "by the truth" in sentence


def test_gate_only_under_net_revenue(evaluated):
    from smartrouter import gates as G

    ev, cfg = evaluated, G.load_config()
    assert money.objective_gates(ev, "logistic", cfg, APPROVAL) == []
    [gate] = money.objective_gates(ev, "logistic", cfg, NET)
    assert gate.gate == money.NET_REVENUE_GATE and gate.passed, gate.reason
    assert "net revenue over static rules" in gate.reason and gate.details["floor_pp"] == 1.0
    strict = dict(cfg, net_revenue={"min_relative_lift": 10.0})  # ten times the rules' net revenue: impossible
    [fail] = money.objective_gates(ev, "logistic", strict, NET)
    assert not fail.passed and "lower end not above" in fail.reason
    # floor 0: ranking by net revenue is ranking by approval (no exact ties), nothing is given up, the guardrail holds
    [same] = money.objective_gates(ev, "noisy", cfg, replace(NET, floor_pp=0.0))
    given = same.details["approval_given_up"]
    assert given["lift"] == given["ci_low"] == given["ci_high"] == 0.0 and "floor -0 pp" in same.reason


def test_gate_guardrail_catches_a_model_that_overrates_a_cheap_processor():
    from smartrouter import gates as G

    frame, truth, _ = synthetic_log(n=12_000, eps=0.3, seed=23)
    # the model claims MIT (the cheapest at home) is always 0.1 pp short of the best: within the 1 pp floor, so the
    # net-revenue ranking sends it most peso traffic; truly MIT is often far worse
    fake = truth.copy()
    mit = catalog.PROCESSOR_INDEX["MIT"]
    others = np.delete(fake, mit, axis=1).max(axis=1)
    fake[:, mit] = np.where(truth[:, mit] > 0, others - 0.001, 0.0)
    ev = E.evaluate_run(frame, {"logistic": fake}, FakeRules(), oracle=FakeOracle(frame, truth), n_boot=10, seed=3,
                        compare_modes=False)
    [gate] = money.objective_gates(ev, "logistic", G.load_config(), NET)
    assert not gate.passed and "lower end below the floor -1 pp" in gate.reason
    rows = {r["policy"]: r for r in ev.money["policies"]}
    assert rows["model:logistic@net_revenue"]["approval"]["true"] < rows["model:logistic"]["approval"]["true"] - 0.01


def test_frame_without_amounts_gets_a_note_not_an_error():
    frame, truth, _ = synthetic_log(n=3000, eps=0.3, seed=2)
    ev = E.evaluate_run(frame.drop(columns=["AMOUNT"]), {"m": truth.copy()}, FakeRules(), n_boot=10, compare_modes=False)
    assert ev.money["available"] is False and "AMOUNT" in ev.money["note"]
    assert money.headline_metrics(ev.money) == {"money_objective": "approval"}
    odd = E.evaluate_run(frame.assign(CARD_TYPE="CHARGE"), {"m": truth.copy()}, FakeRules(), n_boot=10, compare_modes=False)
    assert odd.money["available"] is False and "CARD_TYPE values ['CHARGE'] have no fees" in odd.money["note"]
    # under net_revenue the gate cannot judge such rows: it fails and says why
    from smartrouter import gates as G

    [gate] = money.objective_gates(odd, "m", G.load_config(), NET)
    assert not gate.passed and "cannot be judged" in gate.reason and "CHARGE" in gate.reason


def test_run_gates_adds_the_net_revenue_gate_only_under_that_objective(tmp_path):
    from smartrouter import gates as G
    from smartrouter.models.serving import load_serving_model

    from eval_fakes import export_logistic, split_frame

    frame, truth, _ = synthetic_log(n=20_000, eps=0.25, seed=11)
    frame = split_frame(frame)
    folder = export_logistic(frame, tmp_path / "models" / "logistic")
    model = load_serving_model(folder)
    is_test = (frame["SPLIT"] == "test").to_numpy()
    test = frame[is_test].reset_index(drop=True)
    ev = E.evaluate_run(test, {"logistic": G.score_with(model, test)}, FakeRules(), oracle=FakeOracle(test, truth[is_test]),
                        n_boot=20, seed=7, compare_modes=False)
    kw = dict(train_counts=frame[frame["SPLIT"] == "train"]["PROCESSOR"].value_counts().to_dict(),
              serving_dirs={"logistic": folder}, uncertain={"logistic": model.uncertain},
              config=G.load_config(overrides={"stability": {"max_interval_width": 0.08}}))
    plain = G.run_gates(ev, objective=APPROVAL, **kw)
    assert [r.gate for r in plain.results] == list(G.GATES)  # approval: nothing changes
    net = G.run_gates(ev, objective=NET, **kw)
    assert [r.gate for r in net.results] == [*G.GATES, money.NET_REVENUE_GATE]
    gate = net.results[-1]
    assert gate.passed == (gate.value > gate.threshold and gate.details["approval_given_up"]["ci_low"] >= -0.01)
    assert net.to_json("v1")["gates"][-1]["gate"] == "net_revenue"
