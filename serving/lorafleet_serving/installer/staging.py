"""Staging folders, the per-target lock and the atomic promotion to the final path.

Layout (docs/interfaces.md section 1): the install lands in
``ROOT/<namespace>/<basemodels|adapters>/<name>/<revision>/``. Work happens in
``ROOT/.staging/<namespace>/<kind>/<name>/<key>/`` on the same filesystem, where ``key``
identifies the source and options, so a re-run after a crash finds its partial files again.
``<staging>/files/`` becomes the install with one ``rename``; readers never see a
half-written install. An exclusive ``flock`` on ``ROOT/.staging/<namespace>/<kind>/<name>.lock``
serialises concurrent installers of the same target (the second one waits, then finds the
install done).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .deadline import Deadline
from .errors import INSUFFICIENT_SPACE, INTERNAL_ERROR, INVALID_SOURCE, TIMEOUT, InstallError

KIND_DIRS = {"base": "basemodels", "adapter": "adapters"}
STAGING_DIR = ".staging"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_k8s_name(value: str, what: str) -> str:
    """Validate a Kubernetes object name (RFC 1123 subdomain) used as a folder name.

    Raises:
        InstallError: ``InvalidSource`` naming ``what`` and the value.
    """
    if not _NAME.match(value or ""):
        raise InstallError(
            INVALID_SOURCE, f"{what} {value!r} is not a valid Kubernetes name (lowercase RFC 1123)"
        )
    return value


def check_revision_dirname(value: str) -> str:
    """Validate a revision used as a folder name (letters, digits, ``.``, ``_``, ``+``, ``-``).

    Raises:
        InstallError: ``InvalidSource`` for other characters (e.g. ``/``) or ``.``/``..``.
    """
    if not _REVISION.match(value or "") or value in (".", ".."):
        raise InstallError(
            INVALID_SOURCE,
            f"revision {value!r} cannot name a folder (use letters, digits, '.', '_', '+', '-')",
        )
    return value


class Target:
    """Where one install goes and where it is staged.

    Args:
        root: ``--dest`` (the shared volume's mount).
        namespace: Kubernetes namespace of the resource.
        kind: ``"base"`` or ``"adapter"``.
        name: Resource name.
    """

    def __init__(self, root: Path, namespace: str, kind: str, name: str) -> None:
        if kind not in KIND_DIRS:
            raise ValueError(f"kind must be one of {sorted(KIND_DIRS)}, got {kind!r}")
        self.root = Path(root)
        self.namespace = check_k8s_name(namespace, "namespace")
        self.kind = kind
        self.name = check_k8s_name(name, "name")
        self.parent = self.root / self.namespace / KIND_DIRS[kind] / self.name
        self.staging_parent = self.root / STAGING_DIR / self.namespace / KIND_DIRS[kind] / self.name

    def final_path(self, revision: str) -> Path:
        """``ROOT/<ns>/<kind dir>/<name>/<revision>``."""
        return self.parent / check_revision_dirname(revision)

    def staging_path(self, key_parts: dict) -> Path:
        """The staging folder for this source/options (stable across re-runs)."""
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
        return self.staging_parent / key

    @contextmanager
    def lock(self, deadline: Deadline):
        """Hold an exclusive lock on this target (waits for another installer, bounded by ``deadline``)."""
        lock_path = self.staging_parent.with_name(self.name + ".lock")
        try:  # the first write under --dest: a read-only or unusable volume is named here
            self.staging_parent.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise InstallError(
                INSUFFICIENT_SPACE if full else INVALID_SOURCE,
                f"--dest {self.root} is {'full' if full else 'not writable'}: cannot create "
                f"{exc.filename or lock_path}: {exc.strerror or exc}",
            ) from exc
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if deadline.expired():
                        raise InstallError(
                            TIMEOUT,
                            f"another installer of {self.namespace}/{self.name} still holds {lock_path}",
                        ) from exc
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def fsync_tree(path: Path) -> None:
    """fsync every file and folder below ``path`` so a rename publishes durable bytes."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def promote(staged: Path, final: Path) -> None:
    """Atomically move a complete staged folder to its final path.

    Args:
        staged: The complete folder (same filesystem as ``final``).
        final: ``ROOT/<ns>/<kind>/<name>/<revision>``; must not exist yet.

    Raises:
        InstallError: ``InternalError`` if ``final`` exists (the caller checks first).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(staged)
    try:
        os.rename(staged, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise InstallError(INTERNAL_ERROR, f"{final} appeared while installing") from exc
        raise
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree_atomically(path: Path, root_hint: Path | None = None) -> None:
    """Make ``path`` disappear in one rename (into a trash folder beside it), then delete it."""
    trash = path.with_name(f".{path.name}.removing-{os.getpid()}-{int(time.time() * 1000)}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
