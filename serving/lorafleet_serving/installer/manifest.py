"""The install report (one compact JSON line) and the ``lorafleet.json`` manifest.

The report line is what an install Job leaves in its termination message: Kubernetes caps
that at 4096 bytes, so the line is kept under :data:`MAX_REPORT_BYTES` by shortening the
message (on a character boundary) and, if still needed, dropping the bulky optional fields
(``labels``, ``targetModules``, ``modulesToSave``); the full findings live in
``lorafleet.json`` beside the files (docs/interfaces.md section 2).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .redaction import public_url

MANIFEST_NAME = "lorafleet.json"
MAX_REPORT_BYTES = 4000
REPORT_KEYS = (
    "ok",
    "reason",
    "message",
    "kind",
    "resolvedRevision",
    "sizeBytes",
    "path",
    "task",
    "numLabels",
    "architecture",
    "rank",
    "loraAlpha",
    "targetModules",
    "modulesToSave",
    "labels",
    "baseMatches",
)
DROPPABLE = ("labels", "modulesToSave", "targetModules")


def report_line(report: dict, limit: int = MAX_REPORT_BYTES) -> str:
    """Serialise the report as one JSON line of at most ``limit`` bytes (UTF-8).

    Args:
        report: Report dict (keys of :data:`REPORT_KEYS`; None values are omitted).
        limit: Byte budget for the line (without the newline).

    Returns:
        The JSON text; ``"truncated": true`` is added when anything was shortened.
    """
    compact = {k: report[k] for k in REPORT_KEYS if report.get(k) is not None}

    def dump(d: dict) -> str:
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    line = dump(compact)
    if len(line.encode()) <= limit:
        return line
    compact["truncated"] = True
    for key in DROPPABLE:
        if len(dump(compact).encode()) <= limit:
            break
        compact.pop(key, None)
    msg = compact.get("message", "")
    while len(dump(compact).encode()) > limit and msg:
        over = len(dump(compact).encode()) - limit
        msg = msg[: max(0, len(msg) - max(over, 16) - 1)]
        compact["message"] = msg + "…"
    return dump(compact)


def write_report(line: str, report_file: str | None) -> None:
    """Append ``line`` to ``report_file`` (last line = the report) and print it on stdout.

    Args:
        line: From :func:`report_line`.
        report_file: Path (e.g. ``/dev/termination-log``) or None for stdout only.
    """
    print(line, flush=True)
    if report_file:
        with open(report_file, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``folder/lorafleet.json`` (pretty JSON, written then renamed)."""
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, folder / MANIFEST_NAME)


def read_manifest(folder: Path) -> dict | None:
    """Return a complete install's manifest, or None if absent/unreadable."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("report", {}).get("ok") else None


def recorded_uri(uri: str | None) -> str | None:
    """A URI as lorafleet.json records it (no user-info, no query string)."""
    return public_url(uri) if uri else None


def now_rfc3339() -> str:
    """Current UTC time as RFC 3339 (Kubernetes timestamps)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
