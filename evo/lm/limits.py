"""Provider limits: how many calls a session keeps in flight, and how fast it sends them.

:class:`ConcurrencyLimit` is an adaptive in-flight limit (additive increase, multiplicative
decrease, as TCP and most API clients do it): a throttled call (HTTP 429) halves it, and each
run of ``limit`` successful calls raises it by one, up to the ceiling the user set.
:class:`TokenBucket` spaces calls to a requests-per-minute or tokens-per-minute quota
(``max_rpm`` / ``max_tpm``). Both only pace calls: they never change what is asked or answered,
so a search's result does not depend on them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class ConcurrencyLimit:
    """At most :attr:`limit` calls in flight; ``limit`` adapts between 1 and ``ceiling``.

    >>> lim = ConcurrencyLimit(8)
    >>> lim.throttled(started=lim.epoch); lim.limit
    4
    """

    ceiling: int
    limit: int = 0
    in_flight: int = 0
    peak: int = 0  # most calls seen in flight at once
    decreases: int = 0  # times throttling halved the limit
    epoch: int = 0  # bumped by each decrease (a 429 from before a decrease does not halve again)
    _successes: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def __post_init__(self) -> None:
        self.ceiling = max(1, int(self.ceiling))
        self.limit = self.limit or self.ceiling

    def acquire(self) -> int:
        """Wait for a free slot; returns the epoch the call starts in (for :meth:`throttled`)."""
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return self.epoch

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()

    def succeeded(self) -> None:
        """One call answered: after ``limit`` answers in a row, allow one more in flight."""
        with self._cond:
            if self.limit >= self.ceiling:
                return
            self._successes += 1
            if self._successes >= self.limit:
                self._successes = 0
                self.limit += 1
                self._cond.notify()

    def throttled(self, started: int) -> None:
        """A call that started in epoch ``started`` was throttled: halve the limit, once per
        epoch (the other calls of the same burst were sent under the old limit)."""
        with self._cond:
            if started != self.epoch:
                return
            self.limit = max(1, self.limit // 2)
            self._successes = 0
            self.decreases += 1
            self.epoch += 1


class TokenBucket:
    """Paces calls to ``rate`` units per minute (requests, or tokens) with bursts up to one
    minute's worth. :meth:`take` blocks until ``n`` units are available.

    >>> TokenBucket(60).take(1)  # a full bucket: no wait
    0.0
    """

    def __init__(self, per_minute: float, *, clock=time.monotonic, sleep=time.sleep) -> None:
        if not per_minute > 0:
            raise ValueError(f"a rate limit must be above 0 per minute, got {per_minute!r}")
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._level = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        """Take ``n`` units (at most a full bucket), waiting as long as needed; returns the
        seconds waited."""
        n = min(float(n), self.capacity)
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._level = min(self.capacity, self._level + (now - self._last) * self.rate)
                self._last = now
                if self._level >= n:
                    self._level -= n
                    return waited
                wait = (n - self._level) / self.rate
            self._sleep(wait)
            waited += wait
