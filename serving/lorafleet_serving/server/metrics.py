"""Per-adapter and per-replica serving metrics, recorded the Ray Serve way.

:class:`ServingMetrics` is what the model server calls when a request ends, a token is
generated, an adapter loads or leaves, and a decode step runs. It records into instruments
built by a :class:`MetricsFactory` with the API of ``ray.serve.metrics`` (``Counter``,
``Histogram``, ``Gauge``; ``inc``/``observe``/``set`` with ``tags``): the Ray Serve
application passes that module, so every figure appears on each Ray node's metrics endpoint
with Serve's own ``deployment``, ``replica`` and ``application`` tags added; tests pass an
in-memory factory. Nothing here imports Ray.

Names follow Prometheus conventions in base units (seconds, bytes). Ray exports a metric
``<name>`` as ``ray_<name>``, and a counter also with ``_total`` appended
(``ray.util.metrics.Counter``), so a counter named ``lorafleet_requests`` here is scraped as
``ray_lorafleet_requests_total``: :data:`EXPORTED` lists the scraped names, which the Grafana
dashboard's queries use.

Label values are bounded: an ``adapter`` label is a registered adapter's name, ``__base__``
for the bare base model, or ``__unknown__`` for any name the registry does not hold (a request
naming an unknown model is counted, but its name never becomes a label value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

#: ``adapter`` label of requests for the bare base model.
BASE_LABEL = "__base__"
#: ``adapter`` label of requests naming a model the registry does not hold.
UNKNOWN_LABEL = "__unknown__"

#: Histogram buckets of latencies, seconds (time to first token, queue wait).
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
#: Histogram buckets of the time between two generated tokens of one request, seconds.
INTER_TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
#: Histogram buckets of adapter load times, seconds.
LOAD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
#: Histogram buckets of rows (or distinct adapters) per decode step.
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class Instrument(Protocol):
    """One metric of a :class:`MetricsFactory` (``ray.util.metrics`` API); each method
    records one value with the given tag values."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` (counters)."""

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Record one observation (histograms)."""

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Set the current value (gauges)."""


class MetricsFactory(Protocol):
    """Builds instruments: ``ray.serve.metrics`` itself, or an in-memory stand-in in tests.

    ``Counter(name, description, tag_keys)``, ``Histogram(name, description, boundaries,
    tag_keys)`` and ``Gauge(name, description, tag_keys)``, as in ``ray.util.metrics``.
    """

    @property
    def Counter(self) -> Callable[..., Instrument]:  # ray.util.metrics' names
        """The counter class."""

    @property
    def Histogram(self) -> Callable[..., Instrument]:
        """The histogram class."""

    @property
    def Gauge(self) -> Callable[..., Instrument]:
        """The gauge class."""


#: Every metric as scraped from a Ray node's endpoint (``ray_`` prefix, counters ``_total``).
EXPORTED = (
    "ray_lorafleet_requests_total",
    "ray_lorafleet_prompt_tokens_total",
    "ray_lorafleet_generation_tokens_total",
    "ray_lorafleet_time_to_first_token_seconds",
    "ray_lorafleet_inter_token_latency_seconds",
    "ray_lorafleet_queue_wait_seconds",
    "ray_lorafleet_adapter_load_seconds",
    "ray_lorafleet_adapter_load_failures_total",
    "ray_lorafleet_adapter_evictions_total",
    "ray_lorafleet_adapter_resident",
    "ray_lorafleet_step_rows",
    "ray_lorafleet_step_adapters",
    "ray_lorafleet_tensor_bytes",
    "ray_lorafleet_adapter_bytes",
)


class ServingMetrics:
    """The model server's metrics (see the module docstring).

    Args:
        factory: Builds the instruments (``ray.serve.metrics``).
        registered: Whether a name is in the adapter registry right now (bounds the
            ``adapter`` label).
    """

    def __init__(self, factory: MetricsFactory, registered: Callable[[str], bool]) -> None:
        self._registered = registered
        adapter = ("adapter",)
        self.requests = factory.Counter(
            "lorafleet_requests",
            description="Requests finished, by adapter and HTTP status class (2xx, 4xx, 5xx).",
            tag_keys=("adapter", "status"),
        )
        self.prompt_tokens = factory.Counter(
            "lorafleet_prompt_tokens", description="Prompt tokens processed.", tag_keys=adapter
        )
        self.generation_tokens = factory.Counter(
            "lorafleet_generation_tokens", description="Tokens generated.", tag_keys=adapter
        )
        self.first_token = factory.Histogram(
            "lorafleet_time_to_first_token_seconds",
            description="Time from a generation request's arrival to its first token, seconds.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=adapter,
        )
        self.inter_token = factory.Histogram(
            "lorafleet_inter_token_latency_seconds",
            description="Time between two consecutive tokens of one request, seconds.",
            boundaries=INTER_TOKEN_BUCKETS,
            tag_keys=adapter,
        )
        self.queue_wait = factory.Histogram(
            "lorafleet_queue_wait_seconds",
            description="Time a request waited (adapter load included) before its batch, seconds.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=adapter,
        )
        self.load_seconds = factory.Histogram(
            "lorafleet_adapter_load_seconds",
            description="Time to load an adapter into a replica, seconds.",
            boundaries=LOAD_BUCKETS,
            tag_keys=adapter,
        )
        self.load_failures = factory.Counter(
            "lorafleet_adapter_load_failures", description="Failed adapter loads.", tag_keys=adapter
        )
        self.evictions = factory.Counter(
            "lorafleet_adapter_evictions",
            description="Adapters unloaded from a replica (evicted or removed).",
            tag_keys=adapter,
        )
        self.resident = factory.Gauge(
            "lorafleet_adapter_resident",
            description="1 while the adapter is loaded on this replica, else 0.",
            tag_keys=adapter,
        )
        self.step_rows = factory.Histogram(
            "lorafleet_step_rows",
            description="Rows (requests) in each decode step.",
            boundaries=BATCH_BUCKETS,
            tag_keys=(),
        )
        self.step_adapters = factory.Histogram(
            "lorafleet_step_adapters",
            description="Distinct adapters (the bare base counts as one) in each decode step.",
            boundaries=BATCH_BUCKETS,
            tag_keys=(),
        )
        self.tensor_bytes = factory.Gauge(
            "lorafleet_tensor_bytes",
            description="Bytes of the model's tensors on this replica, adapters included.",
            tag_keys=(),
        )
        self.adapter_bytes = factory.Gauge(
            "lorafleet_adapter_bytes",
            description="Bytes of the adapters' weights resident on this replica (as read).",
            tag_keys=(),
        )

    def label(self, adapter: str | None) -> str:
        """The ``adapter`` label value of a request's model name (bounded: see the module)."""
        if adapter is None:
            return BASE_LABEL
        return adapter if self._registered(adapter) else UNKNOWN_LABEL

    def request_finished(
        self, adapter: str | None, status_code: int, prompt_tokens: int, generated_tokens: int
    ) -> None:
        """Count one finished request.

        Args:
            adapter: The adapter it named (``None``: the bare base).
            status_code: The HTTP status it was answered with (200, or the error's).
            prompt_tokens: Prompt tokens processed (0 if it failed before).
            generated_tokens: Tokens generated.
        """
        tags = {"adapter": self.label(adapter)}
        self.requests.inc(1.0, tags={**tags, "status": f"{status_code // 100}xx"})
        if prompt_tokens:
            self.prompt_tokens.inc(float(prompt_tokens), tags=tags)
        if generated_tokens:
            self.generation_tokens.inc(float(generated_tokens), tags=tags)

    def token_times(self, adapter: str | None, first: float | None, gaps: Sequence[float]) -> None:
        """Record a generation request's token timing.

        Args:
            adapter: The adapter it named.
            first: Seconds from its arrival to its first token (``None``: no token).
            gaps: Seconds between consecutive tokens.
        """
        tags = {"adapter": self.label(adapter)}
        if first is not None:
            self.first_token.observe(first, tags=tags)
        for gap in gaps:
            self.inter_token.observe(gap, tags=tags)

    def waited(self, adapter: str | None, seconds: float) -> None:
        """Record the time a request waited before its batch took it, seconds."""
        self.queue_wait.observe(seconds, tags={"adapter": self.label(adapter)})

    def adapter_loaded(self, adapter: str, seconds: float) -> None:
        """Record a load that succeeded (``seconds`` long); the adapter is now resident."""
        tags = {"adapter": self.label(adapter)}
        self.load_seconds.observe(seconds, tags=tags)
        self.resident.set(1.0, tags=tags)

    def adapter_load_failed(self, adapter: str) -> None:
        """Count a load that failed."""
        self.load_failures.inc(1.0, tags={"adapter": self.label(adapter)})

    def adapter_unloaded(self, adapter: str) -> None:
        """Count an unload; the adapter is no longer resident here.

        An adapter removed from the registry keeps its own label for this last record (its
        series were made while it was registered).
        """
        tags = {"adapter": adapter}
        self.evictions.inc(1.0, tags=tags)
        self.resident.set(0.0, tags=tags)

    def step(self, rows: int, adapters: int) -> None:
        """Record one decode step of ``rows`` rows over ``adapters`` distinct adapters."""
        self.step_rows.observe(float(rows))
        self.step_adapters.observe(float(adapters))

    def memory(self, tensor_bytes: int, adapter_bytes: int) -> None:
        """Set the replica's tensor and resident-adapter bytes."""
        self.tensor_bytes.set(float(tensor_bytes))
        self.adapter_bytes.set(float(adapter_bytes))


class _Discarded:
    """An instrument that records nothing."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Record nothing."""

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Record nothing."""

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Record nothing."""


class DiscardingFactory:
    """A :class:`MetricsFactory` whose instruments record nothing (a model server outside Ray
    Serve that nobody scrapes: benchmarks, tools)."""

    Counter = _Discarded
    Histogram = _Discarded
    Gauge = _Discarded
