"""Room on the volume: the check before downloading, the bound while writing, and running out.

- :func:`check_space` refuses an install whose known size does not fit, before the first byte.
- :func:`writable_bytes` is what may still be written (free space minus headroom): downloads
  of unknown size and archive extraction stop there.
- :func:`is_space_exhausted` recognises ENOSPC/EDQUOT however a library reports it, so the
  installer can clean its staging and say ``InsufficientSpace`` (never ``InternalError``).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from .errors import INSUFFICIENT_SPACE, InstallError

# Headroom kept free (bytes): manifests, conversions, the filesystem's own needs.
HEADROOM_BYTES = 16 << 20
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How libraries that do not raise OSError word it (safetensors' Rust I/O errors, etc.).
_SPACE_TEXTS = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


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


def writable_bytes(path: Path) -> int:
    """Bytes that may still be written on the filesystem holding ``path``.

    Args:
        path: Any existing file or folder on the volume.

    Returns:
        Free bytes minus :data:`HEADROOM_BYTES`, never negative.
    """
    return max(0, shutil.disk_usage(path).free - HEADROOM_BYTES)


def is_space_exhausted(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) means the volume is full.

    Args:
        exc: Any exception.

    Returns:
        True for ``OSError`` with ENOSPC/EDQUOT anywhere in the cause/context chain, and for
        errors whose text says so (libraries that wrap the OS error in their own type).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in SPACE_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _SPACE_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def space_exhausted_error(exc: BaseException, path: Path, *, what: str) -> InstallError:
    """The ``InsufficientSpace`` refusal for a write that ran out of room.

    Args:
        exc: The error that said so (see :func:`is_space_exhausted`).
        path: A folder on the volume (its free space is reported).
        what: What was being installed.

    Returns:
        The error to raise (the caller has removed the staged files).
    """
    try:
        free = f"{shutil.disk_usage(path).free} bytes are free now"
    except OSError:
        free = "its free space is unknown"
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return InstallError(
        INSUFFICIENT_SPACE,
        f"the volume holding {path} ran out of space while installing {what} ({cause}); "
        f"the staged files were removed and {free}",
    )
