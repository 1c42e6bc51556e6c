"""The engine seam: what the model server needs from an inference engine, and the data it passes.

:class:`Engine` lists exactly what :class:`~lorafleet_serving.server.model_server.ModelServer`
calls (its methods and the few facts it reads); :class:`RunningBatch` is the step-wise
generation batch :meth:`Engine.start_generation` returns. The rows a generation batch is made of
(:class:`GenerationRow`) and what each step yields (:class:`StepEvent`) are plain dataclasses
defined here, so the model server can build and read them without importing torch.

The transformers + peft implementation is
:class:`~lorafleet_serving.engine.transformers_engine.TransformersEngine`; a test or another
backend only has to provide the same members. Engines are synchronous and not thread-safe: the
model server calls the torch methods from ONE worker thread; the tokenizer methods
(:meth:`Engine.encode_prompt`, :meth:`Engine.encode_classification`, and the ``tokenizer`` for
chat templates) only read, and may run on other threads at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..types import FinishReason

#: The batched-LoRA slot of the bare base model (adapters have slots ``1..capacity``).
BASE_SLOT = 0


@dataclass
class GenerationRow:
    """One request inside a :class:`RunningBatch` (inputs and running state).

    Attributes:
        prompt_ids: Prompt token ids.
        slot: Batched-LoRA slot (0 = base).
        max_tokens: Maximum new tokens.
        temperature: 0 = greedy.
        top_p: Nucleus mass.
        stop: Stop strings.
        seed: Sampling seed or ``None``.
        token_ids: Generated ids so far.
        text: Completion text decoded so far (before stop truncation).
        emitted: Number of characters of the final text already handed out as deltas.
        finish_reason: ``None`` while running.
        cancelled: Set by the caller to drop the row at the next step.
        generator: The row's ``torch.Generator`` (seeded sampling), made by the batch.
        prefix_offset: Start of the tokens decoded again each step (incremental detokenizing).
        read_offset: End of the tokens whose text is already in :attr:`text`.
    """

    prompt_ids: list[int]
    slot: int = BASE_SLOT
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: FinishReason | None = None
    cancelled: bool = False
    generator: Any = None  # torch.Generator | None; typed Any to keep this module torch-free
    prefix_offset: int = 0
    read_offset: int = 0


@dataclass
class StepEvent:
    """What one :meth:`RunningBatch.step` produced for one row.

    Attributes:
        row: Index of the row in the list given to :meth:`Engine.start_generation`.
        token_id: The new token.
        text: New text that may be handed out now (held back while it may start a stop string).
        finish_reason: Set when the row finished in this step.
    """

    row: int
    token_id: int
    text: str
    finish_reason: FinishReason | None


class RunningBatch(Protocol):
    """A generation batch decoding step by step (:meth:`Engine.start_generation`).

    Attributes:
        active: Indices of the rows still running (finished and cancelled rows leave).
    """

    active: list[int]

    @property
    def done(self) -> bool:
        """True when every row has finished or was cancelled."""
        ...

    def step(self) -> list[StepEvent]:
        """Generate one token for every active row (the first call also runs the prefill).

        Returns:
            One :class:`StepEvent` per row that was active (finished rows carry their reason).
        """
        ...

    def can_join(self) -> bool:
        """Whether :meth:`add` may join rows to this batch now (between steps)."""
        ...

    def add(self, rows: list[GenerationRow]) -> list[StepEvent]:
        """Join ``rows`` to the running batch at a step boundary (continuous batching).

        Args:
            rows: Requests to add; they are numbered after the existing rows.

        Returns:
            The events of the new rows' first generated token (row indices in this batch);
            empty when the batch has not started (the rows take part in its first step).

        Raises:
            RuntimeError: :meth:`can_join` is false.
        """
        ...


class Engine(Protocol):
    """One base model plus resident LoRA adapters, running mixed-adapter batches.

    Attributes:
        task: ``"text-generation"`` or ``"text-classification"``.
        tokenizer: The base's Hugging Face tokenizer (the model server renders chat templates
            with it).
        base_labels: Label names of the base's classification head, ``None`` for generation.
        max_positions: Context length in tokens, ``None`` when the config does not say.
    """

    task: str
    tokenizer: Any
    base_labels: list[str] | None
    max_positions: int | None

    # ----------------------------------------------------------------- memory

    def tensor_bytes(self) -> int:
        """Bytes of every tensor the engine holds on its device (each storage counted once)."""
        ...

    # ----------------------------------------------------------------- adapters

    def load_adapter(
        self, name: str, path: str | Path, labels: dict[str, str] | Sequence[str] | None = None
    ) -> object:
        """Load a LoRA adapter folder under ``name`` into a free slot.

        Args:
            name: Served name (must not be loaded already).
            path: Folder with ``adapter_config.json`` and the adapter's weights.
            labels: Label names of the adapter's own classification head (``{"0": name}`` or
                a list), or ``None`` for the default names.

        Returns:
            What the engine knows about the adapter (the model server does not read it).

        Raises:
            AdapterLoadError: The adapter cannot be served (the reason is in the message); the
                engine is left as it was.
        """
        ...

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and free its memory.

        Raises:
            KeyError: It is not loaded.
        """
        ...

    def set_capacity(self, max_adapters: int) -> None:
        """Resize to ``max_adapters`` adapter slots, keeping resident adapters in theirs.

        Raises:
            ValueError: ``max_adapters`` < 1 or below :meth:`highest_slot` (evict first).
        """
        ...

    def highest_slot(self) -> int:
        """The highest slot in use by a resident adapter, 0 when none is: the fewest slots
        :meth:`set_capacity` can shrink to."""
        ...

    def slot(self, adapter: str | None) -> int:
        """The slot of a loaded adapter (:data:`BASE_SLOT` for ``None``/``"__base__"``).

        Raises:
            KeyError: Not loaded.
        """
        ...

    def adapter_labels(self, name: str) -> list[str] | None:
        """Label names adapter ``name`` answers with (its own head's, else the base's), or
        ``None`` when it is not resident."""
        ...

    # ----------------------------------------------------------------- generation

    def check_prompt_chars(self, chars: int, param: str = "prompt") -> None:
        """Refuse text too long for the context before anything tokenizes it.

        Args:
            chars: Length of the text in characters.
            param: The request field it came from (named in the error).

        Raises:
            InvalidRequestError: ``chars`` is more than can fit in the context.
        """
        ...

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text is tokenized with special tokens added).

        Args:
            prompt: Text or a list of token ids.

        Returns:
            Token ids.

        Raises:
            InvalidRequestError: Empty prompt, text too long for the context or ids outside
                the vocabulary (``param="prompt"``).
        """
        ...

    def start_generation(self, rows: Sequence[GenerationRow]) -> RunningBatch:
        """Start a mixed generation batch; call :meth:`RunningBatch.step` until it is done.

        Args:
            rows: One :class:`GenerationRow` per request (its own adapter slot and parameters).

        Returns:
            The batch.
        """
        ...

    # ----------------------------------------------------------------- classification

    def encode_classification(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        """Tokenize classify inputs, truncated to the encoder's length.

        Args:
            texts: Texts.

        Returns:
            Per text, its unpadded features: ``input_ids``, ``attention_mask`` and (when the
            tokenizer makes them) ``token_type_ids``, lists of ints.
        """
        ...

    def classify_encoded(
        self, features: Sequence[dict[str, list[int]]], adapters: Sequence[str | None]
    ) -> list[tuple[list[str], list[float]]]:
        """Classify a mixed batch of tokenized texts: row ``i`` with ``adapters[i]``.

        Args:
            features: Per text, what :meth:`encode_classification` made of it (non-empty).
            adapters: Adapter per row (``None``/``"__base__"`` = base), same length.

        Returns:
            Per row: (label names, float32 logits as a list of floats).

        Raises:
            ValueError: ``features`` and ``adapters`` differ in length, or the task is not
                classification.
            KeyError: An adapter is not loaded.
        """
        ...
