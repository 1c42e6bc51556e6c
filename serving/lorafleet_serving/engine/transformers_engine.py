"""The engine: one base model, LoRA adapters loaded by peft, mixed-adapter batches (no Ray here).

Synchronous and single-threaded by design: the asyncio facade (:mod:`.model_server`) runs every
call on one worker thread. The engine

- loads the base with ``AutoModelForCausalLM`` (``text-generation``) or
  ``AutoModelForSequenceClassification`` (``text-classification``) in the requested dtype on
  cuda when present, else cpu;
- loads an adapter folder with peft (``PeftConfig.from_pretrained``, ``load_peft_weights``,
  ``PeftModel``/``add_adapter`` + ``set_peft_model_state_dict`` with ``low_cpu_mem_usage`` -
  what ``PeftModel.load_adapter`` does) and copies its LoRA weights into
  :class:`~.lora_batched.BatchedLoRA`; classification heads saved with the adapter
  (``modules_to_save: [classifier]``, any label count) are kept by the engine and applied per
  row on the shared encoder's features;
- unloads with ``delete_adapter`` and frees the memory (gc, and ``torch.cuda.empty_cache``);
- runs a mixed batch: generation step by step (:class:`GenerationBatch`, KV cache, left
  padding, greedy or temperature/top-p sampling, stop strings, token counts) or classification.
"""

from __future__ import annotations

import copy
import gc
import inspect
import json
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter_support import (
    HEAD_NAMES,
    PEFT_PREFIX,
    base_weight_copies,
    classification_head_name,
    copy_problems,
    is_lora_key,
    saved_module_names,
    unsupported_features,
)
from .errors import AdapterLoadError, InvalidRequestError
from .lora_batched import BASE_SLOT, BatchedLoRA
from .types import BASE_ADAPTER, TASKS, FinishReason

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(
    dtype: str | torch.dtype, device: torch.device, checkpoint_dtype: Any = None
) -> torch.dtype:
    """Map a dtype name to a torch dtype.

    Args:
        dtype: ``"auto"``, ``"float32"``, ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``.
            ``"auto"`` is float32 on cpu (half-precision matmuls are slow there) and, on a GPU,
            the checkpoint's half-precision dtype (``dtype``/``torch_dtype`` in config.json) if
            it has one, else float16.
        device: Target device.
        checkpoint_dtype: The checkpoint's recorded dtype (a ``torch.dtype`` or its name).

    Returns:
        The torch dtype.

    Raises:
        InvalidRequestError: Unknown name (``param="dtype"``).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        recorded = str(checkpoint_dtype).removeprefix("torch.") if checkpoint_dtype else ""
        if recorded == "bfloat16" and (device.type != "cuda" or torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16
    if dtype not in _DTYPES:
        raise InvalidRequestError(
            f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}", param="dtype"
        )
    return _DTYPES[dtype]


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class AdapterInfo:
    """What the engine knows about a loaded adapter.

    Attributes:
        name: Served name.
        path: Folder it was loaded from.
        slot: Its slot in the batched LoRA stacks.
        rank: LoRA ``r``.
        lora_alpha: LoRA alpha.
        target_modules: Adapted module names.
        head: Classification head parameters saved with the adapter (``modules_to_save``), or
            ``None`` to use the base's head.
        labels: Label names of this adapter's head (classification only).
        nbytes: Bytes of the adapter's tensors as read from its files.
        peft_name: The name peft knows it by (``lf<n>``; served names may contain dots).
    """

    name: str
    path: str
    slot: int
    rank: int
    lora_alpha: float
    target_modules: list[str]
    head: dict[str, torch.Tensor] | None = None
    labels: list[str] | None = None
    nbytes: int = 0
    peft_name: str = ""


def _labels_list(labels: dict | Sequence[str] | None, n: int, where: str) -> list[str]:
    if labels is None:
        return [f"LABEL_{i}" for i in range(n)]
    if isinstance(labels, dict):
        try:
            items = {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{where}: label ids must be integers: {exc}") from exc
        if sorted(items) != list(range(n)):
            raise InvalidRequestError(
                f"{where}: labels must have ids 0..{n - 1} for a head with {n} outputs, "
                f"got {sorted(items)}",
                param="labels",
            )
        return [items[i] for i in range(n)]
    out = [str(x) for x in labels]
    if len(out) != n:
        raise InvalidRequestError(
            f"{where}: {len(out)} labels for a head with {n} outputs", param="labels"
        )
    return out


def _excluding_saved(exclude: str | list[str] | None, saved: list[str]) -> str | list[str] | None:
    """``exclude_modules`` that also keeps LoRA out of the modules saved whole, as peft does
    when ``modules_to_save`` is set (``check_target_module_exists`` in
    ``peft/tuners/tuners_utils.py``: a module in or under a saved one is never a target). The
    engine hands peft no ``modules_to_save`` (it swaps those modules itself), so it says so
    with ``exclude_modules`` instead, in peft's own forms (a regex is full-matched; a list
    entry matches the module name or its ``.``-suffix)."""
    if not saved:
        return exclude
    inside = "(?:^|.*\\.)(?:" + "|".join(re.escape(m) for m in saved) + ")(?:$|\\..*)"
    if exclude is None or exclude == []:
        return inside
    if isinstance(exclude, str):
        return f"(?:{exclude})|{inside}"
    listed = "(?:.*\\.)?(?:" + "|".join(re.escape(e) for e in exclude) + ")"
    return f"{listed}|{inside}"


def _without_lora(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every peft ``LoraLayer`` in it (or itself) replaced by
    the layer it wraps: the plain module as the base model had it, for an adapter's own copy
    (``modules_to_save``) whatever other adapters have put LoRA on since."""
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        module = module.get_base_layer()
    clone = copy.deepcopy(module)
    wrapped = [(n, m) for n, m in clone.named_modules() if n and isinstance(m, LoraLayer)]
    for name, layer in sorted(wrapped, key=lambda item: -len(item[0])):
        parent_name, _, child = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        setattr(parent, child, layer.get_base_layer())
    # The per-row hooks BatchedLoRA put on the base's modules are not the copy's: a copy
    # that kept them would route its own rows again (or call itself).
    for sub in clone.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs"):
            getattr(sub, hooks, {}).clear()
    return clone


class Engine:
    """One base model plus resident LoRA adapters; runs mixed-adapter batches.

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
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        if task not in TASKS:
            raise InvalidRequestError(f"task must be one of {TASKS}, got {task!r}", param="task")
        self.base_path = str(base_path)
        self.task = task
        self.device = torch.device(device) if device is not None else default_device()
        base_config = AutoConfig.from_pretrained(self.base_path)
        # ``dtype`` (transformers 5) or ``torch_dtype`` (4.x); read the stored values directly,
        # the 4.x attribute name logs a deprecation warning when read through the property.
        stored = vars(base_config)
        recorded = stored.get("dtype") or stored.get("torch_dtype")
        self.dtype = resolve_dtype(dtype, self.device, recorded)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        auto = (
            AutoModelForCausalLM
            if task == "text-generation"
            else AutoModelForSequenceClassification
        )
        model = auto.from_pretrained(self.base_path, dtype=self.dtype)
        self.model: nn.Module = model.to(self.device).eval()
        self.config = self.model.config
        self.lora = BatchedLoRA(max_adapters, dtype=self.dtype, device=self.device)
        self.peft: Any = None  # peft.PeftModel once the first adapter is loaded
        self.adapters: dict[str, AdapterInfo] = {}
        self._peft_counter = 0
        self._forward_params = set(inspect.signature(self.model.forward).parameters)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.eos_token_ids = self._eos_ids()
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
            self.base_labels = _labels_list(given, n, "base labels")
            self._head_name, self._head_module = self._find_head()
            self._head_module.register_forward_hook(self._capture_features)

    # ----------------------------------------------------------------- helpers

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return ids

    def _find_head(self) -> tuple[str, nn.Module]:
        name = classification_head_name(self.model)
        if name is None:
            raise InvalidRequestError(
                f"{type(self.model).__name__} has no head named one of {list(HEAD_NAMES)}",
                param="task",
            )
        return name, getattr(self.model, name)

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

        Args:
            name: Served name (must not be loaded already).
            path: Folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (or .bin).
            labels: Label names of the adapter's own classification head (``{"0": name}`` or a
                list); default: the base's names when the head has as many outputs, else
                ``LABEL_<i>``.

        Returns:
            The :class:`AdapterInfo`.

        Raises:
            AdapterLoadError: Missing/corrupt files, not a LoRA adapter, target modules not in
                the base, weights that do not fit, an unsupported LoRA variant, or labels that do
                not fit the head. The model is left as it was.
        """
        from peft import PeftConfig, PeftModel, PeftType
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        if name in self.adapters:
            raise AdapterLoadError(name, "already loaded")
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise AdapterLoadError(name, f"no adapter_config.json in {folder}")
        try:
            config = PeftConfig.from_pretrained(str(folder))
        except Exception as exc:
            raise AdapterLoadError(name, f"adapter_config.json is invalid: {exc}") from exc
        if config.peft_type != PeftType.LORA:
            raise AdapterLoadError(name, f"peft_type is {config.peft_type}, not LORA")
        try:
            weights = load_peft_weights(str(folder), device=str(self.device))
        except Exception as exc:
            raise AdapterLoadError(name, f"adapter weights cannot be read: {exc}") from exc
        # The installer ran the same check at install time; this catches files changed since.
        # The raw file, not peft's config: peft drops keys it does not know.
        try:
            raw = json.loads((folder / "adapter_config.json").read_text())
        except ValueError as exc:
            raise AdapterLoadError(name, f"adapter_config.json is invalid: {exc}") from exc
        unsupported = unsupported_features(
            {**config.to_dict(), **raw}, weights.keys(), self.model, task=self.task
        )
        # modules_to_save: a classification base's head is applied per row by the engine;
        # any other module the adapter carries a copy of is swapped per row by BatchedLoRA.
        saved_entries = list(dict.fromkeys(config.modules_to_save or []))
        head_names = {
            n for n in saved_entries if self.task == "text-classification" and n in HEAD_NAMES
        }
        saved_paths = (
            []
            if unsupported
            else self._saved_module_paths(name, [n for n in saved_entries if n not in head_names])
        )
        copies = base_weight_copies(weights.keys(), self.model, [*saved_paths, *head_names])
        unsupported += copy_problems(copies, weights.__getitem__, self._base_tensor)
        if unsupported:
            raise AdapterLoadError(name, "; ".join(unsupported))
        weights = {k: v for k, v in weights.items() if k not in copies}  # equal to the base's
        lora_sd: dict[str, torch.Tensor] = {}
        head_sd: dict[str, torch.Tensor] = {}
        saved_sd: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            module_path = key.removeprefix(PEFT_PREFIX)
            top = module_path.split(".", 1)[0]
            owner = next((q for q in saved_paths if module_path.startswith(q + ".")), None)
            if top in head_names:
                head_sd[module_path] = tensor
            elif owner is not None:
                saved_sd.setdefault(owner, {})[module_path[len(owner) + 1 :]] = tensor
            elif is_lora_key(key):
                lora_sd[key] = tensor
            # Anything else names no base weight (those are in `copies`): unused, and never
            # handed to peft, which would load it into the shared base.
        head = self._adapter_head(name, head_names, head_sd)
        saved_modules = self._saved_copies(name, saved_sd)
        if not lora_sd and head is None and not saved_modules:
            raise AdapterLoadError(name, "the adapter holds no weights")
        # peft keys adapters by name inside module paths and ModuleDicts: a served name with a
        # "." (or one contained in "lora_") would break it, so peft gets an internal name.
        self._peft_counter += 1
        internal = f"lf{self._peft_counter}"
        peft_config = copy.deepcopy(config)
        peft_config.exclude_modules = _excluding_saved(config.exclude_modules, saved_entries)
        peft_config.modules_to_save = None
        peft_config.task_type = None
        peft_config.inference_mode = True
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
        try:
            result = set_peft_model_state_dict(
                self.peft, lora_sd, adapter_name=internal, low_cpu_mem_usage=True
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
        head_labels = None
        if head is not None:
            n = _head_outputs(head)
            if labels is None and self.base_labels is not None and n == len(self.base_labels):
                labels = self.base_labels  # same size as the base head: its names, unless given
            try:
                head_labels = _labels_list(labels, n, f"adapter {name!r}")
            except InvalidRequestError as exc:
                self.lora.remove(name)
                raise AdapterLoadError(name, exc.message) from exc
        elif self.task == "text-classification" and labels is not None:
            assert self.base_labels is not None
            try:
                head_labels = _labels_list(labels, len(self.base_labels), f"adapter {name!r}")
            except InvalidRequestError as exc:
                self.lora.remove(name)
                raise AdapterLoadError(name, exc.message) from exc
        nbytes = sum(t.numel() * t.element_size() for t in weights.values())
        info = AdapterInfo(
            name=name,
            path=str(folder),
            slot=slot,
            rank=int(config.r),
            lora_alpha=float(config.lora_alpha),
            target_modules=sorted(config.target_modules or []),
            head=head,
            labels=head_labels,
            nbytes=nbytes,
            peft_name=internal,
        )
        self.adapters[name] = info
        return info

    def _base_tensor(self, key: str) -> torch.Tensor | None:
        """The base model's tensor named ``key`` (its own name, before peft wrapped it)."""
        module_path, _, param = key.rpartition(".")
        for path in (f"{module_path}.base_layer", module_path):
            try:
                return self.model.get_submodule(path).get_parameter(param).detach()
            except AttributeError:
                continue
        return None

    def _saved_module_paths(self, name: str, entries: list[str]) -> list[str]:
        """Qualified names of the modules ``modules_to_save`` entries select (peft's rule,
        :func:`~.adapter_support.saved_module_names`), longest first."""
        names = [n for n, _ in self.model.named_modules()]
        for entry in entries:
            if not saved_module_names([entry], names):
                raise AdapterLoadError(
                    name, f"modules_to_save entry {entry!r} names no module of the base model"
                )
        return saved_module_names(entries, names)

    def _saved_copies(
        self, name: str, saved_sd: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, nn.Module]:
        """The adapter's own copies of whole modules, built from the base's modules."""
        modules = dict(self.model.named_modules())
        copies: dict[str, nn.Module] = {}
        for path, params in saved_sd.items():
            module = _without_lora(modules[path])
            try:
                module.load_state_dict(
                    {k: v.to(self.device, self.dtype) for k, v in params.items()}, strict=True
                )
            except RuntimeError as exc:
                raise AdapterLoadError(
                    name, f"modules_to_save {path!r}: weights do not fit the module: {exc}"
                ) from exc
            copies[path] = module.eval()
        return copies

    def _adapter_head(
        self, name: str, head_names: set[str], head_sd: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        if not head_names:
            return None
        # unsupported_features has refused any modules_to_save but this base's own head.
        assert self._head_module is not None
        prefix = f"{self._head_name}."
        params = {
            k.removeprefix(prefix): v.to(self.device, self.dtype)
            for k, v in head_sd.items()
            if k.startswith(prefix)
        }
        if not params:
            return None
        expected = {n for n, _ in self._head_module.named_parameters()}
        if set(params) != expected:
            raise AdapterLoadError(
                name,
                f"head weights {sorted(params)} do not match the base head {sorted(expected)}",
            )
        return params

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
        results: list[tuple[list[str], list[float]] | None] = [None] * len(features)
        with torch.inference_mode(), self.lora.rows(slots):
            base_logits = self.model(**enc).logits  # [N, base labels]
            hidden = self._features  # the head's input: [N, H] (BERT) or [N, T, H]
            self._features = None
            own_heads: dict[str, list[int]] = {}
            for i, info in enumerate(infos):
                if info is not None and info.head is not None:
                    own_heads.setdefault(info.name, []).append(i)
                else:
                    labels = (info.labels if info is not None else None) or self.base_labels
                    results[i] = (labels, base_logits[i].float().tolist())
            for name, rows in own_heads.items():
                # One call of each adapter's own head on its rows' shared-encoder features.
                info = self.adapters[name]
                assert hidden is not None and info.head is not None
                index = torch.tensor(rows, device=hidden.device)
                logits = torch.func.functional_call(
                    self._head_module, info.head, (hidden.index_select(0, index),)
                )
                for n, i in enumerate(rows):
                    row = logits[n]
                    if row.dim() == 2:  # decoder-style head on every position: pool the last
                        row = row[_last_token_index(enc["input_ids"][i], self.config)]
                    results[i] = (info.labels or [], row.float().tolist())
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


def _head_outputs(head: dict[str, torch.Tensor]) -> int:
    """Number of outputs of a head: rows of its last 2-D weight (Linear ``[out, in]``)."""
    mats = [t for t in head.values() if t.dim() == 2]
    if not mats:
        raise AdapterLoadError("head", "classification head has no weight matrix")
    return int(mats[-1].shape[0])


def _last_token_index(input_ids: torch.Tensor, config: Any) -> int:
    """Index of the last non-padding token, as transformers' decoder classifiers pool."""
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        return int(input_ids.shape[-1] - 1)
    non_pad = (input_ids != pad).to(torch.long)
    return int((torch.arange(input_ids.shape[-1], device=input_ids.device) * non_pad).argmax())


# --------------------------------------------------------------------- generation rows / batch


@dataclass
class GenerationRow:
    """One request inside a :class:`GenerationBatch` (inputs and running state).

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
    generator: torch.Generator | None = None
    prefix_offset: int = 0
    read_offset: int = 0


@dataclass
class StepEvent:
    """What one :meth:`GenerationBatch.step` produced for one row.

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


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that could be the start of a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class GenerationBatch:
    """Step-wise decoding of a mixed-adapter batch with a KV cache.

    Rows are left-padded; the prefill runs in the first :meth:`step`, each later step feeds one
    token per active row. Finished or cancelled rows are dropped from the cache
    (``DynamicCache.batch_select_indices``) so they cost nothing afterwards.

    Args:
        engine: The engine (text-generation).
        rows: The requests.
    """

    def __init__(self, engine: Engine, rows: list[GenerationRow]) -> None:
        from transformers import DynamicCache

        self.engine = engine
        self.rows = rows
        self.active = list(range(len(rows)))
        self.cache = DynamicCache(config=engine.config)
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        for row in rows:
            if row.temperature > 0 and row.seed is not None:
                row.generator = torch.Generator(device=engine.device).manual_seed(row.seed)

    @property
    def done(self) -> bool:
        """True when every row has finished or was cancelled."""
        return not self.active

    def _prefill_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.engine.device
        pad = int(self.engine.tokenizer.pad_token_id)
        longest = max(len(self.rows[i].prompt_ids) for i in self.active)
        ids = torch.full((len(self.active), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(self.active), longest), dtype=torch.long)
        for n, i in enumerate(self.active):
            p = self.rows[i].prompt_ids
            ids[n, longest - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[n, longest - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(dev), mask.to(dev), positions.to(dev)

    def step(self) -> list[StepEvent]:
        """Generate one token for every active row.

        Returns:
            One :class:`StepEvent` per row that was active (finished rows carry their reason).
        """
        self._drop([i for i in self.active if self.rows[i].cancelled])
        if not self.active:
            return []
        engine = self.engine
        active_rows = [self.rows[i] for i in self.active]
        if self._mask is None:
            ids, mask, positions = self._prefill_inputs()
        else:
            assert self._last is not None and self._positions is not None
            ids = self._last.unsqueeze(1)
            ones = torch.ones((len(self.active), 1), dtype=torch.long, device=engine.device)
            mask = torch.cat([self._mask, ones], dim=1)
            positions = self._positions[:, -1:] + 1
        logits = engine.forward_logits(active_rows, self.cache, ids, mask, positions)
        self._mask, self._positions = mask, positions
        tokens = self._choose(logits, active_rows)
        self._last = tokens.to(engine.device)
        events: list[StepEvent] = []
        finished: list[int] = []
        for n, i in enumerate(self.active):
            events.append(self._advance(i, self.rows[i], int(tokens[n])))
            if self.rows[i].finish_reason is not None:
                finished.append(i)
        self._drop(finished)
        return events

    def _choose(self, logits: torch.Tensor, rows: list[GenerationRow]) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        out = greedy.cpu()
        for n, row in enumerate(rows):
            if row.temperature <= 0:
                continue
            # Shifted so the largest is 0 before dividing: any temperature > 0 stays finite
            # (logits / 1e-40 would overflow to inf and make the softmax nan).
            shifted = logits[n] - logits[n].max()
            probs = torch.softmax(shifted / row.temperature, dim=-1)
            if row.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < row.top_p
                keep[0] = True
                filtered = torch.zeros_like(probs)
                filtered[order[keep]] = sorted_p[keep]
                probs = filtered / filtered.sum()
            out[n] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return out

    def _advance(self, i: int, row: GenerationRow, token: int) -> StepEvent:
        tok = self.engine.tokenizer
        row.token_ids.append(token)
        ids = row.token_ids
        finish: FinishReason | None = None
        if token in self.engine.eos_token_ids:
            finish = "stop"
        elif len(ids) >= row.max_tokens:
            finish = "length"
        # Incremental detokenisation with prefix/read offsets (as in vLLM): decode only the
        # last few tokens each step and commit text once it no longer ends in an incomplete
        # UTF-8 sequence (U+FFFD); on the last step commit whatever there is. Decoding the
        # whole sequence every step would be quadratic in the completion length.
        prefix = tok.decode(ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
        new = tok.decode(ids[row.prefix_offset :], skip_special_tokens=True)
        if len(new) > len(prefix) and (finish is not None or not new.endswith("\ufffd")):
            row.text += new[len(prefix) :]
            row.prefix_offset, row.read_offset = row.read_offset, len(ids)
        text = row.text
        cut = len(text)
        for stop in row.stop:
            pos = text.find(stop)
            if pos != -1 and pos < cut:
                cut = pos
                finish = "stop"
        safe = cut if finish is not None else len(text) - _held_back(text, row.stop)
        delta = text[row.emitted : safe] if safe > row.emitted else ""
        row.emitted = max(row.emitted, safe)
        if finish is not None:
            row.finish_reason = finish
            row.text = text[:cut]
        return StepEvent(row=i, token_id=token, text=delta, finish_reason=finish)

    def can_join(self) -> bool:
        """Whether rows may join this batch between steps (its KV cache can be merged).

        True before the first step and, after it, when every cache layer is a plain
        ``DynamicLayer`` (sliding-window or linear-attention layers are not merged).
        """
        from transformers.cache_utils import DynamicLayer

        if self._mask is None:
            return True
        if self.cache is None:
            return False
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def add(self, rows: list[GenerationRow]) -> list[StepEvent]:
        """Join ``rows`` to the running batch at a step boundary (continuous batching).

        The new rows are prefilled on their own (with their adapters), then their KV cache,
        attention mask and positions are merged into the batch: both sides are left-padded
        to the longer sequence (padding is masked out) and stacked on the batch dimension.
        Their rows are numbered after the existing ones.

        Args:
            rows: Requests to add.

        Returns:
            The events of the new rows' first generated token (row indices in this batch).

        Raises:
            RuntimeError: :meth:`can_join` is false.
        """
        if not self.can_join():
            raise RuntimeError("this batch's KV cache cannot take new rows")
        offset = len(self.rows)
        self.rows.extend(rows)
        if self._mask is None:  # not started: the rows simply take part in the prefill
            self.active.extend(range(offset, offset + len(rows)))
            return []
        joining = GenerationBatch(self.engine, rows)
        events = joining.step()
        for event in events:
            event.row += offset
        if joining.active:
            self._merge(joining, offset)
        return events

    def _merge(self, other: GenerationBatch, offset: int) -> None:
        assert self._mask is not None and other._mask is not None
        assert self._positions is not None and other._positions is not None
        assert self._last is not None and other._last is not None
        length, other_length = self._mask.shape[1], other._mask.shape[1]
        total = max(length, other_length)

        def left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            """``t`` with ``n`` zeros prepended along ``dim`` (masked-out padding)."""
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [
                    left_pad(mine.keys, total - length, -2),
                    left_pad(theirs.keys, total - other_length, -2),
                ]
            )
            mine.values = torch.cat(
                [
                    left_pad(mine.values, total - length, -2),
                    left_pad(theirs.values, total - other_length, -2),
                ]
            )
        self._mask = torch.cat(
            [
                left_pad(self._mask, total - length, 1),
                left_pad(other._mask, total - other_length, 1),
            ]
        )
        self._positions = torch.cat([self._positions[:, -1:], other._positions[:, -1:]])
        self._last = torch.cat([self._last, other._last])
        self.active.extend(offset + i for i in other.active)
        self._trim_left()

    def _trim_left(self) -> None:
        """Drop KV columns that are padding for every active row.

        Rows leave and join a long-running batch, so without this the shared KV length (and the
        attention cost of every step) would keep growing with the batch's age instead of the
        longest live sequence. Positions are explicit, so nothing else changes.
        """
        if self._mask is None or not self.active or not self.can_join():
            return
        used = self._mask.any(dim=0)
        first = int(used.to(torch.int8).argmax())
        if first == 0:
            return
        self._mask = self._mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]

    def _drop(self, rows: list[int]) -> None:
        if not rows:
            return
        keep = [n for n, i in enumerate(self.active) if i not in set(rows)]
        self.active = [self.active[n] for n in keep]
        if self._mask is None:
            return
        if not self.active:
            self.cache = None
            self._mask = self._positions = self._last = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.engine.device)
        self.cache.batch_select_indices(index)
        assert self._positions is not None and self._last is not None
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._last = self._last.index_select(0, index)
        self._trim_left()


def softmax_scores(labels: Sequence[str], logits: Sequence[float]) -> dict[str, float]:
    """Softmax of ``logits`` keyed by label name.

    Args:
        labels: Label names (same length as ``logits``).
        logits: Raw scores.

    Returns:
        ``{label: probability}`` summing to 1.
    """
    m = max(logits)
    exps = [math.exp(v - m) for v in logits]
    total = sum(exps)
    return {label: e / total for label, e in zip(labels, exps, strict=True)}


def read_adapter_rank(path: str | Path) -> int | None:
    """The ``r`` of an adapter folder's ``adapter_config.json``, or ``None`` if unreadable."""
    try:
        return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
