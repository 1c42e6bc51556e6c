"""Where the HTTP API's requests are executed: the :class:`ModelBackend` protocol.

The routes (:mod:`.routes`) only talk to a backend:

- in a Ray Serve application, ``RayModelBackend`` (:mod:`lorafleet_serving.ray_backend`)
  forwards to the ``Model`` deployment through a ``DeploymentHandle`` with the adapter as
  multiplexed model id;
- in-process, ``ModelServerBackend`` (:mod:`lorafleet_serving.server.backend`) calls a
  model server directly (tests, single-process use).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..types import (
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    GenerateResult,
    StreamDelta,
)


class ModelBackend(Protocol):
    """Where requests are executed. Methods raise :class:`~lorafleet_serving.errors.ServingError`
    subclasses."""

    async def generate(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> GenerateResult:
        """Generate a completion; with ``messages`` the prompt is rendered by the chat template."""
        ...

    async def generate_many(self, reqs: list[GenerateRequest]) -> list[GenerateResult]:
        """Generate one completion per request (the prompts of one HTTP request, one adapter),
        sharing one turn in the model server's round-robin of queued requests."""
        ...

    def generate_stream(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[StreamDelta]:
        """Stream a completion, one :class:`~.types.StreamDelta` per step, the last with counts."""
        ...

    async def classify(self, req: ClassifyRequest) -> ClassifyResult:
        """Classify texts with one adapter's (or the base's) head."""
        ...

    async def registered_adapters(self) -> dict[str, dict[str, Any]]:
        """The adapter registry: name -> ``{"path", "rank"?, "labels"?}``."""
        ...

    async def ready(self) -> bool:
        """Whether the base model is loaded and requests can be served."""
        ...

    async def replica_info(self) -> dict[str, Any]:
        """Facts about the model replica that answers: ``pid``, ``registered``, ``resident``,
        ``multiplexed`` (ids Serve routes to it), ``stats`` (loads, evictions, batches...)."""
        ...
