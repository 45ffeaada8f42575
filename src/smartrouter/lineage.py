"""Lineage: one SQLite file (settings.state_dir/lineage.sqlite) answering "which data, code and
parameters produced the model now serving" and "which runs failed, and where".

Tables: runs (one row per run, from its manifest), stages, metrics (numeric headline values),
models (the version a run produced and its gate decision), promotions (promote/rollback history).
The run manifests stay the record; this store is an index over them, rebuilt by re-recording.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from smartrouter.config import Settings, load_settings
from smartrouter.notebook_tools import read_json

LINEAGE_FILE = "lineage.sqlite"
PROMOTED_FILE = "PROMOTED"

def utc_iso_now() -> str:
    """Now, UTC, ISO 8601 with a Z."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    profile TEXT,
    as_of TEXT,
    started_at TEXT,
    ended_at TEXT,
    duration_s REAL,
    git_commit TEXT,
    git_dirty INTEGER,
    data_start TEXT,
    data_end TEXT,
    data_fingerprint TEXT,
    failed_stage TEXT,
    error TEXT,
    model_version TEXT,
    gate_decision TEXT,
    run_dir TEXT,
    manifest_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    duration_s REAL,
    error TEXT,
    PRIMARY KEY (run_id, stage)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, stage, name)
);
CREATE TABLE IF NOT EXISTS models (
    version TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    decision TEXT,
    champion_family TEXT,
    reasons_json TEXT,
    recorded_at TEXT
);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    run_id TEXT,
    action TEXT NOT NULL,
    reason TEXT,
    at TEXT NOT NULL
);
"""


def lineage_path(settings: Settings | None = None) -> Path:
    """Where the lineage store lives."""
    return (settings or load_settings()).state_dir / LINEAGE_FILE


@contextlib.contextmanager
def connect(settings: Settings | None = None) -> Iterator[sqlite3.Connection]:
    """A connection to the lineage store (created on first use); commits on success."""
    path = lineage_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        conn.executescript(_SCHEMA)
        yield conn
        conn.commit()
    finally:
        conn.close()


def _fingerprint_text(fp: Any) -> str | None:
    if fp is None:
        return None
    if isinstance(fp, Mapping):
        return str(fp.get("hash") or json.dumps(fp, sort_keys=True))
    return str(fp)


def record_run(manifest: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Insert or update one run (and its stages, numeric metrics and produced model) from its manifest."""
    settings = settings or load_settings()
    run_id = manifest["run_id"]
    code = manifest.get("code") or {}
    window = (manifest.get("data") or {}).get("window") or {}
    gate = manifest.get("gate") or {}
    run_dir = settings.runs_dir / run_id
    with connect(settings) as db:
        db.execute(
            """INSERT OR REPLACE INTO runs VALUES
               (:run_id, :status, :profile, :as_of, :started_at, :ended_at, :duration_s, :git_commit,
                :git_dirty, :data_start, :data_end, :data_fingerprint, :failed_stage, :error,
                :model_version, :gate_decision, :run_dir, :manifest_json)""",
            {
                "run_id": run_id,
                "status": manifest.get("status"),
                "profile": manifest.get("profile"),
                "as_of": manifest.get("as_of"),
                "started_at": manifest.get("started_at"),
                "ended_at": manifest.get("ended_at"),
                "duration_s": manifest.get("duration_s"),
                "git_commit": code.get("commit"),
                "git_dirty": None if code.get("dirty") is None else int(bool(code.get("dirty"))),
                "data_start": window.get("start"),
                "data_end": window.get("end_exclusive"),
                "data_fingerprint": _fingerprint_text((manifest.get("data") or {}).get("fingerprint")),
                "failed_stage": manifest.get("failed_stage"),
                "error": manifest.get("error"),
                "model_version": manifest.get("model_version"),
                "gate_decision": gate.get("decision"),
                "run_dir": str(run_dir),
                "manifest_json": json.dumps(manifest, default=str),
            },
        )
        db.execute("DELETE FROM stages WHERE run_id = ?", (run_id,))
        for pos, st in enumerate(manifest.get("stages") or []):
            db.execute(
                "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, st["name"], pos, st.get("status"), st.get("started_at"), st.get("ended_at"),
                 st.get("duration_s"), st.get("error")),
            )
        db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
        for stage, values in (manifest.get("metrics") or {}).items():
            if not isinstance(values, Mapping):
                continue
            for name, value in values.items():
                # Only numbers are queryable metrics; dicts/lists stay in the manifest.
                if isinstance(value, (int, float)):  # bools count as 0/1
                    db.execute("INSERT INTO metrics VALUES (?, ?, ?, ?)", (run_id, stage, name, float(value)))
        version = manifest.get("model_version")
        if version:
            db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                (version, run_id, gate.get("decision"), gate.get("champion_family"),
                 json.dumps(gate.get("reasons") or []), manifest.get("ended_at") or utc_iso_now()),
            )


def record_promotion(version: str, run_id: str | None, action: str, reason: str = "",
                     settings: Settings | None = None) -> None:
    """Append a promotion event (action: 'promote', 'rollback', 'reject', ...) to the history."""
    with connect(settings) as db:
        db.execute(
            "INSERT INTO promotions (version, run_id, action, reason, at) VALUES (?, ?, ?, ?, ?)",
            (version, run_id, action, reason, utc_iso_now()),
        )


def promoted_pointer(settings: Settings | None = None) -> dict[str, Any] | None:
    """The registry's PROMOTED pointer ({"version": "vN", ...}), or None when nothing is promoted."""
    settings = settings or load_settings()
    data = read_json(settings.registry_dir / PROMOTED_FILE)
    if isinstance(data, dict) and data.get("version"):
        return data
    return None


def serving_model_lineage(settings: Settings | None = None) -> dict[str, Any]:
    """Which data, code and parameters produced the model now serving (from the promoted pointer)."""
    settings = settings or load_settings()
    pointer = promoted_pointer(settings)
    if pointer is None:
        return {"serving": None, "message": f"no model is promoted ({settings.registry_dir / PROMOTED_FILE} "
                                            "is absent): the service uses the merchant's static rules"}
    version = str(pointer["version"])
    with connect(settings) as db:
        model = db.execute("SELECT * FROM models WHERE version = ?", (version,)).fetchone()
        run_id = (model["run_id"] if model else None) or pointer.get("run_id")
        run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone() if run_id else None
        promotions = [dict(r) for r in db.execute(
            "SELECT version, run_id, action, reason, at FROM promotions WHERE version = ? ORDER BY id", (version,))]
    out: dict[str, Any] = {"serving": version, "pointer": pointer, "run_id": run_id, "promotions": promotions}
    if run is None:
        out["message"] = (f"model {version} is promoted but its run {run_id or '(unknown)'} is not in the lineage "
                          "store; it was made outside this project's runs or the store was reset")
        return out
    manifest = json.loads(run["manifest_json"])
    out.update(
        run_status=run["status"],
        gate={"decision": run["gate_decision"], **({"reasons": json.loads(model["reasons_json"])} if model else {})},
        data={"window": (manifest.get("data") or {}).get("window"),
              "fingerprint": (manifest.get("data") or {}).get("fingerprint")},
        code=manifest.get("code"),
        packages=manifest.get("packages"),
        profile=manifest.get("profile"),
        as_of=manifest.get("as_of"),
        parameters=manifest.get("parameters"),
        metrics=manifest.get("metrics"),
    )
    return out


def failed_runs(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every failed run with the stage it failed in and the error, newest first."""
    with connect(settings) as db:
        rows = db.execute(
            "SELECT run_id, started_at, profile, as_of, failed_stage, error, run_dir FROM runs "
            "WHERE status = 'failed' ORDER BY run_id DESC"
        ).fetchall()
    return [dict(r) for r in rows]


def runs(settings: Settings | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Runs, newest first: status, dates, model version, gate decision."""
    sql = ("SELECT run_id, status, profile, as_of, started_at, duration_s, git_commit, git_dirty, "
           "data_fingerprint, model_version, gate_decision, failed_stage FROM runs ORDER BY run_id DESC")
    with connect(settings) as db:
        rows = db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    return [dict(r) for r in rows]


def metrics(run_id: str, settings: Settings | None = None) -> dict[str, dict[str, float]]:
    """Numeric metrics of one run: {stage: {name: value}}."""
    out: dict[str, dict[str, float]] = {}
    with connect(settings) as db:
        for r in db.execute("SELECT stage, name, value FROM metrics WHERE run_id = ?", (run_id,)):
            out.setdefault(r["stage"], {})[r["name"]] = r["value"]
    return out
