"""The one place that knows the merchant's vocabulary: processors, currencies, card brands,
message types, decline codes and the warehouse's table names and columns.

Everything else (world, features, models, routing, service) imports these; nothing else lists
processors or codes by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

MERCHANT = "VOLARIS"
DATABASE = "PAYMENT_ML"

# ---------------------------------------------------------------- processors
# Order is fixed: model heads, score vectors and encoders index processors in this order.
PROCESSORS: tuple[str, ...] = ("WORLDPAY", "MIT", "ELAVON", "AMEX", "ADYEN")
PROCESSOR_IDS: dict[str, int] = {"WORLDPAY": 76, "MIT": 85, "ELAVON": 91, "AMEX": 97, "ADYEN": 112}
PROCESSOR_INDEX: dict[str, int] = {p: i for i, p in enumerate(PROCESSORS)}
# MIT is a Mexican acquirer: it settles pesos only.
PROCESSOR_CURRENCIES: dict[str, frozenset[str]] = {
    "WORLDPAY": frozenset({"MXN", "USD"}),
    "MIT": frozenset({"MXN"}),
    "ELAVON": frozenset({"MXN", "USD"}),
    "AMEX": frozenset({"MXN", "USD"}),
    "ADYEN": frozenset({"MXN", "USD"}),
}
# The hard rule: Amex cards go to AMEX and AMEX takes nothing else.
AMEX_BRAND = "AMEX"
AMEX_PROCESSOR = "AMEX"

CURRENCIES: tuple[str, ...] = ("MXN", "USD")
CARD_BRANDS: tuple[str, ...] = ("VISA", "MASTERCARD", "AMEX")
CARD_TYPES: tuple[str, ...] = ("CREDIT", "DEBIT", "PREPAID")
CARD_LEVELS: tuple[str, ...] = ("CLASSIC", "GOLD", "PLATINUM", "BUSINESS")
MESSAGE_TYPES: tuple[str, ...] = ("CIT", "MIT")  # MCI_MSI_TYPE: customer- vs merchant-initiated
STATUSES: tuple[str, ...] = ("APPROVED", "DECLINED", "PROCESSING")
HOME_COUNTRY = "MX"

FLIGHT_TYPES: tuple[str, ...] = ("DOMESTIC", "INTERNATIONAL")
FARE_CLASSES: tuple[str, ...] = ("BASIC", "CLASSIC", "PLUS", "PREMIUM")
CHANNELS: tuple[str, ...] = ("WEB", "APP")
DEVICES: tuple[str, ...] = ("DESKTOP", "MOBILE", "TABLET")
BROWSERS: tuple[str, ...] = ("CHROME", "SAFARI", "EDGE", "FIREFOX", "APP_WEBVIEW")
FRAUD_COHORTS: tuple[str, ...] = ("LOW", "MEDIUM", "HIGH")


def eligible_processors(brand: str, currency: str, active: tuple[str, ...] = PROCESSORS) -> list[str]:
    """Processors allowed to take a card of ``brand`` in ``currency`` (hard rules only)."""
    if brand == AMEX_BRAND:
        return [AMEX_PROCESSOR] if AMEX_PROCESSOR in active and currency in PROCESSOR_CURRENCIES[AMEX_PROCESSOR] else []
    return [p for p in active if p != AMEX_PROCESSOR and currency in PROCESSOR_CURRENCIES[p]]


# ---------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class ErrorCode:
    code: str
    category: str  # ISSUER_DECLINE | PROCESSOR_ERROR | FRAUD
    hard_soft: str  # HARD | SOFT
    description: str


ERROR_CODES: dict[str, ErrorCode] = {
    c.code: c
    for c in (
        ErrorCode("05", "ISSUER_DECLINE", "SOFT", "do not honor"),
        ErrorCode("51", "ISSUER_DECLINE", "SOFT", "insufficient funds"),
        ErrorCode("91", "ISSUER_DECLINE", "SOFT", "issuer unavailable"),
        ErrorCode("61", "ISSUER_DECLINE", "SOFT", "exceeds withdrawal limit"),
        ErrorCode("14", "ISSUER_DECLINE", "HARD", "invalid account number"),
        ErrorCode("43", "FRAUD", "HARD", "stolen card"),
        ErrorCode("54", "ISSUER_DECLINE", "HARD", "expired card"),
        ErrorCode("62", "ISSUER_DECLINE", "HARD", "restricted / closed card"),
        ErrorCode("59", "FRAUD", "HARD", "suspected fraud"),
        ErrorCode("TIMEOUT", "PROCESSOR_ERROR", "SOFT", "processor timeout"),
        ErrorCode("PSP_5XX", "PROCESSOR_ERROR", "SOFT", "processor internal error"),
    )
}
TIMEOUT_CODE = "TIMEOUT"
PROCESSOR_ERROR_CATEGORY = "PROCESSOR_ERROR"

# ---------------------------------------------------------------- warehouse objects
ATTEMPTS_VIEW = f"{DATABASE}.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT"
ROUTING_LOG_VIEW = f"{DATABASE}.SOURCES.VW_SMART_ROUTING_ATTEMPTS"
RULES_VIEW = f"{DATABASE}.SOURCES.VW_ROUTING_MERCHANT_RULE"
FLAT_VIEW = f"{DATABASE}.ABTESTING.ALL_VIEWS_FLAT"
SCHEMAS: tuple[str, ...] = ("SOURCES", "ABTESTING")

# Columns of VW_ATHENA_PAYMENT_ATTEMPT, in order, with their Snowflake types. Spelling follows
# the real view (AVG_SEC_BETWEEN_PAYMENT_ATTEMPS included). Never add a column that leaks the
# world's truth (true probability, an outage flag).
ATTEMPT_COLUMNS: dict[str, str] = {
    "ATTEMPT_ID": "VARCHAR",
    "PAYMENT_ID": "VARCHAR",
    "ORDER_ID": "VARCHAR",
    "USER_ID": "VARCHAR",
    "MERCHANT": "VARCHAR",
    "CREATED_AT": "TIMESTAMP_NTZ",  # UTC
    "PROCESSOR": "VARCHAR",
    "PROCESSOR_ID": "NUMBER(6,0)",
    "AMOUNT": "FLOAT",
    "CURRENCY": "VARCHAR",
    "CARD_BIN": "VARCHAR",
    "CARD_BRAND": "VARCHAR",
    "CARD_TYPE": "VARCHAR",
    "CARD_LEVEL": "VARCHAR",
    "BANK": "VARCHAR",
    "CARD_COUNTRY": "VARCHAR",
    "STATUS": "VARCHAR",
    "ERROR_CODE": "VARCHAR",
    "ERROR_CATEGORY": "VARCHAR",
    "HARD_SOFT": "VARCHAR",
    "NUM_ATTEMPTS_ORDER": "NUMBER(3,0)",  # this attempt's position in its order: 1, 2, 3
    "PREVIOUS_ORDER_ERROR_CODE": "VARCHAR",
    "PREVIOUS_PROCESSOR": "VARCHAR",
    "SEC_SINCE_PREVIOUS_ATTEMPT": "FLOAT",
    "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS": "FLOAT",
    "MCI_MSI_TYPE": "VARCHAR",
    "AVS_CHECKED": "BOOLEAN",
    # the message configuration and the payment facts that decide which ones are allowed
    # (smartrouter.messages is their one definition)
    "AVS_DATA": "NUMBER(1,0)",
    "MCC": "VARCHAR",
    "STORED_CREDENTIAL": "NUMBER(1,0)",
    "BILLING_ADDRESS": "NUMBER(1,0)",
    "TRAVEL_PACKAGE": "NUMBER(1,0)",
    "MESSAGE_RANDOMIZED": "NUMBER(1,0)",  # 1: configuration drawn uniformly among the eligible ones
    "MESSAGE_PROPENSITY": "FLOAT",  # probability the sent configuration had: 1/|eligible| or 1.0
    "ORDER_COUNTRY_CODE": "VARCHAR",
    "IS_RETURNING_CUSTOMER": "BOOLEAN",
    "USER_RECENCY_DAYS": "FLOAT",
    "USER_FREQUENCY": "NUMBER(6,0)",
    "USER_MONETARY": "FLOAT",
    "FRAUD_RATE_COHORT": "VARCHAR",
    "BROWSING_MINUTES": "FLOAT",
    "FLIGHT_TYPE": "VARCHAR",
    "DAYS_TO_DEPARTURE": "NUMBER(4,0)",
    "PASSENGERS": "NUMBER(2,0)",
    "FARE_CLASS": "VARCHAR",
    "CHANNEL": "VARCHAR",
    "DEVICE": "VARCHAR",
    "BROWSER": "VARCHAR",
    "PROCESSOR_LATENCY_MS": "FLOAT",
    "DYNAMIC_ROUTING_DETAIL": "VARIANT",
}

ROUTING_LOG_COLUMNS: dict[str, str] = {
    "ATTEMPT_ID": "VARCHAR",
    "ORDER_ID": "VARCHAR",
    "MERCHANT": "VARCHAR",
    "CREATED_AT": "TIMESTAMP_NTZ",
    "ALGORITHM_TYPE": "VARCHAR",  # STATIC_RULES | RANDOMIZED_EXPERIMENT | RETRY_RULES
    "EXPERIMENT_ARM": "VARCHAR",  # CONTROL | EXPERIMENT
    "CANDIDATES": "VARIANT",
    "CHOSEN_PROCESSOR": "VARCHAR",
    "PROPENSITY": "FLOAT",
    "LATENCY_MS": "FLOAT",
    "SKIP_REASONS": "VARIANT",
}

RULE_COLUMNS: dict[str, str] = {
    "RULE_ID": "NUMBER(6,0)",
    "MERCHANT": "VARCHAR",
    "CURRENCY": "VARCHAR",  # '*' = any
    "CARD_BRAND": "VARCHAR",  # '*' = any
    "CARD_TYPE": "VARCHAR",  # '*' = any
    "PROCESSOR": "VARCHAR",
    "PRIORITY": "NUMBER(3,0)",  # 1 = first choice, 2 = first fallback / retry, ...
    "SHADOW_MODE": "BOOLEAN",  # evaluated and logged, never acted on
    "ACTIVE_FROM": "TIMESTAMP_NTZ",  # NULL = always
}
