"""Canary rollout: config, intervals, every guardrail breach, the registry's record, the service across a restart, the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import msgspec
import pytest

from routing_fakes import RULE_ROWS, fake_loader, payment, write_version
from smartrouter.cli import main as cli_main
from smartrouter.config import load_settings
from smartrouter.errors import ConfigError
from smartrouter.registry import Registry
from smartrouter.routing import load_routing_config
from smartrouter.routing import rollout as R
from smartrouter.routing.experiment import TREATMENT
from smartrouter.routing.service import ServiceDeps

from eval_fakes import export_logistic, split_frame, synthetic_log

CFG = R.load_rollout_config()
QUIET = {"exploration": {"enabled": False}, "health": {"probe_share": 0.0}}


# ---------------------------------------------------------------- config and intervals
def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rollout.toml"
    p.write_text(text)
    return p


STAGES = """
[[stage]]
name = "c10"
share = 0.1
[[stage]]
name = "full"
share = 1.0
"""


def test_config_file_loads_and_is_strict(tmp_path):
    assert [s.name for s in CFG.stages] == ["shadow", "canary-10", "canary-50", "full-100"]
    assert CFG.stages[0].shadow and CFG.stages[-1].share == 1.0
    assert R.load_rollout_config(_write(tmp_path, STAGES)).stages[0].name == "c10"
    for text, match in (
        ("[rollout]\nenabeld = true\n" + STAGES, "unknown key.*enabeld"),
        ("[guardrails]\napproval_tolerance = \"2pp\"\n" + STAGES, "approval_tolerance.*must be a number"),
        ("[[stage]]\nname = \"a\"\nshare = 0.5\n[[stage]]\nname = \"b\"\nshare = 0.1\n[[stage]]\nname=\"c\"\nshare=1.0\n",
         "shares only grow"),
        ("[[stage]]\nname = \"a\"\nshare = 0.5\n", "last \\[\\[stage\\]\\] must route share = 1.0"),
        ("[[stage]]\nshare = 1.0\n", "missing key.*name"),
        ("[canary]\nx = 1\n" + STAGES, "unknown section"),
    ):
        with pytest.raises(ConfigError, match=match):
            R.load_rollout_config(_write(tmp_path, text))


def test_newcombe_interval_matches_the_published_values():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10 (95 %)
    for (k1, n1, k2, n2), (lo, hi) in (((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
                                       ((6, 7, 2, 7), (0.0582, 0.8062))):
        _, low, high = R.newcombe_interval(k1, n1, k2, n2, 0.95)
        assert abs(low - lo) < 5e-5 and abs(high - hi) < 5e-5  # the table's 4 decimals


# ---------------------------------------------------------------- guardrails on fake logs
def _record(stage_index: int = 1, **over) -> dict:
    rec = R.new_record("v2", "v1", CFG, "test", False)
    rec["stage_index"] = stage_index
    rec.update(over)
    return rec


class Log:
    """Decision and outcome records as the service writes them (only the fields the controller reads)."""

    def __init__(self, record: dict) -> None:
        self.record, self.decisions, self.outcomes, self.n = record, [], {}, 0

    def add(self, version: str, n: int, approval: float, *, timeout: float = 0.0, error: float = 0.0,
            latency: float = 1.0, chosen: str = "WORLDPAY", brand: str = "VISA", seed: int = 0, t0: float = 0.0,
            minutes: float = 600.0, canary_choice: str | None = None, stage: str | None = None) -> None:
        rng = random.Random(seed)
        stage = stage or R.current_stage(self.record)["name"]
        for i in range(n):
            self.n += 1
            rid = f"r{self.n}"
            self.decisions.append({
                "kind": "decision", "request_id": rid, "arm": TREATMENT, "model_version": version, "chosen": chosen,
                "eligible": ["AMEX"] if brand == "AMEX" else ["WORLDPAY", "MIT", "ELAVON"],
                "latency_ms": latency, "at": t0 + minutes * 60.0 * i / max(n - 1, 1), "rollout_id": self.record["id"],
                "rollout_stage": stage, "canary_choice": canary_choice,
                "canary_latency_ms": latency if canary_choice else None,
                "payment": {"CARD_BRAND": brand, "CURRENCY": "MXN", "NUM_ATTEMPTS_ORDER": 1}})
            u = rng.random()
            status = ("TIMEOUT" if u < timeout else "ERROR" if u < timeout + error
                      else "APPROVED" if rng.random() < approval else "DECLINED")
            self.outcomes[rid] = {"kind": "outcome", "request_id": rid, "status": status}

    def verdict(self) -> R.Verdict:
        return R.evaluate(self.record, R.tally_stage(self.record, self.decisions, self.outcomes))


def test_equal_versions_with_enough_traffic_advance():
    log = Log(_record())
    log.add("v1", 9000, 0.80, seed=1)
    log.add("v2", 1000, 0.80, seed=2)
    v = log.verdict()
    assert v.action == "advance", v.reasons
    a = v.checks["approval"]
    assert a["lower"] > -a["tolerance"] and a["lower"] < a["diff"] < a["upper"]


def test_approval_breach_rolls_back():
    log = Log(_record())
    log.add("v1", 3000, 0.80, seed=1)
    log.add("v2", 300, 0.60, seed=2)  # 20 pp worse: beyond doubt at 300 payments
    v = log.verdict()
    assert v.action == "rollback" and any(r.startswith("approval") for r in v.reasons), v.reasons


@pytest.mark.parametrize("kind", ["timeout", "error"])
def test_timeout_and_processor_error_breaches_roll_back(kind):
    log = Log(_record())
    log.add("v1", 3000, 0.80, seed=1, **{kind: 0.01})
    log.add("v2", 700, 0.80, seed=2, **{kind: 0.10})
    v = log.verdict()
    name = "timeout rate" if kind == "timeout" else "processor error rate"
    assert v.action == "rollback" and any(r.startswith(name) for r in v.reasons), v.reasons


def test_latency_breach_rolls_back():
    log = Log(_record())
    log.add("v1", 3000, 0.80, seed=1, latency=1.0)
    log.add("v2", 700, 0.80, seed=2, latency=3.0)  # 1.0 * 1.10 + 1.0 slack = 2.1 ms allowed
    v = log.verdict()
    assert v.action == "rollback" and any(r.startswith("latency") for r in v.reasons), v.reasons


def test_a_few_slow_decisions_are_not_a_latency_regression():
    log = Log(_record())
    log.add("v1", 2970, 0.80, seed=1, latency=1.0)
    log.add("v1", 30, 0.80, seed=2, latency=30.0)  # the champion's p99 sits at its pauses: 30 ms
    log.add("v2", 690, 0.80, seed=3, latency=1.0)
    log.add("v2", 10, 0.80, seed=4, latency=45.0)  # its p99 is 45 ms > 34 ms, but 10 of 700 (1.4 %) is no evidence of > 1 %
    v = log.verdict()
    lat = v.checks["latency_p99"]
    assert lat["canary_p99_ms"] > lat["limit_ms"] and lat["share_above_lower"] < 0.01
    assert v.action != "rollback" and not any(r.startswith("latency") for r in v.reasons), v.reasons


def test_one_eligibility_violation_rolls_back():
    log = Log(_record())
    log.add("v1", 3000, 0.80, seed=1)
    log.add("v2", 700, 0.80, seed=2)
    log.add("v2", 1, 0.80, seed=3, brand="AMEX", chosen="WORLDPAY")  # an Amex card sent to WORLDPAY
    v = log.verdict()
    assert v.action == "rollback" and v.checks["eligibility"]["violations"] == 1, v.reasons


def test_stage_minimums_hold_and_maximum_without_evidence_rolls_back():
    log = Log(_record())
    log.add("v1", 3000, 0.80, seed=1)
    log.add("v2", 100, 0.80, seed=2)
    assert log.verdict().action == "hold"
    log = Log(_record())
    log.add("v1", 3000, 0.80, seed=1, minutes=60)
    log.add("v2", 700, 0.80, seed=2, minutes=60)  # enough payments, too little time (min 240 min)
    v = log.verdict()
    assert v.action == "hold" and "min" in v.reasons[0]
    # a canary 2.5 pp worse: neither beyond doubt nor non-inferior at the stage's maximum payments
    log = Log(_record())
    log.add("v1", 12600, 0.80, seed=1)
    log.add("v2", 1400, 0.775, seed=2)
    v = log.verdict()
    a = v.checks["approval"]
    assert a["lower"] <= -a["tolerance"] <= a["upper"]  # (fixed seeds) the interval straddles the tolerance
    assert v.action == "rollback" and "stage maximum" in v.reasons[0]


def test_shadow_stage_checks_the_canary_choice_and_the_last_stage_completes():
    log = Log(_record(stage_index=0))
    log.add("v1", 2000, 0.80, seed=1)
    log.add("v1", 400, 0.80, seed=2, canary_choice="MIT")
    assert log.verdict().action == "advance"
    log.add("v1", 1, 0.80, seed=3, brand="AMEX", chosen="AMEX", canary_choice="ELAVON")
    assert log.verdict().action == "rollback"
    last = len(CFG.stages) - 1
    log = Log(_record(stage_index=last))
    log.add("v1", 500, 0.80, seed=1, stage="canary-50", latency=1.0)
    log.add("v2", 1200, 0.80, seed=2, latency=5.0)  # slower than the champion was hours ago: not comparable
    v = log.verdict()
    assert v.action == "complete" and "note" in v.checks["approval"] and "note" in v.checks["latency_p99"]


# ---------------------------------------------------------------- the registry's record and the controller
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "20260101T000000Z"
    frame, _, _ = synthetic_log(n=6000, eps=0.3, seed=5)
    export_logistic(split_frame(frame), root / "models" / "logistic")
    return root


GATES = {"decision": "promoted", "reasons": ["ok"], "gates": []}


@pytest.fixture()
def env(tmp_path, monkeypatch):
    for name, sub in (("SMARTROUTER_REGISTRY_DIR", "models"), ("SMARTROUTER_STATE_DIR", "state"),
                      ("SMARTROUTER_RUNS_DIR", "runs"), ("SMARTROUTER_HOME", "home")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    return load_settings()


def _write_log(settings, log: Log) -> None:
    folder = settings.state_dir / "decisions"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [msgspec.json.encode(r) for r in log.decisions] + [msgspec.json.encode(o) for o in log.outcomes.values()]
    (folder / f"decisions-{len(list(folder.iterdir()))}-1-0.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_controller_rolls_back_a_bad_canary_and_completes_a_good_one(env, run_dir):
    from smartrouter import lineage

    reg = Registry(env)
    reg.register(run_dir, "logistic", {}, GATES, status="promoted", reason="first")
    v2 = reg.register(run_dir, "logistic", {}, GATES, status="candidate")
    assert reg.promote_or_canary(v2, "gates passed")["status"] == "active"
    v3 = reg.register(run_dir, "logistic", {}, GATES, status="candidate")
    queued = reg.promote_or_canary(v3, "gates passed")  # one canary at a time: v3 waits as a candidate
    assert queued["queued"] == v3 and reg.history()[-1]["action"] == "canary_busy"
    ctl = R.Controller(env)
    record = reg.rollout()
    log = Log(record)
    log.add("v1", 2000, 0.8, seed=1, stage="shadow")
    log.add("v1", 400, 0.8, seed=2, stage="shadow", canary_choice="MIT")
    _write_log(env, log)
    assert ctl.step().applied == "advance" and reg.rollout()["stage_index"] == 1
    assert ctl.step().applied == "none"  # idempotent: the new stage has no traffic yet
    log = Log(reg.rollout())
    log.add("v1", 3000, 0.80, seed=3)
    log.add("v2", 300, 0.55, seed=4)
    _write_log(env, log)
    res = ctl.step()
    assert res.applied == "rollback" and "approval" in res.message
    assert reg.pointer()["version"] == "v1"  # the champion is untouched
    after = reg.rollout()
    assert after["status"] == "rolled_back" and "approval" in after["end_reason"]
    ev = [e for e in reg.history() if e["action"] == "canary_rollback"]
    assert ev and ev[0]["version"] == "v2" and "approval" in ev[0]["reason"]
    assert reg.show("v2")["version"]["status"] == "rolled_back"
    with lineage.connect(env) as db:
        rows = db.execute("SELECT action, reason FROM promotions WHERE version = 'v2'").fetchall()
    assert [r["action"] for r in rows][-1] == "canary_rollback" and "approval" in rows[-1]["reason"]
    with pytest.raises(R.RolloutError, match="already ended"):
        ctl.step()
    # the queued candidate rolls out next and passes every stage
    reg.start_canary(v3, "next")
    for _ in CFG.stages:
        rec = reg.rollout()
        stage = R.current_stage(rec)
        log = Log(rec)
        if stage["shadow"]:
            log.add("v1", 2000, 0.8, seed=5)
            log.add("v1", 400, 0.8, seed=6, canary_choice="MIT")
        else:
            n = int(stage["min_payments"] * 1.5) + 400
            log.add("v1", max(int(n * (1 - stage["share"]) / stage["share"]), 0) if stage["share"] < 1 else 0, 0.8, seed=7)
            log.add("v3", n, 0.8, seed=8)
        _write_log(env, log)
        res = ctl.step()
        assert res.applied in ("advance", "complete"), res.message
    assert res.applied == "complete" and reg.pointer()["version"] == "v3" and reg.rollout()["status"] == "completed"
    assert reg.show("v3")["version"]["status"] == "promoted"


def test_controller_lock_and_champion_change(env, run_dir):
    from filelock import FileLock

    reg = Registry(env)
    reg.register(run_dir, "logistic", {}, GATES, status="promoted", reason="first")
    v2 = reg.register(run_dir, "logistic", {}, GATES, status="candidate")
    reg.start_canary(v2, "test")
    ctl = R.Controller(env)
    with FileLock(str(reg.root / R.CONTROLLER_LOCK)):
        assert ctl.step().applied == "busy"  # two at once: the second does nothing
    reg.promote(v2, "by hand")  # someone moved the pointer: the rollout cannot go on beside the old champion
    res = ctl.step()
    assert res.applied == "abort" and "champion changed" in res.message and reg.rollout()["status"] == "aborted"


def test_degraded_copy_ranks_in_reverse(env, run_dir):
    from smartrouter.models.serving import load_serving_model

    reg = Registry(env)
    v1 = reg.register(run_dir, "logistic", {}, GATES, status="promoted", reason="first")
    bad = R.degraded_copy(reg, v1)
    assert reg.show(bad)["version"]["status"] == "rejected"
    good, worse = (load_serving_model(reg.version_dir(v) / "serving") for v in (v1, bad))
    frame, _, _ = synthetic_log(n=50, eps=0.3, seed=9)
    for row in frame.head(20).to_dict("records"):
        g, w = good.score(row), worse.score(row)
        assert sorted(g, key=g.get) == sorted(w, key=lambda p: -w[p])


# ---------------------------------------------------------------- the service: canary beside the champion, restart
def _service(tmp_path: Path, share: float = 1.0):
    env = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models")}
    over = {**QUIET, "experiment": {"treatment_share": share}}
    return ServiceDeps(settings=load_settings(env), routing_config=load_routing_config(overrides=over),
                       model_loader=fake_loader, rules=list(RULE_ROWS), rules_from_warehouse=False, poll=False,
                       seed_features=False, share_outcomes=False, features=None, seed=5).build()


def test_service_serves_the_canary_stage_and_keeps_it_across_a_restart(tmp_path):
    models = tmp_path / "models"
    write_version(models, "v1", probs={"WORLDPAY": 0.9, "MIT": 0.5, "ELAVON": 0.5, "AMEX": 0.9, "ADYEN": 0.4})
    write_version(models, "v2", probs={"WORLDPAY": 0.5, "MIT": 0.9, "ELAVON": 0.5, "AMEX": 0.9, "ADYEN": 0.4}, promote=False)
    record = R.new_record("v2", "v1", CFG, "test", False)
    record["stage_index"] = 1  # canary-10
    R.write_rollout(models, record)
    svc = _service(tmp_path, share=0.5)
    assert svc.holder.canary.loaded.version == "v2" and svc.holder.status.canary.startswith("v2 canary-10")
    orders = [f"O{i}" for i in range(4000)]
    first = {o: svc.router.decide(payment(ORDER_ID=o)) for o in orders}
    treat = [d for d in first.values() if d.arm == TREATMENT]
    on_canary = [d for d in treat if d.model_version == "v2"]
    assert all(d.chosen == "MIT" for d in on_canary) and all(d.rollout_stage == "canary-10" for d in treat)
    assert all(d.rollout_id is None for d in first.values() if d.arm != TREATMENT)
    # ~10 % of the model arm: binomial 4.5 sigma, and independent of the A/B arm's salt
    n, k = len(treat), len(on_canary)
    assert abs(k - 0.1 * n) < 4.5 * math.sqrt(n * 0.1 * 0.9)
    # a restart (a new service on the same registry) serves the same stage to the same orders
    again = _service(tmp_path, share=0.5)
    assert all(again.router.decide(payment(ORDER_ID=o, NUM_ATTEMPTS_ORDER=2)).model_version == first[o].model_version
               for o in orders[:500])
    # the controller moves the stage: a reload follows it without reloading the model
    model_before = again.holder.canary.loaded.model
    record["stage_index"] = 2
    R.write_rollout(models, record)
    again.holder.reload()
    assert again.holder.canary.stage == "canary-50" and again.holder.canary.loaded.model is model_before
    # ended: the canary is dropped; completed: the pointer names it and it is swapped in without a load
    record["status"] = "rolled_back"
    R.write_rollout(models, record)
    again.holder.reload()
    assert again.holder.canary is None and again.router.decide(payment(ORDER_ID="O1")).rollout_id is None


def test_a_canary_that_fails_to_load_leaves_the_champion_serving(tmp_path):
    models = tmp_path / "models"
    write_version(models, "v1")
    write_version(models, "v2", broken=True, promote=False)
    R.write_rollout(models, R.new_record("v2", "v1", CFG, "test", False) | {"stage_index": 2})
    svc = _service(tmp_path)
    assert svc.holder.canary is None and "canary v2 refused" in svc.holder.status.canary_error
    assert {svc.router.decide(payment(ORDER_ID=f"O{i}")).model_version for i in range(200)} == {"v1"}


def test_shadow_stage_logs_the_canary_choice_and_routes_by_the_champion(tmp_path):
    models = tmp_path / "models"
    write_version(models, "v1", probs={"WORLDPAY": 0.9, "MIT": 0.5, "ELAVON": 0.5, "AMEX": 0.9, "ADYEN": 0.4})
    write_version(models, "v2", probs={"WORLDPAY": 0.5, "MIT": 0.9, "ELAVON": 0.5, "AMEX": 0.9, "ADYEN": 0.4}, promote=False)
    R.write_rollout(models, R.new_record("v2", "v1", CFG, "test", False))
    svc = _service(tmp_path)
    ds = [svc.router.decide(payment(ORDER_ID=f"O{i}")) for i in range(1000)]
    shadowed = [d for d in ds if d.canary_choice is not None]
    assert all(d.chosen == "WORLDPAY" and d.model_version == "v1" for d in ds)
    assert shadowed and all(d.canary_choice == "MIT" and d.canary_latency_ms > 0 for d in shadowed)
    rec = shadowed[0].record(payment())
    assert rec["rollout_stage"] == "shadow" and rec["canary_choice"] == "MIT"


# ---------------------------------------------------------------- the CLI: bad inputs are one line, exit 2
def test_cli_bad_inputs_exit_2(env, run_dir, capsys):
    assert cli_main(["rollout", "advance"]) == 2
    assert "no rollout to advance" in capsys.readouterr().err
    assert cli_main(["rollout", "abort"]) == 2
    assert "no rollout has been started" in capsys.readouterr().err
    reg = Registry(env)
    reg.register(run_dir, "logistic", {}, GATES, status="promoted", reason="first")
    assert cli_main(["rollout", "start", "v9"]) == 2
    assert "v9 does not exist" in capsys.readouterr().err
    bad = reg.register(run_dir, "logistic", {}, {"decision": "rejected", "reasons": ["auc"]}, status="rejected")
    assert cli_main(["rollout", "start", bad]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["rollout", "start", bad, "--force"]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert cli_main(["rollout", "start", bad, "--force", "--reason", "drill", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rollout"]["stage"] == "shadow"
    assert cli_main(["rollout", "status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rollout"]["status"] == "active" and out["verdict_now"]["action"] == "hold"
    assert cli_main(["rollout", "abort", "--reason", "drill over"]) == 0
    capsys.readouterr()
    assert cli_main(["rollout", "advance"]) == 2
    assert "already ended (aborted" in capsys.readouterr().err
    assert reg.pointer()["version"] == "v1" and reg.show(bad)["version"]["status"] == "candidate"


# ---------------------------------------------------------------- the live loop: the controller between batches
def test_live_loop_runs_the_controller_every_check_period_of_event_time(tmp_path, monkeypatch):
    from smartrouter.live import ReloadAnswer, RolloutPacer

    settings = load_settings({"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models")})
    record = R.new_record("v2", "v1", CFG, "test", False)
    R.write_rollout(settings.registry_dir, record)

    class Client:
        def route(self, bodies):
            return [{"chosen": "WORLDPAY"} for _ in bodies]

        def report(self, outcomes):
            return None

    class Serving:
        client, decisions_dir = Client(), tmp_path / "decisions"
        reloads = settles = 0

        def settle(self):
            Serving.settles += 1

        def reload(self):
            Serving.reloads += 1
            return ReloadAnswer(200, "v1")

    looks: list[float] = []
    monkeypatch.setattr(R.Controller, "step", lambda self, apply=True: looks.append(1) or R.StepResult(
        "advance", R.read_rollout(settings.registry_dir), None, "fake"))
    lines: list[str] = []
    pacer = RolloutPacer(Serving(), settings, lines.append)
    assert CFG.check_minutes == 120
    for minute in range(0, 10 * 60, 15):  # batches every 15 event minutes from 00:00 to 09:45
        assert len(pacer.route([{"created_at": f"2026-12-03T{minute // 60:02d}:{minute % 60:02d}:00"}])) == 1
    assert len(looks) == 4 and Serving.reloads == 4 and Serving.settles == 4  # at 02:00, 04:00, 06:00, 08:00
    assert [e["event_time"] for e in pacer.day_record()["events"]] == ["02:00", "04:00", "06:00", "08:00"]
    assert "advanced to" in lines[0]
    record["status"] = "rolled_back"  # once it ended, a look costs one file read and nothing else
    R.write_rollout(settings.registry_dir, record)
    pacer.route([{"created_at": "2026-12-03T10:00:00"}])
    assert len(looks) == 4


def test_readyz_names_the_canary_a_worker_serves(tmp_path):
    from litestar.testing import TestClient

    from smartrouter.cli.serve import import_app_module

    models = tmp_path / "models"
    write_version(models, "v1")
    write_version(models, "v2", promote=False)
    R.write_rollout(models, R.new_record("v2", "v1", CFG, "test", False) | {"stage_index": 1})
    env = {"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_REGISTRY_DIR": str(models)}
    app = import_app_module().create_app(load_settings(env), routing_config=load_routing_config(overrides=QUIET),
                                         model_loader=fake_loader, rules=list(RULE_ROWS), rules_from_warehouse=False,
                                         poll=False, seed_features=False, share_outcomes=False, seed=5)
    with TestClient(app) as c:
        body = c.get("/readyz").json()
    assert body["model_version"] == "v1" and body["canary"].startswith("v2 canary-10") and body["canary_error"] is None
