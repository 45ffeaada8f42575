"""bench/bench_scale.py's instrument (issue 18): it sees the memory of a whole process tree, attributes it
to the stage the runner says is running, and stops a tree that passes the memory guard instead of hanging."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time

import pytest

from smartrouter.config import REPO_ROOT

BENCH = REPO_ROOT / "bench"
MB = 1024**2


def _load_bench_scale():
    sys.path.insert(0, str(BENCH))  # it imports _targets from its own folder
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", BENCH / "bench_scale.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_scale"] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


# a parent that starts a child holding `mb` MB of touched memory for `hold` s, then lives 1 s without it
TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import numpy as np, time; a = np.ones({mb} * 2**20 // 8); print('ready', flush=True); time.sleep({hold})"],
    stdout=sys.stdout)
child.wait()
print('child gone', flush=True)
time.sleep(1)
"""


def _start_tree(mb: int, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TREE.format(mb=mb, hold=hold)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_sampler_counts_the_children_and_attributes_the_stage() -> None:
    bs = _load_bench_scale()
    proc = _start_tree(mb=300, hold=3.0)
    sampler = bs.TreeSampler(proc.pid, interval_s=0.05, max_rss=100 * 1024 * MB)
    sampler.set_stage("03_train")
    t = threading.Thread(target=sampler.run, daemon=True)
    t.start()
    assert proc.stdout.readline().strip() == "ready"
    assert proc.stdout.readline().strip() == "child gone"
    sampler.set_stage(bs.RUNNER)
    proc.wait(timeout=30)
    sampler.stop()
    t.join(timeout=5)
    # the 300 MB live in the grandchild: a sampler reading only the root would see ~10 MB
    assert sampler.peak_rss >= 300 * MB and sampler.peak_stage == "03_train"
    assert sampler.stages["03_train"].peak_processes == 2
    assert sampler.stages[bs.RUNNER].peak_rss < 200 * MB  # after the child: the parent's own interpreter only


def test_memory_guard_kills_the_whole_tree() -> None:
    bs = _load_bench_scale()
    proc = _start_tree(mb=300, hold=60.0)
    sampler = bs.TreeSampler(proc.pid, interval_s=0.05, max_rss=200 * MB)
    t = threading.Thread(target=sampler.run, daemon=True)
    t.start()
    start = time.monotonic()
    proc.wait(timeout=30)  # without the guard the tree would sleep 60 s
    sampler.stop()
    t.join(timeout=5)
    assert sampler.over_limit and time.monotonic() - start < 30
    assert proc.returncode == -9


@pytest.mark.parametrize("line, stage, what", [
    ("[07:28:08] 01_extract_eda: started", "01_extract_eda", "started"),
    ("[07:29:38] 02_features: ok (75.7 s)", "02_features", "ok"),
    ("[07:31:02] 03_train: FAILED: DeadKernelError: Kernel died", "03_train", "FAILED"),
])
def test_runner_lines_mark_stage_boundaries(line: str, stage: str, what: str) -> None:
    bs = _load_bench_scale()
    m = bs.STAGE_LINE.match(line)
    assert m and m["stage"] == stage and m["what"] == what
    assert bs.STAGE_LINE.match("run 20261203T072808Z: profile default, as of 2026-12-03, 6 stage(s) -> x") is None


def test_targets_are_the_issues() -> None:
    bs = _load_bench_scale()
    assert bs.TARGETS == {1.0: (6.0, 10.0), 10.0: (12.0, 45.0)}
