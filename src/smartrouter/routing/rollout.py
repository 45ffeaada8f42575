"""Canary rollout of a model version: stages, guardrails from live outcomes, automatic rollback.

A version promoted while another one is served does not take the model arm at once: it enters a
canary beside the champion (`Registry.start_canary`) and walks the stages of ``rollout.toml``
(shadow -> 10 % -> 50 % -> 100 % of the model-routed arm's orders). The rollout's state is one
file in the registry, ``ROLLOUT`` (written atomically, like the ``PROMOTED`` pointer), so every
worker of every host that reads the registry agrees on it and a restarted service picks it up:
the workers' model holders poll it and load the canary beside the champion; the router assigns
an order to the canary by one SHA-256 bucket (`experiment.in_canary`).

The controller (`Controller.step`: `smartrouter rollout advance`, and the live loop every
``check_minutes`` of event time) is the only writer of stage changes. It reads the decision log
the service writes (decisions tagged with the rollout id and stage, and the outcomes that name
their request id), tallies the current stage per version, and checks the guardrails:

- approval of first attempts, canary minus champion on the same stage's traffic: advance only
  when the lower end of the Newcombe interval is above -tolerance; roll back when its upper end
  is below -tolerance;
- processor-error and timeout rates (all attempts): roll back when the lower end of canary minus
  champion is above the tolerance;
- decision latency p99: roll back when more than 1 % of the canary's decisions (beyond doubt:
  the lower end of the Wilson interval) take longer than the champion's p99 plus the regression
  share and a slack;
- eligibility: any canary decision outside the hard rules' eligible set rolls back.

A stage advances once it has its minimum payments and event time and every check passes; a stage
that reaches its maximum payments without showing non-inferiority is rolled back. Completing the
last stage promotes the canary (the pointer moves); a rollback leaves the champion untouched.
Every change is recorded in ``ROLLOUT``, the registry's history and the lineage store with its
reason. The controller holds a file lock while it decides (a second one running at the same time
does nothing), and its decision is a function of the log and the state only, so running it twice
changes nothing the second time.

The intervals are fixed-horizon intervals read at every check; looking repeatedly raises the
chance that a noise excursion crosses a bound (both ways). The stage minimums keep the first look
late and the breach side needs the whole interval beyond the tolerance.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from smartrouter import atomic, catalog, strict_toml
from smartrouter.config import PACKAGE_DIR, Settings, load_settings
from smartrouter.errors import ArtifactError, ConfigError, SmartrouterError

ROLLOUT_FILE = "ROLLOUT"
ROLLOUT_FORMAT = 1
CONTROLLER_LOCK = ".rollout.lock"
DEFAULT_PATH = PACKAGE_DIR / "rollout.toml"
ACTIVE = "active"
ENDED = ("completed", "rolled_back", "aborted")


class RolloutError(SmartrouterError):
    """A rollout command cannot be done as asked (none active, already finished, ...); exit 2."""


# ------------------------------------------------------------------ config
@dataclass(frozen=True)
class StageConfig:
    name: str
    share: float
    shadow: bool = False
    min_payments: int = 0
    min_minutes: float = 0.0
    max_payments: int = 1_000_000


@dataclass(frozen=True)
class Guardrails:
    approval_tolerance: float = 0.03
    error_rate_tolerance: float = 0.01
    timeout_rate_tolerance: float = 0.01
    latency_regression: float = 0.10
    latency_slack_ms: float = 1.0
    min_latency_samples: int = 300
    max_eligibility_violations: int = 0


@dataclass(frozen=True)
class RolloutConfig:
    enabled: bool = True
    salt: str = "smartrouter-canary"
    confidence: float = 0.90
    check_minutes: float = 120.0
    guardrails: Guardrails = field(default_factory=Guardrails)
    stages: tuple[StageConfig, ...] = ()
    source: str = "defaults"


# the type of every key each table accepts (StageConfig's name and share have no default: required)
_KEYS: dict[type, dict[str, type]] = {
    StageConfig: {"name": str, "share": float, "shadow": bool, "min_payments": int, "min_minutes": float,
                  "max_payments": int},
    Guardrails: {k: type(getattr(Guardrails(), k)) for k in Guardrails.__dataclass_fields__},
    RolloutConfig: {"enabled": bool, "salt": str, "confidence": float, "check_minutes": float},
}


def _table(raw: Any, cls: type, where: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """The table's values, type-checked; ConfigError naming an unknown, missing or mistyped key.

    Not `strict_toml.load`: rollout.toml has an array of tables ([[stage]]) and optional keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table of keys, not {raw!r}")
    types = _KEYS[cls]
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(types))}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    return {key: strict_toml._typed(f"{where}.{key}", value, types[key]) for key, value in raw.items()}


def load_rollout_config(path: str | Path | None = None) -> RolloutConfig:
    """Read and validate rollout.toml (or ``path`` / $SMARTROUTER_ROLLOUT_CONFIG); ConfigError naming key and fix."""
    path = Path(path or os.environ.get("SMARTROUTER_ROLLOUT_CONFIG") or DEFAULT_PATH)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"rollout config {where} does not exist; unset SMARTROUTER_ROLLOUT_CONFIG or fix the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rollout config {where} is not valid TOML ({exc}); fix the file") from None
    unknown = sorted(set(raw) - {"rollout", "guardrails", "stage"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; valid sections are rollout, guardrails, [[stage]]")
    top = _table(raw.get("rollout", {}), RolloutConfig, f"{where}: [rollout]")
    rails = Guardrails(**_table(raw.get("guardrails", {}), Guardrails, f"{where}: [guardrails]"))
    stages_raw = raw.get("stage", [])
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{where}: at least one [[stage]] is needed (shadow, 10 %, 50 %, 100 % of the model arm)")
    stages = tuple(StageConfig(**_table(s, StageConfig, f"{where}: [[stage]] #{i + 1}", required=("name", "share")))
                   for i, s in enumerate(stages_raw))
    cfg = RolloutConfig(**top, guardrails=rails, stages=stages, source=where)
    _validate(cfg, where)
    return cfg


def _validate(cfg: RolloutConfig, where: str) -> None:
    if not 0.5 <= cfg.confidence < 1.0:
        raise ConfigError(f"{where}: [rollout].confidence = {cfg.confidence} must be within [0.5, 1)")
    if not 1 <= cfg.check_minutes <= 1440:
        raise ConfigError(f"{where}: [rollout].check_minutes = {cfg.check_minutes:g} must be within 1..1440")
    if not cfg.salt:
        raise ConfigError(f"{where}: [rollout].salt must not be empty")
    g = cfg.guardrails
    for name in ("approval_tolerance", "error_rate_tolerance", "timeout_rate_tolerance"):
        if not 0.0 <= getattr(g, name) <= 0.5:
            raise ConfigError(f"{where}: [guardrails].{name} = {getattr(g, name)} must be a share within [0, 0.5]")
    if g.latency_regression < 0 or g.latency_slack_ms < 0 or g.min_latency_samples < 100 or g.max_eligibility_violations < 0:
        raise ConfigError(f"{where}: [guardrails] latency_regression and latency_slack_ms must be >= 0, "
                          "min_latency_samples >= 100 (a p99 needs at least one sample above it), max_eligibility_violations >= 0")
    seen: set[str] = set()
    last = 0.0
    for i, s in enumerate(cfg.stages):
        at = f"{where}: [[stage]] #{i + 1} ({s.name!r})"
        if not s.name or s.name in seen:
            raise ConfigError(f"{at}: every stage needs a unique, non-empty name")
        seen.add(s.name)
        if not 0.0 < s.share <= 1.0:
            raise ConfigError(f"{at}: share = {s.share} must be within (0, 1]")
        if not s.shadow:
            if s.share < last:
                raise ConfigError(f"{at}: share {s.share} is below an earlier stage's {last}; shares only grow "
                                  "(an order on the canary must stay there)")
            last = s.share
        if s.min_payments < 0 or s.min_minutes < 0 or s.max_payments < max(s.min_payments, 1):
            raise ConfigError(f"{at}: needs 0 <= min_payments <= max_payments, max_payments >= 1 and min_minutes >= 0")
    if cfg.stages[-1].shadow or cfg.stages[-1].share != 1.0:
        raise ConfigError(f"{where}: the last [[stage]] must route share = 1.0 (not shadow): completing it promotes the canary")
    if any(s.shadow for s in cfg.stages[1:]) and not all(s.shadow for s in cfg.stages[: 1 + max(i for i, s in enumerate(cfg.stages) if s.shadow)]):
        raise ConfigError(f"{where}: shadow stages must come first")


# ------------------------------------------------------------------ the state file
def rollout_path(registry_dir: str | Path) -> Path:
    return Path(registry_dir) / ROLLOUT_FILE


def read_rollout(registry_dir: str | Path) -> dict[str, Any] | None:
    """The ROLLOUT record, or None when no rollout was ever started; ArtifactError when unreadable."""
    path = rollout_path(registry_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc}); abort the rollout with `smartrouter rollout abort` "
                            "after moving the file aside") from None
    if not isinstance(data, dict) or data.get("format") != ROLLOUT_FORMAT or "candidate" not in data:
        raise ArtifactError(f"{path} is not a rollout record of format {ROLLOUT_FORMAT}; move it aside")
    return data


def write_rollout(registry_dir: str | Path, record: dict[str, Any]) -> None:
    atomic.write_json(rollout_path(registry_dir), record, indent=2)


def current_stage(record: dict[str, Any]) -> dict[str, Any]:
    return record["stages"][record["stage_index"]]


def new_record(candidate: str, champion: str, cfg: RolloutConfig, reason: str, forced: bool) -> dict[str, Any]:
    """The ROLLOUT record of a canary starting now (the stages are copied: a config edit never changes a running rollout)."""
    now = now_iso()
    rid = f"{candidate}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    return {
        "format": ROLLOUT_FORMAT, "id": rid, "candidate": candidate, "champion": champion, "status": ACTIVE,
        "salt": f"{cfg.salt}:{rid}", "stage_index": 0, "stages": [asdict(s) for s in cfg.stages],
        "guardrails": asdict(cfg.guardrails), "confidence": cfg.confidence,
        "started_at": now, "stage_started_at": now, "ended_at": None, "reason": reason, "forced": forced,
        "events": [{"at": now, "event": "start", "stage": cfg.stages[0].name, "reason": reason}],
        "last_check": None, "config": cfg.source,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------ intervals
def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (n > 0)."""
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, confidence: float) -> tuple[float, float, float]:
    """(p1 - p2, lower, upper): Newcombe's hybrid score interval (method 10) from two Wilson intervals.

    Good coverage down to a few hundred trials and rates near 0 or 1 (error and timeout rates),
    where the Wald interval is too narrow.
    """
    z = _z(confidence)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank): a value that was observed."""
    s = sorted(values)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


# ------------------------------------------------------------------ reading the log
@dataclass
class Tally:
    """One version's traffic in one stage, from the decision log."""

    payments: int = 0
    first_attempts: int = 0  # first attempts whose outcome came back
    first_approved: int = 0
    outcomes: int = 0
    timeouts: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    violations: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def summary(self) -> dict[str, Any]:
        return {"payments": self.payments, "first_attempts": self.first_attempts,
                "first_attempt_approval": _ratio(self.first_approved, self.first_attempts),
                "outcomes": self.outcomes, "timeout_rate": _ratio(self.timeouts, self.outcomes),
                "processor_error_rate": _ratio(self.errors, self.outcomes),
                "latency_p99_ms": round(p99(self.latencies), 3) if self.latencies else None,
                "eligibility_violations": self.violations}


def _ratio(k: int, n: int) -> float | None:
    return round(k / n, 5) if n else None


def _violates(choice: str | None, eligible: list[str] | None, payment: dict[str, Any]) -> bool:
    """A choice outside the decision's eligible set or the catalog's hard rules (Amex -> AMEX, currencies)."""
    if choice is None:
        return False
    if eligible is not None and choice not in eligible:
        return True
    brand, currency = payment.get("CARD_BRAND"), payment.get("CURRENCY")
    if brand is None or currency is None:
        return False
    return choice not in catalog.eligible_processors(str(brand), str(currency))


def read_log(directory: Path, rollout_id: str, since_wall: float = 0.0) -> tuple[list[dict], dict[str, dict]]:
    """(the rollout's decisions, outcomes by request id) from the decision-log segments.

    Only lines that name the rollout (decisions) or are outcomes are decoded; segments last
    written before the rollout began are skipped.
    """
    import msgspec

    from smartrouter.routing.decision_log import SEGMENT_GLOB

    tag = f'"rollout_id":"{rollout_id}"'.encode()
    decisions: list[dict] = []
    outcomes: dict[str, dict] = {}
    decode = msgspec.json.decode
    for path in sorted(Path(directory).glob(SEGMENT_GLOB)):
        try:
            if path.stat().st_mtime < since_wall:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        for line in data.splitlines():
            is_outcome = b'"kind":"outcome"' in line
            if not is_outcome and tag not in line:
                continue
            try:
                rec = decode(line)
            except msgspec.DecodeError:  # a partial last line being written
                continue
            if is_outcome:
                rid = rec.get("request_id")
                if rid:
                    outcomes[rid] = rec
            elif rec.get("kind") == "decision":
                decisions.append(rec)
    return decisions, outcomes


def tally_stage(record: dict[str, Any], decisions: list[dict], outcomes: dict[str, dict]) -> dict[str, Any]:
    """Per version (canary, champion), this stage's tallies."""
    stage = current_stage(record)
    name, shadow = stage["name"], bool(stage["shadow"])
    cand, champ = record["candidate"], record["champion"]
    canary, champion = Tally(), Tally()
    for d in decisions:
        if d.get("arm") != "treatment" or d.get("rollout_stage") != name:
            continue
        at = d.get("at")
        if shadow:
            if d.get("canary_choice") is None:  # not in the shadow bucket: the champion's own decision
                _count(champion, d, outcomes, d.get("chosen"), d.get("latency_ms"), at)
            else:
                _count(canary, d, None, d.get("canary_choice"), d.get("canary_latency_ms"), at)
            continue
        version = d.get("model_version")
        if version == cand:
            _count(canary, d, outcomes, d.get("chosen"), d.get("latency_ms"), at)
        elif version == champ:
            _count(champion, d, outcomes, d.get("chosen"), d.get("latency_ms"), at)
    return {"canary": canary, "champion": champion}


def _count(t: Tally, d: dict, outcomes: dict[str, dict] | None, choice: str | None, latency: Any, at: Any) -> None:
    t.payments += 1
    if latency is not None:
        t.latencies.append(float(latency))
    if _violates(choice, d.get("eligible"), d.get("payment") or {}):
        t.violations += 1
    if isinstance(at, (int, float)):
        t.first_at = at if t.first_at is None else min(t.first_at, at)
        t.last_at = at if t.last_at is None else max(t.last_at, at)
    if outcomes is None:
        return
    o = outcomes.get(d.get("request_id"))
    if o is None:
        return
    status = o.get("status")
    t.outcomes += 1
    t.timeouts += status == "TIMEOUT"
    t.errors += status == "ERROR"
    if int((d.get("payment") or {}).get("NUM_ATTEMPTS_ORDER") or 1) == 1:
        t.first_attempts += 1
        t.first_approved += status == "APPROVED"


# ------------------------------------------------------------------ the verdict
@dataclass
class Verdict:
    """What the guardrails say about the current stage: rollback | advance | complete | hold."""

    action: str
    stage: str
    reasons: list[str]
    checks: dict[str, Any]
    canary: dict[str, Any]
    champion: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(record: dict[str, Any], tallies: dict[str, Any]) -> Verdict:
    """The guardrails on the current stage's tallies (pure: the same inputs give the same verdict)."""
    stage = current_stage(record)
    g = Guardrails(**record["guardrails"])
    level = float(record["confidence"])
    c, ch = tallies["canary"], tallies["champion"]
    breaches: list[str] = []
    pending: list[str] = []
    checks: dict[str, Any] = {}
    shadow = bool(stage["shadow"])
    concurrent = not shadow and ch.payments > 0

    checks["eligibility"] = {"violations": c.violations, "max": g.max_eligibility_violations}
    if c.violations > g.max_eligibility_violations:
        breaches.append(f"eligibility: {c.violations} canary decision(s) outside the eligible processors "
                        f"(max {g.max_eligibility_violations})")

    # Only the same stage's champion decisions: latency moves with the host's load, so a champion measured
    # hours earlier is no reference (at 100 % a canary was once rolled back on that alone in the live loop).
    ref = ch.latencies
    lat: dict[str, Any] = {"canary_n": len(c.latencies), "champion_n": len(ref)}
    if not concurrent and not shadow:
        lat["note"] = "no champion traffic in this stage: latency was compared in the earlier stages"
    elif len(c.latencies) >= g.min_latency_samples and len(ref) >= g.min_latency_samples:
        # The p99 of a few hundred samples rests on a handful of them (a loaded host's pauses decide it), so
        # the test is on counts: a canary as fast as the champion has at most 1 % of its decisions above the
        # champion's p99 (+regression +slack); a breach needs that share above 1 % beyond doubt.
        pc, pch = p99(c.latencies), p99(ref)
        limit = pch * (1.0 + g.latency_regression) + g.latency_slack_ms
        k = sum(1 for x in c.latencies if x > limit)
        lo, hi = wilson_interval(k, len(c.latencies), _z(level))
        lat.update(canary_p99_ms=round(pc, 3), champion_p99_ms=round(pch, 3), limit_ms=round(limit, 3),
                   share_above=round(k / len(c.latencies), 5), share_above_lower=round(lo, 5))
        if lo > 0.01:
            breaches.append(f"latency: {k / len(c.latencies):.1%} [{lo:.1%}, {hi:.1%}] of canary decisions took longer "
                            f"than {limit:.2f} ms (champion p99 {pch:.2f} ms +{g.latency_regression:.0%} "
                            f"+{g.latency_slack_ms:g} ms), more than 1 %; canary p99 {pc:.2f} ms")
    else:
        pending.append(f"latency: {len(c.latencies)} canary / {len(ref)} champion samples, "
                       f"{g.min_latency_samples} needed for a p99")
    checks["latency_p99"] = lat

    if concurrent:
        for name, k1, k2, tol in (("processor_error_rate", c.errors, ch.errors, g.error_rate_tolerance),
                                  ("timeout_rate", c.timeouts, ch.timeouts, g.timeout_rate_tolerance)):
            if c.outcomes and ch.outcomes:
                d, lo, hi = newcombe_interval(k1, c.outcomes, k2, ch.outcomes, level)
                checks[name] = {"diff": round(d, 5), "lower": round(lo, 5), "upper": round(hi, 5), "tolerance": tol}
                if lo > tol:
                    breaches.append(f"{name.replace('_', ' ')}: canary minus champion {d:+.2%} "
                                    f"[{lo:+.2%}, {hi:+.2%}] is above +{tol:.1%}")
        if c.first_attempts and ch.first_attempts:
            d, lo, hi = newcombe_interval(c.first_approved, c.first_attempts, ch.first_approved, ch.first_attempts, level)
            tol = g.approval_tolerance
            checks["approval"] = {"diff": round(d, 5), "lower": round(lo, 5), "upper": round(hi, 5), "tolerance": tol,
                                  "level": level}
            if hi < -tol:
                breaches.append(f"approval: canary minus champion {d:+.2%} [{lo:+.2%}, {hi:+.2%}] is below "
                                f"-{tol:.1%} beyond doubt")
            elif lo <= -tol:
                pending.append(f"approval: lower end {lo:+.2%} not above -{tol:.1%} yet (non-inferiority not shown)")
        else:
            pending.append("approval: no first-attempt outcomes on both versions yet")
    elif not shadow:
        checks["approval"] = {"note": "no champion traffic in this stage: approval and error rates were compared "
                                      "in the earlier stages"}

    minutes = ((c.last_at - c.first_at) / 60.0) if c.first_at is not None else 0.0
    checks["stage"] = {"payments": c.payments, "min_payments": stage["min_payments"], "max_payments": stage["max_payments"],
                       "minutes": round(minutes, 1), "min_minutes": stage["min_minutes"]}
    last = record["stage_index"] == len(record["stages"]) - 1
    if breaches:
        action, reasons = "rollback", breaches
    elif c.payments < stage["min_payments"] or minutes < stage["min_minutes"]:
        action = "hold"
        reasons = [f"stage minimum not reached: {c.payments}/{stage['min_payments']} payments, "
                   f"{minutes:.0f}/{stage['min_minutes']:g} min"] + pending
    elif pending and c.payments >= stage["max_payments"]:
        action = "rollback"
        reasons = [f"{c.payments} payments reached the stage maximum {stage['max_payments']} without every "
                   f"guardrail passing: " + "; ".join(pending)]
    elif pending:
        action, reasons = "hold", pending
    else:
        action = "complete" if last else "advance"
        reasons = ["every guardrail passed with the stage minimum reached"]
    return Verdict(action, stage["name"], reasons, checks, c.summary(), ch.summary())


# ------------------------------------------------------------------ the controller
@dataclass
class StepResult:
    """What one controller step did: the verdict and the action applied (none, advance, complete, rollback, busy)."""

    applied: str
    record: dict[str, Any] | None
    verdict: Verdict | None = None
    message: str = ""

    @property
    def changed(self) -> bool:
        return self.applied in ("advance", "complete", "rollback", "abort")

    def to_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "message": self.message,
                "verdict": self.verdict.to_json() if self.verdict else None,
                "rollout": summary(self.record) if self.record else None}


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The short view of a rollout (status, versions, stage, share) for status lines and reports."""
    stage = current_stage(record)
    return {"id": record["id"], "status": record["status"], "candidate": record["candidate"],
            "champion": record["champion"], "stage": stage["name"], "share": stage["share"], "shadow": stage["shadow"],
            "stage_index": record["stage_index"], "stages": [s["name"] for s in record["stages"]],
            "started_at": record["started_at"], "stage_started_at": record["stage_started_at"],
            "ended_at": record.get("ended_at"), "reason": record.get("end_reason") or record.get("reason")}


class Controller:
    """Evaluates the active rollout from the decision log and applies the verdict (see the module docstring)."""

    def __init__(self, settings: Settings | None = None, decisions_dir: str | Path | None = None,
                 registry: Any = None) -> None:
        from smartrouter.registry import Registry

        self.settings = settings or load_settings()
        self.registry = registry or Registry(self.settings)
        self.decisions_dir = Path(decisions_dir) if decisions_dir else self.settings.state_dir / "decisions"

    def active(self) -> dict[str, Any] | None:
        record = read_rollout(self.registry.root)
        return record if record is not None and record["status"] == ACTIVE else None

    def verdict(self, record: dict[str, Any]) -> Verdict:
        since = _epoch(record["started_at"]) - 60.0  # segments untouched since before the start hold none of it
        decisions, outcomes = read_log(self.decisions_dir, record["id"], since)
        return evaluate(record, tally_stage(record, decisions, outcomes))

    def step(self, apply: bool = True) -> StepResult:
        """One look: RolloutError when no rollout is active; 'busy' when another controller holds the lock."""
        from filelock import FileLock, Timeout

        self.registry.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.registry.root / CONTROLLER_LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return StepResult("busy", read_rollout(self.registry.root), None,
                              "another controller is deciding this rollout now; nothing done")
        try:
            record = read_rollout(self.registry.root)
            if record is None:
                raise RolloutError("no rollout to advance: none was ever started; a daily-run promotion starts one, "
                                   "or `smartrouter rollout start vN`")
            if record["status"] != ACTIVE:
                raise RolloutError(f"rollout {record['id']} of {record['candidate']} already ended ({record['status']} at "
                                   f"{record.get('ended_at')}); start a new one with `smartrouter rollout start vN`")
            promoted = self.registry.promoted()
            if promoted is None or promoted[0] != record["champion"]:
                now = promoted[0] if promoted else "nothing"
                reason = (f"the champion changed under the rollout (pointer names {now}, the rollout began beside "
                          f"{record['champion']})")
                record = self.registry.end_rollout("aborted", reason) if apply else record
                return StepResult("abort" if apply else "none", record, None, reason)
            v = self.verdict(record)
            if not apply or v.action == "hold":
                record = self.registry.note_check(v.to_json()) if apply else record
                return StepResult("none", record, v, "; ".join(v.reasons))
            if v.action == "rollback":
                record = self.registry.end_rollout("rolled_back", f"stage {v.stage}: " + "; ".join(v.reasons), v.to_json())
            elif v.action == "complete":
                record = self.registry.end_rollout("completed", f"stage {v.stage} passed: " + "; ".join(v.reasons), v.to_json())
            else:
                record = self.registry.advance_rollout(record["stage_index"], v.to_json())
            return StepResult(v.action, record, v, "; ".join(v.reasons))
        finally:
            lock.release()


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------ a drill: a deliberately worse copy
def degraded_copy(registry: Any, version: str, anchor: float = 0.8) -> str:
    """Register a copy of ``version`` that ranks processors in reverse; returns its version name.

    Every processor's calibrator is followed by a mirror around ``anchor``:
    p' = sigmoid(2 logit(anchor) - logit(p)). The copy prefers the processor the original thinks
    worst while answering plausible probabilities (0.8 stays 0.8), so it passes the service's
    confidence check and really routes: a bad model for rollout drills, registered as rejected
    (it never passed a gate), so only a forced canary serves it.
    """
    import shutil
    import tempfile

    from smartrouter.models.base import CHECKSUM_FILE, MODEL_FILE, sha256_file

    src = registry.version_dir(version)
    info = json.loads((src / "version.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="degraded-", dir=registry.root))
    try:
        serving = tmp / "serving"
        shutil.copytree(src / "serving", serving)
        meta = json.loads((serving / MODEL_FILE).read_text())
        shift = 2.0 * math.log(anchor / (1.0 - anchor))
        # the calibrators stay as they are; a platt step after them mirrors each probability
        meta["calibration"] = [_mirror(cal, shift) for cal in meta["calibration"]]
        atomic.write_json(serving / MODEL_FILE, meta, indent=2)
        sums = json.loads((serving / CHECKSUM_FILE).read_text())
        sums[MODEL_FILE] = sha256_file(serving / MODEL_FILE)
        atomic.write_json(serving / CHECKSUM_FILE, sums, indent=2)
        metrics = json.loads((src / "metrics.json").read_text())
        gates = {"decision": "rejected", "reasons": [f"drill: degraded copy of {version} (processor ranking reversed)"]}
        return registry.register(info["run_dir"], info["family"], metrics, gates, status="rejected",
                                 serving_dir=serving, reason=gates["reasons"][0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mirror(cal: dict[str, Any], shift: float) -> dict[str, Any]:
    """A calibrator whose output is the mirror of ``cal``'s (see `degraded_copy`)."""
    method = cal.get("method")
    if method == "platt":  # sigmoid(a z + b) -> sigmoid(-(a z + b) + shift)
        return {"method": "platt", "a": -float(cal["a"]), "b": shift - float(cal["b"])}
    if method == "temperature":  # sigmoid(z / t)
        return {"method": "platt", "a": -1.0 / float(cal["t"]), "b": shift}
    if method == "identity":
        return {"method": "platt", "a": -1.0, "b": shift}
    if method == "isotonic":  # a monotone map stays monotone when its values are mirrored and reversed
        ys = [1.0 / (1.0 + math.exp(-(shift - math.log(max(y, 1e-6) / max(1.0 - y, 1e-6))))) for y in cal["y"]]
        return {**{k: v for k, v in cal.items() if k not in ("x", "y")}, "method": "isotonic",
                "x": list(cal["x"]), "y": ys}
    raise ArtifactError(f"cannot mirror a {method!r} calibrator; degrade a model with platt, temperature, identity "
                        "or isotonic calibration")
