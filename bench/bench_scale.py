"""How the daily run's memory and time grow with the merchant's size (issue 18).

    .venv/bin/python bench/bench_scale.py [--scales 1 2 10] [--work DIR] [--timeout-min 60]

For each scale s it builds a world of 84 days x (10,500 x s) attempts a day (seed 42) into a scratch
warehouse under --work (reused when a world of the same parameters is already there), runs the daily
run on it (`smartrouter run --profile default --no-reports`, runs/registry/state in the same scratch
folder, so the repository's own runs and models are never touched) as a subprocess, and samples every
--interval seconds the memory of the whole process tree: the runner, every stage's Jupyter kernel and
their children. It reports the peak of the tree's summed RSS (and summed PSS, which counts shared pages
once) for the whole run and per stage, attributed from the runner's "<stage>: started" lines, each
stage's wall time and the total, as a table, one JSON line and bench/results/bench_scale-<time>.json.

It measures the checkout it lives in: the child runs this checkout's notebooks (SMARTROUTER_HOME) and
package (its src/ first on PYTHONPATH), so a second clone measures other code with the same venv.

A run that does not fit never hangs: it is stopped at --timeout-min, or when the tree's RSS passes
--max-rss-gb (default 85 % of this machine's memory, so the kernel's OOM killer never has to pick a
process of someone else's), or dies by OOM; the report names the peak reached and the stage.
Targets (issue 18): peak RSS <= 6 GB and wall <= 10 min at 1x; peak <= 12 GB and wall <= 45 min at
10x; every run succeeds. Exits 1 when any target is missed (bench/_targets.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _targets import Targets

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
BASE_PER_DAY = 10_500  # the default world's attempts a day (WORLD.md); scale 1 is the default world
DAYS = 84
GB = 1024**3

# issue 18's targets per scale: (peak whole-tree RSS in GB, wall time in minutes); other scales are reported only
TARGETS: dict[float, tuple[float, float]] = {1.0: (6.0, 10.0), 10.0: (12.0, 45.0)}

# the runner's progress lines (pipeline.run_pipeline): "[07:31:02] 03_train: started" / ": ok (41.2 s)" / ": FAILED: ..."
STAGE_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<stage>\S+): (?P<what>started|ok|FAILED)")
RUNNER = "(runner)"  # samples outside any stage: start-up, manifest writes, lineage, retention


@dataclass
class StageMemory:
    """What the sampler saw while one stage (or the runner's own start/end) was running."""

    name: str
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    samples: int = 0
    started: float | None = None
    ended: float | None = None

    @property
    def wall_s(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started


@dataclass
class TreeSampler:
    """Samples the summed RSS/PSS of a process and all its descendants until stopped."""

    root_pid: int
    interval_s: float
    max_rss: int
    with_pss: bool = True
    stage: str = RUNNER
    stages: dict[str, StageMemory] = field(default_factory=dict)
    peak_rss: int = 0
    peak_pss: int = 0
    peak_stage: str = RUNNER
    over_limit: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def set_stage(self, name: str) -> None:
        now = time.monotonic()
        if self.stage in self.stages and self.stages[self.stage].ended is None:
            self.stages[self.stage].ended = now
        self.stage = name
        self.stages.setdefault(name, StageMemory(name)).started = now

    def sample(self) -> tuple[int, int, int]:
        """(summed RSS, summed PSS, processes) of the tree now; processes that exit mid-read are skipped."""
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0, 0
        rss = pss = 0
        for p in procs:
            try:
                if self.with_pss:
                    info = p.memory_full_info()  # reads smaps_rollup: PSS/USS cost a little more than RSS
                    rss += info.rss
                    pss += info.pss
                else:
                    rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:  # no smaps for this one: RSS still counts
                self.with_pss = False
                rss += p.memory_info().rss
        return rss, pss, len(procs)

    def run(self) -> None:
        while not self._stop.is_set():
            rss, pss, n = self.sample()
            stage = self.stages.setdefault(self.stage, StageMemory(self.stage, started=time.monotonic()))
            stage.samples += 1
            stage.peak_rss = max(stage.peak_rss, rss)
            stage.peak_pss = max(stage.peak_pss, pss)
            stage.peak_processes = max(stage.peak_processes, n)
            if rss > self.peak_rss:
                self.peak_rss, self.peak_stage = rss, self.stage
            self.peak_pss = max(self.peak_pss, pss)
            if rss > self.max_rss and not self.over_limit:
                self.over_limit = True
                _kill_tree(self.root_pid)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()

    def stage_before_end(self) -> str:
        """The stage running now, or the one that peaked once the runner has passed its last stage."""
        return self.stage if self.stage != RUNNER else self.peak_stage


def _kill_tree(pid: int) -> None:
    """SIGKILL the run's process group (the runner was started in its own session) and any stray child."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for k in kids:  # a kernel that left the group (setsid) still goes
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass


def scratch_env(base: Path, warehouse_dir: Path) -> dict[str, str]:
    """The child's environment: this checkout's notebooks and package, everything it writes under ``base``."""
    env = dict(os.environ)
    env.update(
        SMARTROUTER_HOME=str(REPO),
        SMARTROUTER_WAREHOUSE="local",
        SMARTROUTER_LOCAL_DIR=str(warehouse_dir),
        SMARTROUTER_RUNS_DIR=str(base / "runs"),
        SMARTROUTER_REPORTS_DIR=str(base / "reports"),
        SMARTROUTER_REGISTRY_DIR=str(base / "models"),
        SMARTROUTER_STATE_DIR=str(base / "state"),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
    )
    return env


def smartrouter_cli() -> list[str]:
    """The venv's console script beside this interpreter (PATH may hold another one)."""
    script = Path(sys.executable).with_name("smartrouter")
    if not script.exists():
        raise SystemExit(f"no smartrouter command beside {sys.executable}; run `make setup` and use .venv/bin/python")
    return [str(script)]


@dataclass
class Watched:
    """How a guarded subprocess ended, and what the sampler saw of its tree."""

    returncode: int
    wall_s: float
    timed_out: bool
    sampler: TreeSampler

    def outcome(self, timeout_min: float, max_rss_gb: float, error: str | None = None) -> str:
        if self.timed_out:
            return f"stopped after the {timeout_min:g} min timeout in {self.sampler.stage_before_end()}"
        if self.sampler.over_limit:
            return f"stopped by the {max_rss_gb:.1f} GB memory guard in {self.sampler.peak_stage}"
        if self.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return f"killed (SIGKILL: the OOM killer?) in {self.sampler.stage_before_end()}"
        if self.returncode != 0:
            return f"failed (exit {self.returncode}): {error or 'see its log'}"
        return "succeeded"


def watch(cmd: list[str], env: dict[str, str], log_path: Path, args: argparse.Namespace, first_stage: str = RUNNER) -> Watched:
    """Run ``cmd`` in its own session, its output into ``log_path``, sampling its tree; never outlives the limits."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group: a timeout kills kernels too
        sampler = TreeSampler(proc.pid, args.interval, int(args.max_rss_gb * GB), with_pss=not args.no_pss)
        sampler.set_stage(first_stage)
        sampling = threading.Thread(target=sampler.run, daemon=True)
        sampling.start()

        def follow() -> None:  # the runner's lines: stage boundaries for the sampler, everything into the log
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                m = STAGE_LINE.match(line.strip())
                if m and m["what"] == "started":
                    sampler.set_stage(m["stage"])
                elif m:
                    sampler.set_stage(RUNNER)
                    print(f"   {line.strip()}  [peak so far {sampler.peak_rss / GB:.2f} GB]", flush=True)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=args.timeout_min * 60)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc.pid)
            proc.wait()
        wall = time.monotonic() - t0
        reader.join(timeout=10)
        sampler.stop()
        sampling.join(timeout=10)
    return Watched(proc.returncode, wall, timed_out, sampler)


WORLD_BUILD = "(world build)"


def ensure_world(scale: float, per_day: int, args: argparse.Namespace, warehouse_dir: Path,
                 env: dict[str, str]) -> tuple[float | None, str, float]:
    """Build the world unless one of these parameters is already there: (build seconds or None if reused, outcome, peak GB)."""
    info_path = warehouse_dir / "world.json"
    if info_path.exists():
        try:
            params = json.loads(info_path.read_text()).get("params", {})
            if (params.get("per_day"), params.get("days"), params.get("seed"), str(params.get("end"))[:10]) == (
                per_day, DAYS, args.seed, args.end.isoformat()
            ):
                print(f"{scale:g}x: reusing the world in {warehouse_dir}")
                return None, "succeeded", 0.0
        except (OSError, ValueError):
            pass
    warehouse_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*smartrouter_cli(), "world", "build", "--days", str(DAYS), "--per-day", str(per_day),
           "--seed", str(args.seed), "--end", args.end.isoformat(), "--quiet"]
    print(f"{scale:g}x: building the world ({DAYS} days x {per_day:,}/day): {' '.join(cmd[-9:])}", flush=True)
    log_path = warehouse_dir.parent / "world_build.log"
    w = watch(cmd, env, log_path, args, first_stage=WORLD_BUILD)
    outcome = w.outcome(args.timeout_min, args.max_rss_gb, f"see {log_path}")
    last = (log_path.read_text().strip().splitlines() or [""])[-1]
    print(f"   {last}  [world build: {outcome}, peak {w.sampler.peak_rss / GB:.2f} GB]", flush=True)
    return w.wall_s, outcome, w.sampler.peak_rss / GB


def run_one(scale: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    per_day = round(BASE_PER_DAY * scale)
    base = work / f"x{scale:g}"
    warehouse_dir = base / "warehouse"
    env = scratch_env(base, warehouse_dir)
    record: dict[str, Any] = {"scale": scale, "days": DAYS, "per_day": per_day, "attempts": DAYS * per_day, "seed": args.seed}
    build_s, build_outcome, build_peak = ensure_world(scale, per_day, args, warehouse_dir, env)
    record.update(world_build_s=None if build_s is None else round(build_s, 1), world_build_peak_rss_gb=round(build_peak, 2))
    if build_outcome != "succeeded":
        return {**record, "outcome": f"world build {build_outcome}", "ok": False, "exit_code": None,
                "failed_stage": WORLD_BUILD, "wall_s": None, "peak_rss_gb": round(build_peak, 2), "peak_pss_gb": None,
                "peak_stage": WORLD_BUILD, "stages": [], "run_id": None, "quality": {}}
    for sub in ("runs", "reports", "models", "state"):  # every run starts as a first run: no champion, no old runs
        shutil.rmtree(base / sub, ignore_errors=True)
    cmd = [*smartrouter_cli(), "run", "--profile", args.profile, "--as-of", (args.end + dt.timedelta(days=1)).isoformat(),
           "--no-reports", "--reason", f"bench_scale {scale:g}x"]
    print(f"{scale:g}x: {' '.join(cmd[1:])} (timeout {args.timeout_min:g} min, memory guard {args.max_rss_gb:.1f} GB)",
          flush=True)
    log_path = base / "run.log"
    w = watch(cmd, env, log_path, args)
    sampler, wall = w.sampler, w.wall_s
    manifest = _manifest(base / "runs")
    outcome = w.outcome(args.timeout_min, args.max_rss_gb, (manifest or {}).get("error") or f"see {log_path}")
    failed_stage = (manifest or {}).get("failed_stage") or sampler.stage_before_end()
    stage_rows = []
    durations = {e["name"]: e.get("duration_s") for e in (manifest or {}).get("stages", [])}
    for s in sorted(sampler.stages.values(), key=lambda s: (s.name == RUNNER, s.name)):
        if s.name == RUNNER:  # everything outside the stages: the whole run's wall minus theirs
            seconds = wall - sum(r["wall_s"] for r in stage_rows)
        else:
            seconds = durations.get(s.name) if durations.get(s.name) is not None else (s.wall_s or 0.0)
        stage_rows.append({"stage": s.name, "wall_s": round(seconds, 1),
                           "peak_rss_gb": round(s.peak_rss / GB, 2), "peak_pss_gb": round(s.peak_pss / GB, 2),
                           "processes": s.peak_processes, "samples": s.samples})
    return {
        **record,
        "outcome": outcome, "ok": outcome == "succeeded", "exit_code": w.returncode,
        "failed_stage": failed_stage if outcome != "succeeded" else None,
        "wall_s": round(wall, 1), "peak_rss_gb": round(sampler.peak_rss / GB, 2),
        "peak_pss_gb": round(sampler.peak_pss / GB, 2), "peak_stage": sampler.peak_stage,
        "stages": stage_rows, "run_id": (manifest or {}).get("run_id"), "run_log": str(log_path),
        "quality": _quality(manifest, Path((manifest or {}).get("settings", {}).get("runs_dir", "")) / manifest["run_id"]
                            if manifest else None),
    }


def _manifest(runs_dir: Path) -> dict[str, Any] | None:
    found = sorted(runs_dir.glob("*/manifest.json")) if runs_dir.is_dir() else []
    try:
        return json.loads(found[-1].read_text()) if found else None
    except (OSError, ValueError):
        return None


def _quality(manifest: dict[str, Any] | None, run_dir: Path | None) -> dict[str, Any]:
    """The run's decision-quality numbers, to compare before/after a change: 03's and 04's recorded AUC, ECE,
    true values and shares of the oracle's gain, and every head's test AUC and ECE (evaluation.json)."""
    metrics = (manifest or {}).get("metrics") or {}
    keep = ("auc", "ece", "share", "true_value", "gain", "value_")
    out: dict[str, Any] = {f"{stage}.{k}": v for stage in ("03_train", "04_evaluate")
                           for k, v in sorted((metrics.get(stage) or {}).items())
                           if isinstance(v, (int, float)) and any(w in k.lower() for w in keep)}
    try:
        families = json.loads((run_dir / "evaluation.json").read_text())["families"] if run_dir else {}
        out["heads"] = {fam: {h["processor"]: {"auc": h.get("auc"), "ece": h.get("ece")} for h in f.get("heads", [])}
                        for fam, f in families.items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'scale':>5} {'attempts':>10} {'stage':<16} {'wall s':>8} {'peak RSS GB':>12} {'peak PSS GB':>12} {'procs':>6}")
    for r in results:
        for s in r["stages"]:
            print(f"{r['scale']:>4g}x {r['attempts']:>10,} {s['stage']:<16} {s['wall_s']:>8.1f} "
                  f"{s['peak_rss_gb']:>12.2f} {s['peak_pss_gb']:>12.2f} {s['processes']:>6}")
        print(f"{r['scale']:>4g}x {r['attempts']:>10,} {'whole run':<16} {_num(r['wall_s']):>8.1f} "
              f"{r['peak_rss_gb']:>12.2f} {_num(r['peak_pss_gb']):>12.2f} {'':>6}  {r['outcome']}; peak in {r['peak_stage']}")


def _num(value: float | None) -> float:
    return float("nan") if value is None else value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 10.0],
                    help="world sizes as multiples of the default world's 10,500 attempts a day (default 1 2 10)")
    ap.add_argument("--work", type=Path, help="scratch folder for the worlds and runs, kept (default: a temporary one, removed)")
    ap.add_argument("--timeout-min", type=float, default=60.0, help="stop a run after this many minutes (default 60)")
    ap.add_argument("--max-rss-gb", type=float, default=0.85 * psutil.virtual_memory().total / GB,
                    help="stop a run whose process tree's RSS passes this (default 85%% of this machine's memory)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples (default 0.5)")
    ap.add_argument("--no-pss", action="store_true", help="sample RSS only (PSS reads each process's smaps)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--end", type=dt.date.fromisoformat, default=dt.date.today() - dt.timedelta(days=1),
                    help="the worlds' last day (default yesterday); the run is as of the day after")
    ap.add_argument("--profile", default="default", help="the run's parameter profile (default default)")
    args = ap.parse_args(argv)

    scratch = args.work is None
    work = Path(tempfile.mkdtemp(prefix="bench-scale-")) if scratch else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for scale in args.scales:
            results.append(run_one(scale, args, work))
            r = results[-1]
            print(f"{scale:g}x: {r['outcome']} in {_num(r['wall_s']):.0f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
                  f"(PSS {_num(r['peak_pss_gb']):.2f} GB) in {r['peak_stage']}", flush=True)
    finally:
        if scratch:
            shutil.rmtree(work, ignore_errors=True)

    print_table(results)
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    record = {"bench": "bench_scale", "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "commit": git.stdout.strip() + ("+dirty" if dirty else ""), "cpus": os.cpu_count(),
              "memory_gb": round(psutil.virtual_memory().total / GB, 1), "profile": args.profile, "results": results}
    print(json.dumps(record))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"bench_scale-{dt.datetime.now():%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out}")

    targets = Targets("bench_scale")
    for r in results:
        targets.check(f"{r['scale']:g}x daily run succeeded", r["ok"],
                      r["outcome"] + (f" (peak {r['peak_rss_gb']:.2f} GB in {r['peak_stage']})" if not r["ok"] else ""))
        if r["scale"] in TARGETS:
            peak_gb, wall_min = TARGETS[r["scale"]]
            targets.at_most(f"{r['scale']:g}x peak RSS of the whole run", r["peak_rss_gb"], peak_gb, "GB")
            targets.at_most(f"{r['scale']:g}x wall time of the whole run", _num(r["wall_s"]) / 60, wall_min, "min")
    return targets.report()


if __name__ == "__main__":
    sys.exit(main())
