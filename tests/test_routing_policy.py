"""The routing decision: eligibility, overrides, arms, confidence fallback, failover, probes, log, reload."""

from __future__ import annotations

import time

import pytest

from routing_fakes import RULE_ROWS, FakeModel, fake_loader, payment, promote_pointer, write_version
from smartrouter.rules import RulesEngine
from smartrouter.routing import DOWN, RECOVERING, ModelHolder, NoEligibleProcessor, Router, load_routing_config
from smartrouter.routing.decision_log import DecisionLog, read_records
from smartrouter.routing.health import FAILURE, SUCCESS


class _Holder:
    """A ModelHolder stand-in holding a fixed model."""

    def __init__(self, model, version="v1"):
        from smartrouter.routing.model_holder import LoadedModel

        self.current = LoadedModel(version, model, None, 0.0, 0.0) if model is not None else None


def make_router(model=None, treatment=1.0, **over) -> Router:
    over.setdefault("exploration", {}).setdefault("enabled", False)
    over.setdefault("health", {}).setdefault("probe_share", 0.0)
    over.setdefault("experiment", {})["treatment_share"] = treatment
    cfg = load_routing_config(overrides=over)
    return Router(cfg, RulesEngine(RULE_ROWS), _Holder(model), seed=1)


def test_amex_is_a_hard_rule_whatever_the_model_says():
    model = FakeModel({"WORLDPAY": 0.99, "MIT": 0.99, "ELAVON": 0.99, "AMEX": 0.40, "ADYEN": 0.99})
    d = make_router(model).decide(payment(CARD_BRAND="AMEX", CARD_BIN="371234"))
    assert d.chosen == "AMEX" and d.source == "hard_rule" and d.eligible == ["AMEX"]
    assert "AMEX card: AMEX only" in d.reasons
    assert [p for p, _ in d.ranked] == ["AMEX"]


def test_model_ranks_top3_with_probabilities_and_usd_excludes_mit():
    d = make_router(FakeModel()).decide(payment())
    assert d.source == "model" and d.arm == "treatment" and d.model_version == "v1"
    assert d.ranked == [("MIT", 0.8), ("ELAVON", 0.75), ("WORLDPAY", 0.7)]
    assert d.chosen == "MIT" and d.propensity == 1.0
    usd = make_router(FakeModel()).decide(payment(CURRENCY="USD"))
    assert "MIT" not in usd.eligible and usd.chosen == "ELAVON"
    assert "MIT does not take USD" in usd.reasons


def test_disabled_processors_candidates_and_bin_overrides():
    r = make_router(FakeModel(), policy={"disabled_processors": ["MIT"]}, bin_overrides={"520473": ["ADYEN", "ELAVON"]})
    d = r.decide(payment())
    assert d.chosen == "ELAVON" and "MIT" not in d.eligible
    assert any("MIT disabled by config" in x for x in d.reasons)
    d = r.decide(payment(), candidates=["WORLDPAY", "ADYEN"])
    assert d.chosen == "WORLDPAY" and set(d.eligible) == {"WORLDPAY", "ADYEN"}
    d = r.decide(payment(CARD_BIN="520473", CARD_BRAND="MASTERCARD"))
    assert d.chosen == "ADYEN" and d.source == "hard_rule"
    assert "BIN 520473 override: ADYEN, ELAVON" in d.reasons
    with pytest.raises(NoEligibleProcessor, match="candidates"):
        r.decide(payment(), candidates=["MIT"])


def test_no_model_means_rules_and_not_confident_means_fallback():
    d = make_router(None).decide(payment())
    assert d.source == "rules" and d.chosen == "WORLDPAY" and d.model_version is None
    assert "no promoted model: static rules" in d.reasons
    shy = FakeModel({p: 0.1 for p in ("WORLDPAY", "MIT", "ELAVON", "AMEX", "ADYEN")})
    d = make_router(shy).decide(payment())
    assert d.source == "fallback" and d.fallback_reason == "not_confident" and d.chosen == "WORLDPAY"
    assert any("model not confident" in x for x in d.reasons)


def test_uncertain_processors_are_not_the_greedy_choice():
    model = FakeModel({"WORLDPAY": 0.7, "MIT": 0.8, "ELAVON": 0.75, "AMEX": 0.8, "ADYEN": 0.95}, uncertain=("ADYEN",))
    d = make_router(model).decide(payment())
    assert d.chosen == "MIT"


def test_control_arm_uses_rules_and_shadow_logs_the_model_choice():
    d = make_router(FakeModel(), treatment=0.0).decide(payment())
    assert d.arm == "control" and d.source == "rules" and d.chosen == "WORLDPAY"
    d = make_router(FakeModel(), treatment=1.0, experiment={"shadow": True}).decide(payment())
    assert d.source == "rules" and d.chosen == "WORLDPAY" and d.shadow_choice == "MIT"


def test_failover_skips_down_processor_with_reason_and_probes():
    r = make_router(FakeModel(), health={"probe_share": 0.02})
    t0 = 1_700_000_000.0  # 2023-11-14 22:13 UTC
    for i in range(12):
        r.observe_outcome("MIT", "TIMEOUT", at=t0 + i)
    assert r.health.state("MIT") == DOWN
    decisions = [r.decide(payment(ORDER_ID=f"o{i}"), at=t0 + 20 + i * 0.01) for i in range(3000)]
    normal = [d for d in decisions if d.chosen != "MIT"]
    probes = [d for d in decisions if d.chosen == "MIT"]
    assert all(d.chosen == "ELAVON" and d.source == "failover" for d in normal)
    assert "MIT down since 22:13: next best ELAVON" in normal[0].reasons
    assert 0.01 < len(probes) / len(decisions) < 0.03
    assert all(d.source == "exploration" and d.propensity == 0.02 for d in probes)
    assert abs(normal[0].propensity - 0.98) < 1e-9
    # a successful probe, then consecutive successes, restore MIT as the model's choice
    for i in range(6):
        r.observe_outcome("MIT", "APPROVED", at=t0 + 100 + i)
    assert r.decide(payment(), at=t0 + 120).chosen == "MIT"


def test_recovering_processor_gets_its_traffic_back_gradually():
    r = make_router(FakeModel(), health={"recovery_successes": 5, "recovery_ramp_start": 0.1})
    t0 = 1_700_000_000.0
    for i in range(12):
        r.observe_outcome("MIT", "TIMEOUT", at=t0 + i)
    r.observe_outcome("MIT", "APPROVED", at=t0 + 30)  # the probe succeeded
    assert r.health.state("MIT") == RECOVERING

    def share_to_mit(n: int = 4000) -> tuple[float, list]:
        ds = [r.decide(payment(ORDER_ID=f"o{i}"), at=t0 + 40) for i in range(n)]
        return sum(d.chosen == "MIT" for d in ds) / n, ds

    first, ds = share_to_mit()
    expected = 0.1 + 0.9 * 1 / 5  # one consecutive success so far
    assert abs(first - expected) < 0.03
    to_mit = [d for d in ds if d.chosen == "MIT"]
    elsewhere = [d for d in ds if d.chosen != "MIT"]
    assert all(abs(d.propensity - expected) < 1e-9 and "ramping up" in d.reasons[-1] for d in to_mit)
    assert all(d.chosen == "ELAVON" and d.source == "failover" and abs(d.propensity - (1 - expected)) < 1e-9
               for d in elsewhere)
    for i in range(2):
        r.observe_outcome("MIT", "APPROVED", at=t0 + 50 + i)
    later, _ = share_to_mit()
    assert later > first + 0.2  # three successes: more traffic
    for i in range(2):
        r.observe_outcome("MIT", "APPROVED", at=t0 + 60 + i)
    assert r.health.state("MIT") == "UP"
    assert share_to_mit(200)[0] == 1.0


def test_seeded_history_is_installed_with_the_outcomes_heard_while_loading():
    from datetime import datetime

    from smartrouter.features import OnlineFeatureState

    r = make_router(FakeModel())
    r.features = OnlineFeatureState()
    r.features_pending()
    t0 = 1_700_000_000.0
    d = r.decide(payment(), at=t0)
    assert d.source == "fallback" and d.fallback_reason == "features_not_ready"
    for i in range(2):  # heard live while the history loads: issuer declines (BIN history) ...
        r.observe_outcome("MIT", "DECLINED", error_code="51", at=t0 + 60 + i, card_bin="415231")
    r.observe_outcome("MIT", "TIMEOUT", at=t0 + 62, card_bin="415231")  # ... and a timeout (health only)
    seeded = OnlineFeatureState()
    until = datetime.utcfromtimestamp(t0)
    seeded.observe("MIT", datetime.utcfromtimestamp(t0 - 600), "APPROVED", None, "415231")  # from the warehouse
    assert r.install_features(seeded, until) == 3
    assert r.features is seeded and r.features_ready
    hist = seeded.bin_features("415231", datetime.utcfromtimestamp(t0 + 120))
    assert hist["BIN_MIT_OUTCOMES"] == 3.0  # the warehouse's approval + the two declines replayed
    health = seeded.health_features(datetime.utcfromtimestamp(t0 + 120))
    assert health["HEALTH_MIT_15M_VOLUME"] == 4.0 and health["HEALTH_MIT_15M_TIMEOUT_RATE"] == 1 / 4  # all four
    assert r.decide(payment(), at=t0 + 120).source == "model"


def test_all_eligible_down_still_routes():
    r = make_router(FakeModel())
    for i in range(12):
        r.observe_outcome("AMEX", "ERROR", at=1000.0 + i)
    d = r.decide(payment(CARD_BRAND="AMEX"), at=1100.0)
    assert d.chosen == "AMEX" and d.source == "fallback" and d.fallback_reason == "all_down"


def test_exploration_only_in_treatment_and_carries_propensity():
    r = make_router(FakeModel(), exploration={"enabled": True, "max_share": 0.1})
    ds = [r.decide(payment(ORDER_ID=f"o{i}")) for i in range(2000)]
    exp = [d for d in ds if d.source == "exploration"]
    assert 0.05 < len(exp) / len(ds) <= 0.1
    assert all(0 < d.propensity <= 1 for d in ds)
    # while exploring was possible (under the cap) the greedy choice's propensity is below 1
    assert any(d.propensity < 1 for d in ds if d.source == "model")
    assert all(d.propensity > 0.9 for d in ds if d.source == "model")
    ctl = make_router(FakeModel(), treatment=0.0, exploration={"enabled": True, "max_share": 0.1})
    assert all(ctl.decide(payment(ORDER_ID=f"o{i}")).source == "rules" for i in range(500))


def test_outcome_updates_bandit_segment_by_request_id():
    r = make_router(FakeModel())
    d = r.decide(payment())
    r.observe_outcome("MIT", "APPROVED", request_id=d.request_id)
    assert r.bandit.posterior("MIT", ("MXN", "VISA", "CREDIT")) == (2.0, 1.0)


def test_decision_log_is_written_off_path_drops_when_full_and_flushes(tmp_path):
    log = DecisionLog(tmp_path, queue_size=10, segment_records=7, flush_seconds=0.05)
    for i in range(15):  # writer not started: the bounded queue fills, extra records are dropped
        log.append({"kind": "decision", "i": i})
    assert log.dropped == 5
    log.start()
    deadline = time.monotonic() + 5
    while log.pending and time.monotonic() < deadline:  # the writer drains what was buffered at once
        time.sleep(0.01)
    assert log.pending == 0
    for i in range(15, 20):
        assert log.append({"kind": "outcome", "i": i})
    log.close()
    recs = list(read_records(tmp_path))
    assert [r["i"] for r in recs] == list(range(10)) + list(range(15, 20))
    assert len(list(tmp_path.glob("decisions-*.jsonl"))) == 3  # segments of 7
    assert len(list(read_records(tmp_path, kind="outcome"))) == 5
    with open(sorted(tmp_path.glob("*.jsonl"))[-1], "a") as fh:
        fh.write('{"kind": "decis')  # a crash mid-line is skipped by readers
    assert len(list(read_records(tmp_path))) == 15


def test_model_holder_loads_refuses_broken_and_keeps_serving(tmp_path):
    events = []
    h = ModelHolder(tmp_path, loader=fake_loader, on_change=lambda s, r: events.append(r))
    assert h.check() == "none" and h.current is None
    write_version(tmp_path, "v1")
    assert h.check() == "loaded" and h.version == "v1"
    assert h.check() == "unchanged"
    write_version(tmp_path, "v2", broken=True)
    assert h.check() == "failed" and h.version == "v1"
    assert "v2 refused" in h.status.last_error and "checksum" in h.status.last_error
    assert h.check() == "refused"  # not retried by the poller
    (tmp_path / "v2" / "serving" / "model.json").write_text('{"probs": {"WORLDPAY": 0.5, "MIT": 0.5, "ELAVON": 0.5, "AMEX": 0.5, "ADYEN": 0.5}}')
    assert h.reload() == "loaded" and h.version == "v2"  # an explicit reload retries
    (tmp_path / "PROMOTED").write_text("{half")
    assert h.check() == "failed" and h.version == "v2"
    promote_pointer(tmp_path, "v9")  # no such version
    assert h.check() == "failed" and "no serving form" in h.status.last_error
    write_version(tmp_path, "v3", probs={"WORLDPAY": 0.5, "MIT": 0.5})  # scores only two processors
    assert h.check() == "failed" and "no probability for ELAVON" in h.status.last_error and h.version == "v2"
    assert events.count("loaded") == 2


def test_in_process_decision_latency_is_well_under_a_millisecond():
    r = make_router(FakeModel(), exploration={"enabled": True})
    for i in range(200):
        r.decide(payment(ORDER_ID=f"w{i}"))
    lat = sorted(r.decide(payment(ORDER_ID=f"o{i}")).latency_ms for i in range(2000))
    # the median only: tail latency on shared CI cores is noise; bench/bench_serve.py measures p99
    assert lat[len(lat) // 2] < 0.5
