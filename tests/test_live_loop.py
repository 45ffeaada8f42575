"""The live loop (`smartrouter live`): step order, resume after a crash, lock, bad input.

The fast tests drive `smartrouter.live.Loop` with a fake engine, pipeline, registry and service,
so the loop's own logic (what runs when, what is never run twice) is tested in milliseconds.
The slow test at the end runs the real engine on a small world in-process.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smartrouter import live as live_mod
from smartrouter.cli import main
from smartrouter.errors import ConfigError
from smartrouter.live import DEFAULT_PROFILE, LOOP_FILE, LoopDeps, LoopOptions, ReloadAnswer, Serving, run_loop
from smartrouter.pipeline import RunLock, RunLocked

FIRST = dt.date(2026, 3, 1)


class Crash(Exception):
    """A crash injected into one step (stands for a kill: nothing after it runs)."""


@dataclass
class FakeService(Serving):
    world: "FakeWorld"
    decisions_dir: Path
    client: Any = "client"
    version: str | None = None
    refuse: bool = False

    def serving_version(self) -> str | None:
        return self.version

    def reload(self) -> ReloadAnswer:
        self.world.events.append(("reload", self.world.promoted))
        if self.refuse:
            return ReloadAnswer(409, self.version, "checksum mismatch in model.bin")
        self.version = self.world.promoted
        return ReloadAnswer(200, self.version)

    def settle(self) -> None:
        pass

    def close(self) -> None:
        self.world.events.append(("close",))


@dataclass
class FakeWorld:
    """Engine + pipeline + registry + service in a few lists, with crashes injected by (step, call number)."""

    tmp: Path
    days: list[dt.date] = field(default_factory=list)  # the engine's completed days
    events: list[tuple] = field(default_factory=list)
    promoted: str | None = "v1"
    promote_on: set[dt.date] = field(default_factory=set)  # retrain as of these days promotes a new version
    crash: dict[str, int] = field(default_factory=dict)  # step -> crash on that call (1-based)
    crash_after: dict[str, int] = field(default_factory=dict)  # step -> crash right after that call did its work
    calls: dict[str, int] = field(default_factory=dict)
    refuse_reload: bool = False
    fail_run_on: set[dt.date] = field(default_factory=set)

    def _count(self, step: str) -> None:
        self.calls[step] = self.calls.get(step, 0) + 1
        if self.crash.get(step) == self.calls[step]:
            raise Crash(f"{step} crashed")

    def _after(self, step: str) -> None:
        if self.crash_after.get(step) == self.calls[step]:
            raise Crash(f"{step} died after its work")

    # engine
    def advance(self, settings, n, client, scenario, progress=None):
        assert n == 1 and client == "client"
        self._count("advance")
        day = (max(self.days) if self.days else FIRST - dt.timedelta(days=1)) + dt.timedelta(days=1)
        self.days.append(day)
        self.events.append(("advance", day))
        self._after("advance")
        return [{"day": day, "index": len(self.days), "orders": 100, "attempts": 120, "approved": 90,
                 "seconds": 0.1, "route_calls": 120, "p99_route_ms": 3.0, "model_versions": [str(self.promoted)]}]

    # pipeline
    def retrain(self, settings, *, profile, as_of, echo, render):
        self._count("retrain")
        self.events.append(("retrain", as_of, profile))
        status = "failed" if as_of - dt.timedelta(days=1) in self.fail_run_on else "succeeded"
        decision = None
        if status == "succeeded":
            decision = "promoted" if as_of in self.promote_on else "rejected"
            if decision == "promoted":
                self.promoted = f"v{int(self.promoted[1:]) + 1}" if self.promoted else "v1"
        manifest = {"run_id": f"run-{as_of}", "status": status, "as_of": as_of.isoformat(), "profile": profile,
                    "gate": {"decision": decision}, "model_version": self.promoted, "error": None}
        self._after("retrain")
        return type("Result", (), {"manifest": manifest})()

    def ship(self, directory, settings):
        self._count("ship")
        self.events.append(("ship",))
        return type("Ship", (), {"shipped": 240, "skipped_bad": 0})()

    def drop(self, settings, since):
        self.events.append(("drop", since))
        return 7

    def open_service(self, settings, options, live, echo):
        self.events.append(("open",))
        return FakeService(self, live / "decisions", version=self.promoted, refuse=self.refuse_reload)

    def deps(self) -> LoopDeps:
        return LoopDeps(live_dir=lambda s: self.tmp / "live", completed_days=lambda s: list(self.days),
                        advance=self.advance, first_day=lambda s: FIRST, load_scenario=lambda p: p.stem,
                        ship=self.ship, drop_decisions_since=self.drop, retrain=self.retrain,
                        promoted_version=lambda s: self.promoted, open_service=self.open_service)

    def steps(self) -> list[tuple]:
        return [e for e in self.events if e[0] in ("advance", "ship", "retrain", "reload", "drop")]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTROUTER_HOME", str(tmp_path))
    monkeypatch.setenv("SMARTROUTER_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path / "wh"))
    monkeypatch.setenv("SMARTROUTER_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def loop_file(world: FakeWorld) -> dict:
    return json.loads((world.tmp / "live" / LOOP_FILE).read_text())


def go(world: FakeWorld, **options) -> live_mod.LoopResult:
    lines: list[str] = []
    result = run_loop(LoopOptions(**options), deps=world.deps(), echo=lines.append)
    result.lines = lines  # type: ignore[attr-defined]
    return result


def cli(argv: list[str]) -> int:
    """`smartrouter` as a shell would see it: argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def day(n: int) -> dt.date:
    return FIRST + dt.timedelta(days=n - 1)


def test_each_day_runs_advance_ship_retrain_reload_in_order(env):
    w = FakeWorld(env, promote_on={day(3)})  # the run as of day 3 (after day 2) promotes v2
    r = go(w, days=3, retrain_profile="quick")
    assert w.steps() == [
        ("advance", day(1)), ("ship",), ("retrain", day(2), "quick"),
        ("advance", day(2)), ("ship",), ("retrain", day(3), "quick"), ("reload", "v2"),
        ("advance", day(3)), ("ship",), ("retrain", day(4), "quick"),
    ]
    assert w.events[-1] == ("close",)
    rec = loop_file(w)["loops"][0]
    assert rec["status"] == "finished" and r.finished and r.days_done_now == [str(day(i)) for i in (1, 2, 3)]
    assert [d["date"] for d in rec["day_records"]] == [str(day(i)) for i in (1, 2, 3)]
    assert all(d["complete"] and all(s["done"] and s["tries"] == 1 for s in d["steps"].values())
               for d in rec["day_records"])
    reload = rec["day_records"][1]["steps"]["reload"]
    assert {k: reload[k] for k in ("reloaded", "from", "to", "status")} == {"reloaded": True, "from": "v1", "to": "v2", "status": 200}
    assert not rec["day_records"][0]["steps"]["reload"]["reloaded"]  # nothing new promoted: no reload
    # the per-day line: orders, approval, seconds per step, version served, gate decision
    line = [ln for ln in r.lines if ln.startswith(f"day 2/3 {day(2)}  100 orders")][0]
    assert "approval 75.0 %" in line and "advance " in line and "retrain " in line
    assert "serving v2 (reloaded v1 -> v2)" in line and line.endswith("gate promoted")


def test_a_second_call_after_a_finished_loop_starts_a_new_one_after_the_last_day(env):
    w = FakeWorld(env)
    go(w, days=2)
    go(w, days=1)
    loops = loop_file(w)["loops"]
    assert [lp["status"] for lp in loops] == ["finished", "finished"]
    assert [d["date"] for d in loops[1]["day_records"]] == [str(day(3))]
    assert loops[0]["retrain_profile"] == DEFAULT_PROFILE  # the default


def test_crash_mid_advance_redoes_that_day_only_and_drops_its_shipped_decisions(env):
    w = FakeWorld(env, crash={"advance": 2})  # day 2 dies inside the engine (nothing of it completed)
    with pytest.raises(Crash):
        go(w, days=3)
    rec = loop_file(w)["loops"][0]
    assert rec["status"] == "failed" and [d["complete"] for d in rec["day_records"]] == [True, False]
    advance = rec["day_records"][1]["steps"]["advance"]
    assert (advance["done"], advance["tries"]) == (False, 1)
    w.events.clear()
    go(w)  # resume: no options needed, the recorded ones hold
    since = dt.datetime.combine(day(2), dt.time())
    assert w.steps() == [
        ("ship",), ("drop", since),  # the aborted try's decision log: shipped, then removed from the warehouse
        ("advance", day(2)), ("ship",), ("retrain", day(3), DEFAULT_PROFILE),
        ("advance", day(3)), ("ship",), ("retrain", day(4), DEFAULT_PROFILE),
    ]
    assert w.days == [day(1), day(2), day(3)]  # every day generated once
    rec = loop_file(w)["loops"][0]
    assert rec["status"] == "finished"
    assert rec["day_records"][1]["steps"]["advance"]["tries"] == 2
    assert rec["day_records"][1]["steps"]["advance"]["decision_rows_dropped"] == 7


def test_engine_done_but_loop_killed_before_recording_it_is_not_advanced_again(env):
    w = FakeWorld(env, crash_after={"advance": 1})  # the engine completed day 1, the loop died at once
    with pytest.raises(Crash):
        go(w, days=2)
    w.events.clear()
    go(w)
    assert w.steps()[:2] == [("ship",), ("retrain", day(2), DEFAULT_PROFILE)]  # no second advance of day 1
    assert w.days == [day(1), day(2)]
    adv = loop_file(w)["loops"][0]["day_records"][0]["steps"]["advance"]
    assert adv["recovered"] and adv["tries"] == 2 and adv["done"]


def test_crash_in_the_daily_run_resumes_at_the_run_not_before(env):
    w = FakeWorld(env, crash={"retrain": 1})
    with pytest.raises(Crash):
        go(w, days=1)
    w.events.clear()
    go(w)
    assert w.steps() == [("retrain", day(2), DEFAULT_PROFILE)]


def _started_long_ago(w: FakeWorld, where: tuple) -> None:
    """Move a step's recorded start back in time (a resume comes later than the try it resumes)."""
    data = loop_file(w)
    step = data["loops"][0]
    for key in where:
        step = step[key]
    step["started_at"] = step["first_started_at"] = "2000-01-01T00:00:00Z"
    (w.tmp / "live" / LOOP_FILE).write_text(json.dumps(data))


def _run_folder(env: Path, as_of: dt.date, **manifest) -> Path:
    folder = env / "runs" / "20990101T000000Z"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "run_id": folder.name, "as_of": str(as_of), "profile": DEFAULT_PROFILE, "started_at": "2000-01-01T00:00:05Z",
        "gate": {"decision": "rejected"}, "model_version": "v1", "error": None, **manifest}))
    return folder


def test_a_daily_run_that_finished_before_the_loop_died_is_adopted_not_rerun(env):
    w = FakeWorld(env, crash_after={"retrain": 1})
    with pytest.raises(Crash):
        go(w, days=1)
    # the run folder the pipeline left (what run_pipeline writes), started after the step's first try began
    _started_long_ago(w, ("day_records", 0, "steps", "retrain"))
    folder = _run_folder(env, day(2), status="succeeded")
    w.events.clear()
    go(w)
    assert w.steps() == []  # neither advance, ship nor retrain ran again; v1 still promoted: no reload
    retrain = loop_file(w)["loops"][0]["day_records"][0]["steps"]["retrain"]
    assert retrain["run_id"] == folder.name and retrain["recovered"] and retrain["gate_decision"] == "rejected"


def test_an_interrupted_run_folder_is_not_adopted(env):
    w = FakeWorld(env, crash_after={"retrain": 1})
    with pytest.raises(Crash):
        go(w, days=1)
    _started_long_ago(w, ("day_records", 0, "steps", "retrain"))
    _run_folder(env, day(2), status="failed", error="interrupted (Ctrl-C or SIGINT)")
    w.events.clear()
    go(w)
    assert w.steps() == [("retrain", day(2), DEFAULT_PROFILE)]


def test_a_refused_reload_is_reported_and_the_loop_goes_on(env):
    w = FakeWorld(env, promote_on={day(2)}, refuse_reload=True)
    r = go(w, days=2)
    reload = loop_file(w)["loops"][0]["day_records"][0]["steps"]["reload"]
    assert reload["status"] == 409 and not reload["reloaded"] and "checksum" in reload["error"]
    assert any("reload REFUSED (409): v2 not served, v1 goes on" in ln for ln in r.lines)
    assert r.finished


def test_a_failed_daily_run_is_recorded_and_the_loop_goes_on(env):
    w = FakeWorld(env, fail_run_on={day(1)})
    r = go(w, days=2)
    assert r.finished and r.failed_runs == [str(day(1))]
    assert loop_file(w)["loops"][0]["day_records"][0]["steps"]["retrain"]["gate_decision"] == "run failed"


def test_resuming_with_contradicting_options_is_refused_naming_the_recorded_ones(env):
    w = FakeWorld(env, crash={"advance": 2})
    with pytest.raises(Crash):
        go(w, days=3)
    with pytest.raises(ConfigError, match=r"started with days=3; run `smartrouter live` without those options.*--new"):
        go(w, days=5)
    w.events.clear()
    go(w, days=1, new=True)  # abandons the unfinished loop; the engine redoes day 2 for the new one
    loops = loop_file(w)["loops"]
    assert [lp["status"] for lp in loops] == ["abandoned", "finished"]
    assert [d["date"] for d in loops[1]["day_records"]] == [str(day(2))]


def test_nothing_promoted_first_runs_the_pipeline_so_day_one_is_served_by_a_model(env):
    w = FakeWorld(env, promoted=None, promote_on={day(1)})
    go(w, days=1)
    assert w.events[:2] == [("retrain", day(1), DEFAULT_PROFILE), ("open",)]
    assert loop_file(w)["loops"][0]["bootstrap"]["gate_decision"] == "promoted"


def test_a_bootstrap_cut_short_is_resumed_not_skipped(env):
    w = FakeWorld(env, promoted=None, promote_on={day(1)}, crash={"retrain": 1})
    with pytest.raises(Crash):
        go(w, days=1)
    assert loop_file(w)["loops"][0]["bootstrap"] | {"first_started_at": None, "started_at": None} == {
        "done": False, "tries": 1, "first_started_at": None, "started_at": None}
    w.events.clear()
    go(w)
    assert w.events[:2] == [("retrain", day(1), DEFAULT_PROFILE), ("open",)]
    assert loop_file(w)["loops"][0]["bootstrap"]["done"]


def test_another_loop_holding_the_lock_exits_3(env, monkeypatch, capsys):
    w = FakeWorld(env)
    monkeypatch.setattr(live_mod, "LoopDeps", w.deps)
    (env / "live").mkdir()
    with RunLock(env / "live") as lock:
        lock.set_holder("live loop", "2026-03-01T00:00:00Z")
        with pytest.raises(RunLocked):
            go(w, days=1)
        assert main(["live", "--days", "1"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another run is in progress: live loop" in err
    assert w.steps() == [] and not (env / "live" / LOOP_FILE).exists()


def test_the_service_a_killed_loop_left_running_is_stopped_first(env):
    import socket
    import subprocess
    import sys

    import psutil

    w = FakeWorld(env, crash={"advance": 1})
    with pytest.raises(Crash):
        go(w, days=1)
    # what a SIGKILLed loop leaves: loop.json naming its service (a process group leader, as `serve` is)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    data = loop_file(w)
    data["loops"][0]["service_process"] = {"pid": orphan.pid, "created": psutil.Process(orphan.pid).create_time(),
                                           "host": socket.gethostname(), "url": "http://127.0.0.1:1"}
    (env / "live" / LOOP_FILE).write_text(json.dumps(data))
    r = go(w)
    assert orphan.wait(5) is not None and r.finished
    assert any("stopping the service a previous loop left running" in ln for ln in r.lines)
    assert loop_file(w)["loops"][0]["service_process"] is None


def test_url_without_an_admin_token_is_refused_before_anything_runs(env, monkeypatch, capsys):
    w = FakeWorld(env)
    monkeypatch.setattr(live_mod, "LoopDeps", w.deps)
    monkeypatch.delenv("SMARTROUTER_ADMIN_TOKEN", raising=False)
    assert cli(["live", "--url", "http://127.0.0.1:8000"]) == 2
    assert "set SMARTROUTER_ADMIN_TOKEN" in capsys.readouterr().err
    assert w.events == [] and not (env / "live").exists()


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "--days 0: give a number of simulated days in 1..366"),
    (["--days", "x"], "'x' is not a whole number of days"),
    (["--url", "http://h:1", "--in-process"], "not allowed with argument"),
    (["--url", "ftp://h"], "give the service's base URL"),
    (["--retrain-profile", "nope"], "no such profile; use one of default, quick, live, prod"),
    (["--scenario", "no_such_scenario"], "no such file; give a scenario TOML file or one of"),
    (["--decisions-dir", "/tmp"], "--decisions-dir is for --url only"),
    (["--workers", "0"], "--workers 0: give 1..64"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(env, monkeypatch, capsys, args, message):
    w = FakeWorld(env)
    monkeypatch.setattr(live_mod, "LoopDeps", w.deps)
    assert cli(["live", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert w.events == [] and not (env / "live").exists()


def test_a_bad_scenario_file_is_named_exit_2_nothing_written(env, monkeypatch, capsys):
    from smartrouter.world.scenario import load_scenario

    w = FakeWorld(env)
    deps = w.deps()
    deps.load_scenario = load_scenario  # the real validation
    monkeypatch.setattr(live_mod, "LoopDeps", lambda: deps)
    bad = env / "bad.toml"
    bad.write_text('name = "bad"\n[[outage]]\nprocessor = "NOPE"\n')
    assert main(["live", "--scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.toml" in err
    assert w.events == [] and not (env / "live").exists()


def test_scenario_by_name_resolves_to_the_shipped_file():
    from smartrouter.world.scenario import SCENARIO_DIR

    assert live_mod.resolve_scenario_path("outage_storm") == SCENARIO_DIR / "outage_storm.toml"
    assert live_mod.resolve_scenario_path(None) == SCENARIO_DIR / "default.toml"


def test_the_services_routing_copy_runs_the_event_clock_and_keeps_everything_else(tmp_path):
    from smartrouter.routing.config import DEFAULT_PATH, load_routing_config

    src = tmp_path / "routing.toml"
    text = DEFAULT_PATH.read_text().replace("min_confidence = 0.30", "min_confidence = 0.42")
    src.write_text(text.replace('# "520473" = ["ELAVON", "WORLDPAY"]', '"520473" = ["ELAVON", "WORLDPAY"]'))
    copy = live_mod.event_clock_config(src, tmp_path / "copy.toml")
    original, copied = load_routing_config(src), load_routing_config(copy)
    assert original.health.clock == "wall" and copied.health.clock == "event"
    assert copied.policy == original.policy and copied.policy.min_confidence == 0.42
    assert copied.exploration == original.exploration and copied.experiment == original.experiment
    assert copied.bin_overrides == original.bin_overrides == {"520473": ("ELAVON", "WORLDPAY")}


# ------------------------------------------------------------------ the real engine, in process
class CrashingClient:
    """Passes ``calls`` route calls to the service, then dies (a kill in the middle of a day)."""

    def __init__(self, inner, calls: int) -> None:
        self.inner, self.left = inner, calls

    def route(self, requests):
        self.left -= 1
        if self.left < 0:
            raise Crash("killed mid-day")
        return self.inner.route(requests)

    def report(self, outcomes):
        self.inner.report(outcomes)

    def close(self):
        self.inner.close()


@pytest.mark.slow
def test_three_days_on_a_small_world_in_process_resume_after_a_kill_duplicates_nothing(tmp_path, monkeypatch):
    """Real engine, shipping, registry and in-process service (fake model); the daily run is a fake that
    promotes v2 after day 1 (the runner itself is tested in test_pipeline). Day 2 is killed midway."""
    import pandas as pd

    from routing_fakes import fake_loader, write_version
    from smartrouter import catalog, warehouse
    from smartrouter.config import load_settings
    from smartrouter.routing.shipping import TABLE
    from smartrouter.world import World, WorldParams
    from smartrouter.world import live as engine

    end = dt.date(2025, 6, 30)
    for name, sub in (("HOME", ""), ("LOCAL_DIR", "wh"), ("REGISTRY_DIR", "models"), ("RUNS_DIR", "runs"),
                      ("STATE_DIR", "state"), ("REPORTS_DIR", "reports")):
        monkeypatch.setenv(f"SMARTROUTER_{name}", str(tmp_path / sub))
    settings = load_settings()
    warehouse.write_world(World(WorldParams.small(days=7, per_day=1500, end=end)), settings, progress=False)
    write_version(settings.registry_dir, "v1", probs={"WORLDPAY": 0.70, "MIT": 0.82, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.60})
    runs: list[dt.date] = []

    def retrain(settings, *, profile, as_of, echo, render):
        runs.append(as_of)
        promoted = as_of == end + dt.timedelta(days=2)
        if promoted:
            write_version(settings.registry_dir, "v2", probs={"WORLDPAY": 0.72, "MIT": 0.80, "ELAVON": 0.76,
                                                              "AMEX": 0.86, "ADYEN": 0.61})
        manifest = {"run_id": f"fake-{as_of}", "status": "succeeded", "gate": {"decision": "promoted" if promoted else "rejected"},
                    "model_version": "v2" if promoted else None}
        return type("Result", (), {"manifest": manifest})()

    crash_after: list[int | None] = [None]

    def open_service(settings, options, live, echo):
        serving = live_mod.InProcessServing(settings, live, model_loader=fake_loader, seed_features=False, poll=False)
        if crash_after[0] is not None:
            serving.client = CrashingClient(serving.client, crash_after[0])
        return serving

    deps = LoopDeps(retrain=retrain, open_service=open_service)
    lines: list[str] = []
    # day 1 whole, then day 2 killed after 200 route calls (a few hours of the day)
    first = run_loop(LoopOptions(days=1, in_process=True), deps=deps, echo=lines.append)
    assert first.finished and engine.completed_days(settings) == [end + dt.timedelta(days=1)]
    crash_after[0] = 200
    with pytest.raises(Crash):
        run_loop(LoopOptions(days=2, in_process=True), deps=deps, echo=lines.append)
    crash_after[0] = None
    rec = json.loads((engine.live_dir(settings) / LOOP_FILE).read_text())["loops"][-1]
    assert rec["status"] == "failed" and rec["day_records"][0]["steps"]["advance"]["tries"] == 1
    # the aborted try's decisions reach the warehouse when the loop resumes, and are dropped there
    run_loop(LoopOptions(in_process=True), deps=deps, echo=lines.append)

    print("\n".join(lines))
    days = [end + dt.timedelta(days=i) for i in (1, 2, 3)]
    assert engine.completed_days(settings) == days
    assert runs == [d + dt.timedelta(days=1) for d in days]  # one daily run per day, none twice
    rec = json.loads((engine.live_dir(settings) / LOOP_FILE).read_text())["loops"][-1]
    assert rec["status"] == "finished" and [d["date"] for d in rec["day_records"]] == [str(d) for d in days[1:]]
    adv = rec["day_records"][0]["steps"]["advance"]
    assert adv["tries"] == 2 and adv["decision_rows_dropped"] > 0
    first_reload = json.loads((engine.live_dir(settings) / LOOP_FILE).read_text())["loops"][0]["day_records"][0]["steps"]["reload"]
    assert first_reload["reloaded"] and (first_reload["from"], first_reload["to"]) == ("v1", "v2")
    assert rec["day_records"][1]["steps"]["advance"]["summary"]["model_versions"] == ["v2"]

    summaries = {s.day: s for s in engine.read_days(settings)}
    truth = pd.concat([pd.read_parquet(engine.truth_path(settings, d)) for d in days])
    assert truth["ATTEMPT_ID"].is_unique and len(truth) == sum(summaries[d].attempts for d in days)
    with warehouse.connect(settings) as conn:
        duck = conn.raw._duck_conn
        ids, distinct = duck.execute(f"SELECT COUNT(*), COUNT(DISTINCT ATTEMPT_ID) FROM {catalog.ATTEMPTS_VIEW} "
                                     "WHERE CREATED_AT >= ?", [dt.datetime.combine(days[0], dt.time())]).fetchone()
        per_day = dict(duck.execute(f"SELECT CAST(CREATED_AT AS DATE), COUNT(*) FROM {TABLE} WHERE KIND = 'decision' "
                                    "GROUP BY 1").fetchall())
        dup = duck.execute(f"SELECT COUNT(*) - COUNT(DISTINCT REQUEST_ID) FROM {TABLE} WHERE KIND = 'decision'").fetchone()[0]
    assert ids == distinct == len(truth)
    # every route call of every day is in the shipped decision log once; none of the killed try's
    assert per_day == {d: summaries[d].route_calls for d in days} and dup == 0
    assert any(ln.startswith(f"day 2/2 {days[2]}") and "gate rejected" in ln for ln in lines)


@pytest.mark.slow
def test_one_short_day_over_http_starts_the_service_and_stops_it(tmp_path, monkeypatch):
    """`smartrouter serve` started by the loop (2 workers, event clock, own state dir), one day of a small
    world routed over HTTP, its decision log shipped whole, the service stopped at the end."""
    import psutil

    from smartrouter import warehouse
    from smartrouter.config import load_settings
    from smartrouter.routing.config import load_routing_config
    from smartrouter.routing.shipping import TABLE
    from smartrouter.world import World, WorldParams
    from smartrouter.world import live as engine

    for name, sub in (("HOME", ""), ("LOCAL_DIR", "wh"), ("REGISTRY_DIR", "models"), ("RUNS_DIR", "runs"),
                      ("STATE_DIR", "state"), ("REPORTS_DIR", "reports")):
        monkeypatch.setenv(f"SMARTROUTER_{name}", str(tmp_path / sub))
    settings = load_settings()
    warehouse.write_world(World(WorldParams.small(days=7, per_day=1500, end=dt.date(2025, 6, 30))), settings, progress=False)
    seen: dict[str, Any] = {}

    def retrain(settings, *, profile, as_of, echo, render):
        return type("Result", (), {"manifest": {"run_id": "fake", "status": "succeeded", "gate": {"decision": "rejected"}}})()

    def open_service(settings, options, live, echo):
        serving = live_mod.open_service(settings, options, live, echo)
        seen["pid"] = serving.process.pid
        seen["ready"] = live_mod.wait_ready(serving, 5)  # every worker answered 200
        return serving

    lines: list[str] = []
    r = run_loop(LoopOptions(days=1), deps=LoopDeps(retrain=retrain, open_service=open_service,
                                                    promoted_version=lambda s: None), echo=lines.append)
    assert r.finished and len(seen["ready"]) == 2  # two workers, each ready
    assert not psutil.pid_exists(seen["pid"]) or psutil.Process(seen["pid"]).status() == psutil.STATUS_ZOMBIE
    live = engine.live_dir(settings)
    assert load_routing_config(live / "service" / "routing.toml").health.clock == "event"
    # the workers shared outcomes (the pytest tmp path is too long for their sockets: a short link to it)
    assert "peer bus unavailable" not in (live / "service" / "serve.log").read_text()
    assert all(body["peers"] == 1 for body in seen["ready"].values())
    [summary] = engine.read_days(settings)
    with warehouse.connect(settings) as conn:
        decisions = conn.raw._duck_conn.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE KIND = 'decision'").fetchone()[0]
    assert decisions == summary.route_calls > 0
    assert json.loads((live / LOOP_FILE).read_text())["loops"][0]["service_process"] is None


def test_http_reload_reads_the_services_reload_answer_and_waits_for_every_worker(monkeypatch, tmp_path):
    """The answer's fields are serve/app.py's ReloadResponse (a renamed field would be read as None)."""
    import msgspec

    from smartrouter.cli.serve import import_app_module

    app = import_app_module()
    answers = {"/admin/reload": [(200, msgspec.to_builtins(app.ReloadResponse("loaded", "v3", None))),
                                 (409, msgspec.to_builtins(app.ReloadResponse("failed", "v3", "version v4 refused: bad checksum")))]}
    workers = iter([(200, {"worker": 1, "model_version": "v3"}), (200, {"worker": 2, "model_version": "v2"}),
                    (200, {"worker": 2, "model_version": "v3"})] * 3)

    def fake_get(url, timeout=5.0, token=None, method="GET"):
        path = url.split("127.0.0.1:1")[1]
        if path == "/admin/reload":
            assert token == "tok" and method == "POST"
            return answers[path].pop(0)
        return next(workers)

    monkeypatch.setattr(live_mod, "_get_json", fake_get)
    serving = live_mod.HttpServing("http://127.0.0.1:1", "tok", tmp_path, workers=2)
    assert serving.reload() == ReloadAnswer(200, "v3", None)  # after worker 2 followed
    assert serving.reload() == ReloadAnswer(409, "v3", "version v4 refused: bad checksum")
