"""The world goes on: days after the world's last day, routed by the routing service.

``advance(settings, days, client, scenario)`` generates the next ``days`` days from the same
entities and per-day seed stream as the world (``SeedSequence([seed, 1, day_index])``): the same
users, BINs, hidden effects; drift and the global wave continue past the span (they are functions
of the time), the BANORTE step stays, and processor incidents go on at the world's rate
(``entities.continuation_outages``). What changes is who routes: every attempt, in time order, is
sent to a `RouterClient` (the running service over HTTP, or its handlers in process); its outcome
is drawn from the truth for the processor the service CHOSE, at that time, with the scenario's
incidents, issuer steps and processor changes applied; the outcome is reported back
(/v1/outcomes); a declined order is retried as the service advises (``POST /v1/retry``: whether, after
which delay, on which processor; the retry is then routed with that processor as its only candidate),
or, when the service gives no retry advice, by the merchant's retry behaviour (the generator's
`_retries`), each retry asking the service again. Retries stay inside their day (as the generator's).

Time slices: the attempts of one ``slice_seconds`` window are sent together (an HTTP client sends
them concurrently), then their outcomes; slices go in time order, so the service has heard every
outcome of earlier slices when it routes the next one.

What lands where (per day, in this order):
1. the warehouse (one transaction that first deletes whatever the day held, so a redo after a
   crash never duplicates): ``VW_ATHENA_PAYMENT_ATTEMPT`` rows as the generator writes them, their
   ``DYNAMIC_ROUTING_DETAIL`` holding the service's decision, and ``VW_SMART_ROUTING_ATTEMPTS``
   with the client-measured decision latency;
2. ``<local_dir>/live/retry/<day>.parquet``: every declined attempt, what was decided about its retry
   (advice or merchant) and the truth of the best immediate retry (`smartrouter.retry.simulate.live_recovery`);
3. ``<local_dir>/live/truth/<day>.parquet`` (the oracle's view of every attempt; written last, its
   presence marks the day complete);
4. ``<local_dir>/live/days.jsonl``: one `DaySummary` line per complete day.

Truth is the world's side: models and the service never read it.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smartrouter import atomic, catalog, messages, warehouse
from smartrouter.config import Settings, load_settings
from smartrouter.routing.experiment import CONTROL
from smartrouter.errors import ConfigError
from smartrouter.world.clients import HttpClient, InProcessClient, LiveError, RouterClient
from smartrouter.world.entities import (
    BANK_NAMES, PI, SECONDS_PER_DAY, USD_MXN, Outages, concat_outages, continuation_outages,
)
from smartrouter.world.generate import CODE_LIST, MAX_ATTEMPTS, World, _DayGenerator
from smartrouter.world.oracle import Encoded, error_share, issuer_logit, sigmoid
from smartrouter.world.scenario import BUSIEST, MINUTES_PER_DAY, Scenario

__all__ = [
    "DaySummary", "HttpClient", "InProcessClient", "LiveError", "RouterClient", "TRUTH_COLUMNS",
    "advance", "completed_days", "live_dir", "read_days", "truth_path",
]

LIVE_DIR = "live"
TRUTH_DIR = "truth"
RETRY_DIR = "retry"
DAYS_FILE = "days.jsonl"
LOCK_FILE = ".advance.lock"
SLICE_SECONDS = 60.0
# The routing log's EXPERIMENT_ARM (upper case) of an order the experiment keeps on the merchant's current system.
CONTROL_ARM = CONTROL.upper()
# The routing log's ALGORITHM_TYPE of a served attempt: this prefix + the service's decision source
# (SMARTROUTER_MODEL, SMARTROUTER_RULES, SMARTROUTER_EXPLORATION, SMARTROUTER_FAILOVER, ...); the
# world's own rows keep STATIC_RULES / RETRY_RULES / RANDOMIZED_EXPERIMENT.
SERVED_ALGORITHM_PREFIX = "SMARTROUTER_"
# MESSAGE_CONFIG / DEFAULT_CONFIG: the message configuration sent and the merchant's default (keys of
# smartrouter.messages); P_CHOSEN_DEFAULT_CONFIG: the chosen processor's truth with the default message,
# the counterfactual of a message recommendation (P_CHOSEN - P_CHOSEN_DEFAULT_CONFIG is its true lift);
# MESSAGE_ARM: the order's message A/B arm the service answered (with / without; "" outside the test).
TRUTH_COLUMNS: tuple[str, ...] = (
    "ATTEMPT_ID", "ORDER_ID", "DAY", "CREATED_AT", "ATTEMPT_NUMBER", "CURRENCY", "AMOUNT", "AMOUNT_USD",
    "CARD_BRAND", "CARD_TYPE", "ARM", "SOURCE", "MODEL_VERSION", "CHOSEN", "PROPENSITY", "RULES_CHOICE",
    "ORACLE_BEST", "P_CHOSEN", "P_RULES", "P_BEST", "STATUS", "APPROVED", "OUTAGE_PROCESSORS",
    "CHOSEN_IN_OUTAGE", "LATENCY_MS", "MESSAGE_CONFIG", "DEFAULT_CONFIG", "P_CHOSEN_DEFAULT_CONFIG", "MESSAGE_ARM",
)
_SUMMARY_KEY = b"smartrouter.day_summary"
_WORLD_KEY = b"smartrouter.world_fingerprint"
_TIMEOUT, _PSP = CODE_LIST.index(catalog.TIMEOUT_CODE), CODE_LIST.index("PSP_5XX")
_PROCS = np.array(catalog.PROCESSORS, dtype=object)
_CODES = np.array(list(CODE_LIST) + [None], dtype=object)  # index -1 = no code
_CONFIG_KEYS = np.array(messages.CONFIG_KEYS, dtype=object)


@functools.lru_cache(maxsize=1)
def _message_fields() -> dict[str, bool]:
    """The /v1/route request fields that carry the message and its eligibility facts, as far as the
    service's request schema (serve/app.py, the same code the live loop runs) knows them, each with
    whether it is declared a bool: an older service refuses unknown fields and the strict decoder a
    0/1 for a bool, so the loop sends only what the schema accepts, typed as it says."""
    import msgspec

    wanted = {c.lower() for c in messages.MESSAGE_COLUMNS + messages.ELIGIBILITY_COLUMNS} | {"avs_checked"}
    try:
        from serve.app import RouteRequest
    except ImportError:  # no service code beside the world: the fields every version knows
        return {"mci_msi_type": False, "avs_checked": True}
    return {f.name: "bool" in repr(f.type) for f in msgspec.structs.fields(RouteRequest) if f.name in wanted}


def _recommended_key(answer: dict) -> str | None:
    """The message configuration a /v1/route answer recommends (``message_config`` as a key or an
    object with ``key``), or None when it names none."""
    rec = answer.get("message_config")
    if isinstance(rec, dict):
        rec = rec.get("key")
    return rec if isinstance(rec, str) and rec else None


@dataclass
class DaySummary:
    """One completed live day (a line of days.jsonl)."""

    day: dt.date
    index: int  # continuation day, 1 = the first day after the world's last day (a scenario's day)
    orders: int
    attempts: int
    approved: int
    seconds: float
    route_calls: int
    p99_route_ms: float
    model_versions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DaySummary":
        return cls(**{**d, "day": dt.date.fromisoformat(d["day"])})


# ---------------------------------------------------------------------------- where things live
def live_dir(settings: Settings | None = None) -> Path:
    """``<SMARTROUTER_LOCAL_DIR>/live``: beside the world's DuckDB file (tests that move it are isolated)."""
    return (settings or load_settings()).local_dir / LIVE_DIR


def truth_path(settings: Settings | None, day: dt.date) -> Path:
    return live_dir(settings) / TRUTH_DIR / f"{day.isoformat()}.parquet"


def retry_log_path(settings: Settings | None, day: dt.date) -> Path:
    """The day's retry decisions (one row per declined attempt) with the truth of the best immediate retry."""
    return live_dir(settings) / RETRY_DIR / f"{day.isoformat()}.parquet"


def completed_days(settings: Settings | None = None) -> list[dt.date]:
    """Live days whose truth file exists (written last, so the day is complete), oldest first."""
    folder = live_dir(settings) / TRUTH_DIR
    out = []
    for p in folder.glob("*.parquet") if folder.is_dir() else ():
        try:
            out.append(dt.date.fromisoformat(p.stem))
        except ValueError:
            continue  # a temporary file of atomic.write_bytes, or something else: not a day
    return sorted(out)


def read_days(settings: Settings | None = None) -> list[DaySummary]:
    """The DaySummary of every completed day (days.jsonl)."""
    path = live_dir(settings) / DAYS_FILE
    if not path.exists():
        return []
    return [DaySummary.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _summary_from_truth(path: Path) -> DaySummary:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if _SUMMARY_KEY not in meta:
        raise LiveError(f"{path} has no day summary; it was not written by `world advance`: remove it and advance again")
    return DaySummary.from_json(json.loads(meta[_SUMMARY_KEY]))


def _write_days_file(settings: Settings, days: list[dt.date]) -> None:
    """days.jsonl rebuilt from the truth files' own summaries (so it always matches them)."""
    lines = [json.dumps(_summary_from_truth(truth_path(settings, d)).to_json()) for d in days]
    atomic.write_text(live_dir(settings) / DAYS_FILE, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------- the truth, continued
class _Truth:
    """True approval during the continuation: the world's effects and incidents (continued past the
    span) plus the scenario's outages, issuer steps and processor changes.

    A scenario outage is a window [start, end) during which ``severity`` of the processor's
    attempts fail: timeouts before the issuer is asked (``timeouts``, like the world's incidents)
    or issuer declines (``declines``: the approval probability is multiplied by 1 - severity).
    """

    def __init__(self, world: World, scenario: Scenario | None, day_index: int) -> None:
        prm, eff = world.params, world.effects
        self.eff, self.span = eff, world.oracle().span_sec
        parts = [world.outages] + [continuation_outages(prm, eff.active_from_sec, d)
                                   for d in (day_index - 1, day_index) if d >= prm.days]
        both = concat_outages(*parts)
        # only incidents that touch this day matter (the world's own end before its span does)
        lo, hi = float(day_index * SECONDS_PER_DAY), float((day_index + 1) * SECONDS_PER_DAY)
        keep = (both.end > lo) & (both.start < hi)
        self.outages = Outages(*(getattr(both, f.name)[keep] for f in fields(Outages)))
        base = float(prm.days * SECONDS_PER_DAY)  # 00:00 UTC of continuation day 1, in world seconds

        def at(day: int, minute: int) -> float:
            return base + ((day - 1) * MINUTES_PER_DAY + minute) * 60.0

        sc = scenario or Scenario(name="none", description="")
        self.sc_outages = [(PI[o.processor], at(o.day, o.start_minute), at(o.day, o.start_minute + o.duration_minutes),
                            o.kind, float(o.severity)) for o in sc.outages]
        bin_index = {b: i for i, b in enumerate(world.bins.bin.tolist())}
        self.steps = []
        for s in sc.issuer_steps:
            bank = BANK_NAMES.index(s.bank) if s.bank is not None else None
            bins = np.array([bin_index[b] for b in s.bins if b in bin_index], dtype=np.int64) if s.bins else None
            procs = {PI[p] for p in s.processors} if s.processors else set(range(len(catalog.PROCESSORS)))
            self.steps.append((at(s.day, s.start_minute), float(s.logit_shift), bank, bins, procs))
        self.changes = sorted((at(c.day, c.start_minute), PI[c.processor], c.action == "enable")
                              for c in sc.processor_changes)
        P = len(catalog.PROCESSORS)
        self.in_world = np.zeros(P, dtype=bool)
        for p in prm.processors:
            self.in_world[PI[p]] = True
        # hard eligibility over every catalog processor (a scenario may add one the world lacks)
        self.elig = np.zeros((len(catalog.CARD_BRANDS), len(catalog.CURRENCIES), P), dtype=bool)
        for b, brand in enumerate(catalog.CARD_BRANDS):
            for c, cur in enumerate(catalog.CURRENCIES):
                for p in catalog.eligible_processors(brand, cur, catalog.PROCESSORS):
                    self.elig[b, c, PI[p]] = True

    def available(self, t: np.ndarray, brand: np.ndarray, currency: np.ndarray) -> np.ndarray:
        """(m, P): processors in rotation for each attempt (hard rules, joined, not disabled)."""
        on = self.in_world[None, :] & (self.eff.active_from_sec[None, :] <= t[:, None])
        for t_c, p, enable in self.changes:
            on[t >= t_c, p] = enable
        return on & self.elig[brand, currency]

    def matrix(self, enc: Any, config: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(m, P) each: P(APPROVED), processor-error share, issuer approval, in-an-incident flag, each
        row with its message configuration ``config`` (codes into messages.CONFIGS).

        Every processor at once: the m rows are repeated once per processor (processor-major), so
        the truth functions run once on m * P rows instead of P times on m (slices are small and
        numpy's per-call cost dominates there)."""
        m, P = len(t), len(catalog.PROCESSORS)
        rep = Encoded(**{f.name: np.tile(getattr(enc, f.name), P) for f in fields(Encoded)})
        proc = np.repeat(np.arange(P), m)
        t_r, config_r = rep.t_sec, np.tile(config, P)
        o = self.outages
        es = error_share(self.eff, proc, t_r, o)
        z = issuer_logit(self.eff, rep, proc, config_r, self.span, o)
        for t0, shift, bank, bins, procs in self.steps:
            hit = (t_r >= t0) & np.isin(proc, list(procs))
            if bank is not None:
                hit &= rep.bank_idx == bank
            if bins is not None:
                hit &= np.isin(rep.bin_idx, bins)
            z = z + np.where(hit, shift, 0.0)
        dec = np.zeros(m * P)
        inside = np.zeros(m * P, dtype=bool)
        for i in range(len(o)):
            inside |= (proc == o.processor[i]) & (o.shape(i, t_r) > 0)
        for pj, start, end, kind, sev in self.sc_outages:
            win = (proc == pj) & (t_r >= start) & (t_r < end)
            inside |= win
            if kind == "timeouts":
                es = np.maximum(es, np.where(win, sev, 0.0))
            else:
                dec = np.maximum(dec, np.where(win, sev, 0.0))
        pi = sigmoid(z) * (1.0 - dec)
        p = (1.0 - es) * (1.0 - self.eff.processing[proc]) * pi

        def cols(x: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(x.reshape(P, m).T)

        return cols(p), cols(es), cols(pi), cols(inside)


# ---------------------------------------------------------------------------- one live day
class _LiveDay:
    """Routes one day's attempts through the client, slice by slice; returns its frames and truth."""

    def __init__(self, world: World, index: int, scenario: Scenario | None, client: RouterClient,
                 slice_seconds: float, progress: Callable[[str], None] | None, card_counter: Any = None) -> None:
        from smartrouter.retry.rules import CardRetryCounter, load_rules

        self.w, self.index, self.client, self.progress = world, index, client, progress
        self.immediate = load_rules().delays["immediate"]  # the oracle-best retry's delay in the retry log
        # the merchant's count of each card's retries (user + BIN stands for the card), sent with /v1/retry
        self.card_counter = card_counter if card_counter is not None else CardRetryCounter()
        self.retry_log: list[pd.DataFrame] = []
        self.advised = getattr(client, "retry", None) is not None  # False once the service answers no advice
        self.cont_day = index - world.params.days + 1
        self.slice = float(slice_seconds)
        self.truth = _Truth(world, scenario, index)
        g = self.g = _DayGenerator(world, index)
        g._orders(scenario.traffic_multiplier(self.cont_day) if scenario is not None else 1.0)
        self.stamp = f"{g.date:%Y%m%d}"
        self.counter = 0
        self.batches: list[dict[str, np.ndarray]] = []
        self.route_ms: list[float] = []
        self.versions: list[str] = []
        self._rules_cache: dict[tuple, int] = {}
        self._cand_cache: dict[tuple, tuple[str, str, list[str]]] = {}
        self._order_fields = self._order_bodies()
        # First attempts are known at the start of the day (with the merchant's default message): their
        # truth for every processor is computed in one vectorized pass; retries, and attempts whose
        # message the service changed, are computed per slice.
        n = g.n
        self.first_config = g.default_configs(np.arange(n), np.ones(n, dtype=np.int64))
        enc = g._encode(np.arange(n), g.t0, np.ones(n, dtype=np.int64), np.full(n, -1), np.full(n, np.nan), np.full(n, -1))
        self.first_truth = self.truth.matrix(enc, self.first_config, g.t0)
        self.message_fields = _message_fields()

    # ------------------------------------------------------------------ request bodies
    def _order_bodies(self) -> list[dict[str, Any]]:
        """The order-level part of every /v1/route body (the attempt adds its own fields)."""
        g, w = self.g, self.w
        u, b = w.users, w.bins
        user = g.user
        cols = {
            "order_id": (("O" + self.stamp) + w._counters(g.n)[: g.n]).tolist(),
            "user_id": w._user_ids()[user].tolist(),
            "amount": g.amount.tolist(),
            "currency": np.array(catalog.CURRENCIES, dtype=object)[g.currency].tolist(),
            "card_bin": b.bin[g.bin].tolist(),
            "card_brand": np.array(catalog.CARD_BRANDS, dtype=object)[g.brand].tolist(),
            "card_type": np.array(catalog.CARD_TYPES, dtype=object)[g.ctype].tolist(),
            "card_country": g.country.tolist(),
            "card_level": np.array(catalog.CARD_LEVELS, dtype=object)[b.level[g.bin]].tolist(),
            "bank": np.array(BANK_NAMES, dtype=object)[g.bank].tolist(),
            "order_country_code": g.order_country.tolist(),
            "is_returning_customer": g.returning.astype(bool).tolist(),
            "user_recency_days": [None if np.isnan(x) else x for x in u.recency_days[user].tolist()],
            "user_frequency": u.frequency[user].tolist(),
            "user_monetary": u.monetary[user].tolist(),
            "fraud_rate_cohort": np.array(catalog.FRAUD_COHORTS, dtype=object)[g.fraud].tolist(),
            "browsing_minutes": g.browsing.tolist(),
            "flight_type": np.array(catalog.FLIGHT_TYPES, dtype=object)[g.intl].tolist(),
            "days_to_departure": g.dtd.tolist(),
            "passengers": g.passengers.tolist(),
            "fare_class": np.array(catalog.FARE_CLASSES, dtype=object)[g.fare].tolist(),
            "channel": np.array(catalog.CHANNELS, dtype=object)[g.channel].tolist(),
            "device": np.array(catalog.DEVICES, dtype=object)[g.device].tolist(),
            "browser": np.array(catalog.BROWSERS, dtype=object)[g.browser].tolist(),
        }
        keys = list(cols)
        return [dict(zip(keys, vals)) for vals in zip(*cols.values())]

    def _created(self, t: np.ndarray) -> np.ndarray:
        """datetime64[us] of world seconds, exactly as the generator stamps CREATED_AT."""
        return np.datetime64(self.w.start, "us") + (t * 1e6).round().astype("timedelta64[us]")

    def _candidates(self, brand: int, cur: int, mask: np.ndarray, joined: np.ndarray) -> tuple[str, str, list[str]]:
        """(CANDIDATES json, SKIP_REASONS json, candidate names) of one availability pattern
        (``joined``: the processors of the world active by then, whether or not a scenario disabled them)."""
        key = (brand, cur, mask.tobytes(), joined.tobytes())
        hit = self._cand_cache.get(key)
        if hit is None:
            names = [p for p in catalog.PROCESSORS if mask[PI[p]]]
            brand_name, cur_name = catalog.CARD_BRANDS[brand], catalog.CURRENCIES[cur]
            skip = {}
            for p in catalog.PROCESSORS:
                if p in names:
                    continue
                if not self.truth.elig[brand, cur, PI[p]]:
                    if brand_name == catalog.AMEX_BRAND:
                        skip[p] = "Amex cards go to AMEX only"
                    elif p == catalog.AMEX_PROCESSOR:
                        skip[p] = "AMEX takes Amex cards only"
                    else:
                        skip[p] = f"does not settle {cur_name}"
                elif joined[PI[p]] or any(c[1] == PI[p] for c in self.truth.changes):
                    skip[p] = "disabled (out of rotation)" if joined[PI[p]] else "not active yet"
                elif self.truth.in_world[PI[p]]:
                    skip[p] = "not active yet"
            hit = (json.dumps(names, separators=(",", ":")), json.dumps(skip, separators=(",", ":")), names)
            self._cand_cache[key] = hit
        return hit

    def _rules_choice(self, oi: np.ndarray, t: np.ndarray, attempt: np.ndarray, prev_proc: np.ndarray,
                      mask: np.ndarray) -> np.ndarray:
        """What the static rules (no failover) would choose for each attempt among the available processors."""
        g, w = self.g, self.w
        epoch = np.searchsorted(w._rule_breaks, t, side="right")
        out = np.empty(len(oi), dtype=np.int64)
        for i, o in enumerate(oi):
            key = (g.currency[o], g.brand[o], g.ctype[o], epoch[i], mask[i].tobytes(), prev_proc[i], attempt[i])
            hit = self._rules_cache.get(key)
            if hit is None:
                cands = [catalog.PROCESSORS[p] for p in np.flatnonzero(mask[i])]
                args = (catalog.CURRENCIES[g.currency[o]], catalog.CARD_BRANDS[g.brand[o]], catalog.CARD_TYPES[g.ctype[o]],
                        g._ts(t[i]), cands)
                if attempt[i] == 1:
                    choice = w.rules_engine.choose(*args)
                else:
                    prev = catalog.PROCESSORS[prev_proc[i]] if prev_proc[i] >= 0 else None
                    choice = w.rules_engine.retry_processor(*args, previous_processor=prev, attempt_number=int(attempt[i]))
                hit = PI[choice] if choice is not None else int(np.flatnonzero(mask[i])[0])
                self._rules_cache[key] = hit
            out[i] = hit
        return out

    # ------------------------------------------------------------------ messages
    def _message_body(self, o: int, default: int) -> dict[str, Any]:
        """The message fields of one /v1/route body: the merchant's default configuration and the
        payment's eligibility facts (only the fields the service accepts)."""
        g, c = self.g, messages.CONFIGS[default]
        values = {"mci_msi_type": c.initiator, "avs_checked": bool(c.avs), "avs_data": int(c.avs), "mcc": c.mcc,
                  "stored_credential": int(g.stored[o]), "billing_address": int(g.billing[o]),
                  "travel_package": int(g.package[o])}
        return {k: (bool(v) if self.message_fields[k] else v) for k, v in values.items() if k in self.message_fields}

    def _sent_messages(self, oi: np.ndarray, default: np.ndarray, answers: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(config code, propensity, randomized 0/1) of the message each attempt sends: the service's
        recommended ``message_config`` where it names one this payment may send, else the merchant's
        default (propensity 1). ``message_propensity`` / ``message_randomized`` of the answer are logged
        when its recommendation is sent."""
        g = self.g
        config, prop, rand = default.copy(), np.ones(len(oi)), np.zeros(len(oi), dtype=np.int64)
        for i, a in enumerate(answers):
            key = _recommended_key(a)
            if key is None or key not in messages.CONFIG_KEYS:
                continue
            k = messages.CONFIG_KEYS.index(key)
            if not g.eligible[oi[i], k]:  # never send what the payment may not: the default instead
                continue
            config[i] = k
            prop[i] = float(a.get("message_propensity", 1.0) or 1.0)
            rand[i] = int(bool(a.get("message_randomized", prop[i] < 1.0)))
        return config, prop, rand

    # ------------------------------------------------------------------ one slice
    def _batch(self, r: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Route, resolve and report one batch (sorted by time); returns the retry waves it schedules."""
        g, truth = self.g, self.truth
        oi, t, attempt = r["oi"], r["t"], r["attempt"]
        mask = truth.available(t, g.brand[oi], g.currency[oi])
        routable = mask.any(axis=1)
        if not routable.all():  # e.g. a scenario disabled the only processor a card may use: no attempt
            r = {k: v[routable] for k, v in r.items()}
            oi, t, attempt, mask = r["oi"], r["t"], r["attempt"], mask[routable]
        m = len(oi)
        if m == 0:
            return []
        first = attempt == 1
        retry = np.flatnonzero(~first)
        default = np.empty(m, dtype=np.int64)
        default[first] = self.first_config[oi[first]]
        default[retry] = g.default_configs(oi[retry], attempt[retry])
        joined = truth.in_world[None, :] & (truth.eff.active_from_sec[None, :] <= t[:, None])
        created = self._created(t)
        stamps = np.datetime_as_string(created, unit="us").tolist()
        ids = g.w._counters(self.counter + m)[self.counter: self.counter + m]
        self.counter += m
        attempt_ids = ("A" + self.stamp) + ids
        payment_ids = ("P" + self.stamp) + ids
        cands, skips, bodies, all_names = [], [], [], []
        for i in range(m):
            o = int(oi[i])
            c_json, s_json, names = self._candidates(int(g.brand[o]), int(g.currency[o]), mask[i], joined[i])
            all_names.append(names)
            want = int(r["want"][i]) if "want" in r else -1
            if want >= 0 and mask[i, want]:  # the retry advice named the processor: route there
                names = [catalog.PROCESSORS[want]]
                c_json = json.dumps(names, separators=(",", ":"))
            cands.append(c_json)
            skips.append(s_json)
            b = dict(self._order_fields[o])
            head = attempt[i] == 1
            b.update(
                payment_id=payment_ids[i], attempt_id=attempt_ids[i],
                num_attempts_order=int(attempt[i]), created_at=stamps[i], candidates=names,
                previous_order_error_code=None if head else CODE_LIST[r["prev_code"][i]],
                previous_processor=None if head else catalog.PROCESSORS[r["prev_proc"][i]],
                sec_since_previous_attempt=None if head else float(r["delay"][i]),
                avg_sec_between_payment_attempts=None if head else round(float(r["avg_delay"][i]), 3),
            )
            b.update(self._message_body(o, int(default[i])))
            bodies.append(b)
        answers = self.client.route(bodies)
        if len(answers) != m:
            raise LiveError(f"the router client answered {len(answers)} decisions for {m} requests")
        chosen = np.empty(m, dtype=np.int64)
        for i, a in enumerate(answers):
            p = PI.get(a.get("chosen"))
            if p is None or not mask[i, p]:
                raise LiveError(f"the service chose {a.get('chosen')!r} for attempt {attempt_ids[i]}, not one of the "
                                f"candidates sent ({json.loads(cands[i])}); the service must honour `candidates`")
            chosen[i] = p
        rows = np.arange(m)
        config, msg_prop, msg_rand = self._sent_messages(oi, default, answers)
        p_all, es_all, pi_all, out_all = (x[oi] for x in self.first_truth)  # copies; retry rows replaced below
        if len(retry):
            enc = g._encode(oi[retry], t[retry], attempt[retry], r["prev_code"][retry], r["delay"][retry],
                            r["prev_proc"][retry])
            for full, part in zip((p_all, es_all, pi_all, out_all), truth.matrix(enc, default[retry], t[retry])):
                full[retry] = part
        # the merchant's default message on every processor: the counterfactual of sending no recommendation
        # (P_RULES and P_BEST keep the message that was sent: they compare processors only)
        p_default = p_all.copy()
        changed = np.flatnonzero(config != default)
        if len(changed):  # the service recommended another message: the truth of what was sent
            enc = g._encode(oi[changed], t[changed], attempt[changed], r["prev_code"][changed], r["delay"][changed],
                            r["prev_proc"][changed])
            for full, part in zip((p_all, es_all, pi_all, out_all), truth.matrix(enc, config[changed], t[changed])):
                full[changed] = part
        status, code, latency = g._outcome(oi, chosen, r["prev_code"], es_all[rows, chosen], pi_all[rows, chosen])
        latency = np.round(latency, 1)
        outcomes = []
        for i, a in enumerate(answers):
            if status[i] == 2:  # PROCESSING: the merchant never learns the outcome, nothing to report
                continue
            c = int(code[i])
            outcomes.append({
                "request_id": a["request_id"], "processor": catalog.PROCESSORS[chosen[i]],
                "status": "APPROVED" if status[i] == 0 else ("TIMEOUT" if c == _TIMEOUT else "ERROR" if c == _PSP else "DECLINED"),
                "error_code": None if c < 0 else CODE_LIST[c], "created_at": stamps[i],
                "card_bin": self._order_fields[int(oi[i])]["card_bin"], "latency_ms": float(latency[i]),
                "order_id": bodies[i]["order_id"], "attempt_id": attempt_ids[i],
            })
        self.client.report(outcomes)
        rules = self._rules_choice(oi, t, attempt, r["prev_proc"], mask)
        p_masked = np.where(mask, p_all, -1.0)
        best = p_masked.argmax(axis=1)
        lat_ms = np.array([float(a.get("latency_ms", np.nan)) for a in answers])
        self.route_ms.extend(lat_ms.tolist())
        arm = np.array([str(a["arm"]).upper() for a in answers], dtype=object)
        source = np.array([str(a["source"]) for a in answers], dtype=object)
        version = np.array([a.get("model_version") for a in answers], dtype=object)
        propensity = np.array([float(a["propensity"]) for a in answers])
        message_arm = np.array([a.get("message_arm") or "" for a in answers], dtype=object)  # "" outside the message A/B
        for v in version:
            if v is not None and v not in self.versions:
                self.versions.append(v)
        algorithm = SERVED_ALGORITHM_PREFIX + np.char.upper(source.astype(str)).astype(object)
        details = []
        for i, a in enumerate(answers):
            detail = {
                "algorithm": algorithm[i], "arm": arm[i], "source": source[i], "model_version": version[i],
                "request_id": a["request_id"], "candidates": json.loads(cands[i]), "chosen": a["chosen"],
                "propensity": propensity[i],
                "scores": {x["processor"]: x["probability"] for x in a.get("ranked", [])},
                "skip_reasons": json.loads(skips[i]), "latency_ms": round(float(lat_ms[i]), 2),
            }
            details.append(json.dumps(detail, separators=(",", ":")))
        in_outage = out_all
        self.batches.append({
            **r, "config": config, "msg_prop": msg_prop, "MESSAGE_RANDOMIZED": msg_rand, "proc": chosen, "status": status, "code": code, "latency": latency,
            "ATTEMPT_ID": attempt_ids, "PAYMENT_ID": payment_ids, "DETAIL": np.array(details, dtype=object),
            "ALGORITHM_TYPE": algorithm, "EXPERIMENT_ARM": arm, "CANDIDATES": np.array(cands, dtype=object),
            "PROPENSITY": propensity, "LATENCY_MS": np.round(lat_ms, 2), "SKIP_REASONS": np.array(skips, dtype=object),
            "SOURCE": source, "MODEL_VERSION": version, "RULES_CHOICE": rules, "ORACLE_BEST": best,
            "P_CHOSEN": p_all[rows, chosen], "P_RULES": p_all[rows, rules], "P_BEST": p_all[rows, best],
            "P_CHOSEN_DEFAULT_CONFIG": p_default[rows, chosen], "DEFAULT_CONFIG": default,
            "OUTAGE_MASK": (in_outage * (1 << np.arange(in_outage.shape[1]))).sum(axis=1),
            "CHOSEN_IN_OUTAGE": in_outage[rows, chosen], "MESSAGE_ARM": message_arm,
        })
        advised = (self._advise(r, bodies, all_names, chosen, status, code, out_all[rows, chosen], arm)
                   if self.advised else None)
        if advised is not None:
            return [advised] if len(advised["t"]) else []
        # retries: one wave per attempt number (the generator's `_retries` works a wave at a time)
        waves = []
        for n_att in range(1, MAX_ATTEMPTS):
            sel = attempt == n_att
            if sel.any():
                nxt = g._retries({"status": status[sel], "attempt": attempt[sel], "code": code[sel], "t": t[sel],
                                  "avg_delay": r["avg_delay"][sel], "oi": oi[sel], "proc": chosen[sel]})
                if nxt is not None:
                    waves.append({**nxt, "want": np.full(len(nxt["t"]), -1)})
        return waves

    def _advise(self, r: dict[str, np.ndarray], bodies: list[dict], names: list[list[str]], chosen: np.ndarray,
                status: np.ndarray, code: np.ndarray, in_outage: np.ndarray, arm: np.ndarray) -> dict[str, np.ndarray] | None:
        """Ask the service whether, when and where to retry each declined attempt of the batch's treatment
        arm; the retry wave it advises (None: the service gives no retry advice). Logs every decision with
        the truth of the best immediate retry (what the oracle would recover by retrying at once).

        A control-arm order is retried by the merchant's own retry behaviour, as the merchant's router
        does for the orders the experiment keeps on its current system: the A/B readout then compares
        the whole of smartrouter (routing and retries) with the whole of the current system."""
        g, truth = self.g, self.truth
        oi, t, attempt = r["oi"], r["t"], r["attempt"]
        declined = np.flatnonzero(status == 1)
        control = declined[arm[declined] == CONTROL_ARM]
        idx = declined[arm[declined] != CONTROL_ARM]
        if not len(idx):
            return self._merchant_retries(r, status, code, chosen, control)
        reqs = []
        for i in idx:
            b = dict(bodies[i])
            c24, c30 = self.card_counter.counts((b["user_id"], b["card_bin"]), float(t[i]))
            b.update(candidates=names[i], error_code=CODE_LIST[code[i]], processor=catalog.PROCESSORS[chosen[i]],
                     card_retries_24h=c24, card_retries_30d=c30)
            reqs.append(b)
        answers = self.client.retry(reqs)
        if answers is None:  # the service gives no retry advice: every order retries the merchant's way
            self.advised = False
            return None
        # no advice (the served version has no retry model): the merchant's own retry for those declines
        own = np.array([a["source"] == "no_model" for a in answers])
        go = np.array([bool(a["retry"]) for a in answers])
        delay = np.array([float(a["delay_seconds"]) if a["retry"] else np.nan for a in answers])
        want = np.array([PI[a["processor"]] if a["retry"] else -1 for a in answers], dtype=np.int64)
        go &= (t[idx] + np.nan_to_num(delay) < g.day_end)
        for k in np.flatnonzero(go):
            self.card_counter.record((reqs[k]["user_id"], reqs[k]["card_bin"]), float(t[idx[k]] + delay[k]))
        # the truth of retrying at once on the truly best processor, with the merchant's default message for a retry
        d0 = self.immediate
        ti = t[idx] + d0
        enc = g._encode(oi[idx], ti, attempt[idx] + 1, code[idx], np.full(len(idx), d0), chosen[idx])
        avail = truth.available(ti, g.brand[oi[idx]], g.currency[oi[idx]])
        best = np.where(avail, truth.matrix(enc, g.default_configs(oi[idx], attempt[idx] + 1), ti)[0], 0.0).max(axis=1)
        self.retry_log.append(pd.DataFrame({
            "ORDER_ID": [bodies[i]["order_id"] for i in idx], "ATTEMPT_NUMBER": attempt[idx].astype(np.int64),
            "ERROR_CODE": [CODE_LIST[c] for c in code[idx]], "PROCESSOR": _PROCS[chosen[idx]],
            "IN_OUTAGE": in_outage[idx].astype(bool), "RETRY": go, "ADVISED_RETRY": [bool(a["retry"]) for a in answers],
            "SOURCE": [a["source"] for a in answers],
            "DELAY": [a["delay"] for a in answers], "DELAY_SECONDS": delay,
            "ADVISED_PROCESSOR": [a["processor"] for a in answers], "RULE": [a["rule"] for a in answers],
            "P_BEST_IMMEDIATE": best,
        }))
        sel = idx[go]
        prev_n = attempt[sel] - 1
        avg = np.where(prev_n > 0, (np.nan_to_num(r["avg_delay"][sel]) * prev_n + delay[go]) / (prev_n + 1), delay[go])
        wave = {"oi": oi[sel], "t": t[sel] + delay[go], "attempt": attempt[sel] + 1, "prev_code": code[sel],
                "prev_proc": chosen[sel], "delay": delay[go], "avg_delay": avg, "want": want[go]}
        merchant = self._merchant_retries(r, status, code, chosen, np.concatenate([idx[own], control]))
        return {k: np.concatenate([wave[k], merchant[k]]) for k in wave}

    def _merchant_retries(self, r: dict[str, np.ndarray], status: np.ndarray, code: np.ndarray, chosen: np.ndarray,
                          rows: np.ndarray) -> dict[str, np.ndarray]:
        """The merchant's own retries of the declined ``rows`` (the generator's `_retries`, a wave per
        attempt number), as one wave whose retries name no processor (the service routes them)."""
        g, oi, t, attempt = self.g, r["oi"], r["t"], r["attempt"]
        keys = ("oi", "t", "attempt", "prev_code", "prev_proc", "delay", "avg_delay", "want")
        wave = {k: np.empty(0, dtype=np.int64 if k in ("oi", "attempt", "prev_code", "prev_proc", "want") else float)
                for k in keys}
        for n_att in range(1, MAX_ATTEMPTS):
            mine = rows[attempt[rows] == n_att]
            nxt = g._retries({"status": status[mine], "attempt": attempt[mine], "code": code[mine], "t": t[mine],
                              "avg_delay": r["avg_delay"][mine], "oi": oi[mine], "proc": chosen[mine]}) if len(mine) else None
            if nxt is not None:
                wave = {k: np.concatenate([wave[k], nxt[k] if k != "want" else np.full(len(nxt["t"]), -1)]) for k in keys}
        return wave

    # ------------------------------------------------------------------ the day
    def run(self) -> tuple[Any, pd.DataFrame, DaySummary]:
        t_start = time.perf_counter()
        g = self.g
        n = g.n
        first = {"oi": np.arange(n), "t": g.t0.copy(), "attempt": np.ones(n, dtype=np.int64),
                 "prev_code": np.full(n, -1), "prev_proc": np.full(n, -1),
                 "delay": np.full(n, np.nan), "avg_delay": np.full(n, np.nan), "want": np.full(n, -1)}
        keys = list(first)
        pool = {k: v[:0] for k, v in first.items()}  # scheduled retries
        ptr = 0
        next_report = 0.1
        while ptr < n or len(pool["t"]):
            nxt = min(first["t"][ptr] if ptr < n else np.inf, pool["t"].min() if len(pool["t"]) else np.inf)
            end = g.day_start + (np.floor((nxt - g.day_start) / self.slice) + 1.0) * self.slice
            while True:  # retries due inside this slice are routed before the slice ends
                hi = int(np.searchsorted(first["t"], end, side="left"))
                due = pool["t"] < end
                if hi <= ptr and not due.any():
                    break
                batch = {k: np.concatenate([first[k][ptr:hi], pool[k][due]]) for k in keys}
                ptr = max(ptr, hi)
                pool = {k: v[~due] for k, v in pool.items()}
                order = np.lexsort((batch["attempt"], batch["oi"], batch["t"]))
                for wave in self._batch({k: v[order] for k, v in batch.items()}):
                    pool = {k: np.concatenate([pool[k], wave[k]]) for k in keys}
            if self.progress is not None and ptr >= next_report * n and n:
                self.progress(f"  {g.date} {100 * ptr / n:3.0f} % of orders routed ({self.counter:,} attempts)")
                next_report += 0.1
        return self._assemble(time.perf_counter() - t_start)

    def _assemble(self, seconds: float) -> tuple[Any, pd.DataFrame, DaySummary]:
        g = self.g
        if self.batches:
            a = {k: np.concatenate([b[k] for b in self.batches]) for k in self.batches[0]}
        else:
            a = {}
        m = len(a.get("oi", ()))
        if m:
            order = np.lexsort((a["attempt"], a["oi"], a["t"]))
            a = {k: v[order] for k, v in a.items()}
            chunk = g._frames(a, served=a)
        else:
            raise LiveError(f"day {g.date} had no routable attempt; check the scenario's processor changes and traffic")
        f = chunk.attempts
        status_name = np.where(a["status"] == 0, "APPROVED", np.where(a["status"] == 2, "PROCESSING", np.where(
            a["code"] == _TIMEOUT, "TIMEOUT", np.where(a["code"] == _PSP, "ERROR", "DECLINED")))).astype(object)
        outage_names = {}
        for mask in np.unique(a["OUTAGE_MASK"]):
            outage_names[int(mask)] = ",".join(p for j, p in enumerate(catalog.PROCESSORS) if int(mask) >> j & 1)
        usd = f["CURRENCY"].to_numpy() == "USD"
        amount = f["AMOUNT"].to_numpy(float)
        truth = pd.DataFrame({
            "ATTEMPT_ID": f["ATTEMPT_ID"].to_numpy(), "ORDER_ID": f["ORDER_ID"].to_numpy(),
            "DAY": pd.Series([g.date] * m, dtype=object), "CREATED_AT": f["CREATED_AT"].to_numpy(),
            "ATTEMPT_NUMBER": a["attempt"].astype(np.int64), "CURRENCY": f["CURRENCY"].to_numpy(),
            "AMOUNT": amount, "AMOUNT_USD": np.round(np.where(usd, amount, amount / USD_MXN), 2),
            "CARD_BRAND": f["CARD_BRAND"].to_numpy(), "CARD_TYPE": f["CARD_TYPE"].to_numpy(),
            "ARM": a["EXPERIMENT_ARM"], "SOURCE": a["SOURCE"], "MODEL_VERSION": a["MODEL_VERSION"],
            "CHOSEN": _PROCS[a["proc"]], "PROPENSITY": a["PROPENSITY"], "RULES_CHOICE": _PROCS[a["RULES_CHOICE"]],
            "ORACLE_BEST": _PROCS[a["ORACLE_BEST"]], "P_CHOSEN": a["P_CHOSEN"], "P_RULES": a["P_RULES"],
            "P_BEST": a["P_BEST"], "STATUS": status_name, "APPROVED": a["status"] == 0,
            "OUTAGE_PROCESSORS": np.array([outage_names[int(x)] for x in a["OUTAGE_MASK"]], dtype=object),
            "CHOSEN_IN_OUTAGE": a["CHOSEN_IN_OUTAGE"].astype(bool), "LATENCY_MS": a["LATENCY_MS"].astype(float),
            "MESSAGE_CONFIG": _CONFIG_KEYS[a["config"]], "DEFAULT_CONFIG": _CONFIG_KEYS[a["DEFAULT_CONFIG"]],
            "P_CHOSEN_DEFAULT_CONFIG": a["P_CHOSEN_DEFAULT_CONFIG"], "MESSAGE_ARM": a["MESSAGE_ARM"],
        }, columns=list(TRUTH_COLUMNS))
        ms = np.array(self.route_ms, dtype=float)
        summary = DaySummary(
            day=g.date, index=self.cont_day, orders=int(f["ORDER_ID"].nunique()), attempts=m,
            approved=int((a["status"] == 0).sum()), seconds=round(seconds, 3), route_calls=len(ms),
            p99_route_ms=round(float(np.percentile(ms, 99)), 3) if len(ms) else float("nan"),
            model_versions=list(self.versions),
        )
        return chunk, truth, summary


# ---------------------------------------------------------------------------- advance
def _busiest(settings: Settings, world: World) -> str:
    """The processor with the most attempts in the world's history (a scenario's ``"busiest"``)."""
    frame = warehouse.query_frame(
        f"SELECT PROCESSOR, COUNT(*) AS N FROM {catalog.ATTEMPTS_VIEW} WHERE CREATED_AT < %(end)s "
        "GROUP BY PROCESSOR ORDER BY N DESC, PROCESSOR LIMIT 1", {"end": world.end}, settings=settings)
    if frame.empty:
        raise LiveError("the warehouse holds no attempt before the world's end, so no processor is the busiest; "
                        "rebuild the world with `make world`")
    return str(frame.iloc[0, 0])


def _mentions_busiest(sc: Scenario) -> bool:
    names = [o.processor for o in sc.outages] + [c.processor for c in sc.processor_changes]
    names += [p for s in sc.issuer_steps for p in s.processors]
    return BUSIEST in names


def _write_truth(settings: Settings, day: dt.date, truth: pd.DataFrame, summary: DaySummary, world_fp: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(truth, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_SUMMARY_KEY] = json.dumps(summary.to_json()).encode()
    meta[_WORLD_KEY] = world_fp.encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    atomic.write_bytes(truth_path(settings, day), buf.getvalue())


def _check_live_state(settings: Settings, world: World, world_fp: str) -> list[dt.date]:
    """The completed live days, checked to continue this world's build contiguously."""
    import pyarrow.parquet as pq

    done = completed_days(settings)
    expected = [world.params.end_date + dt.timedelta(days=k + 1) for k in range(len(done))]
    if done != expected:
        raise LiveError(f"{live_dir(settings) / TRUTH_DIR} holds days {[d.isoformat() for d in done]}, not the "
                        f"contiguous days after the world's last day {world.params.end_date}; remove the stray "
                        f"files (or the whole {live_dir(settings)} folder to start the live days again)")
    if done:
        meta = pq.read_schema(truth_path(settings, done[-1])).metadata or {}
        if meta.get(_WORLD_KEY, b"").decode() != world_fp:
            raise LiveError(f"{live_dir(settings)} continues another build of the world (fingerprint "
                            f"{meta.get(_WORLD_KEY, b'?').decode()} != {world_fp}); the world was rebuilt: "
                            f"remove {live_dir(settings)} to start the live days again")
        last = done[-1]
        want = _summary_from_truth(truth_path(settings, last)).attempts
        have = int(warehouse.query_frame(
            f"SELECT COUNT(*) AS N FROM {catalog.ATTEMPTS_VIEW} WHERE CREATED_AT >= %(a)s AND CREATED_AT < %(b)s",
            {"a": dt.datetime(last.year, last.month, last.day), "b": dt.datetime(last.year, last.month, last.day) + dt.timedelta(days=1)},
            settings=settings).iloc[0, 0])
        if have != want:  # e.g. the world rebuilt with the same parameters: the live days' rows are gone
            raise LiveError(f"the warehouse holds {have:,} attempts on live day {last}, its truth file {want:,}; the "
                            f"warehouse was rebuilt or changed: remove {live_dir(settings)} to start the live days again")
    return done


def advance(settings: Settings | None, days: int, client: RouterClient, scenario: Scenario | None = None,
            progress: Callable[[str], None] | None = None, slice_seconds: float = SLICE_SECONDS) -> list[DaySummary]:
    """Generate and route the next ``days`` days after the warehouse's last complete day.

    Each day is atomic (see the module docstring): a crash mid-day leaves nothing of that day in the
    warehouse, and calling again redoes that day only. ``progress`` gets one-line messages.
    Returns the summaries of the days done by this call.
    """
    from filelock import FileLock, Timeout

    s = settings or load_settings()
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days={days!r} must be a whole number >= 1; use e.g. --days 1")
    if not slice_seconds > 0:
        raise ConfigError(f"slice_seconds={slice_seconds!r} must be positive; use e.g. 60")
    info = warehouse.load_world_info(s)
    params = warehouse.load_world_params(s)
    world = World(params)
    folder = live_dir(s)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LiveError(f"another `world advance` is running on {folder} (lock {LOCK_FILE}); wait for it to finish") from None
    try:
        world_fp = str(info.get("fingerprint", ""))
        done = _check_live_state(s, world, world_fp)
        if len(read_days(s)) != len(done):  # a crash between the truth file and days.jsonl
            _write_days_file(s, done)
        if scenario is not None and _mentions_busiest(scenario):
            scenario = scenario.resolve_busiest(_busiest(s, world))
        out = []
        from smartrouter.retry.rules import CardRetryCounter

        cards = CardRetryCounter()  # across the days of this call (a new call starts the counts afresh)
        for _ in range(days):
            index = params.days + len(done)
            live = _LiveDay(world, index, scenario, client, slice_seconds, progress, cards)
            chunk, truth, summary = live.run()
            t0 = time.perf_counter()
            warehouse.replace_day(chunk.day, chunk.attempts, chunk.routing_log, settings=s)
            summary.seconds = round(summary.seconds + time.perf_counter() - t0, 3)
            if live.retry_log:  # before the truth file, whose presence marks the day complete
                buf = io.BytesIO()
                pd.concat(live.retry_log, ignore_index=True).to_parquet(buf, index=False)
                atomic.write_bytes(retry_log_path(s, chunk.day), buf.getvalue())
            _write_truth(s, chunk.day, truth, summary, world_fp)
            done.append(chunk.day)
            _write_days_file(s, done)
            out.append(summary)
            if progress is not None:
                progress(f"{summary.day} (live day {summary.index}): {summary.orders:,} orders, {summary.attempts:,} attempts, "
                         f"{summary.approved / max(summary.attempts, 1):.1%} approved, {summary.seconds:.1f} s, "
                         f"p99 route {summary.p99_route_ms:.1f} ms, model {', '.join(summary.model_versions) or 'none'}")
        return out
    finally:
        lock.release()
