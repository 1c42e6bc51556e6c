"""What the serving engine can serve of a LoRA adapter: one check, two callers.

The installer calls :func:`unsupported_features` at install time over the installed base built
on the meta device, and the engine calls it at load time over the live model, so an adapter
the engine would refuse is refused at install (reason ``UnsupportedAdapter``) and never turns
Ready only to answer 503.

What the engine serves (``lora_batched.BatchedLoRA`` and ``engine.Engine``): LoRA on linear
layers (``nn.Linear`` and transformers' ``Conv1D``) with any ``r``, ``lora_alpha``,
``use_rslora``, ``rank_pattern`` and ``alpha_pattern`` (peft computes each layer's
``scaling``; the batched path takes rank and scaling per layer), and, over a
``text-classification`` base, ``modules_to_save`` naming exactly the base's classification head
(``classifier`` or ``score``). Not served, each named with the modules concerned: DoRA
(``use_dora``), LoRA bias (``lora_bias``), trained base biases (``bias`` other than
``none``), LoRA on embedding layers, ``trainable_token_indices``, aLoRA
(``alora_invocation_tokens``), ``modules_to_save`` of any other module,
``layer_replication`` and ``target_parameters``.

Key format follows peft's saved state dict (``base_model.model.<module>.lora_A.weight``;
``peft/utils/save_and_load.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

#: Attribute names of a transformers classification head (BERT-style, Llama-style).
HEAD_NAMES = ("classifier", "score")
#: Prefix of every key in a saved peft state dict.
PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)(?:\.[^.]+(?=\.(?:weight|bias)$))?(?:\.(?P<param>weight|bias))?$"
)
_SHOWN = 3


def classification_head_name(model: nn.Module) -> str | None:
    """The attribute name of ``model``'s classification head (``classifier``/``score``), if any."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def _listing(names: Iterable[str]) -> str:
    names = sorted(set(names))
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def unsupported_features(
    config: Mapping[str, Any], weight_keys: Iterable[str], model: nn.Module, *, task: str
) -> list[str]:
    """Name everything in an adapter the engine cannot serve over ``model``.

    Args:
        config: ``adapter_config.json`` as a mapping (peft's ``LoraConfig`` fields).
        weight_keys: Tensor names of the adapter's weights, as peft saves them (with or
            without the ``base_model.model.`` prefix).
        model: The base model (real or on the meta device); module types and the head's name
            are read from it.
        task: The base's task, ``text-generation`` or ``text-classification``.

    Returns:
        One message per unsupported feature, each naming the feature, the config key and the
        modules (at most three, then a count); empty when the engine serves the adapter.
    """
    problems: list[str] = []
    modules = dict(model.named_modules())
    lora: dict[str, set[str]] = {}
    for key in weight_keys:
        inner = key.removeprefix(PEFT_PREFIX)
        match = _LORA_KEY.match(inner)
        if match is None:
            continue
        kind = match["kind"] + (".bias" if match["param"] == "bias" else "")
        lora.setdefault(kind, set()).add(match["module"])
    dora = lora.get("lora_magnitude_vector", set())
    if config.get("use_dora") or dora:
        where = f" on {_listing(dora)}" if dora else ""
        problems.append(f"DoRA (use_dora){where} is not served: install it as plain LoRA")
    bias = lora.get("lora_B.bias", set()) | lora.get("lora_A.bias", set())
    if config.get("lora_bias") or bias:
        where = f" on {_listing(bias)}" if bias else ""
        problems.append(f"LoRA bias (lora_bias){where} is not served")
    embeddings = lora.get("lora_embedding_A", set()) | lora.get("lora_embedding_B", set())
    embeddings |= {
        name
        for name in lora.get("lora_A", set()) | lora.get("lora_B", set())
        if isinstance(modules.get(name), nn.Embedding)
    }
    if embeddings:
        problems.append(f"LoRA on embedding layers ({_listing(embeddings)}) is not served")
    saved = list(dict.fromkeys(config.get("modules_to_save") or []))
    if saved:
        head = classification_head_name(model) if task == "text-classification" else None
        if head is None:
            problems.append(
                f"modules_to_save {saved} is not served over a {task} base (only a"
                " text-classification base's own head may be saved with an adapter)"
            )
        elif head not in saved or set(saved) - set(HEAD_NAMES):
            # peft itself lists both head names for sequence classification.
            problems.append(
                f"modules_to_save {saved}: only the classification head {head!r} is served"
            )
    base_bias = config.get("bias") or "none"
    if base_bias != "none":
        # The adapter carries trained copies of base biases that peft would write into the
        # shared base model for every request.
        problems.append(f"bias={base_bias!r} (trained base-model biases) is not served")
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices (trained token embeddings) is not served")
    if config.get("alora_invocation_tokens"):
        problems.append("aLoRA (alora_invocation_tokens) is not served")
    if config.get("layer_replication"):
        problems.append("layer_replication is not served")
    if config.get("target_parameters"):
        problems.append(
            f"LoRA on parameters (target_parameters {list(config['target_parameters'])})"
            " is not served"
        )
    return problems
