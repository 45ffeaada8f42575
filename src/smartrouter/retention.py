"""Run retention: which run folders stay whole, and pruning the others down to their record.

A daily run leaves ~104 MB on the default world, 97 % of it inputs that can be rebuilt: the point-in-time
feature table (``features.parquet``, 82 MB, rebuilt from the warehouse by the same SQL for the data window
and fingerprint the manifest names) and the 04 -> 05 evaluation hand-off (18 MB, read once, by the gate;
04 rebuilds it). A year of daily runs would fill ~38 GB. Pruning a run removes exactly those
(``REBUILDABLE``) and keeps everything else as its **record** (~3.5 MB): ``manifest.json``, the other
JSON results (metrics, gate, evaluation, split, EDA summary, rule proposal, retry evaluation, readout),
the executed notebooks (the run's log), ``models/`` and ``retry/`` (each family's small serving form).
Its HTML pages in the reports folder are not touched, so the runs index and every link on it keep
working without a re-render, and the lineage store (state folder) still names the run. A
``pruned.json`` in the folder says when, under which policy, what went and how many bytes were freed.
A file someone adds to the run folder later stays in the record until it is named here.

Never pruned, whatever the policy:

* the run that trained the **serving** model (the registry's PROMOTED version), the **canary** of an
  active rollout (``<registry>/ROLLOUT``), and the version ``smartrouter models rollback`` would
  restore: the drift check and ``smartrouter rules propose`` read the serving version's feature table,
  and a rollback makes the previous one serving again;
* a run in progress (manifest status ``running``, or the run named by the run lock), and a folder
  without a readable manifest (being created, or damaged: a person should look);
* the newest ``keep_last`` runs and the runs started within ``keep_days`` days.

Runs of other registered versions (rejected, retired) are prunable: the registry holds its own copy
of every version's serving form, metrics, gates and card, and reads the run folder only for
``split.json``/``manifest.json``, which the record keeps.

The policy lives in ``retention.toml`` next to this module (read strictly); ``smartrouter runs
list|prune`` apply it by hand, and the daily run applies it after a successful run when
``after_run`` is true.

**Compaction** (``compact_run``, every successful run when ``compact = true``): even a run kept whole
holds only what its later readers use. The 04 -> 05 hand-off goes once the gate has read it, and the
feature table keeps the rows from ``rule_search.toml [search] search_days`` days before its test window
on (what ``smartrouter rules propose`` searches and holds out; the drift check's newest ``drift.toml
[psi] reference_days`` days and the retry evaluation's test window lie inside), rewritten with zstd.
On the default world a run folder goes from ~102 MB to ~30 MB. ``compacted.json`` in the folder says
what went (rows, dates, bytes) and why; the dropped rows are rebuildable like a pruned table.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from smartrouter import atomic, strict_toml
from smartrouter.config import PACKAGE_DIR, Settings, load_settings
from smartrouter.errors import ConfigError, SmartrouterError
from smartrouter.evaluation import EVALUATION_HANDOFF, LEGACY_EVALUATION_PICKLE

RETENTION_FILE = PACKAGE_DIR / "retention.toml"
SCHEMA = {"retention": {"keep_last": int, "keep_days": int, "after_run": bool, "compact": bool}}
PRUNED_FILE = "pruned.json"
COMPACTED_FILE = "compacted.json"
FEATURE_TABLE = "features.parquet"
# What pruning removes: top-level entries of a run folder that a stage rebuilds from the warehouse.
REBUILDABLE: dict[str, str] = {
    "features.parquet": "the feature table (02_features rebuilds it from the warehouse)",
    EVALUATION_HANDOFF: "the 04 -> 05 hand-off (04_evaluate rebuilds it)",
    LEGACY_EVALUATION_PICKLE: "the hand-off of older code (a pickle)",
}
LOCK_FILE = "retention.lock"


@dataclass(frozen=True)
class Policy:
    """How many runs stay whole: the newest ``keep_last`` and those started within ``keep_days`` days."""

    keep_last: int
    keep_days: int | None = None
    after_run: bool = False
    compact: bool = False

    def __post_init__(self) -> None:
        if self.keep_last < 0:
            raise ConfigError(f"keep_last = {self.keep_last}: keep a number of runs >= 0 (e.g. --keep 14)")
        if self.keep_days is not None and self.keep_days < 0:
            raise ConfigError(f"keep_days = {self.keep_days}: keep a number of days >= 0 (e.g. --keep-days 14)")


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in ``retention.toml`` (or ``path``), checked strictly."""
    data = strict_toml.load(path or RETENTION_FILE, SCHEMA, what="retention config", home=str(RETENTION_FILE))
    r = data["retention"]
    return Policy(keep_last=r["keep_last"], keep_days=r["keep_days"] or None, after_run=r["after_run"],
                  compact=r["compact"])


@dataclass
class RunInfo:
    """One run folder as retention sees it."""

    run_id: str
    path: Path
    status: str | None  # manifest status; None: no readable manifest
    started_at: str | None
    model_version: str | None
    decision: str | None
    bytes: int
    pruned: bool  # only the record is left
    keep: list[str] = field(default_factory=list)  # why it stays whole (empty: prunable)
    removable: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes) a prune removes

    @property
    def prunable(self) -> bool:
        return not self.keep and bool(self.removable)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["removable"] = [{"path": p, "bytes": b} for p, b in self.removable]
        d["removable_bytes"] = sum(b for _, b in self.removable)
        return d


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def removable(run_dir: Path) -> list[tuple[str, int]]:
    """What pruning ``run_dir`` would remove (the REBUILDABLE entries it holds), with their sizes."""
    return [(name, _size(run_dir / name)) for name in REBUILDABLE if (run_dir / name).is_file()]


def _registry_runs(settings: Settings) -> dict[str, str]:
    """run_id -> why the registry needs that run whole (serving, canary, rollback target)."""
    from smartrouter.registry import VERSION_FILE, Registry

    reg = Registry(settings)
    out: dict[str, str] = {}

    def note(version: str | None, why: str) -> None:
        if not version:
            return
        try:
            info = json.loads((reg.version_dir(version) / VERSION_FILE).read_text())
        except (SmartrouterError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot tell which run trained {why} {version} ({exc}); fix the registry "
                              f"({reg.root}) before pruning, so the serving model's run is never removed") from None
        run_id = info.get("run_id") or Path(str(info.get("run_dir") or "")).name
        if run_id:
            out.setdefault(str(run_id), f"{why} {version}")

    try:
        pointer = reg.pointer()
        rollout = reg.rollout()
        # the version `smartrouter models rollback` restores (the registry's own stack of promotions)
        stack = reg._stack()
    except SmartrouterError as exc:
        raise ConfigError(f"the registry cannot be read ({exc}); fix it before pruning, so the serving model's "
                          "run is never removed") from None
    note((pointer or {}).get("version"), "serving model")
    if rollout is not None and rollout.get("status") == "active":
        note(rollout.get("candidate"), "canary")
    current = (pointer or {}).get("version")
    earlier = [v for v in stack if v != current]
    if earlier:
        note(earlier[-1], "rollback target")
    return out


def _locked_run(settings: Settings) -> str | None:
    from smartrouter.pipeline import LOCK_HOLDER_FILE

    try:
        holder = json.loads((settings.state_dir / LOCK_HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(holder.get("run_id")) if isinstance(holder, dict) and holder.get("run_id") else None


def survey(settings: Settings | None = None, policy: Policy | None = None,
           now: dt.datetime | None = None) -> list[RunInfo]:
    """Every run folder, oldest first, with why it stays whole under ``policy`` (default: retention.toml)."""
    from smartrouter.pipeline import MANIFEST_FILE, is_run_id, utcnow

    settings = settings or load_settings()
    policy = policy or load_policy()
    now = now or utcnow()
    if not settings.runs_dir.is_dir():
        return []
    protected = _registry_runs(settings)
    locked = _locked_run(settings)
    runs: list[RunInfo] = []
    for path in sorted(p for p in settings.runs_dir.iterdir() if p.is_dir() and is_run_id(p.name)):
        try:
            m = json.loads((path / MANIFEST_FILE).read_text())
            if not isinstance(m, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            m = None
        gate = (m or {}).get("gate") or {}
        runs.append(RunInfo(run_id=path.name, path=path, status=(m or {}).get("status") if m else None,
                            started_at=(m or {}).get("started_at"), model_version=(m or {}).get("model_version"),
                            decision=gate.get("decision"), bytes=_size(path), pruned=(path / PRUNED_FILE).is_file(),
                            removable=removable(path)))
    newest = {r.run_id for r in runs[len(runs) - policy.keep_last:]} if policy.keep_last else set()
    cutoff = now - dt.timedelta(days=policy.keep_days) if policy.keep_days else None
    for r in runs:
        if r.status is None:
            r.keep.append("no readable manifest (being created, or damaged: look before removing)")
        elif r.status == "running" or r.run_id == locked:
            r.keep.append("running" if r.run_id == locked else "running (or died without finishing: its manifest says running)")
        if r.run_id in protected:
            r.keep.append(protected[r.run_id])
        if r.run_id in newest:
            r.keep.append(f"one of the last {policy.keep_last}")
        if cutoff is not None and r.started_at:
            try:
                started = dt.datetime.fromisoformat(r.started_at.replace("Z", "+00:00"))
            except ValueError:
                started = None
            if started is not None and started >= cutoff:
                r.keep.append(f"started within {policy.keep_days} days")
    return runs


@dataclass
class PruneResult:
    pruned: list[RunInfo]
    kept: list[RunInfo]
    bytes_freed: int
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "bytes_freed": self.bytes_freed,
                "pruned": [r.to_json() for r in self.pruned], "kept": [r.to_json() for r in self.kept]}


def prune(settings: Settings | None = None, policy: Policy | None = None, *, dry_run: bool = False,
          now: dt.datetime | None = None, echo: Callable[[str], None] | None = None) -> PruneResult:
    """Reduce every run the policy does not keep whole to its record; returns what was (or would be) removed.

    One prune at a time (a file lock in the state folder); a run that started meanwhile is newer than
    every surveyed one and is never touched.
    """
    from filelock import FileLock, Timeout

    settings = settings or load_settings()
    policy = policy or load_policy()
    say = echo or (lambda _m: None)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.state_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=10)
    except Timeout:
        raise ConfigError(f"another prune holds {settings.state_dir / LOCK_FILE}; wait for it to finish") from None
    try:
        runs = survey(settings, policy, now)
        pruned, kept, freed = [], [], 0
        for r in runs:
            if not r.prunable:
                kept.append(r)
                continue
            size = sum(b for _, b in r.removable)
            what = ", ".join(f"{p} {format_bytes(b)}" for p, b in r.removable)
            say(f"{'would prune' if dry_run else 'pruned'} {r.run_id} ({r.status}): {what} -> {format_bytes(size)}")
            if not dry_run:
                _prune_one(r, policy)
            pruned.append(r)
            freed += size
        return PruneResult(pruned=pruned, kept=kept, bytes_freed=freed, dry_run=dry_run)
    finally:
        lock.release()


def _prune_one(r: RunInfo, policy: Policy) -> None:
    previous = {}
    try:
        previous = json.loads((r.path / PRUNED_FILE).read_text())
    except (OSError, ValueError):
        pass
    # the marker first: a prune cut short still says the folder is no longer whole
    record = {"pruned_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
              "policy": {"keep_last": policy.keep_last, "keep_days": policy.keep_days},
              "removed": [{"path": p, "bytes": b} for p, b in r.removable] + list(previous.get("removed") or []),
              "bytes_freed": sum(b for _, b in r.removable) + int(previous.get("bytes_freed") or 0),
              "kept": "everything else: manifest.json and the other JSON results, the executed notebooks, "
                      "models/, retry/; the HTML reports stay in the reports folder"}
    atomic.write_json(r.path / PRUNED_FILE, record)
    for rel, _ in r.removable:
        (r.path / rel).unlink(missing_ok=True)


def rows_needed_from(run_dir: Path) -> dt.datetime:
    """The first time a later reader of the run's feature table looks at: ``search_days`` days before
    its test window (split.json), where `smartrouter rules propose`'s search window starts."""
    from smartrouter import drift, rule_search

    try:
        test_start = dt.datetime.fromisoformat(json.loads((run_dir / "split.json").read_text())["test_start"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{run_dir / 'split.json'} is missing or has no test_start ({type(exc).__name__}); "
                          "compaction needs the run's split: rerun the features stage") from None
    search_days = int(rule_search.load_config()["search"]["search_days"])
    reference_days = int(drift.load_config()["psi"]["reference_days"])
    return test_start - dt.timedelta(days=max(search_days, reference_days))


def compact_run(run_dir: str | Path) -> dict[str, Any] | None:
    """Drop from a finished run what no later reader uses (see the module docstring); the record written
    to ``compacted.json``, or None when there is nothing to compact (already compacted, or pruned)."""
    import pandas as pd

    from smartrouter import features

    run_dir = Path(run_dir)
    if (run_dir / COMPACTED_FILE).is_file():
        return None
    removed: list[dict[str, Any]] = []
    handoff = run_dir / EVALUATION_HANDOFF
    if handoff.is_file():
        removed.append({"path": EVALUATION_HANDOFF, "bytes": handoff.stat().st_size,
                        "why": "read once, by 05_gate; 04_evaluate rebuilds it"})
    table_path = run_dir / FEATURE_TABLE
    table_note = None
    if table_path.exists():
        start = rows_needed_from(run_dir)
        before = _size(table_path)
        # part by part (features.keep_rows_since): the compaction never holds the table either
        rows_before, rows_kept = features.keep_rows_since(table_path, pd.Timestamp(start))
        table_note = {"path": FEATURE_TABLE, "rows_before": int(rows_before), "rows_kept": int(rows_kept),
                      "kept_from": start.isoformat(), "bytes_before": before, "bytes_after": _size(table_path),
                      "why": "rows before kept_from are read by no later step (rules propose searches the days "
                             "before the test window, drift compares with the newest days); 02_features rebuilds them"}
    if not removed and table_note is None:
        return None
    record = {"compacted_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
              "removed": removed, "feature_table": table_note,
              "bytes_freed": sum(r["bytes"] for r in removed)
              + ((table_note["bytes_before"] - table_note["bytes_after"]) if table_note else 0)}
    atomic.write_json(run_dir / COMPACTED_FILE, record)
    handoff.unlink(missing_ok=True)  # after the record: a compaction cut short is redone (the table rewrite is atomic)
    return record


def after_run(settings: Settings, echo: Callable[[str], None], run_dir: str | Path | None = None) -> PruneResult | None:
    """The daily run's hook: compact the run that just succeeded (``compact``), then apply retention.toml
    to the others when ``after_run`` is true (None when it is off)."""
    policy = load_policy()
    if policy.compact and run_dir is not None:
        record = compact_run(run_dir)
        if record:
            echo(f"  retention: compacted this run's folder, freed {format_bytes(record['bytes_freed'])} "
                 f"(folder now {format_bytes(_size(Path(run_dir)))}; see {COMPACTED_FILE})")
    if not policy.after_run:
        return None
    result = prune(settings, policy)
    if result.pruned:
        echo(f"  retention: pruned {len(result.pruned)} run(s) to their record, freed {format_bytes(result.bytes_freed)} "
             f"(keep last {policy.keep_last}" + (f", {policy.keep_days} days" if policy.keep_days else "") + ")")
    return result


def format_bytes(n: int) -> str:
    """Bytes for people: 1.2 GB, 85.3 MB, 12 kB (powers of 1000, as disks are sold)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
