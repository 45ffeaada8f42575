"""Day-by-day generation of the world's attempts and routing log.

Each day is drawn from its own RNG (``SeedSequence([seed, 1, day_index])``), so days are
independent, any day can be regenerated alone, and memory is bounded by one day. A day is: first
attempts (orders) with their customer, card and flight; the logging policy's choice (static rules
for CONTROL, uniform over eligible candidates for EXPERIMENT) and message configuration (the
merchant's default for CONTROL, uniform over the payment's eligible configurations for EXPERIMENT,
smartrouter.messages); the outcome drawn from the truth model; then at most two vectorized retry
passes for declined orders.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from smartrouter import catalog, messages
from smartrouter.rules import RulesEngine
from smartrouter.world.entities import (
    BANK_NAMES,
    MEXICO_CITY_UTC_OFFSET_H,
    P,
    SECONDS_PER_DAY,
    USD_MXN,
    build_bins,
    build_effects,
    build_outages,
    build_rules,
    build_users,
)
from smartrouter.world.oracle import (
    PREV_HARD,
    PREV_NONE,
    PREV_PROCESSOR_ERROR,
    PREV_SOFT,
    Encoded,
    Oracle,
    error_share,
    issuer_logit,
    log_amount,
    sigmoid,
)
from smartrouter.world.params import WorldParams

# Mean attempts per order (first attempt + retries) on the default world; divides per_day so
# that first attempts + retries ~= per_day.
ATTEMPTS_PER_ORDER = 1.095
MAX_ATTEMPTS = 3
# Local (Mexico City) hourly traffic shape.
LOCAL_HOUR_WEIGHTS = np.array([0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.25, 0.45, 0.70, 0.90, 1.00, 1.05,
                               1.05, 1.00, 1.00, 1.00, 1.00, 1.05, 1.10, 1.15, 1.10, 0.95, 0.70, 0.45])
WEEKDAY_FACTOR = np.array([1.02, 0.98, 0.97, 1.00, 1.08, 0.97, 0.98])  # Monday first
SOFT_CODES = ("05", "51", "91", "61")
HARD_CODES = ("14", "43", "54", "62", "59")
DECLINE_CODES = SOFT_CODES + HARD_CODES
CODE_LIST = DECLINE_CODES + (catalog.TIMEOUT_CODE, "PSP_5XX")  # index into this = code id
PROC_LATENCY_MS = np.array([420.0, 380.0, 450.0, 500.0, 300.0])
TIMEOUT_LATENCY_MS = 30_000.0
ARMS = ("CONTROL", "EXPERIMENT")
ALGORITHMS = ("STATIC_RULES", "RETRY_RULES", "RANDOMIZED_EXPERIMENT")
PACKAGE_SALT = np.uint64(0x7A0C_4E1D_93B5_F268)  # keeps the travel-package draw apart from the experiment arm's


def _code_class() -> np.ndarray:
    out = []
    for c in CODE_LIST:
        info = catalog.ERROR_CODES[c]
        if info.category == catalog.PROCESSOR_ERROR_CATEGORY:
            out.append(PREV_PROCESSOR_ERROR)
        else:
            out.append(PREV_HARD if info.hard_soft == "HARD" else PREV_SOFT)
    return np.array(out + [PREV_NONE])  # index -1 = no previous code


CODE_CLASS = _code_class()


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Stateless 64-bit hash (SplitMix64 finalizer): the experiment arm is a pure function of the order."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _unit(key: np.ndarray) -> np.ndarray:
    """A uniform in [0, 1) per key (53 bits of its SplitMix64 hash)."""
    return (_splitmix64(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _pick(rng: np.random.Generator, n: int, probs: list[float] | np.ndarray) -> np.ndarray:
    """n draws of a category index with fixed probabilities."""
    cdf = np.cumsum(probs) / np.sum(probs)
    return np.searchsorted(cdf, rng.random(n), side="right").clip(0, len(cdf) - 1)


@dataclass
class DayChunk:
    """One generated day: the attempt view's rows and the routing log's rows."""

    day: dt.date
    attempts: pd.DataFrame  # columns exactly catalog.ATTEMPT_COLUMNS
    routing_log: pd.DataFrame  # columns exactly catalog.ROUTING_LOG_COLUMNS


class World:
    """A deterministic synthetic payments history for one merchant, generated a day at a time."""

    def __init__(self, params: WorldParams) -> None:
        params.validate()
        self.params = params
        d0 = params.start
        self.start = dt.datetime(d0.year, d0.month, d0.day)
        self.end = self.start + dt.timedelta(days=params.days)
        seq = np.random.SeedSequence([params.seed, 0])
        r_bins, r_users, r_eff, r_out = (np.random.default_rng(s) for s in seq.spawn(4))
        self.bins = build_bins(r_bins)
        n_orders = params.days * params.per_day / ATTEMPTS_PER_ORDER
        n_users = int(np.clip(n_orders / 3.0, 1_000, 300_000))
        self.users = build_users(r_users, self.bins, n_users, catalog.AMEX_PROCESSOR in params.processors)
        self.effects = build_effects(r_eff, params, self.bins)
        self.outages = build_outages(r_out, params, self.effects.active_from_sec)
        self._rules = build_rules(params, self.start)
        self.rules_engine = RulesEngine(self._rules)
        self._oracle = Oracle(self.effects, self.bins, self.outages, self.start, params.days, tuple(params.processors))
        hour_w = np.roll(LOCAL_HOUR_WEIGHTS, -MEXICO_CITY_UTC_OFFSET_H)  # index = UTC hour
        self._hour_cdf = np.cumsum(hour_w) / hour_w.sum()
        self._rule_breaks = np.array(
            sorted({(t - self.start).total_seconds() for t in pd.to_datetime(self._rules["ACTIVE_FROM"].dropna()).tolist()}),
            dtype=float,
        )
        self._elig = np.zeros((len(catalog.CARD_BRANDS), len(catalog.CURRENCIES), P), dtype=bool)
        for b, brand in enumerate(catalog.CARD_BRANDS):
            for c, cur in enumerate(catalog.CURRENCIES):
                for p in catalog.eligible_processors(brand, cur, tuple(params.processors)):
                    self._elig[b, c, catalog.PROCESSOR_INDEX[p]] = True
        self._id_width = max(6, len(str(int(params.per_day * 2))))
        self._user_id_cache: np.ndarray | None = None
        self._counter_cache: np.ndarray | None = None

    def _counters(self, n: int) -> np.ndarray:
        """Zero-padded counters "000000", "000001", ... as an object array (ids = prefix + counter)."""
        if self._counter_cache is None or len(self._counter_cache) < n:
            size = max(n, int(self.params.per_day * 1.5))
            self._counter_cache = np.array([f"{i:0{self._id_width}d}" for i in range(size)], dtype=object)
        return self._counter_cache

    def _user_ids(self) -> np.ndarray:
        if self._user_id_cache is None:
            self._user_id_cache = np.array([f"U{u:07d}" for u in range(len(self.users))], dtype=object)
        return self._user_id_cache

    # ------------------------------------------------------------------ public API
    def rules_frame(self) -> pd.DataFrame:
        """Rows of VW_ROUTING_MERCHANT_RULE (columns = catalog.RULE_COLUMNS)."""
        return self._rules.copy()

    def oracle(self) -> Oracle:
        """The world's truth (evaluation only)."""
        return self._oracle

    def iter_days(self) -> Iterator[DayChunk]:
        """One chunk per day, in order."""
        for d in range(self.params.days):
            yield self.day(d)

    def day(self, index: int) -> DayChunk:
        """Generate day ``index`` (0-based) alone; identical whether or not other days were generated."""
        if not 0 <= index < self.params.days:
            raise IndexError(f"day {index} is outside the world's {self.params.days} days")
        return _DayGenerator(self, index).run()


class _DayGenerator:
    """Generates one day; holds that day's order-level arrays."""

    def __init__(self, world: World, index: int) -> None:
        self.w = world
        self.index = index
        self.date = world.params.start + dt.timedelta(days=index)
        self.rng = np.random.default_rng(np.random.SeedSequence([world.params.seed, 1, index]))
        self.day_start = float(index * SECONDS_PER_DAY)
        self.day_end = self.day_start + SECONDS_PER_DAY
        self._head_cache: dict[tuple, str] = {}

    # ------------------------------------------------------------------ orders
    def _orders(self, multiplier: float = 1.0) -> None:
        """Draw the day's orders; ``multiplier`` scales the traffic (a live scenario; x * 1.0 == x,
        so the world's own days draw exactly as before)."""
        w, rng, prm = self.w, self.rng, self.w.params
        factor = WEEKDAY_FACTOR[self.date.weekday()] / WEEKDAY_FACTOR.mean()
        n = int(rng.poisson(prm.per_day * factor * multiplier / ATTEMPTS_PER_ORDER))
        self.n = n
        hour = np.searchsorted(w._hour_cdf, rng.random(n), side="right").clip(0, 23)
        self.t0 = self.day_start + np.floor((hour * 3600.0 + rng.random(n) * 3600.0) * 1000.0) / 1000.0
        u = w.users
        self.user = np.searchsorted(u.cum_activity, rng.random(n), side="right").clip(0, len(u) - 1)
        b = w.bins
        self.bin = u.bin_idx[self.user]
        self.brand = b.brand[self.bin]
        self.ctype = b.card_type[self.bin]
        self.bank = b.bank[self.bin]
        self.country = b.country[self.bin]
        self.foreign = (self.country != catalog.HOME_COUNTRY).astype(np.int64)
        self.intl = (rng.random(n) < np.where(self.foreign == 1, 0.75, 0.18)).astype(np.int64)
        p_usd = np.clip(0.03 + 0.42 * self.foreign + 0.30 * self.intl, 0.0, 0.95)
        self.currency = (rng.random(n) < p_usd).astype(np.int64) * catalog.CURRENCIES.index("USD")
        self.passengers = 1 + _pick(rng, n, [0.45, 0.28, 0.12, 0.09, 0.04, 0.02])
        mxn = rng.lognormal(np.log(2_200.0), 0.6, n) * (1.0 + 0.6 * (self.passengers - 1)) * np.where(self.intl == 1, 1.9, 1.0)
        usd = self.currency == catalog.CURRENCIES.index("USD")
        self.amount = np.where(usd, np.round(mxn / USD_MXN, 2), np.round(mxn, 2))
        self.dtd = np.minimum(rng.geometric(1 / 28.0, n) - 1, 330)
        self.fare = _pick(rng, n, [0.35, 0.35, 0.2, 0.1])
        self.channel = (rng.random(n) < 0.4).astype(np.int64)  # 0 WEB, 1 APP
        app = self.channel == 1
        self.device = np.where(app, np.where(rng.random(n) < 0.85, 1, 2), _pick(rng, n, [0.55, 0.40, 0.05]))
        self.browser = np.where(app, 4, _pick(rng, n, [0.60, 0.25, 0.10, 0.05]))
        self.browsing = np.round(rng.lognormal(np.log(9.0), 0.8, n), 1)
        # the customer gave a billing address (AVS data may be sent): foreign buyers more often
        self.billing = (rng.random(n) < np.where(self.foreign == 1, 0.8, 0.5)).astype(np.int64)
        stay = rng.random(n) < np.where(self.foreign == 1, 0.7, 0.97)
        self.order_country = np.where(stay, self.country, np.where(self.foreign == 1, catalog.HOME_COUNTRY, "US"))
        self.fraud = u.fraud[self.user]
        self.returning = u.returning[self.user].astype(np.int64)
        # Orders are numbered in time order so order ids sort like their first attempt.
        order = np.argsort(self.t0, kind="stable")
        for name in ("t0", "user", "bin", "brand", "ctype", "bank", "country", "foreign", "intl", "currency",
                     "passengers", "amount", "dtd", "fare", "channel", "device", "browser", "browsing", "billing",
                     "order_country", "fraud", "returning"):
            setattr(self, name, getattr(self, name)[order])
        key = np.uint64(prm.seed) * np.uint64(1_000_003) + np.uint64(self.date.toordinal()) * np.uint64(1 << 24) + np.arange(n, dtype=np.uint64)
        self.experiment = _unit(key) < prm.experiment_share
        # message facts: the user's card on file, and bookings that bundle a hotel or car (more often
        # abroad), drawn from the order's hash rather than the day's RNG so every later draw of the day
        # (routing, outcomes, retries) stays the one it was before messages existed
        self.stored = u.stored[self.user]
        self.package = (_unit(key ^ PACKAGE_SALT) < np.where(self.intl == 1, 0.22, 0.10)).astype(np.int64)
        self.eligible = messages.eligible_matrix(pd.DataFrame(
            {"STORED_CREDENTIAL": self.stored, "BILLING_ADDRESS": self.billing, "TRAVEL_PACKAGE": self.package}))

    # ------------------------------------------------------------------ one pass of attempts
    def _encode(self, oi: np.ndarray, t: np.ndarray, attempt: np.ndarray, prev_code: np.ndarray,
                delay: np.ndarray, prev_proc: np.ndarray) -> Encoded:
        return Encoded(
            bin_idx=self.bin[oi], bank_idx=self.bank[oi], brand=self.brand[oi], currency=self.currency[oi],
            card_type=self.ctype[oi], foreign=self.foreign[oi],
            log_amount=log_amount(self.amount[oi], self.currency[oi]), fraud=self.fraud[oi],
            returning=self.returning[oi], international=self.intl[oi], days_to_departure=self.dtd[oi],
            passengers=self.passengers[oi], fare=self.fare[oi], channel=self.channel[oi],
            t_sec=t, attempt=attempt, prev_class=CODE_CLASS[prev_code], delay_sec=delay, prev_proc=prev_proc,
        )

    def _route(self, oi: np.ndarray, t: np.ndarray, attempt: np.ndarray, prev_proc: np.ndarray) -> dict[str, np.ndarray]:
        """The logging policy: rules for CONTROL, uniform over eligible candidates for EXPERIMENT."""
        w, m = self.w, len(oi)
        eff = w.effects
        mask = w._elig[self.brand[oi], self.currency[oi]] & (eff.active_from_sec[None, :] <= t[:, None])
        k = mask.sum(axis=1)
        if (k == 0).any():  # validation guarantees a processor per currency; keep the invariant loud
            raise RuntimeError("an attempt has no eligible processor; check the world's processors")
        r = np.floor(self.rng.random(m) * k).astype(np.int64)
        exp_choice = np.argmax(np.cumsum(mask, axis=1) > r[:, None], axis=1)
        rule_epoch = np.searchsorted(w._rule_breaks, t, side="right")
        mask_code = (mask * (1 << np.arange(P))).sum(axis=1)
        # One rules-engine call per distinct (segment, rule epoch, candidates, previous processor).
        key = (((self.currency[oi] * 3 + self.brand[oi]) * 3 + self.ctype[oi]) * 8 + rule_epoch) * 64 + mask_code
        key = key * (P + 1) + (prev_proc + 1)
        uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
        ctrl = np.empty(len(uniq), dtype=np.int64)
        for j, row in enumerate(first):
            o = oi[row]
            cands = [catalog.PROCESSORS[p] for p in np.flatnonzero(mask[row])]
            args = (catalog.CURRENCIES[self.currency[o]], catalog.CARD_BRANDS[self.brand[o]], catalog.CARD_TYPES[self.ctype[o]],
                    self._ts(t[row]), cands)
            if attempt[row] == 1:
                choice = w.rules_engine.choose(*args)
            else:
                prev = catalog.PROCESSORS[prev_proc[row]] if prev_proc[row] >= 0 else None
                choice = w.rules_engine.retry_processor(*args, previous_processor=prev, attempt_number=int(attempt[row]))
            ctrl[j] = catalog.PROCESSOR_INDEX[choice] if choice is not None else int(np.flatnonzero(mask[row])[0])
        ctrl_choice = ctrl[inv.ravel()]
        exp = self.experiment[oi]
        algo = np.where(exp, 2, np.where(attempt == 1, 0, 1))
        return {
            "proc": np.where(exp, exp_choice, ctrl_choice),
            "propensity": np.where(exp, 1.0 / k, 1.0),
            "algo": algo,
            "mask_code": mask_code,
            "rule_epoch": rule_epoch,
        }

    def _ts(self, t_sec: float) -> dt.datetime:
        return self.w.start + dt.timedelta(seconds=float(t_sec))

    def _pass(self, oi: np.ndarray, t: np.ndarray, attempt: np.ndarray, prev_code: np.ndarray, prev_proc: np.ndarray,
              delay: np.ndarray, avg_delay: np.ndarray) -> dict[str, np.ndarray]:
        """Route and resolve one wave of attempts (first attempts, or one retry wave)."""
        w, rng, m = self.w, self.rng, len(oi)
        eff = w.effects
        config, msg_prop = self._message(oi, attempt, rng.random(m))
        route = self._route(oi, t, attempt, prev_proc)
        proc = route["proc"]
        enc = self._encode(oi, t, attempt, prev_code, delay, prev_proc)
        err_share = error_share(eff, proc, t, w.outages)
        p_issuer = sigmoid(issuer_logit(eff, enc, proc, config, w._oracle.span_sec, w.outages))
        status, code, latency = self._outcome(oi, proc, prev_code, err_share, p_issuer)
        return {
            "oi": oi, "t": t, "attempt": attempt, "prev_code": prev_code, "prev_proc": prev_proc, "delay": delay,
            "avg_delay": avg_delay, "config": config, "msg_prop": msg_prop, "proc": proc, "status": status, "code": code,
            "latency": np.round(latency, 1), "propensity": route["propensity"], "algo": route["algo"],
            "mask_code": route["mask_code"], "rule_epoch": route["rule_epoch"],
        }

    def default_configs(self, oi: np.ndarray, attempt: np.ndarray) -> np.ndarray:
        """The merchant's default configuration code of each attempt (messages.default_codes_from)."""
        return messages.default_codes_from(self.stored[oi], self.billing[oi], self.foreign[oi], self.channel[oi],
                                           (attempt > 1).astype(np.int64))

    def _message(self, oi: np.ndarray, attempt: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The logging policy for messages: (config code, its propensity) per attempt. EXPERIMENT orders
        draw uniformly among the payment's eligible configurations (``u`` uniform in [0, 1)); CONTROL
        sends the merchant's default (propensity 1)."""
        elig = self.eligible[oi]
        k = elig.sum(axis=1)
        r = np.floor(u * k).astype(np.int64)
        drawn = np.argmax(np.cumsum(elig, axis=1) > r[:, None], axis=1)
        exp = self.experiment[oi]
        return np.where(exp, drawn, self.default_configs(oi, attempt)), np.where(exp, 1.0 / k, 1.0)

    def _outcome(self, oi: np.ndarray, proc: np.ndarray, prev_code: np.ndarray, err_share: np.ndarray,
                 p_issuer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw each attempt's status (index into catalog.STATUSES), code (index into CODE_LIST, -1 none)
        and processor latency from its processor-error share and issuer approval probability
        (also the live loop's draw, world/live.py)."""
        rng, m, eff = self.rng, len(oi), self.w.effects
        is_err = rng.random(m) < err_share
        approved = ~is_err & (rng.random(m) < p_issuer)
        processing = ~is_err & (rng.random(m) < eff.processing[proc])
        status = np.where(processing, 2, np.where(approved, 0, 1))  # index into catalog.STATUSES
        # Decline codes: a segment-dependent hard/soft mix; a hard decline tends to repeat.
        fraud = self.fraud[oi]
        prepaid = self.ctype[oi] == catalog.CARD_TYPES.index("PREPAID")
        p_hard = 0.10 + 0.22 * (fraud == 2) + 0.07 * (fraud == 1) + 0.08 * prepaid + 0.04 * (self.returning[oi] == 0)
        p_hard = np.where(CODE_CLASS[prev_code] == PREV_HARD, 0.9, p_hard)
        soft_w = np.tile([0.45, 0.30, 0.10, 0.15], (m, 1))
        soft_w[:, 1] *= np.where(self.ctype[oi] != catalog.CARD_TYPES.index("CREDIT"), 2.0, 1.0)
        hard_w = np.tile([0.20, 0.15, 0.25, 0.20, 0.20], (m, 1))
        hard_w[:, [1, 4]] *= np.where(fraud == 2, 3.0, 1.0)[:, None]
        weights = np.hstack([soft_w / soft_w.sum(1, keepdims=True) * (1 - p_hard)[:, None],
                             hard_w / hard_w.sum(1, keepdims=True) * p_hard[:, None]])
        issuer_code = np.argmax(np.cumsum(weights, axis=1) > rng.random(m)[:, None], axis=1)
        err_code = np.where(rng.random(m) < 0.85, CODE_LIST.index(catalog.TIMEOUT_CODE), CODE_LIST.index("PSP_5XX"))
        code = np.where(status != 1, -1, np.where(is_err, err_code, issuer_code))
        latency = rng.lognormal(np.log(PROC_LATENCY_MS[proc]), 0.35) * (1.0 + 3.0 * err_share)
        latency = np.where(code == CODE_LIST.index(catalog.TIMEOUT_CODE), TIMEOUT_LATENCY_MS + rng.uniform(0, 500, m), latency)
        latency = np.where(code == CODE_LIST.index("PSP_5XX"), rng.lognormal(np.log(900.0), 0.4, m), latency)
        return status, code, latency

    def _retries(self, wave: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Which declined attempts are retried, and when (the same UTC day only: chunks stay whole days)."""
        rng = self.rng
        declined = wave["status"] == 1
        if wave["attempt"].max(initial=0) >= MAX_ATTEMPTS or not declined.any():
            return None
        cls = CODE_CLASS[wave["code"]]
        p_retry = np.select([cls == PREV_PROCESSOR_ERROR, cls == PREV_SOFT, cls == PREV_HARD], [0.75, 0.55, 0.20], 0.0)
        p_retry = p_retry * np.where(wave["attempt"] == 2, 0.8, 1.0)
        n = len(cls)
        quick = rng.lognormal(np.log(25.0), 0.8, n)
        soft = np.where(rng.random(n) < 0.6, rng.lognormal(np.log(90.0), 1.0, n), rng.lognormal(np.log(3_600.0), 1.0, n))
        hard = rng.lognormal(np.log(60.0), 1.0, n)
        delay = np.clip(np.select([cls == PREV_PROCESSOR_ERROR, cls == PREV_SOFT], [quick, soft], hard), 3.0, 8 * 3600.0)
        delay = np.round(delay, 3)
        go = declined & (rng.random(n) < p_retry) & (wave["t"] + delay < self.day_end)
        if not go.any():
            return None
        prev_n = wave["attempt"][go] - 1  # gaps before this one
        avg = np.where(prev_n > 0, (np.nan_to_num(wave["avg_delay"][go]) * prev_n + delay[go]) / (prev_n + 1), delay[go])
        return {"oi": wave["oi"][go], "t": wave["t"][go] + delay[go], "attempt": wave["attempt"][go] + 1,
                "prev_code": wave["code"][go], "prev_proc": wave["proc"][go], "delay": delay[go], "avg_delay": avg}

    # ------------------------------------------------------------------ assemble
    def run(self) -> DayChunk:
        self._orders()
        n = self.n
        waves = [self._pass(np.arange(n), self.t0.copy(), np.ones(n, dtype=np.int64), np.full(n, -1), np.full(n, -1),
                            np.full(n, np.nan), np.full(n, np.nan))]
        for _ in range(MAX_ATTEMPTS - 1):
            nxt = self._retries(waves[-1])
            if nxt is None:
                break
            waves.append(self._pass(**nxt))
        a = {k: np.concatenate([wv[k] for wv in waves]) for k in waves[0]}
        order = np.lexsort((a["attempt"], a["oi"], a["t"]))
        a = {k: v[order] for k, v in a.items()}
        return self._frames(a)

    def _detail_heads(self, a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DYNAMIC_ROUTING_DETAIL (without latency), CANDIDATES and SKIP_REASONS JSON per row, built
        once per distinct routing situation."""
        oi = a["oi"]
        key = ((((a["algo"] * P + a["proc"]) * 64 + a["mask_code"]) * 8 + a["rule_epoch"]) * 2 + self.currency[oi]) * 3
        key = ((key + self.brand[oi]) * 3 + self.ctype[oi]) * 2 + a["attempt"].clip(max=2) - 1
        key = key * (P + 1) + a["prev_proc"] + 1
        uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
        heads, cands, skips = [], [], []
        w = self.w
        for row in first:
            o = oi[row]
            mask = [(a["mask_code"][row] >> p) & 1 for p in range(P)]
            candidates = [catalog.PROCESSORS[p] for p in range(P) if mask[p]]
            cur, brand, ctype = catalog.CURRENCIES[self.currency[o]], catalog.CARD_BRANDS[self.brand[o]], catalog.CARD_TYPES[self.ctype[o]]
            at = self._ts(a["t"][row])
            skip: dict[str, str] = {}
            for p in w.params.processors:
                if p in candidates:
                    continue
                if brand == catalog.AMEX_BRAND:
                    skip[p] = "Amex cards go to AMEX only"
                elif p == catalog.AMEX_PROCESSOR:
                    skip[p] = "AMEX takes Amex cards only"
                elif cur not in catalog.PROCESSOR_CURRENCIES[p]:
                    skip[p] = f"does not settle {cur}"
                else:
                    join = w.start + dt.timedelta(seconds=float(w.effects.active_from_sec[catalog.PROCESSOR_INDEX[p]]))
                    skip[p] = f"not active before {join:%Y-%m-%d}"
            algo = ALGORITHMS[a["algo"][row]]
            detail: dict[str, Any] = {
                "algorithm": algo,
                "arm": ARMS[int(algo == "RANDOMIZED_EXPERIMENT")],
                "candidates": candidates,
                "chosen": catalog.PROCESSORS[a["proc"][row]],
                "propensity": float(a["propensity"][row]),
            }
            if algo == "RANDOMIZED_EXPERIMENT":
                detail["scores"] = {p: round(1.0 / len(candidates), 6) for p in candidates}
            else:
                detail["scores"] = w.rules_engine.priorities(cur, brand, ctype, at, candidates)
                detail["shadow"] = w.rules_engine.shadow(cur, brand, ctype, at, candidates)
            detail["skip_reasons"] = skip
            heads.append(json.dumps(detail, separators=(",", ":"))[:-1] + ',"latency_ms":')
            cands.append(json.dumps(candidates, separators=(",", ":")))
            skips.append(json.dumps(skip, separators=(",", ":")))
        inv = inv.ravel()
        return np.array(heads, dtype=object)[inv], np.array(cands, dtype=object)[inv], np.array(skips, dtype=object)[inv]

    def _frames(self, a: dict[str, np.ndarray], served: dict[str, np.ndarray] | None = None) -> DayChunk:
        """The day's two frames. ``served`` (the live loop): the routing service decided, so ids,
        DYNAMIC_ROUTING_DETAIL and the routing log's decision columns come from its answers
        (keys: ATTEMPT_ID, PAYMENT_ID, DETAIL, ALGORITHM_TYPE, EXPERIMENT_ARM, CANDIDATES,
        PROPENSITY, LATENCY_MS, SKIP_REASONS) instead of the logging policy's."""
        w, m, oi = self.w, len(a["oi"]), a["oi"]
        stamp = f"{self.date:%Y%m%d}"
        suffix = w._counters(max(m, self.n))
        if served is None:
            attempt_ids = ("A" + stamp) + suffix[:m]
            payment_ids = ("P" + stamp) + suffix[:m]
        else:
            attempt_ids, payment_ids = served["ATTEMPT_ID"], served["PAYMENT_ID"]
        order_ids_day = ("O" + stamp) + suffix[: self.n]
        created = np.datetime64(w.start, "ns") + (a["t"] * 1e6).round().astype("timedelta64[us]").astype("timedelta64[ns]")
        codes = np.array(list(CODE_LIST) + [None], dtype=object)
        code = codes[a["code"]]
        info = {c: catalog.ERROR_CODES[c] for c in CODE_LIST}
        category = np.array([info[c].category for c in CODE_LIST] + [None], dtype=object)[a["code"]]
        hard_soft = np.array([info[c].hard_soft for c in CODE_LIST] + [None], dtype=object)[a["code"]]
        procs = np.array(catalog.PROCESSORS, dtype=object)
        proc_name = procs[a["proc"]]
        if served is None:
            route_latency = np.round(self.rng.lognormal(np.log(4.0), 0.5, m), 2)
            heads, cands, skips = self._detail_heads(a)
            detail = heads + route_latency.astype(str).astype(object) + "}"
            algorithm = np.array(ALGORITHMS, dtype=object)[a["algo"]]
            arm = np.array(ARMS, dtype=object)[(a["algo"] == 2).astype(np.int64)]
            propensity = a["propensity"].astype(float)
        else:
            route_latency, detail, cands, skips = (served[k] for k in ("LATENCY_MS", "DETAIL", "CANDIDATES", "SKIP_REASONS"))
            algorithm, arm, propensity = served["ALGORITHM_TYPE"], served["EXPERIMENT_ARM"], served["PROPENSITY"]
        users = w.users
        user = self.user[oi]
        bins = w.bins
        first = a["attempt"] == 1
        msg_cols = messages.config_columns(a["config"])
        attempts = pd.DataFrame(
            {
                "ATTEMPT_ID": attempt_ids,
                "PAYMENT_ID": payment_ids,
                "ORDER_ID": order_ids_day[oi],
                "USER_ID": w._user_ids()[user],
                "MERCHANT": w.params.merchant,
                "CREATED_AT": created,
                "PROCESSOR": proc_name,
                "PROCESSOR_ID": np.array([catalog.PROCESSOR_IDS[p] for p in catalog.PROCESSORS], dtype=np.int64)[a["proc"]],
                "AMOUNT": self.amount[oi],
                "CURRENCY": np.array(catalog.CURRENCIES, dtype=object)[self.currency[oi]],
                "CARD_BIN": bins.bin[self.bin[oi]],
                "CARD_BRAND": np.array(catalog.CARD_BRANDS, dtype=object)[self.brand[oi]],
                "CARD_TYPE": np.array(catalog.CARD_TYPES, dtype=object)[self.ctype[oi]],
                "CARD_LEVEL": np.array(catalog.CARD_LEVELS, dtype=object)[bins.level[self.bin[oi]]],
                "BANK": np.array(BANK_NAMES, dtype=object)[self.bank[oi]],
                "CARD_COUNTRY": self.country[oi],
                "STATUS": np.array(catalog.STATUSES, dtype=object)[a["status"]],
                "ERROR_CODE": code,
                "ERROR_CATEGORY": category,
                "HARD_SOFT": hard_soft,
                "NUM_ATTEMPTS_ORDER": a["attempt"].astype(np.int64),
                "PREVIOUS_ORDER_ERROR_CODE": codes[a["prev_code"]],
                "PREVIOUS_PROCESSOR": np.where(a["prev_proc"] >= 0, procs[a["prev_proc"]], None),
                "SEC_SINCE_PREVIOUS_ATTEMPT": np.where(first, np.nan, a["delay"]),
                "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS": np.where(first, np.nan, np.round(a["avg_delay"], 3)),
                **msg_cols,
                "AVS_CHECKED": msg_cols["AVS_DATA"].astype(bool),
                "STORED_CREDENTIAL": self.stored[oi],
                "BILLING_ADDRESS": self.billing[oi],
                "TRAVEL_PACKAGE": self.package[oi],
                "MESSAGE_RANDOMIZED": self.experiment[oi].astype(np.int64) if served is None else served["MESSAGE_RANDOMIZED"],
                "MESSAGE_PROPENSITY": a["msg_prop"].astype(float),
                "ORDER_COUNTRY_CODE": self.order_country[oi],
                "IS_RETURNING_CUSTOMER": self.returning[oi].astype(bool),
                "USER_RECENCY_DAYS": users.recency_days[user],
                "USER_FREQUENCY": users.frequency[user].astype(np.int64),
                "USER_MONETARY": users.monetary[user],
                "FRAUD_RATE_COHORT": np.array(catalog.FRAUD_COHORTS, dtype=object)[self.fraud[oi]],
                "BROWSING_MINUTES": self.browsing[oi],
                "FLIGHT_TYPE": np.array(catalog.FLIGHT_TYPES, dtype=object)[self.intl[oi]],
                "DAYS_TO_DEPARTURE": self.dtd[oi].astype(np.int64),
                "PASSENGERS": self.passengers[oi].astype(np.int64),
                "FARE_CLASS": np.array(catalog.FARE_CLASSES, dtype=object)[self.fare[oi]],
                "CHANNEL": np.array(catalog.CHANNELS, dtype=object)[self.channel[oi]],
                "DEVICE": np.array(catalog.DEVICES, dtype=object)[self.device[oi]],
                "BROWSER": np.array(catalog.BROWSERS, dtype=object)[self.browser[oi]],
                "PROCESSOR_LATENCY_MS": a["latency"],
                "DYNAMIC_ROUTING_DETAIL": detail,
            },
            columns=list(catalog.ATTEMPT_COLUMNS),
        )
        routing = pd.DataFrame(
            {
                "ATTEMPT_ID": attempt_ids,
                "ORDER_ID": attempts["ORDER_ID"].to_numpy(),
                "MERCHANT": w.params.merchant,
                "CREATED_AT": created,
                "ALGORITHM_TYPE": algorithm,
                "EXPERIMENT_ARM": arm,
                "CANDIDATES": cands,
                "CHOSEN_PROCESSOR": proc_name,
                "PROPENSITY": propensity,
                "LATENCY_MS": route_latency,
                "SKIP_REASONS": skips,
            },
            columns=list(catalog.ROUTING_LOG_COLUMNS),
        )
        return DayChunk(day=self.date, attempts=attempts, routing_log=routing)


def calibration_report(world: World, progress: bool = False) -> dict[str, float]:
    """Stream the world once and measure its headline numbers against WORLD.md's bands:
    approval over all attempts, headroom (first attempts: oracle best vs the rules' first choice,
    with and without outages), segment dependence of the best processor, PROCESSING shares."""
    oracle, engine = world.oracle(), world.rules_engine
    tot = {"n": 0, "approved": 0, "first": 0, "oracle": 0.0, "rules": 0.0, "oracle_no": 0.0, "rules_no": 0.0,
           "seg_n": 0, "seg_diff": 0.0, "wp_el": 0, "wp_el_proc": 0, "other_proc": 0, "other": 0}
    t0 = time.perf_counter()
    for chunk in world.iter_days():
        f = chunk.attempts
        tot["n"] += len(f)
        tot["approved"] += int((f["STATUS"] == "APPROVED").sum())
        wp_el = f["PROCESSOR"].isin(["WORLDPAY", "ELAVON"])
        tot["wp_el"] += int(wp_el.sum())
        tot["wp_el_proc"] += int((wp_el & (f["STATUS"] == "PROCESSING")).sum())
        tot["other"] += int((~wp_el).sum())
        tot["other_proc"] += int((~wp_el & (f["STATUS"] == "PROCESSING")).sum())
        first = f[f["NUM_ATTEMPTS_ORDER"] == 1]
        h = oracle.headroom(first, engine, include_outages=True)
        h0 = oracle.headroom(first, engine, include_outages=False)
        k = len(first)
        tot["first"] += k
        tot["oracle"] += h["oracle"] * k
        tot["rules"] += h["rules"] * k
        tot["oracle_no"] += h0["oracle"] * k
        tot["rules_no"] += h0["rules"] * k
        nonamex = int((first["CARD_BRAND"] != catalog.AMEX_BRAND).sum())
        tot["seg_diff"] += oracle.segment_dependence(first) * nonamex
        tot["seg_n"] += nonamex
        if progress:
            print(f"  {chunk.day}  {len(f):>7} attempts", flush=True)
    first_n = max(tot["first"], 1)
    gap = (tot["oracle"] - tot["rules"]) / first_n
    gap_no = (tot["oracle_no"] - tot["rules_no"]) / first_n
    return {
        "attempts": float(tot["n"]),
        "attempts_per_day": tot["n"] / world.params.days,
        "approval_all_attempts": tot["approved"] / max(tot["n"], 1),
        "first_attempts": float(tot["first"]),
        "oracle_approval_first": tot["oracle"] / first_n,
        "rules_approval_first": tot["rules"] / first_n,
        "headroom_pp": 100 * gap,
        "headroom_no_outages_pp": 100 * gap_no,
        "outage_share_of_headroom": (gap - gap_no) / gap if gap > 0 else float("nan"),
        "segment_dependent_share": tot["seg_diff"] / max(tot["seg_n"], 1),
        "processing_share_worldpay_elavon": tot["wp_el_proc"] / max(tot["wp_el"], 1),
        "processing_share_others": tot["other_proc"] / max(tot["other"], 1),
        "seconds": time.perf_counter() - t0,
    }
