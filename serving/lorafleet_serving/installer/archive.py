"""Tar and zip archives unpacked safely: path-safe members, bounded in total size.

Every member name passes :func:`..pathsafety.safe_relpath` (no absolute names, ``..``,
backslashes or control characters); symbolic and hard links, devices and FIFOs are refused.
The total uncompressed size is bounded (``ArchiveTooLarge``): first by the sizes the headers
declare, before anything is written, then by the bytes actually written, checked before each
chunk - a header that lies cannot make the installer write past the bound. The bound is the
smaller of the configured maximum (``--max-unpacked-bytes``) and what the volume can still take.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from .errors import ARCHIVE_TOO_LARGE, INVALID_SOURCE, InstallError
from .pathsafety import inside, safe_relpath

CHUNK_BYTES = 1 << 20
#: Default ``--max-unpacked-bytes``: 1 TiB (the free space usually bounds first).
DEFAULT_MAX_UNPACKED_BYTES = 1 << 40


def archive_kind(name: str) -> str | None:
    """Return ``"tar"`` or ``"zip"`` for archive file names, else None."""
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if lower.endswith(".zip"):
        return "zip"
    return None


class UnpackBudget:
    """The bytes an archive may still write, shared by all its members.

    Args:
        limit: Total bytes allowed (bytes).
        archive: The archive's name, for messages.
        why: How the limit was chosen, for messages (``"--max-unpacked-bytes ..."``).
    """

    def __init__(self, limit: int, archive: str, why: str) -> None:
        self.limit = limit
        self.archive = archive
        self.why = why
        self.written = 0

    def refuse_declared(self, declared: int) -> None:
        """Refuse before writing when the headers already declare more than the limit.

        Raises:
            InstallError: ``ArchiveTooLarge``.
        """
        if declared > self.limit:
            raise InstallError(
                ARCHIVE_TOO_LARGE,
                f"{self.archive}: unpacks to {declared} bytes (declared in its headers), more "
                f"than the {self.limit} bytes allowed ({self.why}); nothing was unpacked",
            )

    def copy(self, src: BinaryIO, dst: BinaryIO, member: str) -> int:
        """Copy ``src`` to ``dst``, counting against the limit before each chunk is written.

        Args:
            src: The member's data stream.
            dst: The open target file.
            member: The member's name, for the message.

        Returns:
            Bytes copied (bytes).

        Raises:
            InstallError: ``ArchiveTooLarge`` before the first byte past the limit is written.
        """
        copied = 0
        while chunk := src.read(CHUNK_BYTES):
            if self.written + len(chunk) > self.limit:
                raise InstallError(
                    ARCHIVE_TOO_LARGE,
                    f"{self.archive}: member {member!r} takes the unpacked size past the "
                    f"{self.limit} bytes allowed ({self.why}), more than its headers declared; "
                    "unpacking was stopped",
                )
            dst.write(chunk)
            self.written += len(chunk)
            copied += len(chunk)
        return copied


def unpack_archive(archive: Path, dest: Path, *, where: str, budget: UnpackBudget) -> list[str]:
    """Unpack a tar/zip archive into ``dest`` safely, within ``budget``.

    Args:
        archive: The verified archive file.
        dest: Empty target folder.
        where: Source description for messages (no secrets).
        budget: The bound on the total bytes written.

    Returns:
        Relative paths of the files written.

    Raises:
        InstallError: ``InvalidSource`` for unsafe members (absolute, ``..``, control
            characters, links, devices) or an unreadable archive; ``ArchiveTooLarge``.
    """
    try:
        if archive_kind(archive.name) == "tar":
            written = _unpack_tar(archive, dest, where, budget)
        else:
            written = _unpack_zip(archive, dest, where, budget)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InstallError(
            INVALID_SOURCE, f"{where}: not a readable {archive_kind(archive.name)} archive: {exc}"
        ) from exc
    if not written:
        raise InstallError(INVALID_SOURCE, f"{where}: the archive holds no files")
    return written


def _unpack_tar(archive: Path, dest: Path, where: str, budget: UnpackBudget) -> list[str]:
    written = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            safe_relpath(m.name, where=where)
            if m.issym() or m.islnk():
                raise InstallError(
                    INVALID_SOURCE,
                    f"{where}: archive member {m.name!r} is a link; links are refused",
                )
            if not (m.isfile() or m.isdir()):
                raise InstallError(
                    INVALID_SOURCE, f"{where}: archive member {m.name!r} is not a regular file"
                )
        budget.refuse_declared(sum(m.size for m in members if m.isfile()))
        for m in members:
            if m.isdir():
                continue
            rel = safe_relpath(m.name, where=where)
            target = inside(dest, rel, where=where)
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            with src, target.open("wb") as out:
                budget.copy(src, out, m.name)
            written.append(rel)
    return written


def _unpack_zip(archive: Path, dest: Path, where: str, budget: UnpackBudget) -> list[str]:
    written = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            safe_relpath(info.filename, where=where)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InstallError(
                    INVALID_SOURCE,
                    f"{where}: archive member {info.filename!r} is a link; links are refused",
                )
        budget.refuse_declared(sum(i.file_size for i in infos if not i.is_dir()))
        for info in infos:
            if info.is_dir():
                continue
            rel = safe_relpath(info.filename, where=where)
            target = inside(dest, rel, where=where)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                budget.copy(src, out, info.filename)
            written.append(rel)
    return written
