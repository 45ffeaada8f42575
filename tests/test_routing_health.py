"""Processor health state machine: failures count, issuer declines do not; DOWN, probes, recovery."""

from __future__ import annotations

from smartrouter.routing import DEGRADED, DOWN, RECOVERING, UP, HealthTracker
from smartrouter.routing.config import HealthConfig
from smartrouter.routing.health import DECLINE, FAILURE, SUCCESS, outcome_kind


def test_outcome_kinds_follow_the_catalog():
    assert outcome_kind("APPROVED") == SUCCESS
    assert outcome_kind("TIMEOUT") == FAILURE
    assert outcome_kind("ERROR") == FAILURE
    assert outcome_kind("DECLINED", "TIMEOUT") == FAILURE  # processor error category
    assert outcome_kind("DECLINED", "PSP_5XX") == FAILURE
    assert outcome_kind("DECLINED", "05") == DECLINE
    assert outcome_kind("DECLINED", "43") == DECLINE


def test_issuer_declines_never_take_a_processor_down():
    h = HealthTracker(HealthConfig())
    for i in range(200):
        h.observe("ELAVON", DECLINE, at=1000.0 + i)
    assert h.state("ELAVON") == UP


def test_down_within_20_failures_even_after_a_busy_healthy_period():
    h = HealthTracker(HealthConfig())
    t = 1000.0
    for i in range(2000):  # lots of healthy history in the window
        h.observe("WORLDPAY", SUCCESS if i % 5 else DECLINE, at=t + i * 0.2)
    t += 400
    seen = []
    for i in range(20):
        h.observe("WORLDPAY", FAILURE, at=t + i)
        seen.append(h.state("WORLDPAY"))
    assert DOWN in seen
    assert seen.index(DOWN) < 20
    assert seen[0] == UP and DEGRADED in seen[: seen.index(DOWN)]


def test_probe_success_recovers_and_consecutive_successes_restore():
    cfg = HealthConfig(recovery_successes=5)
    events = []
    h = HealthTracker(cfg, on_transition=events.append)
    for i in range(12):
        h.observe("MIT", FAILURE, at=100.0 + i)
    assert h.state("MIT") == DOWN
    h.observe("MIT", FAILURE, at=150.0)  # a failed probe keeps it down
    assert h.state("MIT") == DOWN
    h.observe("MIT", SUCCESS, at=200.0)  # a successful probe
    assert h.state("MIT") == RECOVERING
    h.observe("MIT", FAILURE, at=201.0)  # relapse
    assert h.state("MIT") == DOWN
    h.observe("MIT", SUCCESS, at=300.0)
    for i in range(4):
        h.observe("MIT", DECLINE if i % 2 else SUCCESS, at=301.0 + i)
    assert h.state("MIT") == UP
    assert [(e.old, e.new) for e in events] == [
        (UP, DEGRADED), (DEGRADED, DOWN), (DOWN, RECOVERING), (RECOVERING, DOWN), (DOWN, RECOVERING), (RECOVERING, UP)
    ]
    assert "mit up since" in h.describe("MIT").lower()


def test_old_failures_leave_the_window():
    h = HealthTracker(HealthConfig(window_seconds=300))
    for i in range(4):
        h.observe("ELAVON", FAILURE, at=0.0 + i)
    assert h.state("ELAVON") == DEGRADED
    # ten minutes later the old failures are out of the window; a clean run restores UP
    for i in range(12):
        h.observe("ELAVON", SUCCESS, at=1000.0 + i)
    assert h.state("ELAVON") == UP
    snap = h.snapshot(at=1012.0)["ELAVON"]
    assert snap["window_outcomes"] == 2 and snap["window_failure_rate"] == 0.0  # judged afresh since UP
