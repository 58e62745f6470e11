"""What each background duty tells about itself: when it last did its work, and why not.

A duty (the claim loop, the heartbeat, a listener, a grouped writer...) survives every
exception: it logs the first of a run of failures (a warning when the database is away, a
traceback when it is a fault of ours), tries again with backoff, and logs once when it works
again. /readyz reads `Duty.problem` of every duty of the process.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from service.db.errors import DATABASE_UNAVAILABLE
from service.logs import get_logger

log = get_logger(__name__)

# A duty is overdue once it has not run for this many of its intervals (plus GRACE_S, for a
# short interval on a busy machine).
STALE_INTERVALS = 3
GRACE_S = 5.0


class Duty:
    """The health of one background duty that should run every `interval_s`.

    `idle`: when given and true, the duty has nothing to do, and is never overdue (a writer
    with nothing to write).
    """

    def __init__(
        self, name: str, interval_s: float, idle: Callable[[], bool] | None = None
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self._idle = idle
        self.last_run = time.monotonic()
        self.failures = 0
        self.last_error: str | None = None
        # Something wrong that running does not clear (a listener that hears nothing).
        self.fault: str | None = None

    def ran(self) -> None:
        """The duty did its work."""
        self.last_run = time.monotonic()
        if self.failures:
            log.info(f"{self.name}_recovered", failures=self.failures)
        self.failures = 0
        self.last_error = None

    def woke(self) -> None:
        """An idle duty has work again: its allowance starts now."""
        self.last_run = time.monotonic()

    def failed(self, exc: BaseException, retry_in_s: float | None = None) -> None:
        """The duty's work raised `exc`; logged for the first failure of a run only."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures > 1:
            log.debug(f"{self.name}_failed", error=self.last_error, failures=self.failures)
        elif isinstance(exc, DATABASE_UNAVAILABLE):
            log.warning(f"{self.name}_failed", error=self.last_error, retry_in_s=retry_in_s)
        else:
            log.error(
                f"{self.name}_crashed",
                retry_in_s=retry_in_s,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    @property
    def overdue_s(self) -> float | None:
        """Seconds since the last run when that is past the allowance; None when not."""
        if self._idle is not None and self._idle():
            return None
        since = time.monotonic() - self.last_run
        return since if since > STALE_INTERVALS * self.interval_s + GRACE_S else None

    @property
    def problem(self) -> str | None:
        """Why this duty is not doing its work, or None when it is."""
        if self.fault is not None:
            return f"{self.name}: {self.fault}"
        overdue = self.overdue_s
        if overdue is None:
            return None
        reason = f"{self.name}: has not run for {overdue:.0f} s"
        return f"{reason} ({self.last_error})" if self.last_error else reason


def problems(duties: Iterable[Duty]) -> list[str]:
    return [p for p in (d.problem for d in duties) if p is not None]


class Backoff:
    """Delays that double from `first_s` up to `max_s`, jittered over their upper half so that
    many waiters spread out; `reset` after a success."""

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.first_s
