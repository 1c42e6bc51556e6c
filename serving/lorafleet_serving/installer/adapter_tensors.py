"""An adapter's tensors against the base's modules.

Which LoRA tensors name a module of the base and with what shapes (``lora_A (r, in)`` /
``lora_B (out, r)``, ``r`` from ``rank_pattern`` when an entry matches), whether every
adapted module has both matrices and every targeted module has weights (peft's own matching),
and whether the base weights an adapter carries equal the installed base's. Key format
follows peft (``base_model.model.<module>.lora_A.weight``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..adapter_support import LORA_KEY, PEFT_PREFIX, config_keys_peft_ignores, copy_problems
from . import checkpoint as ckpt
from .architecture import MetaArchitecture
from .errors import (
    INVALID_ADAPTER,
    INVALID_BASE_MODEL,
    NO_ADAPTER_WEIGHTS_APPLIED,
    SHAPE_MISMATCH,
    InstallError,
)
from .weights import safetensors_files


@dataclass(frozen=True)
class SortedTensors:
    """The adapter's tensors sorted against the base's modules (:func:`sort_tensors`).

    Attributes:
        applied: Keys of LoRA tensors on an existing module.
        unmatched: Keys naming no module (or no base weight): ignored, never loaded.
        bad_shapes: One message per LoRA matrix whose shape does not fit its module.
        parts: Module -> the LoRA matrices present (``lora_A``, ``lora_B``, ...).
        head_shapes: Key (prefix removed) -> shape, for tensors of ``modules_to_save``.
    """

    applied: list[str]
    unmatched: list[str]
    bad_shapes: list[str]
    parts: dict[str, set[str]]
    head_shapes: dict[str, tuple[int, ...]]


def sort_tensors(
    cfg: dict,
    shapes: dict[str, tuple[int, ...]],
    copies: dict[str, str],
    saved_paths: list[str],
    modules: dict,
) -> SortedTensors:
    """Sort the adapter's tensors against the base's modules and check each LoRA shape.

    Base-weight ``copies`` are skipped (compared later); other non-LoRA tensors belong to a
    saved module or are unmatched. A LoRA matrix must be ``lora_A (r, in)`` / ``lora_B (out,
    r)`` of its module, with ``r`` from ``rank_pattern`` when an entry matches.

    Returns:
        The sorted tensors; nothing is raised here (:func:`check_tensors_apply` decides).
    """
    r, rank_pattern = cfg["r"], cfg.get("rank_pattern") or {}
    applied, unmatched, bad_shapes = [], [], []
    parts: dict[str, set[str]] = {}  # module -> LoRA matrices present (lora_A, lora_B, ...)
    head_shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        if key in copies:
            continue
        inner = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        m = LORA_KEY.match(inner)
        if m is None:
            if any(inner.startswith(p + ".") for p in saved_paths):
                head_shapes[inner] = shape
            else:
                unmatched.append(key)  # names no base weight: unused, never loaded
            continue
        module_name, kind = m["module"], m["kind"]
        module = modules.get(module_name)
        if module is None:
            unmatched.append(key)
            continue
        applied.append(key)
        if m["param"] != "bias":
            parts.setdefault(module_name, set()).add(kind)
        if kind == "lora_magnitude_vector" or m["param"] == "bias":
            continue  # DoRA magnitudes and lora_bias vectors: one value per output
        want = _lora_shape_expected(module, kind, _rank_for(module_name, r, rank_pattern))
        if want is not None and tuple(shape) != want:
            bad_shapes.append(
                f"{key}: {tuple(shape)} vs expected {want} (r={_rank_for(module_name, r, rank_pattern)})"
            )
    return SortedTensors(applied, unmatched, bad_shapes, parts, head_shapes)


def check_tensors_apply(
    tensors: SortedTensors, count: int, weights: Path, arch: MetaArchitecture
) -> None:
    """Check some LoRA tensor names a module of the base, and every LoRA shape fits.

    Args:
        tensors: From :func:`sort_tensors`.
        count: How many tensors the weights file holds.
        weights: The weights file (named in messages).
        arch: The base's architecture (named in messages).

    Raises:
        InstallError: ``NoAdapterWeightsApplied``, then ``ShapeMismatch``.
    """
    if not tensors.applied:
        raise InstallError(
            NO_ADAPTER_WEIGHTS_APPLIED,
            f"none of the {count} tensors in {weights.name} matches a module of {arch.name} "
            f"(e.g. {ckpt._listing(tensors.unmatched, 3)})",
        )
    if tensors.bad_shapes:
        raise InstallError(
            SHAPE_MISMATCH, f"{weights.name} over {arch.name}: {ckpt._listing(tensors.bad_shapes)}"
        )


def check_complete(cfg: dict, parts: dict[str, set[str]], modules: dict, file: str) -> None:
    """Every adapted module has both LoRA matrices, and every module ``target_modules``
    selects (peft's own matching) has LoRA weights: peft would otherwise leave them
    uninitialised and the adapter could never load.

    Raises:
        InstallError: ``InvalidAdapter`` naming the modules.
    """
    half = sorted(
        name
        for name, kinds in parts.items()
        if not ({"lora_A", "lora_B"} <= kinds or {"lora_embedding_A", "lora_embedding_B"} <= kinds)
    )
    if half:
        raise InstallError(
            INVALID_ADAPTER, f"{file}: lora_A or lora_B missing for {ckpt._listing(half)}"
        )
    targets = cfg.get("target_modules")
    if not targets or targets == "all-linear" or targets == ["all-linear"]:
        return
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    unknown = {*config_keys_peft_ignores(cfg), "peft_type"}  # peft_type is LoraConfig's own
    try:
        config = LoraConfig(**{k: v for k, v in cfg.items() if k not in unknown})
    except (TypeError, ValueError) as exc:
        raise InstallError(INVALID_ADAPTER, f"adapter_config.json: {exc}") from exc
    without = sorted(
        name
        for name, module in modules.items()
        if name
        and isinstance(module, (nn.Linear, nn.Embedding, Conv1D))
        and name not in parts
        and check_target_module_exists(config, name)
    )
    if without:
        raise InstallError(
            INVALID_ADAPTER,
            f"target_modules selects {ckpt._listing(without)} but {file} has no LoRA weights"
            " for them",
        )


def base_copy_problems(copies: dict[str, str], weights: Path, base_path: Path) -> list[str]:
    """Compare the adapter's copies of base weights with the installed base's tensors.

    Args:
        copies: Adapter key -> base key (:func:`~lorafleet_serving.adapter_support.
            base_weight_copies`).
        weights: The adapter's safetensors file.
        base_path: The installed base folder.

    Returns:
        One message per copy that differs from the base's tensor (empty when all equal).

    Raises:
        InstallError: ``InvalidBaseModel`` when a weights file cannot be opened.
    """
    from safetensors import safe_open

    handles = {}
    try:
        for path in safetensors_files(base_path):
            handles[path] = safe_open(str(path), framework="pt")
        adapter = safe_open(str(weights), framework="pt")

        def base_tensor(key: str):
            for handle in handles.values():
                if key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    return handle.get_tensor(key)
            return None

        return copy_problems(copies, adapter.get_tensor, base_tensor)
    except OSError as exc:
        raise InstallError(INVALID_BASE_MODEL, f"base weights in {base_path}: {exc}") from exc


def _rank_for(module: str, r: int, rank_pattern: dict) -> int:
    """The rank of ``module``: the first ``rank_pattern`` entry matching its name, else ``r``."""
    for pattern, value in (rank_pattern or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return int(value)
    return r


def _lora_shape_expected(module, kind: str, rank: int) -> tuple[int, int] | None:
    """Expected (rows, cols) of a LoRA matrix for ``module``, or None if not checkable."""
    import torch

    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    if isinstance(module, torch.nn.Embedding):
        num, dim = weight.shape
        return {"lora_embedding_A": (rank, num), "lora_embedding_B": (dim, rank)}.get(kind)
    if type(module).__name__ == "Conv1D":  # transformers' GPT-2 style layer stores (in, out)
        fan_in, fan_out = weight.shape
    else:
        fan_out, fan_in = weight.shape
    return {"lora_A": (rank, fan_in), "lora_B": (fan_out, rank)}.get(kind)
