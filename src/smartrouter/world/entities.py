"""Static entities of the world, drawn once from the seed: banks, BINs, users, the hidden effects
of the truth model, the outage incidents and the merchant's static rule rows.

Everything here is built before the first day is generated (it is small: ~2,000 BINs, a user
pool, a few dozen incidents), so the oracle knows every effect and every outage up front.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.messages import N_CONFIGS
from smartrouter.world.params import PROCESSING_PROCESSORS, WorldParams

P = len(catalog.PROCESSORS)
PI = catalog.PROCESSOR_INDEX
SECONDS_PER_DAY = 86_400
USD_MXN = 17.5  # fixed FX rate: amounts are compared in pesos
AMOUNT_PIVOT_MXN = 2_600.0  # the amount at which the amount slope is zero
MEXICO_CITY_UTC_OFFSET_H = -6  # no DST since 2022

# (name, country, weight among that country's cards)
BANKS: tuple[tuple[str, str, float], ...] = (
    ("BBVA MEXICO", "MX", 0.24), ("BANORTE", "MX", 0.13), ("SANTANDER MX", "MX", 0.11),
    ("BANAMEX", "MX", 0.11), ("HSBC MX", "MX", 0.06), ("SCOTIABANK MX", "MX", 0.05),
    ("INBURSA", "MX", 0.03), ("AZTECA", "MX", 0.04), ("BANCOPPEL", "MX", 0.04),
    ("BANREGIO", "MX", 0.02), ("AFIRME", "MX", 0.02), ("NU MEXICO", "MX", 0.11), ("HEY BANCO", "MX", 0.02),
    ("BANBAJIO", "MX", 0.02),
    ("CHASE", "US", 0.26), ("BANK OF AMERICA", "US", 0.22), ("CAPITAL ONE", "US", 0.2),
    ("CITI", "US", 0.17), ("WELLS FARGO", "US", 0.1), ("US BANK", "US", 0.05),
    ("BANCOLOMBIA", "CO", 1.0), ("BBVA ESPANA", "ES", 1.0), ("RBC", "CA", 1.0),
    ("BANCO INDUSTRIAL", "GT", 1.0), ("ITAU", "BR", 1.0),
    ("AMERICAN EXPRESS", "*", 1.0),  # issues every Amex card
)
BANK_NAMES: tuple[str, ...] = tuple(b[0] for b in BANKS)
AMEX_BANK = "AMERICAN EXPRESS"
STEP_BANK = "BANORTE"  # the issuer whose behaviour changes abruptly (concept drift)
STEP_AT_FRACTION = 0.65  # ... at this fraction of the span
COUNTRY_SHARES = {"MX": 0.80, "US": 0.12, "CO": 0.025, "ES": 0.02, "CA": 0.015, "GT": 0.01, "BR": 0.01}

N_BINS = 2_000
ZIPF_EXPONENT = 0.9
# Popularity ranks (0-based) of the special BINs; popular enough to be seen on the small profile.
BAD_BIN_RANKS = (8, 30, 60)  # MASTERCARD, MX: ~100 % declined on BAD_BIN_PROCESSOR
BAD_BIN_PROCESSOR = "WORLDPAY"  # where MXN MASTERCARD rules send them, so they get traffic
GREAT_BIN_RANKS = {12: "MIT", 26: "ELAVON", 41: "MIT"}  # VISA MX credit: much better there
# Message configurations (smartrouter.messages): who may send what, and how much the issuer cares.
STORED_SHARE_RETURNING = 0.60  # returning customers with their card on file (MIT allowed)
STORED_SHARE_NEW = 0.05
MESSAGE_SLAB_SHARE = 0.30  # share of (card type, processor) cells where AVS / MCC matter ...
MESSAGE_SLAB_SD = 0.30  # ... by a few tenths of a logit
MESSAGE_SPIKE_SD = 0.03  # the rest: near zero
MESSAGE_RESIDUAL_SD = 0.04  # each whole configuration's own small term
# The "interactions" truth (WorldParams.truth): three-way terms attribute x attribute x processor,
# sparse like the message effects but larger, so they move the best processor of some segments.
# Each pairs attributes of the payment (not only of its card), so no BIN x processor effect holds
# them either: bank x flight type, amount band x currency, local hour band x channel.
# Bands are on the payment's peso amount and its local (Mexico City) hour.
AMOUNT_BAND_EDGES_MXN = (1_500.0, 3_000.0, 6_000.0)  # 4 bands: < 1,500, .. , >= 6,000 pesos
HOUR_BAND_EDGES_LOCAL = (6, 12, 18)  # 4 bands: night 0-6, morning, afternoon, evening 18-24
INTERACTION_SLAB_SHARE = 0.25  # share of cells that matter ...
INTERACTION_SLAB_SD = 0.45  # ... by a few tenths of a logit
INTERACTION_SPIKE_SD = 0.03  # the rest: near zero


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


def _capped_assign(rng: np.random.Generator, weights: np.ndarray, labels: list[str], targets: np.ndarray) -> np.ndarray:
    """Assign a label to each item (in popularity order) at random, never letting a label's share of
    the popularity mass overshoot its target by more than 1 pp, so top-heavy Zipf traffic still
    lands near the intended mix."""
    mass = [0.0] * len(labels)
    tgt = [float(x) for x in targets]
    out = np.empty(len(weights), dtype=np.int64)
    u = rng.random(len(weights)).tolist()
    for i, w in enumerate(weights.tolist()):
        probs = [t if m + w <= t + 0.01 else 0.0 for t, m in zip(tgt, mass)]
        if sum(probs) <= 0:
            probs = [max(t - m, 1e-9) for t, m in zip(tgt, mass)]
        total, acc, k = sum(probs), 0.0, len(labels) - 1
        for j, pj in enumerate(probs):
            acc += pj / total
            if u[i] < acc:
                k = j
                break
        out[i] = k
        mass[k] += w
    return out


@dataclass
class Bins:
    """The BIN table: one row per six-digit BIN, in popularity order."""

    bin: np.ndarray  # str
    brand: np.ndarray  # index into catalog.CARD_BRANDS
    card_type: np.ndarray  # index into catalog.CARD_TYPES
    level: np.ndarray  # index into catalog.CARD_LEVELS
    bank: np.ndarray  # index into BANK_NAMES
    country: np.ndarray  # str
    popularity: np.ndarray  # sums to 1
    bad: np.ndarray  # indices of the bad BINs
    great: dict[int, str]  # BIN index -> processor it is great on


def build_bins(rng: np.random.Generator) -> Bins:
    """Draw the ~2,000 BINs with Zipf-like popularity and their card attributes."""
    pop = _zipf_weights(N_BINS, ZIPF_EXPONENT)
    brands = list(catalog.CARD_BRANDS)
    brand = _capped_assign(rng, pop, brands, np.array([0.55, 0.35, 0.10]))
    countries = list(COUNTRY_SHARES)
    country_idx = _capped_assign(rng, pop, countries, np.array(list(COUNTRY_SHARES.values())))
    country = np.array([countries[i] for i in country_idx], dtype=object)
    card_type = rng.choice(3, size=N_BINS, p=[0.55, 0.37, 0.08])
    level = rng.choice(4, size=N_BINS, p=[0.5, 0.25, 0.18, 0.07])
    bank = np.empty(N_BINS, dtype=np.int64)
    by_country: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in countries:
        idx = np.array([i for i, b in enumerate(BANKS) if b[1] == c])
        w = np.array([BANKS[i][2] for i in idx])
        by_country[c] = (idx, w / w.sum())
    u_bank = rng.random(N_BINS)
    for c, (idx, w) in by_country.items():
        rows = np.flatnonzero(country == c)
        bank[rows] = idx[np.searchsorted(np.cumsum(w), u_bank[rows], side="right").clip(0, len(idx) - 1)]

    amex = catalog.CARD_BRANDS.index(catalog.AMEX_BRAND)
    is_amex = brand == amex
    bank[is_amex] = BANK_NAMES.index(AMEX_BANK)
    card_type[is_amex] = catalog.CARD_TYPES.index("CREDIT")
    country[is_amex] = np.where(rng.random(int(is_amex.sum())) < 0.75, "MX", "US")

    mc, visa = catalog.CARD_BRANDS.index("MASTERCARD"), catalog.CARD_BRANDS.index("VISA")
    mx_banks = by_country["MX"][0]
    for r in BAD_BIN_RANKS:
        brand[r], country[r], card_type[r] = mc, "MX", rng.choice(2)
        bank[r] = mx_banks[rng.choice(len(mx_banks))]
    for r in GREAT_BIN_RANKS:
        brand[r], country[r], card_type[r] = visa, "MX", catalog.CARD_TYPES.index("CREDIT")
        bank[r] = mx_banks[rng.choice(len(mx_banks))]

    prefixes = {visa: ("4",), mc: ("51", "52", "53", "54", "55", "22", "23", "27"), amex: ("34", "37")}
    seen: set[str] = set()
    numbers = np.empty(N_BINS, dtype=object)
    draws = rng.integers(0, 1_000_000, size=4 * N_BINS).tolist()
    pre_draws = rng.integers(0, 1 << 30, size=4 * N_BINS).tolist()
    pos = 0
    for i in range(N_BINS):
        options = prefixes[int(brand[i])]
        while True:
            pre = options[pre_draws[pos] % len(options)]
            number = pre + f"{draws[pos]:06d}"[len(pre):]
            pos += 1
            if number not in seen:
                seen.add(number)
                numbers[i] = number
                break
    return Bins(
        bin=numbers, brand=brand, card_type=card_type, level=level, bank=bank, country=country, popularity=pop,
        bad=np.array(BAD_BIN_RANKS), great=dict(GREAT_BIN_RANKS),
    )


@dataclass
class Users:
    """The customer pool: each user holds one card (a BIN) and RFM-like history."""

    bin_idx: np.ndarray
    cum_activity: np.ndarray  # cumulative share, for drawing users by activity
    returning: np.ndarray  # bool
    recency_days: np.ndarray  # NaN for new customers
    frequency: np.ndarray
    monetary: np.ndarray
    fraud: np.ndarray  # index into catalog.FRAUD_COHORTS
    stored: np.ndarray  # 0/1: the card is on file with a standing agreement (MIT allowed)

    def __len__(self) -> int:
        return len(self.bin_idx)


def build_users(rng: np.random.Generator, bins: Bins, n_users: int, amex_allowed: bool) -> Users:
    """Draw the user pool; a user's card follows BIN popularity."""
    pop = bins.popularity.copy()
    if not amex_allowed:  # no AMEX processor: nobody pays with an Amex card
        pop[bins.brand == catalog.CARD_BRANDS.index(catalog.AMEX_BRAND)] = 0.0
    pop = pop / pop.sum()
    bin_idx = np.searchsorted(np.cumsum(pop), rng.random(n_users), side="right").clip(0, N_BINS - 1)
    activity = rng.lognormal(0.0, 0.6, n_users)
    returning = rng.random(n_users) < 0.55
    frequency = np.where(returning, 1 + rng.geometric(0.3, n_users), 0)
    recency = np.where(returning, rng.exponential(90.0, n_users).round(1), np.nan)
    monetary = np.where(returning, (frequency * rng.lognormal(np.log(4_000), 0.6, n_users)).round(2), 0.0)
    # New customers carry more of the fraud risk.
    p_high = np.where(returning, 0.03, 0.08)
    p_med = np.where(returning, 0.10, 0.18)
    u = rng.random(n_users)
    fraud = np.where(u < p_high, 2, np.where(u < p_high + p_med, 1, 0))
    # Drawn last so every earlier draw (and so every older phenomenon) is unchanged: returning
    # customers mostly keep their card on file; a new customer rarely saves it on the first purchase.
    stored = (rng.random(n_users) < np.where(returning, STORED_SHARE_RETURNING, STORED_SHARE_NEW)).astype(np.int64)
    cum = np.cumsum(activity)
    return Users(
        bin_idx=bin_idx, cum_activity=cum / cum[-1], returning=returning, recency_days=recency,
        frequency=frequency.astype(np.int64), monetary=monetary, fraud=fraud, stored=stored,
    )


@dataclass
class Outages:
    """Processor incidents over the whole span (seconds since the world's start)."""

    processor: np.ndarray  # processor index
    start: np.ndarray
    end: np.ndarray
    ramp_up: np.ndarray  # seconds to reach the peak
    recovery: np.ndarray  # seconds of gradual recovery before ``end``
    kind: np.ndarray  # 0 = timeouts before the issuer is asked, 1 = raised decline rate
    peak: np.ndarray  # timeout share at the peak (kind 0) or logit drop (kind 1)

    def __len__(self) -> int:
        return len(self.start)

    def shape(self, i: int, t_sec: np.ndarray) -> np.ndarray:
        """Severity of incident ``i`` in [0, 1] at each time: ramp up, plateau, gradual recovery."""
        s, e = self.start[i], self.end[i]
        up = np.clip((t_sec - s) / self.ramp_up[i], 0.0, 1.0)
        down = np.clip((e - t_sec) / self.recovery[i], 0.0, 1.0)
        out = np.minimum(up, down)
        out[(t_sec < s) | (t_sec >= e)] = 0.0
        return out

    def frame(self, start: dt.datetime) -> pd.DataFrame:
        """Incidents as a readable frame (evaluation and tests only: this is truth)."""
        return pd.DataFrame(
            {
                "PROCESSOR": [catalog.PROCESSORS[i] for i in self.processor],
                "START": [start + dt.timedelta(seconds=float(s)) for s in self.start],
                "END": [start + dt.timedelta(seconds=float(e)) for e in self.end],
                "KIND": np.where(self.kind == 0, "TIMEOUT", "DECLINE"),
                "PEAK": self.peak,
            }
        )


# Incidents per day (build_outages: ~7 a month) and the processors' shares of them.
OUTAGES_PER_DAY = 7 / 30
OUTAGE_WEIGHTS = np.array([0.32, 0.26, 0.26, 0.08, 0.08])


def _incident(rng: np.random.Generator, day: int, active_from_sec: np.ndarray, major: bool) -> tuple[int, float, float, int, float]:
    """One incident on ``day``: (processor, start second, duration, kind, peak)."""
    local_h = rng.uniform(8.0, 21.0)
    start = day * SECONDS_PER_DAY + (local_h - MEXICO_CITY_UTC_OFFSET_H) * 3600.0
    dur = float(np.exp(rng.uniform(np.log(15 * 60), np.log(180 * 60))))
    ok = np.isfinite(active_from_sec) & (active_from_sec <= start)
    w = np.where(ok, OUTAGE_WEIGHTS, 0.0)
    proc = int(rng.choice(P, p=w / w.sum()))
    kind = int(rng.random() < 0.25)
    if major:  # always one major timeout incident on the busiest processor (visible on small worlds)
        proc = PI["WORLDPAY"] if ok[PI["WORLDPAY"]] else int(np.argmax(w))
        kind, dur = 0, max(dur, 90 * 60.0)
    peak = rng.uniform(0.4, 0.95) if kind == 0 else rng.uniform(1.5, 3.0)
    return proc, start, dur, kind, peak


def _outages(procs: list, starts: list, durs: list, kinds: list, peaks: list) -> Outages:
    start_a, dur_a = np.array(starts, dtype=float), np.array(durs, dtype=float)
    return Outages(
        processor=np.array(procs, dtype=np.int64), start=start_a, end=start_a + dur_a,
        ramp_up=np.maximum(0.1 * dur_a, 120.0), recovery=0.35 * dur_a,
        kind=np.array(kinds, dtype=np.int64), peak=np.array(peaks, dtype=float),
    )


def build_outages(rng: np.random.Generator, params: WorldParams, active_from_sec: np.ndarray) -> Outages:
    """Several incidents a month in total, 15-180 min each, mostly timeouts, during local daytime."""
    n = max(2, int(round(7 * params.days / 30)))  # = OUTAGES_PER_DAY * days, kept in this exact arithmetic
    span = params.days * SECONDS_PER_DAY
    procs, starts, durs, kinds, peaks = [], [], [], [], []
    for i in range(n):
        day = rng.integers(params.days)
        proc, start, dur, kind, peak = _incident(rng, day, active_from_sec, major=i == 0)
        procs.append(proc), starts.append(min(start, span - dur)), durs.append(dur), kinds.append(kind), peaks.append(peak)
    return _outages(procs, starts, durs, kinds, peaks)


def continuation_outages(params: WorldParams, active_from_sec: np.ndarray, day: int) -> Outages:
    """The incidents of day ``day`` (0-based, at or beyond the world's span) for the live loop: the
    world's rate and shapes, drawn from a stream of their own (``SeedSequence([seed, 3, day])``),
    so the world's own incidents and days are untouched and any day's incidents are known alone."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 3, day]))
    drawn = [_incident(rng, day, active_from_sec, major=False) for _ in range(int(rng.poisson(OUTAGES_PER_DAY)))]
    return _outages(*(list(col) for col in zip(*drawn))) if drawn else _outages([], [], [], [], [])


def concat_outages(*parts: Outages) -> Outages:
    """Several incident lists as one."""
    return Outages(*(np.concatenate([getattr(o, f) for o in parts])
                     for f in ("processor", "start", "end", "ramp_up", "recovery", "kind", "peak")))


def _matrix(rows: dict[str, list[float]], order: tuple[str, ...]) -> np.ndarray:
    """Effect table indexed [level, processor] with a trailing zero row (index -1 = unknown level)."""
    m = np.array([rows[k] for k in order], dtype=float)
    return np.vstack([m, np.zeros((1, P))])


@dataclass
class Effects:
    """Hidden truth: every term of the approval logit. Tables carry a trailing zero row so that
    index -1 (a value the world never issued, e.g. an unknown BIN) contributes nothing."""

    intercept: float
    proc_base: np.ndarray  # [P]
    brand_proc: np.ndarray  # [3+1, P]
    cur_proc: np.ndarray  # [2+1, P]
    type_proc: np.ndarray  # [3+1, P]
    foreign_proc: np.ndarray  # [2, P] domestic, foreign
    amount_slope: np.ndarray  # [P] per unit of log(amount / pivot)
    amount_global: float
    bank_proc: np.ndarray  # [n_banks+1, P]
    bin_proc: np.ndarray  # [n_bins+1, P]
    mit_msg: np.ndarray  # [3+1 card types, P]: MIT message vs CIT
    avs_msg: np.ndarray  # [3+1 card types, P]: AVS data sent, on top of the global ``avs`` term
    mcc_msg: np.ndarray  # [3+1 card types, P]: MCC 4722 (travel package) vs 4511 (airline)
    config_msg: np.ndarray  # [N_CONFIGS, 3+1 card types, P]: small residual of each whole configuration
    fraud: np.ndarray  # [3+1]
    returning: float
    international: float
    short_notice: float  # departure within a day
    passenger: float  # per extra passenger
    fare: np.ndarray  # [4+1]
    channel: np.ndarray  # [2+1]
    avs: float
    drift_proc: np.ndarray  # [P] logit change over the whole span (linear)
    drift_global: float  # amplitude of a slow global wave
    step_bank: int
    step_sec: float
    step_proc: np.ndarray  # [P] logit change for STEP_BANK after step_sec
    attempt: np.ndarray  # [4] by attempt number 0..3 (0 unused)
    prev_soft: float
    prev_hard: float
    prev_processor_error: float
    delay_per_decade: float  # per factor 10 of delay beyond a minute, soft issuer declines
    same_processor_soft: float
    retry_proc: np.ndarray  # [P]
    background_error: np.ndarray  # [P] timeout/5xx share outside incidents
    processing: np.ndarray  # [P] share stuck in PROCESSING
    active_from_sec: np.ndarray  # [P] inf = never active
    # The "interactions" truth's three-way terms (all zeros in the default truth), oracle.interaction_logit:
    bank_flight_proc: np.ndarray  # [n_banks+1, 2 flight types (domestic, international)+1, P]
    amount_cur_proc: np.ndarray  # [4+1 amount bands, 2+1 currencies, P]
    hour_channel_proc: np.ndarray  # [4+1 local hour bands, 2+1 channels, P]


def _spike_and_slab(rng: np.random.Generator, shape: tuple[int, ...], share: float = MESSAGE_SLAB_SHARE,
                    slab_sd: float = MESSAGE_SLAB_SD, spike_sd: float = MESSAGE_SPIKE_SD) -> np.ndarray:
    """Cells that matter with probability ``share`` (sd ``slab_sd``), the rest near zero (sd ``spike_sd``);
    the defaults are the message effects'."""
    big = rng.random(shape) < share
    return np.where(big, rng.normal(0.0, slab_sd, shape), rng.normal(0.0, spike_sd, shape))


def _interaction_table(rng: np.random.Generator | None, n_a: int, n_b: int) -> np.ndarray:
    """A three-way table [n_a+1, n_b+1, P] (trailing zero rows: unknown levels add nothing), sparse
    spike-and-slab cells; all zeros when ``rng`` is None (the default truth)."""
    out = np.zeros((n_a + 1, n_b + 1, P))
    if rng is not None:
        out[:n_a, :n_b] = _spike_and_slab(rng, (n_a, n_b, P), INTERACTION_SLAB_SHARE, INTERACTION_SLAB_SD,
                                          INTERACTION_SPIKE_SD)
    return out


def build_effects(rng: np.random.Generator, params: WorldParams, bins: Bins) -> Effects:
    """The truth model's terms: designed segment effects plus seeded bank/BIN/drift heterogeneity."""
    procs = catalog.PROCESSORS
    # Columns follow catalog.PROCESSORS: WORLDPAY, MIT, ELAVON, AMEX, ADYEN.
    brand = _matrix({"VISA": [0.20, 0.00, -0.10, 0.0, 0.05], "MASTERCARD": [-0.10, 0.25, 0.15, 0.0, 0.0],
                     "AMEX": [0.0, 0.0, 0.0, 0.0, 0.0]}, catalog.CARD_BRANDS)
    cur = _matrix({"MXN": [0.0, 0.15, -0.10, 0.0, -0.05], "USD": [0.15, 0.0, 0.05, 0.0, 0.20]}, catalog.CURRENCIES)
    ctype = _matrix({"CREDIT": [0.10, -0.15, 0.0, 0.0, 0.0], "DEBIT": [-0.25, 0.25, 0.10, 0.0, 0.10],
                     "PREPAID": [-0.40, 0.05, 0.30, 0.0, 0.35]}, catalog.CARD_TYPES)
    foreign = np.array([[0.0, 0.10, -0.05, 0.0, -0.10], [0.25, -0.60, -0.15, 0.0, 0.35]])
    mit_msg = _matrix({"CREDIT": [0.20, -0.35, 0.05, -0.20, 0.10], "DEBIT": [-0.40, 0.35, 0.10, 0.0, -0.15],
                       "PREPAID": [-0.55, 0.25, -0.25, 0.0, 0.0]}, catalog.CARD_TYPES)

    n_banks = len(BANK_NAMES)
    bank = np.vstack([rng.normal(0.0, 0.25, (n_banks, P)), np.zeros((1, P))])
    bank += np.vstack([rng.normal(0.0, 0.25, (n_banks, 1)), np.zeros((1, 1))])  # issuer-wide level
    bin_eff = rng.normal(0.0, 0.15, (N_BINS, P)) + rng.normal(0.0, 0.25, (N_BINS, 1))
    for i in bins.bad:  # ~100 % declined on the bad processor, fine elsewhere
        bin_eff[i, :] = np.abs(bin_eff[i, :])
        bin_eff[i, PI[BAD_BIN_PROCESSOR]] = -7.5
    for i, proc in bins.great.items():
        bin_eff[i, :] = 0.0
        bin_eff[i, PI[proc]] = 1.6
    bin_eff = np.vstack([bin_eff, np.zeros((1, P))])

    drift = rng.normal(0.0, 0.20, P)
    drift[PI["WORLDPAY"]], drift[PI["MIT"]] = -0.25, 0.15
    step_proc = np.array([-1.30, 0.30, 0.0, 0.0, 0.20])

    active = np.full(P, np.inf)
    for p in params.processors:
        active[PI[p]] = 0.0
    if params.late_processor is not None and params.late_join_day is not None:
        active[PI[params.late_processor]] = params.late_join_day * SECONDS_PER_DAY
    processing = np.array([params.processing_share if p in PROCESSING_PROCESSORS else 0.0 for p in procs])
    retry_proc = rng.normal(0.0, 0.25, P)
    # Message effects beyond the designed CIT/MIT table, drawn after every older draw (so those stay
    # as they were): per card type x processor, most cells near zero and a few that matter.
    avs_msg, mcc_msg = (np.vstack([_spike_and_slab(rng, (len(catalog.CARD_TYPES), P)), np.zeros((1, P))])
                        for _ in range(2))
    config_msg = np.concatenate([rng.normal(0.0, MESSAGE_RESIDUAL_SD, (N_CONFIGS, len(catalog.CARD_TYPES), P)),
                                 np.zeros((N_CONFIGS, 1, P))], axis=1)
    # The interactions truth, drawn after every other draw (so the default truth's terms, and every
    # table of a default world, stay bit-identical) and only when asked for.
    r_int = rng if params.truth == "interactions" else None
    bank_flight = _interaction_table(r_int, n_banks, 2)
    amount_cur = _interaction_table(r_int, len(AMOUNT_BAND_EDGES_MXN) + 1, len(catalog.CURRENCIES))
    hour_channel = _interaction_table(r_int, len(HOUR_BAND_EDGES_LOCAL) + 1, len(catalog.CHANNELS))
    return Effects(
        intercept=2.06,
        proc_base=np.array([0.05, 0.0, 0.0, 0.10, 0.05]),
        brand_proc=brand, cur_proc=cur, type_proc=ctype, foreign_proc=foreign,
        amount_slope=np.array([-0.05, -0.25, 0.10, -0.10, 0.05]), amount_global=-0.15,
        bank_proc=bank, bin_proc=bin_eff, mit_msg=mit_msg, avs_msg=avs_msg, mcc_msg=mcc_msg, config_msg=config_msg,
        fraud=np.array([0.0, -0.55, -1.7, 0.0]), returning=0.25, international=-0.10, short_notice=-0.30,
        passenger=-0.05, fare=np.array([-0.10, 0.0, 0.05, 0.15, 0.0]), channel=np.array([0.0, 0.10, 0.0]),
        avs=0.12, drift_proc=drift, drift_global=0.08,
        step_bank=BANK_NAMES.index(STEP_BANK), step_sec=STEP_AT_FRACTION * params.days * SECONDS_PER_DAY,
        step_proc=step_proc,
        attempt=np.array([0.0, 0.0, -0.25, -0.45]), prev_soft=-0.9, prev_hard=-4.5, prev_processor_error=0.0,
        delay_per_decade=0.30, same_processor_soft=-0.50, retry_proc=retry_proc,
        background_error=np.array([0.004, 0.006, 0.005, 0.003, 0.004]), processing=processing,
        active_from_sec=active,
        bank_flight_proc=bank_flight, amount_cur_proc=amount_cur, hour_channel_proc=hour_channel,
    )


# The merchant's static rules: reasonable but suboptimal (e.g. Mastercard pesos on WORLDPAY).
_RULES: tuple[tuple[str, str, str, str, int, bool, bool], ...] = (
    # currency, brand, card type, processor, priority, shadow, from the late processor's join
    ("MXN", "VISA", "CREDIT", "WORLDPAY", 1, False, False),
    ("MXN", "VISA", "CREDIT", "MIT", 2, False, False),
    ("MXN", "VISA", "DEBIT", "MIT", 1, False, False),
    ("MXN", "VISA", "DEBIT", "ELAVON", 2, False, False),
    ("MXN", "MASTERCARD", "*", "WORLDPAY", 1, False, False),
    ("MXN", "MASTERCARD", "*", "ELAVON", 2, False, False),
    ("MXN", "*", "*", "WORLDPAY", 1, False, False),
    ("MXN", "*", "*", "ELAVON", 2, False, False),
    ("USD", "*", "*", "ELAVON", 1, False, False),
    ("USD", "*", "*", "WORLDPAY", 2, False, False),
    ("*", "AMEX", "*", "AMEX", 1, False, False),
    ("*", "*", "*", "WORLDPAY", 1, False, False),
    ("*", "*", "*", "ELAVON", 2, False, False),
    # the newcomer: evaluated in shadow everywhere, live on one small segment from its join
    ("*", "*", "*", "LATE", 1, True, True),
    ("USD", "*", "PREPAID", "LATE", 1, False, True),
    ("USD", "*", "PREPAID", "ELAVON", 2, False, True),
)


def build_rules(params: WorldParams, start: dt.datetime) -> pd.DataFrame:
    """Rows of VW_ROUTING_MERCHANT_RULE (columns = catalog.RULE_COLUMNS) for this world's processors."""
    join = None
    if params.late_processor is not None and params.late_join_day is not None:
        join = start + dt.timedelta(days=params.late_join_day)
    rows = []
    for cur, brand, ctype, proc, prio, shadow, late in _RULES:
        if proc == "LATE":
            if params.late_processor is None:
                continue
            proc = params.late_processor
        if proc not in params.processors:
            continue
        rows.append(
            {"RULE_ID": len(rows) + 1, "MERCHANT": params.merchant, "CURRENCY": cur, "CARD_BRAND": brand,
             "CARD_TYPE": ctype, "PROCESSOR": proc, "PRIORITY": prio, "SHADOW_MODE": shadow,
             "ACTIVE_FROM": join if late else None}
        )
    frame = pd.DataFrame(rows, columns=list(catalog.RULE_COLUMNS))
    frame["ACTIVE_FROM"] = pd.to_datetime(frame["ACTIVE_FROM"])
    frame["RULE_ID"] = frame["RULE_ID"].astype(np.int64)
    frame["PRIORITY"] = frame["PRIORITY"].astype(np.int64)
    frame["SHADOW_MODE"] = frame["SHADOW_MODE"].astype(bool)
    return frame
