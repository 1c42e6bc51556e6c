"""Validation of a LoRA adapter folder against its installed base model.

Checks: ``adapter_config.json`` is LoRA (``peft_type``); ``r`` within ``--max-rank``
(``RankExceedsLimit``, also for ``rank_pattern``); the weights are safetensors (``.bin`` is
converted after a ``weights_only=True`` load); no tensor is empty (``EmptyAdapterWeights``);
every ``target_modules`` entry names a module of the base architecture built on the meta
device (``TargetModulesNotFound``); LoRA weights name existing modules
(``NoAdapterWeightsApplied`` when none does) with shapes ``lora_A (r, in)`` / ``lora_B (out,
r)`` for that module (``ShapeMismatch``); ``base_model_name_or_path`` is compared with the
base's source. Key format and target matching follow peft (``base_model.model.<module>.
lora_A.weight``; a target matches a module whose name equals it or ends with ``.<target>``;
a string target is a full-match regex).

The config alone is checked by :mod:`.adapter_config`, the tensors against the base's modules
by :mod:`.adapter_tensors`; :func:`validate_adapter` runs every check in order, and the first
that fails decides the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter_support import (
    HEAD_NAMES,
    base_weight_copies,
    config_keys_peft_ignores,
    saved_module_names,
    unsupported_features,
)
from . import checkpoint as ckpt
from .adapter_config import check_adapter_config, read_adapter_config
from .adapter_tensors import (
    base_copy_problems,
    check_complete,
    check_tensors_apply,
    sort_tensors,
)
from .architecture import MetaArchitecture, build_meta, load_config
from .errors import (
    EMPTY_ADAPTER_WEIGHTS,
    INVALID_ADAPTER,
    INVALID_BASE_MODEL,
    TARGET_MODULES_NOT_FOUND,
    UNSUPPORTED_ADAPTER,
    InstallError,
)
from .manifest import MANIFEST_NAME
from .weights import header_shapes

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class AdapterFacts:
    """What the report records about a validated adapter."""

    rank: int
    lora_alpha: float
    target_modules: list[str]
    modules_to_save: list[str]
    base_model: str | None = None
    base_matches: bool | None = None
    num_labels: int | None = None
    labels: dict[str, str] | None = None
    findings: list[dict] = field(default_factory=list)

    def report_fields(self) -> dict:
        """The install report's fields for these facts (None values included)."""
        return {
            "rank": self.rank,
            "loraAlpha": self.lora_alpha,
            "targetModules": self.target_modules,
            "modulesToSave": self.modules_to_save,
            "numLabels": self.num_labels,
            "labels": self.labels,
            "baseMatches": self.base_matches,
        }


def _finding(level: str, code: str, message: str) -> dict:
    return {"level": level, "code": code, "message": message}


def _norm_base_id(value: str) -> str:
    value = value.strip().rstrip("/")
    for prefix in ("hf://", "https://huggingface.co/"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    return value.lower()


def _base_task(base_path: Path) -> tuple[str | None, int | None]:
    manifest = base_path / MANIFEST_NAME
    if manifest.is_file():
        try:
            report = json.loads(manifest.read_text()).get("report", {})
            return report.get("task"), report.get("numLabels")
        except ValueError:
            pass
    return None, None


def _target_matches(target: str, names: list[str]) -> bool:
    return any(n == target or n.endswith("." + target) for n in names)


def _ensure_safetensors(folder: Path) -> tuple[Path, list[dict]]:
    st = folder / ADAPTER_WEIGHTS
    binf = folder / "adapter_model.bin"
    if st.is_file():
        return st, []
    if not binf.is_file():
        raise InstallError(
            INVALID_ADAPTER,
            f"no {ADAPTER_WEIGHTS} or adapter_model.bin next to adapter_config.json",
        )
    from safetensors.torch import save_file

    norm = ckpt.unwrap(ckpt.load_tensor_file(binf), where=binf.name)
    save_file(
        {k: v.contiguous() for k, v in norm.state.items()}, str(st), metadata={"format": "pt"}
    )
    binf.unlink()
    return st, [
        _finding(
            "info", "ConvertedToSafetensors", f"adapter_model.bin converted to {ADAPTER_WEIGHTS}"
        )
    ]


def _module_examples(arch: MetaArchitecture) -> str:
    import torch

    leaves = []
    for name, mod in arch.model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)) or type(mod).__name__ == "Conv1D":
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in leaves:
                leaves.append(leaf)
    return ", ".join(leaves[:15])


@dataclass(frozen=True)
class _Base:
    """The installed base model an adapter is checked against, built on the meta device.

    Attributes:
        arch: The base's architecture (its task head included).
        task: ``text-generation`` or ``text-classification``.
        names: Dotted names of its submodules.
        modules: Dotted name -> module (the root as ``""``).
    """

    arch: MetaArchitecture
    task: str
    names: list[str]
    modules: dict


def validate_adapter(
    folder: Path,
    *,
    base_path: Path,
    base_source: str | None = None,
    max_rank: int | None = None,
) -> AdapterFacts:
    """Validate a staged adapter folder (converting ``.bin`` weights to safetensors).

    Args:
        folder: The staged adapter files.
        base_path: The installed base model folder (its config.json and lorafleet.json).
        base_source: The base's source URI, compared with ``base_model_name_or_path``.
        max_rank: Largest ``r`` accepted, or None.

    Returns:
        :class:`AdapterFacts` for the report.

    Raises:
        InstallError: ``InvalidAdapter``, ``RankExceedsLimit``, ``EmptyAdapterWeights``,
            ``TargetModulesNotFound``, ``NoAdapterWeightsApplied``, ``ShapeMismatch``,
            ``UnsafeCheckpoint``, ``UnsupportedAdapter`` (a LoRA variant the engine does not
            serve, :func:`lorafleet_serving.adapter_support.unsupported_features`),
            ``InvalidBaseModel`` (base folder unusable).
    """
    cfg = read_adapter_config(folder)
    check_adapter_config(cfg, max_rank)
    modules_to_save = list(dict.fromkeys(cfg.get("modules_to_save") or []))
    weights, findings = _ensure_safetensors(folder)
    shapes = _weight_shapes(weights)
    base = _load_base(base_path)
    target_list = _check_targets(cfg.get("target_modules"), base)

    saved_paths = saved_module_names(modules_to_save, base.modules)
    # Base weights the adapter carries: compared with the base's below, never loaded.
    copies = base_weight_copies(shapes, base.arch.model, saved_paths)
    tensors = sort_tensors(cfg, shapes, copies, saved_paths, base.modules)
    check_tensors_apply(tensors, len(shapes), weights, base.arch)
    check_complete(cfg, tensors.parts, base.modules, weights.name)
    _check_served(cfg, shapes, base, copies, weights, base_path)
    findings += _ignored_warnings(cfg, tensors.unmatched, base.arch.name)

    base_model = cfg.get("base_model_name_or_path")
    base_matches = _check_base_matches(base_source, base_model, findings)
    head = _classification_head(tensors.head_shapes, modules_to_save, base.task)
    return AdapterFacts(
        rank=cfg["r"],
        lora_alpha=cfg.get("lora_alpha", 8),
        target_modules=target_list,
        modules_to_save=modules_to_save,
        base_model=base_model,
        base_matches=base_matches,
        num_labels=head,
        labels=None if head is None else _adapter_labels(folder, head),
        findings=findings,
    )


def _weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes in the adapter's safetensors header; none may be empty.

    Raises:
        InstallError: ``InvalidAdapter`` (unreadable header) or ``EmptyAdapterWeights``
            (zero-size tensors, or no tensor at all).
    """
    shapes = header_shapes([weights], reason=INVALID_ADAPTER)
    empty = sorted(k for k, s in shapes.items() if 0 in s)
    if empty:
        raise InstallError(
            EMPTY_ADAPTER_WEIGHTS, f"{weights.name}: zero-size tensors: {ckpt._listing(empty)}"
        )
    if not shapes:
        raise InstallError(EMPTY_ADAPTER_WEIGHTS, f"{weights.name}: holds no tensors")
    return shapes


def _load_base(base_path: Path) -> _Base:
    """Build the installed base on the meta device, with the task it was installed for.

    A base installed without ``--task`` has the task its architecture's head says.

    Raises:
        InstallError: ``InvalidBaseModel`` (no ``config.json``, or it does not load).
    """
    if not (base_path / "config.json").is_file():
        raise InstallError(
            INVALID_BASE_MODEL,
            f"base model folder {base_path} has no config.json (is it installed?)",
        )
    base_cfg = load_config(base_path)
    task, num_labels = _base_task(base_path)
    arch = build_meta(base_cfg, task=task, num_labels=num_labels)
    # A base installed without --task: its architecture says which head it has.
    task = task or (
        "text-classification"
        if arch.name.endswith("ForSequenceClassification")
        else "text-generation"
    )
    return _Base(arch, task, arch.module_names(), dict(arch.model.named_modules()))


def _check_targets(targets: str | list[str] | None, base: _Base) -> list[str]:
    """Check every ``target_modules`` entry names a module of the base (peft's matching).

    A string is a full-match regex (``all-linear`` always passes); a list entry matches a
    module whose name equals it or ends with ``.<entry>``.

    Returns:
        The targets as the report lists them (a string becomes a one-item list).

    Raises:
        InstallError: ``TargetModulesNotFound``, with examples of the base's layer names.
    """
    arch, names = base.arch, base.names
    if isinstance(targets, str):
        if targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
            raise InstallError(
                TARGET_MODULES_NOT_FOUND,
                f"target_modules regex {targets!r} matches no module of {arch.name} "
                f"(its layers include {_module_examples(arch)})",
            )
        return [targets]
    target_list = list(targets or [])
    absent = [t for t in target_list if not _target_matches(t, names)]
    if absent:
        raise InstallError(
            TARGET_MODULES_NOT_FOUND,
            f"target module(s) {', '.join(repr(t) for t in absent)} not found in {arch.name} "
            f"(its layers include {_module_examples(arch)})",
        )
    return target_list


def _check_served(
    cfg: dict,
    shapes: dict[str, tuple[int, ...]],
    base: _Base,
    copies: dict[str, str],
    weights: Path,
    base_path: Path,
) -> None:
    """Refuse what the engine cannot serve, here rather than with 503 after Ready.

    That is :func:`~lorafleet_serving.adapter_support.unsupported_features` over the base,
    and base-weight ``copies`` that differ from the installed base's tensors.

    Raises:
        InstallError: ``UnsupportedAdapter`` naming every problem; ``InvalidBaseModel`` when
            the base's weights cannot be read.
    """
    unsupported = unsupported_features(cfg, shapes, base.arch.model, task=base.task)
    if copies:
        unsupported += base_copy_problems(copies, weights, base_path)
    if unsupported:
        raise InstallError(UNSUPPORTED_ADAPTER, "; ".join(unsupported))


def _ignored_warnings(cfg: dict, unmatched: list[str], arch_name: str) -> list[dict]:
    """Warnings for what loading the adapter ignores: unknown config keys, unmatched tensors."""
    findings = []
    ignored = config_keys_peft_ignores(cfg)
    if ignored:
        findings.append(
            _finding(
                "warning",
                "UnknownConfigKeys",
                "adapter_config.json keys the installed peft does not know (ignored when the"
                f" adapter loads): {', '.join(ignored)}",
            )
        )
    if unmatched:
        findings.append(
            _finding(
                "warning",
                "UnmatchedWeights",
                f"ignored, no such module in {arch_name}: {ckpt._listing(unmatched)}",
            )
        )
    return findings


def _check_base_matches(
    base_source: str | None, base_model: str | None, findings: list[dict]
) -> bool | None:
    """Compare the adapter's ``base_model_name_or_path`` with the base's source URI.

    A mismatch is a ``BaseMismatch`` warning appended to ``findings``, not a refusal.

    Returns:
        Whether they name the same model (one may be a suffix path of the other), or None
        when either is unknown.
    """
    if not (base_source and base_model):
        return None
    a, b = _norm_base_id(base_source), _norm_base_id(base_model)
    matches = a == b or a.endswith("/" + b) or b.endswith("/" + a)
    if not matches:
        findings.append(
            _finding(
                "warning",
                "BaseMismatch",
                f"adapter was trained on {base_model!r}, installed over base from {base_source!r}",
            )
        )
    return matches


def _classification_head(
    head_shapes: dict[str, tuple[int, ...]], modules_to_save: list[str], task: str
) -> int | None:
    """The label count of the classification head the adapter saves, over a classification base.

    Only a classification base's head (``classifier``/``score``) makes labels; a saved
    ``lm_head`` or pooler is a whole-module copy, not a head of labels.

    Returns:
        The label count, or None (not a classification base, or no head saved).
    """
    if task != "text-classification":
        return None
    return _head_size(
        {k: v for k, v in head_shapes.items() if k.split(".", 1)[0] in HEAD_NAMES},
        [m for m in modules_to_save if m in HEAD_NAMES],
    )


def _head_size(head_shapes: dict[str, tuple[int, ...]], modules_to_save: list[str]) -> int | None:
    """Label count of a saved classification head: rows of its output projection weight."""
    candidates = []
    for key, shape in head_shapes.items():
        if len(shape) != 2 or not key.endswith("weight"):
            continue
        if key.endswith("out_proj.weight"):
            candidates.insert(0, shape[0])
        elif any(key in (f"{s}.weight", f"{s}.modules_to_save.weight") for s in modules_to_save):
            candidates.append(shape[0])
    return candidates[0] if candidates else None


def _adapter_labels(folder: Path, n: int) -> dict[str, str]:
    """Labels from the adapter folder's config.json ``id2label`` if it fits, else ``LABEL_i``."""
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            id2label = json.loads(cfg.read_text()).get("id2label") or {}
            if len(id2label) == n:
                return {
                    str(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))
                }
        except (ValueError, AttributeError, TypeError):
            pass
    return {str(i): f"LABEL_{i}" for i in range(n)}
