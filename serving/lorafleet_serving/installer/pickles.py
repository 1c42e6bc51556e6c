"""Pickle files in a staged install: found by name or content, and left out of the install.

Serving never unpickles, but the next tool that opens the folder may: ``torch.load`` of a
``training_args.bin``, ``optimizer.pt`` or ``last.ckpt`` runs whatever the pickle says. So after
validation has converted the weights it uses (``pytorch_model*.bin`` of a base without
safetensors, an adapter's ``adapter_model.bin`` without ``adapter_model.safetensors``), every
pickle still in the folder is removed and listed as a ``PickleLeftOut`` finding; a shard index
(``*.bin.index.json``) none of whose shards remain goes with them.

A file is a pickle when its name says so (:data:`PICKLE_SUFFIXES`) or its first bytes do
(pickle protocol 2-5, or the zip archive ``torch.save`` writes, holding ``data.pkl``);
``.safetensors`` files are never sniffed (their header length may begin with the same byte).
"""

from __future__ import annotations

import json
import pickletools
import zipfile
from pathlib import Path

#: Suffixes that mark a pickle whatever the content (PyTorch, Lightning, joblib, dill).
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".dill")
#: Suffixes never treated as pickles.
NOT_PICKLE_SUFFIXES = (".safetensors",)
_SNIFF_BYTES = 64


def _starts_like_pickle(head: bytes) -> bool:
    """True for a PROTO opcode (protocol 2-5) followed by a valid opcode."""
    if len(head) < 3 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    try:
        ops = pickletools.genops(head)
        next(ops)  # PROTO
        next(ops)  # FRAME, LONG1 (torch's legacy magic number), EMPTY_DICT, GLOBAL, ...
    except (ValueError, StopIteration):
        return False
    return True


def is_pickle(path: Path) -> bool:
    """Whether ``path`` is (or holds) a pickle, judged by its suffix and first bytes.

    Args:
        path: A regular file.

    Returns:
        True for pickle suffixes, pickle protocol 2-5 streams and ``torch.save`` zip files.
    """
    suffix = path.suffix.lower()
    if suffix in NOT_PICKLE_SUFFIXES:
        return False
    if suffix in PICKLE_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    if _starts_like_pickle(head):
        return True
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith(".pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
    return False


def leave_out_pickles(folder: Path) -> list[str]:
    """Remove every pickle below ``folder`` (and shard indexes left without shards).

    Args:
        folder: The staged install, after validation and conversion.

    Returns:
        Relative POSIX paths removed, sorted (empty when there was none).
    """
    removed = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if is_pickle(path):
            path.unlink()
            removed.append(path.relative_to(folder).as_posix())
    if not removed:
        return []
    for index in sorted(folder.rglob("*.bin.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if shards and not any((index.parent / s).is_file() for s in shards):
            index.unlink()
            removed.append(index.relative_to(folder).as_posix())
    return sorted(removed)
