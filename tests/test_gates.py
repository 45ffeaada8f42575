"""Quality gates: a good first model promotes, a shuffled-label model is rejected with readable reasons,
a corrupted artifact fails completeness, the same model vs itself passes regression; family choice and
champion replacement decide on the paired lift (superiority / non-inferiority), never on a noisy point."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from smartrouter import evaluation as E
from smartrouter import gates as G
from smartrouter.errors import ConfigError
from smartrouter.models.serving import load_serving_model

from eval_fakes import FakeOracle, FakeRules, export_logistic, model_probs, split_frame, synthetic_log

# small synthetic test window: intervals are wider than on the default world
FAST = {"stability": {"max_interval_width": 0.08}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    frame, truth, _ = synthetic_log(n=30_000, eps=0.25, seed=11)
    frame = split_frame(frame)
    good = export_logistic(frame, root / "run" / "models" / "logistic")
    broken = export_logistic(frame, root / "broken" / "models" / "logistic", shuffle_labels=True)
    test = frame[frame["SPLIT"] == "test"].reset_index(drop=True)
    test_truth = truth[(frame["SPLIT"] == "test").to_numpy()]
    oracle = FakeOracle(test, test_truth)
    train_counts = frame[frame["SPLIT"] == "train"]["PROCESSOR"].value_counts().to_dict()
    cfg = G.load_config(overrides=FAST)

    cache: dict[Path, tuple] = {}

    def evaluate(folder: Path) -> tuple[E.RunEvaluation, np.ndarray, dict]:
        if folder not in cache:
            cache[folder] = _evaluate(folder)
        return cache[folder]

    def _evaluate(folder: Path) -> tuple[E.RunEvaluation, np.ndarray, dict]:
        model = load_serving_model(folder)
        probs = G.score_with(model, test)
        ev = E.evaluate_run(test, {"logistic": probs}, FakeRules(), oracle=oracle, n_boot=120, seed=7,
                            min_slice_rows=500, compare_modes=False)
        return ev, probs, model.uncertain

    return {"root": root, "good": good, "broken": broken, "test": test, "evaluate": evaluate,
            "train_counts": train_counts, "cfg": cfg, "oracle": oracle, "truth": test_truth}


def test_config_file_holds_every_gate_threshold():
    cfg = G.load_config()
    assert set(cfg) == set(G.SCHEMA) and all(set(cfg[k]) == set(G.SCHEMA[k]) for k in cfg)
    assert cfg["auc"]["min_auc"] == 0.65
    with pytest.raises(ConfigError, match="unknown"):
        G.load_config(overrides={"auc": {"nope": 1}})
    with pytest.raises(ConfigError, match="regression.non_inferiority_margin.*number"):
        G.load_config(overrides={"regression": {"non_inferiority_margin": "0.5pp"}})


@pytest.mark.parametrize("edit, message", [
    # the keys gates.toml used to carry that nothing read
    (lambda t: t + '\n[evaluation]\noperating_threshold = 0.5\n', r"unknown table (or key )?\[evaluation\]"),
    (lambda t: t.replace('estimator = "DR"', 'estimator = "DR"\npropensity_mode = "pooled"'),
     r"unknown key 'propensity_mode' in \[policy_value\]"),
    (lambda t: t.replace("max_auc_drop = 0.02", "max_value_drop = 0.003\nmax_auc_drop = 0.02"),
     r"unknown key 'max_value_drop' in \[regression\]"),
    (lambda t: t.replace("min_auc = 0.65", 'min_auc = "0.65"'), r"min_auc = '0.65' must be a number"),
    (lambda t: t.replace("time_folds = 3", "time_folds = 3.5"), r"time_folds = 3.5 must be an integer"),
    (lambda t: t.replace("non_inferiority_margin = 0.005", ""), r"lacks \[regression\] non_inferiority_margin"),
    (lambda t: t.replace('estimator = "DR"', 'estimator = "AIPW"'), r"estimator 'AIPW' is unknown"),
])
def test_config_file_rejects_unknown_missing_and_mistyped_keys(tmp_path, edit, message):
    path = tmp_path / "gates.toml"
    path.write_text(edit(G.CONFIG_PATH.read_text()))
    with pytest.raises(ConfigError, match=message) as info:
        G.load_config(path)
    assert str(path) in str(info.value)  # names the file as well as the key


def test_first_good_model_promotes_without_champion(setup):
    ev, probs, unc = setup["evaluate"](setup["good"])
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=None, config=setup["cfg"])
    assert [r.gate for r in rep.results] == list(G.GATES)
    assert rep.decision == "promoted", "\n".join(r.line() for r in rep.results)
    assert rep.champion_family == "logistic"
    reg = {r.gate: r for r in rep.results}["regression"]
    assert "no promoted champion" in reg.reason
    assert "AMEX" in {r.gate: r for r in rep.results}["min_data"].reason  # exempt: flagged uncertain, no Amex rows
    js = rep.to_json("v1")
    assert js["decision"] == "promoted" and js["model_version"] == "v1" and len(js["gates"]) == len(G.GATES)
    # the model's greedy policy truly beats the rules on this log
    assert ev.values.truth["model:logistic"] > ev.values.truth["static_rules"]


def test_same_model_as_champion_passes_regression(setup):
    ev, probs, unc = setup["evaluate"](setup["good"])
    champ = G.Champion(version="v1", family="logistic", probs=probs)
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=champ, config=setup["cfg"])
    res = {r.gate: r for r in rep.results}
    # the paired difference of a policy with itself is exactly 0 on every row: interval [0, 0]
    assert res["regression"].passed and res["regression"].value == 0.0
    assert res["stability"].details["psi"] < 1e-9
    assert rep.decision == "promoted"


def _shifted(probs: np.ndarray, delta: float) -> np.ndarray:
    """Another model that scores every processor ``delta`` higher: the same routing choice on every row
    (so exactly the same true policy value), a different DR estimate only through noise."""
    return probs + delta


def test_equal_same_family_candidate_is_accepted_as_non_inferior(setup):
    ev, probs, unc = setup["evaluate"](setup["good"])
    champ = G.Champion(version="v1", family="logistic", probs=_shifted(probs, 0.03))
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=champ, config=setup["cfg"])
    reg = {r.gate: r for r in rep.results}["regression"]
    lift = reg.details["value_lift"]
    assert lift["lift"] != 0.0 and lift["ci_low"] < 0 < lift["ci_high"]  # noise, in both directions
    assert reg.passed and reg.details["test"] == "non-inferiority", reg.line()
    # the margin: the part of the champion's own lift over the rules a retrain may give up (>= the floor)
    c = setup["cfg"]["regression"]
    champ_lift = reg.details["champion_lift_over_rules"]["lift"]
    assert champ_lift > 0.02  # the fixture's champion gains on the rules
    margin = max(c["non_inferiority_margin"], (1 - c["preserved_fraction"]) * champ_lift)
    assert reg.threshold == -margin and reg.value == lift["ci_low"] and margin > c["non_inferiority_margin"]
    assert reg.reason.startswith("non-inferiority vs champion v1 (same family): paired DR lift ")
    assert "95% CI" in reg.reason and f"{-100 * margin:+.2f} pp" in reg.reason and "80 % of the champion's lift" in reg.reason


def test_non_inferiority_margin_never_below_its_floor(setup):
    """A champion that gains nothing over the rules leaves only the absolute floor as the margin."""
    ev, probs, unc = setup["evaluate"](setup["good"])
    cfg = {**setup["cfg"], "regression": {**setup["cfg"]["regression"], "preserved_fraction": 1.0}}
    champ = G.Champion(version="v1", family="logistic", probs=_shifted(probs, 0.03))
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=champ, config=cfg)
    reg = {r.gate: r for r in rep.results}["regression"]
    assert reg.threshold == -cfg["regression"]["non_inferiority_margin"]
    gate_json = rep.to_json("v2")
    assert {g["gate"]: g for g in gate_json["gates"]}["regression"]["details"]["test"] == "non-inferiority"
    assert rep.passed and gate_json["reasons"][1] == f"regression: {reg.reason}"  # the run report shows it


def _richer_than(cfg, champion_family, candidate_family):
    """The gate config with ``preference_order`` such that the candidate's family is the richer one."""
    rest = [f for f in cfg["champion"]["preference_order"] if f not in (champion_family, candidate_family)]
    return {**cfg, "champion": {**cfg["champion"], "preference_order": [champion_family, *rest, candidate_family]}}


def test_equal_candidate_of_a_richer_family_does_not_replace_the_champion(setup):
    ev, probs, unc = setup["evaluate"](setup["good"])
    champ = G.Champion(version="v1", family="dnn", probs=_shifted(probs, 0.03))
    cfg = _richer_than(setup["cfg"], "dnn", "logistic")
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=champ, config=cfg)
    reg = {r.gate: r for r in rep.results}["regression"]
    assert not reg.passed and reg.details["test"] == "superiority"
    assert reg.reason.startswith("superiority vs champion v1 (dnn -> logistic): paired DR lift ")
    assert rep.decision == "rejected" and rep.reasons[0].startswith("regression: superiority")


def test_equal_candidate_of_a_simpler_family_replaces_a_richer_champion(setup):
    """Prefer the simpler family unless the richer one is better with confidence: a richer champion
    must not block every retrain once the run's family choice falls back to the simpler one."""
    ev, probs, unc = setup["evaluate"](setup["good"])
    champ = G.Champion(version="v1", family="dnn", probs=_shifted(probs, 0.03))
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=champ, config=setup["cfg"])
    reg = {r.gate: r for r in rep.results}["regression"]
    assert reg.passed and reg.details["test"] == "non-inferiority", reg.line()
    assert reg.reason.startswith("non-inferiority vs champion v1 (dnn -> logistic, simpler): paired DR lift ")


def test_truly_better_candidate_of_a_richer_family_replaces_the_champion(setup):
    ev, probs, unc = setup["evaluate"](setup["good"])
    weak = model_probs(setup["truth"], 1.5, seed=4)  # ranks the processors badly
    champ = G.Champion(version="v1", family="dnn", probs=weak)
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": unc}, champion=champ, config=_richer_than(setup["cfg"], "dnn", "logistic"))
    reg = {r.gate: r for r in rep.results}["regression"]
    assert reg.passed and reg.details["test"] == "superiority" and reg.value > 0, reg.line()


def test_shuffled_label_model_is_rejected_with_readable_reasons(setup):
    _, good_probs, _ = setup["evaluate"](setup["good"])
    ev, probs, unc = setup["evaluate"](setup["broken"])
    champ = G.Champion(version="v1", family="logistic", probs=good_probs)
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["broken"]},
                      uncertain={"logistic": unc}, champion=champ, config=setup["cfg"])
    res = {r.gate: r for r in rep.results}
    assert rep.decision == "rejected"
    assert not res["auc"].passed and "below AUC 0.65" in res["auc"].reason
    assert not res["regression"].passed and "non-inferiority vs champion v1 (same family)" in res["regression"].reason
    assert res["regression"].details["test"] == "non-inferiority" and res["regression"].value < -0.005
    assert any(r.startswith("regression: non-inferiority vs champion v1") for r in rep.reasons)
    assert any(r.startswith("auc: heads below AUC") for r in rep.reasons)
    assert all(":" in r and len(r) < 400 for r in rep.reasons)


def test_rejected_model_is_registered_but_champion_stays_promoted(setup, tmp_path):
    from smartrouter.registry import Registry

    reg = Registry(root=tmp_path / "models")
    good_ev, good_probs, unc = setup["evaluate"](setup["good"])
    v1 = reg.register(setup["good"].parent.parent, "logistic", E.registry_metrics(good_ev, "logistic"),
                      {"decision": "promoted", "reasons": ["ok"]}, status="promoted", reason="gates passed")
    ev, _, unc = setup["evaluate"](setup["broken"])
    champion_model = reg.load_promoted()[1]
    champ = G.Champion(version=v1, family=champion_model.family, probs=G.score_with(champion_model, setup["test"]))
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["broken"]},
                      uncertain={"logistic": unc}, champion=champ, config=setup["cfg"])
    v2 = reg.register(setup["broken"].parent.parent, "logistic", E.registry_metrics(ev, "logistic"), rep.to_json(),
                      status="promoted" if rep.passed else "rejected")
    assert rep.decision == "rejected" and v2 == "v2"
    assert reg.promoted()[0] == "v1"
    assert {r["version"]: r["status"] for r in reg.list()} == {"v1": "promoted", "v2": "rejected"}
    assert reg.show("v2")["version"]["reasons"][0].startswith("auc:")
    # the model card says which test the regression gate applied, with the paired lift and the margin
    card_gates = reg.show("v2")["card"]["gates"]
    regression = {g["gate"]: g for g in card_gates["results"]}["regression"]
    d = regression["details"]
    expected_margin = max(0.005, (1 - d["preserved_fraction"]) * max(d["champion_lift_over_rules"]["lift"], 0.0))
    assert d["test"] == "non-inferiority" and d["margin"] == expected_margin
    assert {"lift", "ci_low", "ci_high", "se"} <= set(regression["details"]["value_lift"])
    assert card_gates["family_choice"] == []  # one family: nothing to compare


def test_corrupted_candidate_fails_completeness(setup, tmp_path):
    bad = tmp_path / "logistic"
    shutil.copytree(setup["good"], bad)
    blob = bytearray((bad / "weights.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "weights.npz").write_bytes(bytes(blob))
    problems = G.check_completeness(bad)
    assert problems and "weights.npz" in problems[0] and "checksum" in problems[0]
    ev, _, unc = setup["evaluate"](setup["good"])
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": bad},
                      uncertain={"logistic": unc}, config=setup["cfg"])
    comp = {r.gate: r for r in rep.results}["completeness"]
    assert not comp.passed and "weights.npz" in comp.reason
    assert rep.decision == "rejected"
    missing = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={}, config=setup["cfg"])
    assert "no serving folder" in {r.gate: r for r in missing.results}["completeness"].reason


def test_min_data_fails_for_established_processor_without_rows(setup):
    ev, _, unc = setup["evaluate"](setup["good"])
    counts = dict(setup["train_counts"], WORLDPAY=10)
    rep = G.run_gates(ev, train_counts=counts, serving_dirs={"logistic": setup["good"]},
                      uncertain={"logistic": {**unc, "WORLDPAY": False}}, config=setup["cfg"])
    md = {r.gate: r for r in rep.results}["min_data"]
    assert not md.passed and "WORLDPAY (10 rows)" in md.reason


def _two_families(setup, xgb_probs: np.ndarray, logistic_probs: np.ndarray | None = None) -> E.RunEvaluation:
    _, probs, _ = setup["evaluate"](setup["good"])
    return E.evaluate_run(setup["test"], {"logistic": probs if logistic_probs is None else logistic_probs, "xgb": xgb_probs},
                          FakeRules(), oracle=setup["oracle"], n_boot=30, compare_modes=False)


def test_richer_family_ahead_on_noise_is_not_chosen(setup):
    """xgb routes exactly like logistic (same true value) but its DR estimate is +0.2 pp ahead: the old
    0.1 pp point margin picked it; the paired interval covers 0, so the simpler family stays."""
    ev0, probs, _ = setup["evaluate"](setup["good"])
    # DR(shifted) − DR(logistic) = delta · mean(1 − w) per row (w: importance weight), so this delta
    # puts the point lift at +0.2 pp exactly
    pi = ev0.policies["model:logistic"][ev0.logged.rows]
    w = pi[np.arange(len(ev0.logged)), ev0.logged.action] / ev0.logged.propensity
    delta = 0.002 / (1 - w.mean())
    assert abs(delta) < 0.2
    ev = _two_families(setup, _shifted(probs, delta))
    lift = ev.values.lift("model:xgb", "model:logistic")
    assert lift["lift"] == pytest.approx(0.002, abs=1e-9) and lift["ci_low"] < 0
    assert ev.values.truth["model:xgb"] == ev.values.truth["model:logistic"]
    choice = G.pick_champion(ev, ["logistic", "xgb"], setup["cfg"])
    assert choice.family == "logistic"
    (cmp,) = choice.comparisons
    assert cmp["test"] == "superiority" and cmp["richer"] == "xgb" and cmp["chosen"] == "logistic"
    assert cmp["reason"].startswith("superiority of xgb over logistic: paired DR lift +0.20 pp (95% CI -")
    assert cmp["reason"].endswith("lower end <= +0.00 pp: logistic chosen")
    # the same through run_gates: gate.json says which comparison chose the family
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={}, config=setup["cfg"])
    assert rep.champion_family == "logistic" and rep.to_json()["family_choice"][0]["test"] == "superiority"


def test_truly_better_richer_family_is_chosen(setup):
    weak = model_probs(setup["truth"], 1.5, seed=4)
    ev = _two_families(setup, model_probs(setup["truth"], 0.05, seed=5), logistic_probs=weak)
    assert ev.values.truth["model:xgb"] - ev.values.truth["model:logistic"] > 0.01  # truly better
    choice = G.pick_champion(ev, ["logistic", "xgb"], setup["cfg"])
    assert choice.family == "xgb" and choice.comparisons[0]["ci_low"] > 0
    # order of the eligible list does not matter: the walk goes by preference_order
    assert G.pick_champion(ev, ["xgb", "logistic"], setup["cfg"]).family == "xgb"


def _with_ensemble(setup, ensemble_probs: np.ndarray, logistic_probs: np.ndarray | None = None) -> E.RunEvaluation:
    _, probs, _ = setup["evaluate"](setup["good"])
    return E.evaluate_run(setup["test"], {"logistic": probs if logistic_probs is None else logistic_probs,
                                          "ensemble": ensemble_probs},
                          FakeRules(), oracle=setup["oracle"], n_boot=30, compare_modes=False)


def test_ensemble_is_preferred_when_its_estimate_trails_logistic_within_noise(setup):
    """The ensemble is first in preference_order: an estimate 0.2 pp behind logistic's (same true value)
    neither hands the run to logistic (not superior) nor fails simpler_is_not_better on the point estimate."""
    assert setup["cfg"]["champion"]["preference_order"][:2] == ["ensemble", "logistic"]
    ev0, probs, _ = setup["evaluate"](setup["good"])
    pi = ev0.policies["model:logistic"][ev0.logged.rows]
    w = pi[np.arange(len(ev0.logged)), ev0.logged.action] / ev0.logged.propensity
    ev = _with_ensemble(setup, _shifted(probs, -0.002 / (1 - w.mean())))
    lift = ev.values.lift("model:logistic", "model:ensemble")
    assert lift["lift"] == pytest.approx(0.002, abs=1e-9) and lift["ci_low"] < 0
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={}, config=setup["cfg"])
    assert rep.champion_family == "ensemble"
    simpler = {r.gate: r for r in rep.results}["simpler_is_not_better"]
    assert simpler.passed and "model:logistic" not in simpler.details["rivals"]


def test_logistic_truly_superior_to_the_ensemble_is_chosen(setup):
    weak = model_probs(setup["truth"], 1.5, seed=4)
    ev = _with_ensemble(setup, weak, logistic_probs=model_probs(setup["truth"], 0.05, seed=5))
    assert ev.values.truth["model:logistic"] - ev.values.truth["model:ensemble"] > 0.01
    choice = G.pick_champion(ev, ["ensemble", "logistic"], setup["cfg"])
    assert choice.family == "logistic" and choice.comparisons[0]["richer"] == "logistic"
    assert choice.comparisons[0]["ci_low"] > 0
