"""The routing decision for one payment, in plain Python (the service is a thin edge over it).

Order of precedence, each step explained in the decision's ``reasons``:

1. eligibility (hard rules): `catalog.eligible_processors` (Amex -> AMEX only, currency
   support), processors disabled in routing.toml, the caller's candidate list;
2. BIN overrides from routing.toml (source ``hard_rule``);
3. the experiment arm: control is routed by the merchant's static rules, treatment by the
   model's calibrated scores; with no model, or a model not confident enough (its best
   eligible processor below ``min_confidence``), the static rules decide (``rules`` /
   ``fallback``);
4. failover: DOWN processors are skipped for the next best (``failover``), except for a small
   probe share that tests recovery (``exploration``);
5. exploration: Thompson sampling may replace the model's choice, capped at a share of
   traffic (``exploration``), and every choice carries its propensity;
6. the decision record: ranked processors with probabilities, reasons, arm, propensity, and a
   request id an outcome can name.

While a canary rollout runs, step 3 scores a treatment payment with the canary instead of the
champion when its order falls in the stage's share (one SHA-256 bucket, `experiment.in_canary`);
in a shadow stage the champion still routes and the canary's choice is only computed and logged.
Every treatment decision of the rollout carries its id and stage, which the rollout controller reads.

`Router.decide` is these steps in order, one method each. Its collaborators are typed by the
Protocols below (what the router calls on them), so a test double or another implementation
says what it must provide.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from smartrouter import catalog, money
from smartrouter.errors import SmartrouterError
from smartrouter.features import derive_row
from smartrouter.routing import health as H
from smartrouter.routing.bandit import ThompsonBandit
from smartrouter.routing.config import RoutingConfig
from smartrouter.routing.experiment import CONTROL, TREATMENT, Experiment, in_canary
from smartrouter.routing.health import HealthTracker, Transition
from smartrouter.routing.messages import WITHOUT, JointScorer, config_json
from smartrouter.routing.model_holder import LoadedModel

log = logging.getLogger("smartrouter.routing.policy")

SOURCES: tuple[str, ...] = ("model", "rules", "hard_rule", "failover", "exploration", "fallback")
_RULES_CACHE_SECONDS = 60.0
_RECENT_DECISIONS = 100_000
_PENDING_OUTCOMES = 500_000  # live outcomes kept for replay while the history loads

# A request id is 24 random hex digits + the deciding process's pid in 8: with several workers,
# the one that receives an outcome knows which worker can resolve its segment and BIN.
_OWNER_DIGITS = 8


def owner_of(request_id: str | None) -> int | None:
    """The pid of the worker that issued ``request_id`` (None for ids this service did not make)."""
    if not request_id or len(request_id) != 32:
        return None
    try:
        return int(request_id[-_OWNER_DIGITS:], 16)
    except ValueError:
        return None


# ---------------------------------------------------------------- what the router's collaborators provide
class ServingModel(Protocol):
    """A loaded model's serving form (H5's ServingModel). Optional: ``uncertain`` (processors it
    has little history for, as a collection or {name: bool}) and ``contributions(payment, processor, k)``."""

    def score(self, payment: dict) -> Mapping[str, float]: ...


class ModelSource(Protocol):
    """Holds the model being served (`ModelHolder`); ``current`` is None when none is loaded."""

    current: LoadedModel | None


class OnlineFeatures(Protocol):
    """Online health and BIN-history features, kept from outcomes (`features.OnlineFeatureState`)."""

    def health_features(self, at: datetime) -> Mapping[str, float]: ...

    def bin_features(self, bin: str, at: datetime) -> Mapping[str, float]: ...

    def observe(self, processor: str, created_at: datetime, status: str, error_category: str | None = None,
                bin: str | None = None) -> None: ...


class RulesSource(Protocol):
    """The merchant's static routing rules (`rules.RulesEngine`)."""

    def ranked(self, currency: str, brand: str, card_type: str, at: datetime | None = None,
               candidates: Sequence[str] | None = None) -> list[str]: ...


class FallbackRouter(Protocol):
    """Orders processors when no static rule matches (`policies.SuccessRateRouter`)."""

    def choose(self, segment: Any, candidates: Sequence[str], rng: np.random.Generator) -> Any: ...

    def observe(self, segment: Any, processor: str, approved: bool | int) -> None: ...


class Scoring(NamedTuple):
    """What the model said about one payment (step 3): nothing when it cannot be trusted now."""

    loaded: LoadedModel | None
    scores: Mapping[str, float] | None
    enriched: dict  # the payment with derived columns and online features, as scored
    fallback_reason: str | None  # why there are no scores: features_not_ready | model_error
    model_order: list[str] | None  # the eligible processors by score, uncertain ones last
    score_ms: float = 0.0  # time the model took to score (a shadow canary's latency is the decision's without it)
    joint: Any = None  # routing.messages.JointScores: the (processor, message configuration) pairs scored


class Route(NamedTuple):
    """The choice after health (step 4) and exploration (step 5)."""

    chosen: str
    acting: list[str]  # the order without DOWN processors
    down: list[str]
    source: str
    fallback_reason: str | None
    propensity: float


class NoEligibleProcessor(SmartrouterError):
    """No processor may take this payment (hard rules, disabled processors, candidates)."""


@dataclass(slots=True)
class Decision:
    """What the router decided for one payment, and why."""

    request_id: str
    chosen: str
    source: str
    ranked: list[tuple[str, float | None]]
    reasons: list[str]
    model_version: str | None
    arm: str
    propensity: float
    eligible: list[str]
    shadow_choice: str | None = None
    fallback_reason: str | None = None
    contributions: list[tuple[str, float]] | None = None
    latency_ms: float = 0.0
    at: float = 0.0
    segment: tuple = ()
    scores: dict[str, float] | None = field(default=None, repr=False)
    rollout_id: str | None = None  # the canary rollout this treatment decision belongs to
    rollout_stage: str | None = None
    canary_choice: str | None = None  # shadow stage: what the canary would have chosen
    canary_latency_ms: float | None = None  # shadow stage: the decision's latency without the champion's scoring
    message_config: dict[str, Any] | None = None  # the configuration to send with ``chosen`` (routing.messages)
    message_source: str | None = None  # model | exploration | default | off
    message_propensity: float = 1.0  # probability this configuration was chosen, given the processor
    message_recommendations: list[dict[str, Any]] = field(default_factory=list)  # top eligible pairs
    message_arm: str | None = None  # the message A/B arm (routing.messages.WITH / WITHOUT); None outside it

    def record(self, payment: dict) -> dict[str, Any]:
        """The decision-log record (what the next training run reads)."""
        # built by hand: dataclasses.asdict deep-copies and costs more than the decision itself
        rec = {name: getattr(self, name) for name in _RECORD_FIELDS}
        rec["kind"] = "decision"
        rec["payment"] = {k: v for k, v in payment.items() if not isinstance(v, datetime)}
        rec["created_at"] = datetime.fromtimestamp(self.at, tz=timezone.utc).replace(tzinfo=None).isoformat()
        return rec


_RECORD_FIELDS = tuple(f.name for f in fields(Decision) if f.name != "contributions")


def rules_from_sources(settings: Any = None, snapshot: list[dict] | None = None, *,
                       read_warehouse: bool = True) -> tuple[Any, str]:
    """The static-rules engine and where its rows came from, never raising.

    The warehouse's rules view first (the merchant's live rules; skipped without ``settings`` or
    with ``read_warehouse=False``), then the snapshot saved with the model. The synthetic world's
    rules (shipped with the package) are the last resort only in the local world (or without
    settings, in tests): outside it they are invented rules, and routing a real merchant's
    payments by them is worse than having none. (None, "none (<why>)") if nothing serves.
    """
    try:
        from smartrouter.rules import RulesEngine
    except ImportError as exc:
        log.error("static rules unavailable: %s", exc)
        return None, f"none (smartrouter.rules not importable: {exc})"
    errors: list[str] = []
    if settings is not None and read_warehouse:
        try:
            from smartrouter import warehouse

            frame = warehouse.query_frame("SELECT * FROM " + catalog.RULES_VIEW, settings=settings)
            if len(frame):
                return RulesEngine.from_warehouse_rows(frame, merchant=catalog.MERCHANT), "warehouse"
            errors.append("warehouse rules view is empty")
        except Exception as exc:  # noqa: BLE001 - never fail to start because of it
            errors.append(f"warehouse: {exc}")
    if snapshot:
        try:
            return RulesEngine(snapshot), "model snapshot"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"snapshot: {exc}")
    if settings is not None and not settings.is_local:
        errors.append(f"the package's default rules are the synthetic world's, never used with "
                      f"SMARTROUTER_WAREHOUSE={settings.warehouse}")
    else:
        try:
            from smartrouter.world import World, WorldParams

            return RulesEngine(World(WorldParams()).rules_frame()), "package default (world rules)"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"package default: {exc}")
    log.error("no static rules: %s", "; ".join(errors))
    return None, "none (" + "; ".join(errors) + ")"


class Router:
    """Decides and learns: `decide(payment)` and `observe_outcome(...)`; thread-safe enough for one process."""

    def __init__(
        self,
        config: RoutingConfig,
        rules: RulesSource | None = None,
        holder: ModelSource | None = None,
        *,
        features: OnlineFeatures | None = None,
        fallback_router: FallbackRouter | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.rules = rules
        # the optimized rule table the fallback routes by (routing.toml [policy] fallback_rules); None: the merchant's
        self.fallback_rules: RulesSource | None = None
        self.holder = holder
        self.features = features
        self.fallback_router = fallback_router
        self.health = HealthTracker(config.health, on_transition=on_transition)
        self.bandit = ThompsonBandit(config.exploration, seed=seed)
        self.experiment = Experiment(config.experiment)
        self.messages = JointScorer(config, (config.exploration.seed if seed is None else seed) + 1)
        self._rng = random.Random(config.exploration.seed if seed is None else seed)
        self._np_rng = np.random.default_rng(config.exploration.seed if seed is None else seed)
        self._active = tuple(p for p in catalog.PROCESSORS if p not in set(config.policy.disabled_processors))
        self._rules_cache: dict[tuple, tuple[float, list[str]]] = {}
        self._eligibility: dict[tuple[str, str], tuple[tuple[str, ...], bool, tuple[str, ...]]] = {}
        self._recent: OrderedDict[str, tuple[tuple, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self.features_ready = True  # see features_pending()
        self._warm_since: float | None = None
        self._live_while_pending: list[tuple] = []
        self._id_suffix = f"{self.pid & 0xFFFFFFFF:08x}"

    def set_rules(self, rules: RulesSource | None) -> None:
        """Serve these static rules from now on (the cached rankings were the old rules')."""
        self.rules = rules
        self._rules_cache = {}

    # ------------------------------------------------------------------ helpers
    def _eligibility_of(self, brand: str, currency: str) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
        """(eligible processors, whether a hard rule decided them, reasons) for a brand and currency."""
        reasons: list[str] = []
        eligible = catalog.eligible_processors(brand, currency, self._active)
        hard = False
        if brand == catalog.AMEX_BRAND:
            reasons.append("AMEX card: AMEX only")
            hard = True
        elif currency not in catalog.PROCESSOR_CURRENCIES.get("MIT", frozenset({currency})):
            no_cur = [p for p in self._active if currency not in catalog.PROCESSOR_CURRENCIES[p]]
            if no_cur:
                reasons.append(f"{', '.join(no_cur)} {'does' if len(no_cur) == 1 else 'do'} not take {currency}")
        disabled = [p for p in catalog.eligible_processors(brand, currency) if p not in self._active]
        if disabled:
            reasons.append(f"{', '.join(disabled)} disabled by config")
        return tuple(eligible), hard, tuple(reasons)

    def _rules_ranked(self, currency: str, brand: str, card_type: str, eligible: list[str], at: float) -> list[str]:
        key = (currency, brand, card_type, tuple(eligible))
        hit = self._rules_cache.get(key)
        if hit is not None and at - hit[0] < _RULES_CACHE_SECONDS and at >= hit[0]:
            return hit[1]
        ranked: list[str] = []
        if self.rules is not None:
            try:
                when = datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None)
                ranked = [p for p in self.rules.ranked(currency, brand, card_type, at=when, candidates=eligible) if p in eligible]
            except Exception:  # noqa: BLE001 - a broken rules table must not fail a payment
                log.exception("static rules failed for %s %s %s", currency, brand, card_type)
                ranked = []
        self._rules_cache[key] = (at, ranked)
        return ranked

    def enrich(self, payment: dict, at: float) -> dict:
        """Public `_enrich`: the retry advice (smartrouter.retry.serving) scores the same enriched row."""
        return self._enrich(payment, at)

    def eligible(self, payment: dict, candidates: Iterable[str] | None, reasons: list[str]) -> list[str]:
        """Public `_eligible` (the processors alone): where a retry of ``payment`` may go."""
        return self._eligible(payment, candidates, reasons)[0]

    def _enrich(self, payment: dict, at: float) -> dict:
        """The payment plus derived columns and online features (processor health, BIN history) as of ``at``."""
        if self.features is None:
            return payment
        enriched = dict(payment)
        when = datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None)
        try:
            # derived here, in the copy we make anyway, so the encoder does not copy the payment again
            for k, v in derive_row(payment).items():
                enriched.setdefault(k, v)
            enriched.update(self.features.health_features(when))
            if payment.get("CARD_BIN"):
                enriched.update(self.features.bin_features(payment["CARD_BIN"], when))
        except Exception:  # noqa: BLE001 - the model handles missing features like NaN
            log.exception("online features failed")
        return enriched

    # ------------------------------------------------------------------ the decision
    def decide(
        self,
        payment: dict,
        *,
        candidates: Iterable[str] | None = None,
        explain: bool = False,
        at: float | None = None,
        request_id: str | None = None,
    ) -> Decision:
        """Rank the eligible processors for one payment (dict of upper-case attempt columns).

        The steps of the module docstring, in order; each appends its explanation to ``reasons``.
        """
        t0 = time.perf_counter()
        at = time.time() if at is None else at
        reasons: list[str] = []
        eligible, hard, overridden = self._eligible(payment, candidates, reasons)
        key = self.experiment.key_of(payment)
        arm = self.experiment.assign(key)
        canary = getattr(self.holder, "canary", None) if arm == TREATMENT else None
        on_canary = canary is not None and in_canary(key, canary.salt, canary.share)
        message_arm = self.messages.arm_of(key, arm, self.experiment.shadow)
        scoring = self._score(payment, eligible, at, canary.loaded if on_canary and not canary.shadow else None,
                              joint=message_arm != WITHOUT)
        rules_order, no_rule = self._rules_order(payment, eligible, scoring.scores, at)
        order, source, fallback_reason = self._choose_order(payment, eligible, hard, overridden, arm, scoring,
                                                            rules_order, no_rule, reasons)
        route = self._failover(order, source, fallback_reason, reasons)
        segment = self.bandit.segment_of(payment)
        route = self._explore(segment, route, reasons)
        if canary is None:
            return self._decision(payment, request_id, t0, at, arm, eligible, order, route, segment, scoring, explain,
                                  reasons, message_arm)
        shadow = self._shadow_canary(canary, eligible, scoring) if on_canary and canary.shadow else None
        d = self._decision(payment, request_id, t0, at, arm, eligible, order, route, segment, scoring, explain, reasons,
                           message_arm)
        d.rollout_id, d.rollout_stage = canary.rollout_id, canary.stage
        if shadow is not None:
            # the decision's latency includes both scorings: without the champion's it is the canary's alone
            d.canary_choice, d.canary_latency_ms = shadow, d.latency_ms - scoring.score_ms
        elif on_canary:
            reasons.append(f"canary {canary.loaded.version} ({canary.stage}, {canary.share:.0%} of the model arm)")
        return d

    def _shadow_canary(self, canary: Any, eligible: list[str], scoring: Scoring) -> str | None:
        """The canary's choice for a shadow-stage payment; None when it cannot score it."""
        if scoring.scores is None:  # features not ready or the champion failed: nothing to compare with
            return None
        try:
            scores = canary.loaded.model.score(scoring.enriched)
        except Exception:  # noqa: BLE001 - the champion routes; a failing canary shows as no shadow choice
            log.exception("canary %s failed to score in shadow", canary.loaded.version)
            return None
        order = self._model_order(canary.loaded, eligible, scores, scoring.enriched)
        return next((p for p in order if not self.health.is_down(p)), order[0])

    # 1-2. eligibility: hard rules, disabled processors, candidates, BIN overrides
    def _eligible(self, payment: dict, candidates: Iterable[str] | None, reasons: list[str],
                  ) -> tuple[list[str], bool, bool]:
        """(eligible processors, whether a hard rule or override decides, whether a BIN override applies)."""
        brand, currency = payment["CARD_BRAND"], payment["CURRENCY"]
        hit = self._eligibility.get((brand, currency))  # the same for every payment of a brand and currency
        if hit is None:
            hit = self._eligibility_of(brand, currency)
            if len(self._eligibility) < 1000:  # brands x currencies: bounded even if fed odd values
                self._eligibility[(brand, currency)] = hit
        base, hard, base_reasons = hit
        eligible = list(base)
        reasons.extend(base_reasons)
        if candidates is not None:
            wanted = set(candidates)
            dropped = [p for p in eligible if p not in wanted]
            eligible = [p for p in eligible if p in wanted]
            if dropped:
                reasons.append(f"{', '.join(dropped)} not among the requested candidates")
        if not eligible:
            raise NoEligibleProcessor(
                f"no processor may take a {brand} card in {currency} with these candidates "
                f"(active: {', '.join(self._active)}); send other candidates or enable a processor in routing.toml"
            )
        override = self.config.bin_overrides.get(str(payment.get("CARD_BIN") or ""))
        if override:
            ov = [p for p in override if p in eligible]
            if ov:
                eligible = ov
                hard = True
                reasons.append(f"BIN {payment['CARD_BIN']} override: {', '.join(ov)}")
        return eligible, hard, bool(override)

    # 3a. the model's scores (none when it cannot be trusted now), the row it scored, its order
    def _score(self, payment: dict, eligible: list[str], at: float, loaded: LoadedModel | None = None,
               joint: bool = True) -> Scoring:
        if loaded is None:  # the champion, unless the canary's share of the rollout takes this payment
            loaded = self.holder.current if self.holder is not None else None
        if loaded is None:
            return Scoring(None, None, payment, None, None)
        if self.features is not None and not self.features_warm(at):
            return Scoring(loaded, None, payment, "features_not_ready", None)
        enriched = self._enrich(payment, at)
        t1 = time.perf_counter()
        try:
            # with recommendations on, a processor's score is its best eligible (processor, configuration) pair's
            # (``joint`` False: the message A/B's held-out arm, scored as sent like recommendations off)
            pairs = self.messages.score(loaded.model, enriched) if self.messages.recommend and joint else None
            scores = pairs.scores if pairs is not None else loaded.model.score(enriched)
        except Exception:  # noqa: BLE001 - the rules route it instead
            log.exception("model %s failed to score; using static rules", loaded.version)
            return Scoring(loaded, None, enriched, "model_error", None)
        ms = (time.perf_counter() - t1) * 1000.0
        return Scoring(loaded, scores, enriched, None, self._model_order(loaded, eligible, scores, payment), ms, pairs)

    def _rules_order(self, payment: dict, eligible: list[str], scores: Mapping[str, float] | None, at: float,
                     ) -> tuple[list[str], bool]:
        """(the static rules' order of the eligible processors, whether no rule matched)."""
        rules_rank = self._rules_ranked(payment["CURRENCY"], payment["CARD_BRAND"], payment.get("CARD_TYPE"), eligible, at)
        no_rule = not rules_rank
        if no_rule and scores is None and len(eligible) > 1:
            return self._fallback_order(payment, eligible), True
        return rules_rank + [p for p in eligible if p not in rules_rank], no_rule

    def _fallback_rules_order(self, payment: dict, eligible: list[str], rules_order: list[str], reasons: list[str],
                              ) -> list[str]:
        """The fallback's order: the optimized table's ranking when one is installed (the control arm
        keeps the merchant's rules, so the A/B baseline does not move), else ``rules_order``."""
        table = self.fallback_rules
        if table is None:
            return rules_order
        try:
            ranked = [p for p in table.ranked(payment["CURRENCY"], payment["CARD_BRAND"], payment.get("CARD_TYPE"),
                                              candidates=eligible) if p in eligible]
        except Exception:  # noqa: BLE001 - a broken table must not fail a payment: the merchant's rules route it
            log.exception("optimized rule table failed; merchant's rules route the fallback")
            return rules_order
        if not ranked:
            return rules_order
        reasons.append("fallback by the optimized rule table")
        return ranked + [p for p in eligible if p not in ranked]

    def _model_order(self, loaded: LoadedModel, eligible: list[str], scores: Mapping[str, float],
                     payment: Mapping[str, Any] | None = None) -> list[str]:
        """The eligible processors by the objective (routing.toml [objective]), the ones the model is unsure of last."""
        # approval: by score; net_revenue: expected net revenue within the approval floor (smartrouter.money)
        model_order = money.rank(eligible, scores, payment or {}, money.objective(self.config))
        flags = getattr(loaded.model, "uncertain", None) or ()
        # H5's serving form flags every processor ({name: bool}); a plain collection lists the uncertain ones
        uncertain = {p for p, f in flags.items() if f} if isinstance(flags, dict) else set(flags)
        if self.config.policy.skip_uncertain and uncertain:
            sure = [p for p in model_order if p not in uncertain]
            if sure:
                model_order = sure + [p for p in model_order if p in uncertain]
        return model_order

    # 3b. which order routes: hard rule, the arm's (rules or model), or the rules as a fallback
    def _choose_order(
        self, payment: dict, eligible: list[str], hard: bool, overridden: bool, arm: str, scoring: Scoring,
        rules_order: list[str], no_rule: bool, reasons: list[str],
    ) -> tuple[list[str], str, str | None]:
        """(order, source, fallback reason) before health is considered."""
        shadow = self.experiment.shadow
        model_order, fallback_reason = scoring.model_order, scoring.fallback_reason
        if hard or len(eligible) == 1:
            if not hard:
                reasons.append(f"only {eligible[0]} is eligible")
            return (eligible if overridden else (model_order or rules_order)), "hard_rule", fallback_reason
        if arm == CONTROL or shadow or model_order is None:
            source = "rules"
            if no_rule:
                source, fallback_reason = "fallback", fallback_reason or "no_rule"
                reasons.append(f"no static rule for {payment['CURRENCY']} {payment['CARD_BRAND']} {payment.get('CARD_TYPE')}: "
                               "fallback order")
            elif model_order is None and arm == TREATMENT and not shadow:
                if fallback_reason == "model_error":
                    source = "fallback"
                    reasons.append("model failed to score: static rules")
                elif fallback_reason == "features_not_ready":
                    source = "fallback"
                    reasons.append("online features not ready (history still loading): static rules")
                else:
                    reasons.append("no promoted model: static rules")
                rules_order = self._fallback_rules_order(payment, eligible, rules_order, reasons)
            else:
                reasons.append(f"{'shadow mode' if shadow else 'control arm'}: static rules")
            return rules_order, source, fallback_reason
        healthy_first = next((p for p in model_order if not self.health.is_down(p)), model_order[0])
        best_p = scoring.scores.get(healthy_first, 0.0)
        min_confidence = self.config.policy.min_confidence
        if best_p < min_confidence:
            reasons.append(f"model not confident (best {healthy_first} p={best_p:.2f} < {min_confidence:.2f}): static rules")
            return self._fallback_rules_order(payment, eligible, rules_order, reasons), "fallback", "not_confident"
        reasons.append(f"model {scoring.loaded.version}: {healthy_first} p={best_p:.2f}")
        reasons.extend(money.explain(payment, scoring.scores, model_order, money.objective(self.config)))
        return model_order, "model", fallback_reason

    # 4. failover around DOWN processors, the ramp of RECOVERING ones, and probes that test recovery
    def _failover(self, order: list[str], source: str, fallback_reason: str | None, reasons: list[str]) -> Route:
        health = self.health
        down = [p for p in order if health.is_down(p)]
        acting = [p for p in order if p not in down] if down else order
        propensity = 1.0
        if not acting:
            reasons.append(f"every eligible processor is down ({', '.join(health.describe(p) for p in down)}): "
                           f"sending to {order[0]}")
            return Route(order[0], acting, down, "fallback", "all_down", propensity)
        chosen = acting[0]
        if chosen != order[0]:
            reasons.append(f"{health.describe(order[0])}: next best {chosen}")
            if source != "hard_rule":
                source = "failover"
        for p in down:
            if p != order[0]:
                reasons.append(health.describe(p))
        ramp = health.admit_share(chosen) if len(acting) > 1 else 1.0
        if ramp < 1.0:  # RECOVERING: it gets a growing share of what it would win, the rest the next best
            if self._rng.random() < ramp:
                propensity = ramp
                reasons.append(f"{health.describe(chosen)}: ramping up, {ramp:.0%} of its traffic")
            else:
                nxt = acting[1]
                reasons.append(f"{health.describe(chosen)}: ramping up ({ramp:.0%} of its traffic), next best {nxt}")
                chosen, propensity = nxt, 1.0 - ramp
                if source != "hard_rule":
                    source = "failover"
        share = self.config.health.probe_share
        if down and share > 0:
            if self._rng.random() < share:
                chosen = down[0]
                source, propensity = "exploration", share
                reasons.append(f"probe: {health.describe(chosen)}, testing recovery")
            else:
                propensity *= 1.0 - share
        return Route(chosen, acting, down, source, fallback_reason, propensity)

    # 5. exploration (treatment arm, model decisions only), always counted for the cap
    def _explore(self, segment: tuple, route: Route, reasons: list[str]) -> Route:
        chosen, acting, source = route.chosen, route.acting, route.source
        bc = self.bandit.decide(segment, acting, chosen, allow=source == "model" and len(acting) > 1)
        if not bc.explored and bc.propensity == 1.0:
            return route  # the usual case: nothing to change
        if bc.explored and bc.chosen != chosen:
            reasons.append(f"exploring: Thompson sampling picked {bc.chosen} instead of {chosen}")
            chosen, source = bc.chosen, "exploration"
        elif bc.explored:
            source = "exploration"
            reasons.append(f"exploring: Thompson sampling kept {chosen}")
        return Route(chosen, acting, route.down, source, route.fallback_reason, route.propensity * bc.propensity)

    # 6. the decision record (and the request id an outcome will name)
    def _decision(
        self, payment: dict, request_id: str | None, t0: float, at: float, arm: str, eligible: list[str],
        order: list[str], route: Route, segment: tuple, scoring: Scoring, explain: bool, reasons: list[str],
        message_arm: str | None = None,
    ) -> Decision:
        chosen, down, scores, loaded, model_order = route.chosen, route.down, scoring.scores, scoring.loaded, scoring.model_order
        top = [p for p in order if p != chosen]
        ranked_names = ([chosen] + [p for p in top if p not in down] + [p for p in top if p in down])[: self.config.policy.top_k]
        ranked = [(p, (round(float(scores[p]), 6) if scores is not None and p in scores else None)) for p in ranked_names]
        shadow_choice = None
        if self.experiment.shadow and model_order is not None:
            shadow_choice = next((p for p in model_order if not self.health.is_down(p)), model_order[0])
        contributions = None
        if explain and loaded is not None and scores is not None and hasattr(loaded.model, "contributions"):
            try:
                contributions = [(str(n), float(v)) for n, v in loaded.model.contributions(scoring.enriched, chosen, 5)]
            except Exception:  # noqa: BLE001 - an explanation is optional
                log.exception("contributions failed")
        active = arm == TREATMENT and not self.experiment.shadow  # the control arm's messages stay the merchant's
        message = self.messages.choose(payment, chosen, scoring.joint, active, reasons, message_arm)
        recommendations = self.messages.recommendations(payment, scoring.joint, [p for p in eligible if p not in down] or eligible)
        request_id = request_id or os.urandom(12).hex() + self._id_suffix
        with self._lock:
            self._recent[request_id] = (segment, payment.get("CARD_BIN"))
            if len(self._recent) > _RECENT_DECISIONS:
                self._recent.popitem(last=False)
        return Decision(
            request_id=request_id,
            chosen=chosen,
            source=route.source,
            ranked=ranked,
            reasons=reasons,
            model_version=loaded.version if loaded is not None else None,
            arm=arm,
            propensity=round(route.propensity, 6),
            eligible=list(eligible),
            shadow_choice=shadow_choice,
            fallback_reason=route.fallback_reason,
            contributions=contributions,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            at=at,
            segment=segment,
            scores=scores,
            message_config=config_json(message.code),
            message_source=message.source,
            message_propensity=message.propensity,
            message_recommendations=recommendations,
            message_arm=message_arm,
        )

    def _fallback_order(self, payment: dict, eligible: list[str]) -> list[str]:
        """Order when no static rule matches: H6's success-rate router if given, else catalog order."""
        if self.fallback_router is not None:
            try:
                segment = tuple(str(payment.get(c)) for c in ("CURRENCY", "CARD_BRAND", "CARD_TYPE"))
                first = self.fallback_router.choose(segment, eligible, self._np_rng)
                if isinstance(first, tuple):
                    first = first[0]
                if first in eligible:
                    return [first] + [p for p in eligible if p != first]
            except Exception:  # noqa: BLE001
                log.exception("fallback router failed")
        return list(eligible)

    # ------------------------------------------------------------------ learning from outcomes
    def resolve(self, request_id: str | None, segment: tuple | None = None, card_bin: str | None = None,
                ) -> tuple[tuple | None, str | None, bool]:
        """(segment, BIN, whether this process made the decision) for an outcome, from its request id."""
        if request_id is not None:
            with self._lock:
                known = self._recent.get(request_id)
            if known is not None:
                return (segment if segment is not None else known[0]), card_bin or known[1], True
        return segment, card_bin, False

    def observe_outcome(
        self,
        processor: str,
        status: str,
        *,
        error_code: str | None = None,
        at: float | None = None,
        request_id: str | None = None,
        segment: tuple | None = None,
        card_bin: str | None = None,
    ) -> str:
        """Feed one attempt's outcome to health, bandit, online features and fallback router; returns its kind."""
        at = time.time() if at is None else at
        kind = H.outcome_kind(status, error_code)
        self.health.observe(processor, kind, at)
        segment, card_bin, _ = self.resolve(request_id, segment, card_bin)
        if segment is not None:
            self.bandit.observe(processor, segment, kind == H.SUCCESS)
        if self.fallback_router is not None and segment is not None and hasattr(self.fallback_router, "observe"):
            try:
                srr_segment = tuple(str(v) for v in segment[:3])
                self.fallback_router.observe(srr_segment, processor, kind == H.SUCCESS)
            except Exception:  # noqa: BLE001
                log.debug("fallback router observe failed", exc_info=True)
        if self.features is not None:
            when = datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None)
            if kind == H.FAILURE:
                f_status, category = "DECLINED", catalog.PROCESSOR_ERROR_CATEGORY
            else:
                f_status = "APPROVED" if kind == H.SUCCESS else "DECLINED"
                category = catalog.ERROR_CODES[error_code].category if error_code in catalog.ERROR_CODES else (
                    None if kind == H.SUCCESS else "ISSUER_DECLINE")
            try:
                self.features.observe(processor, when, f_status, category, card_bin)
            except Exception:  # noqa: BLE001
                log.exception("online features observe failed")
            if not self.features_ready:
                if self._warm_since is None:
                    self._warm_since = at
                if len(self._live_while_pending) < _PENDING_OUTCOMES:
                    self._live_while_pending.append((processor, when, f_status, category, card_bin))
        return kind

    # ------------------------------------------------------------------ online features readiness
    def features_pending(self) -> None:
        """The online features are not trustworthy yet (history still loading): serve the rules meanwhile.

        A model fed empty health and BIN history is far outside what it was trained on (a
        parity test measured probabilities off by up to 0.9), so until `install_features` brings
        the history, or live outcomes have covered ``features_warmup_minutes``, treatment
        payments are routed by the static rules with source `fallback`.
        """
        self.features_ready = False
        self._warm_since = None
        self._live_while_pending = []

    def install_features(self, state: Any, history_until: datetime | None = None) -> int:
        """Swap in a seeded online state; outcomes heard meanwhile (after ``history_until``) are replayed into it."""
        replayed = 0
        for processor, when, f_status, category, card_bin in self._live_while_pending:
            if history_until is None or when >= history_until:
                state.observe(processor, when, f_status, category, card_bin)
                replayed += 1
        self.features = state
        self.features_ready = True
        self._live_while_pending = []
        return replayed

    def features_warm(self, at: float) -> bool:
        """Whether the online features may be trusted at ``at`` (seeded, or live outcomes cover the warm-up)."""
        if self.features_ready:
            return True
        if self._warm_since is not None and at - self._warm_since >= 60.0 * self.config.policy.features_warmup_minutes:
            self.features_ready = True  # live outcomes alone now cover every window
            self._live_while_pending = []
        return self.features_ready
