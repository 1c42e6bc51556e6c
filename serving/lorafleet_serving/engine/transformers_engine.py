"""The transformers + peft engine: one base model, LoRA adapters, mixed-adapter batches.

:class:`TransformersEngine` implements :class:`~.protocol.Engine` (no Ray here). Synchronous
and single-threaded by design: the asyncio model server
(:mod:`lorafleet_serving.server.model_server`) runs every call on one worker thread. The engine

- loads the base with ``AutoModelForCausalLM`` (``text-generation``) or
  ``AutoModelForSequenceClassification`` (``text-classification``) in the requested dtype on
  cuda when present, else cpu (:mod:`.base_model`);
- reads an adapter folder with peft (``PeftConfig.from_pretrained``, ``load_peft_weights``;
  the file-level steps are in :mod:`.adapter_loading`) and puts its LoRA weights into
  :class:`~.lora_batched.BatchedLoRA`: plain LoRA on linear layers straight from the files
  (:mod:`.plain_lora`), the variants through peft's ``PeftModel``/``add_adapter`` +
  ``set_peft_model_state_dict`` with ``low_cpu_mem_usage`` (what ``PeftModel.load_adapter``
  does), copied out of peft's layers; classification heads
  saved with the adapter (``modules_to_save: [classifier]``, any label count) are kept by the
  engine and applied per row on the shared encoder's features;
- unloads with ``delete_adapter`` and frees the memory (gc, and ``torch.cuda.empty_cache``);
- runs a mixed batch: generation step by step (:class:`~.generation.GenerationBatch`, KV
  cache, left padding, greedy or temperature/top-p sampling, stop strings, token counts) or
  classification.
"""

from __future__ import annotations

import gc
import inspect
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdapterLoadError, InvalidRequestError
from ..types import BASE_ADAPTER, TASKS
from .adapter_loading import (
    AdapterFiles,
    AdapterInfo,
    AdapterWeights,
    adapter_head,
    label_names,
    labels_list,
    peft_load_config,
    read_adapter_files,
    saved_copies,
    select_weights,
)
from .base_model import load_base_model
from .classification import find_head, row_outputs
from .generation import GenerationBatch, eos_token_ids
from .lora_batched import BatchedLoRA
from .plain_lora import plain_lora_layers
from .protocol import BASE_SLOT, GenerationRow

logger = logging.getLogger(__name__)


class TransformersEngine:
    """One base model plus resident LoRA adapters; runs mixed-adapter batches (an
    :class:`~.protocol.Engine`).

    Args:
        base_path: Local folder of the base model (config, safetensors, tokenizer).
        task: ``"text-generation"`` or ``"text-classification"``.
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default cuda when present.
        labels: Base label names for classification (``{"0": "neg", ...}`` or a list);
            default the config's ``id2label``.
        max_adapters: Number of adapter slots in the batched LoRA stacks.

    Raises:
        InvalidRequestError: Unknown task or dtype, or labels that do not fit the head.
        OSError: The base folder cannot be read.
    """

    def __init__(
        self,
        base_path: str | Path,
        task: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        labels: dict | Sequence[str] | None = None,
        max_adapters: int = 8,
    ) -> None:
        if task not in TASKS:
            raise InvalidRequestError(f"task must be one of {TASKS}, got {task!r}", param="task")
        self.base_path = str(base_path)
        self.task = task
        base = load_base_model(self.base_path, task, dtype, device)
        self.device, self.dtype, self.tokenizer = base.device, base.dtype, base.tokenizer
        self.model: nn.Module = base.model
        self.config = self.model.config
        self.lora = BatchedLoRA(max_adapters, dtype=self.dtype, device=self.device)
        self.peft: Any = None  # peft.PeftModel once the first adapter is loaded
        self.adapters: dict[str, AdapterInfo] = {}
        self._peft_counter = 0
        self._forward_params = set(inspect.signature(self.model.forward).parameters)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.eos_token_ids = eos_token_ids(self.model, self.tokenizer)
        self.max_positions: int | None = getattr(self.config, "max_position_embeddings", None) or (
            getattr(self.config, "n_positions", None)
        )
        # Every token covers at most as many characters as the longest vocabulary entry
        # (byte-level BPE and SentencePiece entries spell whitespace too; +1 for a separator a
        # WordPiece tokenizer drops): text longer than positions x this cannot fit, and is
        # refused (prompts) or cut (classify inputs) before the tokenizer reads it.
        self.chars_per_token = max(map(len, self.tokenizer.get_vocab()), default=1) + 1
        self.prompt_char_limit: int | None = (
            self.max_positions * self.chars_per_token if self.max_positions else None
        )
        self.classify_max_tokens = min(
            int(getattr(self.tokenizer, "model_max_length", 512) or 512), self.max_positions or 512
        )
        self.classify_max_chars = self.classify_max_tokens * self.chars_per_token
        self.base_labels: list[str] | None = None
        self._head_module: nn.Module | None = None
        self._features: torch.Tensor | None = None
        if task == "text-classification":
            n = int(self.config.num_labels)
            given = labels if labels is not None else self.config.id2label
            self.base_labels = labels_list(given, n, "base labels")
            self._head_name, self._head_module = find_head(self.model)
            self._head_module.register_forward_hook(self._capture_features)

    # ----------------------------------------------------------------- helpers

    def _capture_features(self, _mod: nn.Module, args: tuple, _out: torch.Tensor) -> None:
        self._features = args[0]

    def tensor_bytes(self) -> int:
        """Bytes of every tensor the engine holds on its device.

        Counts model parameters and buffers (including peft's adapter weights), the batched LoRA
        stacks and the adapters' own heads; each storage is counted once.

        Returns:
            Size in bytes.
        """
        seen: set[int] = set()
        total = 0
        tensors = [*self.model.parameters(), *self.model.buffers()]
        for info in self.adapters.values():
            tensors.extend((info.head or {}).values())
        for t in tensors:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen or t.device.type == "meta":
                continue
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return total + self.lora.nbytes()

    # ----------------------------------------------------------------- adapters

    def load_adapter(
        self, name: str, path: str | Path, labels: dict | Sequence[str] | None = None
    ) -> AdapterInfo:
        """Load a LoRA adapter folder into the live model under ``name``.

        Reads the files (:func:`~.adapter_loading.read_adapter_files`), checks and sorts the
        tensors (:func:`~.adapter_loading.select_weights`), builds the adapter's own head and
        module copies, loads the LoRA weights with peft and copies them into a batched-LoRA
        slot (:meth:`_stack_adapter`), then names the labels
        (:func:`~.adapter_loading.label_names`; the slot is freed again when they do not fit).

        Args:
            name: Served name (must not be loaded already).
            path: Folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (or .bin).
            labels: Label names of the adapter's own classification head (``{"0": name}`` or a
                list); default: the base's names when the head has as many outputs, else
                ``LABEL_<i>``.

        Returns:
            The :class:`~.adapter_loading.AdapterInfo`.

        Raises:
            AdapterLoadError: Missing/corrupt files, not a LoRA adapter, target modules not in
                the base, weights that do not fit, an unsupported LoRA variant, or labels that do
                not fit the head. The model is left as it was.
        """
        if name in self.adapters:
            raise AdapterLoadError(name, "already loaded")
        folder = Path(path)
        files = read_adapter_files(name, folder, self.device)
        config = files.config
        weights = select_weights(name, files, self.model, self.task)
        head = self._adapter_head(name, weights)
        saved_modules = saved_copies(self.model, name, weights.saved, self.device, self.dtype)
        if not weights.lora and head is None and not saved_modules:
            raise AdapterLoadError(name, "the adapter holds no weights")
        slot = self._stack_adapter(name, files, weights, saved_modules)
        try:
            head_labels = label_names(
                head, labels, self.base_labels, self.task, f"adapter {name!r}"
            )
        except InvalidRequestError as exc:
            self.lora.remove(name)
            raise AdapterLoadError(name, exc.message) from exc
        info = AdapterInfo(
            name=name,
            path=str(folder),
            slot=slot,
            rank=int(config.r),
            lora_alpha=float(config.lora_alpha),
            target_modules=sorted(config.target_modules or []),
            head=head,
            labels=head_labels,
            nbytes=weights.nbytes,
        )
        self.adapters[name] = info
        return info

    def _adapter_head(self, name: str, weights: AdapterWeights) -> dict[str, torch.Tensor] | None:
        """The adapter's own classification head parameters, or ``None`` (the base's head)."""
        if not weights.head_names:
            return None
        # unsupported_features has refused any modules_to_save but this base's own head.
        assert self._head_module is not None
        return adapter_head(
            name, weights.head, self._head_name, self._head_module, self.device, self.dtype
        )

    def _stack_adapter(
        self,
        name: str,
        files: AdapterFiles,
        weights: AdapterWeights,
        saved_modules: dict[str, nn.Module],
    ) -> int:
        """Put the adapter's LoRA weights and module copies into a batched-LoRA slot.

        Plain LoRA on linear layers goes straight from the files into the stacks
        (:func:`~.plain_lora.plain_lora_layers`); anything else is loaded by peft first
        (:meth:`_stack_with_peft`).

        Args:
            name: Served name.
            files: What :func:`~.adapter_loading.read_adapter_files` read.
            weights: Its sorted tensors (:attr:`~.adapter_loading.AdapterWeights.lora`).
            saved_modules: Its own module copies (``modules_to_save``) by qualified name.

        Returns:
            Its slot.

        Raises:
            AdapterLoadError: peft cannot inject it, weights match no layer or are missing, or
                they do not fit the stacks. Nothing of it stays in the model.
        """
        config = peft_load_config(files.config, weights.saved_entries)
        layers = plain_lora_layers(config, files.raw, weights.lora, self.model)
        if layers is None:
            return self._stack_with_peft(name, config, weights, saved_modules)
        try:
            return self.lora.add_layers(name, self.model, layers, saved_modules=saved_modules)
        except Exception as exc:
            raise AdapterLoadError(name, f"weights do not fit the base model: {exc}") from exc

    def _stack_with_peft(
        self,
        name: str,
        config: Any,
        weights: AdapterWeights,
        saved_modules: dict[str, nn.Module],
    ) -> int:
        """Load the LoRA weights into the model with peft, copy them into a batched-LoRA slot
        (with the adapter's module copies), and drop peft's copy.

        Args:
            name: Served name.
            config: The peft ``LoraConfig`` to inject (:func:`~.adapter_loading.peft_load_config`).
            weights: Its sorted tensors (:attr:`~.adapter_loading.AdapterWeights.lora` go to
                peft).
            saved_modules: Its own module copies (``modules_to_save``) by qualified name.

        Returns:
            Its slot.

        Raises:
            AdapterLoadError: peft cannot inject it, weights match no layer or are missing, or
                they do not fit the stacks. Nothing of it stays in the model.
        """
        from peft.utils import set_peft_model_state_dict

        # peft keys adapters by name inside module paths and ModuleDicts: a served name with a
        # "." (or one contained in "lora_") would break it, so peft gets an internal name.
        self._peft_counter += 1
        internal = f"lf{self._peft_counter}"
        created = self._add_peft_adapter(name, internal, config)
        try:
            result = set_peft_model_state_dict(
                self.peft, weights.lora, adapter_name=internal, low_cpu_mem_usage=True
            )
            unexpected = [k for k in result.unexpected_keys if "lora_" in k]
            meta = [
                n
                for n, p in self.model.named_parameters()
                if f".{internal}." in n and p.device.type == "meta"
            ]
            if unexpected:
                raise AdapterLoadError(
                    name, f"{len(unexpected)} weights match no layer, e.g. {unexpected[0]}"
                )
            if meta:
                raise AdapterLoadError(name, f"{len(meta)} LoRA weights missing, e.g. {meta[0]}")
            slot = self.lora.add(name, self.model, peft_name=internal, saved_modules=saved_modules)
        except AdapterLoadError:
            raise
        except Exception as exc:
            raise AdapterLoadError(name, f"weights do not fit the base model: {exc}") from exc
        finally:
            # peft is the loader; the stacked slot is the resident copy. Dropping peft's copy
            # right away keeps memory single and peft's module tree the size of the base, so
            # the next load costs the same however many adapters are resident.
            self._drop_peft_adapter(internal, collect=False)
        if created:
            logger.info("peft model created around %s", type(self.model).__name__)
        return slot

    def _add_peft_adapter(self, name: str, internal: str, peft_config: Any) -> bool:
        """Inject an (empty) adapter ``internal`` into the model with peft.

        Returns:
            True if this call created the ``PeftModel`` (the first adapter).

        Raises:
            AdapterLoadError: peft cannot inject it into the base (it is removed again).
        """
        from peft import PeftModel

        created = False
        try:
            if self.peft is None:
                with warnings.catch_warnings():
                    # peft probes the deprecated ``is_gradient_checkpointing`` attribute.
                    warnings.simplefilter("ignore", FutureWarning)
                    self.peft = PeftModel(
                        self.model, peft_config, adapter_name=internal, low_cpu_mem_usage=True
                    )
                created = True
            else:
                self.peft.add_adapter(internal, peft_config, low_cpu_mem_usage=True)
        except Exception as exc:
            self._drop_peft_adapter(internal)
            raise AdapterLoadError(name, f"does not fit the base model: {exc}") from exc
        return created

    def _drop_peft_adapter(self, name: str, *, collect: bool = True) -> None:
        if self.peft is not None and name in self.peft.peft_config:
            with warnings.catch_warnings():
                # "Adapter X was active which is now deleted": expected, adapters are disabled.
                warnings.simplefilter("ignore", UserWarning)
                self.peft.delete_adapter(name)
        if collect:
            self._free_memory()

    def _free_memory(self) -> None:
        # Tensors are freed by reference counting as soon as the slot and peft's modules drop
        # them; a young-generation collection (about 1 ms, a full one takes ~200 ms with torch
        # and transformers loaded) catches the short-lived cycles a load leaves behind.
        gc.collect(1)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand freed blocks back to the driver

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name`` from the model and free its memory.

        Args:
            name: A loaded adapter.

        Raises:
            KeyError: It is not loaded.
        """
        info = self.adapters.pop(name)
        self.lora.remove(name)
        info.head = None
        self._free_memory()

    def slot(self, adapter: str | None) -> int:
        """The batched-LoRA slot of a loaded adapter (``0`` for ``None``/``"__base__"``).

        Raises:
            KeyError: Not loaded.
        """
        if adapter is None or adapter == BASE_ADAPTER:
            return BASE_SLOT
        return self.adapters[adapter].slot

    def set_capacity(self, max_adapters: int) -> None:
        """Resize the batched LoRA stacks to ``max_adapters`` slots (evict before shrinking)."""
        self.lora.set_capacity(max_adapters)

    def highest_slot(self) -> int:
        """The highest batched-LoRA slot in use, 0 when no adapter is resident: the fewest
        slots :meth:`set_capacity` can shrink to."""
        return max(self.lora.adapters().values(), default=0)

    def adapter_labels(self, name: str) -> list[str] | None:
        """Label names adapter ``name`` answers with (its own head's, else the base's), or
        ``None`` when it is not resident."""
        info = self.adapters.get(name)
        return None if info is None else (info.labels or self.base_labels)

    # ----------------------------------------------------------------- generation

    def check_prompt_chars(self, chars: int, param: str = "prompt") -> None:
        """Refuse text too long for the context before anything tokenizes it.

        Args:
            chars: Length of the text in characters.
            param: The request field it came from (named in the error).

        Raises:
            InvalidRequestError: ``chars`` > :attr:`prompt_char_limit` (context length in tokens
                x :attr:`chars_per_token`): the text cannot fit in the context.
        """
        limit = self.prompt_char_limit
        if limit is not None and chars > limit:
            raise InvalidRequestError(
                f"'{param}' has {chars} characters, more than can fit in this model's context "
                f"of {self.max_positions} tokens (at most {limit} characters, "
                f"{self.chars_per_token} per token)",
                param=param,
            )

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text is tokenised with special tokens, like ``generate``).

        Thread-safe with other tokenizer reads (run it off the event loop for long text).

        Args:
            prompt: Text or a list of token ids.

        Returns:
            Token ids.

        Raises:
            InvalidRequestError: Empty prompt, text longer than :attr:`prompt_char_limit`
                (refused before tokenizing) or ids outside the vocabulary (param ``prompt``).
        """
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt must not be empty", param="prompt")
            self.check_prompt_chars(len(prompt))
            ids = list(self.tokenizer(prompt).input_ids)
        else:
            ids = list(prompt)
            vocab = int(self.config.vocab_size)
            bad = [
                t
                for t in ids
                if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab
            ]
            if bad:
                raise InvalidRequestError(
                    f"prompt token ids must be integers in [0, {vocab}), got {bad[:3]}",
                    param="prompt",
                )
        if not ids:
            raise InvalidRequestError("prompt has no tokens", param="prompt")
        return ids

    def start_generation(self, rows: Sequence[GenerationRow]) -> GenerationBatch:
        """Start a mixed generation batch; call :meth:`GenerationBatch.step` until done.

        Args:
            rows: One :class:`GenerationRow` per request (its own adapter slot and parameters).

        Returns:
            The batch.
        """
        return GenerationBatch(self, list(rows))

    def generate(self, rows: Sequence[GenerationRow]) -> list[GenerationRow]:
        """Run a mixed batch to completion (convenience for tests and benchmarks).

        Args:
            rows: Requests.

        Returns:
            The same rows, finished (``token_ids``, ``text``, ``finish_reason`` filled in).
        """
        batch = self.start_generation(rows)
        while not batch.done:
            batch.step()
        return list(rows)

    def forward_logits(
        self,
        rows: Sequence[GenerationRow],
        cache: Any,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """One forward pass of the causal LM for the active rows; last position's logits.

        Args:
            rows: Active rows (their slots route the LoRA delta).
            cache: The batch's ``DynamicCache``.
            ids: ``[N, T]`` int64 input ids.
            mask: ``[N, past + T]`` int64 attention mask (0 = left padding).
            positions: ``[N, T]`` int64 position ids.

        Returns:
            ``[N, vocab]`` float32 logits of the last position.
        """
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
        }
        # transformers 5 renamed ``past_key_values`` to ``cache``; accept both generations.
        kwargs["cache" if "cache" in self._forward_params else "past_key_values"] = cache
        if "logits_to_keep" in self._forward_params:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode(), self.lora.rows([r.slot for r in rows]):
            out = self.model(**kwargs)
        return out.logits[:, -1, :].float()

    # ----------------------------------------------------------------- classification

    def encode_classification(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        """Tokenize classify inputs, truncated to the encoder's length.

        As transformers' text-classification pipeline with ``truncation=True``: each text
        keeps its first :attr:`classify_max_tokens` tokens (special tokens included). Text past
        :attr:`classify_max_chars` characters is cut before tokenizing, so a huge input costs no
        more than one that just fills the encoder (the cut changes nothing unless the kept
        part is mostly whitespace or characters the tokenizer drops). Thread-safe with other
        tokenizer reads (run it off the event loop).

        Args:
            texts: Texts.

        Returns:
            Per text, its unpadded features: ``input_ids``, ``attention_mask`` and (when the
            tokenizer makes them) ``token_type_ids``, lists of ints.
        """
        cut = [t[: self.classify_max_chars] for t in texts]
        enc = self.tokenizer(cut, truncation=True, max_length=self.classify_max_tokens)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{k: list(enc[k][i]) for k in keys} for i in range(len(cut))]

    def classify(
        self, texts: Sequence[str], adapters: Sequence[str | None]
    ) -> list[tuple[list[str], list[float]]]:
        """Classify a mixed batch: text ``i`` with ``adapters[i]``'s LoRA and head.

        :meth:`encode_classification` then :meth:`classify_encoded`.

        Args:
            texts: Texts (non-empty).
            adapters: Adapter per text (``None``/``"__base__"`` = base), same length.

        Returns:
            Per text: (label names, float32 logits as a list).

        Raises:
            ValueError: ``texts`` and ``adapters`` differ in length, or the task is not
                classification.
            KeyError: An adapter is not loaded.
        """
        if self.task != "text-classification":
            raise ValueError("classify needs a text-classification base")
        return self.classify_encoded(self.encode_classification(texts), adapters)

    def classify_encoded(
        self, features: Sequence[dict[str, list[int]]], adapters: Sequence[str | None]
    ) -> list[tuple[list[str], list[float]]]:
        """Classify a mixed batch of tokenized texts: row ``i`` with ``adapters[i]``.

        The encoder runs once for the whole batch (rows padded to the longest); rows whose
        adapter has its own head get that head applied to their features (any label count),
        the others the base head.

        Args:
            features: Per text, what :meth:`encode_classification` made of it (non-empty).
            adapters: Adapter per row (``None``/``"__base__"`` = base), same length.

        Returns:
            Per row: (label names, float32 logits as a list).

        Raises:
            ValueError: ``features`` and ``adapters`` differ in length, or the task is not
                classification.
            KeyError: An adapter is not loaded.
        """
        if self.task != "text-classification":
            raise ValueError("classify needs a text-classification base")
        if len(features) != len(adapters):
            raise ValueError("texts and adapters must have the same length")
        assert self._head_module is not None and self.base_labels is not None
        padded = self.tokenizer.pad([dict(f) for f in features], padding=True, return_tensors="pt")
        enc = padded.to(self.device)
        slots = [self.slot(a) for a in adapters]
        infos = [None if a in (None, BASE_ADAPTER) else self.adapters[a] for a in adapters]
        with torch.inference_mode(), self.lora.rows(slots):
            base_logits = self.model(**enc).logits  # [N, base labels]
            hidden = self._features  # the head's input: [N, H] (BERT) or [N, T, H]
            self._features = None
            return row_outputs(
                base_logits,
                hidden,
                infos,
                self.base_labels,
                self._head_module,
                enc["input_ids"],
                self.config,
            )
