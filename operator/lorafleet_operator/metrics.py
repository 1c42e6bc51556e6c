"""Prometheus metrics of the operator (``prometheus_client``), served on ``--metrics-port``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("lorafleet_reconciles_total", "Reconcile passes, by resource kind.", ["kind"])
FAILURES = Counter(
    "lorafleet_failures_total",
    "Reconcile outcomes that set a failing condition, by kind and reason.",
    ["kind", "reason"],
)
INSTALL_SECONDS = Histogram(
    "lorafleet_install_duration_seconds",
    "Time from install Job creation to its completion, in seconds.",
    ["kind"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
ADAPTERS_SERVED = Gauge(
    "lorafleet_adapters_served",
    "Adapters in a BaseModel's serve config registry.",
    ["namespace", "basemodel"],
)
SERVE_CONFIG_WRITES = Counter(
    "lorafleet_serve_config_writes_total",
    "Writes of a RayService's serveConfigV2 (creations and updates).",
    ["namespace", "basemodel"],
)


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``addr:port`` in a background thread (no-op when ``port`` is 0).

    Args:
        port: TCP port; 0 disables the server.
        addr: Listen address.
    """
    if port:
        start_http_server(port, addr=addr)
