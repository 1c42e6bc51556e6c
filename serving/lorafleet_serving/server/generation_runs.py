"""Generation batches of the model server: continuous batching, step by step.

:class:`GenerationRuns` owns the generation :class:`~.batcher.MixedBatcher`. Each batch it is
handed becomes an engine generation batch (:meth:`~lorafleet_serving.engine.protocol.Engine.start_generation`)
that decodes one step at a time on the engine's worker thread; while it has room, requests
waiting in the batcher are prefilled and joined to it between steps instead of waiting for the
whole batch to finish. Every step's events go to the requests' own ``asyncio.Queue``
(:class:`GenerationItem`), so streaming works while batching.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..engine.protocol import GenerationRow, RunningBatch, StepEvent
from ..types import GenerateRequest
from .engine_runs import EngineRuns, batch_error

logger = logging.getLogger(__name__)

#: Decode steps a request may wait for a partial join while a running batch has a free row.
JOIN_EVERY_STEPS = 8


@dataclass
class GenerationItem:
    """One generation request in the model server's queue.

    Attributes:
        request: The checked request.
        adapter: Adapter name, ``None`` for the bare base.
        prompt_ids: Its prompt's token ids.
        queue: Where its :class:`~lorafleet_serving.engine.protocol.StepEvent` objects (or the
            exception that failed it) are put.
        row: Its row once it is in a batch.
        cancelled: Set when the caller went away (the row leaves the batch at the next step).
        batched_at: ``time.monotonic()`` when a batch took it (its row was made), or ``None``.
    """

    request: GenerateRequest
    adapter: str | None
    prompt_ids: list[int]
    queue: asyncio.Queue[StepEvent | BaseException] = field(default_factory=asyncio.Queue)
    row: GenerationRow | None = None
    cancelled: bool = False
    batched_at: float | None = None


class GenerationRuns(EngineRuns[GenerationItem]):
    """Runs the model server's generation batches (see the module docstring).

    Args:
        engine: The engine (text-generation).
        call: ``await call(fn, *args)`` runs ``fn(*args)`` on the engine's worker thread.
        max_batch_size: Rows per batch, joined rows included.
        batch_wait_timeout_s: Longest wait for more requests after the first, seconds.
        max_concurrent_batches: Batches in flight at once (their steps interleave on the worker
            thread).
        on_step: Called after each decode step with its number of rows and of distinct
            adapters (the bare base counts as one).

    Attributes:
        batcher: Where requests are submitted (:class:`GenerationItem`).
        running: The engine batches decoding now.
        steps: Decode steps run (forward passes after the prefill of each batch).
        row_steps: Rows decoded over all those steps.
    """

    def __init__(
        self, *args: Any, on_step: Callable[[int, int], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_step = on_step
        # A list, compared by identity: an engine's batch need not be hashable.
        self.running: list[RunningBatch] = []
        self.steps = 0
        self.row_steps = 0

    def _row_for(self, item: GenerationItem) -> GenerationRow:
        req = item.request
        item.row = GenerationRow(
            prompt_ids=item.prompt_ids,
            slot=self.engine.slot(item.adapter),
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
            seed=req.seed,
        )
        item.batched_at = time.monotonic()
        return item.row

    async def run(self, items: list[GenerationItem]) -> None:
        """Decode one batch step by step; queued requests join it between steps.

        Continuous batching: while the batch has room (``max_batch_size``), requests waiting
        in the batcher are prefilled and merged into it at the next step boundary instead of
        waiting for the whole batch to finish.
        """
        live = [item for item in items if not item.cancelled]
        if not live:
            return
        batch = self.engine.start_generation([self._row_for(item) for item in live])
        self.running.append(batch)
        # Each join costs one extra forward pass (the newcomers' prefill), so rows join in
        # groups: once a quarter of the batch is free, or after JOIN_EVERY_STEPS steps with room.
        min_join = max(1, self.batcher.max_batch_size // 4)
        steps_waiting = 0
        try:
            while not batch.done:
                room = self.batcher.max_batch_size - len(batch.active)
                steps_waiting = steps_waiting + 1 if room > 0 else 0
                if (
                    room > 0
                    and (room >= min_join or steps_waiting >= JOIN_EVERY_STEPS)
                    and batch.can_join()
                ):
                    joining = [i for i in self.batcher.take_nowait(room) if not i.cancelled]
                    if joining:
                        steps_waiting = 0
                        live.extend(joining)
                        rows = [self._row_for(item) for item in joining]
                        try:
                            events = await self._call(batch.add, rows)
                        except Exception as exc:
                            self.fail(joining, exc)  # the running rows go on
                            events = []
                        self._dispatch(live, events)
                for item in live:
                    if item.cancelled and item.row is not None:
                        item.row.cancelled = True
                if batch.done:
                    break
                events = await self._call(batch.step)
                self.steps += 1
                self.row_steps += len(events)
                if self._on_step is not None and events:
                    self._on_step(len(events), len({live[e.row].adapter for e in events}))
                self._dispatch(live, events)
        finally:
            self.running = [b for b in self.running if b is not batch]

    @staticmethod
    def _dispatch(live: list[GenerationItem], events: list[StepEvent]) -> None:
        for event in events:
            live[event.row].queue.put_nowait(event)

    def fail(self, items: list[GenerationItem], exc: BaseException) -> None:
        """Fail the requests ``items`` still running with ``exc`` (a
        :class:`~lorafleet_serving.errors.ServingError` as it is, anything else wrapped)."""
        if not items:
            return
        logger.error("generation batch of %d failed: %s", len(items), exc)
        error = batch_error(exc, "generation")
        for item in items:
            if item.row is None or item.row.finish_reason is None:
                item.queue.put_nowait(error)
