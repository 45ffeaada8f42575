"""The reference clock that outcome and decision times are checked against.

Every time window the service keeps (processor health, the online features) is measured in event
time: the ``created_at`` the merchant sends. One outcome stamped an hour ahead would otherwise
slide those windows an hour forward and drop what is really recent. So an event time is admitted
only when it is at most ``max_ahead_seconds`` ahead of a reference clock:

- ``wall`` (the default): the host's clock. Merchants' clocks are NTP-synchronised; a stamp
  further ahead is a bug on their side, answered 400 so they see it (clamping would silently
  move the outcome to a time it did not happen, and hide the broken clock).
- ``event``: the newest admitted event time (a high-water mark). For a simulator that replays
  simulated days in seconds, whose ``created_at`` runs ahead of the wall clock: time moves as
  fast as the events do, but still never jumps more than ``max_ahead_seconds`` at once.

Late events are always admitted: an outcome is often reported after the fact, and the stores
place it where it belongs in their windows (never erasing newer ones).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from smartrouter.errors import SmartrouterError

WALL, EVENT = "wall", "event"
MODES = (WALL, EVENT)


class EventTimeError(SmartrouterError, ValueError):
    """An event stamped too far ahead of the reference clock (the service answers 400)."""


@dataclass
class EventClock:
    """``now()`` and ``admit(at)``: the reference time, and whether an event time may enter the windows."""

    mode: str = WALL
    max_ahead_seconds: float = 300.0
    high_water: float | None = None  # event mode: the newest admitted event time

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"clock mode {self.mode!r}: use one of {', '.join(MODES)}")

    @classmethod
    def from_config(cls, health_config) -> "EventClock":
        """The clock a `HealthConfig` asks for (``clock`` and ``max_ahead_seconds`` in routing.toml's [health])."""
        return cls(getattr(health_config, "clock", WALL), float(getattr(health_config, "max_ahead_seconds", 300.0)))

    def now(self) -> float:
        """The reference time (epoch seconds); in event mode the high-water mark (wall time before any event)."""
        if self.mode == EVENT:
            return self.high_water if self.high_water is not None else time.time()
        return time.time()

    def limit(self) -> float:
        """The latest event time admitted now."""
        if self.mode == EVENT and self.high_water is None:
            return float("inf")  # the first event sets simulated time
        return self.now() + self.max_ahead_seconds

    def admits(self, at: float) -> bool:
        """True (and, in event mode, time advances) when ``at`` is not too far ahead."""
        if at > self.limit():
            return False
        if self.mode == EVENT and (self.high_water is None or at > self.high_water):
            self.high_water = at
        return True

    def check(self, at: float, what: str = "created_at") -> float:
        """``at`` if admitted, else EventTimeError naming how far ahead it is and the fix."""
        if not self.admits(at):
            ahead = at - self.now()
            raise EventTimeError(
                f"{what} is {ahead:.0f} s ahead of the service's {self.mode} clock (at most "
                f"{self.max_ahead_seconds:g} s allowed); send the time the attempt happened, in UTC, from a synchronised clock"
            )
        return at
