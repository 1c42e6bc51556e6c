"""What the classification and generation runs share: the engine, its worker thread, a batcher.

:class:`EngineRuns` wires a :class:`~.batcher.MixedBatcher` to a subclass's ``run`` (one batch)
and ``fail`` (a batch that raised); :func:`batch_error` is the error its requests get.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ..engine.protocol import Engine
from ..errors import ServingError
from .batcher import MixedBatcher

T = TypeVar("T")


def batch_error(exc: BaseException, what: str) -> ServingError:
    """The error a failed batch's requests get: a :class:`ServingError` as it is, anything
    else wrapped as ``"<what> failed: <type>: <message>"`` (a 500 for the client)."""
    if isinstance(exc, ServingError):
        return exc
    return ServingError(f"{what} failed: {type(exc).__name__}: {exc}")


class EngineRuns(Generic[T]):
    """Batches of requests of one kind, run on the engine's worker thread.

    Args:
        engine: The engine.
        call: ``await call(fn, *args)`` runs ``fn(*args)`` on the engine's worker thread.
        max_batch_size: Requests per batch.
        batch_wait_timeout_s: Longest wait for more requests after the first, seconds.
        max_concurrent_batches: Batches in flight at once.

    Attributes:
        batcher: Where requests are submitted.
    """

    def __init__(
        self,
        engine: Engine,
        call: Callable[..., Awaitable[Any]],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_concurrent_batches: int,
    ) -> None:
        self.engine = engine
        self._call = call
        self.batcher: MixedBatcher[T] = MixedBatcher(
            self.run,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches,
            on_error=self.fail,
        )

    async def run(self, items: list[T]) -> None:
        """Run one batch (the subclass's work)."""
        raise NotImplementedError

    def fail(self, items: list[T], exc: BaseException) -> None:
        """Fail the batch's requests that have no answer yet with ``exc``."""
        raise NotImplementedError
