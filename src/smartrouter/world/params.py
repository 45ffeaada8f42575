"""Parameters of the synthetic world: one frozen dataclass, two profiles, one validation.

Every number a user may want to change lives here; the phenomena's internal magnitudes live in
``entities.py`` (they are the world's hidden truth, not knobs).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from smartrouter import catalog
from smartrouter.errors import ConfigError

# The late processor's join week is expressed on the reference 12-week span of WORLD.md and scaled
# to the actual span, so a 14-day test world still shows the newcomer in its second half.
REFERENCE_WEEKS = 12
REFERENCE_DAYS = REFERENCE_WEEKS * 7
# Processors whose gateway sometimes leaves an attempt in an ambiguous PROCESSING state.
PROCESSING_PROCESSORS: tuple[str, ...] = ("WORLDPAY", "ELAVON")
# The world's truth model: "default" is WORLD.md's; "interactions" adds hidden three-way terms
# (attribute x attribute x processor, entities.build_effects) that no single attribute x processor
# effect captures, for checking that the model families find interactions.
TRUTHS: tuple[str, ...] = ("default", "interactions")


def _yesterday_utc() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)


@dataclass(frozen=True)
class WorldParams:
    """Everything that determines a world: same params (with a resolved ``end``) -> identical tables."""

    days: int = 84
    per_day: int = 10_500
    seed: int = 42
    end: dt.date | None = None  # last day included; None -> yesterday (UTC)
    merchant: str = catalog.MERCHANT
    processors: tuple[str, ...] = catalog.PROCESSORS
    late_processor: str | None = "ADYEN"
    late_processor_week: int = 9  # on the 12-week reference span; day 56 of 84
    experiment_share: float = 0.10
    processing_share: float = 0.01
    truth: str = "default"  # one of TRUTHS

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the bad parameter and how to fix it."""
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days <= 0:
            raise ConfigError(f"world days={self.days!r} must be a positive whole number of days; use e.g. --days 84")
        if isinstance(self.per_day, bool) or not isinstance(self.per_day, int) or self.per_day <= 0:
            raise ConfigError(
                f"world per_day={self.per_day!r} must be a positive number of attempts per day; use e.g. --per-day 10500"
            )
        if self.per_day > 5_000_000:
            raise ConfigError(f"world per_day={self.per_day} is too large to generate in memory; use at most 5,000,000")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"world seed={self.seed!r} must be a non-negative integer")
        if self.end is not None and not isinstance(self.end, dt.date):
            raise ConfigError(f"world end={self.end!r} must be a date (YYYY-MM-DD) or empty for yesterday")
        if not isinstance(self.merchant, str) or not self.merchant.strip():
            raise ConfigError("world merchant must be a non-empty name; use e.g. VOLARIS")
        procs = tuple(self.processors)
        if not procs:
            raise ConfigError("world processors is empty; list at least one of " + ", ".join(catalog.PROCESSORS))
        unknown = [p for p in procs if p not in catalog.PROCESSORS]
        if unknown:
            raise ConfigError(
                f"unknown processor(s) {', '.join(map(str, unknown))}; choose from {', '.join(catalog.PROCESSORS)}"
            )
        if len(set(procs)) != len(procs):
            raise ConfigError(f"world processors {procs} lists a processor twice; list each once")
        for currency in catalog.CURRENCIES:
            if not catalog.eligible_processors("VISA", currency, tuple(p for p in procs if p != self.late_processor)):
                raise ConfigError(
                    f"no processor in {procs} (before the late joiner) can take {currency} card payments; "
                    "add WORLDPAY or ELAVON"
                )
        if self.late_processor is not None:
            if self.late_processor not in procs:
                raise ConfigError(
                    f"late_processor={self.late_processor!r} is not among processors {procs}; add it or set it to none"
                )
            if self.late_processor == catalog.AMEX_PROCESSOR:
                raise ConfigError(
                    "late_processor=AMEX would leave Amex cards with no processor before it joins; "
                    "choose another late processor (e.g. ADYEN) or none"
                )
            week = self.late_processor_week
            if isinstance(week, bool) or not isinstance(week, int) or not 1 <= week <= REFERENCE_WEEKS:
                raise ConfigError(
                    f"late_processor_week={week!r} is beyond the {REFERENCE_WEEKS}-week reference span; "
                    f"use a week in 1..{REFERENCE_WEEKS} (it is scaled to the actual span)"
                )
        if self.truth not in TRUTHS:
            raise ConfigError(f"world truth={self.truth!r} is unknown; choose one of {', '.join(TRUTHS)} (e.g. --truth interactions)")
        for name in ("experiment_share", "processing_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"world {name}={value!r} must be a share between 0 and 1; use e.g. 0.1")

    # ------------------------------------------------------------------ resolved dates
    @property
    def end_date(self) -> dt.date:
        """Last day included (``end`` or yesterday in UTC)."""
        return self.end if self.end is not None else _yesterday_utc()

    @property
    def start(self) -> dt.date:
        """First day included."""
        return self.end_date - dt.timedelta(days=self.days - 1)

    @property
    def late_join_day(self) -> int | None:
        """Day index at whose start the late processor becomes active (None: no late processor)."""
        if self.late_processor is None:
            return None
        return int(round((self.late_processor_week - 1) * 7 * self.days / REFERENCE_DAYS))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with ``end`` resolved, so the stored world can be regenerated exactly."""
        out = asdict(self)
        out["end"] = self.end_date.isoformat()
        out["processors"] = list(self.processors)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorldParams":
        """Inverse of ``to_dict``; unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"unknown world parameter(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        kwargs = dict(data)
        if kwargs.get("end") not in (None, ""):
            try:
                kwargs["end"] = dt.date.fromisoformat(str(kwargs["end"]))
            except ValueError:
                raise ConfigError(f"world end={kwargs['end']!r} is not a date; use YYYY-MM-DD") from None
        else:
            kwargs["end"] = None
        if "processors" in kwargs:
            kwargs["processors"] = tuple(kwargs["processors"])
        params = cls(**kwargs)
        params.validate()
        return params

    # ------------------------------------------------------------------ profiles
    @classmethod
    def default(cls, **overrides: Any) -> "WorldParams":
        """The default world of WORLD.md: 12 weeks x 10,500 attempts a day."""
        params = cls(**overrides)
        params.validate()
        return params

    @classmethod
    def small(cls, **overrides: Any) -> "WorldParams":
        """The test profile: 14 days x 2,000 attempts a day."""
        values: dict[str, Any] = {"days": 14, "per_day": 2_000}
        values.update(overrides)
        params = cls(**values)
        params.validate()
        return params


PROFILES: dict[str, Callable[..., WorldParams]] = {"default": WorldParams.default, "small": WorldParams.small}
