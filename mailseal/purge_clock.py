"""The time up to which the replay cache may forget, safe against clock jumps.

Purging drops claims whose bundles are older than the window. If it trusted
the wall clock alone, a clock stepped forward (by mistake, or by a spoofed
NTP server) would drop claims of bundles still in their window, and once the
clock is back those bundles could be replayed. So the cutoff never runs
ahead of the time that really passed since the clock was last trusted
(measured with a clock that no one can step): a forward step is believed
only after it has lasted CLOCK_TRUST, as a corrected clock does (a machine
that booted with a wrong clock and was fixed by NTP); until then purging
merely lags, which costs disk space, not safety. A backward step lowers the
cutoff at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A wall clock ahead of the elapsed time by more than CLOCK_TOLERANCE has
# been stepped forward; it is believed once it has stayed ahead CLOCK_TRUST.
CLOCK_TOLERANCE = 60.0
CLOCK_TRUST = 86400.0


def elapsed_clock() -> float:
    """Seconds since boot, suspend included where the system can tell; never stepped."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class PurgeClock:
    def __init__(self, wall: Callable[[], float], elapsed: Callable[[], float] = elapsed_clock) -> None:
        self._wall, self._elapsed = wall, elapsed
        self._anchor = (wall(), elapsed())  # when the wall clock was last trusted
        self._ahead_since: float | None = None

    def cutoff(self) -> float:
        wall, elapsed = self._wall(), self._elapsed()
        trusted = self._anchor[0] + (elapsed - self._anchor[1])
        if wall <= trusted + CLOCK_TOLERANCE:  # in step, or stepped back: the lower the safer
            self._ahead_since = None
            return wall
        if self._ahead_since is None:
            self._ahead_since = elapsed
        elif elapsed - self._ahead_since >= CLOCK_TRUST:
            self._anchor, self._ahead_since = (wall, elapsed), None
            return wall
        return trusted
