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
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter_support import (
    HEAD_NAMES,
    LORA_KEY,
    PEFT_PREFIX,
    base_weight_copies,
    config_keys_peft_ignores,
    copy_problems,
    saved_module_names,
    unsupported_features,
)
from . import checkpoint as ckpt
from .architecture import MetaArchitecture, build_meta, load_config
from .errors import (
    EMPTY_ADAPTER_WEIGHTS,
    INVALID_ADAPTER,
    INVALID_BASE_MODEL,
    NO_ADAPTER_WEIGHTS_APPLIED,
    RANK_EXCEEDS_LIMIT,
    SHAPE_MISMATCH,
    TARGET_MODULES_NOT_FOUND,
    UNSUPPORTED_ADAPTER,
    InstallError,
)
from .manifest import MANIFEST_NAME
from .weights import header_shapes, safetensors_files

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


def _rank_for(module: str, r: int, rank_pattern: dict) -> int:
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


def _copy_problems(copies: dict[str, str], weights: Path, base_path: Path) -> list[str]:
    """Compare the adapter's copies of base weights with the installed base's tensors."""
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


def _check_config_types(cfg: dict) -> None:
    """Refuse ``adapter_config.json`` fields of the wrong type (peft would fail on them later).

    Raises:
        InstallError: ``InvalidAdapter`` naming the field and what it must be.
    """

    def bad(name: str, what: str) -> InstallError:
        return InstallError(
            INVALID_ADAPTER, f"adapter_config.json: {name} must be {what}, got {cfg[name]!r}"
        )

    for name in ("rank_pattern", "alpha_pattern"):
        value = cfg.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise bad(name, "an object of module pattern -> number")
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise bad(name, f"positive numbers (entry {key!r})")
            if name == "rank_pattern" and number != int(number):
                raise bad(name, f"positive integers (entry {key!r})")
            try:
                re.compile(key)
            except re.error as exc:
                raise bad(name, f"valid regular expressions as keys ({key!r}: {exc})") from exc
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as exc:
            raise bad("target_modules", f"a valid regular expression ({exc})") from exc
    elif targets is not None and not (
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
    ):
        raise bad("target_modules", "a list of module names or a regular expression")
    for name in ("modules_to_save", "target_parameters"):
        value = cfg.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise bad(name, "a list of module names")

    def number(value: object) -> bool:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )

    if "lora_alpha" in cfg and not number(cfg["lora_alpha"]):
        raise bad("lora_alpha", "a finite number")
    dropout = cfg.get("lora_dropout")
    if dropout is not None and not (number(dropout) and 0 <= dropout < 1):
        raise bad("lora_dropout", "a number in [0, 1)")
    for name in ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out", "inference_mode"):
        if cfg.get(name) is not None and not isinstance(cfg[name], bool):
            raise bad(name, "true or false")
    layers = cfg.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool))
        or (isinstance(layers, list) and all(isinstance(n, int) for n in layers))
    ):
        raise bad("layers_to_transform", "a layer index or a list of them")
    excluded = cfg.get("exclude_modules")
    if excluded is not None and not (
        isinstance(excluded, str)
        or (isinstance(excluded, list) and all(isinstance(m, str) for m in excluded))
    ):
        raise bad("exclude_modules", "a list of module names or a regular expression")
    task_type = cfg.get("task_type")
    if task_type is not None:
        from peft import TaskType

        if task_type not in {t.value for t in TaskType}:
            raise bad("task_type", f"one of {', '.join(t.value for t in TaskType)} or null")


def _check_complete(cfg: dict, parts: dict[str, set[str]], modules: dict, file: str) -> None:
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
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        hint = (
            " (it holds config.json: a full model belongs in a BaseModel)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise InstallError(INVALID_ADAPTER, f"no adapter_config.json in the source{hint}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise InstallError(
            INVALID_ADAPTER, f"adapter_config.json is not valid JSON: {exc}"
        ) from exc
    if not isinstance(cfg, dict):
        raise InstallError(INVALID_ADAPTER, "adapter_config.json does not hold a JSON object")
    peft_type = str(cfg.get("peft_type", ""))
    if peft_type != "LORA":  # peft's PeftType is case-sensitive
        raise InstallError(
            INVALID_ADAPTER,
            f"adapter_config.json: peft_type is {peft_type or 'missing'!r}, not 'LORA'",
        )
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InstallError(
            INVALID_ADAPTER, f"adapter_config.json: r must be a positive integer, got {r!r}"
        )
    _check_config_types(cfg)
    rank_pattern = cfg.get("rank_pattern") or {}
    if max_rank is not None:
        if r > max_rank:
            raise InstallError(
                RANK_EXCEEDS_LIMIT, f"adapter_config.json: r={r} exceeds maxRank {max_rank}"
            )
        over = {k: int(v) for k, v in rank_pattern.items() if int(v) > max_rank}
        if over:
            raise InstallError(
                RANK_EXCEEDS_LIMIT,
                f"adapter_config.json: rank_pattern {over} exceeds maxRank {max_rank}",
            )
    alpha = cfg.get("lora_alpha", 8)
    targets = cfg.get("target_modules")
    modules_to_save = list(dict.fromkeys(cfg.get("modules_to_save") or []))
    if not targets and not cfg.get("target_parameters"):
        raise InstallError(INVALID_ADAPTER, "adapter_config.json: target_modules is empty")

    weights, findings = _ensure_safetensors(folder)
    shapes = header_shapes([weights], reason=INVALID_ADAPTER)
    empty = sorted(k for k, s in shapes.items() if 0 in s)
    if empty:
        raise InstallError(
            EMPTY_ADAPTER_WEIGHTS, f"{weights.name}: zero-size tensors: {ckpt._listing(empty)}"
        )
    if not shapes:
        raise InstallError(EMPTY_ADAPTER_WEIGHTS, f"{weights.name}: holds no tensors")

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
    names = arch.module_names()
    modules = dict(arch.model.named_modules())

    if isinstance(targets, str):
        if targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
            raise InstallError(
                TARGET_MODULES_NOT_FOUND,
                f"target_modules regex {targets!r} matches no module of {arch.name} "
                f"(its layers include {_module_examples(arch)})",
            )
        target_list = [targets]
    else:
        target_list = list(targets or [])
        absent = [t for t in target_list if not _target_matches(t, names)]
        if absent:
            raise InstallError(
                TARGET_MODULES_NOT_FOUND,
                f"target module(s) {', '.join(repr(t) for t in absent)} not found in {arch.name} "
                f"(its layers include {_module_examples(arch)})",
            )

    applied, unmatched, bad_shapes = [], [], []
    parts: dict[str, set[str]] = {}  # module -> LoRA matrices present (lora_A, lora_B, ...)
    head_shapes: dict[str, tuple[int, ...]] = {}
    saved_paths = saved_module_names(modules_to_save, modules)
    copies = base_weight_copies(shapes, arch.model, saved_paths)  # compared below, never loaded
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
    if not applied:
        raise InstallError(
            NO_ADAPTER_WEIGHTS_APPLIED,
            f"none of the {len(shapes)} tensors in {weights.name} matches a module of {arch.name} "
            f"(e.g. {ckpt._listing(unmatched, 3)})",
        )
    if bad_shapes:
        raise InstallError(
            SHAPE_MISMATCH, f"{weights.name} over {arch.name}: {ckpt._listing(bad_shapes)}"
        )
    _check_complete(cfg, parts, modules, weights.name)
    # What the engine cannot serve is refused here, not answered with 503 after Ready.
    unsupported = unsupported_features(cfg, shapes, arch.model, task=task)
    if copies:
        unsupported += _copy_problems(copies, weights, base_path)
    if unsupported:
        raise InstallError(UNSUPPORTED_ADAPTER, "; ".join(unsupported))
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
                f"ignored, no such module in {arch.name}: {ckpt._listing(unmatched)}",
            )
        )

    facts = AdapterFacts(
        rank=r,
        lora_alpha=alpha,
        target_modules=target_list,
        modules_to_save=modules_to_save,
        base_model=cfg.get("base_model_name_or_path"),
        findings=findings,
    )
    if base_source and facts.base_model:
        a, b = _norm_base_id(base_source), _norm_base_id(facts.base_model)
        facts.base_matches = a == b or a.endswith("/" + b) or b.endswith("/" + a)
        if not facts.base_matches:
            findings.append(
                _finding(
                    "warning",
                    "BaseMismatch",
                    f"adapter was trained on {facts.base_model!r}, installed over base from {base_source!r}",
                )
            )
    # Only a classification base's head (classifier/score) makes labels; a saved lm_head or
    # pooler is a whole-module copy, not a head of labels.
    head = (
        _head_size(
            {k: v for k, v in head_shapes.items() if k.split(".", 1)[0] in HEAD_NAMES},
            [m for m in modules_to_save if m in HEAD_NAMES],
        )
        if task == "text-classification"
        else None
    )
    if head is not None:
        facts.num_labels = head
        facts.labels = _adapter_labels(folder, head)
    return facts


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
