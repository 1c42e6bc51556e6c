"""``HOME/state.json``: what ``lorafleet up`` did, for ``lorafleet status`` and the next ``up``.

One record per object (key ``Kind/namespace/name``) with the fields a cluster keeps in
``status``: ``phase`` (Pending, Installing, Installed, Deploying, Ready, Failed), ``reason``,
``message``, ``resolvedRevision``, ``sizeBytes``, ``path``, ``progress``; plus what local mode
needs to reuse an install (``fingerprint`` of spec and local source files, the install report's
``rank``/``labels``/``task``) and the ``servedName``/``baseModel``. Top level: ``endpoint``,
``dashboard``, ``pid`` of the running ``up`` (``None`` once it stopped), ``updatedAt``.

Writes are atomic (temporary file + ``os.replace``), so a reader never sees half a file.
No secret ever goes in here (the installer's report carries none).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
#: Phases, in the order an object goes through them (Kubernetes-style ``status.phase``).
PHASES = ("Pending", "Installing", "Installed", "Deploying", "Ready", "Failed")


class LocalState:
    """The state file of one local-mode home folder.

    Args:
        home: The ``--home`` folder (created when missing).
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.path = self.home / STATE_FILE
        self.data: dict[str, Any] = {"objects": {}, "endpoint": None, "pid": None}
        if self.path.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict) and isinstance(loaded.get("objects"), dict):
                    self.data = loaded

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """Records by ``Kind/namespace/name``."""
        objects: dict[str, dict[str, Any]] = self.data["objects"]
        return objects

    def get(self, key: str) -> dict[str, Any]:
        """The record of ``key`` (an empty one is created when missing)."""
        return self.objects.setdefault(key, {})

    def update(self, key: str, **fields: Any) -> dict[str, Any]:
        """Set fields of one record and save the file.

        Args:
            key: ``Kind/namespace/name``.
            **fields: Values to set; ``None`` removes a field.

        Returns:
            The updated record.

        Raises:
            ValueError: If ``phase`` is not one of :data:`PHASES`.
        """
        phase = fields.get("phase")
        if phase is not None and phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        record = self.get(key)
        for name, value in fields.items():
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        record["updatedAt"] = time.time()
        self.save()
        return record

    def remove(self, key: str) -> None:
        """Forget one object and save the file."""
        self.objects.pop(key, None)
        self.save()

    def set_top(self, **fields: Any) -> None:
        """Set top-level fields (``endpoint``, ``dashboard``, ``pid``, ...) and save."""
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        """Write the file atomically."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.data["updatedAt"] = time.time()
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.home)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


#: The lock file of a home folder: held by the one ``lorafleet up`` that uses it.
LOCK_FILE = "up.lock"


class HomeInUse(RuntimeError):
    """Another ``lorafleet up`` holds the home folder (its pid in the message)."""


class HomeLock:
    """An exclusive ``flock`` on ``HOME/up.lock`` for as long as one ``lorafleet up`` runs.

    Two ``up`` processes on one home would overwrite each other's Ray token, state file and
    installs; the second one is refused instead. The kernel drops the lock when the holder
    exits, however it exits (no stale lock after a SIGKILL).

    Args:
        home: The ``--home`` folder (created when missing).

    Raises:
        HomeInUse: Another process holds the lock.
        OSError: The folder or the lock file cannot be created.
    """

    def __init__(self, home: Path) -> None:
        import fcntl
        import os

        Path(home).mkdir(parents=True, exist_ok=True)
        self._file = (Path(home) / LOCK_FILE).open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise HomeInUse(
                f"home folder {home} is in use by `lorafleet up` (pid {holder}); stop it or "
                "choose another --home"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        """Give the home folder up (closing the file drops the lock)."""
        if not self._file.closed:
            self._file.close()
