"""File integrity: sizes always, and every digest the source publishes.

- Hugging Face Hub: LFS files carry ``lfs.sha256``; every other file carries its git blob id
  (``sha1("blob <size>\\0" + bytes)``, the git object format).
- S3: the ETag of a single-part upload is the md5 of the bytes (a ``-`` in it marks a
  multipart upload, whose ETag is not a content digest, so only the size is checked).
- https: an optional ``sha256`` from the spec (``--sha256``).

Every installed file's sha256 is computed for ``lorafleet.json`` in the same read pass.
Several files are hashed at once (:func:`in_parallel`): hashlib and file reads release the
GIL, so the threads use every core and keep the disk busy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import CHECKSUM_MISMATCH, SIZE_MISMATCH, InstallError

CHUNK_BYTES = 8 << 20
HASH_WORKERS = 4

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass
class Expected:
    """What a source says a file must be. Any field may be None (unknown).

    Attributes:
        size: Bytes.
        sha256: Hex sha256 of the bytes.
        md5: Hex md5 of the bytes (S3 single-part ETag).
        git_blob: Hex git blob id (sha1 over ``blob <size>\\0`` + bytes).
    """

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    git_blob: str | None = None


@dataclass
class Digests:
    """Digests of a file on disk (hex strings; md5/git_blob only when asked for)."""

    size: int
    sha256: str
    md5: str | None = None
    git_blob: str | None = None


def file_digests(path: Path, *, md5: bool = False, git_blob: bool = False) -> Digests:
    """Read ``path`` once and return its size and digests.

    Args:
        path: File to hash.
        md5: Also compute md5.
        git_blob: Also compute the git blob id.

    Returns:
        The :class:`Digests`.
    """
    size = path.stat().st_size
    h256 = hashlib.sha256()
    hmd5 = hashlib.md5(usedforsecurity=False) if md5 else None
    hgit = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False) if git_blob else None
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            h256.update(chunk)
            if hmd5 is not None:
                hmd5.update(chunk)
            if hgit is not None:
                hgit.update(chunk)
    return Digests(
        size=size,
        sha256=h256.hexdigest(),
        md5=hmd5.hexdigest() if hmd5 else None,
        git_blob=hgit.hexdigest() if hgit else None,
    )


def in_parallel(
    fn: Callable[[_T], _R], items: Sequence[_T], *, workers: int = HASH_WORKERS
) -> list[_R]:
    """Call ``fn`` on every item, on up to ``workers`` threads (for hashing several files).

    Failures are reported in the order of ``items``, as a loop would: the first item whose
    call raised decides the error, whichever thread finished first.

    Args:
        fn: Called once per item.
        items: The inputs.
        workers: Most threads at once; 1 (or a single item) calls ``fn`` in this thread.

    Returns:
        ``fn(item)`` for every item, in the order of ``items``.

    Raises:
        Exception: What ``fn`` raised for the first failing item in ``items``; items not
            started by then are not run.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="hash")
    try:
        futures = [pool.submit(fn, item) for item in items]
        return [fut.result() for fut in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify_file(path: Path, expected: Expected, *, name: str) -> Digests:
    """Check ``path`` against ``expected``; return its digests.

    Args:
        path: Downloaded file.
        expected: What the source published.
        name: The file's name in the source, for messages.

    Returns:
        The file's :class:`Digests` (sha256 always set).

    Raises:
        InstallError: ``ChecksumMismatch`` naming the file, the digest kind and both values.
    """
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise InstallError(
            CHECKSUM_MISMATCH,
            f"{name}: size {size} bytes, the source says {expected.size} bytes (truncated or corrupted)",
        )
    got = file_digests(path, md5=expected.md5 is not None, git_blob=expected.git_blob is not None)
    return check_digests(got, expected, name=name)


def refuse_past_size(written: int, expected: Expected, *, name: str) -> None:
    """Stop a transfer the moment it holds more bytes than the source declared.

    Called before each chunk is written, so a lying server or a bomb never writes past the
    declared size.

    Args:
        written: Bytes the file would hold with the next chunk.
        expected: What the source published (nothing happens when the size is unknown).
        name: The file's name in the source, for the message.

    Raises:
        InstallError: ``SizeMismatch`` naming the file and both figures in bytes.
    """
    if expected.size is not None and written > expected.size:
        raise InstallError(
            SIZE_MISMATCH,
            f"{name}: the source declared {expected.size} bytes but sent more (at least "
            f"{written} bytes); the transfer was stopped and its bytes discarded",
        )


def check_digests(got: Digests, expected: Expected, *, name: str) -> Digests:
    """Compare digests computed while downloading with what the source publishes.

    Args:
        got: Digests of the bytes written.
        expected: What the source published.
        name: The file's name in the source, for messages.

    Returns:
        ``got``.

    Raises:
        InstallError: ``ChecksumMismatch`` naming the file and the digest kind.
    """
    if expected.size is not None and got.size != expected.size:
        raise InstallError(
            CHECKSUM_MISMATCH,
            f"{name}: size {got.size} bytes, the source says {expected.size} bytes (truncated or corrupted)",
        )
    for kind, want, have in (
        ("sha256", expected.sha256, got.sha256),
        ("md5 (S3 ETag)", expected.md5, got.md5),
        ("git blob id", expected.git_blob, got.git_blob),
    ):
        if want is not None and want.lower() != have:
            raise InstallError(
                CHECKSUM_MISMATCH, f"{name}: {kind} is {have}, the source publishes {want.lower()}"
            )
    return got
