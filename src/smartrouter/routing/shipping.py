"""Ship the decision log's JSONL segments into the warehouse table PAYMENT_ML.SMARTROUTER.DECISION_LOG.

The service never talks to the warehouse on the request path: it appends JSON lines locally
(`decision_log`). `smartrouter decisions ship` (cron, every few minutes) loads what is new:

- only complete lines (a segment still being written ends in a partial line, left for next time);
- progress per segment is kept in ``shipped.json`` beside the segments, written atomically after
  the warehouse commit; before loading a segment from line k, rows of that segment from line k on
  are deleted, so a load that died between commit and bookkeeping never leaves duplicates;
- a line that is not JSON (a crash mid-write) is skipped and counted, never shipped.

So nothing is lost if the warehouse is down (the files stay and the next run catches up) and
nothing is loaded twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from smartrouter import atomic, warehouse
from smartrouter.errors import ConfigError, WarehouseError
from smartrouter.routing.decision_log import SEGMENT_GLOB

log = logging.getLogger("smartrouter.routing.shipping")

TABLE = "PAYMENT_ML.SMARTROUTER.DECISION_LOG"
PROGRESS_FILE = "shipped.json"
_BATCH_ROWS = 5_000


@dataclass
class ShipResult:
    """What one `ship` call did."""

    segments: int = 0  # segment files looked at
    shipped: int = 0  # rows loaded now
    already: int = 0  # lines loaded by earlier runs
    pending_partial: int = 0  # segments ending in a partial line (still being written)
    skipped_bad: int = 0  # lines that were not JSON
    per_segment: dict[str, int] = field(default_factory=dict)


def _complete_lines(path: Path) -> tuple[list[bytes], bool]:
    """(the segment's complete lines, whether it ends in a partial line still being written)."""
    data = path.read_bytes()
    if not data:
        return [], False
    lines = data.split(b"\n")
    return lines[:-1], not data.endswith(b"\n")  # the last piece is "" after a final newline


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def row_of(record: dict[str, Any], segment_file: str, line_no: int, line: str, shipped_at: str) -> dict[str, Any]:
    """The table row for one decision-log record."""
    decision = record.get("kind") == "decision"
    payment = record.get("payment") or {}
    propensity = record.get("propensity")
    return {
        "segment_file": segment_file,
        "line_no": line_no,
        "kind": _text(record.get("kind")),
        "request_id": _text(record.get("request_id")),
        "order_id": _text(payment.get("ORDER_ID") if decision else record.get("order_id")),
        "created_at": _text(record.get("created_at")),
        "processor": _text(record.get("chosen") if decision else record.get("processor")),
        "source": _text(record.get("source")),
        "arm": _text(record.get("arm")),
        "propensity": float(propensity) if isinstance(propensity, (int, float)) else None,
        "model_version": _text(record.get("model_version")),
        "status": _text(record.get("status")),
        "outcome_kind": _text(record.get("outcome_kind")),
        "error_code": _text(record.get("error_code")),
        "record": line,
        "shipped_at": shipped_at,
    }


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), _BATCH_ROWS):
        yield rows[i : i + _BATCH_ROWS]


def _insert_batch(conn: Any, cur: Any, insert: str, batch: list[dict[str, Any]]) -> None:
    """Snowflake: the INSERT, executemany. Local world: DuckDB's pandas scan of the same columns, because
    fakesnow transpiles an executemany row by row (~20 ms a row: a live day's 28,000 records took 9 minutes)."""
    duck = getattr(getattr(conn, "raw", None), "_duck_conn", None) if getattr(conn, "kind", None) == "local" else None
    if duck is None:
        cur.executemany(insert, batch)
        return
    import pandas as pd

    columns = list(batch[0])
    names = ", ".join(c.upper() for c in columns)
    duck.register("_decision_batch", pd.DataFrame(batch, columns=columns))
    try:
        duck.execute(f"INSERT INTO {TABLE} ({names}) SELECT {', '.join(columns)} FROM _decision_batch")
    finally:
        duck.unregister("_decision_batch")


def _read_progress(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or not all(isinstance(v, int) and v >= 0 for v in raw.values()):
            raise ValueError("not a mapping of segment file to line count")
    except ValueError as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc}); fix it or delete it to reload every segment "
            f"(rows already in {TABLE} are replaced, not duplicated)"
        ) from None
    return raw


def ship(directory: str | Path, conn: Any = None, settings: Any = None) -> ShipResult:
    """Load every new complete line of the segments in ``directory`` into the warehouse table."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"no decision log at {directory}; the service writes it under SMARTROUTER_STATE_DIR/decisions")
    progress_path = directory / PROGRESS_FILE
    progress = _read_progress(progress_path)
    result = ShipResult()
    segments = sorted(directory.glob(SEGMENT_GLOB))
    if conn is None:
        with warehouse.connect(settings, read_only=False) as own:
            return _ship(segments, own, progress, progress_path, result)
    return _ship(segments, conn, progress, progress_path, result)


def _ship(segments: list[Path], conn: Any, progress: dict[str, int], progress_path: Path, result: ShipResult) -> ShipResult:
    warehouse._execute(conn, warehouse.sql_text("decision_log_schema"), None)
    warehouse._execute(conn, warehouse.sql_text("decision_log_create"), None)
    insert = warehouse.sql_text("decision_log_insert")
    clear = warehouse.sql_text("decision_log_clear_tail")
    for path in segments:
        result.segments += 1
        done = progress.get(path.name, 0)
        lines, partial = _complete_lines(path)
        result.pending_partial += partial
        result.already += min(done, len(lines))
        if len(lines) <= done:
            continue
        shipped_at = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
        rows = []
        for i in range(done, len(lines)):
            text = lines[i].decode("utf-8", errors="replace")
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError
            except ValueError:
                result.skipped_bad += 1
                continue
            rows.append(row_of(record, path.name, i, text, shipped_at))
        warehouse._execute(conn, clear, {"segment_file": path.name, "from_line": done})
        cur = conn.cursor()
        try:
            for batch in _batches(rows):
                _insert_batch(conn, cur, insert, batch)
        except Exception as exc:  # noqa: BLE001 - name the segment; progress is not advanced
            raise WarehouseError(
                f"loading {path.name} into {TABLE} failed ({warehouse._one_line(exc)}); nothing was marked "
                "shipped: rerun `smartrouter decisions ship` once the warehouse is reachable"
            ) from None
        conn.commit()
        progress[path.name] = len(lines)
        atomic.write_json(progress_path, progress, sort_keys=True)
        result.shipped += len(rows)
        result.per_segment[path.name] = len(rows)
    return result
