"""What to install: one :class:`InstallRequest`, built by the command line or by a caller."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class InstallRequest:
    """One install of a base model (``kind="base"``) or a LoRA adapter (``kind="adapter"``).

    Paths given as strings become :class:`~pathlib.Path`; pattern lists become tuples.

    Attributes:
        kind: ``"base"`` or ``"adapter"``.
        namespace: Kubernetes namespace (folder under ``dest``).
        name: Resource name (folder under ``<namespace>/<basemodels|adapters>``).
        source: ``hf://``, ``s3://``, ``https://``, ``file://`` or ``pvc://`` URI.
        dest: Volume root (``--dest``).
        revision: hf branch/tag/commit; for other schemes the folder name to use.
        allow_patterns: Globs over relative paths to fetch (empty: all).
        ignore_patterns: Globs over relative paths to skip.
        checkpoint: URI of a state_dict applied over a base (single file).
        strict: Checkpoint keys/shapes must match exactly.
        task: ``text-generation`` or ``text-classification`` (base).
        num_labels: Classification head size (base).
        max_rank: Largest LoRA ``r`` accepted (adapter; also accepted for base, unused).
        sha256: Expected sha256 of an https download.
        base_path: Installed base folder (adapter, required).
        base_source: The base's source URI, compared with the adapter's
            ``base_model_name_or_path``.
        progress_file: Where to keep ``{"bytesDone", "bytesTotal", "updatedAt"}``.
        timeout: Seconds for the whole install (``Timeout`` after that).
        progress_stream: Human-readable progress output (default stderr).
        max_unpacked_bytes: Largest total an https archive may unpack to (bytes; default
            :data:`.archive.DEFAULT_MAX_UNPACKED_BYTES`); the volume's free space bounds it too.
    """

    kind: str
    namespace: str
    name: str
    source: str
    dest: Path
    revision: str | None = None
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    checkpoint: str | None = None
    strict: bool = True
    task: str | None = None
    num_labels: int | None = None
    max_rank: int | None = None
    sha256: str | None = None
    base_path: Path | None = None
    base_source: str | None = None
    progress_file: Path | None = None
    timeout: float | None = None
    progress_stream: TextIO | None = None
    max_unpacked_bytes: int | None = None

    def __post_init__(self) -> None:
        def as_path(value: str | os.PathLike | None) -> Path | None:
            return Path(value) if value else None

        object.__setattr__(self, "dest", Path(self.dest))
        object.__setattr__(self, "base_path", as_path(self.base_path))
        object.__setattr__(self, "progress_file", as_path(self.progress_file))
        object.__setattr__(self, "allow_patterns", tuple(self.allow_patterns or ()))
        object.__setattr__(self, "ignore_patterns", tuple(self.ignore_patterns or ()))
