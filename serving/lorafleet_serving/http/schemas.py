"""Pydantic request schemas (and the model list, usage and error objects) of lorafleet's OpenAI-compatible HTTP API.

Field names and shapes follow the OpenAI API reference (Completions, Chat Completions,
Models, error objects; https://platform.openai.com/docs/api-reference) so the official
``openai`` Python client works unchanged. ``/v1/classify`` is lorafleet's own route for
``text-classification`` bases.

Requests validate strictly (``"5"`` is not an integer, ``1`` is not a boolean) and ignore
fields they do not know, as OpenAI-compatible servers do; fields whose non-default values
lorafleet cannot honour (``n > 1``, ``echo``, ``logprobs``, ``best_of > 1``) are refused by
validators with a message naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..types import MAX_SEED, MIN_SEED, MIN_TEMPERATURE

#: OpenAI's defaults (API reference): ``max_tokens`` 16 for completions, temperature 1, top_p 1.
DEFAULT_MAX_TOKENS = 16
#: Chat answers without ``max_tokens``/``max_completion_tokens`` (OpenAI: up to the context;
#: here a bounded default, further capped by the server's ``max_tokens_limit``).
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 1.0
#: How many stop sequences a request may give (OpenAI allows 4; a few more cost nothing).
MAX_STOP_SEQUENCES = 16

#: A UTF-16 surrogate code point. JSON's ``\uXXXX`` escapes may name one alone (``"\ud800"``);
#: valid pairs become one character when parsed, so any left is not Unicode text.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where the first lone UTF-16 surrogate hides in a parsed request, if anywhere.

    Args:
        value: A request model, or a str / list / dict / scalar inside one.
        path: Dotted path of ``value`` itself (``""`` for the body).

    Returns:
        The field path of the first string holding a lone surrogate (``"prompt"``,
        ``"messages[0].content[1].text"``, ``"stop[2]"``), or ``None`` when every string is
        valid Unicode.
    """
    if isinstance(value, str):
        return (path or "body") if _SURROGATE.search(value) else None
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found = lone_surrogate_path(getattr(value, name), f"{path}.{name}" if path else name)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, child in enumerate(value):
            found = lone_surrogate_path(child, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, child in value.items():
            found = lone_surrogate_path(child, f"{path}.{key}" if path else str(key))
            if found:
                return found
    return None


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    def lone_surrogate_field(self) -> str | None:
        """The first field whose text holds a lone UTF-16 surrogate (see
        :func:`lone_surrogate_path`), or ``None``."""
        return lone_surrogate_path(self)


class StreamOptions(_Request):
    """``stream_options`` of a streamed request.

    Attributes:
        include_usage: Send one last chunk with ``usage`` and empty ``choices``.
    """

    include_usage: bool = False


class _SamplingRequest(_Request):
    """Fields shared by completions and chat completions."""

    model: str | None = Field(
        None,
        description="Served name of the base model or name of an adapter. May be omitted when "
        "the serve_multiplexed_model_id header names the adapter.",
    )
    temperature: float = Field(
        DEFAULT_TEMPERATURE,
        ge=0.0,
        le=2.0,
        allow_inf_nan=False,
        description=f"0 for greedy decoding, else {MIN_TEMPERATURE:g} to 2.",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    user: str | None = None

    @field_validator("temperature")
    @classmethod
    def _not_vanishing(cls, value: float) -> float:
        if 0.0 < value < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature must be 0 (greedy decoding) or at least {MIN_TEMPERATURE:g}"
            )
        return value

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty strings")
        return value

    def stop_list(self) -> list[str]:
        """``stop`` as a list of strings (``[]`` when unset)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    """Body of ``POST /v1/completions``.

    Attributes:
        prompt: A string, a list of strings (one choice per prompt), a list of token ids, or a
            list of token-id lists. Must not be empty.
        max_tokens: Tokens to generate per prompt (default 16, at most the server's limit).
        echo: Not supported: must be false.
        logprobs: Not supported: must be null.
        best_of: Not supported beyond 1.
    """

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo=true is not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("logprobs is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("best_of > 1 is not supported")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list (a single string or token list becomes a list of one)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextContentPart(_Request):
    """One ``{"type": "text", "text": ...}`` part of a chat message's content."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One chat message.

    Attributes:
        role: ``system``, ``developer``, ``user``, ``assistant`` or ``tool``.
        content: Text, or a list of text parts (images and audio are not supported).
        name: Optional participant name (passed to the chat template).
    """

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingRequest):
    """Body of ``POST /v1/chat/completions``.

    Attributes:
        messages: The conversation, at least one message.
        max_tokens: Tokens to generate (when neither this nor ``max_completion_tokens`` is
            given: 256, capped by the server's ``max_tokens_limit``).
        max_completion_tokens: Newer name of ``max_tokens``; wins when both are given.
        logprobs: Not supported: must be false or absent.
    """

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs is not supported")
        return value

    def token_budget(self, limit: int) -> tuple[int, str | None]:
        """The requested number of tokens and the field that set it.

        Args:
            limit: The server's ``max_tokens_limit`` (caps the default only).

        Returns:
            ``(max tokens, field name)``; ``(min(256, limit), None)`` when neither field is set.
        """
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        if self.max_tokens is not None:
            return self.max_tokens, "max_tokens"
        return min(DEFAULT_CHAT_MAX_TOKENS, limit), None


class ClassifyHTTPRequest(_Request):
    """Body of ``POST /v1/classify`` (lorafleet's route for text-classification bases).

    Attributes:
        model: Served name of the base model or name of a classification adapter.
        input: One text or a non-empty list of texts.
    """

    model: str | None = None
    input: str | list[str]

    def texts(self) -> list[str]:
        """``input`` as a list of texts."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ----------------------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """An answer's ``usage`` object: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``."""
    return {
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "total_tokens": int(prompt_tokens) + int(completion_tokens),
    }


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``.

    Attributes:
        id: Name to put in a request's ``model`` field.
        owned_by: Always ``"lorafleet"``.
        parent: For an adapter, the base model's served name; ``None`` for the base.
        root: The base model's served name (for the base itself and for adapters).
        task: ``text-generation`` or ``text-classification``.
        rank: LoRA rank ``r`` of an adapter, when the registry knows it.
        labels: Label names by id of a classification base or adapter, when known.
    """

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lorafleet"
    parent: str | None = None
    root: str
    task: str
    rank: int | None = None
    labels: dict[str, str] | None = None


class ModelList(BaseModel):
    """Answer of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """OpenAI error object: ``message`` says what and where; ``param`` names the field."""

    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """Body of every error answer: ``{"error": {...}}``."""

    error: ErrorDetail

    @classmethod
    def of(
        cls, message: str, type_: str, code: str | None, param: str | None = None
    ) -> dict[str, Any]:
        """Build the JSON-ready error body.

        Args:
            message: What went wrong and where.
            type_: OpenAI error type (``invalid_request_error``, ``server_error``, ...).
            code: Machine-readable code (``model_not_found``, ``invalid_request``, ...).
            param: The request field at fault.

        Returns:
            ``{"error": {"message", "type", "code", "param"}}``.
        """
        return cls(
            error=ErrorDetail(message=message, type=type_, code=code, param=param)
        ).model_dump()
