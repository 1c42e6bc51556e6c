"""What every source shares: the file listing, transient-error test and the content digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..deadline import Deadline
from ..verify import Expected

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class RemoteFile:
    """One file a source will deliver.

    Attributes:
        path: Relative POSIX path inside the install (already checked by ``safe_relpath``).
        expected: Size/digests the source publishes for it.
        fingerprint: The strongest identity known before downloading (sha256, ETag, blob
            id); it feeds the content digest that names a revision when no commit exists.
        remote: Source-specific handle (object key, URL, local path, path in repo).
    """

    path: str
    expected: Expected
    fingerprint: str
    remote: str


@dataclass
class Listing:
    """A source's file list at one resolved revision.

    Attributes:
        files: Files to install.
        resolved_revision: The commit for hf sources; None for sources without commits.
        total_bytes: Sum of sizes when every size is known, else None.
        archive: True when the single downloaded file is unpacked after verification.
    """

    files: list[RemoteFile]
    resolved_revision: str | None = None
    archive: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int | None:
        """Sum of the files' sizes in bytes, or None when any size is unknown."""
        sizes = [f.expected.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)


def content_digest(files: list[RemoteFile]) -> str:
    """Name for a revision of a source without commits (S3, https, local files).

    Defined as ``"sha256-" + hex[:16]`` of the sha256 over the sorted lines
    ``"<path>\\t<size>\\t<fingerprint>\\n"`` (fingerprint: S3 ETag, https sha256/ETag,
    local sha256). The same bytes at the same names give the same directory name.

    Args:
        files: The listing's files.

    Returns:
        e.g. ``sha256-3f9a0c2b7d41e865``.
    """
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\t{f.expected.size}\t{f.fingerprint}\n".encode())
    return "sha256-" + h.hexdigest()[:16]


def http_status_of(exc: BaseException) -> int | None:
    """Return the HTTP status carried by a requests/httpx/huggingface_hub/botocore error."""
    response = getattr(exc, "response", None)
    if response is not None:
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        if isinstance(response, dict):  # botocore ClientError
            meta = response.get("ResponseMetadata", {})
            code = meta.get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection failures, timeouts, 408/429/5xx."""
    status = http_status_of(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(exc).__mro__}
    transient_names = {
        "ConnectionError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "ReadTimeoutError",
        "ReadError",
        "RemoteProtocolError",
        "TimeoutException",
        "Timeout",
        "ChunkedEncodingError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "IncompleteReadError",
        "ResponseStreamingError",
    }
    return bool(names & transient_names)


class Source(Protocol):
    """A place files come from (hf, s3, https, local)."""

    uri: str

    def list(self, deadline: Deadline) -> Listing:
        """Resolve the revision and list the files with their published sizes/digests."""

    def download(self, listing: Listing, dest: Path, deadline: Deadline) -> None:
        """Put every listed file under ``dest``; resume partial files where possible."""

    def describe(self) -> dict:
        """The source as recorded in lorafleet.json (no secrets)."""
