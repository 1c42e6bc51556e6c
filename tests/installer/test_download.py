"""fetch_resumable: digests over a kept prefix + the rest, a server that ignores Range, errors.

The HTTP side is a stand-in session object (no server), so these are fast unit tests of the
hashing order: the prefix hashed from disk on the hashing thread must come before the
streamed chunks, and a 200 answer to a range request must start the digests over.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from lorafleet_serving.installer.deadline import Deadline
from lorafleet_serving.installer.download import fetch_resumable
from lorafleet_serving.installer.errors import SIZE_MISMATCH, UNAUTHORIZED, InstallError
from lorafleet_serving.installer.verify import Expected

DATA = os.urandom(3 * (1 << 20) + 12345)  # several chunks and a ragged tail


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


class _Response:
    def __init__(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.status_code = status
        self._body = body
        self.headers = headers or {}

    def iter_content(self, size: int):
        for i in range(0, len(self._body), 100_000):  # chunks smaller than asked, as sockets do
            yield self._body[i : i + 100_000]


class _Session:
    """Serves ``DATA``; honours ``Range: bytes=N-`` with 206 unless ``ignore_range``."""

    def __init__(
        self, *, ignore_range: bool = False, status: int | None = None, announce: bool = False
    ) -> None:
        self.ignore_range = ignore_range
        self.status = status
        self.announce = announce  # send Content-Length
        self.ranges: list[str | None] = []

    @contextmanager
    def get(self, url, headers=None, stream=True, timeout=None):
        rng = (headers or {}).get("Range")
        self.ranges.append(rng)
        if self.status is not None:
            yield _Response(self.status, b"")
        elif self.announce:
            yield _Response(200, DATA, {"Content-Length": str(len(DATA))})
        elif rng and not self.ignore_range:
            yield _Response(206, DATA[int(rng.removeprefix("bytes=").rstrip("-")) :])
        else:
            yield _Response(200, DATA)


def _check(resp) -> None:
    if resp.status_code == 401:
        raise InstallError(UNAUTHORIZED, "refused")


def _fetch(session: _Session, part: Path, expected: Expected):
    return fetch_resumable(
        session,
        "http://127.0.0.1:9/x",
        part,
        expected=expected,
        deadline=Deadline(None),
        check_response=_check,
    )


@pytest.mark.parametrize("kept", [0, 1, (1 << 20) + 7, len(DATA) - 1])
def test_resume_hashes_prefix_then_rest(tmp_path: Path, kept: int) -> None:
    part = tmp_path / "f.part"
    if kept:
        part.write_bytes(DATA[:kept])
    session = _Session()
    expected = Expected(size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
    got = _fetch(session, part, expected)
    assert session.ranges == [f"bytes={kept}-" if kept else None]
    assert part.read_bytes() == DATA
    assert got.size == len(DATA)
    assert got.sha256 == hashlib.sha256(DATA).hexdigest()
    assert got.git_blob is None  # only asked-for digests are computed


def test_resume_git_blob_and_md5_over_prefix(tmp_path: Path) -> None:
    part = tmp_path / "f.part"
    part.write_bytes(DATA[:12345])
    expected = Expected(size=len(DATA), git_blob=git_blob_id(DATA), md5="x" * 32)
    got = _fetch(_Session(), part, expected)
    assert got.git_blob == git_blob_id(DATA)
    assert got.md5 == hashlib.md5(DATA, usedforsecurity=False).hexdigest()


def test_range_ignored_starts_digest_over(tmp_path: Path) -> None:
    """A kept prefix that is garbage and a server answering 200: file and digest are DATA's."""
    part = tmp_path / "f.part"
    part.write_bytes(b"\xff" * (2 << 20))  # long enough to still be hashing when 200 arrives
    session = _Session(ignore_range=True)
    got = _fetch(session, part, Expected(size=len(DATA)))
    assert session.ranges == [f"bytes={2 << 20}-"]
    assert part.read_bytes() == DATA
    assert (got.size, got.sha256) == (len(DATA), hashlib.sha256(DATA).hexdigest())


def test_corrupted_prefix_gives_other_digest(tmp_path: Path) -> None:
    """The kept prefix is really hashed from disk: a flipped byte in it changes the digest."""
    part = tmp_path / "f.part"
    bad = bytearray(DATA[: 1 << 20])
    bad[1000] ^= 1
    part.write_bytes(bytes(bad))
    got = _fetch(_Session(), part, Expected(size=len(DATA)))
    assert got.size == len(DATA)
    assert got.sha256 != hashlib.sha256(DATA).hexdigest()


def test_error_response_with_prefix_raises_and_keeps_part(tmp_path: Path) -> None:
    part = tmp_path / "f.part"
    part.write_bytes(DATA[:5000])
    with pytest.raises(InstallError) as err:
        _fetch(_Session(status=401), part, Expected(size=len(DATA)))
    assert err.value.reason == UNAUTHORIZED
    assert part.read_bytes() == DATA[:5000]


@pytest.mark.parametrize("announce", [False, True])
def test_more_bytes_than_declared_stop_at_once(tmp_path: Path, announce: bool) -> None:
    """A source that declared 150 000 bytes and sends 3 MB: nothing past the size is written."""
    part = tmp_path / "f.part"
    written = []

    class _Watched(_Session):
        @contextmanager
        def get(self, url, headers=None, stream=True, timeout=None):
            with super().get(url, headers, stream, timeout) as resp:
                chunks = resp.iter_content

                def watched(size):
                    for chunk in chunks(size):
                        written.append(part.stat().st_size if part.exists() else 0)
                        yield chunk

                resp.iter_content = watched
                yield resp

    with pytest.raises(InstallError) as err:
        _fetch(_Watched(announce=announce), part, Expected(size=150_000))
    assert err.value.reason == SIZE_MISMATCH
    assert "f: the source declared 150000 bytes but sent more" in err.value.message
    assert not part.exists()  # never resumed from
    assert max(written, default=0) <= 150_000
    assert len(written) == (0 if announce else 2)  # a Content-Length too big: no body read
