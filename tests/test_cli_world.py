"""`smartrouter world ...` and `smartrouter sql ...` on a small real world (the generator end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from smartrouter import catalog, warehouse
from smartrouter.cli import main
from smartrouter.config import load_settings

SMALL = ["--profile", "small", "--days", "3", "--per-day", "400", "--seed", "11", "--end", "2024-03-31", "--quiet"]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A small world built once through the CLI; the env points every command at it."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMARTROUTER_HOME", str(root))
        mp.setenv("SMARTROUTER_LOCAL_DIR", str(root / "wh"))
        mp.setenv("SMARTROUTER_WAREHOUSE", "local")
        assert main(["world", "build", *SMALL]) == 0
        yield root / "wh"


@pytest.fixture()
def env(world_dir, monkeypatch):
    monkeypatch.setenv("SMARTROUTER_HOME", str(world_dir.parent))
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(world_dir))
    monkeypatch.setenv("SMARTROUTER_WAREHOUSE", "local")
    return world_dir


def test_build_writes_world_and_info(env, capsys):
    info = json.loads((env / "world.json").read_text())
    assert info["params"]["days"] == 3 and info["params"]["per_day"] == 400 and info["params"]["seed"] == 11
    assert (info["first_day"], info["last_day"]) == ("2024-03-29", "2024-03-31")
    assert 1000 < info["rows"][catalog.ATTEMPTS_VIEW] < 1600
    assert main(["world", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == info["fingerprint"]
    params = warehouse.load_world_params()
    assert (params.days, params.per_day, params.seed, str(params.end)) == (3, 400, 11, "2024-03-31")


def test_same_params_rebuild_identical_tables(env, tmp_path, monkeypatch):
    first = json.loads((env / "world.json").read_text())
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path / "again"))
    assert main(["world", "build", *SMALL]) == 0
    again = json.loads((tmp_path / "again" / "world.json").read_text())
    assert again["fingerprint"] == first["fingerprint"] and again["rows"] == first["rows"]
    q = f"SELECT * FROM {catalog.FLAT_VIEW} ORDER BY ATTEMPT_ID"
    a = warehouse.query_frame(q, settings=load_settings())
    b = warehouse.query_frame(q, settings=load_settings({"SMARTROUTER_LOCAL_DIR": str(env)}))
    pd.testing.assert_frame_equal(a, b)


def test_summary_reports_the_headline_numbers(env, capsys):
    assert main(["world", "summary"]) == 0
    out = capsys.readouterr().out
    for text in ("rows per table", "VW_ATHENA_PAYMENT_ATTEMPT", "ALL_VIEWS_FLAT", "approval", "PROCESSING",
                 "Amex rule        0 violations", "ADYEN first day  2024-03-31", "per processor"):  # fmt: skip
        assert text in out, text
    assert main(["world", "summary", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overview"]["AMEX_RULE_VIOLATIONS"] == 0
    assert 0.6 < data["overview"]["APPROVAL_RATE"] < 0.95
    assert {p["PROCESSOR"] for p in data["processors"]} == set(catalog.PROCESSORS)


def test_ensure_keeps_an_existing_world(env, capsys):
    before = (env / warehouse.DB_FILE).stat().st_mtime_ns
    assert main(["world", "ensure"]) == 0
    assert "local world is there" in capsys.readouterr().out
    assert (env / warehouse.DB_FILE).stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["world", "build", "--days", "-3"], "days=-3 must be a positive"),
        (["world", "build", "--per-day", "0"], "per_day=0 must be a positive"),
        (["world", "build", "--processors", "WORLDPAY,NOPAY"], "unknown processor(s) NOPAY"),
        (["world", "build", "--end", "2024-02-30"], "is not a date"),
        (["world", "build", "--profile", "huge"], "unknown world profile 'huge'"),
        (["world", "build", "--days", "many"], "is not a whole number"),
        (["sql", "SELECT 1", "--format", "xml"], "invalid choice: 'xml'"),
        (["sql", "SELECT * FROM PAYMENT_ML.SOURCES.VW_NOPE"], "PAYMENT_ML.SOURCES.VW_NOPE does not exist"),
        (["sql", "SELECT 1", "--limit", "-1"], "--limit -1 must be 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(env, capsys, args, needle):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse-level errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_sql_formats(env, capsys):
    q = f"SELECT PROCESSOR, COUNT(*) AS N FROM {catalog.ATTEMPTS_VIEW} GROUP BY PROCESSOR ORDER BY PROCESSOR"
    assert main(["sql", q, "--format", "csv"]) == 0
    csv = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert list(csv.columns) == ["PROCESSOR", "N"] and sorted(csv["PROCESSOR"]) == sorted(catalog.PROCESSORS)
    assert main(["sql", q, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["PROCESSOR"]: r["N"] for r in rows} == dict(zip(csv["PROCESSOR"], csv["N"]))
    assert main(["sql", q]) == 0
    out = capsys.readouterr().out
    assert "PROCESSOR" in out and "(5 rows)" in out
    # a query file by name, and --limit truncation noted on stderr
    assert main(["sql", "approval_by_processor", "--format", "csv", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 3 and "first 2 rows" in captured.err


def test_missing_and_corrupt_world_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path))
    assert main(["world", "summary"]) == 2
    assert "local world not built" in capsys.readouterr().err
    (tmp_path / warehouse.DB_FILE).write_bytes(b"\0garbage" * 4096)
    assert main(["sql", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / warehouse.DB_FILE) in err and "rebuild" in err


def test_snowflake_unreachable_via_cli_is_fast_and_one_line(tmp_path):
    """A connections.toml pointing nowhere: the real entry point fails fast with one line."""
    home = tmp_path / "sfhome"
    home.mkdir()
    toml = home / "connections.toml"
    toml.write_text('[default]\naccount = "nonexistent-smartrouter-test"\nuser = "nobody"\npassword = "x"\n'
                    "login_timeout = 5\n")  # fmt: skip
    toml.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWFLAKE_")}
    env.update(SNOWFLAKE_HOME=str(home), SMARTROUTER_WAREHOUSE="snowflake", SMARTROUTER_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "smartrouter", "sql", "SELECT 1"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(err) == 1, proc.stderr
    last = err[0]
    assert "cannot connect to Snowflake (connection 'default')" in last and "SMARTROUTER_WAREHOUSE=local" in last


def test_ensure_rebuilds_a_corrupt_world(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path))
    (tmp_path / warehouse.DB_FILE).write_bytes(b"\0garbage" * 4096)
    calls = []
    monkeypatch.setattr("smartrouter.cli.world._build", lambda params, quiet: calls.append(params))
    assert main(["world", "ensure", "--quiet"]) == 0
    assert "corrupt" in capsys.readouterr().out
    assert len(calls) == 1 and (calls[0].days, calls[0].per_day) == (84, 10_500)


def test_real_world_passes_every_data_check(env):
    from smartrouter import checks

    frame = warehouse.query_frame(f"SELECT * FROM {catalog.FLAT_VIEW}")
    end = pd.Timestamp("2024-04-01")
    report = checks.check_attempts(frame, table=catalog.FLAT_VIEW, now=end + pd.Timedelta(hours=6))
    assert report.ok, report.message()
    labelled, excluded = checks.labelled(frame)
    assert excluded == int((frame["STATUS"] == "PROCESSING").sum()) > 0
    assert len(labelled) == len(frame) - excluded and set(labelled["APPROVED"].unique()) == {0, 1}
    stale = checks.check_attempts(frame, table=catalog.FLAT_VIEW, now=end + pd.Timedelta(days=10))
    with pytest.raises(Exception, match=r"ALL_VIEWS_FLAT: 1 data check\(s\) failed .*freshness\(CREATED_AT\): 1 offending"):
        stale.require()
