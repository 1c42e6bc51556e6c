"""An in-memory stand-in for ``ray.serve.metrics`` (the model server's metrics factory).

Records what the model server reports, by metric name and tag values, so unit tests can check
it without a Ray node; the Ray tests scrape the real endpoint.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _key(tags: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((tags or {}).items()))


class _Recorded:
    def __init__(
        self,
        store: RecordingFactory,
        name: str,
        description: str = "",
        boundaries: list[float] | None = None,
        tag_keys: tuple[str, ...] | None = None,
    ) -> None:
        if tag_keys is not None and not isinstance(tag_keys, tuple):
            raise TypeError(f"{name}: tag_keys must be a tuple (ray.util.metrics)")
        self.name, self.tag_keys, self.store = name, tuple(tag_keys or ()), store
        store.instruments[name] = self

    def _check(self, tags: dict[str, str] | None) -> None:
        if set(tags or {}) != set(self.tag_keys):
            raise ValueError(f"{self.name}: tags {sorted(tags or {})} != {sorted(self.tag_keys)}")

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self._check(tags)
        self.store.counters[self.name][_key(tags)] += value

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._check(tags)
        self.store.observations[self.name][_key(tags)].append(value)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._check(tags)
        self.store.gauges[self.name][_key(tags)].append(value)


class RecordingFactory:
    """``Counter``/``Histogram``/``Gauge`` that record into dicts: counters summed, histogram
    observations and gauge values listed in order, each by metric name and sorted tags."""

    def __init__(self) -> None:
        self.instruments: dict[str, _Recorded] = {}
        self.counters: dict[str, dict[Any, float]] = defaultdict(lambda: defaultdict(float))
        self.observations: dict[str, dict[Any, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.gauges: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))

    def Counter(self, name: str, description: str = "", tag_keys=None) -> _Recorded:
        return _Recorded(self, name, description, None, tag_keys)

    def Histogram(
        self, name: str, description: str = "", boundaries=None, tag_keys=None
    ) -> _Recorded:
        return _Recorded(self, name, description, boundaries, tag_keys)

    def Gauge(self, name: str, description: str = "", tag_keys=None) -> _Recorded:
        return _Recorded(self, name, description, None, tag_keys)

    def counter(self, name: str, **tags: str) -> float:
        return self.counters[name][_key(tags)]

    def observed(self, name: str, **tags: str) -> list[float]:
        return self.observations[name][_key(tags)]

    def gauge(self, name: str, **tags: str) -> list[float]:
        return self.gauges[name][_key(tags)]
