"""Benchmarks fail when a target is missed (issue 11, finding 5): one pass/fail helper
(bench/_targets.py) that every bench script reports through, and a non-zero exit on a miss."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from smartrouter.config import REPO_ROOT

BENCH = REPO_ROOT / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    sys.path.insert(0, str(BENCH))  # the bench scripts import _targets from their own folder
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_all_met_exits_0_any_miss_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    targets_mod = _load("_targets")
    t = targets_mod.Targets("demo")
    assert t.at_most("p99", 9.9, 10, "ms") and t.at_least("throughput", 2000, 2000, "req/s")
    assert t.report() == 0
    assert "all 2 target(s) met" in capsys.readouterr().out
    assert not t.at_most("p99 again", 10.01, 10, "ms")
    assert t.report() == targets_mod.EXIT_MISSED != 0
    out = capsys.readouterr().out
    assert "FAIL  p99 again <= 10 ms  (measured 10.01 ms)" in out and "1 of 3 target(s) NOT met" in out


def test_nan_missing_or_no_measurement_is_a_miss() -> None:
    targets_mod = _load("_targets")
    t = targets_mod.Targets("demo")
    assert not t.at_most("latency", math.nan, 1.0) and not t.at_least("rps", None, 1.0)
    assert t.exit_code() != 0
    assert targets_mod.Targets("empty").exit_code() != 0  # nothing measured never passes


def test_a_script_that_misses_exits_non_zero() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from _targets import Targets\n"
            "t = Targets('x'); t.at_most('p99', 2.0, 1.0, 'ms'); sys.exit(t.report())")
    res = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "NOT met" in res.stdout, res.stdout + res.stderr


def test_bench_serve_verdict_fails_on_each_missed_target() -> None:
    serve = _load("bench_serve")
    good_route = {"rps": 3400.0, "p99": 6.0, "non_2xx": 0}
    good_inproc = {"p99": 0.4}
    assert serve.verdict(good_route, good_inproc).exit_code() == 0
    for route, inproc in [({**good_route, "rps": 1999.0}, good_inproc), ({**good_route, "p99": 10.5}, good_inproc),
                          ({**good_route, "non_2xx": 3}, good_inproc), (good_route, {"p99": 1.2})]:
        assert serve.verdict(route, inproc).exit_code() != 0, (route, inproc)
    assert serve.BENCH_ROUTES_ENV == "SMARTROUTER_BENCH_ROUTES"  # the flag the service mounts /v1/constant on


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_every_bench_reports_through_the_helper(script: str) -> None:
    """A bench that prints its own verdict is how 'NOT met, exit 0' came about: all go through Targets."""
    src = (BENCH / script).read_text()
    assert "from _targets import Targets" in src and ".report()" in src, f"{script}: report targets via bench/_targets.py"
    assert "NOT met" not in src and "'PASS' if" not in src, f"{script}: prints its own verdict"
