"""The routes of lorafleet's OpenAI-compatible HTTP API, as methods of :class:`OpenAIRoutes`.

:class:`OpenAIRoutes` holds the backend (:class:`~.backend.ModelBackend`) and the served base
model's settings; :meth:`OpenAIRoutes.router` registers its methods on a FastAPI
``APIRouter``, which :func:`~.app.create_app` includes. Every route but ``/health`` is guarded:
any error escaping it is answered as an OpenAI error object (:mod:`.errors`).

``model`` in a body is the base model's served name or an adapter's name; the
``serve_multiplexed_model_id`` header (also spelled ``serve-multiplexed-model-id``) may name
the adapter instead (:func:`resolve_model`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..errors import InvalidRequestError, ServingError
from ..types import TEXT_CLASSIFICATION, TEXT_GENERATION, ClassifyRequest, GenerateRequest
from .backend import ModelBackend
from .errors import InternalServerError, ModelUnavailableError, TaskMismatchError, error_json
from .schemas import (
    ChatCompletionRequest,
    ClassifyHTTPRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    usage,
)
from .streaming import chat_events, completion_events, first_delta

logger = logging.getLogger(__name__)

#: Header naming the adapter, as Ray Serve's proxy spells it; the hyphenated form is accepted.
MULTIPLEXED_HEADERS = ("serve_multiplexed_model_id", "serve-multiplexed-model-id")


def _guarded(route: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Answer any error escaping a route as an OpenAI error object (never a crash, never HTML)."""

    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await route(*args, **kwargs)
        except ServingError as exc:
            return error_json(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("unexpected error in %s", route.__name__)
            return error_json(
                InternalServerError(
                    f"internal error while serving the request: {type(exc).__name__}"
                )
            )

    return wrapper


def _header_model(request: Request) -> str | None:
    for name in MULTIPLEXED_HEADERS:
        value = request.headers.get(name)
        if value:
            return value.strip()
    return None


def resolve_model(
    body_model: str | None, request: Request, served_name: str
) -> tuple[str, str | None]:
    """Decide which model a request names.

    Args:
        body_model: The body's ``model`` field (may be ``None``).
        request: The HTTP request (for the ``serve_multiplexed_model_id`` header).
        served_name: The base model's served name.

    Returns:
        ``(name to echo in the answer, adapter name or None for the base model)``.

    Raises:
        InvalidRequestError: no model named anywhere, or the header and the body name two
            different adapters (``param="model"``).
    """
    header = _header_model(request)
    if header and body_model not in (None, "", served_name, header):
        raise InvalidRequestError(
            f"'model' is {body_model!r} but the serve_multiplexed_model_id header names "
            f"{header!r}; name one adapter",
            param="model",
        )
    name = header or body_model
    if not name:
        raise InvalidRequestError("missing required field 'model'", param="model")
    return name, (None if name == served_name else name)


def check_unicode(body: Any) -> None:
    """Refuse a request whose text holds a lone UTF-16 surrogate (``"\\ud800"`` in JSON).

    Such a string is not Unicode text: tokenizers, Ray and the JSON encoder of the answer all
    fail on it, so it is caught before anything else looks at the request.

    Args:
        body: The parsed request (a :mod:`.schemas` request model).

    Raises:
        InvalidRequestError: ``param`` names the field (``"messages[0].content"``).
    """
    param = body.lone_surrogate_field()
    if param is not None:
        raise InvalidRequestError(
            f"'{param}' holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its "
            "pair), which is not valid Unicode text",
            param=param,
        )


def check_prompt(prompt: str | list[int], param: str) -> None:
    """Refuse an empty prompt (blank text, no token ids) or negative token ids (``param``)."""
    if (isinstance(prompt, str) and not prompt.strip()) or (
        isinstance(prompt, list) and not prompt
    ):
        raise InvalidRequestError(f"'{param}' must not be empty", param=param)
    if isinstance(prompt, list) and any(t < 0 for t in prompt):
        raise InvalidRequestError(f"'{param}' token ids must be >= 0", param=param)


class OpenAIRoutes:
    """The API's routes over one backend (the route list is in :mod:`.app`).

    Args:
        backend: Executes requests (Ray ``Model`` deployment or an in-process model server).
        served_name: The base model's name in ``model`` fields and ``/v1/models``.
        task: ``"text-generation"`` or ``"text-classification"``; decides which routes answer.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        max_inputs_per_request: Most texts in one ``/v1/classify`` ``input`` or prompts in one
            ``/v1/completions`` ``prompt`` list.
        labels: Label names by id of a classification base (shown in ``/v1/models``).
    """

    def __init__(
        self,
        backend: ModelBackend,
        *,
        served_name: str,
        task: str,
        max_tokens_limit: int,
        max_inputs_per_request: int,
        labels: dict[str, str] | None,
    ) -> None:
        self.backend = backend
        self.served_name = served_name
        self.task = task
        self.max_tokens_limit = max_tokens_limit
        self.max_inputs_per_request = max_inputs_per_request
        self.labels = labels
        self.created = int(time.time())

    def router(self) -> APIRouter:
        """An ``APIRouter`` with every route registered (bound to this object)."""
        router = APIRouter()
        router.add_api_route("/health", self.health, methods=["GET"])
        router.add_api_route("/ready", self.ready, methods=["GET"])
        router.add_api_route("/stats", self.stats, methods=["GET"])
        router.add_api_route("/v1/models", self.list_models, methods=["GET"])
        router.add_api_route("/v1/completions", self.completions, methods=["POST"])
        router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        router.add_api_route("/v1/classify", self.classify, methods=["POST"])
        return router

    # ----------------------------------------------------------------- request checks

    def _check_count(self, count: int, param: str) -> None:
        if count > self.max_inputs_per_request:
            raise InvalidRequestError(
                f"'{param}' holds {count} items, above this server's limit of "
                f"{self.max_inputs_per_request} per request",
                param=param,
            )

    def _require_task(self, route_task: str, route: str) -> None:
        if self.task != route_task:
            hint = (
                "use POST /v1/classify"
                if self.task == TEXT_CLASSIFICATION
                else "use POST /v1/completions or /v1/chat/completions"
            )
            raise TaskMismatchError(
                f"{route} needs a {route_task} model, but {self.served_name!r} is a {self.task} "
                f"model; {hint}",
                param="model",
            )

    def _check_max_tokens(self, value: int, param: str) -> None:
        if value > self.max_tokens_limit:
            raise InvalidRequestError(
                f"'{param}' is {value}, above this server's limit of {self.max_tokens_limit}",
                param=param,
            )

    # ----------------------------------------------------------------- routes

    async def health(self) -> dict[str, str]:
        """Liveness: the HTTP server answers."""
        return {"status": "ok"}

    @_guarded
    async def ready(self) -> Any:
        """Readiness: the base model is loaded and a model replica answers."""
        if await self.backend.ready():
            return {"status": "ready", "model": self.served_name, "task": self.task}
        raise ModelUnavailableError(f"model {self.served_name!r} is not loaded yet")

    @_guarded
    async def stats(self) -> Any:
        """Operational facts of the model replica that answers (pid, adapters, counters)."""
        return await self.backend.replica_info()

    @_guarded
    async def list_models(self) -> Any:
        """The base model and every registered adapter (``parent`` = base)."""
        cards = [
            ModelCard(
                id=self.served_name,
                created=self.created,
                root=self.served_name,
                task=self.task,
                labels={str(k): str(v) for k, v in self.labels.items()} if self.labels else None,
            )
        ]
        for name, meta in sorted((await self.backend.registered_adapters()).items()):
            meta = meta or {}
            adapter_labels = meta.get("labels")
            cards.append(
                ModelCard(
                    id=name,
                    created=self.created,
                    parent=self.served_name,
                    root=self.served_name,
                    task=self.task,
                    rank=meta.get("rank"),
                    labels={str(k): str(v) for k, v in adapter_labels.items()}
                    if isinstance(adapter_labels, dict)
                    else None,
                )
            )
        return ModelList(data=cards).model_dump()

    @_guarded
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        """OpenAI Completions: one choice per prompt, or a stream for a single prompt."""
        check_unicode(body)
        self._require_task(TEXT_GENERATION, "/v1/completions")
        model, adapter = resolve_model(body.model, request, self.served_name)
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        self._check_max_tokens(max_tokens, "max_tokens")
        prompts = body.prompts()
        if not prompts:
            raise InvalidRequestError("'prompt' must not be empty", param="prompt")
        self._check_count(len(prompts), "prompt")
        for i, prompt in enumerate(prompts):
            check_prompt(prompt, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        reqs = [
            GenerateRequest(
                prompt=p,
                adapter=adapter,
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                stop=body.stop_list(),
                seed=body.seed,
            )
            for p in prompts
        ]
        rid = f"cmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if body.stream:
            if len(reqs) != 1:
                raise InvalidRequestError(
                    "stream=true takes a single prompt, got a list of prompts", param="prompt"
                )
            first, it = await first_delta(self.backend.generate_stream(reqs[0]))
            return StreamingResponse(
                completion_events(first, it, rid, now, model, body.include_usage()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        # A list of prompts is one call: the replica takes its prompts round-robin with other
        # requests, and Serve counts it as one ongoing request, not len(prompts).
        results = (
            await self.backend.generate_many(reqs)
            if len(reqs) > 1
            else [await self.backend.generate(reqs[0])]
        )
        return {
            "id": rid,
            "object": "text_completion",
            "created": now,
            "model": model,
            "choices": [
                {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                for i, r in enumerate(results)
            ],
            "usage": usage(
                sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
            ),
        }

    @_guarded
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        """OpenAI Chat Completions over the tokenizer's chat template."""
        check_unicode(body)
        self._require_task(TEXT_GENERATION, "/v1/chat/completions")
        model, adapter = resolve_model(body.model, request, self.served_name)
        max_tokens, param = body.token_budget(self.max_tokens_limit)
        if param is not None:
            self._check_max_tokens(max_tokens, param)
        messages: list[dict[str, Any]] = []
        for msg in body.messages:
            entry: dict[str, Any] = {"role": msg.role, "content": msg.text()}
            if msg.name:
                entry["name"] = msg.name
            messages.append(entry)
        if not any(m["content"].strip() for m in messages):
            raise InvalidRequestError("all messages have empty content", param="messages")
        req = GenerateRequest(
            prompt="",  # rendered from ``messages`` where the tokenizer lives
            adapter=adapter,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_list(),
            seed=body.seed,
        )
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if body.stream:
            first, it = await first_delta(self.backend.generate_stream(req, messages))
            return StreamingResponse(
                chat_events(first, it, rid, now, model, body.include_usage()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        result = await self.backend.generate(req, messages)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage(result.prompt_tokens, result.completion_tokens),
        }

    @_guarded
    async def classify(self, body: ClassifyHTTPRequest, request: Request) -> Any:
        """Classify texts with an adapter's own head and label names (or the base's)."""
        check_unicode(body)
        self._require_task(TEXT_CLASSIFICATION, "/v1/classify")
        model, adapter = resolve_model(body.model, request, self.served_name)
        texts = body.texts()
        if not texts:
            raise InvalidRequestError("'input' must not be empty", param="input")
        self._check_count(len(texts), "input")
        for i, text in enumerate(texts):
            if not text.strip():
                param = "input" if isinstance(body.input, str) else f"input[{i}]"
                raise InvalidRequestError(f"'{param}' must not be empty", param=param)
        result = await self.backend.classify(ClassifyRequest(texts=texts, adapter=adapter))
        return {
            "id": f"cls-{uuid.uuid4().hex}",
            "object": "classification",
            "created": int(time.time()),
            "model": model,
            "data": [
                {
                    "index": i,
                    "label": result.labels[i],
                    "scores": result.scores[i],
                    "logits": result.logits[i],
                }
                for i in range(len(texts))
            ],
            "usage": usage(result.prompt_tokens, 0),
        }
