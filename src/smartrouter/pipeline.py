"""The daily run: executes the stage notebooks in order with papermill into runs/<run_id>/.

One run = one folder, never reused: the executed notebooks are the log, ``manifest.json`` is the
record (rewritten atomically at the start and after every stage), ``metrics.json`` holds the
headline numbers the stages recorded. The run's status comes from papermill's exception (a cell
that raised, a cell or stage timeout, a dead kernel), never from reading the saved notebook: a
timeout or a dead kernel leaves no mark in it. A failed stage stops the run; its partially
executed notebook and its HTML stay in place and later stages (the gate included) never run.

A file lock in the state folder keeps two runs from overlapping; the second one is told which run
holds the lock and exits with code 3.

Parameters come in two kinds. Run-level ones (``RUN_PARAMETERS``: as-of date, lookback, split, seed)
have one value per run, set in ``[<profile>.run]`` or with ``-p run.NAME=VALUE`` (as_of with
``--as-of``), and are injected into every stage notebook that declares them, so no two stages can
disagree. Stage ones live in ``[<profile>.<stage>]`` / ``-p STAGE.NAME=VALUE``. Every name and
value is checked against the notebook's parameters cell before the lock is taken or a run folder
made; the manifest's ``run`` block and ``parameters`` are exactly what was injected.
"""

from __future__ import annotations

import ast
import datetime as dt
import difflib
import getpass
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartrouter.config import PACKAGE_DIR, Settings, load_settings
from smartrouter.errors import ConfigError, PipelineError
from smartrouter.notebook_tools import METRICS_FILE, STAGE_ENV, read_json, write_json_atomic

# Run order. Each name is a notebook notebooks/<name>.ipynb and a key in profiles.toml.
STAGES: tuple[str, ...] = ("01_extract_eda", "02_features", "03_train", "04_evaluate", "05_gate", "06_readout")
PROFILES_FILE = PACKAGE_DIR / "profiles.toml"
BASE_PROFILE = "default"
RUNNER_SECTION = "runner"
RUNNER_DEFAULTS: dict[str, Any] = {"stage_timeout_s": 900.0, "cell_timeout_s": 600.0}  # seconds
RUN_SECTION = "run"
# One value per run, injected into every stage notebook whose parameters cell declares the name.
# as_of comes from --as-of (default today); the others from [<profile>.run], where the base profile
# must set each of them (the one place their defaults live; notebooks repeat them for JupyterLab).
RUN_PARAMETERS: tuple[str, ...] = ("as_of", "lookback_days", "valid_days", "test_days", "seed")
AS_OF = "as_of"
# Set by the runner for every stage; a profile or -p can never set it.
RUNNER_INJECTED: tuple[str, ...] = ("run_dir",)
MANIFEST_FILE = "manifest.json"
GATE_FILE = "gate.json"
LOCK_FILE = "run.lock"
LOCK_HOLDER_FILE = "run.lock.json"
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
# Packages whose versions go into every manifest (what the code ran on).
KEY_PACKAGES: tuple[str, ...] = (
    "smartrouter", "numpy", "pandas", "pyarrow", "duckdb", "sqlglot", "fakesnow",
    "snowflake-connector-python", "papermill", "nbconvert", "nbclient", "ipykernel", "scrapbook",
    "seaborn", "matplotlib", "scikit-learn", "xgboost", "tensorflow-cpu", "keras", "litestar",
)
# Parameter names never written into a manifest, whatever a profile or -p says.
_SECRET_RE = re.compile(r"(token|password|passwd|secret|private_key|credential)", re.IGNORECASE)
# Seconds between interrupting a kernel past its stage deadline and killing it.
_KILL_GRACE_S = 10.0


class RunLocked(PipelineError):
    """Another run holds the lock."""

    exit_code = 3


@dataclass(frozen=True)
class Stage:
    """One stage: a name (key in profiles.toml and metrics.json) and the notebook that runs it."""

    name: str
    notebook: Path


@dataclass
class RunResult:
    """What `run_pipeline` returns: the manifest plus where things are."""

    run_id: str
    run_dir: Path
    status: str
    manifest: dict[str, Any]
    report_index: Path | None
    failed_stage: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


# ------------------------------------------------------------------ time and ids
def utcnow() -> dt.datetime:
    """Now in UTC, second precision (timestamps in manifests and run ids)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def new_run_dir(runs_dir: Path, now: dt.datetime | None = None) -> tuple[str, Path]:
    """Create a fresh run folder named by a sortable UTC timestamp (suffix -2, -3… if taken)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        run_id = base if n == 1 else f"{base}-{n}"
        path = runs_dir / run_id
        try:
            path.mkdir()  # atomic: a folder is never reused
        except FileExistsError:
            continue
        return run_id, path
    raise PipelineError(f"could not create a run folder under {runs_dir} for {base}; remove stale folders there")


def is_run_id(name: str) -> bool:
    """True for names of run folders (excludes runs/lab and READMEs)."""
    return bool(RUN_ID_RE.match(name))


def parse_as_of(text: str | None) -> dt.date:
    """The as-of date (data up to, not including, this UTC day); default today UTC."""
    if text is None or text == "":
        return utcnow().date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--as-of {text!r} is not a date; give it as YYYY-MM-DD, e.g. --as-of 2026-10-01") from None


# ------------------------------------------------------------------ stages and parameters
def default_stages(settings: Settings) -> list[Stage]:
    """The stage notebooks in run order."""
    return [Stage(name, settings.notebooks_dir / f"{name}.ipynb") for name in STAGES]


def select_stages(stages: Sequence[Stage], spec: str | None) -> list[Stage]:
    """Pick stages by a comma list of names or number prefixes ('01,02' or '01_extract_eda')."""
    if not spec:
        return list(stages)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen: list[Stage] = []
    for w in wanted:
        matches = [s for s in stages if s.name == w or s.name.split("_", 1)[0] == w.zfill(2)]
        if not matches:
            names = ", ".join(s.name for s in stages)
            raise ConfigError(f"--stages: no stage {w!r}; choose among {names} (or their numbers, e.g. 01,02)")
        chosen.extend(m for m in matches if m not in chosen)
    return [s for s in stages if s in chosen]  # always in run order


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, dict[str, dict[str, Any]]]:
    """Read and check profiles.toml: {profile: {stage | "run" | "runner": {key: value}}}.

    Unknown sections and keys are errors (a misspelt key would otherwise be ignored): sections are
    ``run``, ``runner`` or a stage; ``run`` holds only RUN_PARAMETERS (as_of excepted), ``runner``
    only RUNNER_DEFAULTS' keys, a stage section never a run-level name. Whether a stage key is a
    parameter of its notebook is checked against the notebook itself (``check_parameters``).
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        fix = "reinstall the package (pip install -e .)" if path == PROFILES_FILE else "check the --profiles path"
        raise ConfigError(f"profiles file {path} is missing; {fix}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profiles file {path} is not valid TOML ({exc}); fix the line it names") from None
    _check_profiles(data, path)
    return data


def _check_profiles(data: Mapping[str, Any], path: Path) -> None:
    where = path.name
    sections = (RUN_SECTION, RUNNER_SECTION, *STAGES)
    if BASE_PROFILE not in data:
        raise ConfigError(f"{where}: no [{BASE_PROFILE}.*] tables; the base profile '{BASE_PROFILE}' is required ({path})")
    for profile, tables in data.items():
        if not isinstance(tables, dict):
            raise ConfigError(f"{where}: top-level key {profile!r} is not a profile table; "
                              f"write it as [{profile}.run] / [{profile}.<stage>] tables ({path})")
        for section, values in tables.items():
            if section not in sections:
                raise ConfigError(f"{where}: [{profile}.{section}] is not a section; use one of {', '.join(sections)} ({path})")
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: {profile}.{section} must be a table [{profile}.{section}] ({path})")
            for key in values:
                problem = _section_key_problem(section, key)
                if problem:
                    raise ConfigError(f"{where}: [{profile}.{section}] {key}: {problem} ({path})")
    missing = [k for k in RUN_PARAMETERS if k != AS_OF and k not in data[BASE_PROFILE].get(RUN_SECTION, {})]
    if missing:
        raise ConfigError(f"{where}: [{BASE_PROFILE}.{RUN_SECTION}] must set {', '.join(missing)} "
                          f"(the run-level defaults) ({path})")


def _section_key_problem(section: str, key: str) -> str | None:
    """Why ``key`` cannot be set in ``section`` (None when it can); shared by profiles and -p."""
    if key in RUNNER_INJECTED:
        return f"{key} is set by the runner for every stage and cannot be overridden"
    if section == RUNNER_SECTION:
        if key not in RUNNER_DEFAULTS:
            return f"unknown runner setting; the runner has {', '.join(RUNNER_DEFAULTS)}"
    elif section == RUN_SECTION:
        if key == AS_OF:
            return "the run's as-of date is set with --as-of YYYY-MM-DD"
        if key not in RUN_PARAMETERS:
            return f"not a run-level parameter; those are {', '.join(k for k in RUN_PARAMETERS if k != AS_OF)}"
    elif key in RUN_PARAMETERS:
        how = "--as-of YYYY-MM-DD" if key == AS_OF else f"[<profile>.{RUN_SECTION}] or -p {RUN_SECTION}.{key}=VALUE"
        return f"{key} is a run-level parameter (one value for every stage); set it with {how}"
    return None


@dataclass(frozen=True)
class Override:
    """One ``-p SECTION.KEY=VALUE``: the value read as TOML, and the text as typed."""

    section: str
    key: str
    value: Any
    raw: str
    text: str


def parse_override(text: str) -> Override:
    """Parse '-p section.key=value'; the value is read as TOML (1, 0.5, true, "x"), a bare word is a string."""
    m = re.match(r"^\s*([A-Za-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$", text)
    if not m:
        raise ConfigError(f"-p {text!r} is not STAGE.KEY=VALUE or run.KEY=VALUE; "
                          f"e.g. -p run.lookback_days=7 or -p 03_train.dnn_epochs=3")
    section, key, raw = m.group(1), m.group(2), m.group(3).strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return Override(section, key, value, raw, text.strip())


@dataclass
class Parameters:
    """A run's merged parameters: run-level, runner, per stage, and which -p set what (for messages)."""

    run: dict[str, Any]
    runner: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    overridden: dict[tuple[str, str], Override]
    origin: dict[tuple[str, str], str]  # (section, key) -> the profile table that set it, e.g. "[quick.03_train]"


def resolve_parameters(profile: str, overrides: Iterable[str] = (), stages: Sequence[str] = STAGES,
                       profiles: Mapping[str, Any] | None = None, profiles_name: str = PROFILES_FILE.name) -> Parameters:
    """Merge default profile <- chosen profile <- overrides, for the run, the runner and every stage.

    Checks where names go (sections; run-level names never per stage) and the types of run and
    runner values; names and types of stage values are checked against the notebooks by
    ``check_parameters``.
    """
    profiles = load_profiles() if profiles is None else profiles
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(profiles)} (see {PROFILES_FILE.name})")
    sections = [RUN_SECTION, RUNNER_SECTION, *stages]
    merged: dict[str, dict[str, Any]] = {s: {} for s in sections}
    merged[RUNNER_SECTION].update(RUNNER_DEFAULTS)
    origin: dict[tuple[str, str], str] = {}
    for name in dict.fromkeys([BASE_PROFILE, profile]):
        for section, values in profiles.get(name, {}).items():
            if section in merged and isinstance(values, dict):
                merged[section].update(values)
                origin.update({(section, k): f"{profiles_name} [{name}.{section}]" for k in values})
    base_run = dict(merged[RUN_SECTION])
    overridden: dict[tuple[str, str], Override] = {}
    for text in overrides:
        o = parse_override(text)
        if o.section not in merged:
            raise ConfigError(f"-p {o.text}: no section {o.section!r}; use one of {', '.join(sections)}")
        problem = _section_key_problem(o.section, o.key)
        if problem:
            raise ConfigError(f"-p {o.text}: {problem.replace('=VALUE', '=' + o.raw)}")
        value = o.value
        if o.section in (RUN_SECTION, RUNNER_SECTION):
            reference = (base_run if o.section == RUN_SECTION else RUNNER_DEFAULTS).get(o.key)
            value = _coerce(value, o.raw, reference)
            if value is _BAD:
                raise ConfigError(f"-p {o.text}: {o.section}.{o.key} expects {_kind(reference)} "
                                  f"(default {reference!r}), got {_describe(o.value)}")
        merged[o.section][o.key] = value
        overridden[(o.section, o.key)] = o
    _check_run_values(merged[RUN_SECTION])
    return Parameters(run=merged.pop(RUN_SECTION), runner=merged.pop(RUNNER_SECTION), stages=merged,
                      overridden=overridden, origin=origin)


_BAD = object()  # _coerce's answer for a value of the wrong type


def _kind(reference: Any) -> str:
    if isinstance(reference, bool):
        return "true or false"
    if isinstance(reference, int):
        return "an integer"
    if isinstance(reference, float):
        return "a number"
    if isinstance(reference, str):
        return "a string"
    return f"a {type(reference).__name__}"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"the {type(value).__name__} {value!r}"


def _coerce(value: Any, raw: str | None, reference: Any) -> Any:
    """``value`` as the type of ``reference`` (a parameter's default), or _BAD.

    Integers widen to floats; nothing else converts (a float never truncates to an int, a number is
    never a boolean). A string parameter takes the text as typed (-p 03_train.dnn_hidden=256).
    ``reference`` None (a None default or an expression) accepts anything.
    """
    if reference is None:
        return value
    if isinstance(reference, bool):
        return value if isinstance(value, bool) else _BAD
    if isinstance(reference, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if isinstance(reference, float):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _BAD
    if isinstance(reference, str):
        if isinstance(value, str):
            return value
        return raw if raw is not None and not isinstance(value, (list, dict)) else _BAD
    return value if isinstance(value, type(reference)) else _BAD


def _check_run_values(run: Mapping[str, Any]) -> None:
    """Run-level values that cannot make a run: windows must be positive and leave training days."""
    for key in ("lookback_days", "valid_days", "test_days"):
        v = run.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"run.{key}={v!r} must be a whole number of days >= 1")
    seed = run.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"run.seed={seed!r} must be an integer >= 0")
    lookback, valid, test = run["lookback_days"], run["valid_days"], run["test_days"]
    if valid + test >= lookback:
        raise ConfigError(
            f"run.valid_days={valid} + run.test_days={test} leave no training days in run.lookback_days={lookback}; "
            f"lower them or widen the window (e.g. -p run.lookback_days={valid + test + 7})")


def notebook_parameters(notebook: Path) -> dict[str, tuple[bool, Any]]:
    """A notebook's parameters cell: name -> (is_literal, default); an expression default is its text."""
    import papermill

    out: dict[str, tuple[bool, Any]] = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        raw = info.get("default")
        try:
            out[name] = (True, ast.literal_eval(raw) if raw is not None else None)
        except (ValueError, SyntaxError):
            out[name] = (False, raw)
    return out


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The defaults of a notebook's parameters cell (literals parsed; expressions kept as text)."""
    return {name: default for name, (_lit, default) in notebook_parameters(notebook).items()}


def check_parameters(params: Parameters, stages: Sequence[Stage]) -> dict[str, dict[str, Any]]:
    """Check every stage value against its notebook's parameters cell; return what each stage gets.

    A name the notebook does not declare, or a value whose type differs from the default's, is a
    ConfigError naming the parameter, the notebook and what it expects (papermill itself would only
    warn, then fail inside the kernel). Run-level values go to every notebook that declares them,
    checked the same way. The result is exactly what papermill injects (run_dir is added later).
    """
    inject: dict[str, dict[str, Any]] = {}
    for stage in stages:
        declared = notebook_parameters(stage.notebook)
        out: dict[str, Any] = {}
        for key, value in params.stages.get(stage.name, {}).items():
            o = params.overridden.get((stage.name, key))
            source = f"-p {o.text}" if o else f"{params.origin.get((stage.name, key), 'profile')} {key} = {value!r}"
            if key not in declared:
                near = difflib.get_close_matches(key, list(declared), n=1)
                hint = ""
                if near:
                    hint = f" (did you mean {RUN_SECTION + '.' if near[0] in RUN_PARAMETERS else ''}{near[0]}?)"
                names = ", ".join(k for k in declared if k not in RUN_PARAMETERS and k not in RUNNER_INJECTED)
                raise ConfigError(f"{source}: {stage.notebook.name} has no parameter {key!r}{hint}; "
                                  f"its parameters are {names or '(none)'}")
            out[key] = _checked(key, value, o.raw if o else None, declared[key], source, stage)
        for key, value in params.run.items():
            if key in declared:
                o = params.overridden.get((RUN_SECTION, key))
                source = f"-p {o.text}" if o else f"{params.origin.get((RUN_SECTION, key), 'run')} {key} = {value!r}"
                out[key] = _checked(key, value, None, declared[key], source, stage)
        inject[stage.name] = out
    return inject


def _checked(key: str, value: Any, raw: str | None, declared: tuple[bool, Any], source: str, stage: Stage) -> Any:
    literal, default = declared
    if not literal:  # an expression default: papermill replaces it, whatever its type
        return value
    coerced = _coerce(value, raw, default)
    if coerced is _BAD:
        raise ConfigError(f"{source}: {stage.notebook.name} expects {_kind(default)} for {key} "
                          f"(default {default!r}), got {_describe(value)}")
    return coerced


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a secret before it reaches a manifest."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if _SECRET_RE.search(k):
            out[k] = "<redacted>"
        elif isinstance(v, Mapping):
            out[k] = redact(v)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------ provenance
def git_info(home: Path) -> dict[str, Any]:
    """The code's commit and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape a run's results."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------ the lock
def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


class RunLock:
    """Exclusive lock on the state folder's run.lock, with a JSON file that says who holds it."""

    def __init__(self, state_dir: Path):
        from filelock import FileLock

        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LOCK_FILE
        self.holder_path = state_dir / LOCK_HOLDER_FILE
        self._lock = FileLock(str(self.path), timeout=0)
        self.stale: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, from the holder file."""
        try:
            return json.loads(self.holder_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def acquire(self) -> None:
        """Take the lock or raise RunLocked naming the run that holds it."""
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            h = self.holder() or {}
            raise RunLocked(
                f"another run is in progress: {h.get('run_id', '(starting)')} "
                f"(pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('started', '?')}); "
                f"wait for it to finish, or if it is gone remove {self.path}"
            ) from None
        previous = self.holder()
        # The OS drops the lock of a process that died; its holder file stays behind.
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            if not same_host or not _pid_alive(int(previous.get("pid", -1))):
                self.stale = previous
                warnings.warn(
                    f"took over a stale run lock left by run {previous.get('run_id')} "
                    f"(pid {previous.get('pid')}, since {previous.get('started')}); that run did not finish",
                    RuntimeWarning, stacklevel=2,
                )

    def set_holder(self, run_id: str, started: str) -> None:
        """Say which run holds the lock (read by a second run to explain why it cannot start)."""
        write_json_atomic(self.holder_path, {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                                             "user": _user(), "started": started})

    def release(self) -> None:
        """Release the lock and remove the holder file."""
        self.holder_path.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


# ------------------------------------------------------------------ stage watchdog
class _StageWatchdog:
    """Enforces a wall-clock limit on one stage: interrupts the stage's kernel, then kills it."""

    def __init__(self, limit_s: float):
        import psutil

        self.limit_s = limit_s
        self.fired = False
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self._timer = threading.Timer(limit_s, self._fire)
        self._timer.daemon = True

    def _kernels(self) -> list[Any]:
        import psutil

        out = []
        for p in psutil.Process().children(recursive=True):
            if p.pid in self._before:
                continue
            try:
                if "ipykernel" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def _fire(self) -> None:
        import psutil

        self.fired = True
        kernels = self._kernels()
        for p in kernels:  # KeyboardInterrupt in the running cell: papermill marks it in the notebook
            try:
                p.send_signal(signal.SIGINT)
            except psutil.Error:
                pass
        _gone, alive = psutil.wait_procs(kernels, timeout=_KILL_GRACE_S)
        if alive and not self._cancelled.is_set():
            for p in self._kernels():
                try:
                    p.kill()
                except psutil.Error:
                    pass

    def __enter__(self) -> _StageWatchdog:
        self._cancelled = threading.Event()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancelled.set()
        self._timer.cancel()


# ------------------------------------------------------------------ the run
def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong in a stage, from papermill's or nbclient's exception."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}".strip()
    name = type(exc).__name__
    if name == "CellTimeoutError":
        return f"a cell ran longer than its timeout ({str(exc).splitlines()[0] if str(exc) else 'no output'})"
    if name == "DeadKernelError":
        return "the kernel died (out of memory or killed)"
    return f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


def _data_window(as_of: dt.date, run: Mapping[str, Any]) -> dict[str, Any]:
    lookback = run.get("lookback_days")
    start = (as_of - dt.timedelta(days=int(lookback))).isoformat() if isinstance(lookback, int) else None
    return {"start": start, "end_exclusive": as_of.isoformat(), "lookback_days": lookback}


def _refresh_from_run_dir(manifest: dict[str, Any], run_dir: Path) -> None:
    """Copy what the stages wrote (metrics, data fingerprint, gate decision) into the manifest."""
    metrics = read_json(run_dir / METRICS_FILE, {}) or {}
    manifest["metrics"] = metrics
    eda = metrics.get(STAGES[0], {}) if isinstance(metrics, dict) else {}
    if isinstance(eda, dict) and "data_fingerprint" in eda:
        manifest["data"]["fingerprint"] = eda["data_fingerprint"]
    gate = read_json(run_dir / GATE_FILE)
    if isinstance(gate, dict):
        manifest["gate"] = {
            "decision": gate.get("decision"),
            "model_version": gate.get("model_version"),
            "champion_family": gate.get("champion_family"),
            "reasons": list(gate.get("reasons") or []),
        }
        manifest["model_version"] = gate.get("model_version")


def run_pipeline(
    settings: Settings | None = None,
    *,
    profile: str = BASE_PROFILE,
    as_of: str | dt.date | None = None,
    select: str | None = None,
    overrides: Sequence[str] = (),
    stages: Sequence[Stage] | None = None,
    echo: Callable[[str], None] | None = print,
    render: bool = True,
    profiles_file: Path | None = None,
    reason: str | None = None,
) -> RunResult:
    """Run the stages in order into a new runs/<run_id>/; returns the result (never raises for a failed stage).

    ``reason``: why this run was started (e.g. the drift check's crossings), kept in the manifest.

    ``stages`` replaces the notebooks/ stages (tests use their own notebooks); ``select`` picks a
    subset ('01,02'); ``profiles_file`` replaces the package's profiles.toml. Raises ConfigError on
    bad input (before the lock is taken or a folder made) and RunLocked when another run is going.
    """
    settings = settings or load_settings()
    say = echo or (lambda _msg: None)
    all_stages = list(stages) if stages is not None else default_stages(settings)
    chosen = select_stages(all_stages, select)
    as_of_date = as_of if isinstance(as_of, dt.date) else parse_as_of(as_of)
    profiles = load_profiles(profiles_file) if profiles_file is not None else None
    params = resolve_parameters(profile, overrides, stages=[s.name for s in all_stages], profiles=profiles,
                                profiles_name=(profiles_file or PROFILES_FILE).name)
    runner = params.runner
    for key in ("stage_timeout_s", "cell_timeout_s"):
        if not isinstance(runner.get(key), (int, float)) or runner[key] <= 0:
            raise ConfigError(f"runner.{key}={runner.get(key)!r} must be a positive number of seconds")
    for stage in chosen:
        if not stage.notebook.is_file():
            raise ConfigError(f"stage {stage.name}: notebook {stage.notebook} is missing; restore it from git")
    run_values = {AS_OF: as_of_date.isoformat(), **params.run}
    params.run = run_values
    # Every stage with a notebook is checked, not only the chosen ones: a typo in a profile shows
    # on the first run, not on the day someone runs that stage.
    inject = check_parameters(params, [s for s in all_stages if s.notebook.is_file()])

    lock = RunLock(settings.state_dir)
    with lock:
        started = utcnow()
        run_id, run_dir = new_run_dir(settings.runs_dir, started)
        lock.set_holder(run_id, _iso(started))
        from smartrouter import lineage, reports

        # inject: what papermill passes (checked stage values, run-level values the notebook declares,
        # run_dir); stage_params: that over the notebook's own defaults, for the record (defaults that
        # are expressions stay as their text).
        stage_params: dict[str, dict[str, Any]] = {}
        for stage in chosen:
            inject[stage.name] = {**inject[stage.name], "run_dir": str(run_dir)}
            stage_params[stage.name] = {**notebook_defaults(stage.notebook), **inject[stage.name]}
        manifest: dict[str, Any] = {
            "run_id": run_id,
            "status": "running",
            "started_at": _iso(started),
            "ended_at": None,
            "duration_s": None,
            "profile": profile,
            "reason": reason or "scheduled",
            "as_of": as_of_date.isoformat(),
            "overrides": list(overrides),
            "run": redact(run_values),  # the run-level values every declaring stage received
            "parameters": redact(stage_params),
            "runner": dict(runner),
            "stages": [
                {"name": s.name, "notebook": str(s.notebook), "status": "pending", "started_at": None,
                 "ended_at": None, "duration_s": None, "output": None, "report": None, "error": None}
                for s in chosen
            ],
            "failed_stage": None,
            "error": None,
            "code": git_info(settings.home),
            "packages": package_versions(),
            "settings": settings.public_dict(),
            "host": {"name": socket.gethostname(), "pid": os.getpid(), "user": _user()},
            "data": {"window": _data_window(as_of_date, run_values), "fingerprint": None},
            "metrics": {},
            "model_version": None,
            "gate": None,
            "stale_lock_taken_over": lock.stale,
        }
        manifest_path = run_dir / MANIFEST_FILE
        write_json_atomic(manifest_path, manifest)
        _safe(lambda: lineage.record_run(manifest, settings), "lineage", say)
        say(f"run {run_id}: profile {profile}, as of {as_of_date.isoformat()}, {len(chosen)} stage(s) -> {run_dir}")

        report_dir = settings.reports_dir / run_id
        failed: str | None = None
        error: str | None = None
        interrupted: KeyboardInterrupt | None = None
        for entry, stage in zip(manifest["stages"], chosen):
            out_nb = run_dir / f"{stage.name}.ipynb"
            t0 = utcnow()
            clock = time.monotonic()
            entry.update(status="running", started_at=_iso(t0), output=out_nb.name)
            write_json_atomic(manifest_path, manifest)
            say(f"[{t0:%H:%M:%S}] {stage.name}: started")
            exc_info: BaseException | None = None
            watchdog = _StageWatchdog(float(runner["stage_timeout_s"]))
            previous_stage_env = os.environ.get(STAGE_ENV)
            os.environ[STAGE_ENV] = stage.name  # the kernel inherits it (record() without a context)
            try:
                with watchdog:
                    _execute(stage, out_nb, inject[stage.name], settings, float(runner["cell_timeout_s"]))
            except Exception as exc:  # status comes from the exception, whatever its type
                exc_info = exc
            except KeyboardInterrupt as exc:  # record the run as failed, then let the interrupt through
                exc_info = interrupted = exc
            finally:
                if previous_stage_env is None:
                    os.environ.pop(STAGE_ENV, None)
                else:
                    os.environ[STAGE_ENV] = previous_stage_env
            t1 = utcnow()
            entry.update(ended_at=_iso(t1), duration_s=round(time.monotonic() - clock, 2))
            if exc_info is not None:
                error = describe_error(exc_info) if not interrupted else "interrupted (Ctrl-C or SIGINT)"
                if watchdog.fired:
                    error = f"stage exceeded its {runner['stage_timeout_s']:g} s timeout ({error})"
                entry.update(status="failed", error=error)
                failed = stage.name
            else:
                entry["status"] = "succeeded"
            if render and out_nb.exists():
                html = report_dir / f"{stage.name}.html"
                ok = _safe(lambda: reports.render_notebook(out_nb, html, title=f"{run_id} · {stage.name}",
                                                             error=error if failed else None),
                           f"{stage.name} report", say)
                if ok is not None:
                    entry["report"] = str(html)
            _refresh_from_run_dir(manifest, run_dir)
            write_json_atomic(manifest_path, manifest)
            verdict = "ok" if failed is None else f"FAILED: {error}"
            say(f"[{t1:%H:%M:%S}] {stage.name}: {verdict} ({entry['duration_s']:.1f} s)")
            if failed:
                break
        for entry in manifest["stages"]:
            if entry["status"] == "pending":
                entry["status"] = "skipped"

        ended = utcnow()
        manifest.update(
            status="failed" if failed else "succeeded",
            ended_at=_iso(ended),
            duration_s=round((ended - started).total_seconds(), 1),
            failed_stage=failed,
            error=error,
        )
        _refresh_from_run_dir(manifest, run_dir)
        write_json_atomic(manifest_path, manifest)
        _safe(lambda: lineage.record_run(manifest, settings), "lineage", say)
        index: Path | None = None
        if render:
            index = _safe(lambda: reports.render_run_index(manifest, settings), "run report", say)
            _safe(lambda: reports.render_all_runs_index(settings), "report index", say)
        if not failed:  # retention.toml [retention] after_run: older runs down to their record
            from smartrouter import retention

            _safe(lambda: retention.after_run(settings, say, run_dir), "retention", say)
        say(f"run {run_id}: {manifest['status']} in {manifest['duration_s']:.0f} s"
            + (f" (failed at {failed}: {error})" if failed else ""))
        say(f"  run folder: {run_dir}")
        if index is not None:
            say(f"  report:     {index}")
        if interrupted is not None:
            raise interrupted
        return RunResult(run_id=run_id, run_dir=run_dir, status=manifest["status"], manifest=manifest,
                         report_index=index, failed_stage=failed, error=error)


def _execute(stage: Stage, output: Path, parameters: dict[str, Any], settings: Settings, cell_timeout_s: float) -> None:
    import papermill

    from smartrouter.kernel_log import quiet_kernel

    with quiet_kernel():  # the cron log keeps real errors, not the kernel's and TensorFlow's start-up noise
        papermill.execute_notebook(
            str(stage.notebook),
            str(output),
            parameters=parameters,
            kernel_name=settings.kernel,
            cwd=str(settings.notebooks_dir),  # fixed, whichever notebook runs (relative paths mean the same)
            execution_timeout=int(cell_timeout_s),
            progress_bar=False,
            log_output=False,
            request_save_on_cell_execute=True,
        )


def _safe(fn: Callable[[], Any], what: str, say: Callable[[str], None]) -> Any:
    """Run a bookkeeping step (report, lineage); its failure is reported but never hides the run's status."""
    try:
        return fn()
    except Exception as exc:
        say(f"  warning: {what} not written: {type(exc).__name__}: {exc}")
        return None


def list_runs(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Manifests of every run folder, oldest first."""
    settings = settings or load_settings()
    out = []
    if not settings.runs_dir.is_dir():
        return out
    for path in sorted(settings.runs_dir.iterdir()):
        if path.is_dir() and is_run_id(path.name):
            m = read_json(path / MANIFEST_FILE)
            if isinstance(m, dict):
                out.append(m)
    return out
