"""Warehouse access: one way to get a connection, run Snowflake-dialect SQL files, fetch frames in
batches, and write/read the local world.

The same code path serves a real Snowflake account and the local world (``fakesnow`` over a
DuckDB file under ``settings.local_dir``): callers write Snowflake SQL and get pandas frames with
Snowflake's upper-case column names either way.

Local world layout (``settings.local_dir``)::

    PAYMENT_ML.db   the DuckDB file fakesnow serves as database PAYMENT_ML
    world.json      the WorldParams that generated it, dates, row counts, fingerprint

Readers attach the file read-only, so notebooks, the service and the CLI can read at the same
time; a build writes a temporary file and swaps it in with ``os.replace`` (a reader never sees a
half-built world, and a crash leaves the previous one in place).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from smartrouter import atomic
from smartrouter import catalog
from smartrouter.config import SQL_DIR, Settings, load_settings
from smartrouter.errors import ConfigError, WarehouseError

if TYPE_CHECKING:  # the world package is only needed to build, not to read
    from smartrouter.world import World, WorldParams

DB_FILE = f"{catalog.DATABASE}.db"
WORLD_FILE = "world.json"
WORLD_FORMAT = 1
BUILD_LOCK = ".build.lock"
# Snowflake logins retry until this many seconds; a wrong account must fail fast, not hang.
DEFAULT_LOGIN_TIMEOUT_S = 30
DEFAULT_BATCH_ROWS = 200_000
# World builds: days loaded per transaction, and DuckDB's memory cap while loading.
DAYS_PER_COMMIT = 7
BUILD_MEMORY_LIMIT = "256MB"
# Queries on the local warehouse: DuckDB's own default is 80 % of the machine's memory for its block cache
# and operators, so on a 10x world the stage kernels grew to 8 GB+ in DuckDB alone. Snowflake does this
# work on its own machines; locally it gets a bounded share of ours, and spills larger sorts and window
# functions to its temp folder beside the database instead of growing (issue 18).
QUERY_MEMORY_LIMIT = "2GB"
SPILL_DIR = "duckdb.tmp"  # beside the database file (DuckDB removes its spill files when a query ends)

# Plain SNOWFLAKE_* variables the connector does not read by itself (it only reads
# connections.toml and SNOWFLAKE_CONNECTIONS_<NAME>_<KEY>); when SNOWFLAKE_ACCOUNT is set we pass
# these through, so credentials still come only from the environment, never from code.
_SNOWFLAKE_ENV_KEYS = (
    "account", "user", "password", "role", "warehouse", "database", "schema", "authenticator",
    "host", "port", "protocol", "token", "private_key_file", "private_key_file_pwd", "passcode",
)  # fmt: skip
_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# fakesnow warns on every query that it copies its Arrow result; that copy is how it works.
warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)


# ------------------------------------------------------------------ connections
class _RecentResults(dict):
    """fakesnow keeps every result forever (for RESULT_SCAN); keep only the last few so a
    long-lived connection reading months of attempts does not grow without bound."""

    keep = 4

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.keep:
            del self[next(iter(self))]


class Connection:
    """A DB-API connection to the configured warehouse; a context manager whose close() releases
    everything (for the local world: the fakesnow connection *and* its DuckDB file handle)."""

    def __init__(self, raw: Any, kind: str, where: str, closers: Sequence[Any] = ()) -> None:
        self.raw = raw
        self.kind = kind  # "local" | "snowflake"
        self.where = where  # for messages: the file or the account
        self._closers = list(closers)
        self.closed = False

    def cursor(self) -> Any:
        """A cursor of the underlying connection (snowflake.connector API)."""
        return self.raw.cursor()

    def close(self) -> None:
        """Close the connection and release the local file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for obj in [self.raw, *self._closers]:
            with contextlib.suppress(Exception):
                obj.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # the rest of the DB-API (commit, execute_string, ...)
        return getattr(self.raw, name)

    def __repr__(self) -> str:
        return f"<warehouse.Connection {self.kind} {self.where}{' closed' if self.closed else ''}>"


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


def db_path(settings: Settings | None = None) -> Path:
    """The local world's DuckDB file."""
    return _settings(settings).local_dir / DB_FILE


def world_file(settings: Settings | None = None) -> Path:
    """The local world's world.json (what generated the db file)."""
    return _settings(settings).local_dir / WORLD_FILE


def connect(
    settings: Settings | None = None,
    *,
    read_only: bool = True,
    login_timeout: int = DEFAULT_LOGIN_TIMEOUT_S,
) -> Connection:
    """Open a connection to the configured warehouse (``with warehouse.connect() as conn: ...``).

    ``local``: the world's DuckDB file through fakesnow; read-only by default so several processes
    can read at once (pass ``read_only=False`` to write into the live file). ``snowflake``: the
    connector's own configuration (connections.toml or SNOWFLAKE_* variables).
    """
    s = _settings(settings)
    if s.warehouse == "snowflake":
        return _connect_snowflake(s, login_timeout=login_timeout)
    path = db_path(s)
    if not path.exists():
        raise WarehouseError(
            f"local world not built: {path} does not exist; run `make world` (or `smartrouter world build`)"
        )
    return _open_local(path, read_only=read_only)


_bucket_cleanup_registered = False


def _rmdir_if_empty(folder: str) -> None:
    with contextlib.suppress(OSError):  # not empty (someone used a stage) or already gone
        os.rmdir(folder)


def remove_fakesnow_bucket_at_exit() -> None:
    """fakesnow creates a temporary "stage bucket" folder when imported and never removes it:
    one empty folder in the temp dir per process that ever opened the local world (every
    kernel of every daily run, every test worker). Nothing here uses stages, so the folder is
    removed at exit if it is still empty."""
    global _bucket_cleanup_registered
    if _bucket_cleanup_registered:
        return
    import atexit

    from fakesnow.transforms import stage

    folder = getattr(stage, "LOCAL_BUCKET_PATH", None)
    if folder:
        atexit.register(_rmdir_if_empty, str(folder))
    _bucket_cleanup_registered = True


def _open_local(path: Path, *, read_only: bool) -> Connection:
    """fakesnow over the DuckDB file at ``path`` (which must be named PAYMENT_ML.db)."""
    import duckdb
    from fakesnow.instance import FakeSnow

    remove_fakesnow_bucket_at_exit()

    fs = FakeSnow(db_path=path.parent)
    fs.results_cache = _RecentResults()
    try:
        if read_only:
            # fakesnow attaches read-write; attaching first (read-only) makes it reuse ours.
            fs.duck_conn.execute(f"ATTACH '{_sql_str(str(path))}' AS {catalog.DATABASE} (READ_ONLY)")
        raw = fs.connect(database=catalog.DATABASE, schema="SOURCES")
        fs.duck_conn.execute(f"SET memory_limit = '{QUERY_MEMORY_LIMIT}'")
        fs.duck_conn.execute(f"SET temp_directory = '{_sql_str(str(path.parent / SPILL_DIR))}'")
    except duckdb.Error as exc:
        fs.duck_conn.close()
        raise _local_open_error(path, exc) from None
    return Connection(raw, "local", str(path), closers=[fs.duck_conn])


def _local_open_error(path: Path, exc: Exception) -> WarehouseError:
    msg = str(exc)
    if "lock" in msg.lower():
        pid = re.search(r"PID (\d+)", msg)
        who = f"process {pid.group(1)}" if pid else "another process"
        return WarehouseError(
            f"local world {path} is locked by {who} (it has the file open for writing); "
            "wait for it to finish or stop it, then retry"
        )
    if "already attached" in msg or "file handle conflict" in msg.lower():
        return WarehouseError(
            f"local world {path} is already open in this process in another mode (read-write vs read-only); "
            "close that connection first (use `with warehouse.connect() as conn:`)"
        )
    return WarehouseError(
        f"local world {path} is unreadable ({msg.splitlines()[0]}); it is corrupt or truncated: "
        "rebuild it with `make world` (or `smartrouter world build`)"
    )


def _snowflake_kwargs(login_timeout: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"login_timeout": login_timeout, "network_timeout": max(login_timeout, 60)}
    if os.environ.get("SNOWFLAKE_ACCOUNT"):
        for key in _SNOWFLAKE_ENV_KEYS:
            value = os.environ.get(f"SNOWFLAKE_{key.upper()}")
            if value:
                kwargs[key] = value
    return kwargs


def _connect_snowflake(s: Settings, *, login_timeout: int) -> Connection:
    import snowflake.connector
    from snowflake.connector.config_manager import CONFIG_MANAGER

    kwargs = _snowflake_kwargs(login_timeout)
    name: str | None = None
    if "account" not in kwargs:
        # Passing any keyword (our timeouts) stops the connector from picking its default
        # connection by itself, so resolve the name the way it would.
        try:
            name = s.snowflake_connection or CONFIG_MANAGER["default_connection_name"]
            connections = CONFIG_MANAGER["connections"]
            known = list(connections.keys())
            if name in connections:  # the user's own timeouts in connections.toml win over ours
                kwargs = {k: v for k, v in kwargs.items() if k not in connections[name]}
        except Exception as exc:  # unreadable/invalid connections.toml
            raise WarehouseError(
                f"Snowflake is configured (SMARTROUTER_WAREHOUSE=snowflake) but its configuration cannot be read: "
                f"{_one_line(exc)}; fix ~/.snowflake/connections.toml"
            ) from None
        if name not in known:
            raise WarehouseError(
                f"Snowflake is configured (SMARTROUTER_WAREHOUSE=snowflake) but connection {name!r} is not defined "
                f"(known: {', '.join(known) or 'none'}); add it to ~/.snowflake/connections.toml, set "
                "SMARTROUTER_SNOWFLAKE_CONNECTION to a defined one, or set SNOWFLAKE_ACCOUNT/SNOWFLAKE_USER/... "
                "(or SMARTROUTER_WAREHOUSE=local for the local world)"
            )
    where = f"account {kwargs['account']}" if "account" in kwargs else f"connection {name!r}"
    try:
        raw = snowflake.connector.connect(connection_name=name, **kwargs)
    except snowflake.connector.errors.Error as exc:
        raise WarehouseError(
            f"cannot connect to Snowflake ({where}): {_one_line(exc)}; check the account, credentials and network "
            "(connections.toml or SNOWFLAKE_* variables), or set SMARTROUTER_WAREHOUSE=local for the local world"
        ) from None
    except Exception as exc:  # DNS/socket/TLS errors can escape the connector's own types
        raise WarehouseError(
            f"cannot reach Snowflake ({where}): {type(exc).__name__}: {_one_line(exc)}; check the account and "
            "network, or set SMARTROUTER_WAREHOUSE=local for the local world"
        ) from None
    return Connection(raw, "snowflake", where)


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:400]


def _sql_str(value: str) -> str:
    return value.replace("'", "''")


# ------------------------------------------------------------------ SQL files and queries
def sql_text(name: str) -> str:
    """The text of ``src/smartrouter/sql/<name>.sql`` (one query per file)."""
    path = SQL_DIR / f"{name}.sql"
    if not _SQL_NAME.match(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in SQL_DIR.glob("*.sql"))) or "none"
        raise WarehouseError(f"no SQL file named {name!r} in {SQL_DIR}; known queries: {known}")
    return path.read_text(encoding="utf-8")


def _resolve_sql(sql_or_name: str) -> str:
    text = sql_or_name.strip()
    if not text:
        raise WarehouseError("empty SQL query; pass a Snowflake SQL statement or the name of a file in sql/")
    return sql_text(text) if _SQL_NAME.match(text) else text


@contextlib.contextmanager
def _connection(conn: Connection | Any | None, settings: Settings | None) -> Iterator[Any]:
    if conn is not None:
        yield conn
        return
    with connect(settings) as own:
        yield own


def _execute(conn: Any, sql: str, params: Mapping[str, Any] | Sequence[Any] | None) -> Any:
    """Run ``sql`` on a new cursor, mapping warehouse errors to WarehouseError."""
    import snowflake.connector

    kind = getattr(conn, "kind", "snowflake")
    where = "the local world" if kind == "local" else "Snowflake"
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
    except snowflake.connector.errors.ProgrammingError as exc:
        if exc.errno == 2003:
            obj = re.search(r"(?:Table|View|Object)(?: with name)? '?\"?([\w.$]+)", exc.msg or "")
            name = obj.group(1) if obj else "(see message)"
            qualified = re.search(rf"[\w$.]*\b{re.escape(name)}\b", sql, re.IGNORECASE) if obj else None
            name = qualified.group(0).upper() if qualified else name
            raise WarehouseError(
                f"view {name} does not exist in {where}: {_one_line(exc)}; check the name (views live in "
                f"{catalog.DATABASE}.SOURCES and {catalog.DATABASE}.ABTESTING) or rebuild the local world"
            ) from None
        raise WarehouseError(f"query failed on {where}: {_one_line(exc)}; fix the SQL") from None
    except snowflake.connector.errors.Error as exc:
        raise WarehouseError(f"query failed on {where}: {_one_line(exc)}") from None
    except (KeyError, TypeError, ValueError) as exc:  # pyformat parameters that do not match the query
        raise WarehouseError(
            f"query parameters do not match the SQL ({type(exc).__name__}: {exc}); "
            "use %(name)s placeholders and pass every name"
        ) from None
    except Exception as exc:  # duckdb errors fakesnow does not translate (e.g. read-only writes)
        if type(exc).__module__.startswith(("duckdb", "_duckdb")):
            if kind == "local" and "IO Error" in str(exc):  # a damaged file shows when its pages are read
                raise WarehouseError(
                    f"local world {conn.where} is unreadable ({_one_line(exc)}); it is corrupt or truncated: "
                    "rebuild it with `make world` (or `smartrouter world build`)"
                ) from None
            raise WarehouseError(f"query failed on {where}: {_one_line(exc)}") from None
        raise
    return cur


def _arrow_to_frame(table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Arrow → pandas the way the Snowflake connector does it: NUMBER(p,0) → integers, other
    NUMBERs → float (DuckDB hands DECIMALs back as Python Decimal objects)."""
    frame = table.to_pandas()
    for f in table.schema:
        if pa.types.is_decimal(f.type):
            col = frame[f.name]
            if f.type.scale == 0:
                frame[f.name] = pd.array(col, dtype="Int64") if col.isna().any() else col.astype("int64")
            else:
                frame[f.name] = col.astype("float64")
    return frame


def query_frame(
    sql_or_name: str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    conn: Connection | Any | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Run a Snowflake SQL statement (or the SQL file of that name) and return one DataFrame.

    Parameters use the connector's pyformat style: ``WHERE CREATED_AT >= %(start)s``.
    """
    sql = _resolve_sql(sql_or_name)
    with _connection(conn, settings) as c:
        cur = _execute(c, sql, params)
        arrow = getattr(cur, "_arrow_table", None)
        if arrow is not None:  # local: fakesnow already holds the result as Arrow
            return _arrow_to_frame(arrow)
        return cur.fetch_pandas_all()


def iter_frames(
    sql_or_name: str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    conn: Connection | Any | None = None,
    settings: Settings | None = None,
) -> Iterator[pd.DataFrame]:
    """Run a query and yield its result as DataFrames of at most ``batch_rows`` rows.

    On Snowflake this streams (``fetch_pandas_batches``: memory bounded by one batch). On the
    local world fakesnow materializes the whole result as one Arrow table first (columnar and
    compact, a fraction of the pandas size); only the pandas side is batched there.
    """
    if batch_rows <= 0:
        raise ConfigError(f"batch_rows={batch_rows} must be positive")
    sql = _resolve_sql(sql_or_name)
    with _connection(conn, settings) as c:
        cur = _execute(c, sql, params)
        arrow = getattr(cur, "_arrow_table", None)
        if arrow is not None:
            for batch in arrow.to_batches(max_chunksize=batch_rows):
                yield _arrow_to_frame(batch)
            return
        emitted = False
        for frame in cur.fetch_pandas_batches():
            for start in range(0, max(len(frame), 1), batch_rows):
                part = frame.iloc[start : start + batch_rows]
                if len(part) or not emitted:
                    emitted = True
                    yield part.reset_index(drop=True)


# ------------------------------------------------------------------ writing the local world
@dataclass(frozen=True)
class WorldSummary:
    """What a build wrote: where, how many rows per table, which dates, how long it took."""

    db_path: str
    rows: dict[str, int]
    days: int
    start: str
    end: str
    build_seconds: float
    fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return self.rows.get(catalog.ATTEMPTS_VIEW, 0)


def _ddl_columns(columns: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {sql_type}" for name, sql_type in columns.items())


# Tables and their column definitions (the one definition is catalog.*_COLUMNS).
_TABLES: tuple[tuple[str, dict[str, str]], ...] = (
    (catalog.ATTEMPTS_VIEW, catalog.ATTEMPT_COLUMNS),
    (catalog.ROUTING_LOG_VIEW, catalog.ROUTING_LOG_COLUMNS),
    (catalog.RULES_VIEW, catalog.RULE_COLUMNS),
)
# The flat view prefixes the routing log's columns so they do not clash with the attempt's.
FLAT_ROUTING_PREFIX = "ROUTING_"


def flat_view_columns() -> list[str]:
    """Columns of ABTESTING.ALL_VIEWS_FLAT: every attempt column, then ROUTING_<col> for the log."""
    return list(catalog.ATTEMPT_COLUMNS) + [
        FLAT_ROUTING_PREFIX + c for c in catalog.ROUTING_LOG_COLUMNS if c != "ATTEMPT_ID"
    ]


def _flat_view_sql() -> str:
    routing = ",\n    ".join(
        f"r.{c} AS {FLAT_ROUTING_PREFIX}{c}" for c in catalog.ROUTING_LOG_COLUMNS if c != "ATTEMPT_ID"
    )
    return sql_text("create_all_views_flat").replace("{{ROUTING_COLUMNS}}", routing)


def _insert(duck: Any, table: str, frame: pd.DataFrame, columns: Mapping[str, str]) -> int:
    """Bulk insert through DuckDB's pandas scan (fakesnow's row-by-row path would take minutes)."""
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise WarehouseError(
            f"world chunk for {table} does not match catalog columns (missing {missing}, unexpected {extra}); "
            "the world generator and smartrouter.catalog disagree: align them"
        )
    names = ", ".join(columns)
    duck.register("_chunk", frame)
    try:
        duck.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _chunk")
    finally:
        duck.unregister("_chunk")
    return len(frame)


def _fingerprint(duck: Any) -> str:
    """Content hash of every table: order-independent (XOR of row hashes) and cheap."""
    h = hashlib.sha256()
    for table, _ in _TABLES:
        n, x = duck.execute(f"SELECT COUNT(*), COALESCE(BIT_XOR(HASH(t)), 0) FROM {table} t").fetchone()
        h.update(f"{table}:{n}:{x};".encode())
    return h.hexdigest()[:16]


def _iso(value: Any) -> str:
    return pd.Timestamp(value).isoformat() if value is not None else ""


def write_world(world: World, settings: Settings | None = None, progress: bool = True) -> WorldSummary:
    """Generate ``world`` day by day into the local warehouse and swap it in atomically.

    Writes into a temporary DuckDB file beside the live one, then ``os.replace`` onto
    PAYMENT_ML.db and writes world.json. Same params → identical table contents.
    """
    from filelock import FileLock, Timeout
    from tqdm import tqdm

    s = _settings(settings)
    target_dir = s.local_dir
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WarehouseError(f"cannot create {target_dir}: {exc}; set SMARTROUTER_LOCAL_DIR to a writable folder")
    lock = FileLock(str(target_dir / BUILD_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise WarehouseError(
            f"another world build is running in {target_dir} (lock {BUILD_LOCK}); wait for it to finish"
        ) from None
    t0 = time.perf_counter()
    tmp_dir = target_dir / f".building-{os.getpid()}"
    try:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        rows, days = _build_db(world, tmp_dir, progress=progress, tqdm=tqdm)
        conn = _open_local(tmp_dir / DB_FILE, read_only=True)
        with conn:
            # hashing reads every table: cap the block cache so memory does not grow with the span
            conn.raw._duck_conn.execute(f"SET memory_limit = '{BUILD_MEMORY_LIMIT}'")
            fingerprint = _fingerprint(conn.raw._duck_conn)
        seconds = time.perf_counter() - t0
        params = world.params.to_dict()
        info = {
            "format": WORLD_FORMAT,
            "params": params,
            "start": _iso(world.start),  # [start, end): CREATED_AT of every row falls in it
            "end": _iso(world.end),
            "first_day": _iso(world.start)[:10],
            "last_day": (pd.Timestamp(world.end) - pd.Timedelta(microseconds=1)).date().isoformat(),
            "days": days,
            "rows": rows,
            "built_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "build_seconds": round(seconds, 2),
            "fingerprint": fingerprint,
            "db_file": DB_FILE,
        }
        # Remove the old world.json first: if we die between the swap and the write, the db is
        # left without a description (load_world_params refuses) rather than with a wrong one.
        with contextlib.suppress(FileNotFoundError):
            (target_dir / WORLD_FILE).unlink()
        os.replace(tmp_dir / DB_FILE, target_dir / DB_FILE)
        _write_json(target_dir / WORLD_FILE, info)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        lock.release()
    return WorldSummary(
        db_path=str(target_dir / DB_FILE),
        rows=rows,
        days=days,
        start=info["start"],
        end=info["end"],
        build_seconds=info["build_seconds"],
        fingerprint=fingerprint,
        params=params,
    )


def _build_db(world: World, tmp_dir: Path, *, progress: bool, tqdm: Any) -> tuple[dict[str, int], int]:
    """Create schemas, tables and the flat view in ``tmp_dir/PAYMENT_ML.db`` and load every day."""
    conn = _open_local(tmp_dir / DB_FILE, read_only=False)
    with conn:
        cur = conn.cursor()
        for schema in catalog.SCHEMAS:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog.DATABASE}.{schema}")
        for table, columns in _TABLES:
            cur.execute(f"CREATE OR REPLACE TABLE {table} ({_ddl_columns(columns)})")
        duck = conn.raw._duck_conn
        rows = {table: 0 for table, _ in _TABLES}
        rows[catalog.RULES_VIEW] = _insert(duck, catalog.RULES_VIEW, world.rules_frame(), catalog.RULE_COLUMNS)
        days = 0
        bar = tqdm(
            total=getattr(world.params, "days", None), desc="world", unit="day", file=sys.stderr,
            disable=not progress, leave=True,
        )  # fmt: skip
        # Load a week per transaction: DuckDB then writes row groups straight into the file
        # instead of logging every day separately, and uncommitted data stays bounded; the
        # memory limit bounds its block cache, so a build's memory does not grow with the span.
        duck.execute(f"SET memory_limit = '{BUILD_MEMORY_LIMIT}'")
        duck.execute("BEGIN TRANSACTION")
        with bar:
            for chunk in _prefetched(world.iter_days()):
                if days and days % DAYS_PER_COMMIT == 0:
                    duck.execute("COMMIT")
                    duck.execute("BEGIN TRANSACTION")
                rows[catalog.ATTEMPTS_VIEW] += _insert(duck, catalog.ATTEMPTS_VIEW, chunk.attempts, catalog.ATTEMPT_COLUMNS)
                rows[catalog.ROUTING_LOG_VIEW] += _insert(
                    duck, catalog.ROUTING_LOG_VIEW, chunk.routing_log, catalog.ROUTING_LOG_COLUMNS
                )
                days += 1
                bar.set_postfix(attempts=f"{rows[catalog.ATTEMPTS_VIEW]:,}", refresh=False)
                bar.update(1)
        duck.execute("COMMIT")
        cur.execute(_flat_view_sql())
        duck.execute("CHECKPOINT")
    return rows, days


def _prefetched(chunks: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Generate the next days in a background thread while the caller loads the current one.

    Generation (numpy) and loading (DuckDB) each leave the other core free much of the time, so
    overlapping them shortens a build on a 2-core machine; at most ``depth`` days wait in memory.
    Each day is generated independently of the others, so the tables stay deterministic.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=produce, name="world-generator", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            thread.join(timeout=0.05)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic.write_json(path, payload, indent=2, sort_keys=True)


def replace_day(day: date, attempts: pd.DataFrame, routing_log: pd.DataFrame, settings: Settings | None = None) -> dict[str, int]:
    """Put one day's attempts and routing log into the local warehouse in ONE transaction that first
    deletes whatever that day held: a reader sees the day whole or not at all, and redoing a day
    (the live loop after a crash) never duplicates a row. Returns the rows written per table."""
    s = _settings(settings)
    if s.warehouse != "local":
        raise WarehouseError("appending simulated days needs the local world (SMARTROUTER_WAREHOUSE=local); "
                             "Snowflake holds real logs")
    start = datetime(day.year, day.month, day.day)
    end = start + timedelta(days=1)
    for name, frame in (("attempts", attempts), ("routing log", routing_log)):
        created = pd.to_datetime(frame["CREATED_AT"])
        if len(created) and (created.min() < start or created.max() >= end):
            raise WarehouseError(f"{name} rows for {day} stamped {created.min()}..{created.max()}, outside that day; "
                                 "a day's rows must fall in [00:00, 24:00) UTC of it")
    rows: dict[str, int] = {}
    with connect(s, read_only=False) as conn:
        duck = conn.raw._duck_conn
        duck.execute("BEGIN TRANSACTION")
        try:
            for table, frame, columns in ((catalog.ATTEMPTS_VIEW, attempts, catalog.ATTEMPT_COLUMNS),
                                          (catalog.ROUTING_LOG_VIEW, routing_log, catalog.ROUTING_LOG_COLUMNS)):
                duck.execute(f"DELETE FROM {table} WHERE CREATED_AT >= ? AND CREATED_AT < ?", [start, end])
                rows[table] = _insert(duck, table, frame, columns)
            duck.execute("COMMIT")
        except BaseException:
            duck.execute("ROLLBACK")
            raise
    return rows


# ------------------------------------------------------------------ reading the world's description
def load_world_info(settings: Settings | None = None) -> dict[str, Any]:
    """The local world's world.json as a dict; WarehouseError if the data did not come from the world."""
    s = _settings(settings)
    if s.warehouse != "local":
        raise WarehouseError(
            "the configured warehouse is Snowflake, whose data did not come from the synthetic world: "
            "there is no world.json (skip truth checks, or set SMARTROUTER_WAREHOUSE=local)"
        )
    path = world_file(s)
    if not path.exists():
        if db_path(s).exists():
            raise WarehouseError(
                f"{path} is missing, so the local warehouse cannot be tied to a world; rebuild it with `make world`"
            )
        raise WarehouseError(f"local world not built: {path} does not exist; run `make world` (or `smartrouter world build`)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or "params" not in info:
            raise ValueError("no 'params' entry")
    except (ValueError, OSError) as exc:
        raise WarehouseError(f"{path} is unreadable ({exc}); rebuild the world with `make world`") from None
    return info


def load_world_params(settings: Settings | None = None, *, verify: bool = False) -> WorldParams:
    """The WorldParams that generated the local world (rebuild ``World(params)`` for its oracle).

    ``verify=True`` also recomputes the tables' fingerprint and refuses if they changed since.
    """
    from smartrouter.world import WorldParams

    s = _settings(settings)
    info = load_world_info(s)
    try:
        params = WorldParams.from_dict(info["params"])
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{world_file(s)} holds parameters this version cannot read ({type(exc).__name__}: {exc}); "
            "rebuild the world with `make world`"
        ) from None
    if verify:
        with connect(s) as conn:
            conn.raw._duck_conn.execute(f"SET memory_limit = '{BUILD_MEMORY_LIMIT}'")
            now = _fingerprint(conn.raw._duck_conn)
        if now != info.get("fingerprint"):
            raise WarehouseError(
                f"the local warehouse {db_path(s)} changed since world.json was written "
                f"(fingerprint {now} != {info.get('fingerprint')}); rebuild it with `make world`"
            )
    return params


def world_age_hours(settings: Settings | None = None) -> float | None:
    """Hours since the local world was built (None when it is not there)."""
    path = db_path(settings)
    if not path.exists():
        return None
    return (time.time() - path.stat().st_mtime) / 3600.0


def summary_dict(summary: WorldSummary) -> dict[str, Any]:
    """A WorldSummary as a plain dict (for JSON and notebooks)."""
    return asdict(summary)
