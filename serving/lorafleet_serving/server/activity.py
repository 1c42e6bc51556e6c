"""What each adapter did lately on this replica: requests in the last minute, last load time.

The model server keeps these figures for its residency report (``Model.info`` ->
``GET /stats`` -> the operator's ``status.serving``). They are small and bounded: one deque of
request times per adapter the registry knows, pruned to the window on every read and write.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

#: The window of :meth:`AdapterActivity.requests_per_minute`, seconds.
WINDOW_S = 60.0


class AdapterActivity:
    """Per-adapter request times (last :data:`WINDOW_S` seconds) and last load seconds.

    Args:
        clock: Monotonic clock in seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, deque[float]] = {}
        self._last_load_s: dict[str, float] = {}

    def request(self, adapter: str) -> None:
        """Note one finished request for ``adapter`` (``__base__`` for the bare base)."""
        now = self._clock()
        times = self._requests.setdefault(adapter, deque())
        times.append(now)
        self._prune(times, now)

    def loaded(self, adapter: str, seconds: float) -> None:
        """Note that ``adapter`` was loaded in ``seconds`` seconds."""
        self._last_load_s[adapter] = seconds

    def forget(self, keep: set[str]) -> None:
        """Drop every adapter not in ``keep`` (removed from the registry)."""
        for table in (self._requests, self._last_load_s):
            for name in [n for n in table if n not in keep]:
                del table[name]

    def requests_per_minute(self) -> dict[str, int]:
        """Requests finished per adapter in the last :data:`WINDOW_S` seconds (zeros omitted)."""
        now = self._clock()
        out = {}
        for name, times in self._requests.items():
            self._prune(times, now)
            if times:
                out[name] = len(times)
        return out

    def last_load_seconds(self) -> dict[str, float]:
        """Seconds the last load of each adapter took (adapters loaded at least once)."""
        return dict(self._last_load_s)

    @staticmethod
    def _prune(times: deque[float], now: float) -> None:
        while times and now - times[0] > WINDOW_S:
            times.popleft()
