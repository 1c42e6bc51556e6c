"""Loading an engine's base model: the device and dtype it runs in, the model, its tokenizer.

:func:`load_base_model` picks the device (:func:`default_device`: cuda when present) and the
dtype (:func:`resolve_dtype`: ``auto`` follows the checkpoint on a GPU, float32 on cpu), then
loads ``AutoModelForCausalLM`` (``text-generation``) or ``AutoModelForSequenceClassification``
(``text-classification``) and ``AutoTokenizer`` from the base folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..errors import InvalidRequestError

_DTYPES = MappingProxyType(
    {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
)


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
class BaseModel:
    """A loaded base model (:func:`load_base_model`).

    Attributes:
        model: The model, on ``device``, in eval mode.
        tokenizer: Its Hugging Face tokenizer.
        device: Where it runs.
        dtype: Its parameters' dtype.
    """

    model: nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype


def load_base_model(
    base_path: str,
    task: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
) -> BaseModel:
    """Load a base model folder for ``task``.

    Args:
        base_path: Local folder of the base model (config, safetensors, tokenizer).
        task: ``"text-generation"`` or ``"text-classification"``.
        dtype: ``"auto"``, ``"float32"``, ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default :func:`default_device`.

    Returns:
        The :class:`BaseModel`.

    Raises:
        InvalidRequestError: Unknown dtype (``param="dtype"``).
        OSError: The base folder cannot be read.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    target = torch.device(device) if device is not None else default_device()
    base_config = AutoConfig.from_pretrained(base_path)
    # ``dtype`` (transformers 5) or ``torch_dtype`` (4.x); read the stored values directly,
    # the 4.x attribute name logs a deprecation warning when read through the property.
    stored = vars(base_config)
    recorded = stored.get("dtype") or stored.get("torch_dtype")
    chosen = resolve_dtype(dtype, target, recorded)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    auto = AutoModelForCausalLM if task == "text-generation" else AutoModelForSequenceClassification
    model = auto.from_pretrained(base_path, dtype=chosen)
    return BaseModel(
        model=model.to(target).eval(), tokenizer=tokenizer, device=target, dtype=chosen
    )
