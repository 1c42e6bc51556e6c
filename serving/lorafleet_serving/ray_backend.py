"""The Ray boundary between ``Ingress`` and ``Model``: the HTTP backend over the ``Model`` handle.

:class:`RayModelBackend` is the :class:`~.http.backend.ModelBackend` of the ``Ingress``
deployment: it calls the ``Model`` deployment's handle with the adapter as multiplexed model id
and turns what Ray raises into serving errors (:func:`_as_serving_error`: the user exception
inside ``RayTaskError``, or 503 when no replica can answer). :class:`PortableServingError` is
how the ``Model`` deployment sends serving errors back across the boundary (they must survive
pickling).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from .errors import ServingError
from .http.errors import ModelUnavailableError
from .types import (
    BASE_ADAPTER,
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    GenerateResult,
    StreamDelta,
)

#: Seconds ``/ready`` waits for a ``Model`` replica to answer.
READY_TIMEOUT_S = 10.0


def _unwrap(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (``RayTaskError.cause``), else ``exc``."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)
        if isinstance(exc, RayTaskError) and isinstance(cause, BaseException):
            exc = cause
        else:
            break
    return exc


def _as_serving_error(exc: BaseException) -> BaseException:
    inner = _unwrap(exc)
    if isinstance(inner, ServingError):
        return inner
    if isinstance(inner, RayActorError):
        return ModelUnavailableError(f"the model replica became unavailable: {inner}")
    if type(inner).__name__ in ("BackPressureError", "DeploymentUnavailableError"):
        return ModelUnavailableError(f"the model deployment cannot take the request: {inner}")
    return exc


class PortableServingError(ServingError):
    """A :class:`~.errors.ServingError` that survives pickling across the Ray boundary.

    Subclasses such as ``AdapterLoadError(name, reason)`` take constructor arguments that
    ``BaseException.__reduce__`` cannot replay, so Ray would turn them into an
    ``UnserializableException``. The ``Model`` deployment re-raises every serving error as this
    class, keeping its HTTP mapping (status, type, code, param) and message.

    Args:
        message: What went wrong and where.
        status_code: HTTP status.
        error_type: OpenAI ``error.type``.
        code: OpenAI ``error.code``.
        param: Request field at fault.
    """

    def __init__(
        self,
        message: str,
        status_code: int = 500,
        error_type: str = "server_error",
        code: str = "internal_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status_code = status_code
        self.error_type = error_type
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.message, self.status_code, self.error_type, self.code, self.param),
        )

    @classmethod
    def of(cls, exc: ServingError) -> PortableServingError:
        """Copy ``exc``'s message and HTTP mapping."""
        if isinstance(exc, cls):
            return exc
        return cls(exc.message, exc.status_code, exc.error_type, exc.code, exc.param)


class RayModelBackend:
    """:class:`~.http.backend.ModelBackend` calling the ``Model`` deployment through its handle.

    Each request carries its adapter as ``multiplexed_model_id`` (none for the base model), so
    Serve routes it to a replica that already holds the adapter when there is one.

    Args:
        handle: The ``Model`` deployment handle.
    """

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def _for(self, adapter: str | None, *, stream: bool = False) -> DeploymentHandle:
        if adapter and adapter != BASE_ADAPTER:
            return self.handle.options(multiplexed_model_id=adapter, stream=stream)
        return self.handle.options(stream=stream)

    async def generate(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> GenerateResult:
        """See :meth:`~.http.backend.ModelBackend.generate`."""
        try:
            return await self._for(req.adapter).generate.remote(req, messages)
        except Exception as exc:
            raise _as_serving_error(exc) from None

    async def generate_many(self, reqs: list[GenerateRequest]) -> list[GenerateResult]:
        """See :meth:`~.http.backend.ModelBackend.generate_many` (one call to one replica)."""
        try:
            return await self._for(reqs[0].adapter if reqs else None).generate_many.remote(reqs)
        except Exception as exc:
            raise _as_serving_error(exc) from None

    async def generate_stream(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[StreamDelta]:
        """See :meth:`~.http.backend.ModelBackend.generate_stream`."""
        gen = self._for(req.adapter, stream=True).generate_stream.remote(req, messages)
        try:
            async for delta in gen:
                yield delta
        except Exception as exc:
            raise _as_serving_error(exc) from None
        finally:
            gen.cancel()

    async def classify(self, req: ClassifyRequest) -> ClassifyResult:
        """See :meth:`~.http.backend.ModelBackend.classify`."""
        try:
            return await self._for(req.adapter).classify.remote(req)
        except Exception as exc:
            raise _as_serving_error(exc) from None

    async def registered_adapters(self) -> dict[str, dict[str, Any]]:
        """See :meth:`~.http.backend.ModelBackend.registered_adapters`."""
        try:
            return await self.handle.registered_adapters.remote()
        except Exception as exc:
            raise _as_serving_error(exc) from None

    async def replica_info(self) -> dict[str, Any]:
        """See :meth:`~.http.backend.ModelBackend.replica_info` (one ``Model`` replica answers)."""
        try:
            return await self.handle.info.remote()
        except Exception as exc:
            raise _as_serving_error(exc) from None

    async def ready(self) -> bool:
        """See :meth:`~.http.backend.ModelBackend.ready` (waits at most ``READY_TIMEOUT_S``)."""
        try:
            return bool(await asyncio.wait_for(self.handle.ready.remote(), READY_TIMEOUT_S))
        except Exception:
            return False
