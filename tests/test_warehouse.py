"""Warehouse access: local world I/O, Snowflake SQL through fakesnow, batches, errors.

The loader is tested on a tiny hand-made world with the generator's interface (fast, and
independent of the generator); tests/test_cli_world.py covers the real generator end to end.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, warehouse
from smartrouter.config import load_settings
from smartrouter.errors import WarehouseError

ATTEMPTS = catalog.ATTEMPTS_VIEW


# ------------------------------------------------------------------ a tiny world
@dataclass
class TinyParams:
    days: int = 2
    per_day: int = 60
    seed: int = 1

    def to_dict(self) -> dict:
        return {"days": self.days, "per_day": self.per_day, "seed": self.seed, "end": "2024-03-31"}


@dataclass
class Chunk:
    day: dt.date
    attempts: pd.DataFrame
    routing_log: pd.DataFrame


class TinyWorld:
    """H1's World interface (params, start, end, rules_frame, iter_days) over random rows."""

    def __init__(self, params: TinyParams | None = None, fail_on_day: int | None = None) -> None:
        self.params = params or TinyParams()
        self.end = dt.datetime(2024, 4, 1)
        self.start = self.end - dt.timedelta(days=self.params.days)
        self.fail_on_day = fail_on_day

    def rules_frame(self) -> pd.DataFrame:
        row = dict(RULE_ID=1, MERCHANT="VOLARIS", CURRENCY="*", CARD_BRAND="VISA", CARD_TYPE="*", PROCESSOR="WORLDPAY",
                   PRIORITY=1, SHADOW_MODE=False, ACTIVE_FROM=pd.NaT)  # fmt: skip
        return pd.DataFrame([row], columns=list(catalog.RULE_COLUMNS))

    def iter_days(self):
        rng = np.random.default_rng(self.params.seed)
        for d in range(self.params.days):
            if d == self.fail_on_day:
                raise RuntimeError("generator crashed")
            day = self.start + dt.timedelta(days=d)
            n = self.params.per_day
            ids = [f"A{d:03d}{i:05d}" for i in range(n)]
            procs = rng.choice(["WORLDPAY", "MIT", "ELAVON"], n)
            detail = [json.dumps({"algorithm": "STATIC_RULES", "candidates": ["WORLDPAY", "MIT", "ELAVON"][: 1 + i % 3],
                                  "chosen": p, "propensity": 1.0 / (1 + i % 3)}) for i, p in enumerate(procs)]  # fmt: skip
            a = {c: [None] * n for c in catalog.ATTEMPT_COLUMNS}
            a.update(
                ATTEMPT_ID=ids, PAYMENT_ID=ids, ORDER_ID=ids, USER_ID=ids, MERCHANT="VOLARIS",
                CREATED_AT=pd.Timestamp(day) + pd.to_timedelta(np.sort(rng.integers(0, 86_400, n)), unit="s"),
                PROCESSOR=procs, PROCESSOR_ID=[catalog.PROCESSOR_IDS[p] for p in procs],
                AMOUNT=rng.uniform(10, 900, n).round(2), CURRENCY="MXN", CARD_BIN="411111", CARD_BRAND="VISA",
                CARD_TYPE="CREDIT", STATUS=rng.choice(["APPROVED", "DECLINED", "PROCESSING"], n, p=[0.8, 0.18, 0.02]),
                NUM_ATTEMPTS_ORDER=1 + np.arange(n) % 3, MCI_MSI_TYPE="CIT", AVS_CHECKED=True,
                IS_RETURNING_CUSTOMER=False, PASSENGERS=2, DYNAMIC_ROUTING_DETAIL=detail,
            )  # fmt: skip
            att = pd.DataFrame(a, columns=list(catalog.ATTEMPT_COLUMNS))
            r = {c: [None] * n for c in catalog.ROUTING_LOG_COLUMNS}
            r.update(
                ATTEMPT_ID=ids, ORDER_ID=ids, MERCHANT="VOLARIS", CREATED_AT=att["CREATED_AT"],
                ALGORITHM_TYPE="STATIC_RULES", EXPERIMENT_ARM="CONTROL",
                CANDIDATES=[json.dumps(json.loads(x)["candidates"]) for x in detail], CHOSEN_PROCESSOR=procs,
                PROPENSITY=[json.loads(x)["propensity"] for x in detail], LATENCY_MS=3.0, SKIP_REASONS="[]",
            )  # fmt: skip
            yield Chunk(day.date(), att, pd.DataFrame(r, columns=list(catalog.ROUTING_LOG_COLUMNS)))


def _settings(path: Path, **extra: str):
    return load_settings({"SMARTROUTER_HOME": str(path), "SMARTROUTER_LOCAL_DIR": str(path / "wh"), **extra})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny world written once for the module: (settings, summary, expected attempts frame)."""
    root = tmp_path_factory.mktemp("wh")
    settings = _settings(root)
    summary = warehouse.write_world(TinyWorld(), settings, progress=False)
    expected = pd.concat([c.attempts for c in TinyWorld().iter_days()], ignore_index=True)
    return settings, summary, expected


@pytest.fixture(scope="module")
def conn(built):
    with warehouse.connect(built[0]) as c:
        yield c


# ------------------------------------------------------------------ round trip and SQL
def test_round_trip_preserves_rows_and_values(built, conn):
    _, summary, expected = built
    assert summary.rows == {ATTEMPTS: 120, catalog.ROUTING_LOG_VIEW: 120, catalog.RULES_VIEW: 1}
    assert summary.days == 2
    got = warehouse.query_frame(f"SELECT * FROM {ATTEMPTS} ORDER BY ATTEMPT_ID", conn=conn)
    assert list(got.columns) == list(catalog.ATTEMPT_COLUMNS)
    exp = expected.sort_values("ATTEMPT_ID").reset_index(drop=True)
    assert got["ATTEMPT_ID"].tolist() == exp["ATTEMPT_ID"].tolist()
    np.testing.assert_allclose(got["AMOUNT"], exp["AMOUNT"])
    assert (got["CREATED_AT"].astype("datetime64[ns]") == exp["CREATED_AT"].astype("datetime64[ns]")).all()
    assert got["STATUS"].tolist() == exp["STATUS"].tolist()
    # NUMBER(p,0) comes back as integers, like the Snowflake connector gives them
    assert got["NUM_ATTEMPTS_ORDER"].dtype.kind == "i" and got["PROCESSOR_ID"].dtype.kind == "i"
    assert got["NUM_ATTEMPTS_ORDER"].tolist() == exp["NUM_ATTEMPTS_ORDER"].tolist()


def test_views_exist_with_snowflake_names(conn):
    counts = warehouse.query_frame("table_counts", conn=conn)
    assert dict(zip(counts["TABLE_NAME"], counts["ROW_COUNT"])) == {
        "SOURCES.VW_ATHENA_PAYMENT_ATTEMPT": 120,
        "SOURCES.VW_SMART_ROUTING_ATTEMPTS": 120,
        "SOURCES.VW_ROUTING_MERCHANT_RULE": 1,
        "ABTESTING.ALL_VIEWS_FLAT": 120,
    }
    flat = warehouse.query_frame(f"SELECT * FROM {catalog.FLAT_VIEW} LIMIT 3", conn=conn)
    assert list(flat.columns) == warehouse.flat_view_columns()
    assert flat["ROUTING_CHOSEN_PROCESSOR"].tolist() == flat["PROCESSOR"].tolist()


def test_variant_columns_answer_snowflake_sql(conn, built):
    expected = built[2]
    got = warehouse.query_frame(
        f"""SELECT ATTEMPT_ID, DYNAMIC_ROUTING_DETAIL:propensity::float AS P,
                   ARRAY_SIZE(DYNAMIC_ROUTING_DETAIL:candidates) AS K,
                   DYNAMIC_ROUTING_DETAIL:chosen::varchar AS CHOSEN
            FROM {ATTEMPTS} ORDER BY ATTEMPT_ID""",
        conn=conn,
    )
    exp = expected.sort_values("ATTEMPT_ID").reset_index(drop=True)
    detail = exp["DYNAMIC_ROUTING_DETAIL"].map(json.loads)
    np.testing.assert_allclose(got["P"], detail.map(lambda d: d["propensity"]))
    assert got["K"].tolist() == detail.map(lambda d: len(d["candidates"])).tolist()
    assert got["CHOSEN"].tolist() == exp["PROCESSOR"].tolist()
    # propensity x candidate-set size == 1 for the uniform choice the tiny world logs
    np.testing.assert_allclose(got["P"] * got["K"], 1.0)
    sizes = warehouse.query_frame(f"SELECT ARRAY_SIZE(ROUTING_CANDIDATES) AS K FROM {catalog.FLAT_VIEW}", conn=conn)
    assert sorted(sizes["K"].unique()) == [1, 2, 3]


def test_iter_frames_batches_and_params(conn):
    params = {"start": dt.datetime(2024, 3, 31), "end": dt.datetime(2024, 4, 1)}
    whole = warehouse.query_frame("attempts_window", params, conn=conn)
    assert len(whole) == 60 and whole["CREATED_AT"].min() >= pd.Timestamp("2024-03-31")
    parts = list(warehouse.iter_frames("attempts_window", params, batch_rows=25, conn=conn))
    assert [len(p) for p in parts] == [25, 25, 10]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)


def test_sql_text_and_unknown_names():
    assert "VW_ATHENA_PAYMENT_ATTEMPT" in warehouse.sql_text("attempts_overview")
    with pytest.raises(WarehouseError, match="no SQL file named 'no_such_query'"):
        warehouse.sql_text("no_such_query")


def test_unknown_view_is_a_clear_error(conn):
    with pytest.raises(WarehouseError) as err:
        warehouse.query_frame("SELECT * FROM PAYMENT_ML.SOURCES.VW_NOPE", conn=conn)
    msg = str(err.value)
    assert "PAYMENT_ML.SOURCES.VW_NOPE does not exist in the local world" in msg
    with pytest.raises(WarehouseError, match="query failed on the local world"):
        warehouse.query_frame("SELEC 1", conn=conn)


def test_bad_params_are_a_clear_error(conn):
    with pytest.raises(WarehouseError, match="parameters do not match"):
        warehouse.query_frame("attempts_window", {"start": "2024-01-01"}, conn=conn)


# ------------------------------------------------------------------ world.json
def test_world_json_describes_the_build(built):
    settings, summary, _ = built
    info = warehouse.load_world_info(settings)
    assert info["fingerprint"] == summary.fingerprint
    assert info["rows"][ATTEMPTS] == 120 and info["days"] == 2
    assert info["params"] == TinyParams().to_dict()
    params = warehouse.load_world_params(settings, verify=True)
    assert (params.days, params.per_day, params.seed, params.end) == (2, 60, 1, dt.date(2024, 3, 31))


def test_world_params_absent_on_snowflake(tmp_path):
    with pytest.raises(WarehouseError, match="did not come from the synthetic world"):
        warehouse.load_world_info(_settings(tmp_path, SMARTROUTER_WAREHOUSE="snowflake"))
    with pytest.raises(WarehouseError, match="make world"):
        warehouse.load_world_params(_settings(tmp_path))


# ------------------------------------------------------------------ atomic, deterministic builds
def test_same_params_same_tables_and_other_seed_differs(tmp_path, built):
    settings = _settings(tmp_path)
    again = warehouse.write_world(TinyWorld(), settings, progress=False)
    assert again.fingerprint == built[1].fingerprint
    q = f"SELECT * FROM {ATTEMPTS} ORDER BY ATTEMPT_ID"
    with warehouse.connect(settings) as a, warehouse.connect(built[0]) as b:
        pd.testing.assert_frame_equal(warehouse.query_frame(q, conn=a), warehouse.query_frame(q, conn=b))
    other = warehouse.write_world(TinyWorld(TinyParams(seed=2)), settings, progress=False)
    assert other.fingerprint != built[1].fingerprint


def test_failed_build_keeps_the_old_world(tmp_path):
    settings = _settings(tmp_path)
    first = warehouse.write_world(TinyWorld(), settings, progress=False)
    reader = warehouse.connect(settings)  # a reader open during the rebuild keeps its view
    with pytest.raises(RuntimeError, match="generator crashed"):
        warehouse.write_world(TinyWorld(TinyParams(days=3, seed=5), fail_on_day=2), settings, progress=False)
    assert warehouse.query_frame(f"SELECT COUNT(*) AS N FROM {ATTEMPTS}", conn=reader)["N"][0] == 120
    reader.close()
    assert warehouse.load_world_info(settings)["fingerprint"] == first.fingerprint
    leftovers = [p.name for p in (tmp_path / "wh").iterdir() if p.name.startswith(".building")]
    assert leftovers == []
    # a successful rebuild replaces it, and new connections see the new world
    warehouse.write_world(TinyWorld(TinyParams(days=3, per_day=10)), settings, progress=False)
    assert warehouse.query_frame(f"SELECT COUNT(*) AS N FROM {ATTEMPTS}", settings=settings)["N"][0] == 30


def test_concurrent_build_is_refused(tmp_path):
    from filelock import FileLock

    settings = _settings(tmp_path)
    settings.local_dir.mkdir(parents=True)
    with FileLock(str(settings.local_dir / warehouse.BUILD_LOCK)):
        with pytest.raises(WarehouseError, match="another world build is running"):
            warehouse.write_world(TinyWorld(), settings, progress=False)


def test_readers_share_the_file(built):
    with warehouse.connect(built[0]) as a, warehouse.connect(built[0]) as b:
        q = f"SELECT COUNT(*) AS N FROM {ATTEMPTS}"
        assert warehouse.query_frame(q, conn=a)["N"][0] == warehouse.query_frame(q, conn=b)["N"][0] == 120
        with pytest.raises(WarehouseError, match="read-only"):
            warehouse.query_frame(f"DELETE FROM {ATTEMPTS}", conn=a)


def test_a_process_that_opened_the_world_leaves_no_fakesnow_folder_behind(built):
    """fakesnow makes a temp folder at import; a daily run's kernels and the tests would leave
    hundreds of them in /tmp. The process removes it at exit (empty: no stages used)."""
    settings = built[0]
    code = (
        "import sys\n"
        "from smartrouter import warehouse\n"
        "from smartrouter.config import load_settings\n"
        f"s = load_settings({{'SMARTROUTER_HOME': {str(settings.home)!r}, 'SMARTROUTER_LOCAL_DIR': {str(settings.local_dir)!r}}})\n"
        "with warehouse.connect(s) as c:\n"
        "    warehouse.query_frame('SELECT 1 AS X', conn=c)\n"
        "from fakesnow.transforms import stage\n"
        "print(stage.LOCAL_BUCKET_PATH)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("fakesnow_bucket_")
    assert not folder.exists(), f"{folder} left behind"


# ------------------------------------------------------------------ broken local files
def test_missing_world_says_how_to_build(tmp_path):
    with pytest.raises(WarehouseError, match=r"local world not built: .*PAYMENT_ML.db does not exist; run `make world`"):
        warehouse.connect(_settings(tmp_path))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_world_names_the_file_and_the_fix(tmp_path, built, damage):
    settings = _settings(tmp_path)
    settings.local_dir.mkdir(parents=True)
    path = warehouse.db_path(settings)
    good = warehouse.db_path(built[0]).read_bytes()
    path.write_bytes({"garbage": b"not a database " * 500, "truncated": good[: len(good) // 2], "empty": b""}[damage])
    with pytest.raises(WarehouseError) as err:
        with warehouse.connect(settings) as c:
            warehouse.query_frame(f"SELECT * FROM {ATTEMPTS}", conn=c)  # reads every page
    msg = str(err.value)
    assert str(path) in msg and "make world" in msg


def test_world_locked_by_another_process(tmp_path, built):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); time.sleep(30)",
         str(warehouse.db_path(built[0]))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(WarehouseError, match=rf"locked by process {holder.pid}.*wait for it"):
            warehouse.connect(built[0])
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ Snowflake configured
def test_snowflake_unreachable_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("SNOWFLAKE_ACCOUNT", "nonexistent-smartrouter-test")
    monkeypatch.setenv("SNOWFLAKE_USER", "nobody")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "wrong")
    t0 = time.monotonic()
    with pytest.raises(WarehouseError) as err:
        warehouse.connect(_settings(tmp_path, SMARTROUTER_WAREHOUSE="snowflake"), login_timeout=5)
    assert time.monotonic() - t0 < 15
    msg = str(err.value)
    assert "Snowflake" in msg and "nonexistent-smartrouter-test" in msg and "SMARTROUTER_WAREHOUSE=local" in msg
    assert "wrong" not in msg  # the password is never echoed


def test_snowflake_undefined_connection(monkeypatch, tmp_path):
    monkeypatch.delenv("SNOWFLAKE_ACCOUNT", raising=False)
    settings = _settings(tmp_path, SMARTROUTER_WAREHOUSE="snowflake", SMARTROUTER_SNOWFLAKE_CONNECTION="nowhere_conn")
    with pytest.raises(WarehouseError, match="connection 'nowhere_conn' is not defined.*connections.toml"):
        warehouse.connect(settings)
