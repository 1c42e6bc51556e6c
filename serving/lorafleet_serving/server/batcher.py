"""An asyncio batcher that mixes requests for different adapters into one batch.

Ray Serve's ``@serve.batch`` splits batches by multiplexed model id, so it cannot put two
adapters in one forward pass. :class:`MixedBatcher` collects whatever is submitted - any adapter
- into a batch of at most ``max_batch_size`` items, waiting at most ``batch_wait_timeout_s``
after the first item (and not at all once the batch is full), then hands the batch to a handler
coroutine. Up to ``max_concurrent_batches`` handlers run at once; while they are all busy, new
items queue up and form the next batch as soon as one finishes.

Items may be submitted in a *group* (e.g. the prompts of one request). Queued items are taken
round-robin across groups - one from each group in turn, groups in order of arrival - so a
request with hundreds of items cannot make a later one-item request wait for all of them.
Items without a group are groups of one, which makes the order plain FIFO when nobody groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class MixedBatcher(Generic[T]):
    """Collects submitted items into batches for a handler.

    Args:
        handler: ``async handler(items)`` processing one batch. It is responsible for
            delivering each item's result; if it raises, :attr:`on_error` is called with the
            items and the exception.
        max_batch_size: Largest batch (items), >= 1.
        batch_wait_timeout_s: Longest wait for more items after the first one, seconds (>= 0).
        max_concurrent_batches: Handlers running at the same time (>= 1).
        on_error: ``on_error(items, exc)`` for a handler that raised; default logs.

    Raises:
        ValueError: A size or timeout out of range.
    """

    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[None]],
        *,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
        max_concurrent_batches: int = 1,
        on_error: Callable[[list[T], BaseException], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be >= 1, got {max_concurrent_batches}")
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_concurrent_batches = max_concurrent_batches
        self.on_error = on_error
        self._groups: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0
        self.batch_sizes: list[int] = []
        self.joined = 0  # items taken by take_nowait into running batches

    def submit(self, item: T, group: Hashable | None = None) -> None:
        """Queue ``item`` for the next batch (starts the collecting task on first use).

        Must be called from the event loop the batcher runs on.

        Args:
            item: The item.
            group: Items of one group share a turn in the round-robin (see the module
                docstring); ``None``: a group of its own.
        """
        if self._arrived is None:
            self._arrived = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrent_batches)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._collect())
        key: Hashable = object() if group is None else group
        self._groups.setdefault(key, deque()).append(item)
        self._arrived.set()

    def _pop(self) -> T:
        """The next item round-robin: the first group's oldest; that group goes last."""
        key, items = next(iter(self._groups.items()))
        item = items.popleft()
        if items:
            self._groups.move_to_end(key)
        else:
            del self._groups[key]
        return item

    def take_nowait(self, limit: int) -> list[T]:
        """Take up to ``limit`` queued items without waiting (for joining a running batch).

        Args:
            limit: Most items to take.

        Returns:
            The items, round-robin across groups (empty when none is queued).
        """
        taken: list[T] = []
        while self._groups and len(taken) < limit:
            taken.append(self._pop())
        self.joined += len(taken)
        return taken

    async def _wait_for_items(self) -> None:
        assert self._arrived is not None
        while not self._groups:
            self._arrived.clear()
            await self._arrived.wait()

    @property
    def mean_batch_size(self) -> float:
        """Mean items per batch so far (0.0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0

    async def _collect(self) -> None:
        assert self._slots is not None
        slots = self._slots
        while True:
            await slots.acquire()
            try:
                await self._wait_for_items()
            except BaseException:
                slots.release()
                raise
            batch = [self._pop()]
            deadline = time.monotonic() + self.batch_wait_timeout_s
            while len(batch) < self.max_batch_size:
                if self._groups:
                    batch.append(self._pop())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wait_for_items(), remaining)
                except TimeoutError:
                    break
            self.batches += 1
            self.items += len(batch)
            self.batch_sizes.append(len(batch))
            if len(self.batch_sizes) > 1000:
                del self.batch_sizes[:500]
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[T]) -> None:
        assert self._slots is not None
        try:
            await self.handler(batch)
        except Exception as exc:
            if self.on_error is not None:
                self.on_error(batch, exc)
            else:
                logger.exception("batch handler failed for %d items", len(batch))
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop collecting and wait for running batches to finish."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
