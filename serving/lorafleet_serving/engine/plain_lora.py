"""Plain LoRA adapters straight from their files into the batched stacks, without peft's injection.

Loading an adapter through peft (``add_adapter`` + ``set_peft_model_state_dict``) builds an
``nn.Linear`` pair with kaiming init for every adapted module, only for
:class:`~.lora_batched.BatchedLoRA` to copy the matrices out and peft to delete them again.
On a Llama-shaped model with LoRA on all seven linear layers that is about 80% of a warm load
(``benchmarks/serving.py``, the thrash figure). For the common case — plain LoRA on
``nn.Linear`` layers — the saved ``lora_A``/``lora_B`` matrices are everything the stacks
need, plus each layer's scaling, which is computed here exactly as peft does
(``peft/tuners/lora/model.py``, ``LoraModel._create_and_replace``: ``r`` and ``lora_alpha``
per module through ``rank_pattern``/``alpha_pattern`` and ``peft.utils.other.get_pattern_key``;
``peft/tuners/lora/layer.py``, ``LoraLayer.update_layer``: ``scaling = lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with ``use_rslora``).

:func:`plain_lora_layers` takes the direct path only when it provably computes what peft
would: the modules carrying weights are exactly the modules peft would target (peft's own
``check_target_module_exists``, skipping the internals of layers peft wrapped earlier, as
``BaseTuner.inject_adapter`` does), every one is a plain ``nn.Linear`` with both matrices of
the shapes peft would create, and the config asks for no variant. Anything else returns
``None`` and the engine loads the adapter through peft, which then also produces the error
messages for adapters that do not fit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..adapter_support import PEFT_PREFIX, requested_variants
from .lora_batched import LayerWeights

_MATRICES = (".lora_A.weight", ".lora_B.weight")


def plain_lora_layers(
    config: Any, raw: dict[str, Any], lora: dict[str, torch.Tensor], model: nn.Module
) -> list[LayerWeights] | None:
    """An adapter's per-layer matrices with peft's scaling folded into ``B``, or ``None``.

    Args:
        config: The adapter's peft ``LoraConfig`` as the engine hands it to peft
            (``exclude_modules`` keeping LoRA out of ``modules_to_save``).
        raw: ``adapter_config.json`` as written (peft drops keys it does not know).
        lora: LoRA tensors by peft key (``base_model.model.<module>.lora_A.weight``):
            ``lora_A`` ``[r, in_features]``, ``lora_B`` ``[out_features, r]``, any float dtype.
        model: The base model (layers peft wrapped for earlier adapters may be in it).

    Returns:
        One :class:`~.lora_batched.LayerWeights` per adapted module (``a``: ``[r, in]`` as
        saved; ``b``: ``[out, r]`` times the layer's scaling, in the saved dtype, as peft
        computes ``lora_B(x) * scaling``), or ``None`` when peft must load the adapter: a
        variant (DoRA, LoRA bias, any other), ``fan_in_fan_out``, weight tying,
        ``target_modules`` that peft resolves itself (unset or ``all-linear``), tensors other
        than the two matrices, a module that is not a plain ``nn.Linear``, a targeted module
        without both matrices or a module with matrices that is not targeted, or a shape
        other than peft's.
    """
    if not _plain_config(config, raw):
        return None
    matrices = _matrices_by_module(lora)
    if matrices is None:
        return None
    modules = dict(model.named_modules())
    if set(matrices) != _targeted(config, modules):
        return None
    out: list[LayerWeights] = []
    for qualname, (a, b) in sorted(matrices.items()):
        linear = _plain_linear(modules[qualname])
        resolved = _rank_and_alpha(config, qualname)
        if linear is None or resolved is None:
            return None
        r, alpha = resolved
        if a.shape != (r, linear.in_features) or b.shape != (linear.out_features, r):
            return None
        scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        # In float32: a half-precision B times a large scaling would overflow before the
        # stacks take it in their own dtype.
        out.append(LayerWeights(qualname, a=a, b=b.float() * scaling))
    return out


def _plain_config(config: Any, raw: dict[str, Any]) -> bool:
    """Whether the config asks for nothing but plain LoRA on modules it names itself."""
    from peft.utils.constants import INCLUDE_LINEAR_LAYERS_SHORTHAND

    targets = config.target_modules
    if not targets or (
        isinstance(targets, str) and targets.lower() == INCLUDE_LINEAR_LAYERS_SHORTHAND
    ):
        return False
    switches = ("use_dora", "lora_bias", "fan_in_fan_out", "ensure_weight_tying")
    return not requested_variants(raw) and not any(getattr(config, k, False) for k in switches)


def _matrices_by_module(
    lora: dict[str, torch.Tensor],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """``{module: (A, B)}`` from peft keys, or ``None`` if any tensor is not one of the two
    matrices under peft's ``base_model.model.`` prefix (peft's own loader would not take an
    unprefixed key, and a file holding both forms of one module is ambiguous) or a module lacks
    one of them."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in lora.items():
        if not key.startswith(PEFT_PREFIX):
            return None
        inner = key.removeprefix(PEFT_PREFIX)
        suffix = next((s for s in _MATRICES if inner.endswith(s)), None)
        if suffix is None:
            return None
        halves.setdefault(inner.removesuffix(suffix), {})[suffix] = tensor
    if any(len(pair) != 2 for pair in halves.values()):
        return None
    return {m: (pair[_MATRICES[0]], pair[_MATRICES[1]]) for m, pair in halves.items()}


def _targeted(config: Any, modules: dict[str, nn.Module]) -> set[str]:
    """The modules peft would put this adapter on (``check_target_module_exists``), skipping
    the internals of layers peft wrapped before (``base_layer``, ``lora_A``...)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import check_target_module_exists

    wrapped = tuple(f"{n}." for n, m in modules.items() if isinstance(m, LoraLayer))
    return {
        name
        for name in modules
        if name and not name.startswith(wrapped) and check_target_module_exists(config, name)
    }


def _plain_linear(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` a module is (or a peft ``LoraLayer`` wraps); ``None`` for anything
    else, subclasses included (quantized linears)."""
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        module = module.get_base_layer()
    return module if type(module) is nn.Linear else None


def _rank_and_alpha(config: Any, qualname: str) -> tuple[int, float] | None:
    """A module's ``r`` and ``lora_alpha`` as peft resolves them (``rank_pattern``,
    ``alpha_pattern``; ``LoraModel._create_and_replace``), or ``None`` when ``r`` is not a
    positive integer (peft's layers would refuse it) or ``lora_alpha`` not a number."""
    from peft.utils.other import get_pattern_key

    rank_pattern = config.rank_pattern or {}
    alpha_pattern = config.alpha_pattern or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), qualname), config.r)
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), qualname), config.lora_alpha)
    if type(r) is not int or r < 1 or isinstance(alpha, bool):
        return None
    if not isinstance(alpha, (int, float)):
        return None
    return r, float(alpha)
