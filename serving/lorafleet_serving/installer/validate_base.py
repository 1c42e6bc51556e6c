"""Validation of a base model folder (and an optional checkpoint applied over it).

Checks, in order: it is not a LoRA adapter (``NotABaseModel``); ``config.json`` loads with
transformers; sharded indexes name only existing shards (``MissingShard``); ``.bin`` weights
are converted to safetensors; the architecture instantiates on the meta device; the weight
files cover it with the right shapes. A checkpoint (see :mod:`.checkpoint`) is then applied
and the result saved as safetensors beside the config.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint as ckpt
from .architecture import MetaArchitecture, build_meta, load_config
from .errors import (
    INVALID_BASE_MODEL,
    KEYS_MISMATCH,
    NOT_A_BASE_MODEL,
    SHAPE_MISMATCH,
    InstallError,
)
from .weights import (
    check_indexes,
    header_shapes,
    index_files,
    pickle_weight_files,
    safetensors_files,
    save_state_dict,
)


@dataclass
class BaseFacts:
    """What the report records about a validated base model."""

    architecture: str
    task: str | None
    num_labels: int | None = None
    labels: dict[str, str] | None = None
    findings: list[dict] = field(default_factory=list)

    def report_fields(self) -> dict:
        """The install report's fields for these facts (None values included)."""
        return {
            "task": self.task,
            "numLabels": self.num_labels,
            "architecture": self.architecture,
            "labels": self.labels,
        }


def _finding(level: str, code: str, message: str) -> dict:
    return {"level": level, "code": code, "message": message}


def convert_pickles(folder: Path) -> list[str]:
    """Replace ``*.bin`` weights (and their index) by safetensors; return the removed names.

    Nothing is converted (or loaded) when the folder already has safetensors weights: the
    ``.bin`` copies are then left out of the install like every other pickle.
    """
    bins = pickle_weight_files(folder)
    if not bins or safetensors_files(folder):
        return []
    state: dict = {}
    for path in bins:
        norm = ckpt.unwrap(ckpt.load_tensor_file(path), where=path.name)
        state.update(norm.state)
    save_state_dict(state, folder)
    removed = [p.name for p in bins]
    for path in bins:
        path.unlink()
    for index in index_files(folder):
        if index.name.endswith(".bin.index.json"):
            index.unlink()
            removed.append(index.name)
    return removed


def _labels_for(config, n: int) -> dict[str, str]:
    id2label = getattr(config, "id2label", None) or {}
    if len(id2label) == n:
        return {str(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
    return {str(i): f"LABEL_{i}" for i in range(n)}


def _same_class(config, declared: str, task: str | None, num_labels: int | None) -> bool:
    """True when the task's Auto class is the declared class with the same head size."""
    if task is None:
        return True
    from transformers.models.auto import modeling_auto as auto

    mapping = {
        "text-generation": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "text-classification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    }[task]
    same_labels = num_labels is None or num_labels == getattr(config, "num_labels", None)
    return mapping.get(config.model_type) == declared and same_labels


def _ignorable(model, key: str) -> bool:
    patterns = getattr(model, "_keys_to_ignore_on_load_missing", None) or []
    return any(re.search(p, key) for p in patterns)


def validate_base(
    folder: Path,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    checkpoint_file: Path | None = None,
    checkpoint_name: str | None = None,
    strict: bool = True,
) -> BaseFacts:
    """Validate (and, for .bin weights or a checkpoint, rewrite) a staged base model folder.

    Args:
        folder: The staged files.
        task: ``text-classification`` / ``text-generation`` / None (the declared class).
        num_labels: Classification head size from the spec.
        checkpoint_file: A downloaded state_dict file to apply, or None.
        checkpoint_name: Its name in messages (default the file name).
        strict: Fail on any key/shape difference of the checkpoint.

    Returns:
        The :class:`BaseFacts` for the report.

    Raises:
        InstallError: ``NotABaseModel``, ``InvalidBaseModel``, ``MissingShard``,
            ``UnsafeCheckpoint``, ``KeysMismatch``, ``ShapeMismatch``.
    """
    findings: list[dict] = []
    _check_not_an_adapter(folder)
    config = load_config(folder)
    check_indexes(folder)
    converted = convert_pickles(folder)
    if converted:
        findings.append(
            _finding("info", "ConvertedToSafetensors", f"converted {', '.join(converted)}")
        )
    files = safetensors_files(folder)
    if not files and checkpoint_file is None:
        raise InstallError(
            INVALID_BASE_MODEL, "no weight files (*.safetensors or *.bin) next to config.json"
        )

    declared = build_meta(config, use_declared=True)
    if files:
        findings += _check_weight_files(files, declared, checkpoint_file is not None)
    arch = (
        declared
        if _same_class(config, declared.name, task, num_labels)
        else build_meta(config, task=task, num_labels=num_labels)
    )
    if checkpoint_file is not None:
        where = checkpoint_name or checkpoint_file.name
        findings += _apply_checkpoint(folder, config, arch, files, checkpoint_file, where, strict)
    if not any(
        (folder / n).exists()
        for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
    ):
        findings.append(
            _finding("warning", "NoTokenizer", "no tokenizer files next to config.json")
        )
    return _base_facts(config, arch, task, num_labels, findings)


def _check_not_an_adapter(folder: Path) -> None:
    """Refuse a LoRA adapter (``adapter_config.json`` and no ``config.json``) given as a base.

    Raises:
        InstallError: ``NotABaseModel``, naming the adapter's ``peft_type`` when readable.
    """
    if (folder / "config.json").is_file() or not (folder / "adapter_config.json").is_file():
        return
    peft_type = ""
    with contextlib.suppress(ValueError, AttributeError):
        peft_type = json.loads((folder / "adapter_config.json").read_text()).get("peft_type", "")
    raise InstallError(
        NOT_A_BASE_MODEL,
        f"the source holds adapter_config.json ({peft_type or 'PEFT'} adapter) and no config.json: "
        "it is a LoRA adapter, not a base model; install it as a LoraAdapter whose baseModel names its base",
    )


def _check_weight_files(
    files: list[Path], declared: MetaArchitecture, has_checkpoint: bool
) -> list[dict]:
    """Check the weight files' headers cover the declared architecture with its shapes.

    Keys are first normalised like a checkpoint's (:func:`.checkpoint.normalise`); keys the
    model may miss (``_keys_to_ignore_on_load_missing``) or that an alias covers are not
    required. Missing keys are allowed when a checkpoint follows (it may supply them).

    Args:
        files: The folder's safetensors files.
        declared: The config's declared architecture on the meta device.
        has_checkpoint: Whether a checkpoint is applied afterwards.

    Returns:
        An ``UnusedWeights`` warning for tensors the architecture does not use, if any.

    Raises:
        InstallError: ``ShapeMismatch``, then ``KeysMismatch``.
    """
    shapes = header_shapes(files)
    norm = ckpt.normalise(ckpt.Normalised(state=dict(shapes)), declared)
    file_shapes = dict(norm.state)
    missing = [
        k
        for k in declared.shapes
        if k not in file_shapes
        and not (declared.aliases.get(k, set()) & set(file_shapes))
        and not _ignorable(declared.model, k)
    ]
    bad = [
        f"{k}: file {file_shapes[k]} vs architecture {declared.shapes[k]}"
        for k in sorted(set(file_shapes) & set(declared.shapes))
        if tuple(file_shapes[k]) != declared.shapes[k]
    ]
    if bad:
        raise InstallError(SHAPE_MISMATCH, f"weights over {declared.name}: {ckpt._listing(bad)}")
    if missing and not has_checkpoint:
        raise InstallError(
            KEYS_MISMATCH,
            f"the weight files do not cover {declared.name}: missing {ckpt._listing(missing)}",
        )
    extra = sorted(set(file_shapes) - set(declared.shapes))
    if not extra:
        return []
    return [
        _finding(
            "warning",
            "UnusedWeights",
            f"not used by {declared.name}: {ckpt._listing(extra)}",
        )
    ]


def _apply_checkpoint(
    folder: Path,
    config,
    arch: MetaArchitecture,
    files: list[Path],
    checkpoint_file: Path,
    where: str,
    strict: bool,
) -> list[dict]:
    """Apply a checkpoint over the base's weights and rewrite the folder with the result.

    The checkpoint is loaded (``weights_only``), normalised to ``arch``'s key names and
    judged (:func:`.checkpoint.judge`); the base's own weights merged with it are then saved
    as safetensors in place of the old files, and ``config.json`` names ``arch``.

    Args:
        folder: The staged base folder (rewritten).
        config: Its transformers config (``architectures`` updated).
        arch: The task architecture on the meta device.
        files: The base's safetensors files (replaced).
        checkpoint_file: The downloaded checkpoint.
        where: Its name in messages.
        strict: Fail on any key/shape difference.

    Returns:
        Findings: how the checkpoint was normalised, ``NonStrict`` warnings and
        ``CheckpointApplied``.

    Raises:
        InstallError: ``UnsafeCheckpoint``, ``KeysMismatch``, ``ShapeMismatch``.
    """
    norm = ckpt.normalise(
        ckpt.unwrap(ckpt.load_tensor_file(checkpoint_file, where=where), where=where), arch
    )
    cmp = ckpt.compare(norm.state, arch)
    notes = ckpt.judge(cmp, strict=strict, where=where, arch_name=arch.name)
    findings = _normalisation_findings(norm, where)
    findings += [_finding("warning", "NonStrict", f"{where}: {n}") for n in notes]
    written = _write_merged(folder, config, arch, files, norm, cmp)
    findings.append(
        _finding(
            "info",
            "CheckpointApplied",
            f"{where}: {len(cmp.matched)} tensors applied; wrote {', '.join(written)}",
        )
    )
    return findings


def _normalisation_findings(norm: ckpt.Normalised, where: str) -> list[dict]:
    """Info findings for what normalising the checkpoint changed.

    That is the wrapper the state dict was taken from, prefixes stripped or added, and keys
    dropped as not model weights.
    """
    findings = []
    if norm.wrapper:
        findings.append(
            _finding("info", "Unwrapped", f"{where}: state dict taken from {norm.wrapper!r}")
        )
    if norm.stripped_prefixes:
        findings.append(
            _finding(
                "info",
                "PrefixStripped",
                f"{where}: stripped {', '.join(norm.stripped_prefixes)}",
            )
        )
    if norm.added_prefix:
        findings.append(_finding("info", "PrefixAdded", f"{where}: added {norm.added_prefix}"))
    if norm.dropped_keys:
        findings.append(
            _finding(
                "info",
                "DroppedKeys",
                f"{where}: not model weights, dropped: {ckpt._listing(norm.dropped_keys)}",
            )
        )
    return findings


def _write_merged(
    folder: Path,
    config,
    arch: MetaArchitecture,
    files: list[Path],
    norm: ckpt.Normalised,
    cmp: ckpt.Comparison,
) -> list[str]:
    """Replace the folder's weights by the base's merged with the checkpoint, and its config.

    The base's tensors (in ``arch``'s namespace) are overlaid with the checkpoint's, except
    those whose shape differs (kept from the base, as :func:`.checkpoint.judge` allowed); the
    old weight files and indexes are removed, and ``config.json`` is written anew naming
    ``arch``.

    Returns:
        The names of the safetensors files written.
    """
    merged = {}
    for path in files:  # the base's own weights, in the task architecture's namespace
        base = ckpt.normalise(ckpt.unwrap(ckpt.load_tensor_file(path), where=path.name), arch)
        merged.update({k: v for k, v in base.state.items() if k in arch.shapes})
    skip = {line.split(":", 1)[0] for line in cmp.shape_mismatches}
    merged.update({k: v for k, v in norm.state.items() if k in arch.shapes and k not in skip})
    for path in files:
        path.unlink()
    for index in index_files(folder):
        index.unlink()
    written = save_state_dict(merged, folder)
    config.architectures = [arch.name]
    (folder / "config.json").unlink()  # a new file, never a write into a shared inode
    config.save_pretrained(str(folder))
    return written


def _base_facts(
    config, arch: MetaArchitecture, task: str | None, num_labels: int | None, findings: list[dict]
) -> BaseFacts:
    """The report's facts: the architecture and the task, with labels for a classifier.

    A classification base gets its label count (the spec's, else the config's) and labels.
    """
    facts = BaseFacts(architecture=arch.name, task=task, findings=findings)
    if task == "text-classification" or arch.name.endswith("ForSequenceClassification"):
        n = num_labels or getattr(config, "num_labels", None)
        if n:
            facts.num_labels = int(n)
            facts.labels = _labels_for(config, int(n))
    return facts
