"""Scenarios for the live loop: what happens to the world while the service routes it.

A scenario is a TOML file (shipped ones live in ``scenarios/``)::

    name = "default"
    description = "A 3-hour timeout outage of WORLDPAY on day 3"

    [[outage]]                 # a processor fails: timeouts or raised declines
    processor = "WORLDPAY"     # a catalog processor, or "busiest" (resolved by the engine)
    day = 3                    # 1 = the first day after the world's last day
    start = "19:00"            # UTC, "HH:MM" or minutes after midnight
    duration_minutes = 180
    kind = "timeouts"          # or "declines"; default "timeouts"
    severity = 0.9             # share of attempts failing at the peak, in (0, 1]

    [[issuer_step]]            # an issuer changes its behaviour abruptly (concept drift)
    day = 4
    start = "06:00"
    logit_shift = -0.8         # added to the approval logit from then on
    bank = "BBVA MEXICO"       # and/or bins = ["411111", ...]
    processors = ["WORLDPAY"]  # optional; empty or absent = on every processor

    [[processor_change]]       # a processor taken out of rotation or (re-)added
    day = 5
    start = "06:00"
    processor = "ELAVON"
    action = "disable"         # or "enable"

    [[traffic]]                # a traffic multiplier over whole days
    day = 6
    days = 2                   # default 1
    multiplier = 2.0

``load_scenario`` checks everything strictly; every problem is one ``ScenarioError`` line naming
the file, the key (``outage[2].duration_minutes`` is the second ``[[outage]]`` table), what is
wrong and the fix, so the CLI prints it and exits 2.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from smartrouter import catalog
from smartrouter.config import REPO_ROOT
from smartrouter.errors import SmartrouterError
from smartrouter.world.entities import BANK_NAMES

SCENARIO_DIR: Path = REPO_ROOT / "scenarios"
DEFAULT_SCENARIO = "default.toml"
# The one processor name that is not a catalog processor: the engine resolves it to the processor
# with the most attempts in the history (WORLDPAY in the default world).
BUSIEST = "busiest"
MINUTES_PER_DAY = 24 * 60
# Bounds that catch typos (minutes typed as seconds, a year as a day) without limiting real use.
MAX_DAY = 366
MAX_DURATION_MINUTES = 7 * MINUTES_PER_DAY
MAX_TRAFFIC_MULTIPLIER = 10.0
MAX_LOGIT_SHIFT = 5.0  # a shift of 5 moves a 50 % approval to 0.7 % or 99.3 %: beyond any real issuer change

OutageKind = Literal["timeouts", "declines"]
ChangeAction = Literal["disable", "enable"]
OUTAGE_KINDS: tuple[str, ...] = ("timeouts", "declines")
CHANGE_ACTIONS: tuple[str, ...] = ("disable", "enable")


class ScenarioError(SmartrouterError):
    """A scenario file is unreadable or invalid; one line: file, key, what is wrong, the fix."""


@dataclass(frozen=True)
class Outage:
    processor: str
    day: int
    start_minute: int
    duration_minutes: int
    kind: OutageKind
    severity: float  # 0 < severity <= 1: share of attempts failing at the peak

    @property
    def start_abs(self) -> int:
        """Minutes since the continuation's start (00:00 UTC of day 1)."""
        return (self.day - 1) * MINUTES_PER_DAY + self.start_minute

    @property
    def end_abs(self) -> int:
        return self.start_abs + self.duration_minutes


@dataclass(frozen=True)
class IssuerStep:
    day: int
    start_minute: int
    logit_shift: float
    bank: str | None
    bins: tuple[str, ...]
    processors: tuple[str, ...]  # empty = all processors


@dataclass(frozen=True)
class ProcessorChange:
    day: int
    start_minute: int
    processor: str
    action: ChangeAction


@dataclass(frozen=True)
class Traffic:
    day: int
    days: int
    multiplier: float  # days [day, day + days) get per_day x multiplier


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    outages: tuple[Outage, ...] = ()
    issuer_steps: tuple[IssuerStep, ...] = ()
    processor_changes: tuple[ProcessorChange, ...] = ()
    traffic: tuple[Traffic, ...] = ()

    def traffic_multiplier(self, day: int) -> float:
        """Multiplier of the day's order count (1.0 outside every [[traffic]] window)."""
        for t in self.traffic:  # windows never overlap (checked on load)
            if t.day <= day < t.day + t.days:
                return t.multiplier
        return 1.0

    def disabled_at(self, day: int, minute: int) -> frozenset[str]:
        """Processors out of rotation at ``minute`` of ``day`` (changes take effect at their start)."""
        now = (day - 1) * MINUTES_PER_DAY + minute
        disabled: set[str] = set()
        for c in sorted(self.processor_changes, key=_change_time):
            if _change_time(c) > now:
                break
            if c.action == "disable":
                disabled.add(c.processor)
            else:
                disabled.discard(c.processor)
        return frozenset(disabled)

    @property
    def days_touched(self) -> int:
        """Last continuation day on which anything of the scenario happens (0: nothing)."""
        last = [(o.end_abs - 1) // MINUTES_PER_DAY + 1 for o in self.outages]
        last += [s.day for s in self.issuer_steps] + [c.day for c in self.processor_changes]
        last += [t.day + t.days - 1 for t in self.traffic]
        return max(last, default=0)

    def resolve_busiest(self, processor: str, source: str = "<scenario>") -> "Scenario":
        """The scenario with the literal ``"busiest"`` replaced by ``processor`` (re-checked: the
        replacement may now overlap an outage written with the real name)."""
        if processor not in catalog.PROCESSORS:
            raise ScenarioError(f"{source}: busiest processor {processor!r} is not one of {', '.join(catalog.PROCESSORS)}")

        def fix(p: str) -> str:
            return processor if p == BUSIEST else p

        out = replace(
            self,
            outages=tuple(replace(o, processor=fix(o.processor)) for o in self.outages),
            issuer_steps=tuple(replace(s, processors=tuple(fix(p) for p in s.processors)) for s in self.issuer_steps),
            processor_changes=tuple(replace(c, processor=fix(c.processor)) for c in self.processor_changes),
        )
        _check_outage_overlaps(source, out.outages)
        _check_change_sequence(source, out.processor_changes)
        return out


def _change_time(c: ProcessorChange) -> int:
    return (c.day - 1) * MINUTES_PER_DAY + c.start_minute


# ---------------------------------------------------------------------------- loading
_TABLES: dict[str, str] = {  # TOML array-of-tables name -> Scenario field
    "outage": "outages", "issuer_step": "issuer_steps", "processor_change": "processor_changes", "traffic": "traffic",
}
_TOP_KEYS = ("name", "description", *_TABLES)
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")
_BIN = re.compile(r"^\d{6}$")


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; any problem raises a one-line ScenarioError."""
    p = Path(path).expanduser()
    src = str(path)
    if not p.is_file():
        shipped = ", ".join(sorted(f.name for f in SCENARIO_DIR.glob("*.toml"))) or "none"
        raise ScenarioError(f"{src}: scenario file not found; give an existing .toml file (shipped in {SCENARIO_DIR}: {shipped})")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ScenarioError(f"{src}: not a UTF-8 text file; save the scenario as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{src}: not valid TOML: {_one_line(str(exc))}; fix the syntax there") from None
    except OSError as exc:
        raise ScenarioError(f"{src}: cannot read the scenario file ({exc.strerror}); check its permissions") from None
    return _parse(src, data)


def default_scenario() -> Scenario:
    """The shipped default scenario (``scenarios/default.toml``)."""
    return load_scenario(SCENARIO_DIR / DEFAULT_SCENARIO)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse(src: str, data: dict[str, Any]) -> Scenario:
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise ScenarioError(
            f"{src}: unknown key or table {unknown[0]!r}; use only {', '.join(_TOP_KEYS[:2])} and the tables "
            + ", ".join(f"[[{t}]]" for t in _TABLES)
        )
    if "name" not in data:
        raise ScenarioError(f'{src}: name is missing; add a line such as name = "{Path(src).stem}" at the top')
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f'{src}: name = {_show(name)} must be a non-empty string; write e.g. name = "{Path(src).stem}"')
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f'{src}: description = {_show(description)} must be a string; write it in quotes')
    parsed: dict[str, tuple] = {}
    for table, field_name in _TABLES.items():
        rows = data.get(table, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ScenarioError(f"{src}: {table} must be an array of tables; write each one as [[{table}]] (two brackets)")
        parser = _PARSERS[table]
        parsed[field_name] = tuple(parser(_Table(src, f"{table}[{i}]", row)) for i, row in enumerate(rows, start=1))
    scenario = Scenario(name=name.strip(), description=description.strip(), **parsed)
    _check_outage_overlaps(src, scenario.outages)
    _check_change_sequence(src, scenario.processor_changes)
    _check_traffic_overlaps(src, scenario.traffic)
    return scenario


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML (strings quoted, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    return _one_line(repr(value)) if not isinstance(value, (int, float)) else str(value)


class _Table:
    """One [[table]] of the file: typed access that raises ScenarioError naming ``key[i].field``."""

    def __init__(self, src: str, where: str, row: dict[str, Any]):
        self.src, self.where, self.row = src, where, row
        self.used: set[str] = set()

    def fail(self, key: str, what: str, fix: str) -> ScenarioError:
        return ScenarioError(f"{self.src}: {self.where}.{key} {what}; {fix}")

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.row:
            if key not in allowed:
                raise ScenarioError(
                    f"{self.src}: {self.where} has unknown key {key!r}; use only {', '.join(allowed)}"
                )

    def get(self, key: str, example: str, default: Any = ...) -> Any:
        if key not in self.row:
            if default is ...:
                raise ScenarioError(f"{self.src}: {self.where}.{key} is missing; add e.g. {key} = {example}")
            return default
        return self.row[key]

    def integer(self, key: str, lo: int, hi: int, example: str, default: Any = ...) -> int:
        v = self.get(key, example, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"= {_show(v)} must be a whole number", f"write e.g. {key} = {example}")
        if not lo <= v <= hi:
            raise self.fail(key, f"= {v} is out of range", f"use a whole number from {lo} to {hi}, e.g. {key} = {example}")
        return v

    def number(self, key: str, example: str) -> float:
        v = self.get(key, example)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(key, f"= {_show(v)} must be a finite number", f"write e.g. {key} = {example}")
        return float(v)

    def choice(self, key: str, options: tuple[str, ...], default: Any = ...) -> str:
        v = self.get(key, f'"{options[0]}"', default)
        if v not in options:
            raise self.fail(key, f"= {_show(v)} is not allowed", "use one of " + ", ".join(f'"{o}"' for o in options))
        return v

    def processor(self, key: str, value: Any = ...) -> str:
        v = self.get(key, '"WORLDPAY"') if value is ... else value
        if not isinstance(v, str) or (v not in catalog.PROCESSORS and v != BUSIEST):
            raise self.fail(
                key, f"= {_show(v)} is not a known processor",
                "use one of " + ", ".join(f'"{p}"' for p in catalog.PROCESSORS) + f' or "{BUSIEST}"',
            )
        return v

    def day(self) -> int:
        return self.integer("day", 1, MAX_DAY, "3")

    def start_minute(self) -> int:
        v = self.get("start", '"14:30"')
        fix = 'write a UTC time as "HH:MM" (e.g. start = "14:30") or minutes after midnight (e.g. start = 870)'
        if isinstance(v, bool):
            raise self.fail("start", f"= {_show(v)} is not a time", fix)
        if isinstance(v, int):
            if not 0 <= v < MINUTES_PER_DAY:
                raise self.fail("start", f"= {v} minutes is outside the day (0 to {MINUTES_PER_DAY - 1})",
                                "to start on a later day, raise day instead")
            return v
        if isinstance(v, dt.time):  # a bare TOML local time: start = 14:30:00
            if v.second or v.microsecond:
                raise self.fail("start", f"= {v} has seconds", "give whole minutes, e.g. start = \"14:30\"")
            return v.hour * 60 + v.minute
        if isinstance(v, str):
            m = _HHMM.match(v.strip())
            if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
                return int(m.group(1)) * 60 + int(m.group(2))
            raise self.fail("start", f"= {_show(v)} is not a time of day", fix)
        raise self.fail("start", f"= {_show(v)} is not a time", fix)


def _parse_outage(t: _Table) -> Outage:
    t.check_keys(("processor", "day", "start", "duration_minutes", "kind", "severity"))
    processor = t.processor("processor")
    day = t.day()
    start = t.start_minute()
    v = t.get("duration_minutes", "180")
    if not isinstance(v, bool) and isinstance(v, int) and v <= 0:
        raise t.fail("duration_minutes", f"= {v} must be positive", "give the outage's length in minutes, e.g. duration_minutes = 180")
    duration = t.integer("duration_minutes", 1, MAX_DURATION_MINUTES, "180")
    kind = t.choice("kind", OUTAGE_KINDS, default="timeouts")
    severity = t.number("severity", "0.9")
    if not 0.0 < severity <= 1.0:
        raise t.fail("severity", f"= {severity:g} is outside (0, 1]",
                     "give the share of attempts failing at the peak, e.g. severity = 0.9 (1 = all fail)")
    return Outage(processor=processor, day=day, start_minute=start, duration_minutes=duration, kind=kind, severity=severity)


def _parse_issuer_step(t: _Table) -> IssuerStep:
    t.check_keys(("day", "start", "logit_shift", "bank", "bins", "processors"))
    day = t.day()
    start = t.start_minute()
    shift = t.number("logit_shift", "-0.8")
    if shift == 0.0 or abs(shift) > MAX_LOGIT_SHIFT:
        raise t.fail("logit_shift", f"= {shift:g} must be non-zero and at most {MAX_LOGIT_SHIFT:g} in size",
                     "use e.g. logit_shift = -0.8 (issuer approves less) or 0.5 (more)")
    bank = t.get("bank", '"BBVA MEXICO"', default=None)
    if bank is not None and bank not in BANK_NAMES:
        raise t.fail("bank", f"= {_show(bank)} is not an issuing bank of the world",
                     "use one of " + ", ".join(f'"{b}"' for b in BANK_NAMES))
    bins = t.get("bins", '["411111"]', default=[])
    if not isinstance(bins, list) or not all(isinstance(b, str) and _BIN.match(b) for b in bins):
        raise t.fail("bins", f"= {_show(bins)} must be a list of six-digit BINs in quotes", 'write e.g. bins = ["411111", "542418"]')
    if len(set(bins)) != len(bins):
        raise t.fail("bins", "lists a BIN twice", "list each BIN once")
    if bank is None and not bins:
        raise ScenarioError(f"{t.src}: {t.where} names no issuer; add bank = \"BBVA MEXICO\" and/or bins = [\"411111\"]")
    procs = t.get("processors", '["WORLDPAY"]', default=[])
    if not isinstance(procs, list):
        raise t.fail("processors", f"= {_show(procs)} must be a list", 'write e.g. processors = ["WORLDPAY"] (absent = every processor)')
    resolved = tuple(t.processor(f"processors[{i}]", p) for i, p in enumerate(procs, start=1))
    if len(set(resolved)) != len(resolved):
        raise t.fail("processors", "lists a processor twice", "list each processor once")
    return IssuerStep(day=day, start_minute=start, logit_shift=shift, bank=bank, bins=tuple(bins), processors=resolved)


def _parse_processor_change(t: _Table) -> ProcessorChange:
    t.check_keys(("day", "start", "processor", "action"))
    day = t.day()
    start = t.start_minute()
    processor = t.processor("processor")
    action = t.choice("action", CHANGE_ACTIONS)
    if processor == catalog.AMEX_PROCESSOR and action == "disable":
        raise t.fail("processor", f'= "{processor}" cannot be disabled: it is the only processor for Amex cards',
                     "model its trouble as an [[outage]] instead")
    return ProcessorChange(day=day, start_minute=start, processor=processor, action=action)


def _parse_traffic(t: _Table) -> Traffic:
    t.check_keys(("day", "days", "multiplier"))
    day = t.day()
    days = t.integer("days", 1, MAX_DAY, "2", default=1)
    mult = t.number("multiplier", "2.0")
    if not 0.0 < mult <= MAX_TRAFFIC_MULTIPLIER:
        raise t.fail("multiplier", f"= {mult:g} is outside (0, {MAX_TRAFFIC_MULTIPLIER:g}]",
                     "use e.g. multiplier = 2.0 (twice the orders) or 0.5 (half)")
    return Traffic(day=day, days=days, multiplier=mult)


_PARSERS = {
    "outage": _parse_outage, "issuer_step": _parse_issuer_step,
    "processor_change": _parse_processor_change, "traffic": _parse_traffic,
}


def _when(minute_abs: int) -> str:
    day, minute = divmod(minute_abs, MINUTES_PER_DAY)
    return f"day {day + 1} {minute // 60:02d}:{minute % 60:02d}"


def _check_outage_overlaps(src: str, outages: tuple[Outage, ...]) -> None:
    # Two incidents of one processor at once have no defined severity: the engine would have to
    # pick one; the user should write one longer or stronger outage instead.
    for j, b in enumerate(outages):
        for i, a in enumerate(outages[:j]):
            if a.processor == b.processor and a.start_abs < b.end_abs and b.start_abs < a.end_abs:
                raise ScenarioError(
                    f"{src}: outage[{j + 1}] ({b.processor}, {_when(b.start_abs)}-{_when(b.end_abs)}) overlaps "
                    f"outage[{i + 1}] ({_when(a.start_abs)}-{_when(a.end_abs)}) on the same processor; "
                    "merge them into one outage or move one"
                )


def _check_change_sequence(src: str, changes: tuple[ProcessorChange, ...]) -> None:
    order = sorted(range(len(changes)), key=lambda k: (_change_time(changes[k]), k))
    last: dict[str, int] = {}
    disabled: set[str] = set()
    for k in order:
        c = changes[k]
        prev = last.get(c.processor)
        if prev is not None:
            p = changes[prev]
            if _change_time(p) == _change_time(c):
                raise ScenarioError(
                    f"{src}: processor_change[{k + 1}] and processor_change[{prev + 1}] change {c.processor} at the same "
                    f"time ({_when(_change_time(c))}); keep one or move one"
                )
            if p.action == c.action:
                raise ScenarioError(
                    f"{src}: processor_change[{k + 1}].action = \"{c.action}\" repeats processor_change[{prev + 1}] for "
                    f"{c.processor} (already {c.action}d then); remove it or {'enable' if c.action == 'disable' else 'disable'} in between"
                )
        last[c.processor] = k
        (disabled.add if c.action == "disable" else disabled.discard)(c.processor)
        active = tuple(p for p in catalog.PROCESSORS if p not in disabled)
        for currency in catalog.CURRENCIES:
            if BUSIEST not in disabled and not catalog.eligible_processors("VISA", currency, active):
                raise ScenarioError(
                    f"{src}: processor_change[{k + 1}] leaves no processor for {currency} card payments at "
                    f"{_when(_change_time(c))}; enable one first or disable fewer"
                )


def _check_traffic_overlaps(src: str, traffic: tuple[Traffic, ...]) -> None:
    for j, b in enumerate(traffic):
        for i, a in enumerate(traffic[:j]):
            if a.day < b.day + b.days and b.day < a.day + a.days:
                raise ScenarioError(
                    f"{src}: traffic[{j + 1}] (days {b.day}-{b.day + b.days - 1}) overlaps traffic[{i + 1}] "
                    f"(days {a.day}-{a.day + a.days - 1}); give each day one multiplier"
                )
