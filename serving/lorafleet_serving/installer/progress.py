"""Download progress: bytes done / total on stderr and in an optional JSON progress file.

On a terminal stderr shows a rich progress bar; otherwise one plain line every few seconds
(log collectors cannot render bars). The progress file holds ``{"bytesDone": int,
"bytesTotal": int | null, "updatedAt": float}`` (docs/interfaces.md section 2) and is
rewritten atomically (write + rename) at least every 2 s while a download runs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

PROGRESS_FILE_INTERVAL_S = 1.0
PLAIN_LINE_INTERVAL_S = 5.0


def folder_bytes(path: Path) -> int:
    """Sum of the sizes (bytes) of the regular files below ``path`` (0 if it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def write_progress_file(path: Path, done: int, total: int | None) -> None:
    """Atomically write the progress JSON to ``path``.

    Args:
        path: Target file (its folder is created when missing).
        done: Bytes downloaded so far.
        total: Bytes expected in all, or None when the source does not say.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"bytesDone": done, "bytesTotal": total, "updatedAt": time.time()}))
    os.replace(tmp, path)


class ProgressReporter:
    """Polls a byte counter in a background thread and reports it.

    The counter is a callable (typically :func:`folder_bytes` over the staging folder), so
    the same reporter serves every source, including libraries that download by themselves.

    Args:
        measure: Returns the bytes done so far.
        total: Bytes expected, or None if unknown.
        progress_file: Where to write the JSON progress, or None.
        stream: Where human-readable progress goes (default stderr).
        label: Shown before the numbers (e.g. ``ml/minilm``).
    """

    def __init__(
        self,
        measure: Callable[[], int],
        total: int | None,
        progress_file: Path | None = None,
        stream: TextIO | None = None,
        label: str = "download",
    ) -> None:
        self._measure = measure
        self.total = total
        self._file = progress_file
        self._stream = stream if stream is not None else sys.stderr
        self._label = label
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._task = None
        self.done = 0

    def __enter__(self) -> ProgressReporter:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start reporting (writes a first progress file at once)."""
        isatty = getattr(self._stream, "isatty", lambda: False)()
        if isatty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                "[bold]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=self.total)
        self._tick(force_line=True)
        self._thread = threading.Thread(target=self._run, name="install-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, write the final figures and close the bar."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._tick(force_line=True)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _run(self) -> None:
        last_line = time.monotonic()
        while not self._stop.wait(PROGRESS_FILE_INTERVAL_S):
            now = time.monotonic()
            force = now - last_line >= PLAIN_LINE_INTERVAL_S
            if force:
                last_line = now
            self._tick(force_line=force)

    def _tick(self, force_line: bool) -> None:
        try:
            self.done = self._measure()
        except OSError:
            return
        if self.total is not None:
            self.done = min(self.done, self.total)
        if self._file is not None:
            try:
                write_progress_file(self._file, self.done, self.total)
            except OSError as exc:  # a progress file must never fail an install
                print(f"lorafleet-install: cannot write progress file: {exc}", file=self._stream)
                self._file = None
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif force_line:
            total = "?" if self.total is None else str(self.total)
            pct = "" if not self.total else f" ({100.0 * self.done / self.total:.1f}%)"
            print(f"{self._label}: {self.done}/{total} bytes{pct}", file=self._stream, flush=True)
