"""``hf://org/name[/subfolder]`` through huggingface_hub (honours ``HF_ENDPOINT`` mirrors).

The revision (branch, tag or commit; default ``main``) is resolved to its commit with
``HfApi.model_info(files_metadata=True)``, which on the Hub also gives the file list, sizes,
LFS sha256 and git blob ids at that commit in the same call (servers that leave those out are
asked ``HfApi.list_repo_tree`` at the commit), so everything is known before the first byte is
downloaded. Files are fetched from ``hf_hub_url`` (with ``build_hf_headers``) by
:func:`..download.fetch_resumable` into the staging folder: complete files are skipped on a
re-run and partial ones continued with HTTP Range (huggingface_hub 2.x's own downloader
writes to a process-unique temporary file and cannot continue a killed process's download).
The token is ``HF_TOKEN`` from the environment and never appears in a message.
"""

from __future__ import annotations

import os
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import requests
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, filter_repo_objects, validate_repo_id

from ..deadline import Deadline, with_retries
from ..download import fetch_resumable
from ..errors import INTERNAL_ERROR, INVALID_SOURCE, SOURCE_NOT_FOUND, UNAUTHORIZED, InstallError
from ..pathsafety import inside, safe_relpath
from ..redaction import public_url
from ..verify import Digests, Expected
from .common import Listing, RemoteFile, http_status_of, is_transient

DEFAULT_ENDPOINT = "https://huggingface.co"
DOWNLOAD_WORKERS = 4


class _Entry(NamedTuple):
    """One file of the repository at the resolved commit (from either listing call)."""

    path: str
    size: int | None
    blob_id: str | None
    lfs_sha256: str | None


def _entries_from_siblings(siblings) -> list[_Entry] | None:
    """Files from ``model_info(files_metadata=True)``, or None when metadata is missing."""
    if not siblings:
        return None
    entries = []
    for sib in siblings:
        if sib.size is None or (sib.blob_id is None and sib.lfs is None):
            return None
        entries.append(
            _Entry(sib.rfilename, sib.size, sib.blob_id, sib.lfs.sha256 if sib.lfs else None)
        )
    return entries


def hub_endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` from the environment at call time, else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def map_hub_error(exc: BaseException, where: str) -> InstallError | None:
    """Translate a huggingface_hub error into the install reason, or None if not a Hub error.

    GatedRepoError and HTTP 401/403 become ``Unauthorized``; RepositoryNotFoundError,
    RevisionNotFoundError, EntryNotFoundError and 404 become ``SourceNotFound``.
    """
    has_token = bool(os.environ.get("HF_TOKEN"))
    if isinstance(exc, GatedRepoError):
        hint = "the token in HF_TOKEN has no access" if has_token else "no HF_TOKEN is set"
        return InstallError(UNAUTHORIZED, f"{where} is a gated repository and {hint}")
    if isinstance(exc, RevisionNotFoundError):
        return InstallError(SOURCE_NOT_FOUND, f"{where}: revision not found")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if has_token else " (or it is private and no HF_TOKEN is set)"
        return InstallError(SOURCE_NOT_FOUND, f"{where}: repository not found{hint}")
    if isinstance(exc, EntryNotFoundError):
        return InstallError(SOURCE_NOT_FOUND, f"{where}: file not found in the repository")
    if isinstance(exc, HfHubHTTPError):
        status = http_status_of(exc)
        if status in (401, 403):
            return InstallError(UNAUTHORIZED, f"{where}: HTTP {status} from the Hub")
        if status == 404:
            return InstallError(SOURCE_NOT_FOUND, f"{where}: HTTP 404 from the Hub")
    return None


class HubSource:
    """A Hugging Face Hub model repository (or one folder/file in it).

    Args:
        uri: ``hf://org/name`` or ``hf://org/name/sub/path``.
        revision: Branch, tag or commit; None means ``main``.
        allow_patterns / ignore_patterns: Globs over paths in the repo (huggingface_hub's
            ``filter_repo_objects`` semantics).
    """

    def __init__(
        self,
        uri: str,
        revision: str | None = None,
        allow_patterns: list[str] | None = None,
        ignore_patterns: list[str] | None = None,
    ) -> None:
        rest = uri[len("hf://") :].strip("/")
        parts = rest.split("/")
        if len(parts) < 2 or not all(parts[:2]):
            raise InstallError(INVALID_SOURCE, f"source {uri!r}: expected hf://<org>/<name>")
        self.uri = uri
        self.repo_id = "/".join(parts[:2])
        try:  # before any request: a malformed id is the user's to fix, not an internal error
            validate_repo_id(self.repo_id)
        except HFValidationError as exc:
            raise InstallError(
                INVALID_SOURCE,
                f"source {uri!r} does not name a Hub repository: expected hf://<org>/<name>"
                "[/<folder>] with names of letters, digits, '-', '_' and '.'",
            ) from exc
        self.subpath = safe_relpath("/".join(parts[2:]), where=uri) if len(parts) > 2 else ""
        self.revision = revision or "main"
        self.allow_patterns = allow_patterns or None
        self.ignore_patterns = ignore_patterns or None
        self.endpoint = hub_endpoint()
        self._token = os.environ.get("HF_TOKEN") or False

    def describe(self) -> dict:
        """The source for lorafleet.json (endpoint without user-info, repo_id, revision; no token)."""
        return {
            "uri": public_url(self.uri),
            "repoId": self.repo_id,
            "revision": self.revision,
            "endpoint": public_url(self.endpoint),
            "allowPatterns": self.allow_patterns,
            "ignorePatterns": self.ignore_patterns,
        }

    def _call(self, fn, what: str, deadline: Deadline):
        try:
            return with_retries(fn, is_transient=is_transient, deadline=deadline, what=what)
        except InstallError:
            raise
        except Exception as exc:
            mapped = map_hub_error(exc, f"{self.repo_id}@{self.revision} ({what})")
            if mapped is not None:
                raise mapped from exc
            if is_transient(exc):  # retried until the attempts ran out: name the endpoint
                raise InstallError(
                    INTERNAL_ERROR,
                    f"{public_url(self.endpoint)} did not answer while {what} for {self.repo_id}@"
                    f"{self.revision} (retried): {type(exc).__name__}: {exc}",
                ) from exc
            raise

    def list(self, deadline: Deadline) -> Listing:
        """Resolve the revision to a commit and list files with sizes and digests.

        One ``model_info(files_metadata=True)`` call gives the commit and, on the Hub, every
        file's size, git blob id and LFS sha256 at that commit. When the server leaves any of
        that out (e.g. olah's mirror answers with file names only), the files are listed with
        ``list_repo_tree`` at the resolved commit instead.
        """
        api = HfApi(endpoint=self.endpoint, token=self._token)
        info = self._call(
            lambda: api.model_info(self.repo_id, revision=self.revision, files_metadata=True),
            "resolving revision",
            deadline,
        )
        sha = info.sha
        entries = _entries_from_siblings(info.siblings)
        if entries is None:
            entries = self._call(
                lambda: [
                    _Entry(e.path, e.size, e.blob_id, e.lfs.sha256 if e.lfs else None)
                    for e in api.list_repo_tree(self.repo_id, revision=sha, recursive=True)
                    if isinstance(e, RepoFile)
                ],
                "listing files",
                deadline,
            )
        if self.subpath:
            sub = self.subpath
            chosen = [(e, e.path[len(sub) + 1 :]) for e in entries if e.path.startswith(sub + "/")]
            chosen += [(e, posixpath.basename(e.path)) for e in entries if e.path == sub]
        else:
            chosen = [(e, e.path) for e in entries]
        chosen = list(
            filter_repo_objects(
                chosen,
                allow_patterns=self.allow_patterns,
                ignore_patterns=self.ignore_patterns,
                key=lambda item: item[1],
            )
        )
        if not chosen:
            raise InstallError(
                SOURCE_NOT_FOUND,
                f"{self.repo_id}@{sha}: no files"
                + (f" under {self.subpath!r}" if self.subpath else "")
                + (
                    " match the allow/ignore patterns"
                    if self.allow_patterns or self.ignore_patterns
                    else ""
                ),
            )
        files = []
        for entry, rel in chosen:
            rel = safe_relpath(rel, where=f"hf://{self.repo_id}")
            if entry.lfs_sha256 is not None:
                # an LFS file's git blob id is the pointer file's: only sha256 checks the bytes
                expected = Expected(size=entry.size, sha256=entry.lfs_sha256)
                fingerprint = entry.lfs_sha256
            else:
                expected = Expected(size=entry.size, git_blob=entry.blob_id)
                fingerprint = entry.blob_id
            files.append(
                RemoteFile(path=rel, expected=expected, fingerprint=fingerprint, remote=entry.path)
            )
        return Listing(files=files, resolved_revision=sha)

    def _check_response(self, resp) -> None:
        if resp.status_code in (401, 403):
            gated = resp.headers.get("X-Error-Code") == "GatedRepo"
            kind = "is a gated repository and " if gated else ""
            hint = "the token in HF_TOKEN has no access" if self._token else "no HF_TOKEN is set"
            raise InstallError(
                UNAUTHORIZED,
                f"{self.repo_id} {kind}refused the download (HTTP {resp.status_code}; {hint})",
            )
        if resp.status_code == 404:
            raise InstallError(
                SOURCE_NOT_FOUND, f"{self.repo_id}: {resp.url.split('?')[0]} not found (HTTP 404)"
            )
        resp.raise_for_status()

    def download(self, listing: Listing, dest: Path, deadline: Deadline) -> dict[str, Digests]:
        """Download the listed files at the resolved commit into ``dest`` (resumable).

        URLs come from ``hf_hub_url`` and headers (token, user agent) from
        ``build_hf_headers``; the transfer itself is :func:`fetch_resumable`, because
        huggingface_hub 2.x downloads into a process-unique temporary file and cannot continue
        another process's partial download.

        Returns:
            relative path -> :class:`Digests` computed while downloading.
        """
        sha = listing.resolved_revision
        headers = build_hf_headers(token=self._token, library_name="lorafleet")
        local = threading.local()
        results: dict[str, Digests] = {}

        def fetch(f: RemoteFile) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            target = inside(dest, f.path, where=self.uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            if target.exists() and target.stat().st_size == f.expected.size:
                return  # complete from an earlier run; verified by the caller
            url = hf_hub_url(self.repo_id, f.remote, revision=sha, endpoint=self.endpoint)
            digests = with_retries(
                lambda: fetch_resumable(
                    local.session,
                    url,
                    part,
                    expected=f.expected,
                    deadline=deadline,
                    check_response=self._check_response,
                    headers=headers,
                ),
                is_transient=is_transient,
                deadline=deadline,
                what=f"downloading {f.remote}",
            )
            os.replace(part, target)
            results[f.path] = digests

        workers = min(DOWNLOAD_WORKERS, max(1, len(listing.files)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf-download")
        try:
            for fut in [pool.submit(fetch, f) for f in listing.files]:
                fut.result()
        finally:  # after a failure, files not started yet are not fetched at all
            pool.shutdown(wait=True, cancel_futures=True)
        return results
