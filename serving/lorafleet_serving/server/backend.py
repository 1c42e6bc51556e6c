"""The HTTP API's backend over an in-process model server (tests, single-process use).

:class:`ModelServerBackend` has the methods of the HTTP layer's
:class:`~lorafleet_serving.http.backend.ModelBackend` protocol (which it matches without
importing the HTTP layer) and calls a :class:`~.model_server.ModelServer` directly; chat
``messages`` are rendered into the prompt by the model server's chat template. The Ray
``Model`` deployment uses it on each replica, behind its Serve handle.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from ..errors import ServingError
from ..types import (
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    GenerateResult,
    StreamDelta,
)
from .model_server import ModelServer, adapter_or_none


class ModelServerBackend:
    """:class:`~lorafleet_serving.http.backend.ModelBackend` over an in-process :class:`ModelServer`.

    Args:
        server: The model server (already constructed: its base model is loaded).
    """

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    async def _with_chat(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None
    ) -> GenerateRequest:
        if messages is None:
            return req
        try:
            return replace(req, prompt=await self.server.render_chat(messages))
        except ServingError as exc:  # refused before generation: counted here
            self.server.count_refused(adapter_or_none(req.adapter), exc.status_code)
            raise

    async def generate(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> GenerateResult:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.generate`."""
        return await self.server.generate(await self._with_chat(req, messages))

    async def generate_many(self, reqs: list[GenerateRequest]) -> list[GenerateResult]:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.generate_many`."""
        return await self.server.generate_many(reqs)

    async def generate_stream(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[StreamDelta]:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.generate_stream`."""
        async for delta in self.server.generate_stream(await self._with_chat(req, messages)):
            yield delta

    async def classify(self, req: ClassifyRequest) -> ClassifyResult:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.classify`."""
        return await self.server.classify(req)

    async def registered_adapters(self) -> dict[str, dict[str, Any]]:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.registered_adapters`."""
        return self.server.registered_adapters()

    async def ready(self) -> bool:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.ready`."""
        return self.server is not None

    async def replica_info(self) -> dict[str, Any]:
        """See :meth:`~lorafleet_serving.http.backend.ModelBackend.replica_info` (this process; no multiplexing)."""
        return {
            "pid": os.getpid(),
            "task": self.server.task,
            "registered": sorted(self.server.registered_adapters()),
            "resident": list(self.server.resident_adapters()),
            "multiplexed": [],
            "stats": self.server.stats(),
        }
