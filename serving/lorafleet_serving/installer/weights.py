"""Weight files in an install folder: discovery, shard indexes, header shapes, conversion.

Serving must never unpickle, so ``.bin`` weights are converted to safetensors here (after a
``weights_only=True`` load) and the pickles removed from the install. ``.bin`` files that are
training state, not weights (:data:`NOT_WEIGHT_BINS`), are never loaded; they are left out of
the install with every other pickle (:mod:`.pickles`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import INVALID_BASE_MODEL, MISSING_SHARD, InstallError

INDEX_SUFFIX = ".index.json"
#: ``.bin`` files trainers (transformers Trainer, accelerate) write beside weights.
NOT_WEIGHT_BINS = ("training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin")
NOT_WEIGHT_BIN_PREFIXES = ("rng_state", "random_states")


def index_files(folder: Path) -> list[Path]:
    """Sharded-checkpoint indexes (``*.safetensors.index.json``, ``*.bin.index.json``)."""
    return sorted(p for p in folder.glob("*" + INDEX_SUFFIX) if p.is_file())


def check_indexes(folder: Path) -> None:
    """Every shard an index's ``weight_map`` names must exist beside it.

    Raises:
        InstallError: ``MissingShard`` naming the index and the missing file(s);
            ``InvalidBaseModel`` for an unreadable index.
    """
    for index in index_files(folder):
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InstallError(
                INVALID_BASE_MODEL, f"{index.name}: not a shard index ({exc})"
            ) from exc
        missing = sorted({s for s in weight_map.values() if not (folder / s).is_file()})
        if missing:
            raise InstallError(
                MISSING_SHARD,
                f"{index.name} references shard(s) that do not exist: {', '.join(missing)}",
            )


def safetensors_files(folder: Path) -> list[Path]:
    """Top-level ``*.safetensors`` files."""
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def pickle_weight_files(folder: Path) -> list[Path]:
    """Top-level ``*.bin`` weight files (``pytorch_model*.bin``, ...), training state excepted."""
    return sorted(
        p
        for p in folder.glob("*.bin")
        if p.is_file()
        and p.name not in NOT_WEIGHT_BINS
        and not p.name.startswith(NOT_WEIGHT_BIN_PREFIXES)
    )


def header_shapes(
    files: list[Path], *, reason: str = INVALID_BASE_MODEL
) -> dict[str, tuple[int, ...]]:
    """key -> shape from safetensors headers (no tensor data is read).

    Args:
        files: The safetensors files.
        reason: The failure reason for an unreadable file: ``InvalidBaseModel`` for a base's
            weights, ``InvalidAdapter`` for an adapter's.

    Raises:
        InstallError: ``reason``, naming an unreadable (e.g. truncated) file.
    """
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        except Exception as exc:
            raise InstallError(
                reason, f"{path.name}: not a readable safetensors file: {exc}"
            ) from exc
    return shapes


def save_state_dict(
    state: dict, folder: Path, *, filename_pattern: str = "model{suffix}.safetensors"
) -> list[str]:
    """Write ``state`` as safetensors (sharded above 5 GB, with an index) via huggingface_hub.

    Files are written in a temporary folder beside, then renamed into ``folder``.

    Returns:
        The file names written.
    """
    import os
    import tempfile

    from huggingface_hub import save_torch_state_dict

    with tempfile.TemporaryDirectory(dir=folder, prefix=".write-") as tmp:
        save_torch_state_dict(
            {k: v.contiguous() for k, v in state.items()},
            tmp,
            filename_pattern=filename_pattern,
            max_shard_size="5GB",
            safe_serialization=True,
        )
        written = sorted(p.name for p in Path(tmp).iterdir())
        for name in written:  # rename over old names: never writes into an existing file
            os.replace(Path(tmp) / name, folder / name)
    return written
