"""State dicts loaded safely, normalised and compared with an architecture.

This is the seed's ``model.load_state_dict(torch.load(path), strict=...)`` made safe:

- Pickles load only with ``torch.load(weights_only=True)``; a pickle that needs any other
  global (code to run, a custom class) is refused as ``UnsafeCheckpoint`` naming the globals
  (``torch.serialization.get_unsafe_globals_in_checkpoint`` lists them without executing).
- Wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` (PyTorch Lightning, training loops)
  are unwrapped; their other top-level entries (epoch, optimizer_states, ...) are dropped and
  listed.
- A prefix (``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``,
  ``model.`` from Lightning modules) is stripped only when every key that belongs to the
  model carries it; keys outside the model (``val_metrics.*``) are dropped and listed.
- Keys and shapes are compared with the architecture: ``strict`` fails on any missing or
  unexpected key (``KeysMismatch``) or shape difference (``ShapeMismatch``) and lists them;
  non-strict loads what matches and lists the rest.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

from .architecture import MetaArchitecture
from .errors import (
    INVALID_BASE_MODEL,
    KEYS_MISMATCH,
    SHAPE_MISMATCH,
    UNSAFE_CHECKPOINT,
    InstallError,
)

STRIPPABLE_PREFIXES = ("module.", "_orig_mod.", "model.")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
MAX_LISTED = 20


def _listing(keys, limit: int = MAX_LISTED) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_tensor_file(path: Path, *, where: str | None = None) -> object:
    """Load a ``.safetensors`` file or a pickle (``weights_only=True`` only) on the CPU.

    Args:
        path: The file.
        where: Name used in messages (default: the file name).

    Returns:
        What the file holds (a dict for state_dicts).

    Raises:
        InstallError: ``UnsafeCheckpoint`` naming the refused globals (nothing of the
            pickle's code runs); ``InvalidBaseModel`` for unreadable files.
    """
    import torch

    where = where or path.name
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise InstallError(
                INVALID_BASE_MODEL, f"{where}: not a readable safetensors file: {exc}"
            ) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = []
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:
            names = []
        if not names:
            names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        listed = ", ".join(sorted(set(names))) or "unknown"
        raise InstallError(
            UNSAFE_CHECKPOINT,
            f"{where}: the pickle needs globals outside the weights-only allow-list ({listed}); "
            "it was not loaded. Save a plain state_dict (torch.save(model.state_dict())) or safetensors.",
        ) from exc
    except Exception as exc:
        if not _looks_like_torch_save(path):
            raise InstallError(
                INVALID_BASE_MODEL,
                f"{where}: not a PyTorch checkpoint: neither a torch.save zip archive nor a "
                "pickle (save it with torch.save(model.state_dict()) or as safetensors)",
            ) from exc
        raise InstallError(
            INVALID_BASE_MODEL, f"{where}: cannot read the checkpoint: {exc}"
        ) from exc


def _looks_like_torch_save(path: Path) -> bool:
    """True for a zip archive (torch.save's format) or a pickle (protocol 2+, legacy format)."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(1)
        return head == b"\x80" or zipfile.is_zipfile(path)
    except OSError:
        return True  # let the caller's message stand


@dataclass
class Normalised:
    """A state dict after unwrapping and prefix handling.

    Attributes:
        state: key -> tensor, in the architecture's key namespace.
        wrapper: The unwrapped key (``state_dict``/``model``) or None.
        stripped_prefixes: Prefixes removed, in order.
        dropped_keys: Entries dropped as not part of the model (wrapper siblings, non-tensors,
            keys outside the model's top-level modules).
    """

    state: dict
    wrapper: str | None = None
    stripped_prefixes: list[str] = field(default_factory=list)
    added_prefix: str | None = None
    dropped_keys: list[str] = field(default_factory=list)


def unwrap(obj: object, *, where: str) -> Normalised:
    """Find the state dict in a checkpoint object and drop non-tensor entries.

    Raises:
        InstallError: ``InvalidBaseModel`` when no dict of tensors is found.
    """
    import torch

    if not isinstance(obj, dict):
        raise InstallError(
            INVALID_BASE_MODEL, f"{where}: holds a {type(obj).__name__}, not a state_dict"
        )
    result = Normalised(state={})
    inner = obj
    for key in WRAPPER_KEYS:
        cand = obj.get(key)
        if isinstance(cand, dict) and any(isinstance(v, torch.Tensor) for v in cand.values()):
            inner = cand
            result.wrapper = key
            result.dropped_keys += [str(k) for k in obj if k != key]
            break
    for k, v in inner.items():
        if isinstance(v, torch.Tensor):
            result.state[str(k)] = v
        else:
            result.dropped_keys.append(str(k))
    if not result.state:
        raise InstallError(INVALID_BASE_MODEL, f"{where}: holds no tensors")
    return result


def normalise(norm: Normalised, arch: MetaArchitecture) -> Normalised:
    """Strip wrapper prefixes and drop keys outside the model (see the module doc)."""
    model_keys = set(arch.shapes)
    keys = set(norm.state)
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPABLE_PREFIXES:
            with_p = {k for k in keys if k.startswith(prefix)}
            if not with_p:
                continue
            without = keys - with_p
            if without & model_keys:
                continue  # some model keys lack it: not a wrapper prefix
            stripped = {k[len(prefix) :] for k in with_p}
            if len(stripped & model_keys) <= len(with_p & model_keys):
                continue
            norm.state = {
                (k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in norm.state.items()
            }
            keys = set(norm.state)
            norm.stripped_prefixes.append(prefix)
            changed = True
    # A backbone checkpoint (BertModel keys) over a model with a head (bert.* keys).
    bp = arch.base_model_prefix
    if bp and not (keys & model_keys):
        added = {f"{bp}.{k}" for k in keys}
        if added & model_keys:
            norm.state = {f"{bp}.{k}": v for k, v in norm.state.items()}
            keys = set(norm.state)
            norm.added_prefix = bp + "."
    top_level = {k.split(".", 1)[0] for k in model_keys}
    for k in sorted(keys - model_keys):
        if k.split(".", 1)[0] not in top_level:
            norm.dropped_keys.append(k)
            del norm.state[k]
    return norm


@dataclass
class Comparison:
    """Keys and shapes of a state dict against an architecture.

    Attributes:
        matched: Keys present in both with equal shapes.
        missing: Architecture keys absent from the state dict (tied aliases excepted).
        unexpected: State dict keys the architecture does not have.
        shape_mismatches: ``key: checkpoint (a, b) vs architecture (c, d)`` lines.
    """

    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    shape_mismatches: list[str]


def compare(state: dict, arch: MetaArchitecture) -> Comparison:
    """Compare key sets and shapes (tied weights count as present when any alias is)."""
    keys = set(state)
    model_keys = set(arch.shapes)
    missing = [k for k in model_keys - keys if not (arch.aliases.get(k, set()) & keys)]
    unexpected = sorted(keys - model_keys)
    shape_mismatches, matched = [], []
    for k in sorted(keys & model_keys):
        have = tuple(state[k].shape)
        want = arch.shapes[k]
        if have != want:
            shape_mismatches.append(f"{k}: checkpoint {have} vs architecture {want}")
        else:
            matched.append(k)
    return Comparison(matched, sorted(missing), unexpected, shape_mismatches)


def judge(cmp: Comparison, *, strict: bool, where: str, arch_name: str) -> list[str]:
    """Raise for a failed strict comparison; return finding lines otherwise.

    Raises:
        InstallError: ``ShapeMismatch`` (listing the keys and shapes) or ``KeysMismatch``
            (listing missing/unexpected keys); non-strict raises only when nothing matches.
    """
    if strict and cmp.shape_mismatches:
        raise InstallError(
            SHAPE_MISMATCH,
            f"{where} over {arch_name}: shapes differ: {_listing(cmp.shape_mismatches)}",
        )
    if strict and (cmp.missing or cmp.unexpected):
        parts = []
        if cmp.missing:
            parts.append(f"missing keys: {_listing(cmp.missing)}")
        if cmp.unexpected:
            parts.append(f"unexpected keys: {_listing(cmp.unexpected)}")
        raise InstallError(KEYS_MISMATCH, f"{where} over {arch_name}: " + "; ".join(parts))
    if not cmp.matched:
        raise InstallError(
            KEYS_MISMATCH,
            f"{where}: no key matches {arch_name} (e.g. {_listing(cmp.unexpected, 5)})",
        )
    findings = []
    if cmp.missing:
        findings.append(f"not in the checkpoint (kept from the base): {_listing(cmp.missing)}")
    if cmp.unexpected:
        findings.append(f"unexpected keys ignored: {_listing(cmp.unexpected)}")
    if cmp.shape_mismatches:
        findings.append(f"shape mismatches skipped: {_listing(cmp.shape_mismatches)}")
    return findings
