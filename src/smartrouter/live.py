"""The live loop: the world moves on day by day, the routing service routes it, the daily run learns.

For each simulated day, four steps in this order:

1. ``advance`` — the world engine (`smartrouter.world.live.advance`) generates the day after the
   warehouse's last complete day, every attempt routed by the service; the day is atomic there.
2. ``ship`` — the service's decision log is loaded into the warehouse (`smartrouter decisions ship`).
3. ``retrain`` — the daily pipeline (`smartrouter run`, the same notebooks and gates) runs as of the
   next day with the loop's retrain profile.
4. ``reload`` — when the registry's promoted version differs from what the service serves, the
   service is hot-reloaded (``POST /admin/reload``); a refusal (409) is reported, never fatal.

``<live dir>/loop.json`` records, per loop and per day, which steps are done (written atomically
after every step). A crash or Ctrl-C resumes at the first step not done: a finished step is never
run again and an unfinished one never skipped. Where a step finished but the record did not reach
the disk, the loop finds the evidence instead of redoing it (the engine's truth file for
``advance``, a succeeded run folder for ``retrain``). A day whose ``advance`` was cut short is
redone by the engine; the decision-log rows that attempt already put in the warehouse are removed
first, so nothing of it is counted twice.

A file lock in the live dir (the pipeline's `RunLock`) keeps two loops apart; the second exits 3.

While a canary rollout is active (`smartrouter.routing.rollout`), the loop runs its controller
between the engine's batches every ``[rollout] check_minutes`` of event time (`RolloutPacer`), so a
bad canary is rolled back within hours of simulated time, not at the end of the day, and tells
the service to follow a stage change at once. Each day's rollout events and stages are recorded
in its ``advance`` step (and shown in the live report). ``--no-retrain`` skips the daily run
(a loop that only serves what the registry holds, e.g. a rollout drill).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartrouter import atomic
from smartrouter.config import REPO_ROOT, Settings, load_settings
from smartrouter.errors import ConfigError, SmartrouterError

LOOP_FILE = "loop.json"
LOOP_FORMAT = 1
STEPS: tuple[str, ...] = ("advance", "ship", "retrain", "reload")
DEFAULT_DAYS = 14
DEFAULT_PROFILE = "live"  # profiles.toml [live.*]: the 7-day test window the gates need, ~2 min per day on 2 cores
DEFAULT_WORKERS = 2
SERVICE_DIR = "service"  # under the live dir: the started service's routing.toml, state dir and log
READY_TIMEOUT_S = 300.0  # seeding the online features of the default world takes well under a minute
RELOAD_SPREAD_S = 30.0  # how long the other workers get to follow a reload (they also poll every 5 s)
STOP_GRACE_S = 30.0  # SIGTERM, then SIGKILL after this long


class LoopError(SmartrouterError):
    """The loop cannot go on (names the step, the cause and the fix); exit 1."""

    exit_code = 1


# ------------------------------------------------------------------ options
@dataclass(frozen=True)
class LoopOptions:
    """What `smartrouter live` was asked for; None = the recorded value when resuming, else the default."""

    days: int | None = None
    scenario: str | None = None  # a TOML path or a name in scenarios/ (default: scenarios/default.toml)
    retrain_profile: str | None = None
    url: str | None = None  # a running service instead of starting one
    in_process: bool = False  # the in-process router (tests, quick checks): no HTTP
    workers: int = DEFAULT_WORKERS
    decisions_dir: Path | None = None  # with --url: where that service writes its decision log
    new: bool = False  # abandon an unfinished loop instead of resuming it
    render: bool = True  # the daily run's HTML reports
    retrain: bool = True  # False: the retrain step is skipped (recorded as such); the registry is served as it is


def resolve_scenario_path(text: str | None) -> Path:
    """A scenario argument as a file: a path, or a bare name of a file in scenarios/ (``outage_storm``)."""
    from smartrouter.world.scenario import SCENARIO_DIR

    if text is None:
        return SCENARIO_DIR / "default.toml"
    path = Path(text).expanduser()
    if not path.exists() and path.parent == Path(".") and path.suffix == "":
        named = SCENARIO_DIR / f"{text}.toml"
        if named.exists():
            return named
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
        raise ConfigError(f"--scenario {text}: no such file; give a scenario TOML file or one of {shipped}")
    return path.resolve()


def check_options(options: LoopOptions) -> None:
    """Refuse bad options before anything is written (ConfigError, exit 2)."""
    if options.days is not None and not 1 <= options.days <= 366:
        raise ConfigError(f"--days {options.days}: give a number of simulated days in 1..366")
    if options.url and options.in_process:
        raise ConfigError("--url and --in-process exclude each other: route through a running service or in this process")
    if options.url and not options.url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {options.url}: give the service's base URL, e.g. http://127.0.0.1:8000")
    if options.decisions_dir is not None and not options.url:
        raise ConfigError("--decisions-dir is for --url only: a service the loop starts writes its log in the live dir")
    if not 1 <= options.workers <= 64:
        raise ConfigError(f"--workers {options.workers}: give 1..64 service worker processes")
    if options.retrain_profile is not None:
        from smartrouter.pipeline import load_profiles

        names = load_profiles()
        if options.retrain_profile not in names:
            raise ConfigError(f"--retrain-profile {options.retrain_profile}: no such profile; use one of {', '.join(names)}")


# ------------------------------------------------------------------ loop.json
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_loop_file(live: Path) -> dict[str, Any]:
    """The loop record (an empty one when there is none); LoopError when it is unreadable."""
    path = live / LOOP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": LOOP_FORMAT, "loops": []}
    except (OSError, ValueError) as exc:
        raise LoopError(f"{path} is unreadable ({exc}); move it aside to start a new loop (the warehouse keeps the days)") from None
    if not isinstance(data, dict) or data.get("format") != LOOP_FORMAT or not isinstance(data.get("loops"), list):
        raise LoopError(f"{path} is not a loop record of format {LOOP_FORMAT}; move it aside to start a new loop")
    return data


def _new_day(date: dt.date, index: int) -> dict[str, Any]:
    return {"date": date.isoformat(), "index": index, "complete": False,
            "steps": {name: {"done": False, "tries": 0} for name in STEPS}}


# ------------------------------------------------------------------ what the loop drives
@dataclass
class ReloadAnswer:
    """What a hot reload answered: HTTP-like status (200 served, 409 refused), the version serving, why."""

    status: int
    version: str | None
    error: str | None = None


class Serving:
    """A service the loop routes through: a router client, what it serves, a hot reload."""

    client: Any
    decisions_dir: Path

    def serving_version(self) -> str | None:
        raise NotImplementedError

    def settle(self) -> None:
        """Wait until the decision log holds every decision made so far (before shipping a day)."""
        _settle_decision_log(self.decisions_dir)

    def reload(self) -> ReloadAnswer:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@dataclass
class LoopDeps:
    """The loop's collaborators; every field defaults to the real one (tests pass fakes)."""

    live_dir: Callable[[Settings], Path] | None = None
    completed_days: Callable[[Settings], list[dt.date]] | None = None
    advance: Callable[..., list[Any]] | None = None
    first_day: Callable[[Settings], dt.date] | None = None  # the day after the world's last day
    load_scenario: Callable[[Path], Any] | None = None
    ship: Callable[[Path, Settings], Any] | None = None
    drop_decisions_since: Callable[[Settings, dt.datetime], int] | None = None
    retrain: Callable[..., Any] | None = None
    promoted_version: Callable[[Settings], str | None] | None = None
    open_service: Callable[[Settings, LoopOptions, Path, Callable[[str], None]], Serving] | None = None

    def resolved(self) -> LoopDeps:
        engine: Any = None
        if None in (self.live_dir, self.completed_days, self.advance):
            from smartrouter.world import live as engine
        return dataclasses.replace(
            self,
            live_dir=self.live_dir or engine.live_dir,
            completed_days=self.completed_days or engine.completed_days,
            advance=self.advance or engine.advance,
            first_day=self.first_day or world_first_live_day,
            load_scenario=self.load_scenario or _load_scenario,
            ship=self.ship or _ship,
            drop_decisions_since=self.drop_decisions_since or drop_decisions_since,
            retrain=self.retrain or _retrain,
            promoted_version=self.promoted_version or _promoted_version,
            open_service=self.open_service or open_service,
        )


def _load_scenario(path: Path) -> Any:
    from smartrouter.world.scenario import load_scenario

    return load_scenario(path)


def world_first_live_day(settings: Settings) -> dt.date:
    """The day after the local world's last day (the engine's day 1)."""
    from smartrouter import warehouse

    info = warehouse.load_world_info(settings)
    last = info.get("last_day") or info.get("params", {}).get("end")
    if not last:
        raise LoopError(f"{warehouse.world_file(settings)} names no last day; rebuild the world with `make world`")
    return dt.date.fromisoformat(str(last)[:10]) + dt.timedelta(days=1)


def _ship(directory: Path, settings: Settings) -> Any:
    from smartrouter.routing.shipping import ship

    directory.mkdir(parents=True, exist_ok=True)  # nothing logged yet is an empty load, not an error
    return ship(directory, settings=settings)


def drop_decisions_since(settings: Settings, since: dt.datetime, conn: Any = None) -> int:
    """Remove the shipped decision-log rows stamped at or after ``since`` (an aborted day's); returns how many."""
    from smartrouter import warehouse

    if conn is None:
        with warehouse.connect(settings, read_only=False) as own:
            return drop_decisions_since(settings, since, own)
    warehouse._execute(conn, warehouse.sql_text("decision_log_schema"), None)
    warehouse._execute(conn, warehouse.sql_text("decision_log_create"), None)
    cur = warehouse._execute(conn, warehouse.sql_text("decision_log_drop_since"), {"since": since.isoformat(sep=" ")})
    return int(cur.rowcount or 0)


def _retrain(settings: Settings, *, profile: str, as_of: dt.date, echo: Callable[[str], None], render: bool,
             reason: str | None = None) -> Any:
    from smartrouter.pipeline import run_pipeline

    return run_pipeline(settings, profile=profile, as_of=as_of, echo=echo, render=render, reason=reason)


def _promoted_version(settings: Settings) -> str | None:
    from smartrouter.registry import Registry

    promoted = Registry(settings).promoted()
    return promoted[0] if promoted else None


# ------------------------------------------------------------------ the service
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"routing config value {value!r} cannot be copied; use strings, numbers, booleans and lists")


def event_clock_config(source: Path | None, target: Path) -> Path:
    """Copy routing.toml (``source`` or the active one) to ``target`` with ``[health] clock = "event"``.

    Simulated ``created_at`` runs ahead of the wall clock; a service on the wall clock would refuse it.
    """
    from smartrouter.routing.config import DEFAULT_PATH, load_routing_config
    from smartrouter.world.clients import EVENT_MAX_AHEAD_SECONDS

    source = Path(source or os.environ.get("SMARTROUTER_ROUTING_CONFIG") or DEFAULT_PATH)
    raw = tomllib.loads(source.read_text(encoding="utf-8"))
    health = raw.setdefault("health", {})
    health["clock"] = "event"
    # the engine's quiet night hours jump simulated time by more than the 5 minutes a merchant gets
    health["max_ahead_seconds"] = max(float(health.get("max_ahead_seconds", 0.0)), EVENT_MAX_AHEAD_SECONDS)
    lines = [f"# copy of {source} for the live loop: [health] clock = \"event\" (simulated time)"]
    for section, table in raw.items():
        lines.append(f"\n[{section}]")
        for key, value in table.items():
            lines.append(f"{json.dumps(str(key))} = {_toml_value(value)}")
    atomic.write_text(target, "\n".join(lines) + "\n")
    load_routing_config(target)  # the copy must load exactly like the original
    return target


def _get_json(url: str, timeout: float = 5.0, token: str | None = None, method: str = "GET") -> tuple[int, dict]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # a fresh connection per call: with several workers, successive calls reach different ones
    try:
        r = httpx.request(method, url, timeout=timeout, headers=headers)
    except httpx.TransportError as exc:  # not answering (yet): an OSError to the callers, like urllib's
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:200]}
    return r.status_code, body if isinstance(body, dict) else {"body": body}


class HttpServing(Serving):
    """A service reached over HTTP: the one the loop started, or a running one (``--url``)."""

    def __init__(self, url: str, token: str | None, decisions_dir: Path, workers: int,
                 process: subprocess.Popen | None = None, log_path: Path | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.decisions_dir = decisions_dir
        self.workers = workers
        self.process = process
        self.log_path = log_path
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The engine's HTTP client, made on first use (it checks the service answers, so not before /readyz)."""
        from smartrouter.world.clients import HttpClient

        if self._client is None:
            self._client = HttpClient(self.url)
        return self._client

    def readyz(self) -> tuple[int, dict]:
        return _get_json(self.url + "/readyz")

    def serving_version(self) -> str | None:
        return self.readyz()[1].get("model_version")

    def reload(self) -> ReloadAnswer:
        if not self.token:
            return ReloadAnswer(0, self.serving_version(), "no admin token: set SMARTROUTER_ADMIN_TOKEN to the service's token")
        # serve/app.py's ReloadResponse: result, model_version, last_error (409 when refused)
        code, body = _get_json(self.url + "/admin/reload", timeout=120.0, token=self.token, method="POST")
        if code == 200:
            self._wait_workers_follow(body.get("model_version"))
            return ReloadAnswer(200, body.get("model_version"), None)
        error = body.get("last_error") or body.get("detail") or f"HTTP {code}"
        return ReloadAnswer(code, body.get("model_version"), str(error))

    def _wait_workers_follow(self, version: str | None) -> None:
        """Until every worker serves ``version`` (they hear of the reload on the peer bus), or a time limit."""
        on: dict[int, str | None] = {}
        deadline = time.monotonic() + RELOAD_SPREAD_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                _, body = self.readyz()
                on[body.get("worker")] = body.get("model_version")
            if len(on) >= self.workers and all(v == version for v in on.values()):
                return
            time.sleep(0.1)
        behind = {w: v for w, v in on.items() if v != version}
        if behind:
            raise LoopError(f"reload: worker(s) {behind} still serve another version {RELOAD_SPREAD_S:g} s after "
                            f"/admin/reload answered {version}; see {self.log_path or 'the service log'}")

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        if self.process is not None:
            stop_process(self.process)


def short_path(folder: Path, room: int = len("/peers/4194304.sock"), limit: int = 100) -> Path:
    """``folder``, or a short link to it in the temp dir when the workers' peer sockets would not fit in it.

    An AF_UNIX socket path is limited to ~108 bytes (peers.py refuses over 100): past it the workers
    run without their peer bus and stop sharing outcomes, so their health and event clocks drift apart.
    """
    if len(str(folder)) + room <= limit:
        return folder
    import hashlib
    import tempfile

    link = Path(tempfile.gettempdir()) / f"smartrouter-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"
    if not (link.is_symlink() and Path(os.readlink(link)) == folder):
        link.unlink(missing_ok=True)
        link.symlink_to(folder, target_is_directory=True)
    return link


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM the service's process group (uvicorn drains and stops its workers), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _stop_orphan(record: dict[str, Any] | None, echo: Callable[[str], None]) -> None:
    """Stop the service a killed loop left running (its pid and start time are in loop.json)."""
    if not record or record.get("host") != socket.gethostname():
        return
    import psutil

    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["created"])) > 1.0:
            return  # the pid was reused by another process
    except (psutil.Error, KeyError, ValueError, TypeError):
        return
    echo(f"stopping the service a previous loop left running (pid {proc.pid}, {record.get('url')})")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_S)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def start_service(settings: Settings, live: Path, workers: int, echo: Callable[[str], None],
                  ready_timeout_s: float = READY_TIMEOUT_S) -> HttpServing:
    """`smartrouter serve` on a free port with an event clock, an admin token and its own state dir; waits for /readyz."""
    from smartrouter.routing.state_store import SNAPSHOT_FILE

    home = live / SERVICE_DIR
    state = home / "state"
    state.mkdir(parents=True, exist_ok=True)
    # A started service begins from a clean slate: a snapshot left by an aborted day would put that
    # day's later outcomes in the health windows, and the redone day would look hours "late" to it.
    (state / SNAPSHOT_FILE).unlink(missing_ok=True)
    config = event_clock_config(None, home / "routing.toml")
    port, token = free_port(), secrets.token_urlsafe(24)
    env = dict(os.environ, SMARTROUTER_ROUTING_CONFIG=str(config), SMARTROUTER_STATE_DIR=str(short_path(state)),
               SMARTROUTER_ADMIN_TOKEN=token, SMARTROUTER_PORT=str(port), SMARTROUTER_HOST="127.0.0.1",
               SMARTROUTER_WORKERS=str(workers))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # `serve` makes its own under the state dir
    log_path = home / "serve.log"
    cmd = [sys.executable, "-m", "smartrouter", "serve", "--workers", str(workers), "--port", str(port)]
    with open(log_path, "ab") as log:
        log.write(f"\n--- {_now()} {' '.join(cmd)}\n".encode())
        log.flush()
        # its own session: Ctrl-C reaches the loop only, which then stops the service in order
        process = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        serving = HttpServing(url, token, state / "decisions", workers, process, log_path)
        wait_ready(serving, ready_timeout_s)
    except BaseException:
        stop_process(process)
        raise
    return serving


def wait_ready(serving: HttpServing, timeout_s: float) -> dict[int, dict]:
    """Every worker answers /readyz 200 (features seeded) and hears the others; LoopError naming the last reasons otherwise."""
    seen: dict[int, dict] = {}
    last = "no answer yet"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serving.process is not None and serving.process.poll() is not None:
            raise LoopError(f"the service exited with code {serving.process.returncode} while starting; "
                            f"its log: {serving.log_path} (last lines: {_tail(serving.log_path)})")
        try:
            code, body = serving.readyz()
        except OSError as exc:
            last = f"not answering ({exc.__class__.__name__})"
            time.sleep(0.2)
            continue
        peers = int(body.get("peers") or 0)
        if code == 200 and peers >= serving.workers - 1:
            seen[body.get("worker")] = body
            if len(seen) >= serving.workers:
                return seen
        elif code == 200:  # the workers must share outcomes, or their health and event clocks drift apart
            last = f"worker {body.get('worker')} hears {peers} of its {serving.workers - 1} peer(s) (peer bus; see the log)"
        else:
            last = "; ".join(body.get("not_ready") or []) or f"HTTP {code}"
        time.sleep(0.1)
    raise LoopError(f"the service at {serving.url} was not ready in {timeout_s:.0f} s ({last}); "
                    f"its log: {serving.log_path}")


def _tail(path: Path | None, n: int = 3) -> str:
    if path is None or not path.exists():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


class InProcessServing(Serving):
    """The service's library object in this process (no HTTP): fast tests and quick checks."""

    def __init__(self, settings: Settings, live: Path, **service_deps: Any):
        from smartrouter.routing.config import load_routing_config
        from smartrouter.routing.state_store import SNAPSHOT_FILE
        from smartrouter.routing.service import ServiceDeps
        from smartrouter.world.clients import InProcessClient

        home = live / SERVICE_DIR
        state = home / "state"
        state.mkdir(parents=True, exist_ok=True)
        (state / SNAPSHOT_FILE).unlink(missing_ok=True)  # a clean slate, as for a started service
        config = load_routing_config(event_clock_config(None, home / "routing.toml"))
        self.decisions_dir = state / "decisions"
        # one process: no other workers to share outcomes with; ``service_deps``: tests' fakes (model_loader=...)
        service_deps.setdefault("share_outcomes", False)
        self.service = ServiceDeps(settings=dataclasses.replace(settings, state_dir=state), routing_config=config,
                                   **service_deps).build()
        self.client = InProcessClient(service=self.service)

    def serving_version(self) -> str | None:
        return self.service.holder.version

    def reload(self) -> ReloadAnswer:
        result = self.service.request_reload()
        error = self.service.holder.status.last_error
        return ReloadAnswer(409 if result == "failed" else 200, self.service.holder.version,
                            error if result == "failed" else None)

    def settle(self) -> None:
        # the service's own writer: closing would stop it, so wait for its buffer to drain instead
        log = self.service.decision_log
        deadline = time.monotonic() + 15.0
        while log.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        super().settle()

    def close(self) -> None:
        self.client.close()


def open_service(settings: Settings, options: LoopOptions, live: Path, echo: Callable[[str], None]) -> Serving:
    """The service the loop routes through: a running one (--url), in-process, or one it starts."""
    if options.in_process:
        return InProcessServing(settings, live)
    if options.url:
        directory = options.decisions_dir or settings.state_dir / "decisions"
        serving = HttpServing(options.url, settings.admin_token, directory, options.workers)
        wait_ready(serving, 30.0)
        return serving
    return start_service(settings, live, options.workers, echo)


# ------------------------------------------------------------------ the rollout controller, between batches
def _rollout_active(settings: Settings) -> bool:
    from smartrouter.routing.rollout import ACTIVE, read_rollout

    try:
        record = read_rollout(settings.registry_dir)
    except SmartrouterError:
        return False
    return record is not None and record.get("status") == ACTIVE


class RolloutPacer:
    """The engine's router client, with the rollout controller run every ``check_minutes`` of event time.

    The engine routes a day in time-sorted batches (`route`, then `report` of their outcomes); before
    a batch that starts a new check period, the decision log is settled and `Controller.step` looks
    at everything logged so far. A stage change or a rollback is followed by a service reload, so
    the next batch is routed by the new stage. With no active rollout a look costs one file read.
    """

    def __init__(self, serving: Serving, settings: Settings, echo: Callable[[str], None]) -> None:
        from smartrouter.routing.rollout import load_rollout_config, read_rollout, summary

        self.serving, self.settings, self.echo = serving, settings, echo
        self.period = 60.0 * load_rollout_config().check_minutes
        self.next_check: float | None = None
        self.events: list[dict[str, Any]] = []
        record = read_rollout(settings.registry_dir)
        self.start = summary(record) if record is not None and record.get("status") == "active" else None

    def __getattr__(self, name: str) -> Any:  # close() and whatever else the engine calls
        return getattr(self.serving.client, name)

    def route(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if bodies:
            at = dt.datetime.fromisoformat(str(bodies[-1]["created_at"])).replace(tzinfo=dt.timezone.utc).timestamp()
            if self.next_check is None:
                self.next_check = (at // self.period + 1) * self.period
            elif at >= self.next_check:
                self.next_check = (at // self.period + 1) * self.period
                self.check(at)
        return self.serving.client.route(bodies)

    def report(self, outcomes: list[dict[str, Any]]) -> Any:
        return self.serving.client.report(outcomes)

    def check(self, at: float) -> None:
        """One controller look now (event time ``at``); reload the service when the rollout changed."""
        from smartrouter.routing.rollout import Controller, summary

        if not _rollout_active(self.settings):
            return
        self.serving.settle()
        result = Controller(self.settings, decisions_dir=self.serving.decisions_dir).step()
        when = dt.datetime.fromtimestamp(at, tz=dt.timezone.utc).strftime("%H:%M")
        v = result.verdict
        if result.changed:
            s = summary(result.record)
            self.events.append({"event_time": when, "applied": result.applied, "stage": v.stage if v else s["stage"],
                                "to_stage": s["stage"], "status": s["status"], "candidate": s["candidate"],
                                "champion": s["champion"], "reason": result.message,
                                "canary": v.canary if v else None, "champion_tally": v.champion if v else None})
            answer = self.serving.reload()
            what = {"advance": f"advanced to {s['stage']}", "complete": "COMPLETED: promoted",
                    "rollback": "ROLLED BACK", "abort": "aborted"}[result.applied]
            exposed = (v.canary or {}).get("payments") if v else None
            self.echo(f"{when} rollout {s['candidate']} (beside {s['champion']}): {what} "
                      f"({exposed if exposed is not None else '-'} canary payments in {v.stage if v else s['stage']}): "
                      f"{result.message}" + ("" if answer.status == 200 else f"; reload answered {answer.status}: {answer.error}"))

    def day_record(self) -> dict[str, Any]:
        """The day's rollout: as it began, as it ended, and the changes between."""
        from smartrouter.routing.rollout import read_rollout, summary

        record = read_rollout(self.settings.registry_dir)
        return {"start": self.start, "end": summary(record) if record is not None else None, "events": self.events}


# ------------------------------------------------------------------ the loop
@dataclass
class LoopResult:
    """What `run_loop` did: the loop's record, the days this call completed, and the wall time."""

    loop: dict[str, Any]
    days_done_now: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failed_runs: list[str] = field(default_factory=list)  # days whose daily run failed (the loop went on)

    @property
    def finished(self) -> bool:
        return self.loop.get("status") == "finished"


class Loop:
    """One `smartrouter live` call: resumes or starts a loop and drives its days (see the module docstring)."""

    def __init__(self, settings: Settings, options: LoopOptions, deps: LoopDeps, echo: Callable[[str], None]):
        self.settings = settings
        self.options = options
        self.deps = deps
        self.echo = echo
        self.live = deps.live_dir(settings)
        self.path = self.live / LOOP_FILE
        self.record: dict[str, Any] = {}
        self.loop: dict[str, Any] = {}
        self.serving: Serving | None = None
        self.scenario: Any = None

    # --------------------------------------------------------------- record
    def save(self) -> None:
        atomic.write_json(self.path, self.record, indent=2)

    def _choose_loop(self) -> None:
        """Resume the unfinished loop (refusing options that contradict it) or start a new one."""
        self.record = read_loop_file(self.live)
        loops = self.record["loops"]
        current = loops[-1] if loops and loops[-1].get("status") not in ("finished", "abandoned") else None
        o = self.options
        if current is not None and o.new:
            current["status"] = "abandoned"
            current["ended_at"] = _now()
            current = None
        if current is not None:
            asked = {"days": o.days, "scenario": str(resolve_scenario_path(o.scenario)) if o.scenario else None,
                     "retrain_profile": o.retrain_profile}
            clash = {k: v for k, v in asked.items() if v is not None and v != current[k]}
            if clash:
                recorded = ", ".join(f"{k}={current[k]}" for k in clash)
                raise ConfigError(
                    f"an unfinished loop ({current['id']}, {self._done_count(current)} of {current['days']} days done) "
                    f"was started with {recorded}; run `smartrouter live` without those options to resume it, "
                    f"or add --new to abandon it")
            self.loop = current
            self.echo(f"resuming loop {current['id']}: {self._done_count(current)} of {current['days']} days done")
        else:
            self.loop = {
                "id": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                "started_at": _now(), "ended_at": None, "status": "running",
                "days": o.days or DEFAULT_DAYS,
                "scenario": str(resolve_scenario_path(o.scenario)),
                "retrain_profile": o.retrain_profile or DEFAULT_PROFILE,
                "service": "in-process" if o.in_process else (o.url or "started"),
                "bootstrap": None, "service_process": None, "day_records": [],
            }
            loops.append(self.loop)
        self.loop["status"] = "running"

    @staticmethod
    def _done_count(loop: dict[str, Any]) -> int:
        return sum(1 for d in loop["day_records"] if d["complete"])

    # --------------------------------------------------------------- steps
    def _step(self, day: dict[str, Any], name: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Run one step unless done: count the try, run, record the result and the seconds, save."""
        step = day["steps"][name]
        if step["done"]:
            return step
        step["tries"] += 1
        step["started_at"] = _now()
        step.setdefault("first_started_at", step["started_at"])
        self.save()  # a try that dies is on the disk: the next one knows it must clean up after it
        t0 = time.monotonic()
        step.update(fn(step))
        step.update(done=True, ended_at=_now(), seconds=round(time.monotonic() - t0, 2))
        self.save()
        return step

    def _advance(self, day: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        date = dt.date.fromisoformat(day["date"])
        if date in set(self.deps.completed_days(self.settings)):
            # the engine finished the day but the loop died before writing it down
            return {"summary": None, "recovered": "the engine had completed the day"}
        if step["tries"] > 1:
            # the earlier try was cut short: the engine redoes the day, so the decision-log rows that
            # try put in the warehouse go first (ship what is left of it, then remove the day's rows)
            self.deps.ship(self.serving.decisions_dir, self.settings)
            since = dt.datetime.combine(date, dt.time())
            dropped = self.deps.drop_decisions_since(self.settings, since)
            step["decision_rows_dropped"] = int(step.get("decision_rows_dropped", 0)) + dropped
        # a rollout starts only between days (a daily run's promotion, or by hand): without one the engine
        # gets the service's client itself
        pacer = RolloutPacer(self.serving, self.settings, lambda m: self.echo(f"{_label(day, self.loop)}  {m}"))
        summaries = self.deps.advance(self.settings, 1, pacer if pacer.start else self.serving.client, self.scenario)
        step["rollout"] = pacer.day_record()
        if len(summaries) != 1 or _date_of(summaries[0]) != date:
            got = [str(_date_of(s)) for s in summaries]
            raise LoopError(f"advance: the engine generated {got or 'nothing'} where the loop expected {date}; "
                            f"{self.path} and the live dir disagree: move {self.path} aside to start a new loop")
        return {"summary": _summary_dict(summaries[0]), "rollout": step["rollout"]}

    def _ship(self, day: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        self.serving.settle()
        r = self.deps.ship(self.serving.decisions_dir, self.settings)
        return {"records": int(getattr(r, "shipped", 0)), "bad_lines": int(getattr(r, "skipped_bad", 0))}

    def _retrain(self, day: dict[str, Any], step: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
        profile = self.loop["retrain_profile"]
        from smartrouter.drift import loop_hook  # the daily drift watch: a crossing is this run's reason (and
        # starts it even under --no-retrain); reports in <reports>/drift/

        reason = loop_hook(self.settings, as_of - dt.timedelta(days=1), lambda m: self.echo(f"{_label(day, self.loop)}  {m}"))
        if not self.options.retrain and day.get("index", 1) > 0 and reason is None:
            return {"status": "skipped", "gate_decision": "skipped (--no-retrain)"}
        found = _finished_run(self.settings, as_of, profile, step["first_started_at"])
        if found is not None:  # it ran to the end before the loop died: not run twice
            return {**_run_fields(found), "recovered": "a finished run folder"}
        self.echo(f"{_label(day, self.loop)}  retrain: `smartrouter run --profile {profile} --as-of {as_of}` ...")
        result = self.deps.retrain(self.settings, profile=profile, as_of=as_of, echo=lambda m: self.echo(f"    {m}"),
                                   render=self.options.render, **({"reason": reason} if reason else {}))
        return _run_fields(result.manifest)

    def _reload(self, day: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        promoted = self.deps.promoted_version(self.settings)
        serving = self.serving.serving_version()
        if promoted is not None and promoted == serving and _rollout_active(self.settings):
            # a promotion by the daily run may have started a canary beside the same champion: load it now
            self.serving.reload()
        if promoted is None or promoted == serving:
            return {"reloaded": False, "serving": serving}
        answer = self.serving.reload()
        out = {"reloaded": answer.status == 200 and answer.version == promoted, "from": serving, "to": promoted,
               "status": answer.status, "serving": answer.version}
        if answer.status == 200 and answer.version != promoted:  # e.g. the pointer moved again meanwhile
            out["error"] = f"/admin/reload answered 200 but the service serves {answer.version}, not {promoted}"
            self.echo(f"{_label(day, self.loop)}  reload: {out['error']}")
        elif answer.status != 200:
            out["error"] = answer.error
            self.echo(f"{_label(day, self.loop)}  reload REFUSED ({answer.status}): {promoted} not served, "
                      f"{answer.version} goes on: {answer.error}")
        return out

    # --------------------------------------------------------------- driving
    def _next_day(self) -> dict[str, Any]:
        days = self.loop["day_records"]
        if days and not days[-1]["complete"]:
            return days[-1]
        completed = self.deps.completed_days(self.settings)
        date = max(completed) + dt.timedelta(days=1) if completed else self.deps.first_day(self.settings)
        day = _new_day(date, len(days) + 1)
        days.append(day)
        return day

    def _bootstrap(self) -> None:
        """Nothing promoted yet: one daily run as of the first day, so the service starts on a model."""
        record = self.loop.get("bootstrap")
        if self.loop["day_records"] or (record is not None and (record.get("done") or record.get("needed") is False)):
            return
        if record is None and self.deps.promoted_version(self.settings) is not None:
            self.loop["bootstrap"] = {"needed": False}
            self.save()
            return
        completed = self.deps.completed_days(self.settings)
        as_of = max(completed) + dt.timedelta(days=1) if completed else self.deps.first_day(self.settings)
        self.echo(f"no promoted model: a first daily run as of {as_of} so that day 1 is served by a model")
        # a bootstrap cut short resumes like a day's retrain step (a run that finished is kept)
        self.loop["bootstrap"] = record = record or {"done": False, "tries": 0}
        pseudo_day = {"steps": {"bootstrap": record}, "date": as_of.isoformat(), "index": 0}
        self._step(pseudo_day, "bootstrap", lambda step: self._retrain(pseudo_day, step, as_of))
        self.echo(f"bootstrap: gate {record.get('gate_decision')}, "
                  f"promoted {self.deps.promoted_version(self.settings) or 'nothing (static rules serve)'}")

    def run(self) -> LoopResult:
        from smartrouter.pipeline import RunLock

        check_options(self.options)
        self.live.mkdir(parents=True, exist_ok=True)
        t_start = time.monotonic()
        result = LoopResult(loop={})
        lock = RunLock(self.live)
        with lock:
            lock.set_holder("live loop", _now())
            self._choose_loop()
            self.scenario = self.deps.load_scenario(Path(self.loop["scenario"]))
            _stop_orphan(self.loop.get("service_process"), self.echo)
            self.loop["service_process"] = None
            self.save()
            result.loop = self.loop
            try:
                self._bootstrap()
                self.serving = self.deps.open_service(self.settings, self.options, self.live, self.echo)
                proc = getattr(self.serving, "process", None)
                if proc is not None:
                    import psutil

                    self.loop["service_process"] = {"pid": proc.pid, "created": psutil.Process(proc.pid).create_time(),
                                                    "host": socket.gethostname(), "url": getattr(self.serving, "url", None)}
                    self.save()
                self.echo(f"loop {self.loop['id']}: {self.loop['days']} days, scenario {Path(self.loop['scenario']).stem}, "
                          f"retrain profile {self.loop['retrain_profile']}, service {getattr(self.serving, 'url', 'in-process')} "
                          f"serving {self.serving.serving_version() or 'static rules'}; live dir {self.live}")
                while self._done_count(self.loop) < self.loop["days"]:
                    day = self._next_day()
                    self._run_day(day, result)
                self.loop["status"] = "finished"
                if self.options.render:
                    self._write_live_report()
            except KeyboardInterrupt:
                self.loop["status"] = "interrupted"
                raise
            except BaseException:
                self.loop["status"] = "failed"
                raise
            finally:
                self.loop["ended_at"] = _now()
                if self.serving is not None:
                    self.serving.close()
                    self.loop["service_process"] = None
                result.seconds = time.monotonic() - t_start
                self.save()
        return result

    def _write_live_report(self) -> None:
        """reports/live/index.html over every live day (also `smartrouter live-report`); a failure is reported, not fatal."""
        from smartrouter import live_report

        t0 = time.monotonic()
        try:
            report = live_report.build_report(self.settings, self.live)
            path = live_report.write_report(report, self.settings)
        except Exception as exc:  # noqa: BLE001 - the days are done and recorded; the page can be rebuilt
            self.echo(f"live report not written ({exc}); rebuild it with `smartrouter live-report`")
            return
        self.echo(f"live report: {path} ({time.monotonic() - t0:.0f} s)")

    def _run_day(self, day: dict[str, Any], result: LoopResult) -> None:
        t0 = time.monotonic()
        date = dt.date.fromisoformat(day["date"])
        label = _label(day, self.loop)
        day.setdefault("started_at", _now())
        adv = self._step(day, "advance", lambda s: self._advance(day, s))
        summary = adv.get("summary") or {}
        if summary:
            orders, attempts, approved = summary.get("orders", 0), summary.get("attempts", 0), summary.get("approved", 0)
            self.echo(f"{label}  advance: {orders:,} orders, {attempts:,} attempts, approval "
                      f"{_pct(approved, attempts)}, orders converted {_pct(approved, orders)}, "
                      f"p99 route {summary.get('p99_route_ms', float('nan')):.1f} ms, served by "
                      f"{', '.join(summary.get('model_versions') or []) or 'rules'} ({adv.get('seconds', 0):.1f} s)")
        self._step(day, "ship", lambda s: self._ship(day, s))
        run = self._step(day, "retrain", lambda s: self._retrain(day, s, date + dt.timedelta(days=1)))
        if run.get("status") not in ("succeeded", "skipped"):
            result.failed_runs.append(day["date"])
        self._step(day, "reload", lambda s: self._reload(day, s))
        day["complete"] = True
        day["ended_at"] = _now()
        self.save()
        result.days_done_now.append(day["date"])
        self.echo(day_line(day, self.loop, self.serving.serving_version(), time.monotonic() - t0))


def _date_of(summary: Any) -> dt.date:
    value = summary["day"] if isinstance(summary, dict) else summary.day
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _summary_dict(summary: Any) -> dict[str, Any]:
    data = dict(summary) if isinstance(summary, dict) else dataclasses.asdict(summary)
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in data.items()}


def _run_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    gate = manifest.get("gate") or {}
    return {"run_id": manifest.get("run_id"), "status": manifest.get("status"),
            "gate_decision": gate.get("decision") if manifest.get("status") == "succeeded" else "run failed",
            "model_version": manifest.get("model_version"), "error": manifest.get("error")}


def _finished_run(settings: Settings, as_of: dt.date, profile: str, since: str) -> dict[str, Any] | None:
    """A run folder for this day that ran to the end after ``since`` (the loop died before recording it)."""
    from smartrouter.pipeline import MANIFEST_FILE, is_run_id

    if not settings.runs_dir.is_dir():
        return None
    for folder in sorted(settings.runs_dir.iterdir(), reverse=True):
        if not is_run_id(folder.name):
            continue
        try:
            m = json.loads((folder / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            continue
        if m.get("as_of") == as_of.isoformat() and m.get("profile") == profile \
                and str(m.get("started_at", "")) >= since and m.get("status") in ("succeeded", "failed") \
                and m.get("error") != "interrupted (Ctrl-C or SIGINT)":
            return m
    return None


def _settle_decision_log(directory: Path, quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Wait until the service's decision-log writer has flushed the day (the files stop growing).

    The writer flushes every [decision_log].flush_seconds (0.5 s); one quiet second after the last
    answer means the day's records are on disk and the shipped day is whole.
    """
    def size() -> int:
        return sum(p.stat().st_size for p in directory.glob("*.jsonl")) if directory.is_dir() else 0

    deadline = time.monotonic() + limit_s
    last = size()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = size()
        if now == last:
            return
        last = now


def _pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.1f} %" if den else "n/a"


def _label(day: dict[str, Any], loop: dict[str, Any]) -> str:
    if day["index"] == 0:
        return f"bootstrap as of {day['date']}"
    return f"day {day['index']}/{loop['days']} {day['date']}"


def day_line(day: dict[str, Any], loop: dict[str, Any], serving: str | None, seconds: float) -> str:
    """The one-line progress of a finished day: orders, approval, seconds per step, model served, gate."""
    s = day["steps"]
    summary = s["advance"].get("summary") or {}
    orders, attempts, approved = summary.get("orders"), summary.get("attempts"), summary.get("approved")
    what = (f"{orders:,} orders, approval {_pct(approved, attempts)}" if orders is not None
            else "orders: see days.jsonl (recovered)")
    steps = ", ".join(f"{n} {s[n].get('seconds', 0):.1f}" for n in STEPS)
    reload = s["reload"]
    change = f" (reloaded {reload['from'] or 'rules'} -> {reload['to']})" if reload.get("reloaded") else ""
    if reload.get("error"):
        change = f" (reload of {reload.get('to')} {'REFUSED' if reload.get('status') != 200 else 'incomplete'}: {reload['error']})"
    return (f"{_label(day, loop)}  {what}; {seconds:.1f} s ({steps}); serving {serving or 'rules'}{change}; "
            f"gate {s['retrain'].get('gate_decision')}")


def run_loop(options: LoopOptions, settings: Settings | None = None, deps: LoopDeps | None = None,
             echo: Callable[[str], None] = print) -> LoopResult:
    """Run (or resume) the live loop; raises ConfigError on bad options, RunLocked when another loop runs."""
    check_options(options)  # bad input is refused before anything is imported or written
    deps = (deps or LoopDeps()).resolved()
    if options.scenario is not None:
        deps.load_scenario(resolve_scenario_path(options.scenario))  # ScenarioError (exit 2) names file and key
    settings = settings or load_settings()
    if options.url and not settings.admin_token:
        raise ConfigError("--url: set SMARTROUTER_ADMIN_TOKEN to that service's admin token; the loop hot-reloads "
                          "it (POST /admin/reload) when a new model is promoted")
    return Loop(settings, options, deps, echo).run()
