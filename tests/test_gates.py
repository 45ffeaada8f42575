"""Quality gates: a good first model promotes, a shuffled-label model is rejected with readable reasons,
a corrupted artifact fails completeness, the same model vs itself passes regression."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from smartrouter import evaluation as E
from smartrouter import gates as G
from smartrouter.errors import ConfigError
from smartrouter.models.serving import load_serving_model

from eval_fakes import FakeOracle, FakeRules, export_logistic, split_frame, synthetic_log

# small synthetic test window: intervals are wider than on the default world
FAST = {"policy_value": {"bootstrap": 120}, "stability": {"max_interval_width": 0.08}}


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
            "train_counts": train_counts, "cfg": cfg}


def test_config_file_holds_every_gate_threshold():
    cfg = G.load_config()
    for section in ("min_data", "auc", "regression", "stability", "completeness", "slices", "simpler"):
        assert section in cfg
    assert cfg["auc"]["min_auc"] == 0.65
    with pytest.raises(ConfigError, match="unknown"):
        G.load_config(overrides={"auc": {"nope": 1}})


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
    assert res["regression"].passed and abs(res["regression"].value) < 1e-12
    assert res["stability"].details["psi"] < 1e-9
    assert rep.decision == "promoted"


def test_shuffled_label_model_is_rejected_with_readable_reasons(setup):
    _, good_probs, _ = setup["evaluate"](setup["good"])
    ev, probs, unc = setup["evaluate"](setup["broken"])
    champ = G.Champion(version="v1", family="logistic", probs=good_probs)
    rep = G.run_gates(ev, train_counts=setup["train_counts"], serving_dirs={"logistic": setup["broken"]},
                      uncertain={"logistic": unc}, champion=champ, config=setup["cfg"])
    res = {r.gate: r for r in rep.results}
    assert rep.decision == "rejected"
    assert not res["auc"].passed and "below AUC 0.65" in res["auc"].reason
    assert not res["regression"].passed and "vs champion v1" in res["regression"].reason
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


def test_pick_champion_prefers_simpler_on_near_tie(setup):
    ev, probs, _ = setup["evaluate"](setup["good"])
    ev2 = E.evaluate_run(setup["test"], {"logistic": probs, "xgb": probs}, FakeRules(), n_boot=30, compare_modes=False)
    assert G.pick_champion(ev2, ["logistic", "xgb"], setup["cfg"]) == "logistic"
