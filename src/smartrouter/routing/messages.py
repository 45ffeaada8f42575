"""Joint (processor, message configuration) scoring and the message recommendation of a decision.

The models take the message columns (``messages.MESSAGE_COLUMNS``) as features, so one payment
scored under each configuration it may send gives a probability per (processor, configuration)
pair. The router uses them in three places (routing/policy.py calls this module):

1. ``JointScorer.score``: every ELIGIBLE configuration (``messages.eligible_mask``: ineligible ones
   are never scored, like a processor the Amex rule excludes) x every processor, in ONE batched
   model call (``ServingModel.score_rows``: the payment is encoded once, the message slots of the
   encoded row are swapped per configuration). Each processor's score is its best eligible pair's
   probability: the processor ranking (money.rank, whatever the objective) reads those.
2. ``JointScorer.choose``: the configuration sent with the chosen processor: its best eligible
   one; with a small share (``[messages] explore_share``) a uniformly drawn eligible one instead,
   logged with its propensity like processor exploration. The control arm, shadow mode, decisions
   without model scores and ``[messages] recommend = false`` send the merchant's default.
3. ``JointScorer.recommendations``: the top eligible pairs, ranked by the routing objective's
   value of a pair (money.preference_order over the pairs), each with its probability and reason.

Ties go to the merchant's default configuration, so a model that has learned no message effect
recommends exactly what the merchant sends today.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from smartrouter import catalog, features, messages, money
from smartrouter.routing.experiment import TREATMENT, bucket

SOURCES: tuple[str, ...] = ("model", "exploration", "default", "off", "holdout")
# The message A/B inside the model arm ([messages] ab_share): "with" orders get recommendations,
# "without" orders are routed by the same model scoring the payment as sent, with the default message.
WITH, WITHOUT = "with", "without"
MESSAGE_ARMS: tuple[str, ...] = (WITHOUT, WITH)
_PROC_INDEX = catalog.PROCESSOR_INDEX
_FIELDS = {c: {"MCI_MSI_TYPE": c.initiator, "AVS_DATA": int(c.avs), "MCC": c.mcc} for c in messages.CONFIGS}


def config_fields(code: int) -> dict[str, Any]:
    """The MESSAGE_COLUMNS values of configuration ``code`` (a fresh dict)."""
    return dict(_FIELDS[messages.CONFIGS[code]])


def config_json(code: int) -> dict[str, Any]:
    """What a response or log says about a configuration: its key and its message fields."""
    return {"key": messages.CONFIG_KEYS[code], "fields": config_fields(code)}


class JointScores(NamedTuple):
    """One payment's pair probabilities over its eligible configurations."""

    codes: np.ndarray  # (k,) eligible configuration codes, the merchant default first
    probs: np.ndarray  # (k, P) calibrated approval probability of (configuration, processor)
    best: dict[str, int]  # processor -> the code of its best eligible configuration
    scores: dict[str, float]  # processor -> that pair's probability (what the processor ranking reads)
    default_code: int


class MessageChoice(NamedTuple):
    """The configuration a decision sends, and how it was chosen."""

    code: int
    source: str  # model | exploration | default | off
    propensity: float  # probability that this configuration was chosen, given the processor


def with_message(payment: Mapping[str, Any], code: int) -> dict[str, Any]:
    """A copy of ``payment`` carrying configuration ``code``: its message fields and the card type x toggle
    crosses derived from them (features.MESSAGE_CROSSES; stale ones from the payment's own message would
    otherwise stay, since the encoder derives only what a payment lacks)."""
    out = {**payment, **_FIELDS[messages.CONFIGS[code]]}
    out.update(features.message_crosses_row(out))
    return out


class EncodedConfigs:
    """The encoded message slots of every configuration for one encoder, per card type.

    A configuration sets the message columns and, through the card type crosses, columns that depend on
    the card type too; nothing else. So a payment's row under configuration c is its row under any one
    configuration with the message slots replaced by those of (its card type, c). Each card type's table
    (configurations x encoded columns) is built on first use and kept in a small cache; a missing or
    never-seen card type has one like any other. ``separable`` is False when the probe (every catalog card
    type, a missing and an unseen one, each under two payments that differ in everything else) finds
    message slots that depend on more than the card type and the configuration (an encoder that mixes
    message columns with other ones): then every configuration is encoded in full.
    """

    # the catalog's card types, a missing one and one no model has seen
    PROBE_CARD_TYPES: tuple[Any, ...] = (*catalog.CARD_TYPES, None, "NO_SUCH_CARD_TYPE")
    # two payments that differ in every column but the card type and the message
    PROBE_PAYMENTS: tuple[dict[str, Any], ...] = (
        {},
        {"AMOUNT": 1234.0, "CURRENCY": "USD", "CARD_BRAND": "MASTERCARD", "CARD_COUNTRY": "US", "CARD_LEVEL": "GOLD",
         "BANK": "PROBE BANK", "CHANNEL": "APP", "FLIGHT_TYPE": "INTERNATIONAL", "IS_RETURNING_CUSTOMER": 1,
         "STORED_CREDENTIAL": 1, "BILLING_ADDRESS": 1, "TRAVEL_PACKAGE": 1, "NUM_ATTEMPTS_ORDER": 2},
    )
    MAX_CARD_TYPES = 16  # cached tables: the card types a service sees are a handful; more is bad input

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._by_card_type: dict[Any, tuple[np.ndarray, np.ndarray] | None] = {}
        self.separable = all(self.table_for(card_type) is not None for card_type in self.PROBE_CARD_TYPES)

    def _encode(self, payment: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(self.encoder.encode_payment(payment), dtype=np.float32)

    def table_for(self, card_type: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(table (N_CONFIGS, d), slots (d,) bool) of ``card_type``: every configuration's encoded row and the
        columns some configuration changes; None when those depend on more than card type and message."""
        key = None if features.is_missing(card_type) else card_type  # None and NaN are one missing card type
        if key in self._by_card_type:
            return self._by_card_type[key]
        tables = [np.stack([self._encode(with_message({**base, features.CROSSED_WITH: key}, k))
                            for k in range(messages.N_CONFIGS)]) for base in self.PROBE_PAYMENTS]
        slots = np.logical_or.reduce([(t != t[:1]).any(axis=0) for t in tables])
        # outside the slots each table is constant by construction; inside, every payment must agree
        same = all(np.array_equal(t[:, slots], tables[0][:, slots]) for t in tables[1:])
        if len(self._by_card_type) >= self.MAX_CARD_TYPES:
            self._by_card_type.clear()
        entry = self._by_card_type[key] = (tables[0], slots) if same else None
        return entry

    def rows(self, payment: Mapping[str, Any], codes: np.ndarray) -> np.ndarray:
        """(k, d) encoded rows of ``payment`` under each configuration in ``codes``."""
        entry = self.table_for(payment.get(features.CROSSED_WITH)) if self.separable else None
        if entry is None:
            return np.stack([self._encode(with_message(payment, int(k))) for k in codes])
        table, slots = entry
        # the payment's own row under one configuration: every column outside the slots is right for all of them
        x = self._encode(with_message(payment, int(codes[0])))
        return np.where(slots, table[codes], x)


class JointScorer:
    """Scores (processor, configuration) pairs and picks the configuration a decision sends."""

    def __init__(self, config: Any, seed: int) -> None:
        self.recommend: bool = bool(config.messages.recommend)
        self.explore_share: float = float(config.messages.explore_share)
        self.top_k: int = int(config.messages.top_k)
        self.objective = config.objective
        self.ab_share: float = float(config.messages.ab_share)
        self.ab_salt: str = str(config.messages.ab_salt)
        self._rng = random.Random(seed)
        self._encoded: dict[int, tuple[Any, EncodedConfigs]] = {}  # id(encoder) -> (encoder, its table)

    def _encoded_for(self, encoder: Any) -> EncodedConfigs:
        hit = self._encoded.get(id(encoder))
        if hit is None or hit[0] is not encoder:
            if len(self._encoded) > 8:  # a few models over a service's life (champion, canary, reloads)
                self._encoded.clear()
            hit = self._encoded[id(encoder)] = (encoder, EncodedConfigs(encoder))
        return hit[1]

    # ------------------------------------------------------------------ 0. the message A/B arm
    def arm_of(self, key: str, arm: str, shadow: bool) -> str | None:
        """The order's message arm (``WITH`` / ``WITHOUT``), by SHA-256 of its split key with the message
        salt: independent of the model-vs-rules arm, and the same for every attempt of the order. None
        where no recommendation could be sent anyway: the control arm, shadow mode, recommendations off."""
        if not self.recommend or arm != TREATMENT or shadow:
            return None
        return WITH if bucket(key, self.ab_salt) < self.ab_share else WITHOUT

    # ------------------------------------------------------------------ 1. scoring
    def score(self, model: Any, enriched: Mapping[str, Any]) -> JointScores:
        """Pair probabilities of ``enriched`` over its eligible configurations (every processor: the
        router's processor eligibility filters them as it filters plain scores)."""
        mask = messages.eligible_mask(enriched)
        default = messages.CONFIG_INDEX[messages.default_config(enriched)]
        codes = np.flatnonzero(mask)
        codes = np.concatenate(([default], codes[codes != default]))  # the default first: ties go to it
        if hasattr(model, "score_rows") and hasattr(model, "encoder"):
            probs = np.asarray(model.score_rows(self._encoded_for(model.encoder).rows(enriched, codes)), dtype=np.float64)
            names = list(getattr(model, "processors", catalog.PROCESSORS))
            if names != list(catalog.PROCESSORS):
                probs = probs[:, [names.index(p) for p in catalog.PROCESSORS]]
        else:  # a model without the batched form (a test double): one score call per configuration
            probs = np.array([[s.get(p, 0.0) for p in catalog.PROCESSORS]
                              for s in (model.score(with_message(enriched, int(k))) for k in codes)], dtype=np.float64)
        best_row = probs.argmax(axis=0)  # argmax keeps the first maximum: the default on ties
        best: dict[str, int] = {}
        scores: dict[str, float] = {}
        for j, p in enumerate(catalog.PROCESSORS):
            best[p] = int(codes[best_row[j]])
            scores[p] = float(probs[best_row[j], j])
        return JointScores(codes, probs, best, scores, default)

    # ------------------------------------------------------------------ 2. the configuration sent
    def choose(self, payment: Mapping[str, Any], processor: str, joint: JointScores | None, active: bool,
               reasons: list[str], message_arm: str | None = None) -> MessageChoice:
        """The configuration sent with ``processor``. ``active``: the decision may follow the model
        (treatment arm, not shadow); otherwise, without scores, switched off or held out by the
        message A/B (``message_arm`` WITHOUT): the merchant default."""
        if not self.recommend:
            return MessageChoice(messages.CONFIG_INDEX[messages.default_config(payment)], "off", 1.0)
        if message_arm == WITHOUT:
            reasons.append("message A/B: held out of message recommendations (the merchant default is sent)")
            return MessageChoice(messages.CONFIG_INDEX[messages.default_config(payment)], "holdout", 1.0)
        if joint is None or not active or processor not in joint.best:
            return MessageChoice(joint.default_code if joint is not None else
                                 messages.CONFIG_INDEX[messages.default_config(payment)], "default", 1.0)
        best, m = joint.best[processor], len(joint.codes)
        eps = self.explore_share if m > 1 else 0.0
        if eps > 0 and self._rng.random() < eps:
            code = int(joint.codes[self._rng.randrange(m)])
            propensity = eps / m + (1.0 - eps) * (code == best)
            reasons.append(f"exploring the message: {messages.CONFIG_KEYS[code]} drawn among {m} eligible configurations")
            return MessageChoice(code, "exploration", round(propensity, 6))
        if best != joint.default_code:
            j = _PROC_INDEX[processor]
            row = {int(k): i for i, k in enumerate(joint.codes)}
            gain = joint.probs[row[best], j] - joint.probs[0, j]
            reasons.append(f"message {messages.CONFIG_KEYS[best]} for {processor}: +{100 * gain:.1f} pp over the "
                           f"merchant default {messages.CONFIG_KEYS[joint.default_code]}")
        return MessageChoice(best, "model", round(1.0 - eps + eps / m, 6) if eps > 0 else 1.0)

    # ------------------------------------------------------------------ 3. the top pairs
    def recommendations(self, payment: Mapping[str, Any], joint: JointScores | None, processors: Sequence[str],
                        ) -> list[dict[str, Any]]:
        """The top ``[messages] top_k`` eligible (processor, configuration) pairs among ``processors``
        (the eligible ones that are not DOWN), ranked by the routing objective's value of a pair."""
        if joint is None or not processors or not self.recommend:
            return []
        cols = np.array([_PROC_INDEX[p] for p in processors])
        prob = joint.probs[:, cols]  # (k, m): configuration x processor
        k, m = prob.shape
        flat = prob.reshape(1, k * m)
        mask = np.ones_like(flat, dtype=bool)
        net = None
        if self.objective.name == "net_revenue":
            fees = money.payment_fees(payment)
            amount = float(payment["AMOUNT"])
            net = flat * np.tile([amount - fees[p] for p in processors], k)[None, :]
        order = money.preference_order(flat, mask, self.objective, net)[0][: self.top_k]
        out = []
        for i in order:
            c, j = divmod(int(i), m)
            code, proc = int(joint.codes[c]), processors[j]
            p_default = float(prob[0, j])
            why = (f"merchant default message; p={prob[c, j]:.3f}" if c == 0 else
                   f"{100 * (prob[c, j] - p_default):+.1f} pp vs the merchant default {messages.CONFIG_KEYS[joint.default_code]} "
                   f"on {proc}")
            out.append({"processor": proc, "message_config": config_json(code),
                        "probability": round(float(prob[c, j]), 6), "reason": why})
        return out
