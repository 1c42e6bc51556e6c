"""``file:///path`` and ``pvc://claim/path``: files already on a mounted volume.

Files are copied into the staging folder (hashing while copying), never moved, linked or
modified: a hard link would let a later in-place change of the source alter the install. ``pvc://claim/path`` resolves to
``$LORAFLEET_PVC_ROOT/claim/path`` (default root ``/mnt/pvc``: install Jobs mount a source
claim there read-only). Symbolic links inside a source folder are refused (they could point
anywhere).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..deadline import Deadline
from ..errors import INVALID_SOURCE, SOURCE_NOT_FOUND, UNAUTHORIZED, InstallError
from ..pathsafety import inside, safe_relpath
from ..redaction import public_url
from ..verify import Digests, Expected, file_digests, in_parallel, refuse_past_size
from .common import Listing, RemoteFile

DEFAULT_PVC_ROOT = "/mnt/pvc"
COPY_CHUNK_BYTES = 8 << 20


def local_path_of(uri: str) -> Path:
    """Map a ``file://`` or ``pvc://`` URI to a local path.

    Raises:
        InstallError: ``InvalidSource`` for other schemes or a pvc URI without a claim.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InstallError(
                INVALID_SOURCE, f"source {uri!r}: file:// URIs must be local (file:///path)"
            )
        return Path(unquote(parsed.path))
    if parsed.scheme == "pvc":
        claim = parsed.netloc
        if not claim:
            raise InstallError(INVALID_SOURCE, f"source {uri!r}: expected pvc://<claim>/<path>")
        rel = unquote(parsed.path).strip("/")
        root = Path(os.environ.get("LORAFLEET_PVC_ROOT", DEFAULT_PVC_ROOT)) / claim
        return root / safe_relpath(rel, where=uri) if rel else root
    raise InstallError(INVALID_SOURCE, f"source {uri!r}: not a file:// or pvc:// URI")


class LocalSource:
    """A local file or folder.

    Args:
        uri: ``file:///abs/path`` or ``pvc://claim/path``.
        allow_patterns / ignore_patterns: Globs over paths relative to the folder.
    """

    def __init__(self, uri: str, allow_patterns=None, ignore_patterns=None) -> None:
        self.uri = uri
        self.path = local_path_of(uri)
        self.allow_patterns = allow_patterns or None
        self.ignore_patterns = ignore_patterns or None

    def describe(self) -> dict:
        """The source for lorafleet.json."""
        return {"uri": public_url(self.uri), "path": str(self.path)}

    def list(self, deadline: Deadline) -> Listing:
        """List the files with sizes and sha256 (the sha256 also names the revision)."""
        from huggingface_hub.utils import filter_repo_objects

        if not self.path.exists():
            raise InstallError(SOURCE_NOT_FOUND, f"{self.uri}: {self.path} does not exist")
        if self.path.is_file():
            items = [(self.path.name, self.path)]
        else:
            items = []

            def unreadable(exc: OSError) -> None:
                # os.walk skips what it cannot read; a folder the installer's user may not
                # read must not look empty ("no files") or smaller than it is.
                raise InstallError(
                    UNAUTHORIZED,
                    f"{self.uri}: cannot read {exc.filename}: {exc.strerror} (the installer"
                    f" runs as uid {os.getuid()}, gid {os.getgid()}: make the files readable"
                    " by it)",
                )

            for dirpath, dirs, names in os.walk(self.path, onerror=unreadable):
                for name in sorted(dirs + names):
                    full = Path(dirpath) / name
                    if full.is_symlink():
                        raise InstallError(
                            INVALID_SOURCE,
                            f"{self.uri}: {str(full)!r} is a symbolic link; links are refused",
                        )
                for name in names:
                    full = Path(dirpath) / name
                    items.append((full.relative_to(self.path).as_posix(), full))
        items = list(
            filter_repo_objects(
                items,
                allow_patterns=self.allow_patterns,
                ignore_patterns=self.ignore_patterns,
                key=lambda x: x[0],
            )
        )
        if not items:
            raise InstallError(SOURCE_NOT_FOUND, f"{self.uri}: no files")

        def listed(item: tuple[str, Path]) -> RemoteFile:
            rel, full = item
            deadline.check(f"reading {full}")
            digests = file_digests(full)
            return RemoteFile(
                path=safe_relpath(rel, where=self.uri),
                expected=Expected(size=digests.size, sha256=digests.sha256),
                fingerprint=digests.sha256,
                remote=str(full),
            )

        return Listing(files=in_parallel(listed, sorted(items)))  # several files hashed at once

    def download(self, listing: Listing, dest: Path, deadline: Deadline) -> dict[str, Digests]:
        """Copy each file into ``dest`` (via ``<name>.part`` + rename), hashing while copying.

        Returns:
            relative path -> :class:`Digests` of the copied bytes.
        """
        results: dict[str, Digests] = {}
        for f in listing.files:
            deadline.check(f"copying {f.remote}")
            target = inside(dest, f.path, where=self.uri)
            if target.exists() and target.stat().st_size == f.expected.size:
                continue  # copied by an earlier run; verified by the caller
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            digest = hashlib.sha256()
            size = 0
            with open(f.remote, "rb") as src, part.open("wb") as out:
                while chunk := src.read(COPY_CHUNK_BYTES):
                    size += len(chunk)
                    refuse_past_size(size, f.expected, name=str(f.remote))  # grew since listed
                    out.write(chunk)
                    digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, target)
            results[f.path] = Digests(size=size, sha256=digest.hexdigest())
        return results
