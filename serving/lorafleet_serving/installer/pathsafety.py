"""Names coming from a source (repo files, object keys, archive members) made safe to place.

A name that is absolute, contains ``..``, a backslash or NUL, or is empty would let a source
write outside the install folder; it is refused with ``InvalidSource``.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from .errors import INVALID_SOURCE, InstallError


def safe_relpath(name: str, *, where: str) -> str:
    """Check that ``name`` is a plain relative POSIX path inside its destination.

    Args:
        name: Path as given by the source (``a/b.safetensors``).
        where: Where the name came from, for the message (``"archive model.tar"``).

    Returns:
        The normalised relative path (no ``./`` parts).

    Raises:
        InstallError: ``InvalidSource`` for absolute names, ``..``, backslashes, NUL or empty.
    """
    if not name or "\x00" in name or "\\" in name:
        raise InstallError(INVALID_SOURCE, f"unsafe file name {name!r} in {where}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InstallError(INVALID_SOURCE, f"absolute file name {name!r} in {where} is refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InstallError(
            INVALID_SOURCE, f"file name {name!r} in {where} escapes the destination ('..')"
        )
    return posixpath.join(*parts)


def inside(root: Path, relpath: str, *, where: str) -> Path:
    """Return ``root / relpath`` after :func:`safe_relpath`, checked to stay under ``root``."""
    rel = safe_relpath(relpath, where=where)
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InstallError(
            INVALID_SOURCE, f"file name {relpath!r} in {where} escapes the destination"
        )
    return root / rel
