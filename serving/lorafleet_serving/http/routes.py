"""lorafleet's OpenAI-compatible HTTP API (FastAPI), independent of where the model runs.

:func:`create_app` builds the FastAPI application over a :class:`ModelBackend`:

- in a Ray Serve application the backend forwards to the ``Model`` deployment through a
  ``DeploymentHandle`` with the adapter as multiplexed model id (:mod:`.app`);
- in-process, :class:`ModelServerBackend` calls a :class:`~.model_server.ModelServer` directly
  (tests, single-process use).

Routes (reference with curl examples: ``docs/api.md``): ``GET /health``, ``GET /ready``,
``GET /stats`` (the answering model replica's pid, adapters and counters), ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events, https://html.spec.whatwg.org/multipage/server-sent-events.html,
ending in ``data: [DONE]``) and, for ``text-classification`` bases, ``POST /v1/classify``.

``model`` in a body is the base model's served name or an adapter's name; the
``serve_multiplexed_model_id`` header (also spelled ``serve-multiplexed-model-id``) may name
the adapter instead. Every error is an OpenAI error object
``{"error": {"message", "type", "code", "param"}}``: unknown model 404, invalid request 400
(``param`` names the field), adapter files that fail to load 503.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .body_limit import BodySizeLimit
from .errors import InvalidRequestError, ServingError
from .openai_schemas import (
    ChatCompletionRequest,
    ClassifyHTTPRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from .types import (
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    GenerateResult,
    StreamDelta,
)

logger = logging.getLogger(__name__)

#: Header naming the adapter, as Ray Serve's proxy spells it; the hyphenated form is accepted.
MULTIPLEXED_HEADERS = ("serve_multiplexed_model_id", "serve-multiplexed-model-id")
#: Default largest request body, bytes (``args.max_request_bytes``): room for 256 classify
#: texts of 16 KB or a prompt filling a 128k-token context, far below what hurts a replica.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024


class TaskMismatchError(InvalidRequestError):
    """The route does not fit the base model's task (e.g. classify on a generation base): 400."""

    code = "unsupported_task"


class ModelUnavailableError(ServingError):
    """No model replica could answer (starting, restarting or overloaded): HTTP 503."""

    status_code = 503
    error_type = "server_error"
    code = "model_unavailable"


class RequestTooLargeError(InvalidRequestError):
    """The request body is larger than the server's ``max_request_bytes``: HTTP 413."""

    status_code = 413
    code = "request_too_large"


class InternalServerError(ServingError):
    """An unexpected failure while serving a request: HTTP 500 (details in the server log)."""

    status_code = 500
    error_type = "server_error"
    code = "internal_error"


class ModelBackend(Protocol):
    """Where requests are executed. Methods raise :class:`~.errors.ServingError` subclasses."""

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


class ModelServerBackend:
    """:class:`ModelBackend` over an in-process :class:`~.model_server.ModelServer`.

    Args:
        server: The model server (already constructed: its base model is loaded).
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    async def _with_chat(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None
    ) -> GenerateRequest:
        if messages is None:
            return req
        return replace(req, prompt=await self.server.render_chat(messages))

    async def generate(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> GenerateResult:
        """See :meth:`ModelBackend.generate`."""
        return await self.server.generate(await self._with_chat(req, messages))

    async def generate_many(self, reqs: list[GenerateRequest]) -> list[GenerateResult]:
        """See :meth:`ModelBackend.generate_many`."""
        return await self.server.generate_many(reqs)

    async def generate_stream(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[StreamDelta]:
        """See :meth:`ModelBackend.generate_stream`."""
        async for delta in self.server.generate_stream(await self._with_chat(req, messages)):
            yield delta

    async def classify(self, req: ClassifyRequest) -> ClassifyResult:
        """See :meth:`ModelBackend.classify`."""
        return await self.server.classify(req)

    async def registered_adapters(self) -> dict[str, dict[str, Any]]:
        """See :meth:`ModelBackend.registered_adapters`."""
        return self.server.registered_adapters()

    async def ready(self) -> bool:
        """See :meth:`ModelBackend.ready`."""
        return self.server is not None

    async def replica_info(self) -> dict[str, Any]:
        """See :meth:`ModelBackend.replica_info` (this process; no multiplexing)."""
        return {
            "pid": os.getpid(),
            "task": self.server.task,
            "registered": sorted(self.server.registered_adapters()),
            "resident": list(self.server.resident_adapters()),
            "multiplexed": [],
            "stats": self.server.stats(),
        }


# ----------------------------------------------------------------------------- errors


def error_json(exc: ServingError) -> JSONResponse:
    """The OpenAI-style JSON answer for a :class:`~.errors.ServingError`.

    Args:
        exc: The error.

    Returns:
        A ``JSONResponse`` with ``exc.status_code`` and ``{"error": {...}}``.
    """
    body = ErrorResponse.of(exc.message, exc.error_type, exc.code, exc.param)
    return JSONResponse(body, status_code=exc.status_code)


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif isinstance(part, str) and ("[" in part or part in _TYPE_TAGS):
            continue  # pydantic's union-member tags such as "list[int]"
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or None


def validation_error(exc: RequestValidationError) -> ServingError:
    """Turn FastAPI's request validation error into a 400 naming the field at fault.

    Args:
        exc: The validation error (pydantic error list in ``exc.errors()``).

    Returns:
        An :class:`~.errors.InvalidRequestError` whose ``param`` is the dotted field path
        (``"messages[0].role"``) and whose message says what is wrong with it.
    """
    errors = list(exc.errors())
    if not errors:
        return InvalidRequestError("invalid request body")
    first = errors[0]
    kind = first.get("type", "")
    loc = tuple(first.get("loc", ()))
    if kind == "json_invalid":
        ctx = first.get("ctx") or {}
        return InvalidRequestError(
            f"request body is not valid JSON: {ctx.get('error', first.get('msg', ''))}"
        )
    param = _param_of(loc)
    if param is None:
        if kind == "missing":
            return InvalidRequestError("request body is missing: send a JSON object")
        return InvalidRequestError(f"request body must be a JSON object: {first.get('msg')}")
    if kind == "missing":
        return InvalidRequestError(f"missing required field '{param}'", param=param)
    same = [e for e in errors if _param_of(tuple(e.get("loc", ()))) == param]
    msgs = list(dict.fromkeys(str(e.get("msg", "")).removeprefix("Value error, ") for e in same))
    got = first.get("input")
    shown = json.dumps(got, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if len(msgs) == 1:
        detail = msgs[0]
    else:  # a union: one message per accepted type
        detail = "expected " + " or ".join(m.removeprefix("Input should be ") for m in msgs)
    return InvalidRequestError(f"invalid value for '{param}': {detail} (got {shown})", param=param)


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


# ----------------------------------------------------------------------------- helpers


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
        body: The parsed request (an ``openai_schemas`` request model).

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


def _check_prompt(prompt: str | list[int], param: str) -> None:
    if (isinstance(prompt, str) and not prompt.strip()) or (
        isinstance(prompt, list) and not prompt
    ):
        raise InvalidRequestError(f"'{param}' must not be empty", param=param)
    if isinstance(prompt, list) and any(t < 0 for t in prompt):
        raise InvalidRequestError(f"'{param}' token ids must be >= 0", param=param)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "total_tokens": int(prompt_tokens) + int(completion_tokens),
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # the stream already failed; nothing more to report
            logger.debug("closing a response stream failed", exc_info=True)


async def _first_delta(
    stream: AsyncIterator[StreamDelta],
) -> tuple[StreamDelta | None, AsyncIterator[StreamDelta]]:
    """Await the first delta so errors (404, 400, 503) become a proper HTTP status."""
    it = stream.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return None, it
    except BaseException:
        await _aclose(it)
        raise
    return first, it


def _stream_error_event(exc: BaseException) -> str:
    if isinstance(exc, ServingError):
        err = exc
    else:
        logger.error("stream failed", exc_info=exc)
        err = InternalServerError(f"internal error while streaming: {type(exc).__name__}")
    return _sse(ErrorResponse.of(err.message, err.error_type, err.code, err.param))


# ----------------------------------------------------------------------------- the app


def create_app(
    backend: ModelBackend,
    *,
    served_name: str,
    task: str,
    max_tokens_limit: int = 2048,
    max_inputs_per_request: int = 256,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    labels: dict[str, str] | None = None,
    title: str = "lorafleet",
) -> FastAPI:
    """Build the FastAPI application of the OpenAI-compatible API.

    Args:
        backend: Executes requests (Ray ``Model`` deployment or an in-process ModelServer).
        served_name: The base model's name in ``model`` fields and ``/v1/models``.
        task: ``"text-generation"`` or ``"text-classification"``; decides which routes answer.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        max_inputs_per_request: Most texts in one ``/v1/classify`` ``input`` or prompts in one
            ``/v1/completions`` ``prompt`` list; more is a 400 naming the field, so one huge
            request cannot hold a replica for minutes.
        max_request_bytes: Largest request body in bytes. A larger body is answered 413
            before it is parsed: at once when its ``Content-Length`` says so, else (chunked)
            as soon as the bytes read pass the limit, without reading the rest.
        labels: Label names by id of a classification base (shown in ``/v1/models``).
        title: OpenAPI title.

    Returns:
        The FastAPI app (routes listed in the module docstring).

    Raises:
        ValueError: ``task`` is not one of the two supported tasks, or ``max_tokens_limit``,
            ``max_inputs_per_request`` or ``max_request_bytes`` < 1.
    """
    if task not in (TEXT_GENERATION, TEXT_CLASSIFICATION):
        raise ValueError(
            f"create_app: task must be {TEXT_GENERATION!r} or {TEXT_CLASSIFICATION!r}, got {task!r}"
        )
    if max_tokens_limit < 1:
        raise ValueError(f"create_app: max_tokens_limit must be >= 1, got {max_tokens_limit}")
    if max_inputs_per_request < 1:
        raise ValueError(
            f"create_app: max_inputs_per_request must be >= 1, got {max_inputs_per_request}"
        )
    if max_request_bytes < 1:
        raise ValueError(f"create_app: max_request_bytes must be >= 1, got {max_request_bytes}")

    def _check_count(count: int, param: str) -> None:
        if count > max_inputs_per_request:
            raise InvalidRequestError(
                f"'{param}' holds {count} items, above this server's limit of "
                f"{max_inputs_per_request} per request",
                param=param,
            )

    created = int(time.time())
    app = FastAPI(title=title, version="v1")
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    app.state.backend = backend

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_json(validation_error(exc))

    @app.exception_handler(ServingError)
    async def _on_serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return error_json(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
            code = "not_found"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        elif exc.status_code == 400:  # e.g. a body that cannot be parsed at all
            message, code = f"the request body cannot be read: {exc.detail}", "invalid_request"
        elif exc.status_code == 413:
            return error_json(
                RequestTooLargeError(
                    f"the request body is larger than this server's limit of "
                    f"{max_request_bytes} bytes (max_request_bytes)"
                )
            )
        else:
            message, code = str(exc.detail), "http_error"
        body = ErrorResponse.of(message, "invalid_request_error", code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    def _require_task(route_task: str, route: str) -> None:
        if task != route_task:
            hint = (
                "use POST /v1/classify"
                if task == TEXT_CLASSIFICATION
                else "use POST /v1/completions or /v1/chat/completions"
            )
            raise TaskMismatchError(
                f"{route} needs a {route_task} model, but {served_name!r} is a {task} model; {hint}",
                param="model",
            )

    def _check_max_tokens(value: int, param: str) -> None:
        if value > max_tokens_limit:
            raise InvalidRequestError(
                f"'{param}' is {value}, above this server's limit of {max_tokens_limit}",
                param=param,
            )

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the HTTP server answers."""
        return {"status": "ok"}

    @app.get("/ready")
    @_guarded
    async def ready() -> Any:
        """Readiness: the base model is loaded and a model replica answers."""
        if await backend.ready():
            return {"status": "ready", "model": served_name, "task": task}
        raise ModelUnavailableError(f"model {served_name!r} is not loaded yet")

    @app.get("/stats")
    @_guarded
    async def stats() -> Any:
        """Operational facts of the model replica that answers (pid, adapters, counters)."""
        return await backend.replica_info()

    @app.get("/v1/models")
    @_guarded
    async def list_models() -> Any:
        """The base model and every registered adapter (``parent`` = base)."""
        cards = [
            ModelCard(
                id=served_name,
                created=created,
                root=served_name,
                task=task,
                labels={str(k): str(v) for k, v in labels.items()} if labels else None,
            )
        ]
        for name, meta in sorted((await backend.registered_adapters()).items()):
            meta = meta or {}
            adapter_labels = meta.get("labels")
            cards.append(
                ModelCard(
                    id=name,
                    created=created,
                    parent=served_name,
                    root=served_name,
                    task=task,
                    rank=meta.get("rank"),
                    labels={str(k): str(v) for k, v in adapter_labels.items()}
                    if isinstance(adapter_labels, dict)
                    else None,
                )
            )
        return ModelList(data=cards).model_dump()

    @app.post("/v1/completions")
    @_guarded
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """OpenAI Completions: one choice per prompt, or a stream for a single prompt."""
        check_unicode(body)
        _require_task(TEXT_GENERATION, "/v1/completions")
        model, adapter = resolve_model(body.model, request, served_name)
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        _check_max_tokens(max_tokens, "max_tokens")
        prompts = body.prompts()
        if not prompts:
            raise InvalidRequestError("'prompt' must not be empty", param="prompt")
        _check_count(len(prompts), "prompt")
        for i, prompt in enumerate(prompts):
            _check_prompt(prompt, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
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
            first, it = await _first_delta(backend.generate_stream(reqs[0]))
            return StreamingResponse(
                _completion_events(first, it, rid, now, model, body.include_usage()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        # A list of prompts is one call: the replica takes its prompts round-robin with other
        # requests, and Serve counts it as one ongoing request, not len(prompts).
        results = (
            await backend.generate_many(reqs)
            if len(reqs) > 1
            else [await backend.generate(reqs[0])]
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
            "usage": _usage(
                sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
            ),
        }

    @app.post("/v1/chat/completions")
    @_guarded
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """OpenAI Chat Completions over the tokenizer's chat template."""
        check_unicode(body)
        _require_task(TEXT_GENERATION, "/v1/chat/completions")
        model, adapter = resolve_model(body.model, request, served_name)
        max_tokens, param = body.token_budget(max_tokens_limit)
        if param is not None:
            _check_max_tokens(max_tokens, param)
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
            first, it = await _first_delta(backend.generate_stream(req, messages))
            return StreamingResponse(
                _chat_events(first, it, rid, now, model, body.include_usage()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        result = await backend.generate(req, messages)
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
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }

    @app.post("/v1/classify")
    @_guarded
    async def classify(body: ClassifyHTTPRequest, request: Request) -> Any:
        """Classify texts with an adapter's own head and label names (or the base's)."""
        check_unicode(body)
        _require_task(TEXT_CLASSIFICATION, "/v1/classify")
        model, adapter = resolve_model(body.model, request, served_name)
        texts = body.texts()
        if not texts:
            raise InvalidRequestError("'input' must not be empty", param="input")
        _check_count(len(texts), "input")
        for i, text in enumerate(texts):
            if not text.strip():
                param = "input" if isinstance(body.input, str) else f"input[{i}]"
                raise InvalidRequestError(f"'{param}' must not be empty", param=param)
        result = await backend.classify(ClassifyRequest(texts=texts, adapter=adapter))
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
            "usage": _usage(result.prompt_tokens, 0),
        }

    return app


async def _stream_events(
    first: StreamDelta | None,
    it: AsyncIterator[StreamDelta],
    envelope: Callable[[list[dict[str, Any]]], dict[str, Any]],
    choices_of: Callable[[StreamDelta], list[dict[str, Any]]],
    include_usage: bool,
    opening: Sequence[dict[str, Any]] = (),
) -> AsyncIterator[str]:
    """Server-sent events of one streamed generation, in OpenAI's streaming shape.

    Each choice (``opening`` first, then ``choices_of(delta)`` per delta) goes out as its own
    ``data:`` event wrapped by ``envelope``; with ``include_usage`` a last event has
    ``"choices": []`` and ``usage``; an error after the first token becomes an error event;
    ``data: [DONE]`` ends the stream, and the source iterator is always closed.
    """
    last: StreamDelta | None = None
    try:
        for choice in opening:
            yield _sse(envelope([choice]))
        delta = first
        while delta is not None:
            last = delta
            for choice in choices_of(delta):
                yield _sse(envelope([choice]))
            delta = await anext(it, None)
        if include_usage and last is not None and last.prompt_tokens is not None:
            payload = envelope([])
            payload["usage"] = _usage(last.prompt_tokens, last.completion_tokens or 0)
            yield _sse(payload)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield _stream_error_event(exc)
    finally:
        await _aclose(it)
    yield SSE_DONE


def _completion_events(
    first: StreamDelta | None,
    it: AsyncIterator[StreamDelta],
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events of a streamed completion (``text_completion`` chunks, then DONE)."""

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }

    def choices_of(delta: StreamDelta) -> list[dict[str, Any]]:
        if not (delta.text or delta.finish_reason):
            return []
        return [
            {"index": 0, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": None}
        ]

    return _stream_events(first, it, envelope, choices_of, include_usage)


def _chat_events(
    first: StreamDelta | None,
    it: AsyncIterator[StreamDelta],
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events of a streamed chat completion (``chat.completion.chunk``, then DONE)."""

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }

    def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

    def choices_of(delta: StreamDelta) -> list[dict[str, Any]]:
        out = []
        if delta.text:
            out.append(choice({"content": delta.text}, None))
        if delta.finish_reason:
            out.append(choice({}, delta.finish_reason))
        return out

    return _stream_events(
        first,
        it,
        envelope,
        choices_of,
        include_usage,
        opening=[choice({"role": "assistant", "content": ""}, None)],
    )
