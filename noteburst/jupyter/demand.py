"""How many kernels a pool should keep, from the recent arrival rate.

A pool of fixed size is always empty for requests that come faster than a
kernel starts: its replacement is still starting when the next one
arrives.  :class:`Demand` counts the takes of one kernel name and the
durations that matter, and gives the pool its target by Little's law:
the kernels that arrivals keep in use or starting are the arrival rate
times how long each occupies a slot (held by the execution until its
replacement may start, then starting).  Pure arithmetic on timestamps the
pool passes in, so it is tested without kernels.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEMAND_SAMPLES",
    "DEMAND_WINDOW_SECONDS",
    "RATE_INTERVALS",
    "SMOOTHING",
    "Demand",
]

DEMAND_WINDOW_SECONDS: Final = 30.0
"""Takes older than this say nothing about the arrival rate."""
DEMAND_SAMPLES: Final = 16
"""Recent takes kept."""
RATE_INTERVALS: Final = 4
"""The arrival rate is read from at most this many recent intervals."""
SMOOTHING: Final = 0.3
"""Weight of the newest duration in the moving averages of :class:`Demand`."""


@dataclass
class Demand:
    """What recent takes of one kernel name ask of its pool.

    Every take counts, also one that found the pool empty.  The rate is
    one over the median of the last :data:`RATE_INTERVALS` intervals
    between takes, so that a burst is seen from its second request on,
    and from its third even after a pause.  It was (n - 1) takes over
    the time from the first to the last of up to 16: a take before a
    pause of a few seconds then diluted a burst's rate until it left the
    window (measured in ``bench/load.py``, back to back after a 5 s pause:
    1.4-2.2 takes a second seen for 8 real ones, and a pool that stayed
    one kernel behind, every request waiting on a start).
    """

    takes: deque[float] = field(default_factory=lambda: deque(maxlen=DEMAND_SAMPLES))
    start_seconds: float = 0.0
    """Moving average of a start: creation to ready, warm-up included."""
    held_seconds: float = 0.0
    """Moving average of how long a taken kernel holds its slot (until its
    connection closes, at most the pool's ``refill_delay``)."""

    def record_take(self, now: float) -> None:
        """Count a take (or a miss) at ``now`` (``time.monotonic()``)."""
        self.takes.append(now)

    def record_start(self, seconds: float) -> None:
        """Count a start that took ``seconds``."""
        self.start_seconds = _smooth(self.start_seconds, seconds)

    def record_held(self, seconds: float) -> None:
        """Count a taken kernel that held its slot ``seconds``."""
        self.held_seconds = _smooth(self.held_seconds, seconds)

    def rate(self, now: float) -> float:
        """Return the takes per second lately (0 with fewer than two)."""
        recent = [t for t in self.takes if now - t <= DEMAND_WINDOW_SECONDS]
        recent = recent[-(RATE_INTERVALS + 1) :]
        if len(recent) <= 1:
            return 0.0
        intervals = [later - earlier for earlier, later in itertools.pairwise(recent)]
        return 1 / max(statistics.median(intervals), 1e-3)

    def target(self, base: int, limit: int, now: float) -> int:
        """Kernels to keep: ``base`` ready, plus those in use or starting."""
        in_flight = self.rate(now) * (self.held_seconds + self.start_seconds)
        return max(base, min(limit, base + round(in_flight)))


def _smooth(average: float, value: float) -> float:
    return value if average == 0 else average + SMOOTHING * (value - average)
