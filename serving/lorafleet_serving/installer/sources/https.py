"""``https://`` (and ``http://`` for loopback mirrors): one file or a .tar/.tar.gz/.tgz/.zip.

The download goes to ``<staging>/download/<name>.part`` and resumes with ``Range: bytes=N-``
(a 200 answer to a Range request restarts from zero). The optional ``--sha256`` is checked
before an archive is unpacked. Archives are unpacked by :mod:`..archive` (path-safe members,
total size bounded: ``ArchiveTooLarge``). ``HTTPS_BEARER_TOKEN`` from the environment is sent
as ``Authorization: Bearer``. A pre-signed URL's query string is sent, never recorded.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from ..archive import DEFAULT_MAX_UNPACKED_BYTES, UnpackBudget, archive_kind, unpack_archive
from ..deadline import Deadline, with_retries
from ..download import fetch_resumable
from ..errors import CHECKSUM_MISMATCH, INVALID_SOURCE, SOURCE_NOT_FOUND, UNAUTHORIZED, InstallError
from ..pathsafety import inside, safe_relpath
from ..redaction import public_url
from ..space import writable_bytes
from ..verify import Digests, Expected, check_digests
from .common import Listing, RemoteFile, is_transient


class HttpsSource:
    """A single file or archive at an HTTP(S) URL.

    Args:
        uri: The URL.
        sha256: Optional hex sha256 of the downloaded file (archive or single file).
        max_unpacked_bytes: Largest total an archive may unpack to (bytes); the volume's free
            space bounds it further.
    """

    def __init__(
        self,
        uri: str,
        sha256: str | None = None,
        max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    ) -> None:
        parsed = urlparse(uri)
        if parsed.scheme not in ("https", "http") or not parsed.netloc:
            raise InstallError(INVALID_SOURCE, f"source {uri!r}: expected an https:// URL")
        name = posixpath.basename(unquote(parsed.path))
        if not name:
            raise InstallError(INVALID_SOURCE, f"source {uri!r}: the URL names no file")
        self.uri = uri
        self.max_unpacked_bytes = max_unpacked_bytes
        self.name = safe_relpath(name, where=public_url(uri))
        self.sha256 = sha256.lower() if sha256 else None
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)
        ):
            raise InstallError(INVALID_SOURCE, "--sha256 must be 64 hex digits")
        self.kind = archive_kind(name)
        self._session = requests.Session()
        token = os.environ.get("HTTPS_BEARER_TOKEN")
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def describe(self) -> dict:
        """The source for lorafleet.json (URL without query string or user-info)."""
        return {"uri": public_url(self.uri), "sha256": self.sha256}

    def _raise_for(self, resp: requests.Response) -> None:
        if resp.status_code in (401, 403):
            raise InstallError(UNAUTHORIZED, f"{self.describe()['uri']}: HTTP {resp.status_code}")
        if resp.status_code in (404, 410):
            raise InstallError(
                SOURCE_NOT_FOUND, f"{self.describe()['uri']}: HTTP {resp.status_code}"
            )
        resp.raise_for_status()

    def list(self, deadline: Deadline) -> Listing:
        """HEAD the URL for size and ETag (falls back to unknown size when HEAD is refused)."""

        def head():
            resp = self._session.head(self.uri, allow_redirects=True, timeout=30)
            if resp.status_code in (405, 501):
                return None
            self._raise_for(resp)
            return resp

        resp = with_retries(
            head, is_transient=is_transient, deadline=deadline, what=f"reading {self.name}"
        )
        size = None
        etag = ""
        if resp is not None:
            if resp.headers.get("Content-Length") and "gzip" not in resp.headers.get(
                "Content-Encoding", ""
            ):
                size = int(resp.headers["Content-Length"])
            etag = resp.headers.get("ETag", "") or resp.headers.get("Last-Modified", "")
        fingerprint = self.sha256 or etag or self.uri
        remote = RemoteFile(
            path=self.name,
            expected=Expected(size=size, sha256=self.sha256),
            fingerprint=fingerprint,
            remote=self.uri,
        )
        return Listing(files=[remote], archive=self.kind is not None)

    def download(self, listing: Listing, dest: Path, deadline: Deadline) -> dict[str, Digests]:
        """Download (resuming a ``.part`` file), verify, then place or unpack into ``dest``.

        Returns:
            relative path -> digests computed while downloading (single files only).
        """
        f = listing.files[0]
        work = dest.parent / "download"
        work.mkdir(parents=True, exist_ok=True)
        part = work / (f.path + ".part")
        done = work / f.path
        digests: dict[str, Digests] = {}
        if not done.exists():
            got = with_retries(
                lambda: self._fetch(part, f.expected, deadline),
                is_transient=is_transient,
                deadline=deadline,
                what=f"downloading {self.name}",
            )
            if self.kind is None:
                digests[f.path] = got
            else:  # an archive is verified before it is unpacked; single files by the caller
                try:
                    check_digests(got, f.expected, name=self.name)
                except InstallError as exc:
                    if exc.reason == CHECKSUM_MISMATCH:
                        part.unlink(missing_ok=True)  # never resume from corrupted bytes
                    raise
            os.replace(part, done)
        if self.kind is None:
            target = inside(dest, f.path, where=self.describe()["uri"])
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(done, target)
        else:
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            room = writable_bytes(dest)
            limit = min(self.max_unpacked_bytes, room)
            why = (
                f"--max-unpacked-bytes {self.max_unpacked_bytes}"
                if limit == self.max_unpacked_bytes
                else f"the volume can take {room} more bytes, "
                f"--max-unpacked-bytes is {self.max_unpacked_bytes}"
            )
            where = self.describe()["uri"]
            unpack_archive(done, dest, where=where, budget=UnpackBudget(limit, where, why))
        return digests

    def _fetch(self, part: Path, expected: Expected, deadline: Deadline) -> Digests:
        return fetch_resumable(
            self._session,
            self.uri,
            part,
            expected=expected,
            deadline=deadline,
            check_response=self._raise_for,
        )
