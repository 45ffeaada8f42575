"""`smartrouter rules propose | diff | export | install` and the service's fallback by the installed table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eval_fakes import model_probs, split_frame, synthetic_log
from routing_fakes import RULE_ROWS, FakeModel, payment
from smartrouter import catalog
from smartrouter import rule_search as RS
from smartrouter.cli import main
from smartrouter.config import load_settings
from smartrouter.routing import Router, load_routing_config
from smartrouter.routing.service import ServiceDeps
from smartrouter.rules import RulesEngine

QUIET = {"exploration": {"enabled": False}, "health": {"probe_share": 0.0}}
# an "optimized" table that differs from RULE_ROWS everywhere it can: MXN -> MIT, USD -> ADYEN
OPTIMIZED = [
    {"RULE_ID": 1, "MERCHANT": "VOLARIS", "CURRENCY": "MXN", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "MIT", "PRIORITY": 1},
    {"RULE_ID": 2, "MERCHANT": "VOLARIS", "CURRENCY": "MXN", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ELAVON", "PRIORITY": 2},
    {"RULE_ID": 3, "MERCHANT": "VOLARIS", "CURRENCY": "USD", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ADYEN", "PRIORITY": 1},
    {"RULE_ID": 4, "MERCHANT": "VOLARIS", "CURRENCY": "USD", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ELAVON", "PRIORITY": 2},
]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    values = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_STATE_DIR": str(tmp_path / "state"),
              "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models"), "SMARTROUTER_RUNS_DIR": str(tmp_path / "runs")}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return load_settings(values)


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_inputs_are_one_line_errors(env, capsys):
    _one_line_error(capsys, ["rules", "propose", "--max-rows", "0"], "max rows 0", "--max-rows 25")
    _one_line_error(capsys, ["rules", "propose", "--segments", "CURRENCY,CARD_COUNTRY"], "unknown segment column", "CARD_COUNTRY")
    _one_line_error(capsys, ["rules", "propose"], "no promoted model", "smartrouter run")
    # a promoted model whose run left no logs behind
    (env.registry_dir / "v1").mkdir(parents=True)
    (env.registry_dir / "PROMOTED").write_text(json.dumps({"version": "v1"}))
    (env.registry_dir / "v1" / "version.json").write_text(json.dumps({"run_dir": str(env.runs_dir / "gone")}))
    _one_line_error(capsys, ["rules", "propose"], "no logs", "features.parquet")
    for action in (["diff"], ["export", "--shadow"], ["install"]):
        _one_line_error(capsys, ["rules", *action], "no proposal", "smartrouter rules propose")


@pytest.fixture(scope="module")
def proposal():
    frame, truth, _ = synthetic_log(n=20_000, eps=0.3, seed=5)
    frame = split_frame(frame)
    score = dict(zip(frame["CREATED_AT"], model_probs(truth, noise=0.3)))
    return RS.run(frame, lambda f: np.stack([score[t] for t in f["CREATED_AT"]]), RULE_ROWS)


def test_diff_export_install_from_a_saved_proposal(env, proposal, capsys, tmp_path):
    RS.save_proposal(proposal, env)
    assert main(["rules", "diff"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("proposal of") and "held-out DR lift" in out
    # exported rows (CSV, as a warehouse loader takes them) load into the engine unchanged
    target = tmp_path / "shadow.csv"
    assert main(["rules", "export", "--shadow", "--out", str(target)]) == 0
    rows = pd.read_csv(target)
    assert list(rows.columns) == list(catalog.RULE_COLUMNS) and len(rows) == len(proposal.proposal.rows)
    assert rows["SHADOW_MODE"].astype(str).str.lower().eq("true").all()
    merged = RulesEngine(pd.concat([pd.DataFrame(RULE_ROWS), rows], ignore_index=True))
    active = RulesEngine(proposal.proposal.rows)
    for cur in ("MXN", "USD"):
        for brand in ("VISA", "MASTERCARD"):
            for ctype in catalog.CARD_TYPES:
                assert merged.shadow(cur, brand, ctype) == active.ranked(cur, brand, ctype)
                assert merged.ranked(cur, brand, ctype) == RulesEngine(RULE_ROWS).ranked(cur, brand, ctype)
    assert main(["rules", "export", "--format", "json"]) == 0
    assert not any(r["SHADOW_MODE"] for r in json.loads(capsys.readouterr().out))
    assert main(["rules", "install"]) == 0
    engine, where = RS.load_optimized(env.registry_dir)
    assert engine is not None and "optimized" in where and len(engine) == len(proposal.proposal.rows)


def _service(env, treatment: float, **policy):
    over = {**QUIET, "experiment": {"treatment_share": treatment}, "policy": policy}
    return ServiceDeps(settings=env, routing_config=load_routing_config(overrides=over), rules=list(RULE_ROWS),
                       rules_from_warehouse=False, poll=False, seed_features=False, share_outcomes=False, seed=5).build()


def test_service_fallback_uses_the_installed_table_and_control_keeps_the_merchants(env):
    RS.install({"proposed_rows": RS._normalize(OPTIMIZED)}, env.registry_dir)
    svc = _service(env, 1.0, fallback_rules="optimized")  # no model promoted: every payment is a fallback
    assert any(n.startswith("fallback rules: optimized") for n in svc.notes)
    d = svc.router.decide(payment())
    assert d.chosen == "MIT" and "fallback by the optimized rule table" in d.reasons
    assert svc.router.decide(payment(CURRENCY="USD")).chosen == "ADYEN"
    control = _service(env, 0.0, fallback_rules="optimized").router.decide(payment())
    assert control.chosen == "WORLDPAY" and control.arm == "control"  # the A/B baseline does not move
    merchant = _service(env, 1.0).router.decide(payment())
    assert merchant.chosen == "WORLDPAY" and not any("optimized" in r for r in merchant.reasons)


def test_not_confident_model_falls_back_to_the_optimized_table():
    cfg = load_routing_config(overrides={**QUIET, "experiment": {"treatment_share": 1.0}})

    class Holder:
        from smartrouter.routing.model_holder import LoadedModel

        current = LoadedModel("v1", FakeModel({p: 0.1 for p in catalog.PROCESSORS}), None, 0.0, 0.0)

    router = Router(cfg, RulesEngine(RULE_ROWS), Holder(), seed=1)
    router.fallback_rules = RulesEngine(OPTIMIZED)
    d = router.decide(payment())
    assert d.source == "fallback" and d.fallback_reason == "not_confident" and d.chosen == "MIT"


def test_missing_or_broken_table_leaves_the_merchants_rules_and_says_so(env):
    svc = _service(env, 1.0, fallback_rules="optimized")
    assert any("no optimized table" in n and "merchant's rules" in n for n in svc.notes)
    assert svc.router.decide(payment()).chosen == "WORLDPAY"
    path = RS.optimized_path(env.registry_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert RS.load_optimized(env.registry_dir)[0] is None
    with pytest.raises(Exception, match="fallback_rules"):
        load_routing_config(overrides={"policy": {"fallback_rules": "newest"}})
