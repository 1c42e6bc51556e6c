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
from .errors import INSUFFICIENT_SPACE, InstallError
from .space import writable_bytes
from .verify import Digests, Expected, refuse_past_size

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
        self._expected = expected
        self.reset()

    def reset(self) -> None:
        """Start every digest over (no bytes hashed)."""
        expected = self._expected
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

    Raises:
        InstallError: ``SizeMismatch`` the moment the file would hold more bytes than
            ``expected.size`` (or the response announces more), the partial file removed;
            ``InsufficientSpace`` when a file of unknown size outgrows the volume's free space.
    """
    name = part.name.removesuffix(".part")
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
    # The bytes kept from an earlier run are hashed on the hashing thread from now on, while
    # the request is made and the rest arrives; the received chunks are hashed after them, in
    # order. A server that ignores the range (200) makes the thread start the digest over.
    with (
        _HashingThread(hashers, part if have else None, have) as hashing,
        session.get(url, headers=req_headers, stream=True, timeout=CONNECT_READ_TIMEOUT_S) as resp,
    ):
        check_response(resp)
        prefix = have
        if have and resp.status_code != 206:  # the server ignored the range: start over
            prefix = 0
            hashing.restart()
        announced = _content_length(resp)
        if announced is not None:  # a response announcing too much is refused before its body
            _refuse_past(prefix + announced, expected, part, name)
        with part.open("ab" if prefix else "wb") as fh:
            fd = fh.fileno()
            # A killed run never fsynced its bytes: start their writeback too. The fsync
            # below covers the whole file, whichever process wrote it.
            start_writeback(fd, 0, prefix)
            started = written = prefix
            room = None if expected.size is not None else prefix + writable_bytes(part.parent)
            for chunk in resp.iter_content(CHUNK_BYTES):
                _refuse_past(written + len(chunk), expected, part, name)
                if room is not None and written + len(chunk) > room:
                    part.unlink(missing_ok=True)
                    raise InstallError(
                        INSUFFICIENT_SPACE,
                        f"{name}: the source declared no size and sent more than the {room} "
                        "bytes the volume can still take; the download was stopped and removed",
                    )
                fh.write(chunk)
                hashing.feed(chunk)
                written += len(chunk)
                if written - started >= WRITEBACK_BYTES:
                    fh.flush()
                    start_writeback(fd, started, written - started)
                    started = written
                if deadline.expired():
                    deadline.check(f"downloading {part.name}")
            fh.flush()
            os.fsync(fd)
    return hashers.digests()


def _content_length(resp) -> int | None:
    """The body size a response announces (bytes written to disk), or None when unknown.

    A ``Content-Encoding`` makes ``Content-Length`` the encoded size, not what is written.
    """
    headers = getattr(resp, "headers", None) or {}
    value = headers.get("Content-Length")
    if value is None or headers.get("Content-Encoding", "identity") != "identity":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _refuse_past(written: int, expected: Expected, part: Path, name: str) -> None:
    """:func:`refuse_past_size`, removing the partial file first when it refuses."""
    try:
        refuse_past_size(written, expected, name=name)
    except InstallError:
        part.unlink(missing_ok=True)  # never resumed from: the server is not to be trusted
        raise


def _hash_prefix(
    hashers: _Hashers, path: Path, nbytes: int, stop: threading.Event | None = None
) -> None:
    """Hash the first ``nbytes`` of ``path`` (the part kept from an earlier run).

    Args:
        hashers: Digest state to update.
        path: The partial file.
        nbytes: Bytes to hash from the start of ``path``.
        stop: When set, hashing stops early (the digest is then discarded by the caller).
    """
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        left = nbytes
        while left > 0 and not (stop is not None and stop.is_set()):
            got = fh.readinto(view[: min(CHUNK_BYTES, left)])
            if not got:
                break
            hashers.update(view[:got])
            left -= got


class _HashingThread:
    """Hashes chunks on a second thread while the first keeps receiving and writing.

    hashlib releases the GIL on large buffers, so hashing overlaps the network and disk work.
    The prefix (bytes kept from an earlier run) is hashed first, then the fed chunks in the
    order they were fed.

    Args:
        hashers: Digest state, updated only by this thread until the context exits.
        prefix_file: Partial file whose first ``prefix_bytes`` come before the fed chunks.
        prefix_bytes: Bytes of ``prefix_file`` to hash first.
    """

    _RESTART = object()

    def __init__(
        self, hashers: _Hashers, prefix_file: Path | None = None, prefix_bytes: int = 0
    ) -> None:
        self._hashers = hashers
        self._prefix = (prefix_file, prefix_bytes)
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="hash", daemon=True)
        self._error: BaseException | None = None
        self._stop = threading.Event()

    def _run(self) -> None:
        try:
            if self._prefix[0] is not None:
                _hash_prefix(self._hashers, *self._prefix, stop=self._stop)
        except BaseException as exc:
            self._error = exc
        while (chunk := self._queue.get()) is not None:
            try:
                if chunk is self._RESTART:
                    self._hashers.reset()
                    self._error = None  # a failed prefix read no longer matters
                else:
                    self._hashers.update(chunk)
            except BaseException as exc:  # pragma: no cover - hashlib does not fail
                self._error = exc

    def feed(self, chunk: bytes) -> None:
        """Hash ``chunk`` after everything fed before it."""
        self._queue.put(chunk)

    def restart(self) -> None:
        """Drop the prefix: the digest covers only the chunks fed from now on."""
        self._stop.set()
        self._queue.put(self._RESTART)

    def __enter__(self) -> _HashingThread:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self._stop.set()  # failing anyway: do not finish hashing a long prefix
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error
