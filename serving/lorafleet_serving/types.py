"""Request and result dataclasses of the model server facade (:mod:`.server.model_server`).

Plain dataclasses with no framework dependency: the HTTP layer builds requests from JSON
bodies and turns results into OpenAI-style responses. Field names follow the OpenAI
completions API (``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
``finish_reason``) and ``usage`` (``prompt_tokens``, ``completion_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: The tasks a base model is served for (Hugging Face pipeline names); the operator's
#: ``models.Task`` holds the same two values on its side of the seam.
TEXT_GENERATION = "text-generation"
TEXT_CLASSIFICATION = "text-classification"
TASKS = (TEXT_GENERATION, TEXT_CLASSIFICATION)

#: Adapter name meaning "no adapter": the bare base model.
BASE_ADAPTER = "__base__"

FinishReason = Literal["stop", "length"]

#: Smallest positive ``temperature``: below it sampling cannot be told apart from greedy
#: decoding, so a request must say 0 (some clients send 1e-5 or 1e-6 to mean greedy: allowed).
MIN_TEMPERATURE = 1e-6
#: Seeds ``torch.Generator.manual_seed`` accepts: any signed or unsigned 64-bit integer.
MIN_SEED = -(2**63)
MAX_SEED = 2**64 - 1


@dataclass
class GenerateRequest:
    """One text-generation request.

    Attributes:
        prompt: Text (tokenised with the base's tokenizer, special tokens added) or token ids.
        adapter: Registered adapter name; ``None`` or ``"__base__"`` for the bare base model.
        max_tokens: Maximum number of tokens to generate (>= 1, <= the server's limit).
        temperature: 0 means greedy decoding; > 0 samples from ``softmax(logits / temperature)``.
        top_p: Nucleus sampling mass in (0, 1]; only used when ``temperature > 0``.
        stop: Strings that end the completion; the returned text stops before the first one.
        seed: Seed of this request's sampling generator (same seed, same tokens); ``None`` draws
            from the process-wide generator.
    """

    prompt: str | list[int]
    adapter: str | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class GenerateResult:
    """The outcome of one :class:`GenerateRequest`.

    Attributes:
        text: The completion text (special tokens skipped, cut before a stop string).
        token_ids: Generated token ids, including an end-of-sequence token if one was produced.
        prompt_tokens: Number of prompt tokens.
        completion_tokens: Number of generated tokens (``len(token_ids)``).
        finish_reason: ``"stop"`` (end-of-sequence token or stop string) or ``"length"``
            (``max_tokens`` reached).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass
class StreamDelta:
    """One increment of a streamed completion.

    Attributes:
        text: New text since the previous delta (may be empty while text is held back because it
            could be the start of a stop string or an incomplete UTF-8 character).
        token_id: The token generated in this step, or ``None`` for the final delta.
        finish_reason: ``None`` except on the last delta (``"stop"`` or ``"length"``).
        prompt_tokens: Set on the last delta only.
        completion_tokens: Set on the last delta only.
    """

    text: str
    token_id: int | None
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class ClassifyRequest:
    """A batch of texts to classify with one adapter (or the base head).

    Attributes:
        texts: Non-empty list of non-empty texts.
        adapter: Registered adapter name; ``None`` or ``"__base__"`` for the bare base model.
    """

    texts: list[str]
    adapter: str | None = None


@dataclass
class ClassifyResult:
    """Classification of each text of a :class:`ClassifyRequest`, in order.

    Attributes:
        labels: The arg-max label name per text.
        scores: Softmax probability per label name, per text.
        logits: Raw logits per text (length = that head's number of labels).
        prompt_tokens: Total number of tokens over all texts.
    """

    labels: list[str]
    scores: list[dict[str, float]]
    logits: list[list[float]]
    prompt_tokens: int = 0
