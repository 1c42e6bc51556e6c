"""The model server facade: one base model, many LoRA adapters, mixed batches, asyncio API.

The Ray Serve model deployment wraps one :class:`ModelServer` per replica; nothing here imports
Ray or torch, so the same object serves tests, benchmarks and local tools. It ties together

- an engine given to it (:class:`~lorafleet_serving.engine.protocol.Engine`; torch work, run on
  ONE worker thread so the event loop stays responsive and the model is never used by two
  threads at once; tokenizing prompts, chat templates and classify inputs runs on separate
  tokenizer threads, so a long input neither blocks the event loop nor holds the torch thread);
  :func:`~.factory.build_model_server` builds one over the transformers engine,
- :class:`~.adapter_cache.AdapterCache` (registry from ``user_config``, LRU residency,
  single-flight loads, pinning while requests use an adapter),
- two :class:`~.batcher.MixedBatcher` (generation, classification) that put requests for
  different adapters into one batch.

Generation batches decode step by step; every step's tokens go to per-request
``asyncio.Queue`` objects, so streaming works while batching (:mod:`.generation_runs`). Errors concern one request only:
validation errors are raised before it is queued; a failed adapter load fails the requests for
that adapter; a failing batch fails the requests in that batch, never the server.

Fair share: classification batches run in passes of at most ``max_batch_size`` texts, taken
round-robin from the requests in the batch, and requests that arrive meanwhile join at the next
pass - a request with hundreds of texts delays a one-text request by one pass, not by all of
its own (:mod:`.classification_runs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..engine.protocol import Engine
from ..errors import InvalidRequestError, ServingError
from ..types import (
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    GenerateResult,
    StreamDelta,
)
from .activity import AdapterActivity
from .adapter_cache import AdapterCache, AdapterSpec, parse_user_config
from .chat import render_chat_prompt
from .classification_runs import ClassificationRuns, ClassifyItem
from .generation_runs import GenerationItem, GenerationRuns
from .metrics import BASE_LABEL, UNKNOWN_LABEL, DiscardingFactory, MetricsFactory, ServingMetrics
from .requests import (
    adapter_name,
    check_classify_texts,
    check_server_limits,
    checked_generate_request,
)

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: The status recorded for a request whose caller went away before it finished (nginx's
#: "client closed request"; counted as 4xx).
CLIENT_CLOSED = 499

#: Threads that tokenize. The tokenizers library releases the GIL while it works, so a long
#: input costs CPU time on one of these threads, not latency on the event loop; two let a short
#: input be tokenized while a long one is.
TOKENIZER_THREADS = 2


class _TokenTiming:
    """When a request arrived and its tokens came, ``time.monotonic()`` seconds."""

    def __init__(self, arrival: float) -> None:
        self.arrival = arrival
        self.first: float | None = None  # seconds from arrival to the first token
        self.gaps: list[float] = []  # seconds between consecutive tokens
        self._last: float | None = None

    def token(self, now: float) -> None:
        """A token came at ``now``."""
        if self._last is None:
            self.first = now - self.arrival
        else:
            self.gaps.append(now - self._last)
        self._last = now


def status_of(exc: BaseException) -> int:
    """The HTTP status a request that ended with ``exc`` is counted with: a serving error's
    own, :data:`CLIENT_CLOSED` when its caller went away (cancelled, generator closed), else
    500."""
    if isinstance(exc, ServingError):
        return exc.status_code
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return CLIENT_CLOSED
    return 500


def adapter_or_none(name: Any) -> str | None:
    """The adapter a request names (``None`` for the bare base; ``""``, never registered,
    for a name that is not a non-empty string), without raising."""
    try:
        return adapter_name(name)
    except ServingError:
        return ""  # never registered: counted as unknown


class ModelServer:
    """Serve one base model and its LoRA adapters with mixed-adapter batching.

    Args:
        engine: The engine holding the base model (:func:`~.factory.build_model_server`
            builds the transformers one); it must have ``max_adapters`` adapter slots.
        max_adapters: Adapters resident at once (LRU beyond that).
        max_batch_size: Requests per batch.
        batch_wait_timeout_s: Longest wait for more requests after the first, seconds.
        max_tokens_limit: Upper bound on ``max_tokens`` per request.
        max_concurrent_batches: Batches in flight at once (their steps interleave on the
            worker thread). With 1, requests arriving while a generation batch runs join it
            between steps (continuous batching) as long as it has room.
        metrics_factory: Builds the instruments requests, tokens, adapter loads and decode
            steps are recorded in (``ray.serve.metrics`` in a Serve replica; see
            :mod:`.metrics`); default: recorded nowhere.

    Raises:
        InvalidRequestError: Bad limits (``param`` names the argument).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_adapters: int = 8,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.005,
        max_tokens_limit: int = 2048,
        max_concurrent_batches: int = 1,
        metrics_factory: MetricsFactory | None = None,
    ) -> None:
        check_server_limits(max_adapters, max_batch_size, max_tokens_limit, batch_wait_timeout_s)
        self.engine = engine
        self.max_tokens_limit = max_tokens_limit
        self._tensor_bytes = self.engine.tensor_bytes()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafleet-engine")
        self._tokenizer_pool = ThreadPoolExecutor(
            max_workers=TOKENIZER_THREADS, thread_name_prefix="lorafleet-tokenize"
        )
        # A fast tokenizer changes its truncation/padding settings on the first call that
        # asks for other ones; done once here, every later call only reads, so the tokenizer
        # threads and the torch thread (decoding) can share it.
        if engine.task == "text-classification":
            self.engine.encode_classification(["warm up"])
        else:
            self.engine.encode_prompt("warm up")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cache = AdapterCache(self._load_adapter, self._unload_adapter, max_adapters)
        self.metrics = ServingMetrics(
            metrics_factory or DiscardingFactory(), self.cache.is_registered
        )
        self._adapter_bytes: dict[str, int] = {}
        self.activity = AdapterActivity()
        self._generation = GenerationRuns(
            engine,
            self._call,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches,
            on_step=self.metrics.step,
        )
        self._classification = ClassificationRuns(
            engine,
            self._call,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches,
        )
        self._gen_batcher = self._generation.batcher
        self._cls_batcher = self._classification.batcher
        self._background: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.failed_requests = 0
        #: Called on the event loop with an adapter's name each time one is unloaded (evicted
        #: by the cache, or removed from the registry), e.g. to stop routing it here.
        self.unload_listeners: list[Callable[[str], None]] = []

    # ----------------------------------------------------------------- properties

    @property
    def task(self) -> str:
        """``"text-generation"`` or ``"text-classification"``."""
        return self.engine.task

    @property
    def tokenizer(self) -> Any:
        """The base's tokenizer (``apply_chat_template`` for chat requests)."""
        return self.engine.tokenizer

    @property
    def labels(self) -> list[str] | None:
        """Label names of the base's classification head (``None`` for generation)."""
        return self.engine.base_labels

    def adapter_labels(self, name: str) -> list[str] | None:
        """Label names an adapter answers with, if it is resident (else ``None``)."""
        return self.engine.adapter_labels(name)

    # ----------------------------------------------------------------- worker thread

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        self._loop = loop
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _tokenize(self, fn: Callable[..., R], *args: Any) -> R:
        """Run tokenizer work ``fn(*args)`` on a tokenizer thread (not the torch thread)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        return await loop.run_in_executor(self._tokenizer_pool, functools.partial(fn, *args))

    def _measured(self, fn: Callable[..., R], *args: Any) -> R:
        try:
            return fn(*args)
        finally:
            self._tensor_bytes = self.engine.tensor_bytes()

    async def _load_adapter(self, spec: AdapterSpec) -> None:
        started = time.monotonic()
        try:
            info = await self._call(
                self._measured, self.engine.load_adapter, spec.name, spec.path, spec.labels
            )
        except Exception:
            self.metrics.adapter_load_failed(spec.name)
            raise
        seconds = time.monotonic() - started
        self.metrics.adapter_loaded(spec.name, seconds)
        self.activity.loaded(spec.name, seconds)
        self._adapter_bytes[spec.name] = int(getattr(info, "nbytes", 0))
        self.metrics.memory(self._tensor_bytes, sum(self._adapter_bytes.values()))

    async def _unload_adapter(self, name: str) -> None:
        await self._call(self._measured, self.engine.unload_adapter, name)
        self._adapter_bytes.pop(name, None)
        self.metrics.adapter_unloaded(name)
        self.metrics.memory(self._tensor_bytes, sum(self._adapter_bytes.values()))
        for listener in list(self.unload_listeners):
            listener(name)

    # ----------------------------------------------------------------- registry

    def apply_user_config(self, user_config: dict[str, Any]) -> None:
        """Apply a new adapter registry (Ray Serve ``reconfigure``), synchronously.

        Added adapters are registered and load on first use; removed ones (or ones whose path
        changed) are evicted, freeing their memory - right away if idle, else when their
        in-flight requests finish; meanwhile new requests for them get ``UnknownModelError``.
        Safe to call from the server's event loop thread (evictions run as tasks), from another
        thread while the loop runs (waits for completion), or before any request.

        Args:
            user_config: See :func:`~.adapter_cache.parse_user_config`.

        Raises:
            InvalidRequestError: Invalid ``user_config`` (nothing is changed).
        """
        max_adapters, specs = parse_user_config(user_config)
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None and loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self.reconfigure(user_config), loop).result()
            return
        stale = self.cache.set_registry(specs)  # takes effect for the next request
        if running is not None:
            self._loop = running
            task = running.create_task(self._finish_reconfigure(max_adapters, stale))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        # No event loop has served requests here: nothing is resident, only bookkeeping.
        if max_adapters is not None:
            self.cache.max_adapters = max_adapters
            self.engine.set_capacity(max_adapters)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``user_config`` and wait until removed adapters are evicted.

        Args:
            user_config: See :func:`~.adapter_cache.parse_user_config`.

        Raises:
            InvalidRequestError: Invalid ``user_config`` (nothing is changed).
        """
        max_adapters, specs = parse_user_config(user_config)
        self._loop = asyncio.get_running_loop()
        stale = self.cache.set_registry(specs)
        await self._finish_reconfigure(max_adapters, stale)

    async def _finish_reconfigure(self, max_adapters: int | None, stale: list[str]) -> None:
        if max_adapters is not None and max_adapters != self.cache.max_adapters:
            if max_adapters > self.cache.max_adapters:
                await self._call(self.engine.set_capacity, max_adapters)
                self.cache.max_adapters = max_adapters
            else:
                await self.cache.shrink_to(max_adapters)
                highest = self.engine.highest_slot()
                await self._call(self.engine.set_capacity, max(max_adapters, highest))
        for name in stale:
            await self.cache.evict(name)
        self.activity.forget({*self.cache.registry, BASE_LABEL, UNKNOWN_LABEL})

    def registered_adapters(self) -> dict[str, dict[str, Any]]:
        """The registry: adapter name -> ``{"path", "rank"?, "labels"?, ...}``."""
        return {name: spec.as_dict() for name, spec in self.cache.registry.items()}

    def resident_adapters(self) -> list[str]:
        """Adapters loaded right now, least recently used first."""
        return self.cache.resident()

    async def ensure_adapter(self, name: str) -> None:
        """Load adapter ``name`` if it is not resident (``@serve.multiplexed`` hook).

        Args:
            name: Registered adapter name (``"__base__"``/``None``: nothing to do).

        Raises:
            UnknownModelError: Not registered.
            AdapterLoadError: Its files failed to load (the reason is in the message).
        """
        self._loop = asyncio.get_running_loop()
        adapter = adapter_name(name)
        if adapter is not None:
            await self.cache.ensure(adapter)

    async def evict(self, name: str) -> None:
        """Unload adapter ``name`` (after its in-flight requests) and free its memory.

        It stays registered and reloads on the next request. Unknown or not resident: no-op.
        """
        self._loop = asyncio.get_running_loop()
        await self.cache.evict(name)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and tests.

        Returns:
            ``loads`` (per adapter), ``load_failures`` (per adapter), ``evictions``,
            ``batches``, ``mean_batch_size``, ``generation_batches``,
            ``classification_batches``, ``joined`` (requests that joined a running generation
            batch), ``generation_steps``, ``mean_rows_per_step`` (decode rows per forward pass),
            ``requests``, ``failed_requests``, ``resident``, ``registered``, ``tensor_bytes``,
            ``requests_per_minute`` (per adapter label, last 60 s) and ``last_load_seconds``
            (per adapter).
        """
        gen, cls = self._gen_batcher, self._cls_batcher
        batches = gen.batches + cls.batches
        return {
            "loads": dict(self.cache.loads),
            "load_failures": dict(self.cache.load_failures),
            "evictions": self.cache.evictions,
            "batches": batches,
            "mean_batch_size": (gen.items + cls.items) / batches if batches else 0.0,
            "generation_batches": gen.batches,
            "classification_batches": cls.batches,
            "joined": gen.joined,
            "generation_steps": self._generation.steps,
            "mean_rows_per_step": (
                self._generation.row_steps / self._generation.steps
                if self._generation.steps
                else 0.0
            ),
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "resident": self.cache.resident(),
            "registered": len(self.cache.registry),
            # Measured on the worker thread after each load/unload: walking the model here
            # could race with peft injecting modules on that thread.
            "tensor_bytes": self._tensor_bytes,
            "requests_per_minute": self.activity.requests_per_minute(),
            "last_load_seconds": self.activity.last_load_seconds(),
        }

    @contextlib.asynccontextmanager
    async def _lease(self, adapter: str | None) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        if adapter is None:
            yield
            return
        async with self.cache.lease(adapter):
            yield

    # ----------------------------------------------------------------- generation

    async def _prepare_generation(self, req: GenerateRequest) -> GenerationItem:
        if self.task != "text-generation":
            raise InvalidRequestError(
                f"this model serves {self.task}; completions are not available", param="model"
            )
        req = checked_generate_request(req, self.max_tokens_limit)
        adapter = adapter_name(req.adapter)
        if isinstance(req.prompt, str):
            self.engine.check_prompt_chars(len(req.prompt))  # before a thread hop
        prompt_ids = await self._tokenize(self.engine.encode_prompt, req.prompt)
        limit = self.engine.max_positions
        if limit is not None and len(prompt_ids) + req.max_tokens > limit:
            raise InvalidRequestError(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({req.max_tokens}) exceeds "
                f"the model's context of {limit} tokens",
                param="max_tokens",
            )
        return GenerationItem(request=req, adapter=adapter, prompt_ids=prompt_ids)

    async def render_chat(self, messages: Sequence[dict[str, Any]]) -> str | list[int]:
        """The prompt the base's chat template makes of ``messages``, rendered off the loop.

        Args:
            messages: ``[{"role", "content", "name"?}, ...]`` (see
                :func:`~.chat.render_chat_prompt`).

        Returns:
            Token ids (chat template) or prompt text (no template).

        Raises:
            InvalidRequestError: The contents together are longer than can fit in the context
                (refused before rendering), or the template refused them (``param="messages"``).
        """
        chars = sum(len(m.get("content") or "") for m in messages)
        self.engine.check_prompt_chars(chars, "messages")
        return await self._tokenize(render_chat_prompt, self.tokenizer, list(messages))

    async def generate_stream(
        self, req: GenerateRequest, *, group: Any = None, count: bool = True
    ) -> AsyncIterator[StreamDelta]:
        """Generate, yielding one :class:`StreamDelta` per token (the last one is final).

        Errors (invalid request, unknown adapter, adapter load failure) are raised by the first
        ``__anext__()``, before any delta, so the caller can still answer with an error status.
        Closing the iterator early cancels the request (its row leaves the batch).

        Args:
            req: The request.
            group: Requests of one group (a hashable key) share one turn when queued requests
                are taken into batches round-robin; ``None``: a group of its own.
            count: Count it as a request in the metrics and stats (``False``: a prompt of a
                multi-prompt request, which :meth:`generate_many` counts once).

        Yields:
            Deltas; the last has ``finish_reason``, ``prompt_tokens`` and ``completion_tokens``.

        Raises:
            InvalidRequestError, UnknownModelError, AdapterLoadError, ServingError.
        """
        self.requests += count
        arrival = time.monotonic()
        timing = _TokenTiming(arrival)
        status = CLIENT_CLOSED
        item: GenerationItem | None = None
        try:
            item = await self._prepare_generation(req)
            async with self._lease(item.adapter):
                self._gen_batcher.submit(item, group)
                while True:
                    event = await item.queue.get()
                    if isinstance(event, BaseException):
                        raise event
                    assert item.row is not None
                    timing.token(time.monotonic())
                    if event.finish_reason is not None:
                        status = 200
                        yield StreamDelta(
                            text=event.text,
                            token_id=event.token_id,
                            finish_reason=event.finish_reason,
                            prompt_tokens=len(item.prompt_ids),
                            completion_tokens=len(item.row.token_ids),
                        )
                        return
                    yield StreamDelta(text=event.text, token_id=event.token_id, finish_reason=None)
        except BaseException as exc:
            if status != 200:  # closed after its last delta: it was answered
                status = status_of(exc)
            self.failed_requests += count and isinstance(exc, Exception)
            raise
        finally:
            if item is not None and status != 200:
                item.cancelled = True
                if item.row is not None:
                    item.row.cancelled = True
            self._record_generation(req, item, status, timing, count=count)

    def count_refused(self, adapter: str | None, status: int) -> None:
        """Count a request that ended before it reached this server (in the Ray Serve
        deployment: its adapter is unknown or failed to load, or its caller went away while it
        waited for the load), as such a request would be counted here.

        Args:
            adapter: The adapter it named.
            status: The HTTP status it ended with (:data:`CLIENT_CLOSED` for a caller gone).
        """
        self.requests += 1
        self.failed_requests += status != CLIENT_CLOSED
        self._count(adapter, status, 0, 0)

    def _count(self, adapter: str | None, status: int, prompt: int, generated: int) -> None:
        """Record one finished request in the metrics and the adapter's activity."""
        self.activity.request(self.metrics.label(adapter))
        self.metrics.request_finished(adapter, status, prompt, generated)

    def _record_generation(
        self,
        req: GenerateRequest,
        item: GenerationItem | None,
        status: int,
        timing: _TokenTiming,
        *,
        count: bool = True,
    ) -> None:
        """Record a finished generation's timing and, with ``count``, its outcome and tokens."""
        adapter = item.adapter if item is not None else adapter_or_none(req.adapter)
        row = item.row if item is not None else None
        if count:
            prompt = len(item.prompt_ids) if item is not None and row is not None else 0
            self._count(adapter, status, prompt, len(row.token_ids) if row is not None else 0)
        if item is not None and item.batched_at is not None:
            self.metrics.waited(adapter, item.batched_at - timing.arrival)
        self.metrics.token_times(adapter, timing.first, timing.gaps)

    async def generate_many(self, reqs: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Generate one completion per request: the prompts of one HTTP request.

        They are batched like any requests but share one turn in the round-robin of queued
        requests, so many prompts in one request do not delay other requests more than one
        prompt would. The first error cancels the others and is raised.

        Args:
            reqs: The requests, in order.

        Returns:
            One :class:`GenerateResult` per request, in order.

        Raises:
            InvalidRequestError, UnknownModelError, AdapterLoadError, ServingError: As
                :meth:`generate`, from the first request that failed.
        """
        group = object()
        tasks = [asyncio.ensure_future(self.generate(r, group=group, count=False)) for r in reqs]
        status, prompt_tokens, generated = CLIENT_CLOSED, 0, 0
        try:
            results = list(await asyncio.gather(*tasks))
            status = 200
            prompt_tokens = sum(r.prompt_tokens for r in results)
            generated = sum(r.completion_tokens for r in results)
            return results
        except BaseException as exc:
            status = status_of(exc)
            raise
        finally:
            for task in tasks:
                task.cancel()
            # One HTTP request: counted once, with the first failure's status.
            adapter = adapter_or_none(reqs[0].adapter) if reqs else None
            self.requests += 1
            self.failed_requests += status not in (200, CLIENT_CLOSED)
            self._count(adapter, status, prompt_tokens, generated)

    async def generate(
        self, req: GenerateRequest, *, group: Any = None, count: bool = True
    ) -> GenerateResult:
        """Generate a completion for one request (batched with concurrent requests).

        Args:
            req: The request.
            group: See :meth:`generate_stream`.
            count: See :meth:`generate_stream`.

        Returns:
            The :class:`GenerateResult`.

        Raises:
            InvalidRequestError: A field is out of range (``param`` names it).
            UnknownModelError: ``req.adapter`` is not registered.
            AdapterLoadError: The adapter's files failed to load.
            ServingError: The batch failed.
        """
        text_parts: list[str] = []
        token_ids: list[int] = []
        final: StreamDelta | None = None
        async for delta in self.generate_stream(req, group=group, count=count):
            text_parts.append(delta.text)
            if delta.token_id is not None:
                token_ids.append(delta.token_id)
            final = delta
        assert final is not None and final.finish_reason is not None
        return GenerateResult(
            text="".join(text_parts),
            token_ids=token_ids,
            prompt_tokens=final.prompt_tokens or 0,
            completion_tokens=final.completion_tokens or len(token_ids),
            finish_reason=final.finish_reason,
        )

    # ----------------------------------------------------------------- classification

    async def classify(self, req: ClassifyRequest) -> ClassifyResult:
        """Classify texts with one adapter (batched with concurrent requests of any adapter).

        Args:
            req: The request.

        Returns:
            Labels, per-label softmax scores and logits per text (the adapter's own label set
            when it carries a head).

        Raises:
            InvalidRequestError: Wrong task, or ``texts`` empty / not a list of non-empty strings
                (``param="input"``).
            UnknownModelError: ``req.adapter`` is not registered.
            AdapterLoadError: The adapter's files failed to load.
        """
        self.requests += 1
        status, tokens = CLIENT_CLOSED, 0
        try:
            if self.task != "text-classification":
                raise InvalidRequestError(
                    f"this model serves {self.task}; classification is not available",
                    param="model",
                )
            texts = req.texts
            check_classify_texts(texts)
            adapter = adapter_name(req.adapter)
            loop = asyncio.get_running_loop()
            features = await self._tokenize(self.engine.encode_classification, list(texts))
            tokens = sum(len(f["input_ids"]) for f in features)
            async with self._lease(adapter):
                item = ClassifyItem(features, adapter, loop.create_future(), tokens)
                self._cls_batcher.submit(item)
                result = await item.future
            status = 200
            return result
        except BaseException as exc:
            status = status_of(exc)
            self.failed_requests += isinstance(exc, ServingError)
            raise
        finally:
            self._count(adapter_or_none(req.adapter), status, tokens if status == 200 else 0, 0)

    # ----------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Stop the batchers and the worker thread. The server cannot be used afterwards.

        Requests still queued (not yet in a batch) fail with a ``ServingError``.
        """
        await self._gen_batcher.close()
        await self._cls_batcher.close()
        closing = ServingError("the model server is shutting down")
        self._generation.fail(self._gen_batcher.take_nowait(2**31), closing)
        self._classification.fail(self._cls_batcher.take_nowait(2**31), closing)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._tokenizer_pool.shutdown(wait=True, cancel_futures=True)
