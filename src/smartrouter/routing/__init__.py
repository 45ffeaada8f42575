"""The routing policy: which processor gets a payment, and why (plain Python, no HTTP).

- `config`: routing.toml (thresholds, split, exploration cap, disabled processors, BIN overrides)
- `policy`: `Router.decide(payment) -> Decision`, `Router.observe_outcome(...)`
- `health`: per-processor UP / DEGRADED / DOWN / RECOVERING from outcomes
- `experiment`: deterministic A/B arms (SHA-256 of a stable key), shadow mode
- `bandit`: Thompson-sampling exploration with a capped share and propensities
- `model_holder`: the serving model, hot-reloaded from the registry pointer
- `decision_log`: append-only local store of decisions and outcomes (the feedback loop)
- `service`: the service's state without HTTP (`ServiceDeps(...).build() -> Service`, metrics, start-up)
"""

from smartrouter.routing.config import RoutingConfig, load_routing_config
from smartrouter.routing.decision_log import DecisionLog, read_frame, read_records
from smartrouter.routing.experiment import CONTROL, TREATMENT, Experiment
from smartrouter.routing.health import DEGRADED, DOWN, RECOVERING, UP, HealthTracker
from smartrouter.routing.model_holder import ModelHolder
from smartrouter.routing.policy import SOURCES, Decision, NoEligibleProcessor, Router, rules_from_sources

__all__ = [
    "CONTROL", "DEGRADED", "DOWN", "RECOVERING", "SOURCES", "TREATMENT", "UP",
    "Decision", "DecisionLog", "Experiment", "HealthTracker", "ModelHolder", "NoEligibleProcessor",
    "Router", "RoutingConfig", "load_routing_config", "read_frame", "read_records", "rules_from_sources",
]
