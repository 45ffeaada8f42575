"""Shipping the decision log to the warehouse: complete lines only, idempotent, nothing lost."""

from __future__ import annotations

import json
import shutil

import pytest

from routing_fakes import FakeModel, payment
from smartrouter import warehouse
from smartrouter.cli import main
from smartrouter.errors import ConfigError, WarehouseError
from smartrouter.rules import RulesEngine
from smartrouter.routing import Router, load_routing_config
from smartrouter.routing.decision_log import DecisionLog
from smartrouter.routing.shipping import PROGRESS_FILE, TABLE, ship
from routing_fakes import RULE_ROWS


class _Holder:
    def __init__(self, model):
        self.current = type("Loaded", (), {"model": model, "version": "v7", "rules_rows": None})()
        self.version = "v7"


def write_log(directory, n_decisions: int, start: int = 0, segment_records: int = 40) -> None:
    cfg = load_routing_config(overrides={"exploration": {"enabled": False}, "experiment": {"treatment_share": 1.0}})
    router = Router(cfg, RulesEngine(RULE_ROWS), _Holder(FakeModel()), seed=1)
    log = DecisionLog(directory, segment_records=segment_records, flush_seconds=0.01)
    for i in range(start, start + n_decisions):
        p = payment(ORDER_ID=f"O{i}")
        d = router.decide(dict(p), at=1_700_000_000.0 + i)
        log.append_lazy(d.record, p)
        log.append({"kind": "outcome", "request_id": d.request_id, "processor": d.chosen, "status": "APPROVED",
                    "outcome_kind": "approved", "created_at": "2023-11-14T22:13:20"})
    log.start()
    log.close()


@pytest.fixture
def wh(tmp_path):
    (tmp_path / "wh").mkdir()
    conn = warehouse._open_local(tmp_path / "wh" / "PAYMENT_ML.db", read_only=False)
    yield conn
    conn.close()


def count(conn, where: str = "TRUE") -> int:
    cur = conn.cursor()
    cur.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE {where}")
    return cur.fetchone()[0]


def test_ship_loads_every_line_once_and_only_complete_lines(tmp_path, wh):
    logdir = tmp_path / "decisions"
    write_log(logdir, 50)  # 100 records in segments of 40
    r = ship(logdir, conn=wh)
    assert r.shipped == 100 and r.segments == 3 and count(wh) == 100
    cur = wh.cursor()
    cur.execute(f"SELECT KIND, PROCESSOR, SOURCE, ARM, PROPENSITY, MODEL_VERSION, ORDER_ID, RECORD FROM {TABLE} "
                "WHERE KIND = 'decision' ORDER BY SEGMENT_FILE, LINE_NO LIMIT 1")
    kind, proc, source, arm, prop, version, order, record = cur.fetchone()
    assert (kind, source, arm, prop, version, order) == ("decision", "model", "treatment", 1.0, "v7", "O0")
    assert json.loads(record)["chosen"] == proc
    # nothing new: nothing shipped
    again = ship(logdir, conn=wh)
    assert again.shipped == 0 and again.already == 100 and count(wh) == 100
    # a segment still being written: its complete lines go now, the partial line waits
    last = sorted(logdir.glob("decisions-*.jsonl"))[-1]
    with open(last, "a") as fh:
        fh.write(json.dumps({"kind": "outcome", "processor": "MIT", "status": "TIMEOUT"}) + "\n")
        fh.write('{"kind": "outcome", "proc')
    r = ship(logdir, conn=wh)
    assert r.shipped == 1 and r.pending_partial == 1 and count(wh) == 101
    with open(last, "a") as fh:
        fh.write('essor": "MIT", "status": "APPROVED"}\n')
    assert ship(logdir, conn=wh).shipped == 1 and count(wh, "PROCESSOR = 'MIT' AND KIND = 'outcome' AND STATUS = 'APPROVED'") >= 1


def test_a_load_that_died_before_its_bookkeeping_is_not_duplicated(tmp_path, wh):
    logdir = tmp_path / "decisions"
    write_log(logdir, 30)
    before = (logdir / PROGRESS_FILE)
    ship(logdir, conn=wh)
    assert count(wh) == 60
    progress = json.loads(before.read_text())
    first = sorted(progress)[0]
    progress[first] = 5  # as if the run crashed after commit but before recording how far it got
    before.write_text(json.dumps(progress))
    r = ship(logdir, conn=wh)
    assert r.shipped == 35 and count(wh) == 60  # lines 5.. of that segment replaced, not added
    assert count(wh, f"SEGMENT_FILE = '{first}'") == 40


def test_warehouse_failure_marks_nothing_shipped_and_names_the_fix(tmp_path, wh):
    logdir = tmp_path / "decisions"
    write_log(logdir, 10)

    class Broken:
        def __init__(self, conn):
            self.conn = conn

        def cursor(self):
            cur = self.conn.cursor()

            class C:
                def execute(self, *a, **k):
                    return cur.execute(*a, **k)

                def executemany(self, *a, **k):
                    raise RuntimeError("connection reset by peer")

            return C()

        def commit(self):
            raise AssertionError("must not commit")

    with pytest.raises(WarehouseError, match="nothing was marked shipped: rerun `smartrouter decisions ship`"):
        ship(logdir, conn=Broken(wh))
    assert not (logdir / PROGRESS_FILE).exists()
    assert ship(logdir, conn=wh).shipped == 20  # the next run catches up


def test_bad_progress_file_and_missing_folder_are_named(tmp_path, wh):
    with pytest.raises(ConfigError, match="no decision log at"):
        ship(tmp_path / "nowhere", conn=wh)
    logdir = tmp_path / "decisions"
    write_log(logdir, 2)
    (logdir / PROGRESS_FILE).write_text("{half")
    with pytest.raises(ConfigError, match="shipped.json is unreadable.*delete it"):
        ship(logdir, conn=wh)


def test_cli_ships_into_the_configured_warehouse(tmp_path, wh, monkeypatch, capsys):
    wh.close()
    logdir = tmp_path / "decisions"
    write_log(logdir, 5)
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path / "wh"))
    monkeypatch.setenv("SMARTROUTER_WAREHOUSE", "local")
    assert main(["decisions", "ship", "--dir", str(logdir)]) == 0
    assert "shipped 10 records" in capsys.readouterr().out
    assert main(["decisions", "summary", "--dir", str(logdir)]) == 0
    out = capsys.readouterr().out
    assert "10 records" in out and "decision" in out
