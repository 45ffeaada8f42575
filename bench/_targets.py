"""The one pass/fail verdict every benchmark uses: a missed target makes the script exit non-zero,
so `make bench` stops at the first benchmark that misses (a benchmark that only prints "NOT met"
is never noticed by make, cron or CI).

    targets = Targets("bench_serve")
    targets.at_most("/v1/route p99", route_p99_ms, 10, "ms")
    targets.at_least("/v1/route throughput", rps, 2000, "req/s")
    return targets.report()        # prints one PASS/FAIL line per target; 0 if all met, else EXIT_MISSED
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EXIT_MISSED = 1  # at least one target missed (2 stays "could not run", e.g. a tool missing)


@dataclass(frozen=True)
class Target:
    """One stated target and what was measured against it."""

    name: str
    ok: bool
    detail: str


@dataclass
class Targets:
    """The targets of one benchmark run, checked as they are measured and reported at the end."""

    bench: str
    results: list[Target] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record a target that is a plain condition (e.g. 'ADYEN from week 9')."""
        self.results.append(Target(name, bool(ok), detail))
        return bool(ok)

    def at_most(self, name: str, value: float, limit: float, unit: str = "") -> bool:
        """value <= limit; a NaN or missing measurement is a miss, never a pass."""
        ok = value is not None and not math.isnan(value) and value <= limit
        return self.check(f"{name} <= {limit:g}{_u(unit)}", ok, f"measured {_fmt(value)}{_u(unit)}")

    def at_least(self, name: str, value: float, limit: float, unit: str = "") -> bool:
        """value >= limit; a NaN or missing measurement is a miss, never a pass."""
        ok = value is not None and not math.isnan(value) and value >= limit
        return self.check(f"{name} >= {limit:g}{_u(unit)}", ok, f"measured {_fmt(value)}{_u(unit)}")

    @property
    def missed(self) -> list[Target]:
        return [t for t in self.results if not t.ok]

    def exit_code(self) -> int:
        """0 when every target was met; EXIT_MISSED when any was missed or none was checked."""
        return 0 if self.results and not self.missed else EXIT_MISSED

    def report(self) -> int:
        """Print one PASS/FAIL line per target and a summary line; return the exit code."""
        print()
        for t in self.results:
            print(f"{'PASS' if t.ok else 'FAIL'}  {t.name}" + (f"  ({t.detail})" if t.detail else ""))
        if not self.results:
            print(f"{self.bench}: no target was checked (nothing measured): failing")
        elif self.missed:
            print(f"{self.bench}: {len(self.missed)} of {len(self.results)} target(s) NOT met: "
                  + "; ".join(t.name for t in self.missed))
        else:
            print(f"{self.bench}: all {len(self.results)} target(s) met")
        return self.exit_code()


def _u(unit: str) -> str:
    return f" {unit}" if unit else ""


def _fmt(value: float | None) -> str:
    if value is None:
        return "nothing"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
