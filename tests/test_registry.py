"""Registry: versions, promote/force/rollback, atomic pointer under a concurrent reader, corruption detection, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from smartrouter.cli import main as cli_main
from smartrouter.config import load_settings
from smartrouter.errors import ArtifactError
from smartrouter.registry import Registry, RegistryError

from eval_fakes import export_logistic, split_frame, synthetic_log

GATES_OK = {"decision": "promoted", "reasons": ["all 7 gates passed"], "gates": [{"gate": "auc", "passed": True, "reason": "ok"}]}
GATES_BAD = {"decision": "rejected", "reasons": ["auc: heads below AUC 0.65: WORLDPAY 0.512"],
             "gates": [{"gate": "auc", "passed": False, "reason": "heads below AUC 0.65: WORLDPAY 0.512"}]}
METRICS = {"headline": {"policy_value": 0.83, "lift_vs_rules": 0.02, "auc": 0.71},
           "heads": [{"processor": "WORLDPAY", "n": 100, "auc": 0.7, "ece": 0.01}],
           "policy_value": {"summary": [{"policy": "static_rules", "estimate": 0.81, "ci_low": 0.8, "ci_high": 0.82, "true_value": 0.81}]}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with one exported (real, loadable) logistic serving form."""
    root = tmp_path_factory.mktemp("run") / "20260101T000000Z"
    frame, _, _ = synthetic_log(n=6000, eps=0.3, seed=5)
    export_logistic(split_frame(frame), root / "models" / "logistic")
    (root / "split.json").write_text(json.dumps({"train": ["2026-01-01", "2026-01-08"], "test": ["2026-01-11", "2026-01-15"]}))
    return root


@pytest.fixture()
def env(tmp_path, monkeypatch):
    for name, sub in (("SMARTROUTER_REGISTRY_DIR", "models"), ("SMARTROUTER_STATE_DIR", "state"),
                      ("SMARTROUTER_RUNS_DIR", "runs")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    return load_settings()


def test_register_promote_force_rollback(env, run_dir):
    reg = Registry(env)
    assert reg.promoted() is None
    v1 = reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="first model")
    v2 = reg.register(run_dir, "logistic", METRICS, GATES_BAD, status="rejected")
    v3 = reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="gates passed")
    assert (v1, v2, v3) == ("v1", "v2", "v3")
    assert reg.promoted()[0] == "v3"
    statuses = {r["version"]: r["status"] for r in reg.list()}
    assert statuses == {"v1": "retired", "v2": "rejected", "v3": "promoted"}
    # a rejected version is never served without force + reason
    with pytest.raises(RegistryError, match="--force"):
        reg.promote("v2", "looks fine")
    with pytest.raises(RegistryError, match="reason"):
        reg.promote("v2", "", force=True)
    assert reg.promoted()[0] == "v3"
    reg.promote("v2", "incident 42: WORLDPAY head fixed upstream", force=True)
    ptr = reg.pointer()
    assert ptr["version"] == "v2" and ptr["forced"] and "incident 42" in ptr["reason"]
    forced = [e for e in reg.history() if e["action"] == "force"]
    assert forced and forced[0]["reason"].startswith("incident 42")
    # rollback walks back through promotions: v2 -> v3 -> v1, then nothing left
    assert reg.rollback("bad forced model")["version"] == "v3"
    assert reg.rollback("again")["version"] == "v1"
    with pytest.raises(RegistryError, match="no earlier"):
        reg.rollback("too far")
    card = reg.show("v1")["card"]
    assert [e["event"] for e in card["rollout_history"]][:1] == ["promote"]
    assert card["training_window"]["train"] == ["2026-01-01", "2026-01-08"]
    assert card["inputs"]["n_features"] == 4 and card["intended_use"] and card["known_limits"]
    assert reg.show("v1")["integrity"]["ok"]
    with pytest.raises(RegistryError, match="does not exist"):
        reg.show("v9")
    with pytest.raises(RegistryError, match="not a version name"):
        reg.show("latest")


def test_corrupted_promoted_version_detected_at_verify_and_load(env, run_dir):
    reg = Registry(env)
    reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="first")
    reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="second")
    assert reg.load_promoted()[0] == "v2"
    weights = env.registry_dir / "v2" / "serving" / "weights.npz"
    blob = bytearray(weights.read_bytes())
    blob[100] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="weights.npz"):
        reg.verify("v2")
    with pytest.raises(ArtifactError, match="weights.npz"):
        reg.load_promoted()
    assert reg.show("v2")["integrity"]["ok"] is False
    # a corrupt version is never (re)promoted; rolling back away from it works
    with pytest.raises(ArtifactError):
        reg.promote("v2", "retry")
    assert reg.rollback("v2 corrupt")["version"] == "v1"
    # metrics/gates files are covered by the checksums too
    (env.registry_dir / "v1" / "gates.json").write_text("{}")
    with pytest.raises(ArtifactError, match="gates.json"):
        reg.verify("v1")


def test_version_allocation_safe_with_concurrent_writers(env, run_dir):
    reg = Registry(env)
    out: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(3):
                out.append(Registry(env).register(run_dir, "logistic", METRICS, GATES_OK))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(out, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 7)]
    assert reg.versions() == [f"v{i}" for i in range(1, 7)]
    assert not [p for p in env.registry_dir.iterdir() if p.name.startswith(".incoming")]


READER = textwrap.dedent("""
    import json, sys, time
    path, stop = sys.argv[1], sys.argv[2]
    import os
    seen, errors, reads = set(), 0, 0
    while not os.path.exists(stop):
        try:
            with open(path) as fh:
                seen.add(json.load(fh)["version"])
            reads += 1
        except FileNotFoundError:
            pass
        except Exception:
            errors += 1
    print(json.dumps({"seen": sorted(seen), "errors": errors, "reads": reads}))
""")


def test_rollback_atomic_under_concurrent_reader(env, run_dir, tmp_path):
    reg = Registry(env)
    reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="first")
    reg.register(run_dir, "logistic", METRICS, GATES_BAD, status="rejected")
    reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="second")
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", READER, str(reg.pointer_path), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for i in range(15):
            reg.rollback(f"drill {i}")
            reg.promote("v3", f"drill {i}")
    finally:
        stop.touch()
        stdout, _ = proc.communicate(timeout=30)
    result = json.loads(stdout)
    assert result["errors"] == 0 and result["reads"] > 50
    assert set(result["seen"]) <= {"v1", "v3"}  # never the rejected v2, never half a pointer
    assert reg.promoted()[0] == "v3"


def test_cli_list_show_promote_rollback(env, run_dir, capsys):
    reg = Registry(env)
    reg.register(run_dir, "logistic", METRICS, GATES_OK, status="promoted", reason="first")
    reg.register(run_dir, "logistic", METRICS, GATES_BAD, status="rejected")
    assert cli_main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["promoted"] == "v1" and [v["status"] for v in listing["versions"]] == ["promoted", "rejected"]
    assert cli_main(["models", "show", "v1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"]["heads"][0]["processor"] == "WORLDPAY"
    assert shown["metrics"]["policy_value"]["summary"][0]["policy"] == "static_rules"
    assert shown["card"]["gates"]["decision"] == "promoted"
    assert cli_main(["models", "list"]) == 0
    assert "* v1" in capsys.readouterr().out.replace("*  v1", "* v1").replace("* v1 ", "* v1")
    assert cli_main(["models", "promote", "v2"]) == 2
    err = capsys.readouterr().err
    assert "rejected" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["models", "promote", "v2", "--force"]) == 2
    capsys.readouterr()
    assert cli_main(["models", "promote", "v2", "--force", "--reason", "manual override for test"]) == 0
    assert "forced" in capsys.readouterr().out
    assert cli_main(["models", "rollback", "--reason", "undo"]) == 0
    assert "rolled back to v1" in capsys.readouterr().out
    assert cli_main(["models", "verify", "v1"]) == 0
    assert cli_main(["models", "show", "v7"]) == 2
