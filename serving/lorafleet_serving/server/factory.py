"""Build a model server over the transformers engine (the composition of the two layers).

:class:`~.model_server.ModelServer` takes any :class:`~lorafleet_serving.engine.protocol.Engine`;
:func:`build_model_server` is the short way to serve a base folder with
:class:`~lorafleet_serving.engine.transformers_engine.TransformersEngine` (the Ray ``Model``
deployment, tests, benchmarks). It is the only module of the server layer that imports the
engine's implementation (and so torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..engine.transformers_engine import TransformersEngine
from .metrics import MetricsFactory
from .model_server import ModelServer
from .requests import check_server_limits


def build_model_server(
    base_path: str | Path,
    task: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    labels: dict[str, str] | Sequence[str] | None = None,
    max_adapters: int = 8,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.005,
    max_tokens_limit: int = 2048,
    max_concurrent_batches: int = 1,
    metrics_factory: MetricsFactory | None = None,
) -> ModelServer:
    """Load a base model folder and serve it (with its adapters) through a :class:`ModelServer`.

    The limits are checked before the base model is loaded.

    Args:
        base_path: Local folder of the base model.
        task: ``"text-generation"`` or ``"text-classification"``.
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        device: Torch device; default cuda when present, else cpu.
        labels: Base label names for classification (``{"0": "neg"}`` or a list).
        max_adapters: Adapters resident at once (LRU beyond that); the engine's slots.
        max_batch_size: Requests per batch.
        batch_wait_timeout_s: Longest wait for more requests after the first, seconds.
        max_tokens_limit: Upper bound on ``max_tokens`` per request.
        max_concurrent_batches: Batches in flight at once (see :class:`ModelServer`).
        metrics_factory: Builds the serving metrics' instruments (see :class:`ModelServer`).

    Returns:
        The model server (its base model loaded).

    Raises:
        InvalidRequestError: Bad ``task``, ``dtype``, labels or limits.
        OSError: The base folder cannot be read.
    """
    check_server_limits(max_adapters, max_batch_size, max_tokens_limit, batch_wait_timeout_s)
    engine = TransformersEngine(
        base_path, task, dtype=dtype, device=device, labels=labels, max_adapters=max_adapters
    )
    return ModelServer(
        engine,
        max_adapters=max_adapters,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_tokens_limit=max_tokens_limit,
        max_concurrent_batches=max_concurrent_batches,
        metrics_factory=metrics_factory,
    )
