"""Free-space check before downloading, so a full volume fails fast with a clear reason."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import INSUFFICIENT_SPACE, InstallError

# Headroom kept free (bytes): manifests, conversions, the filesystem's own needs.
HEADROOM_BYTES = 16 << 20


def check_space(path: Path, needed_bytes: int, *, what: str) -> None:
    """Refuse when the filesystem holding ``path`` has less than ``needed_bytes`` + headroom free.

    Args:
        path: Any existing folder on the target volume.
        needed_bytes: Bytes still to be written.
        what: What is being installed, for the message.

    Raises:
        InstallError: ``InsufficientSpace`` with both figures in bytes.
    """
    free = shutil.disk_usage(path).free
    if needed_bytes + HEADROOM_BYTES > free:
        raise InstallError(
            INSUFFICIENT_SPACE,
            f"{what} needs {needed_bytes} bytes (+{HEADROOM_BYTES} headroom) but the volume "
            f"holding {path} has {free} bytes free",
        )
