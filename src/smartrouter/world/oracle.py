"""The world's truth: the approval model the generator samples from, and the Oracle that exposes
it to evaluation (never to models; never written into a table).

P(APPROVED | attempt, processor, message configuration, t)
    = (1 - error_share(processor, t)) * (1 - processing_share(processor)) * sigmoid(logit)
where ``error_share`` is the background timeout/5xx rate plus the outage incidents' timeout share
(the issuer is never asked), and ``logit`` sums the terms of ``entities.Effects``.
The generator and the oracle call the same functions here, so the oracle is exact.

The message configuration (smartrouter.messages: initiator CIT/MIT, AVS data, MCC) enters the
logit through ``message_logit``; every call that takes a message accepts config codes (index into
``messages.CONFIGS``). Oracle signatures (all return TRUE probabilities, evaluation only):

- ``approval_probability(attempts, processor, message_type=None, at=None, include_outages=True,
  resolved_only=False, config=None) -> (n,)``: each row sent to ``processor`` (one name or one per
  row) with ``config`` (a MessageConfig, a key like ``"MIT/AVS/4511"``, or one code/key per row;
  default: the row's own MESSAGE_COLUMNS; ``message_type`` replaces only the initiator).
- ``probability_matrix(attempts, message_type=None, include_outages=True, resolved_only=False,
  config=None) -> (n, len(catalog.PROCESSORS))``: every processor, the same message per row.
- ``joint_probability_matrix(attempts, include_outages=True, resolved_only=False,
  eligible_only=True) -> (n, len(catalog.PROCESSORS), messages.N_CONFIGS)``: every (processor,
  configuration) pair; 0 where the processor is ineligible and, with ``eligible_only``, where the
  configuration is (messages.eligible_matrix), so its argmax is the oracle-best joint choice.

The issuer answers any message it receives: with an explicit ``config`` the first two give the
counterfactual even for a configuration the payment may not send (eligibility is the sender's
rule, enforced by messages.eligible_matrix, never by the truth).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from smartrouter import catalog, messages
from smartrouter.errors import ConfigError
from smartrouter.world.entities import (
    AMOUNT_BAND_EDGES_MXN,
    AMOUNT_PIVOT_MXN,
    BANK_NAMES,
    HOUR_BAND_EDGES_LOCAL,
    MEXICO_CITY_UTC_OFFSET_H,
    P,
    USD_MXN,
    Bins,
    Effects,
    Outages,
)

if TYPE_CHECKING:
    from smartrouter.rules import RulesEngine

# Previous decline classes used by the retry terms.
PREV_NONE, PREV_SOFT, PREV_HARD, PREV_PROCESSOR_ERROR = 0, 1, 2, 3
_AMEX = catalog.CARD_BRANDS.index(catalog.AMEX_BRAND)


@dataclass
class Encoded:
    """An attempt frame reduced to the integer/float codes the truth model reads (-1 = unknown)."""

    bin_idx: np.ndarray
    bank_idx: np.ndarray
    brand: np.ndarray
    currency: np.ndarray
    card_type: np.ndarray
    foreign: np.ndarray  # 0/1
    log_amount: np.ndarray  # log(amount in MXN / pivot)
    fraud: np.ndarray
    returning: np.ndarray  # 0/1
    international: np.ndarray  # 0/1
    days_to_departure: np.ndarray
    passengers: np.ndarray
    fare: np.ndarray
    channel: np.ndarray
    t_sec: np.ndarray  # seconds since the world's start
    attempt: np.ndarray  # 1..3
    prev_class: np.ndarray
    delay_sec: np.ndarray
    prev_proc: np.ndarray  # processor index or -1

    def __len__(self) -> int:
        return len(self.t_sec)


def log_amount(amount: np.ndarray, currency: np.ndarray) -> np.ndarray:
    """log of the amount in pesos over the pivot amount (the amount slope's variable)."""
    usd = catalog.CURRENCIES.index("USD")
    mxn = np.where(currency == usd, amount * USD_MXN, amount)
    return np.log(np.maximum(mxn, 1.0) / AMOUNT_PIVOT_MXN)


def prev_class_of(codes: pd.Series | np.ndarray) -> np.ndarray:
    """Retry class of each previous error code (none / soft issuer / hard / processor error)."""
    names = list(catalog.ERROR_CODES)
    classes = []
    for info in catalog.ERROR_CODES.values():
        if info.category == catalog.PROCESSOR_ERROR_CATEGORY:
            classes.append(PREV_PROCESSOR_ERROR)
        else:
            classes.append(PREV_HARD if info.hard_soft == "HARD" else PREV_SOFT)
    s = pd.Series(codes, dtype=object)
    idx = pd.Index(names).get_indexer(s.astype(str).str.strip().str.upper())
    # a code outside the catalog still was a decline: treat it as soft
    return np.where(s.isna().to_numpy(), PREV_NONE, np.where(idx >= 0, np.array(classes)[idx], PREV_SOFT)).astype(np.int64)


def message_logit(eff: Effects, card_type: np.ndarray, proc: np.ndarray, config: np.ndarray) -> np.ndarray:
    """The message configuration's term of the logit (``config``: codes into messages.CONFIGS):
    the designed CIT/MIT table, AVS data (global plus per card type x processor), the MCC variant,
    and each whole configuration's small residual."""
    return (np.where(messages.CONFIG_MIT[config] == 1, eff.mit_msg[card_type, proc], 0.0)
            + messages.CONFIG_AVS[config] * (eff.avs + eff.avs_msg[card_type, proc])
            + messages.CONFIG_MCC[config] * eff.mcc_msg[card_type, proc]
            + eff.config_msg[config, card_type, proc])


_AMOUNT_BAND_EDGES = np.log(np.array(AMOUNT_BAND_EDGES_MXN) / AMOUNT_PIVOT_MXN)  # on the log_amount scale


def amount_band(log_amount_mxn: np.ndarray) -> np.ndarray:
    """Band (0..3) of each payment's peso amount (entities.AMOUNT_BAND_EDGES_MXN)."""
    return np.searchsorted(_AMOUNT_BAND_EDGES, log_amount_mxn, side="right")


def hour_band(t_sec: np.ndarray) -> np.ndarray:
    """Band (0..3) of each time's local (Mexico City) hour of day (entities.HOUR_BAND_EDGES_LOCAL);
    the world starts at midnight UTC, so the hour is read off the seconds since its start."""
    hour = np.floor(np.mod(t_sec / 3600.0 + MEXICO_CITY_UTC_OFFSET_H, 24.0))
    return np.searchsorted(np.array(HOUR_BAND_EDGES_LOCAL, dtype=float), hour, side="right")


def interaction_logit(eff: Effects, enc: Encoded, proc: np.ndarray) -> np.ndarray:
    """The "interactions" truth's three-way terms (zeros in the default truth): bank x flight type
    (domestic / international), amount band x currency and local hour band x channel, each per processor."""
    return (eff.bank_flight_proc[enc.bank_idx, enc.international, proc]
            + eff.amount_cur_proc[amount_band(enc.log_amount), enc.currency, proc]
            + eff.hour_channel_proc[hour_band(enc.t_sec), enc.channel, proc])


def issuer_logit(eff: Effects, enc: Encoded, proc: np.ndarray, config: np.ndarray, span_sec: float,
                 outages: Outages | None) -> np.ndarray:
    """The issuer's approval logit if each row went to ``proc`` (index per row) with message
    configuration ``config`` (codes into messages.CONFIGS); ``outages`` adds the decline-raising
    incidents (None: without outages)."""
    frac = enc.t_sec / span_sec
    z = (
        eff.intercept
        + eff.proc_base[proc]
        + eff.brand_proc[enc.brand, proc]
        + eff.cur_proc[enc.currency, proc]
        + eff.type_proc[enc.card_type, proc]
        + eff.foreign_proc[enc.foreign, proc]
        + (eff.amount_slope[proc] + eff.amount_global) * enc.log_amount
        + eff.bank_proc[enc.bank_idx, proc]
        + eff.bin_proc[enc.bin_idx, proc]
        + message_logit(eff, enc.card_type, proc, config)
        + eff.fraud[enc.fraud]
        + eff.returning * enc.returning
        + eff.international * enc.international
        + eff.short_notice * (enc.days_to_departure <= 1)
        + eff.passenger * np.maximum(enc.passengers - 1, 0)
        + eff.fare[enc.fare]
        + eff.channel[enc.channel]
        + eff.drift_proc[proc] * frac
        + eff.drift_global * np.sin(2.0 * np.pi * frac)
        + np.where((enc.bank_idx == eff.step_bank) & (enc.t_sec >= eff.step_sec), eff.step_proc[proc], 0.0)
    )
    # Added last: in the default truth these are exact zeros, so every logit keeps its bits.
    z = z + interaction_logit(eff, enc, proc)
    # Retry terms: hard declines almost never turn, soft ones sometimes, better after a longer wait
    # and on another route; processor errors never reached the issuer.
    retry = enc.attempt > 1
    if retry.any():
        decades = np.clip(np.log10(np.maximum(enc.delay_sec, 1.0) / 60.0), 0.0, 2.5)
        soft = (eff.prev_soft + eff.delay_per_decade * decades
                + np.where(enc.prev_proc == proc, eff.same_processor_soft, 0.0))
        prev = np.select(
            [enc.prev_class == PREV_SOFT, enc.prev_class == PREV_HARD, enc.prev_class == PREV_PROCESSOR_ERROR],
            [soft, np.full(len(enc), eff.prev_hard), np.full(len(enc), eff.prev_processor_error)],
            0.0,
        )
        z = z + np.where(retry, eff.attempt[np.clip(enc.attempt, 0, 3)] + eff.retry_proc[proc] + prev, 0.0)
    if outages is not None:
        for i in np.flatnonzero(outages.kind == 1):
            hit = proc == outages.processor[i]
            if hit.any():
                z = z - np.where(hit, outages.peak[i] * outages.shape(i, enc.t_sec), 0.0)
    return z


def error_share(eff: Effects, proc: np.ndarray, t_sec: np.ndarray, outages: Outages | None) -> np.ndarray:
    """Share of attempts ending in a processor error before the issuer is asked."""
    share = eff.background_error[proc].astype(float)
    if outages is not None:
        for i in np.flatnonzero(outages.kind == 0):
            hit = proc == outages.processor[i]
            if hit.any():
                share = np.maximum(share, np.where(hit, outages.peak[i] * outages.shape(i, t_sec), 0.0))
    return share


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class Oracle:
    """True approval probabilities of the world (evaluation only; models never see it)."""

    def __init__(self, effects: Effects, bins: Bins, outages: Outages, start: dt.datetime, days: int,
                 processors: tuple[str, ...]) -> None:
        self._eff, self._bins, self._outages = effects, bins, outages
        self.start = start
        self.span_sec = float(days * 86_400)
        self.processors = processors
        self._bin_index = pd.Index(bins.bin.astype(str))
        self._bank_index = pd.Index(BANK_NAMES)

    @property
    def outages(self) -> pd.DataFrame:
        """The outage incidents (truth; for evaluation reports and tests)."""
        return self._outages.frame(self.start)

    # ------------------------------------------------------------------ encoding
    def _times(self, values: pd.Series | np.ndarray | Sequence) -> np.ndarray:
        ts = pd.to_datetime(pd.Series(values))
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        ns = ts.to_numpy(dtype="datetime64[ns]")
        return (ns - np.datetime64(self.start, "ns")) / np.timedelta64(1, "s")

    def encode(self, attempts: pd.DataFrame, at: pd.Series | np.ndarray | None = None) -> Encoded:
        """Reduce attempt rows (as generated or as read back from the warehouse) to truth codes."""
        f = attempts.rename(columns=str.upper)
        needed = ("CARD_BIN", "BANK", "CARD_BRAND", "CURRENCY", "CARD_TYPE", "CARD_COUNTRY", "AMOUNT", "CREATED_AT")
        missing = [c for c in needed if c not in f.columns]
        if missing:
            raise ConfigError(f"oracle needs attempt column(s) {', '.join(missing)}; pass rows of {catalog.ATTEMPTS_VIEW}")
        n = len(f)

        def text(col: str) -> pd.Series:
            # None/NaN become "NONE"/"NAN", which match no vocabulary entry (-> -1, "unknown")
            return f[col].astype(str).str.strip().str.upper()

        def codes(col: str, values: Sequence[str], default: str | None = None) -> np.ndarray:
            if col not in f.columns:
                return np.full(n, values.index(default) if default is not None else -1, dtype=np.int64)
            return pd.Index(values).get_indexer(text(col))

        def flag(col: str, true: str | None = None) -> np.ndarray:
            if col not in f.columns:
                return np.zeros(n, dtype=np.int64)
            if true is None and f[col].dtype == bool:
                return f[col].to_numpy(np.int64)
            if true is None and pd.api.types.is_numeric_dtype(f[col]):
                # feature tables carry flags as 0.0/1.0 floats; "1.0" must not read as false
                return (pd.to_numeric(f[col], errors="coerce").fillna(0.0).to_numpy(float) > 0.5).astype(np.int64)
            return text(col).isin([true] if true is not None else ["TRUE", "1", "T", "YES"]).to_numpy(np.int64)

        def number(col: str, default: float) -> np.ndarray:
            if col not in f.columns:
                return np.full(n, default)
            return pd.to_numeric(f[col], errors="coerce").fillna(default).to_numpy(float)

        currency = codes("CURRENCY", catalog.CURRENCIES)
        prev_codes = f["PREVIOUS_ORDER_ERROR_CODE"] if "PREVIOUS_ORDER_ERROR_CODE" in f.columns else pd.Series([None] * n)
        prev_proc = codes("PREVIOUS_PROCESSOR", catalog.PROCESSORS)
        return Encoded(
            bin_idx=self._bin_index.get_indexer(f["CARD_BIN"].astype(str).str.strip()),
            bank_idx=self._bank_index.get_indexer(text("BANK")),
            brand=codes("CARD_BRAND", catalog.CARD_BRANDS),
            currency=currency,
            card_type=codes("CARD_TYPE", catalog.CARD_TYPES),
            foreign=(text("CARD_COUNTRY") != catalog.HOME_COUNTRY).to_numpy(np.int64),
            log_amount=log_amount(number("AMOUNT", AMOUNT_PIVOT_MXN), currency),
            fraud=codes("FRAUD_RATE_COHORT", catalog.FRAUD_COHORTS, "LOW"),
            returning=flag("IS_RETURNING_CUSTOMER"),
            international=flag("FLIGHT_TYPE", "INTERNATIONAL"),
            days_to_departure=number("DAYS_TO_DEPARTURE", 30.0),
            passengers=number("PASSENGERS", 1.0),
            fare=codes("FARE_CLASS", catalog.FARE_CLASSES),
            channel=codes("CHANNEL", catalog.CHANNELS),
            t_sec=self._times(f["CREATED_AT"] if at is None else at),
            attempt=np.clip(number("NUM_ATTEMPTS_ORDER", 1.0), 1, 3).astype(np.int64),
            prev_class=prev_class_of(prev_codes.to_numpy()),
            delay_sec=number("SEC_SINCE_PREVIOUS_ATTEMPT", 0.0),
            prev_proc=prev_proc,
        )

    def _proc_codes(self, processor: str | Sequence[str] | np.ndarray, n: int) -> np.ndarray:
        if isinstance(processor, str):
            names = np.full(n, processor, dtype=object)
        else:
            names = np.asarray(processor, dtype=object)
            if names.shape != (n,):
                raise ConfigError(f"oracle got {names.shape[0] if names.ndim else 1} processors for {n} attempts; pass one name or one per row")
        idx = pd.Index(catalog.PROCESSORS).get_indexer(pd.Series(names).astype(str).str.upper())
        if (idx < 0).any():
            bad = sorted(set(pd.Series(names)[idx < 0].astype(str)))
            raise ConfigError(f"unknown processor(s) {', '.join(bad)}; choose from {', '.join(catalog.PROCESSORS)}")
        return idx

    def _config_codes(self, attempts: pd.DataFrame, n: int, message_type: str | Sequence[str] | None = None,
                      config: "messages.MessageConfig | str | Sequence | np.ndarray | None" = None) -> np.ndarray:
        """Config code per row: ``config`` if given (one for all rows or one per row), else the rows'
        MESSAGE_COLUMNS; ``message_type`` then replaces the initiator (CIT/MIT) only."""
        if config is None:
            codes = messages.config_codes(attempts)
        elif isinstance(config, (str, messages.MessageConfig)):
            codes = np.full(n, messages.CONFIG_INDEX[messages.as_config(config)], dtype=np.int64)
        else:
            values = np.asarray(config, dtype=object)
            if values.shape != (n,):
                raise ConfigError(f"oracle got {values.shape[0] if values.ndim else 1} message configurations for {n} "
                                  "attempts; pass one configuration or one per row")
            if all(isinstance(v, (int, np.integer)) for v in values):
                codes = values.astype(np.int64)
                if ((codes < 0) | (codes >= messages.N_CONFIGS)).any():
                    raise ConfigError(f"message configuration codes must be in 0..{messages.N_CONFIGS - 1} (index into messages.CONFIGS)")
            else:
                codes = np.array([messages.CONFIG_INDEX[messages.as_config(v)] for v in values], dtype=np.int64)
        if message_type is None:
            return codes
        if isinstance(message_type, str):
            values = pd.Series([message_type.upper()] * n)
        else:
            values = pd.Series(np.asarray(message_type, dtype=object)).astype(str).str.upper()
        idx = pd.Index(catalog.MESSAGE_TYPES).get_indexer(values)
        if (idx < 0).any():
            raise ConfigError(f"unknown message type(s) {sorted(set(values[idx < 0]))}; use CIT or MIT")
        # CONFIGS order is initiator-major: replace the initiator, keep AVS and MCC
        per_initiator = messages.N_CONFIGS // len(catalog.MESSAGE_TYPES)
        return idx * per_initiator + codes % per_initiator

    # ------------------------------------------------------------------ truth
    def eligible(self, enc: Encoded, proc: np.ndarray) -> np.ndarray:
        """Whether each row may go to ``proc`` (hard rules, currency, processor active at t)."""
        ok = np.zeros(len(enc), dtype=bool)
        for b in range(len(catalog.CARD_BRANDS)):
            for c in range(len(catalog.CURRENCIES)):
                allowed = [catalog.PROCESSOR_INDEX[p] for p in catalog.eligible_processors(catalog.CARD_BRANDS[b], catalog.CURRENCIES[c], self.processors)]
                rows = (enc.brand == b) & (enc.currency == c)
                ok |= rows & np.isin(proc, allowed)
        return ok & (enc.t_sec >= self._eff.active_from_sec[proc])

    def probabilities(self, enc: Encoded, proc: np.ndarray, config: np.ndarray, include_outages: bool = True,
                      resolved_only: bool = False) -> np.ndarray:
        """P(APPROVED) for encoded rows (0 where ineligible); the generator samples from the same terms.

        ``resolved_only``: P(APPROVED | the attempt did not stay PROCESSING) — the quantity that labels
        (which exclude PROCESSING rows) and the off-policy estimates built on them measure.
        """
        outages = self._outages if include_outages else None
        p_issuer = sigmoid(issuer_logit(self._eff, enc, proc, config, self.span_sec, outages))
        stuck = 0.0 if resolved_only else self._eff.processing[proc]
        p = (1.0 - error_share(self._eff, proc, enc.t_sec, outages)) * (1.0 - stuck) * p_issuer
        return np.where(self.eligible(enc, proc), p, 0.0)

    def approval_probability(
        self,
        attempts: pd.DataFrame,
        processor: str | Sequence[str] | np.ndarray,
        message_type: str | Sequence[str] | None = None,
        at: pd.Series | np.ndarray | None = None,
        include_outages: bool = True,
        resolved_only: bool = False,
        config: "messages.MessageConfig | str | Sequence | np.ndarray | None" = None,
    ) -> np.ndarray:
        """TRUE P(status APPROVED) if each row were sent to ``processor`` with message ``config``
        (default: the row's MESSAGE_COLUMNS; ``message_type`` replaces the initiator) at ``at``
        (default: its CREATED_AT); 0.0 where the processor is ineligible."""
        n = len(attempts)
        if n == 0:
            return np.zeros(0)
        enc = self.encode(attempts, at)
        return self.probabilities(enc, self._proc_codes(processor, n), self._config_codes(attempts, n, message_type, config),
                                  include_outages, resolved_only)

    def probability_matrix(self, attempts: pd.DataFrame, message_type: str | Sequence[str] | None = None,
                           include_outages: bool = True, resolved_only: bool = False,
                           config: "messages.MessageConfig | str | Sequence | np.ndarray | None" = None) -> np.ndarray:
        """(n, len(catalog.PROCESSORS)) true approval probabilities with each row's message (or
        ``config`` / ``message_type`` as in approval_probability), 0 where the processor is ineligible."""
        n = len(attempts)
        out = np.zeros((n, P))
        if n == 0:
            return out
        enc = self.encode(attempts)
        codes = self._config_codes(attempts, n, message_type, config)
        for j in range(P):
            out[:, j] = self.probabilities(enc, np.full(n, j), codes, include_outages, resolved_only)
        return out

    def joint_probability_matrix(self, attempts: pd.DataFrame, include_outages: bool = True, resolved_only: bool = False,
                                 eligible_only: bool = True) -> np.ndarray:
        """(n, len(catalog.PROCESSORS), messages.N_CONFIGS) true approval of every (processor, configuration)
        pair; 0 where the processor is ineligible and, with ``eligible_only``, where the configuration is."""
        n = len(attempts)
        out = np.zeros((n, P, messages.N_CONFIGS))
        if n == 0:
            return out
        enc = self.encode(attempts)
        for k in range(messages.N_CONFIGS):
            codes = np.full(n, k, dtype=np.int64)
            for j in range(P):
                out[:, j, k] = self.probabilities(enc, np.full(n, j), codes, include_outages, resolved_only)
        if eligible_only:
            out *= messages.eligible_matrix(attempts.rename(columns=str.upper))[:, None, :]
        return out

    def best_processor(self, attempts: pd.DataFrame, include_outages: bool = True) -> np.ndarray:
        """The truly best eligible processor of each row (object array; None where none is eligible)."""
        m = self.probability_matrix(attempts, include_outages=include_outages)
        return _argmax_names(m)

    def headroom(self, attempts: pd.DataFrame, engine: "RulesEngine", include_outages: bool = True) -> dict[str, float]:
        """Mean true approval of the oracle's best choice vs the static rules' first choice on these rows."""
        m = self.probability_matrix(attempts, include_outages=include_outages)
        rules = engine.choose_frame(attempts)
        idx = pd.Index(catalog.PROCESSORS).get_indexer(pd.Series(rules).astype(str))
        rules_p = np.where(idx >= 0, m[np.arange(len(m)), np.maximum(idx, 0)], 0.0)
        best = m.max(axis=1)
        return {"n": float(len(m)), "oracle": float(best.mean()), "rules": float(rules_p.mean()),
                "gap": float(best.mean() - rules_p.mean())}

    def segment_dependence(self, attempts: pd.DataFrame) -> float:
        """Share of non-Amex rows whose best processor is not their currency's overall best one."""
        f = attempts.rename(columns=str.upper)
        keep = (f["CARD_BRAND"].astype(str).str.upper() != catalog.AMEX_BRAND).to_numpy()
        m = self.probability_matrix(f[keep], include_outages=False)
        best = m.argmax(axis=1)
        cur = f.loc[keep, "CURRENCY"].astype(str).to_numpy()
        differs = 0
        for c in np.unique(cur):
            rows = cur == c
            sub = m[rows]
            elig = sub > 0
            mean = np.where(elig.sum(0) > 0, sub.sum(0) / np.maximum(elig.sum(0), 1), -1.0)
            differs += int((best[rows] != int(mean.argmax())).sum())
        return differs / max(int(keep.sum()), 1)


def _argmax_names(m: np.ndarray) -> np.ndarray:
    names = np.array(catalog.PROCESSORS, dtype=object)[m.argmax(axis=1)]
    names[m.max(axis=1) <= 0] = None
    return names
