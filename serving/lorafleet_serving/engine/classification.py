"""Classification on one shared encoder: per row, the base's head or the adapter's own head.

A classification base's head (``classifier``/``score``, one of
:data:`~lorafleet_serving.adapter_support.HEAD_NAMES`) is found once (:func:`find_head`); the
engine keeps, with a forward hook, the features the head was called with. After one forward
pass of a mixed batch, :func:`row_outputs` gives each row the base head's logits, or - for a row
whose adapter saved its own head (``modules_to_save``, any label count) - that head applied to
the row's features (one call per adapter), pooled at the last token for a decoder-style head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..adapter_support import HEAD_NAMES, classification_head_name
from ..errors import InvalidRequestError
from .adapter_loading import AdapterInfo


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classification head of ``model``: (attribute name, module).

    Raises:
        InvalidRequestError: ``model`` has no head named one of ``HEAD_NAMES``
            (``param="task"``).
    """
    name = classification_head_name(model)
    if name is None:
        raise InvalidRequestError(
            f"{type(model).__name__} has no head named one of {list(HEAD_NAMES)}",
            param="task",
        )
    return name, getattr(model, name)


def row_outputs(
    base_logits: torch.Tensor,
    hidden: torch.Tensor | None,
    infos: Sequence[AdapterInfo | None],
    base_labels: list[str],
    head_module: nn.Module,
    input_ids: torch.Tensor,
    config: Any,
) -> list[tuple[list[str], list[float]]]:
    """Label names and logits of each row of a classified batch.

    Call it inside the batch's ``torch.inference_mode()`` and LoRA routing.

    Args:
        base_logits: ``[N, base labels]`` logits of the base head.
        hidden: The base head's input: ``[N, H]`` (BERT) or ``[N, T, H]`` (decoder).
        infos: Per row, the adapter (``None`` for the bare base).
        base_labels: Label names of the base head.
        head_module: The base head (called with each adapter's own parameters).
        input_ids: ``[N, T]`` int64 padded input ids (to pool a decoder-style head).
        config: The base's config (its ``pad_token_id``).

    Returns:
        Per row: (label names, float32 logits as a list).
    """
    results: list[tuple[list[str], list[float]] | None] = [None] * len(infos)
    own_heads: dict[str, list[int]] = {}
    adapters: dict[str, AdapterInfo] = {}
    for i, info in enumerate(infos):
        if info is not None and info.head is not None:
            own_heads.setdefault(info.name, []).append(i)
            adapters[info.name] = info
        else:
            labels = (info.labels if info is not None else None) or base_labels
            results[i] = (labels, base_logits[i].float().tolist())
    for name, rows in own_heads.items():
        # One call of each adapter's own head on its rows' shared-encoder features.
        info = adapters[name]
        assert hidden is not None and info.head is not None
        index = torch.tensor(rows, device=hidden.device)
        logits = torch.func.functional_call(
            head_module, info.head, (hidden.index_select(0, index),)
        )
        for n, i in enumerate(rows):
            row = logits[n]
            if row.dim() == 2:  # decoder-style head on every position: pool the last
                row = row[last_token_index(input_ids[i], config)]
            results[i] = (info.labels or [], row.float().tolist())
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def last_token_index(input_ids: torch.Tensor, config: Any) -> int:
    """Index of the last non-padding token, as transformers' decoder classifiers pool."""
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        return int(input_ids.shape[-1] - 1)
    non_pad = (input_ids != pad).to(torch.long)
    return int((torch.arange(input_ids.shape[-1], device=input_ids.device) * non_pad).argmax())
