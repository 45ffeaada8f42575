"""The routing policy's settings, read from one file: src/smartrouter/routing.toml.

`SMARTROUTER_ROUTING_CONFIG` points at another file; `load_routing_config(overrides=...)` lets
tests change single values without writing files. Every value is validated here, so a typo
fails at start-up with a message naming the key and the fix, never in the middle of a payment.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartrouter import catalog
from smartrouter.config import PACKAGE_DIR
from smartrouter.errors import ConfigError

DEFAULT_PATH = PACKAGE_DIR / "routing.toml"
EXPERIMENT_KEYS = ("order_id", "user_id")
FALLBACK_RULES = ("merchant", "optimized")


@dataclass(frozen=True)
class PolicyConfig:
    disabled_processors: tuple[str, ...] = ()
    min_confidence: float = 0.30
    skip_uncertain: bool = True
    top_k: int = 3
    max_amount: float = 1_000_000.0
    features_warmup_minutes: float = 60.0
    # which rule table the fallback (not confident / no model / model error) routes by: "merchant"
    # (the static rules, like the control arm) or "optimized" (`smartrouter rules install`'s table)
    fallback_rules: str = "merchant"


@dataclass(frozen=True)
class ObjectiveConfig:
    # what the router ranks by, read by the router, the evaluation and the gates (smartrouter.money):
    # "approval" or "net_revenue" (expected approved amount minus expected fee, within floor_pp
    # percentage points of the best eligible processor's approval probability)
    name: str = "approval"
    floor_pp: float = 1.0


@dataclass(frozen=True)
class MessagesConfig:
    # message configuration recommendations (smartrouter.routing.messages): false = every decision
    # sends the merchant's default configuration and the model scores the payment as sent
    recommend: bool = True
    # share of recommending decisions that send a uniformly drawn eligible configuration (logged
    # with its propensity, like processor exploration), so the configuration effects stay learnable
    explore_share: float = 0.02
    top_k: int = 3  # (processor, configuration) pairs in a decision's message_recommendations
    # the "with vs without message recommendations" A/B inside the model arm: SHA-256(ab_salt:key)
    # < ab_share gets recommendations ("with"), the rest are routed by the same model scoring the
    # payment as sent and send the merchant's default ("without"). 1.0 = everyone "with" (no test).
    ab_share: float = 1.0
    ab_salt: str = "smartrouter-messages-ab"


@dataclass(frozen=True)
class HealthConfig:
    window_seconds: float = 600.0
    recent_outcomes: int = 20
    degraded_failure_rate: float = 0.20
    degraded_min_failures: int = 3
    down_failure_rate: float = 0.50
    down_min_failures: int = 8
    recovered_failure_rate: float = 0.10
    probe_share: float = 0.02
    recovery_successes: int = 5
    recovery_ramp_start: float = 0.10
    # event-time reference (smartrouter.clock): "wall" or "event", and how far ahead of it
    # a created_at may be
    clock: str = "wall"
    max_ahead_seconds: float = 300.0


@dataclass(frozen=True)
class ExperimentConfig:
    key: str = "order_id"
    treatment_share: float = 0.5
    salt: str = "smartrouter-ab"
    shadow: bool = False


@dataclass(frozen=True)
class ExplorationConfig:
    enabled: bool = True
    max_share: float = 0.05
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    segment: tuple[str, ...] = ("CURRENCY", "CARD_BRAND", "CARD_TYPE")
    propensity_samples: int = 256
    seed: int = 7
    uniform_floor: float = 0.5  # share of an explored choice drawn uniformly (bounds the logged propensities)


@dataclass(frozen=True)
class DecisionLogConfig:
    queue_size: int = 20_000
    segment_records: int = 200_000
    flush_seconds: float = 0.5


@dataclass(frozen=True)
class ReloadConfig:
    poll_seconds: float = 5.0


@dataclass(frozen=True)
class HttpConfig:
    max_body_bytes: int = 16_384
    drain_seconds: float = 0.0


@dataclass(frozen=True)
class RoutingConfig:
    """All routing settings (one object, built from routing.toml)."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    bin_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    health: HealthConfig = field(default_factory=HealthConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)
    reload_poll_seconds: float = 5.0
    max_body_bytes: int = 16_384
    drain_seconds: float = 0.0  # after SIGTERM: answer /readyz 503 this long before the server stops
    source: str = "defaults"
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    messages: MessagesConfig = field(default_factory=MessagesConfig)


def _section(raw: dict[str, Any], name: str, cls: type, where: str) -> Any:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {name} = {values!r} must be a table [{name}] of keys, not a value")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} in [{name}]; valid keys are {', '.join(sorted(known))}"
        )
    defaults = cls()
    out: dict[str, Any] = {}
    for key in known:
        default = getattr(defaults, key)
        if key not in values:
            continue
        value = values[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: [{name}].{key} = {value!r} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: [{name}].{key} = {value!r} must be an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: [{name}].{key} = {value!r} must be a number")
            value = float(value)
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: [{name}].{key} = {value!r} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}: [{name}].{key} = {value!r} must be a string")
        out[key] = value
    return cls(**out)


def _share(value: float, name: str, where: str, low: float = 0.0, high: float = 1.0) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{where}: {name} = {value} is outside [{low}, {high}]; set a share in that range")


def _validate(cfg: RoutingConfig, where: str) -> None:
    for p in cfg.policy.disabled_processors:
        if p not in catalog.PROCESSORS:
            raise ConfigError(
                f"{where}: [policy].disabled_processors names {p!r}, not a processor; use one of {', '.join(catalog.PROCESSORS)}"
            )
    _share(cfg.policy.min_confidence, "[policy].min_confidence", where)
    if not 0 <= cfg.policy.features_warmup_minutes <= 1440:
        raise ConfigError(f"{where}: [policy].features_warmup_minutes must be within 0..1440 minutes")
    if cfg.policy.fallback_rules not in FALLBACK_RULES:
        raise ConfigError(f"{where}: [policy].fallback_rules = {cfg.policy.fallback_rules!r}; use one of "
                          f"{', '.join(FALLBACK_RULES)} (optimized: the table `smartrouter rules install` wrote)")
    if cfg.policy.top_k < 1:
        raise ConfigError(f"{where}: [policy].top_k = {cfg.policy.top_k} must be at least 1")
    if cfg.policy.max_amount <= 0:
        raise ConfigError(f"{where}: [policy].max_amount must be positive")
    for bin_, procs in cfg.bin_overrides.items():
        if not (bin_.isdigit() and 6 <= len(bin_) <= 8):
            raise ConfigError(f"{where}: [bin_overrides] key {bin_!r} is not a 6-8 digit BIN")
        bad = [p for p in procs if p not in catalog.PROCESSORS]
        if bad or not procs:
            raise ConfigError(
                f"{where}: [bin_overrides].{bin_} = {list(procs)!r} must list processors from {', '.join(catalog.PROCESSORS)}"
            )
    h = cfg.health
    if h.window_seconds < 60 or h.window_seconds > 3600:
        raise ConfigError(f"{where}: [health].window_seconds = {h.window_seconds} should be 300..900 (5-15 min)")
    for name in ("degraded_failure_rate", "down_failure_rate", "recovered_failure_rate"):
        _share(getattr(h, name), f"[health].{name}", where)
    if not h.recovered_failure_rate <= h.degraded_failure_rate <= h.down_failure_rate:
        raise ConfigError(
            f"{where}: [health] needs recovered_failure_rate <= degraded_failure_rate <= down_failure_rate"
        )
    _share(h.probe_share, "[health].probe_share", where, 0.0, 0.2)
    _share(h.recovery_ramp_start, "[health].recovery_ramp_start", where, 0.0, 1.0)
    if h.recent_outcomes < 2 or h.recovery_successes < 1 or h.down_min_failures < 1:
        raise ConfigError(f"{where}: [health] recent_outcomes >= 2, recovery_successes >= 1, down_min_failures >= 1")
    if h.clock not in ("wall", "event"):
        raise ConfigError(f"{where}: [health].clock = {h.clock!r}; use \"wall\" (the host's clock) or \"event\" (simulated time)")
    from smartrouter.features import ONLINE_SLACK_MINUTES  # a query may lag the newest event by this much, exactly

    if not 0 <= h.max_ahead_seconds <= 60 * ONLINE_SLACK_MINUTES:
        raise ConfigError(f"{where}: [health].max_ahead_seconds = {h.max_ahead_seconds:g} must be within "
                          f"0..{60 * ONLINE_SLACK_MINUTES} (the online features' slack)")
    e = cfg.experiment
    if e.key not in EXPERIMENT_KEYS:
        raise ConfigError(f"{where}: [experiment].key = {e.key!r}; use one of {', '.join(EXPERIMENT_KEYS)}")
    _share(e.treatment_share, "[experiment].treatment_share", where)
    x = cfg.exploration
    _share(x.max_share, "[exploration].max_share", where, 0.0, 0.5)
    _share(x.uniform_floor, "[exploration].uniform_floor", where, 0.0, 1.0)
    if x.prior_alpha <= 0 or x.prior_beta <= 0:
        raise ConfigError(f"{where}: [exploration] prior_alpha and prior_beta must be positive")
    allowed_segment = set(catalog.ATTEMPT_COLUMNS)
    bad_seg = [c for c in x.segment if c not in allowed_segment]
    if bad_seg:
        raise ConfigError(f"{where}: [exploration].segment names unknown column(s) {bad_seg}; use attempt columns")
    if x.propensity_samples < 16:
        raise ConfigError(f"{where}: [exploration].propensity_samples must be at least 16")
    d = cfg.decision_log
    if d.queue_size < 1 or d.segment_records < 1 or d.flush_seconds <= 0:
        raise ConfigError(f"{where}: [decision_log] queue_size, segment_records and flush_seconds must be positive")
    if cfg.reload_poll_seconds <= 0:
        raise ConfigError(f"{where}: [reload].poll_seconds must be positive")
    if cfg.max_body_bytes < 1024:
        raise ConfigError(f"{where}: [http].max_body_bytes must be at least 1024")
    if not 0 <= cfg.drain_seconds <= 300:
        raise ConfigError(f"{where}: [http].drain_seconds = {cfg.drain_seconds:g} must be within 0..300 seconds")
    from smartrouter.money import OBJECTIVES

    if cfg.objective.name not in OBJECTIVES:
        raise ConfigError(f"{where}: [objective].name = {cfg.objective.name!r}; use one of {', '.join(OBJECTIVES)}")
    if not 0 <= cfg.objective.floor_pp <= 100:
        raise ConfigError(f"{where}: [objective].floor_pp = {cfg.objective.floor_pp:g} must be within 0..100 percentage points")
    _share(cfg.messages.explore_share, "[messages].explore_share", where, 0.0, 0.5)
    _share(cfg.messages.ab_share, "[messages].ab_share", where, 0.0, 1.0)
    if not cfg.messages.ab_salt.strip() or cfg.messages.ab_salt == cfg.experiment.salt:
        raise ConfigError(f"{where}: [messages].ab_salt must be a non-empty salt different from [experiment].salt "
                          "(the same salt would put every treatment order in the same message arm)")
    if not 1 <= cfg.messages.top_k <= 40:
        raise ConfigError(f"{where}: [messages].top_k = {cfg.messages.top_k} must be within 1..40 (processors x configurations)")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_routing_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RoutingConfig:
    """Read and validate routing.toml (or ``path`` / $SMARTROUTER_ROUTING_CONFIG); raises ConfigError."""
    path = Path(path or os.environ.get("SMARTROUTER_ROUTING_CONFIG") or DEFAULT_PATH)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"routing config {where} does not exist; unset SMARTROUTER_ROUTING_CONFIG or fix the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"routing config {where} is not valid TOML ({exc}); fix the file") from None
    if overrides:
        raw = _merge(raw, overrides)
    known = {"policy", "bin_overrides", "health", "experiment", "exploration", "decision_log", "reload", "http", "objective", "messages"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; valid sections are {', '.join(sorted(known))}")
    overrides_raw = raw.get("bin_overrides", {})
    if not isinstance(overrides_raw, dict) or not all(isinstance(v, list) for v in overrides_raw.values()):
        raise ConfigError(f"{where}: [bin_overrides] must map a BIN string to a list of processors")
    # every table through _section: unknown keys and wrong types fail here, naming the key and the file
    poll = _section(raw, "reload", ReloadConfig, where).poll_seconds
    http = _section(raw, "http", HttpConfig, where)
    cfg = RoutingConfig(
        policy=_section(raw, "policy", PolicyConfig, where),
        bin_overrides={str(k): tuple(v) for k, v in overrides_raw.items()},
        health=_section(raw, "health", HealthConfig, where),
        experiment=_section(raw, "experiment", ExperimentConfig, where),
        exploration=_section(raw, "exploration", ExplorationConfig, where),
        decision_log=_section(raw, "decision_log", DecisionLogConfig, where),
        reload_poll_seconds=poll,
        max_body_bytes=http.max_body_bytes,
        drain_seconds=http.drain_seconds,
        source=where,
        objective=_section(raw, "objective", ObjectiveConfig, where),
        messages=_section(raw, "messages", MessagesConfig, where),
    )
    _validate(cfg, where)
    return cfg
