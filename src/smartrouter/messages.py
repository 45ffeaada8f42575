"""Authorization message configurations: THE one definition of what a message may carry, which
configurations a payment may use (eligibility), and what the merchant sends today (its default).

A configuration is three toggles of the authorization request:

| toggle | column | values | allowed when (eligibility column) | merchant default today |
|---|---|---|---|---|
| initiator | ``MCI_MSI_TYPE`` | ``CIT`` customer-initiated, ``MIT`` merchant-initiated | MIT only with ``STORED_CREDENTIAL`` = 1 (a card on file with the customer's standing agreement); CIT always | MIT when the card is stored and the attempt is an app payment or a retry; else CIT |
| AVS data | ``AVS_DATA`` | 0 not sent, 1 billing address sent for verification | 1 only with ``BILLING_ADDRESS`` = 1 (the customer gave one); 0 always | sent for foreign cards that have a billing address |
| MCC | ``MCC`` | ``4511`` airlines / air carriers, ``4722`` travel agencies and tour operators | 4722 only with ``TRAVEL_PACKAGE`` = 1 (the booking bundles flight with hotel or car); 4511 always | always 4511 |

``CONFIGS`` lists the 8 combinations in a fixed order (a configuration's index is its code);
``config_key`` gives the stable label (``"MIT/AVS/4511"``, ``"CIT/NOAVS/4722"``) used in logs, JSON
and reports. Eligibility is a hard rule: nothing may send or recommend a configuration for which
``eligible_matrix`` is False. A missing or empty eligibility fact counts as 0 (the conservative
reading: nothing beyond the always-allowed values); an unreadable one raises ConfigError.

Attempt columns that carry this (catalog.ATTEMPT_COLUMNS): ``MESSAGE_COLUMNS``,
``ELIGIBILITY_COLUMNS``, ``MESSAGE_RANDOMIZED`` (1: the configuration was drawn uniformly among the
payment's eligible ones, in the experiment arm) and ``MESSAGE_PROPENSITY`` (the probability with
which the sent configuration was chosen: 1/|eligible| when randomized, 1.0 for the default).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple, overload

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.errors import ConfigError

MESSAGE_COLUMNS: tuple[str, ...] = ("MCI_MSI_TYPE", "AVS_DATA", "MCC")
ELIGIBILITY_COLUMNS: tuple[str, ...] = ("STORED_CREDENTIAL", "BILLING_ADDRESS", "TRAVEL_PACKAGE")
RANDOMIZED_COLUMN = "MESSAGE_RANDOMIZED"
PROPENSITY_COLUMN = "MESSAGE_PROPENSITY"
# The attempts view's older AVS column: the world writes it as a copy of AVS_DATA (same fact),
# and with_config keeps the two equal wherever a frame carries it.
LEGACY_AVS_COLUMN = "AVS_CHECKED"

INITIATORS: tuple[str, ...] = catalog.MESSAGE_TYPES  # ("CIT", "MIT")
AVS_VALUES: tuple[int, ...] = (0, 1)
AIRLINE_MCC = "4511"  # airlines, air carriers
PACKAGE_MCC = "4722"  # travel agencies and tour operators: only for bundled trips
MCC_VALUES: tuple[str, ...] = (AIRLINE_MCC, PACKAGE_MCC)


class MessageConfig(NamedTuple):
    """One authorization message configuration."""

    initiator: str  # CIT | MIT
    avs: int  # 0 | 1
    mcc: str  # 4511 | 4722


CONFIGS: tuple[MessageConfig, ...] = tuple(
    MessageConfig(i, a, m) for i in INITIATORS for a in AVS_VALUES for m in MCC_VALUES
)
N_CONFIGS = len(CONFIGS)
CONFIG_INDEX: dict[MessageConfig, int] = {c: k for k, c in enumerate(CONFIGS)}
# Per-config toggle values as arrays (index = config code): vectorized lookups for the world/oracle.
CONFIG_MIT = np.array([c.initiator == "MIT" for c in CONFIGS], dtype=np.int64)
CONFIG_AVS = np.array([c.avs for c in CONFIGS], dtype=np.int64)
CONFIG_MCC = np.array([MCC_VALUES.index(c.mcc) for c in CONFIGS], dtype=np.int64)


class Toggle(NamedTuple):
    """One on/off switch of the message: the audit's unit of comparison."""

    name: str
    column: str
    on: Any
    off: Any
    eligibility: str  # the payment fact that allows ``on``
    config_on: np.ndarray  # bool per config code: the toggle is on in that config


TOGGLES: tuple[Toggle, ...] = (
    Toggle("MIT_VS_CIT", "MCI_MSI_TYPE", "MIT", "CIT", "STORED_CREDENTIAL", CONFIG_MIT == 1),
    Toggle("AVS_ON_VS_OFF", "AVS_DATA", 1, 0, "BILLING_ADDRESS", CONFIG_AVS == 1),
    Toggle("MCC_4722_VS_4511", "MCC", PACKAGE_MCC, AIRLINE_MCC, "TRAVEL_PACKAGE", CONFIG_MCC == 1),
)
TOGGLES_BY_NAME: dict[str, Toggle] = {t.name: t for t in TOGGLES}


def config_key(c: MessageConfig) -> str:
    """Stable label of a configuration, e.g. ``MIT/AVS/4511`` or ``CIT/NOAVS/4722``."""
    return f"{c.initiator}/{'AVS' if c.avs else 'NOAVS'}/{c.mcc}"


CONFIG_KEYS: tuple[str, ...] = tuple(config_key(c) for c in CONFIGS)
_KEY_INDEX: dict[str, int] = {k: i for i, k in enumerate(CONFIG_KEYS)}


def parse_config_key(key: str) -> MessageConfig:
    """Inverse of config_key; an unknown key raises ConfigError listing the valid ones."""
    k = str(key).strip().upper()
    if k not in _KEY_INDEX:
        raise ConfigError(f"unknown message configuration {key!r}; use one of {', '.join(CONFIG_KEYS)}")
    return CONFIGS[_KEY_INDEX[k]]


# ---------------------------------------------------------------- reading payment facts
def _flag_values(values: pd.Series, column: str) -> np.ndarray:
    """0/1 per row from bool, 0/1 numbers or TRUE/FALSE text; NULL -> 0; anything else -> ConfigError."""
    if values.dtype == bool:
        return values.to_numpy(np.int64)
    if pd.api.types.is_numeric_dtype(values):
        x = pd.to_numeric(values, errors="coerce").to_numpy(float)
        bad = ~np.isnan(x) & ~np.isin(x, (0.0, 1.0))
        if bad.any():
            raise ConfigError(f"{column} must be 0 or 1; got {sorted(set(x[bad].tolist()))[:3]}; send 0/1 or true/false")
        return np.nan_to_num(x, nan=0.0).astype(np.int64)
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip().str.upper()
    yes, no = text.isin(("1", "1.0", "TRUE", "T", "YES")), text.isin(("0", "0.0", "FALSE", "F", "NO", "", "NONE", "NAN"))
    if not (yes | no).all():
        raise ConfigError(f"{column} must be 0 or 1; got {sorted(set(text[~(yes | no)]))[:3]}; send 0/1 or true/false")
    return yes.to_numpy(np.int64)


def _flag(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)  # an unknown fact allows nothing extra
    return _flag_values(frame[column], column)


def _value(payment: Mapping[str, Any], column: str) -> Any:
    """A payment's value for ``column`` (the warehouse's upper-case name or the API's lower-case one)."""
    if not isinstance(payment, Mapping):
        raise ConfigError(f"a payment must be a mapping of column -> value, got {type(payment).__name__}")
    value = payment.get(column)
    return payment.get(column.lower()) if value is None else value


def _fact(payment: Mapping[str, Any], column: str) -> int:
    """One payment's 0/1 fact, read like _flag_values reads a column (one payment, no pandas: the
    service calls this on the request path)."""
    value = _value(payment, column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Real):
        if value in (0, 1):
            return int(value)
        raise ConfigError(f"{column} must be 0 or 1; got [{value!r}]; send 0/1 or true/false")
    return int(_flag_values(pd.Series([value], dtype=object), column)[0])


# ---------------------------------------------------------------- eligibility
def eligible_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(n, N_CONFIGS) bool: which configurations each payment may send (the hard rules, vectorized)."""
    f = frame.rename(columns=str.upper) if any(isinstance(c, str) and c != c.upper() for c in frame.columns) else frame
    facts = {t.name: _flag(f, t.eligibility) == 1 for t in TOGGLES}
    out = np.ones((len(f), N_CONFIGS), dtype=bool)
    for t in TOGGLES:
        # a toggle's "on" value needs its fact; "off" is always allowed
        out &= ~t.config_on[None, :] | facts[t.name][:, None]
    return out


# eligible_matrix's answer for every combination of the facts: one payment is a lookup into it
_FACT_COMBOS = [tuple(int(b) for b in bits) for bits in np.ndindex(*(2,) * len(ELIGIBILITY_COLUMNS))]
_MASK_BY_FACTS: dict[tuple[int, ...], np.ndarray] = dict(zip(
    _FACT_COMBOS, eligible_matrix(pd.DataFrame(_FACT_COMBOS, columns=list(ELIGIBILITY_COLUMNS)))))


def eligible_mask(payment: Mapping[str, Any]) -> np.ndarray:
    """(N_CONFIGS,) bool for one payment: the same rules as eligible_matrix, without pandas (request path)."""
    return _MASK_BY_FACTS[tuple(_fact(payment, c) for c in ELIGIBILITY_COLUMNS)]


def eligible_configs(payment: Mapping[str, Any]) -> list[MessageConfig]:
    """The configurations one payment may send, in CONFIGS order (same rules as eligible_matrix)."""
    return [c for c, ok in zip(CONFIGS, eligible_mask(payment)) if ok]


def is_eligible(payment: Mapping[str, Any], config: MessageConfig | str) -> bool:
    """Whether ``payment`` may send ``config``."""
    return bool(eligible_mask(payment)[CONFIG_INDEX[as_config(config)]])


def as_config(config: MessageConfig | str) -> MessageConfig:
    """A MessageConfig from a config or its key; ConfigError naming the valid ones otherwise."""
    if isinstance(config, str):
        return parse_config_key(config)
    try:
        c = MessageConfig(*config)
    except TypeError:
        raise ConfigError(f"{config!r} is not a message configuration; use one of {', '.join(CONFIG_KEYS)}") from None
    if c not in CONFIG_INDEX:
        raise ConfigError(f"unknown message configuration {tuple(config)!r}; use one of {', '.join(CONFIG_KEYS)}")
    return c


# ---------------------------------------------------------------- what a row carried
def config_codes(frame: pd.DataFrame) -> np.ndarray:
    """Config code (index into CONFIGS) of each row's MESSAGE_COLUMNS; ConfigError on unknown values.

    A frame without AVS_DATA reads the legacy AVS_CHECKED; one without MCC (or an empty MCC) reads
    the airline MCC (tables written before message configurations existed)."""
    f = frame.rename(columns=str.upper) if any(isinstance(c, str) and c != c.upper() for c in frame.columns) else frame
    n = len(f)
    if "MCI_MSI_TYPE" in f.columns:
        init = pd.Index(INITIATORS).get_indexer(f["MCI_MSI_TYPE"].astype(str).str.strip().str.upper())
        if (init < 0).any():
            bad = sorted(set(f["MCI_MSI_TYPE"].astype(str)[init < 0]))[:3]
            raise ConfigError(f"MCI_MSI_TYPE values {bad} are not message types; use {' or '.join(INITIATORS)}")
    else:
        init = np.zeros(n, dtype=np.int64)
    avs_col = "AVS_DATA" if "AVS_DATA" in f.columns else LEGACY_AVS_COLUMN
    avs = _flag(f, avs_col)
    if "MCC" in f.columns:
        # an empty MCC reads as the airline one, like a table without the column
        mcc = pd.Index(MCC_VALUES).get_indexer(f["MCC"].fillna(AIRLINE_MCC).astype(str).str.strip().str.replace(r"\.0$", "", regex=True))
        if (mcc < 0).any():
            bad = sorted(set(f["MCC"].astype(str)[mcc < 0]))[:3]
            raise ConfigError(f"MCC values {bad} are not merchant category codes this merchant may use; use {' or '.join(MCC_VALUES)}")
    else:
        mcc = np.zeros(n, dtype=np.int64)
    # CONFIGS order: initiator, then AVS, then MCC
    return (init * len(AVS_VALUES) + avs) * len(MCC_VALUES) + mcc


def with_config(frame: pd.DataFrame, config: MessageConfig | str) -> pd.DataFrame:
    """A copy of ``frame`` whose MESSAGE_COLUMNS (and legacy AVS_CHECKED, if present) say ``config``."""
    c = as_config(config)
    out = frame.copy()
    out["MCI_MSI_TYPE"] = c.initiator
    out["AVS_DATA"] = int(c.avs)
    out["MCC"] = c.mcc
    if LEGACY_AVS_COLUMN in out.columns:
        out[LEGACY_AVS_COLUMN] = np.full(len(out), c.avs).astype(out[LEGACY_AVS_COLUMN].dtype)
    # the feature table's card type x toggle crosses follow the message (else a model would score the
    # new configuration with the old one's crosses); imported here: smartrouter.features imports this module
    from smartrouter import features

    if any(cross in out.columns for cross in features.MESSAGE_CROSSES):
        features.add_message_crosses(out)
    return out


def config_columns(codes: np.ndarray) -> dict[str, np.ndarray]:
    """MESSAGE_COLUMNS values for an array of config codes (object/int arrays, one per column)."""
    codes = np.asarray(codes, dtype=np.int64)
    return {
        "MCI_MSI_TYPE": np.array(INITIATORS, dtype=object)[CONFIG_MIT[codes]],
        "AVS_DATA": CONFIG_AVS[codes].copy(),
        "MCC": np.array(MCC_VALUES, dtype=object)[CONFIG_MCC[codes]],
    }


# ---------------------------------------------------------------- the merchant's default
def default_codes_from(stored: np.ndarray, billing: np.ndarray, foreign: np.ndarray, app: np.ndarray,
                       retry: np.ndarray) -> np.ndarray:
    """The merchant's deterministic default from the payment facts as 0/1 arrays (the world calls this
    with its own arrays; default_config reads them from rows). Always eligible by construction."""
    mit = (stored == 1) & ((app == 1) | (retry == 1))
    avs = (billing == 1) & (foreign == 1)
    return (mit.astype(np.int64) * len(AVS_VALUES) + avs.astype(np.int64)) * len(MCC_VALUES) + MCC_VALUES.index(AIRLINE_MCC)


def _default_codes(f: pd.DataFrame) -> np.ndarray:
    n = len(f)
    # an unknown country reads as domestic, as in default_config(mapping)
    country = (f["CARD_COUNTRY"].fillna(catalog.HOME_COUNTRY).astype(str).str.strip().str.upper()
               if "CARD_COUNTRY" in f.columns else pd.Series([catalog.HOME_COUNTRY] * n))
    channel = f["CHANNEL"].astype(str).str.strip().str.upper() if "CHANNEL" in f.columns else pd.Series(["WEB"] * n)
    attempt = pd.to_numeric(f["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1).to_numpy() if "NUM_ATTEMPTS_ORDER" in f.columns else np.ones(n)
    return default_codes_from(_flag(f, "STORED_CREDENTIAL"), _flag(f, "BILLING_ADDRESS"),
                              (country != catalog.HOME_COUNTRY).to_numpy(np.int64), (channel == "APP").to_numpy(np.int64),
                              (attempt > 1).astype(np.int64))


@overload
def default_config(payment: pd.DataFrame) -> np.ndarray: ...
@overload
def default_config(payment: Mapping[str, Any]) -> MessageConfig: ...
def default_config(payment: pd.DataFrame | Mapping[str, Any]) -> np.ndarray | MessageConfig:
    """What the merchant sends today without recommendations: a MessageConfig for one payment, or
    an array of config codes (index into CONFIGS) for a frame."""
    if isinstance(payment, pd.DataFrame):
        f = payment.rename(columns=str.upper) if any(isinstance(c, str) and c != c.upper() for c in payment.columns) else payment
        return _default_codes(f)
    country = str(_value(payment, "CARD_COUNTRY") or catalog.HOME_COUNTRY).strip().upper()
    channel = str(_value(payment, "CHANNEL") or "WEB").strip().upper()
    try:
        attempt = float(_value(payment, "NUM_ATTEMPTS_ORDER") or 1)
    except (TypeError, ValueError):
        raise ConfigError(f"NUM_ATTEMPTS_ORDER={_value(payment, 'NUM_ATTEMPTS_ORDER')!r} is not a number; send 1, 2, 3") from None
    code = default_codes_from(np.array([_fact(payment, "STORED_CREDENTIAL")]), np.array([_fact(payment, "BILLING_ADDRESS")]),
                              np.array([int(country != catalog.HOME_COUNTRY)]), np.array([int(channel == "APP")]),
                              np.array([int(attempt > 1)]))
    return CONFIGS[int(code[0])]


def choose_config(payment: Mapping[str, Any], recommended: str | MessageConfig | None) -> MessageConfig:
    """The configuration to send: ``recommended`` when it is a known key and eligible for this
    payment, else the merchant's default (a client's tolerant reading of a routing answer)."""
    if recommended:
        try:
            c = as_config(recommended)
        except ConfigError:
            return default_config(payment)
        if is_eligible(payment, c):
            return c
    return default_config(payment)
