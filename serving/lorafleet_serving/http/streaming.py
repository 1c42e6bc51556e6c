"""Server-sent events of streamed completions, in OpenAI's streaming shape.

A streamed answer (https://html.spec.whatwg.org/multipage/server-sent-events.html) is one
``data: <json>`` event per chunk and ends in ``data: [DONE]``. :func:`first_delta` awaits the
first delta before the answer starts, so errors about the request itself (404, 400, 503) still
get their HTTP status; :func:`completion_events` and :func:`chat_events` write the rest
(``text_completion`` or ``chat.completion.chunk`` chunks, an optional usage chunk, an error
event if the stream fails after its first token) and always close the source iterator.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ..errors import ServingError
from ..types import StreamDelta
from .errors import InternalServerError
from .schemas import ErrorResponse, usage

logger = logging.getLogger(__name__)


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying ``payload`` as compact JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def aclose(it: Any) -> None:
    """Close an async iterator if it can be closed; a failure to close is only logged."""
    close = getattr(it, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # the stream already failed; nothing more to report
            logger.debug("closing a response stream failed", exc_info=True)


async def first_delta(
    stream: AsyncIterator[StreamDelta],
) -> tuple[StreamDelta | None, AsyncIterator[StreamDelta]]:
    """Await the first delta so errors (404, 400, 503) become a proper HTTP status."""
    it = stream.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return None, it
    except BaseException:
        await aclose(it)
        raise
    return first, it


def stream_error_event(exc: BaseException) -> str:
    """The error event of a stream that failed after its first token (an OpenAI error
    object; an unexpected exception is logged and reported as an internal error)."""
    if isinstance(exc, ServingError):
        err = exc
    else:
        logger.error("stream failed", exc_info=exc)
        err = InternalServerError(f"internal error while streaming: {type(exc).__name__}")
    return sse(ErrorResponse.of(err.message, err.error_type, err.code, err.param))


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
            yield sse(envelope([choice]))
        delta = first
        while delta is not None:
            last = delta
            for choice in choices_of(delta):
                yield sse(envelope([choice]))
            delta = await anext(it, None)
        if include_usage and last is not None and last.prompt_tokens is not None:
            payload = envelope([])
            payload["usage"] = usage(last.prompt_tokens, last.completion_tokens or 0)
            yield sse(payload)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield stream_error_event(exc)
    finally:
        await aclose(it)
    yield SSE_DONE


def _envelope(
    rid: str, created: int, model: str, object_name: str
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The chunk envelope of one streamed response (OpenAI's ``id``/``object``/``created``/
    ``model``/``choices``) around a list of choices."""

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": object_name,
            "created": created,
            "model": model,
            "choices": choices,
        }

    return envelope


def completion_events(
    first: StreamDelta | None,
    it: AsyncIterator[StreamDelta],
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events of a streamed completion (``text_completion`` chunks, then DONE)."""
    envelope = _envelope(rid, created, model, "text_completion")

    def choices_of(delta: StreamDelta) -> list[dict[str, Any]]:
        if not (delta.text or delta.finish_reason):
            return []
        return [
            {"index": 0, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": None}
        ]

    return _stream_events(first, it, envelope, choices_of, include_usage)


def chat_events(
    first: StreamDelta | None,
    it: AsyncIterator[StreamDelta],
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events of a streamed chat completion (``chat.completion.chunk``, then DONE)."""
    envelope = _envelope(rid, created, model, "chat.completion.chunk")

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
