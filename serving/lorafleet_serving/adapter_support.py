"""What the serving engine can serve of a LoRA adapter: one check, two callers.

The installer calls :func:`unsupported_features` at install time over the installed base built
on the meta device, and the engine calls it at load time over the live model, so an adapter
the engine would refuse is refused at install (reason ``UnsupportedAdapter``) and never turns
Ready only to answer 503.

What the engine serves (``engine.lora_batched.BatchedLoRA`` and
``engine.transformers_engine.TransformersEngine``), each equal to peft with only that adapter
active, mixed with any other adapters in one batch: LoRA on linear
layers (``nn.Linear`` and transformers' ``Conv1D``) and on embedding layers, with any ``r``,
``lora_alpha``, ``use_rslora``, ``rank_pattern`` and ``alpha_pattern`` (peft computes each
layer's ``scaling``; the batched path takes rank and scaling per layer), DoRA (``use_dora``)
and LoRA bias (``lora_bias``) on linear layers, and ``modules_to_save`` of any module (a
classification base's head is applied per row by the engine; other modules are swapped per
row). Not served, each named with the modules concerned: DoRA on embeddings, LoRA on
convolution layers, a module both adapted and saved whole, trained base biases (``bias`` other
than ``none``), ``trainable_token_indices``, aLoRA (``alora_invocation_tokens``),
``layer_replication``, ``target_parameters``, ``modules_to_save`` entries naming no module,
``init_lora_weights`` that rewrite the base (PiSSA, OLoRA, CorDA, LoftQ), peft's other variants,
and unknown config keys that look like they change the math. Base weights an adapter carries
(:func:`base_weight_copies`) are dropped when equal to the base's and refused otherwise.

Key format follows peft's saved state dict (``base_model.model.<module>.lora_A.weight``;
``peft/utils/save_and_load.py``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

#: Attribute names of a transformers classification head (BERT-style, Llama-style).
HEAD_NAMES = ("classifier", "score")
#: Prefix of every key in a saved peft state dict.
PEFT_PREFIX = "base_model.model."
#: A LoRA tensor's name in a saved adapter (prefix removed): the adapted module, which LoRA
#: matrix (``lora_A``/``lora_B``, embedding LoRA, DoRA magnitude) and weight or bias.
LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)(?:\.(?P<param>weight|bias))?$"
)
_SHOWN = 3


def classification_head_name(model: nn.Module) -> str | None:
    """The attribute name of ``model``'s classification head (``classifier``/``score``), if any."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def is_lora_key(key: str) -> bool:
    """Whether a saved tensor name is a LoRA weight (``lora_A``/``lora_B``, embedding LoRA,
    DoRA magnitude, ``lora_B`` bias), with or without the ``base_model.model.`` prefix."""
    return LORA_KEY.match(key.removeprefix(PEFT_PREFIX)) is not None


def saved_module_names(entries: Iterable[str], module_names: Iterable[str]) -> list[str]:
    """The modules ``modules_to_save`` entries select, by peft's own rule.

    peft wraps every module whose qualified name ends with an entry (``key.endswith(target)``
    in ``peft/utils/other.py``, ``_set_trainable``): ``norm`` selects ``model.norm`` and every
    ``input_layernorm``. peft's own inner modules (``base_layer``, ``lora_*``) are skipped.

    Returns:
        Qualified module names, longest first (so a key is owned by its innermost match).
    """
    entries = [e for e in entries if e]
    found = {
        name
        for name in module_names
        if name
        and any(name.endswith(e) for e in entries)
        and ".base_layer" not in name
        and ".lora_" not in name
        and "modules_to_save" not in name
    }
    return sorted(found, key=len, reverse=True)


def _listing(names: Iterable[str]) -> str:
    names = sorted(set(names))
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def base_weight_copies(
    weight_keys: Iterable[str], model: nn.Module, saved_modules: Iterable[str]
) -> dict[str, str]:
    """Adapter tensors that are base-model weights, and the base's name for each.

    Two kinds: the ``<module>.base_layer.weight`` copy peft saves beside embedding LoRA
    (``save_embedding_layers``, for a resized vocabulary), and any tensor outside LoRA and the
    modules the adapter saves whole that names a base parameter or buffer (peft saves a
    resized embedding so, and loads such tensors straight into the base with
    ``set_peft_model_state_dict``). Neither may reach the shared base: equal to the base's,
    it is dropped; different, the adapter is not served (:func:`copy_problems`).

    Args:
        weight_keys: Tensor names as peft saves them.
        model: The base model (plain or already wrapped by peft).
        saved_modules: Qualified names from :func:`saved_module_names`.

    Returns:
        Adapter key -> the base's own state-dict key (``model.embed_tokens.weight``).
    """
    own = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # tied ones too
    own |= {name for name, _ in model.named_buffers(remove_duplicate=False)}
    saved = list(saved_modules)
    out: dict[str, str] = {}
    for key in weight_keys:
        inner = key.removeprefix(PEFT_PREFIX)
        if is_lora_key(inner) or any(inner.startswith(p + ".") for p in saved):
            continue
        if ".base_layer." in inner:
            out[key] = inner.replace(".base_layer.", ".", 1)
            continue
        module_path, _, param = inner.rpartition(".")
        if inner in own or f"{module_path}.base_layer.{param}" in own:
            out[key] = inner
    return out


def copy_problems(
    copies: Mapping[str, str],
    adapter_tensor: Callable[[str], Any],
    base_tensor: Callable[[str], Any],
) -> list[str]:
    """Name the base-weight copies (:func:`base_weight_copies`) that differ from the base.

    Args:
        copies: Adapter key -> base key.
        adapter_tensor: Reads an adapter tensor by its key (``torch.Tensor``).
        base_tensor: Reads a base tensor by its state-dict key, or returns None when the base
            has no such tensor.

    Returns:
        One message per differing copy (shape or values), empty when all equal the base's.
    """
    import torch

    problems: list[str] = []
    for key, base_key in sorted(copies.items()):
        ours = adapter_tensor(key)
        theirs = base_tensor(base_key)
        if theirs is None:
            problems.append(f"{key} copies {base_key!r}, which the base model does not have")
        elif tuple(ours.shape) != tuple(theirs.shape):
            problems.append(
                f"{key}: a {tuple(ours.shape)} copy of {base_key!r} {tuple(theirs.shape)}"
                " (a resized vocabulary) is not served"
            )
        elif not torch.equal(ours.to(theirs.dtype), theirs):
            problems.append(
                f"{key}: retrained base weights ({base_key!r} differs from the base's; loading"
                " it would change the shared base for every adapter) are not served"
            )
    return problems


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
    modules = dict(model.named_modules())
    lora = _lora_modules(weight_keys)
    problems = _layer_problems(lora, modules)
    problems += _saved_module_problems(config, lora, modules, task)
    variants = set(requested_variants(config))  # their own message below
    problems += _init_problems(config, variants)
    problems += _config_switch_problems(config)
    problems += _variant_problems(variants)
    problems += _unknown_math_key_problems(config)
    return problems


def _lora_modules(weight_keys: Iterable[str]) -> dict[str, set[str]]:
    """The modules carrying each kind of LoRA tensor, from the adapter's tensor names.

    Returns:
        LoRA matrix kind (``lora_A``, ``lora_embedding_B``, ``lora_magnitude_vector``, ...;
        ``lora_B.bias`` for a LoRA bias) -> names of the modules that have one.
    """
    lora: dict[str, set[str]] = {}
    for key in weight_keys:
        inner = key.removeprefix(PEFT_PREFIX)
        match = LORA_KEY.match(inner)
        if match is None:
            continue
        kind = match["kind"] + (".bias" if match["param"] == "bias" else "")
        lora.setdefault(kind, set()).add(match["module"])
    return lora


def _layer_problems(lora: dict[str, set[str]], modules: dict[str, nn.Module]) -> list[str]:
    """LoRA on layers the engine has no batched path for: DoRA on embeddings, convolutions.

    Args:
        lora: From :func:`_lora_modules`.
        modules: The base's modules by qualified name.

    Returns:
        One message per kind of unsupported layer found.
    """
    problems: list[str] = []
    dora_embeddings = {
        name
        for name in lora.get("lora_magnitude_vector", set())
        if isinstance(modules.get(name), nn.Embedding)
        or name in lora.get("lora_embedding_A", set())
    }
    if dora_embeddings:
        problems.append(f"DoRA on embedding layers ({_listing(dora_embeddings)}) is not served")
    conv = {
        name
        for name in lora.get("lora_A", set())
        if isinstance(modules.get(name), (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    }
    if conv:
        problems.append(f"LoRA on convolution layers ({_listing(conv)}) is not served")
    return problems


def _saved_module_problems(
    config: Mapping[str, Any],
    lora: dict[str, set[str]],
    modules: dict[str, nn.Module],
    task: str,
) -> list[str]:
    """``modules_to_save`` the engine cannot honour, as peft selects modules by it.

    A module both saved whole and adapted, or an entry naming no module of the base (over a
    classification base, the head's name is always allowed).

    Returns:
        One message per problem, in that order.
    """
    problems: list[str] = []
    saved = list(dict.fromkeys(config.get("modules_to_save") or []))
    adapted = set().union(*lora.values()) if lora else set()
    both = set(saved_module_names(saved, adapted))
    if both:
        problems.append(
            f"modules_to_save {saved} also carries LoRA weights ({_listing(both)}): a module"
            " is either adapted or saved whole, not both"
        )
    absent = [
        entry
        for entry in saved
        if not (task == "text-classification" and entry in HEAD_NAMES)
        and not saved_module_names([entry], modules)
    ]
    if absent:
        problems.append(f"modules_to_save {absent} names no module of the base model")
    return problems


def _init_problems(config: Mapping[str, Any], variants: set[str]) -> list[str]:
    """An ``init_lora_weights`` that rewrites the base, or that peft does not know.

    PiSSA, OLoRA, CorDA and LoftQ rewrite the base at init; values that select a variant are
    left to :func:`_variant_problems`.

    Returns:
        The message, or nothing.
    """
    init = config.get("init_lora_weights", True)
    if isinstance(init, bool) or init in _SERVED_INITS | variants:
        return []
    why = (
        "trained against a base that peft rewrites at init (PiSSA, OLoRA, CorDA, LoftQ):"
        " convert it to plain LoRA first (save_pretrained(...,"
        " path_initial_model_for_weight_conversion=...))"
        if isinstance(init, str) and init.split("_")[0] in _BASE_REWRITING_INITS
        else "not an initialisation peft knows"
    )
    return [f"init_lora_weights={init!r}: {why}"]


def _config_switch_problems(config: Mapping[str, Any]) -> list[str]:
    """Config switches the engine does not serve.

    Trained base biases (``bias``), ``trainable_token_indices``, aLoRA, ``layer_replication``
    and ``target_parameters``.

    Returns:
        One message per switch set, in that order.
    """
    problems: list[str] = []
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


def _variant_problems(variants: set[str]) -> list[str]:
    """The requested peft LoRA variants the engine does not serve (aLoRA has its own message).

    Returns:
        One message naming them all, or nothing.
    """
    others = sorted(variants - _SERVED_VARIANTS - {"alora_invocation_tokens"})
    if not others:
        return []
    return [
        f"peft LoRA variant(s) {', '.join(others)} (they change the layer's forward) not served"
    ]


def _unknown_math_key_problems(config: Mapping[str, Any]) -> list[str]:
    """Config keys the installed peft would ignore though, by name, they change the math.

    Returns:
        One message naming them all, or nothing.
    """
    unknown = config_keys_peft_ignores(config)
    math = [k for k in unknown if _MATH_KEY.search(k) and _active(config[k])]
    if not math:
        return []
    return [
        f"adapter_config.json keys the installed peft does not know and would ignore,"
        f" though they look like they change the math: {', '.join(math)} (set by a newer"
        " peft? served outputs would not match training)"
    ]


#: ``init_lora_weights`` values that only initialise A and B (the saved weights are plain LoRA).
_SERVED_INITS = frozenset({"gaussian", "orthogonal", "eva"})
#: ``init_lora_weights`` families that also rewrite the base weights (``pissa_niter_4``, ...).
_BASE_REWRITING_INITS = frozenset({"pissa", "olora", "corda", "loftq"})
#: peft variants (``LoraConfig`` fields tagged ``is_lora_variant``, or ``init_lora_weights``
#: values that select a variant) the engine serves.
_SERVED_VARIANTS = frozenset({"use_dora"})
#: Config key names that, by peft's naming, switch on or configure what the forward pass
#: computes (``use_dora``, ``rank_pattern``, ``kasa_config``, ``alora_invocation_tokens``,
#: ``trainable_token_indices``): an unknown one with a set value is refused, not ignored.
_MATH_KEY = re.compile(r"^use_|_pattern$|_config$|_tokens$|_indices$|^lora_")


def _active(value: Any) -> bool:
    """Whether a config value switches something on (not null, false, zero or empty)."""
    return value not in (None, False, 0, "", [], {})


def requested_variants(config: Mapping[str, Any]) -> list[str]:
    """The peft LoRA variants ``config`` requests, by peft's own registry.

    peft marks variant switches on ``LoraConfig`` fields with ``metadata["is_lora_variant"]``
    and variant initialisations in ``init_lora_weights``' ``metadata["lora_variants"]``
    (``peft/tuners/lora/layer.py``, ``LoraLayer.resolve_lora_variant``); an installed peft that
    adds a variant is covered without a change here.

    Returns:
        Field names (or ``init_lora_weights`` values) of the requested variants.
    """
    from peft import LoraConfig

    out: list[str] = []
    for f in dataclasses.fields(LoraConfig):
        if f.name == "init_lora_weights":
            value = config.get(f.name)
            if isinstance(value, str) and value in f.metadata.get("lora_variants", ()):
                out.append(value)
        elif f.metadata.get("is_lora_variant") and _active(config.get(f.name)):
            out.append(f.name)
    return out


def config_keys_peft_ignores(config: Mapping[str, Any]) -> list[str]:
    """``adapter_config.json`` keys the installed peft's ``LoraConfig`` does not know.

    peft drops such keys with a warning when it loads the config (``peft/config.py``,
    ``PeftConfigMixin.from_peft_type`` via ``_check_and_remove_unused_kwargs``), so whatever
    they meant is not applied.

    Returns:
        The unknown keys, sorted.
    """
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}  # metadata keys included
    return sorted(k for k in config if k not in known)
