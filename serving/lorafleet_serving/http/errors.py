"""HTTP error mapping: every error answer is an OpenAI error object with the error's status.

:func:`error_json` turns any :class:`~lorafleet_serving.errors.ServingError` into
``{"error": {"message", "type", "code", "param"}}``; :func:`validation_error` turns FastAPI's
request validation error into a 400 naming the field at fault; :func:`http_error_json` answers
Starlette's own HTTP errors (404 no route, 405, 413 body too large...) the same way. The error
classes here exist only at the HTTP layer (task mismatch, no model replica, body too large,
unexpected failure); the model server's errors are in :mod:`lorafleet_serving.errors`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InvalidRequestError, ServingError
from .schemas import ErrorResponse


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


def error_json(exc: ServingError) -> JSONResponse:
    """The OpenAI-style JSON answer for a :class:`~lorafleet_serving.errors.ServingError`.

    Args:
        exc: The error.

    Returns:
        A ``JSONResponse`` with ``exc.status_code`` and ``{"error": {...}}``.
    """
    body = ErrorResponse.of(exc.message, exc.error_type, exc.code, exc.param)
    return JSONResponse(body, status_code=exc.status_code)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


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
        An :class:`~lorafleet_serving.errors.InvalidRequestError` whose ``param`` is the dotted field path
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


def http_error_json(
    request: Request, exc: StarletteHTTPException, max_request_bytes: int
) -> JSONResponse:
    """The OpenAI-style JSON answer for one of Starlette's HTTP errors.

    Args:
        request: The request that failed.
        exc: The error (404 no route, 405 wrong method, 400 unreadable body, 413 body over
            the limit, or any other status).
        max_request_bytes: The server's body limit (named in the 413 answer).

    Returns:
        A ``JSONResponse`` with ``exc.status_code`` (and ``exc.headers``) and ``{"error": {...}}``.
    """
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
