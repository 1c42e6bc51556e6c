"""lorafleet's OpenAI-compatible HTTP API (FastAPI), independent of where the model runs.

:func:`create_app` builds the FastAPI application over a :class:`~.backend.ModelBackend`:

- in a Ray Serve application the backend forwards to the ``Model`` deployment through a
  ``DeploymentHandle`` with the adapter as multiplexed model id
  (:mod:`lorafleet_serving.ray_backend`);
- in-process, ``ModelServerBackend`` (:mod:`lorafleet_serving.server.backend`) calls a model
  server directly (tests, single-process use).

Routes (:mod:`.routes`; reference with curl examples: ``docs/api.md``): ``GET /health``,
``GET /ready``, ``GET /stats`` (the answering model replica's pid, adapters and counters),
``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events, :mod:`.streaming`, ending in ``data: [DONE]``) and, for
``text-classification`` bases, ``POST /v1/classify``.

``model`` in a body is the base model's served name or an adapter's name; the
``serve_multiplexed_model_id`` header (also spelled ``serve-multiplexed-model-id``) may name
the adapter instead. Every error is an OpenAI error object
``{"error": {"message", "type", "code", "param"}}`` (:mod:`.errors`): unknown model 404, invalid
request 400 (``param`` names the field), body over ``max_request_bytes`` 413
(:mod:`.body_limit`), adapter files that fail to load 503.

This package imports FastAPI and :mod:`lorafleet_serving.types` / :mod:`lorafleet_serving.errors`
only: never Ray, torch, the engine or the model server.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ServingError
from ..types import TEXT_CLASSIFICATION, TEXT_GENERATION
from .backend import ModelBackend
from .body_limit import BodySizeLimit
from .errors import error_json, http_error_json, validation_error
from .routes import OpenAIRoutes

#: Default largest request body, bytes (``args.max_request_bytes``): room for 256 classify
#: texts of 16 KB or a prompt filling a 128k-token context, far below what hurts a replica.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024


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
    routes = OpenAIRoutes(
        backend,
        served_name=served_name,
        task=task,
        max_tokens_limit=max_tokens_limit,
        max_inputs_per_request=max_inputs_per_request,
        labels=labels,
    )
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
        return http_error_json(request, exc, max_request_bytes)

    app.include_router(routes.router())
    return app
