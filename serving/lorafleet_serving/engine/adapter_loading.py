"""Reading a LoRA adapter folder and sorting its tensors for the engine (torch + peft, no state).

The steps of :meth:`TransformersEngine.load_adapter
<lorafleet_serving.engine.transformers_engine.TransformersEngine.load_adapter>` that need only
the adapter's files and the base model:

- :func:`read_adapter_files`: ``adapter_config.json`` through peft (``PeftConfig``) and raw, and
  the weights (``load_peft_weights``);
- :func:`select_weights`: the capability check shared with the installer
  (:func:`~lorafleet_serving.adapter_support.unsupported_features`), then the tensors sorted
  into LoRA weights (for peft), the classification head (applied per row by the engine) and
  ``modules_to_save`` copies (swapped per row by :class:`~.lora_batched.BatchedLoRA`); copies
  of base weights equal to the base's are dropped;
- :func:`saved_copies`, :func:`adapter_head`: the adapter's own modules and head, built from the
  base's;
- :func:`labels_list`, :func:`peft_load_config`, :func:`without_lora`: the helpers they share
  with the engine.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapter_support import (
    HEAD_NAMES,
    PEFT_PREFIX,
    base_weight_copies,
    copy_problems,
    is_lora_key,
    saved_module_names,
    unsupported_features,
)
from ..errors import AdapterLoadError, InvalidRequestError
from ..types import TEXT_CLASSIFICATION


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


def labels_list(labels: dict | Sequence[str] | None, n: int, where: str) -> list[str]:
    """Label names for a head with ``n`` outputs.

    Args:
        labels: ``{"0": "neg", ...}`` (ids ``0..n-1``), a list of ``n`` names, or ``None``
            for ``LABEL_<i>``.
        n: Number of outputs of the head.
        where: Whose labels these are (starts the error message).

    Returns:
        ``n`` names, by output index.

    Raises:
        InvalidRequestError: Ids that are not integers or not ``0..n-1``, or a list of
            another length (``param="labels"``).
    """
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


def label_names(
    head: dict[str, torch.Tensor] | None,
    labels: dict | Sequence[str] | None,
    base_labels: list[str] | None,
    task: str,
    where: str,
) -> list[str] | None:
    """Label names of an adapter: its own head's, or the given names for the base's head.

    Args:
        head: The adapter's own head parameters, or ``None``.
        labels: The registry's labels for it, or ``None``: then the base's names when its head
            has as many outputs, else ``LABEL_<i>``.
        base_labels: The base head's names (``None`` for generation).
        task: The base's task.
        where: Whose labels these are (starts the error message).

    Returns:
        The names, or ``None`` when the adapter has no head and no labels were given (it
        answers with the base's).

    Raises:
        InvalidRequestError: The labels do not fit the head (:func:`labels_list`).
        AdapterLoadError: ``head`` has no weight matrix.
    """
    if head is not None:
        n = head_outputs(head)
        if labels is None and base_labels is not None and n == len(base_labels):
            labels = base_labels  # same size as the base head: its names, unless given
        return labels_list(labels, n, where)
    if task == TEXT_CLASSIFICATION and labels is not None:
        assert base_labels is not None
        return labels_list(labels, len(base_labels), where)
    return None


def head_outputs(head: dict[str, torch.Tensor]) -> int:
    """Number of outputs of a head: rows of its last 2-D weight (Linear ``[out, in]``)."""
    mats = [t for t in head.values() if t.dim() == 2]
    if not mats:
        raise AdapterLoadError("head", "classification head has no weight matrix")
    return int(mats[-1].shape[0])


def excluding_saved(exclude: str | list[str] | None, saved: list[str]) -> str | list[str] | None:
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


def peft_load_config(config: Any, saved_entries: list[str]) -> Any:
    """The ``LoraConfig`` the engine loads an adapter with: a copy of ``config`` without
    ``modules_to_save`` (the engine swaps those modules itself), LoRA kept out of them through
    ``exclude_modules`` as peft would with ``modules_to_save`` set (:func:`excluding_saved`),
    no ``task_type`` (peft wraps the bare base), in inference mode."""
    out = copy.deepcopy(config)
    out.exclude_modules = excluding_saved(config.exclude_modules, saved_entries)
    out.modules_to_save = None
    out.task_type = None
    out.inference_mode = True
    return out


def without_lora(module: nn.Module) -> nn.Module:
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


def read_adapter_rank(path: str | Path) -> int | None:
    """The ``r`` of an adapter folder's ``adapter_config.json``, or ``None`` if unreadable."""
    try:
        return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- the load steps


@dataclass
class AdapterFiles:
    """What an adapter folder holds, as read by :func:`read_adapter_files`.

    Attributes:
        folder: The folder.
        config: peft's ``LoraConfig`` of ``adapter_config.json``.
        raw: ``adapter_config.json`` as written (peft drops keys it does not know).
        weights: The adapter's tensors by peft key (``base_model.model.<module>.<param>``), on
            the engine's device, in the dtype they were saved in.
    """

    folder: Path
    config: Any
    raw: dict[str, Any]
    weights: dict[str, torch.Tensor]


def read_adapter_files(name: str, folder: Path, device: torch.device) -> AdapterFiles:
    """Read an adapter folder's config and weights.

    Args:
        name: The adapter's served name (for the errors).
        folder: Folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (or .bin).
        device: Where the weights are loaded.

    Returns:
        The :class:`AdapterFiles`.

    Raises:
        AdapterLoadError: No or invalid ``adapter_config.json``, a ``peft_type`` other than
            LORA, or weights that cannot be read.
    """
    from peft import PeftConfig, PeftType
    from peft.utils import load_peft_weights

    if not (folder / "adapter_config.json").is_file():
        raise AdapterLoadError(name, f"no adapter_config.json in {folder}")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise AdapterLoadError(name, f"adapter_config.json is invalid: {exc}") from exc
    if config.peft_type != PeftType.LORA:
        raise AdapterLoadError(name, f"peft_type is {config.peft_type}, not LORA")
    try:
        weights = load_peft_weights(str(folder), device=str(device))
    except Exception as exc:
        raise AdapterLoadError(name, f"adapter weights cannot be read: {exc}") from exc
    # The installer ran the same check at install time; this catches files changed since.
    # The raw file, not peft's config: peft drops keys it does not know.
    try:
        raw = json.loads((folder / "adapter_config.json").read_text())
    except ValueError as exc:
        raise AdapterLoadError(name, f"adapter_config.json is invalid: {exc}") from exc
    return AdapterFiles(folder=folder, config=config, raw=raw, weights=weights)


@dataclass
class AdapterWeights:
    """An adapter's tensors sorted by where they go (:func:`select_weights`).

    Attributes:
        saved_entries: ``modules_to_save`` entries, in order, without repeats.
        head_names: The entries that name the classification head of a classification base.
        lora: LoRA weights by peft key, for ``set_peft_model_state_dict``.
        head: Classification head parameters by module path (``classifier.weight``...).
        saved: ``modules_to_save`` copies: qualified module name -> parameter name -> tensor.
        nbytes: Bytes of the tensors kept (copies of base weights left out).
    """

    saved_entries: list[str]
    head_names: set[str]
    lora: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    saved: dict[str, dict[str, torch.Tensor]]
    nbytes: int


def select_weights(name: str, files: AdapterFiles, model: nn.Module, task: str) -> AdapterWeights:
    """Check that the engine can serve the adapter on ``model``; sort its tensors.

    Args:
        name: The adapter's served name (for the errors).
        files: What :func:`read_adapter_files` read.
        model: The base model (peft may already have wrapped some of its layers).
        task: The base's task.

    Returns:
        The :class:`AdapterWeights`; base weights the adapter carries equal to the base's are
        dropped, tensors naming no base weight are left out (never handed to peft, which would
        load them into the shared base).

    Raises:
        AdapterLoadError: Everything :func:`~lorafleet_serving.adapter_support.unsupported_features`
            refuses, a ``modules_to_save`` entry naming no module, or a copy of a base weight
            that differs from the base's (all reasons in one message).
    """
    config, weights = files.config, files.weights
    unsupported = unsupported_features(
        {**config.to_dict(), **files.raw}, weights.keys(), model, task=task
    )
    # modules_to_save: a classification base's head is applied per row by the engine;
    # any other module the adapter carries a copy of is swapped per row by BatchedLoRA.
    saved_entries = list(dict.fromkeys(config.modules_to_save or []))
    head_names = {n for n in saved_entries if task == TEXT_CLASSIFICATION and n in HEAD_NAMES}
    saved_paths = (
        []
        if unsupported
        else saved_module_paths(model, name, [n for n in saved_entries if n not in head_names])
    )
    copies = base_weight_copies(weights.keys(), model, [*saved_paths, *head_names])
    unsupported += copy_problems(copies, weights.__getitem__, functools.partial(base_tensor, model))
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
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    return AdapterWeights(saved_entries, head_names, lora_sd, head_sd, saved_sd, nbytes)


def base_tensor(model: nn.Module, key: str) -> torch.Tensor | None:
    """The base model's tensor named ``key`` (its own name, before peft wrapped it)."""
    module_path, _, param = key.rpartition(".")
    for path in (f"{module_path}.base_layer", module_path):
        try:
            return model.get_submodule(path).get_parameter(param).detach()
        except AttributeError:
            continue
    return None


def saved_module_paths(model: nn.Module, name: str, entries: list[str]) -> list[str]:
    """Qualified names of the modules ``modules_to_save`` entries select (peft's rule,
    :func:`~lorafleet_serving.adapter_support.saved_module_names`), longest first.

    Raises:
        AdapterLoadError: An entry names no module of ``model``.
    """
    names = [n for n, _ in model.named_modules()]
    for entry in entries:
        if not saved_module_names([entry], names):
            raise AdapterLoadError(
                name, f"modules_to_save entry {entry!r} names no module of the base model"
            )
    return saved_module_names(entries, names)


def saved_copies(
    model: nn.Module,
    name: str,
    saved_sd: dict[str, dict[str, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, nn.Module]:
    """The adapter's own copies of whole modules, built from the base's modules.

    Args:
        model: The base model.
        name: The adapter's served name (for the errors).
        saved_sd: :attr:`AdapterWeights.saved`.
        device: Device of the copies.
        dtype: Dtype of the copies' parameters.

    Returns:
        Qualified module name -> the adapter's copy (in eval mode).

    Raises:
        AdapterLoadError: The saved weights do not fit the module.
    """
    modules = dict(model.named_modules())
    copies: dict[str, nn.Module] = {}
    for path, params in saved_sd.items():
        module = without_lora(modules[path])
        try:
            module.load_state_dict({k: v.to(device, dtype) for k, v in params.items()}, strict=True)
        except RuntimeError as exc:
            raise AdapterLoadError(
                name, f"modules_to_save {path!r}: weights do not fit the module: {exc}"
            ) from exc
        copies[path] = module.eval()
    return copies


def adapter_head(
    name: str,
    head_sd: dict[str, torch.Tensor],
    head_name: str,
    head_module: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor] | None:
    """The parameters of the adapter's own classification head, or ``None`` if it has none.

    Args:
        name: The adapter's served name (for the errors).
        head_sd: :attr:`AdapterWeights.head`.
        head_name: The base head's attribute name (``classifier``, ``score``).
        head_module: The base's head module.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Returns:
        Parameter name (within the head) -> tensor, for ``torch.func.functional_call`` on
        ``head_module``.

    Raises:
        AdapterLoadError: The parameters are not the base head's.
    """
    prefix = f"{head_name}."
    params = {
        k.removeprefix(prefix): v.to(device, dtype)
        for k, v in head_sd.items()
        if k.startswith(prefix)
    }
    if not params:
        return None
    expected = {n for n, _ in head_module.named_parameters()}
    if set(params) != expected:
        raise AdapterLoadError(
            name,
            f"head weights {sorted(params)} do not match the base head {sorted(expected)}",
        )
    return params
