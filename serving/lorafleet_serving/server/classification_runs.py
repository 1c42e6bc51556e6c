"""Classification batches of the model server, run in fair-share passes.

:class:`ClassificationRuns` owns the classification :class:`~.batcher.MixedBatcher` and runs
each batch in passes of at most ``max_batch_size`` texts on the engine's worker thread:
:func:`next_pass` takes one text per request in turn (round-robin), and requests queued
meanwhile join at the next pass, so a request with hundreds of texts delays a one-text request
by one pass, not by all of its own. Each request is a :class:`ClassifyItem` collecting its
texts' outputs; :func:`classify_result` turns them into the
:class:`~lorafleet_serving.types.ClassifyResult` (arg-max label, softmax scores, logits).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..types import ClassifyResult
from .engine_runs import EngineRuns, batch_error

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class ClassifyItem:
    """One classification request in the model server's queue.

    Attributes:
        features: Per text, its tokenized features (from ``Engine.encode_classification``).
        adapter: Adapter name, ``None`` for the bare base.
        future: Resolved with the :class:`~lorafleet_serving.types.ClassifyResult`.
        prompt_tokens: Tokens over all its texts.
        done: Texts classified so far (in order).
        outputs: Per classified text: (label names, logits).
    """

    features: list[dict[str, list[int]]]
    adapter: str | None
    future: asyncio.Future[ClassifyResult]
    prompt_tokens: int = 0
    done: int = 0
    outputs: list[tuple[list[str], list[float]]] = field(default_factory=list)


class ClassificationRuns(EngineRuns[ClassifyItem]):
    """Runs the model server's classification batches (see the module docstring).

    Args:
        engine: The engine (``classify_encoded`` runs through ``call``).
        call: ``await call(fn, *args)`` runs ``fn(*args)`` on the engine's worker thread.
        max_batch_size: Requests per batch; a pass takes at most ``max(max_batch_size, 16)``
            texts.
        batch_wait_timeout_s: Longest wait for more requests after the first, seconds.
        max_concurrent_batches: Batches in flight at once.

    Attributes:
        batcher: Where requests are submitted (:class:`ClassifyItem`).
    """

    async def run(self, items: list[ClassifyItem]) -> None:
        """Classify a batch in passes of at most ``max_batch_size`` texts (at least 16).

        Each pass takes texts round-robin from the requests still running, and requests queued
        meanwhile join at the next pass, so no request waits for more than one pass of
        another's texts. A failing pass fails the requests still running, not the server.
        """
        size = max(self.batcher.max_batch_size, 16)
        pending: deque[ClassifyItem] = deque(items)
        try:
            while True:
                pending.extend(self.batcher.take_nowait(size))
                for item in [i for i in pending if i.future.done()]:  # cancelled by the caller
                    pending.remove(item)
                if not pending:
                    return
                picked = next_pass(pending, size)
                outputs = await self._call(
                    self.engine.classify_encoded,
                    [item.features[i] for item, i in picked],
                    [item.adapter for item, _ in picked],
                )
                for (item, _), output in zip(picked, outputs, strict=True):
                    item.outputs.append(output)
                    item.done += 1
                for item in [i for i in pending if i.done == len(i.features)]:
                    pending.remove(item)
                    if not item.future.done():
                        item.future.set_result(classify_result(item))
        except Exception as exc:
            self.fail(list(pending), exc)

    def fail(self, items: list[ClassifyItem], exc: BaseException) -> None:
        """Fail the requests ``items`` that have no answer yet with ``exc`` (a
        :class:`~lorafleet_serving.errors.ServingError` as it is, anything else wrapped)."""
        if not items:
            return
        logger.error("classification batch of %d failed: %s", len(items), exc)
        error = batch_error(exc, "classification")
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)


def next_pass(pending: deque[ClassifyItem], size: int) -> list[tuple[ClassifyItem, int]]:
    """Up to ``size`` (item, text index) pairs, one text per request in turn (round-robin).

    Args:
        pending: Requests with texts left, in order of arrival.
        size: Most texts in the pass.

    Returns:
        The pairs, in the order they were taken.
    """
    taken: dict[int, int] = {}
    picked: list[tuple[ClassifyItem, int]] = []
    progress = True
    while len(picked) < size and progress:
        progress = False
        for item in pending:
            index = item.done + taken.get(id(item), 0)
            if index < len(item.features) and len(picked) < size:
                picked.append((item, index))
                taken[id(item)] = taken.get(id(item), 0) + 1
                progress = True
    return picked


def classify_result(item: ClassifyItem) -> ClassifyResult:
    """The result of a request whose texts are all classified."""
    labels, scores, logits = [], [], []
    for names, values in item.outputs:
        best = max(range(len(values)), key=values.__getitem__)
        labels.append(names[best])
        scores.append(softmax_scores(names, values))
        logits.append(values)
    return ClassifyResult(
        labels=labels, scores=scores, logits=logits, prompt_tokens=item.prompt_tokens
    )


def softmax_scores(labels: Sequence[str], logits: Sequence[float]) -> dict[str, float]:
    """Softmax of ``logits`` keyed by label name.

    Args:
        labels: Label names (same length as ``logits``).
        logits: Raw scores.

    Returns:
        ``{label: probability}`` summing to 1.
    """
    m = max(logits)
    exps = [math.exp(v - m) for v in logits]
    total = sum(exps)
    return {label: e / total for label, e in zip(labels, exps, strict=True)}
