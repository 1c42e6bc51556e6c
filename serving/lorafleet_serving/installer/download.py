"""Resumable HTTP downloads that hash while they write.

A file is fetched into ``<name>.part``; a re-run continues it with ``Range: bytes=N-``
(RFC 9110 section 14) after re-hashing the bytes already there, and starts over when the
server answers a range request with 200. sha256 (and md5 / the git blob id when the source
publishes those) are computed in the same pass, so verification needs no second read.

Durability: the kernel is asked to start writing the received bytes back to disk every
:data:`WRITEBACK_BYTES` (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which only starts
I/O and never waits for it), so the disk works while the rest arrives and the final
``fsync`` - still done before the file is renamed or promoted - only waits for the tail.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import requests

from .deadline import Deadline
from .verify import Digests, Expected

CHUNK_BYTES = 1 << 20
CONNECT_READ_TIMEOUT_S = (15, 60)
WRITEBACK_BYTES = 16 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def _load_sync_file_range():
    """libc ``sync_file_range`` (Linux), or None where it does not exist."""
    if os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` of ``fd`` to disk (no wait).

    Only an early start for the ``fsync`` that follows; it gives no durability by itself, and
    errors (e.g. a filesystem without support) are ignored, since the ``fsync`` reports them.

    Args:
        fd: Open file descriptor.
        offset: Start of the range, bytes.
        nbytes: Length of the range, bytes.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


class _Hashers:
    def __init__(self, expected: Expected) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if expected.md5 else None
        self.git = None
        if expected.git_blob and expected.size is not None:
            self.git = hashlib.sha1(f"blob {expected.size}\0".encode(), usedforsecurity=False)

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.sha256.update(chunk)
        if self.md5 is not None:
            self.md5.update(chunk)
        if self.git is not None:
            self.git.update(chunk)

    def digests(self) -> Digests:
        return Digests(
            size=self.size,
            sha256=self.sha256.hexdigest(),
            md5=self.md5.hexdigest() if self.md5 else None,
            git_blob=self.git.hexdigest() if self.git else None,
        )


def fetch_resumable(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    expected: Expected,
    deadline: Deadline,
    check_response: Callable[[requests.Response], None],
    headers: dict[str, str] | None = None,
) -> Digests:
    """Download ``url`` into ``part`` (appending to what is there) and return its digests.

    Args:
        session: HTTP session (auth headers already set, or passed in ``headers``).
        url: What to GET (redirects are followed; requests drops ``Authorization`` when a
            redirect leaves the host).
        part: Partial file; created or continued.
        expected: Size and digests the source publishes (selects which hashes to compute).
        deadline: Checked after every chunk.
        check_response: Raises for error statuses (maps 401/403/404 to install reasons).
        headers: Extra request headers.

    Returns:
        :class:`Digests` of the complete ``part`` file.
    """
    hashers = _Hashers(expected)
    have = part.stat().st_size if part.exists() else 0
    if expected.size is not None and have > expected.size:
        part.unlink()
        have = 0
    if expected.size is not None and have == expected.size:
        _hash_prefix(hashers, part, have)
        return hashers.digests()
    req_headers = dict(headers or {})
    if have:
        req_headers["Range"] = f"bytes={have}-"
    with session.get(url, headers=req_headers, stream=True, timeout=CONNECT_READ_TIMEOUT_S) as resp:
        check_response(resp)
        prefix = have
        if have and resp.status_code != 206:  # the server ignored the range: start over
            prefix = 0
        mode = "ab" if prefix else "wb"
        # the bytes already on disk are hashed on the hashing thread while the rest arrives
        with (
            _HashingThread(hashers, part if prefix else None, prefix) as hashing,
            part.open(mode) as fh,
        ):
            fd = fh.fileno()
            synced = written = prefix  # the kept prefix was fsynced by the run that wrote it
            for chunk in resp.iter_content(CHUNK_BYTES):
                fh.write(chunk)
                hashing.feed(chunk)
                written += len(chunk)
                if written - synced >= WRITEBACK_BYTES:
                    fh.flush()
                    start_writeback(fd, synced, written - synced)
                    synced = written
                if deadline.expired():
                    deadline.check(f"downloading {part.name}")
            fh.flush()
            os.fsync(fh.fileno())
    return hashers.digests()


def _hash_prefix(hashers: _Hashers, path: Path, nbytes: int) -> None:
    """Hash the first ``nbytes`` of ``path`` (the part kept from an earlier run)."""
    with path.open("rb") as fh:
        left = nbytes
        while left > 0 and (chunk := fh.read(min(8 * CHUNK_BYTES, left))):
            hashers.update(chunk)
            left -= len(chunk)


class _HashingThread:
    """Hashes chunks on a second thread while the first keeps receiving and writing.

    hashlib releases the GIL on large buffers, so hashing overlaps the network and disk work.
    """

    def __init__(
        self, hashers: _Hashers, prefix_file: Path | None = None, prefix_bytes: int = 0
    ) -> None:
        self._hashers = hashers
        self._prefix = (prefix_file, prefix_bytes)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="hash", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            if self._prefix[0] is not None:
                _hash_prefix(self._hashers, *self._prefix)
        except BaseException as exc:
            self._error = exc
        while (chunk := self._queue.get()) is not None:
            try:
                self._hashers.update(chunk)
            except BaseException as exc:  # pragma: no cover - hashlib does not fail
                self._error = exc

    def feed(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def __enter__(self) -> _HashingThread:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
