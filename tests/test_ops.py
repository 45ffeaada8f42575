"""Operations views (ops/): the Prometheus alerting rules pass `promtool check rules`, and every metric the
rules and the Grafana dashboard name -- with every label they select on -- is exported by a live /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from litestar.testing import TestClient

from routing_fakes import body, write_version
from test_service import make_app

OPS = Path(__file__).resolve().parents[1] / "ops"
RULES = OPS / "prometheus" / "smartrouter-alerts.yml"
DASHBOARD = OPS / "grafana" / "smartrouter-dashboard.json"
SELECTOR = re.compile(r"\b(smartrouter_[a-z0-9_]+)(\{[^}]*\})?")
LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!=|!~|=)")


def _expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs


def test_promtool_accepts_the_alerting_rules():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `bash tests/ensure_promtool.sh` (make test does)"
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def _exported(text: str) -> dict[str, set[str]]:
    """{sample name: label names seen} from an exposition (HELP/TYPE lines count for labelled metrics
    with no sample yet; a histogram's TYPE stands for its _bucket/_sum/_count)."""
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",)):
                names.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?", line)
            labels = {kv.split("=")[0] for kv in re.findall(r'[a-z_]+="[^"]*"', m.group(3) or "")}
            names.setdefault(m.group(1), set()).update(labels)
    return names


def test_every_metric_and_label_the_views_name_is_exported(tmp_path):
    write_version(tmp_path / "models", "v1")
    with TestClient(make_app(tmp_path)) as c:
        rid = c.post("/v1/route", json=body(order_id="OPS-1")).json()["request_id"]
        c.post("/v1/outcomes", json={"processor": "WORLDPAY", "status": "APPROVED", "request_id": rid})
        for i in range(40):  # enough failures to take ELAVON DOWN: the transition counter gets its labels
            c.post("/v1/outcomes", json={"processor": "ELAVON", "status": "TIMEOUT", "order_id": f"T{i}"})
        c.get("/readyz")
        exported = _exported(c.get("/metrics").text)
    assert "to_state" in exported["smartrouter_processor_transitions_total"]  # ELAVON went DOWN: a labelled sample
    missing, bad_labels = [], []
    for expr in _expressions():
        for name, selector in SELECTOR.findall(expr):
            if name not in exported:
                missing.append(name)
                continue
            seen = exported[name]
            for label in LABEL.findall(selector or ""):
                if seen and label not in seen:
                    bad_labels.append(f"{name}{{{label}}}")
    assert not missing, f"named by ops/ but not exported: {sorted(set(missing))}"
    assert not bad_labels, f"labels not on the exported metric: {sorted(set(bad_labels))}"
    # the readiness gauge the NotReady alert reads is set by the probe
    assert "smartrouter_ready" in exported


@pytest.mark.parametrize("typo", ["smartrouter_outcome_total", "smartrouter_processor_states"])
def test_a_misspelled_metric_would_be_caught(typo, tmp_path):
    """The check above can fail: a name the service does not export is reported."""
    exported = {"smartrouter_outcomes_total": {"kind", "processor"}, "smartrouter_processor_state": {"processor", "state"}}
    assert [n for n, _ in SELECTOR.findall(f"sum(rate({typo}[5m]))") if n not in exported] == [typo]
