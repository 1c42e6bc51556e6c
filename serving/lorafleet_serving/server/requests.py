"""Validation of what reaches the model server: its limits, generation fields, classify inputs.

Every check raises :class:`~lorafleet_serving.errors.InvalidRequestError` naming the field at
fault (``param``), before a request is tokenized or queued. The HTTP layer validates the same
fields from the JSON body first; these checks hold for callers that build the request
dataclasses themselves (tests, benchmarks, the Ray ``Model`` deployment).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import InvalidRequestError
from ..types import BASE_ADAPTER, MAX_SEED, MIN_SEED, MIN_TEMPERATURE, GenerateRequest


def is_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` (``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` (``bool`` is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def adapter_name(adapter: Any) -> str | None:
    """The adapter a request names, ``None`` for the bare base (``None`` or ``"__base__"``).

    Raises:
        InvalidRequestError: Not a non-empty string (``param="model"``).
    """
    if adapter is None or adapter == BASE_ADAPTER:
        return None
    if not isinstance(adapter, str) or not adapter:
        raise InvalidRequestError("model must be a non-empty string", param="model")
    return adapter


def check_server_limits(
    max_adapters: Any, max_batch_size: Any, max_tokens_limit: Any, batch_wait_timeout_s: Any
) -> None:
    """Check a model server's limits (see :class:`~.model_server.ModelServer`).

    Raises:
        InvalidRequestError: ``max_adapters``, ``max_batch_size`` or ``max_tokens_limit`` is not
            an integer >= 1, or ``batch_wait_timeout_s`` is not a number >= 0 (``param`` names
            it).
    """
    for name, value in (
        ("max_adapters", max_adapters),
        ("max_batch_size", max_batch_size),
        ("max_tokens_limit", max_tokens_limit),
    ):
        if not is_int(value) or value < 1:
            raise InvalidRequestError(f"{name} must be an integer >= 1, got {value!r}", param=name)
    if not is_number(batch_wait_timeout_s) or batch_wait_timeout_s < 0:
        raise InvalidRequestError(
            f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s!r}",
            param="batch_wait_timeout_s",
        )


def checked_generate_request(req: GenerateRequest, max_tokens_limit: int) -> GenerateRequest:
    """Check a generation request's fields (not its adapter or prompt length).

    Args:
        req: The request.
        max_tokens_limit: The server's largest ``max_tokens``.

    Returns:
        The same request with ``temperature`` and ``top_p`` as floats and ``stop`` as a list
        (a string or ``None`` made a list).

    Raises:
        InvalidRequestError: ``prompt`` neither a string nor a list; ``max_tokens`` not an
            integer in ``1..max_tokens_limit``; ``temperature`` not 0 or
            ``MIN_TEMPERATURE``-or-more; ``top_p`` not in (0, 1]; ``stop`` not non-empty
            strings; ``seed`` not a 64-bit integer. ``param`` names the field.
    """
    if not isinstance(req.prompt, str | list):
        raise InvalidRequestError("prompt must be a string or a list of token ids", param="prompt")
    if not is_int(req.max_tokens) or req.max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens must be an integer >= 1, got {req.max_tokens!r}", param="max_tokens"
        )
    if req.max_tokens > max_tokens_limit:
        raise InvalidRequestError(
            f"max_tokens={req.max_tokens} exceeds the limit of {max_tokens_limit}",
            param="max_tokens",
        )
    if not is_number(req.temperature) or req.temperature < 0:
        raise InvalidRequestError(
            f"temperature must be a number >= 0, got {req.temperature!r}", param="temperature"
        )
    if 0 < req.temperature < MIN_TEMPERATURE:
        raise InvalidRequestError(
            f"temperature must be 0 (greedy decoding) or at least {MIN_TEMPERATURE:g}, "
            f"got {req.temperature!r}",
            param="temperature",
        )
    if not is_number(req.top_p) or not 0 < req.top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {req.top_p!r}", param="top_p")
    stop = req.stop if req.stop is not None else []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequestError("stop must be a list of non-empty strings", param="stop")
    if req.seed is not None and (not is_int(req.seed) or not MIN_SEED <= req.seed <= MAX_SEED):
        raise InvalidRequestError(
            f"seed must be an integer from {MIN_SEED} to {MAX_SEED}, got {req.seed!r}",
            param="seed",
        )
    return GenerateRequest(
        prompt=req.prompt,
        adapter=req.adapter,
        max_tokens=req.max_tokens,
        temperature=float(req.temperature),
        top_p=float(req.top_p),
        stop=list(stop),
        seed=req.seed,
    )


def check_classify_texts(texts: Any) -> None:
    """Check the texts of a classification request.

    Raises:
        InvalidRequestError: ``texts`` is not a non-empty list of non-empty strings
            (``param="input"``).
    """
    if not isinstance(texts, list) or not texts:
        raise InvalidRequestError("input must be a non-empty list of strings", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError(f"input[{i}] must be a non-empty string", param="input")
