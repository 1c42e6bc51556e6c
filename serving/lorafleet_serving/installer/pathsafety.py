"""Names coming from a source (repo files, object keys, archive members) made safe to place.

A name that is absolute, contains ``..``, a backslash or NUL, or is empty would let a source
write outside the install folder; a name with a control character (newline, carriage return,
an ANSI escape, any other C0/C1 control, a bidirectional override) would forge lines or
colours in logs, terminals and listings. Both are refused with ``InvalidSource``; messages show
the name escaped (``repr``), never raw.
"""

from __future__ import annotations

import posixpath
import unicodedata
from pathlib import Path

from .errors import INVALID_SOURCE, InstallError

# Bidirectional embeddings, overrides and isolates: they reorder how a name is displayed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def has_control_chars(name: str) -> bool:
    """True when ``name`` holds a control character (Unicode category Cc) or a bidi control.

    Args:
        name: Any file name or path.

    Returns:
        Whether the name would be refused by :func:`safe_relpath` for its characters.
    """
    return any(unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in name)


def safe_relpath(name: str, *, where: str) -> str:
    """Check that ``name`` is a plain relative POSIX path inside its destination.

    Args:
        name: Path as given by the source (``a/b.safetensors``).
        where: Where the name came from, for the message (``"archive model.tar"``).

    Returns:
        The normalised relative path (no ``./`` parts).

    Raises:
        InstallError: ``InvalidSource`` for absolute names, ``..``, backslashes, control
            characters (NUL, newline, ESC, ...) or empty names.
    """
    if name and has_control_chars(name):
        raise InstallError(
            INVALID_SOURCE,
            f"file name {name!r} in {where} contains control characters; such names are refused",
        )
    if not name or "\\" in name:
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
