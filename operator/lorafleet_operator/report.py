"""Read the installer's JSON report (docs/interfaces.md section 2) and its progress.

The operator sees the report as the termination message of the install Job's container: the
last line of ``/dev/termination-log`` (at most 4096 bytes), or, with
``terminationMessagePolicy: FallbackToLogsOnError``, the tail of the container's log when the
installer crashed before writing one. :func:`parse_report` turns either into an
:class:`InstallReport`, never raising: a message that holds no report becomes a failed report
with reason ``InternalError`` whose message quotes the (truncated) text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet_operator.models import BASEMODEL_KIND

#: How much of a non-JSON termination message is quoted in a condition message (characters).
QUOTE_CHARS = 400
#: The installer's plain progress line (docs/interfaces.md section 2), at the end of a log line.
PROGRESS_LINE = re.compile(r": (?P<done>\d+)/(?P<total>\d+|\?) bytes(?: \([0-9.]+%\))?$")


class InstallReport(BaseModel):
    """The installer's report (the fields the operator uses; others are kept as extra).

    Attributes mirror docs/interfaces.md section 2 (camelCase on the wire).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    ok: bool
    reason: str = "InternalError"
    message: str = ""
    kind: str | None = None
    resolved_revision: str | None = Field(default=None, alias="resolvedRevision")
    size_bytes: int | None = Field(default=None, alias="sizeBytes")
    path: str | None = None
    task: str | None = None
    num_labels: int | None = Field(default=None, alias="numLabels")
    architecture: str | None = None
    rank: int | None = None
    lora_alpha: float | None = Field(default=None, alias="loraAlpha")
    target_modules: list[str] | None = Field(default=None, alias="targetModules")
    modules_to_save: list[str] | None = Field(default=None, alias="modulesToSave")
    labels: dict[str, str] | None = None


def parse_report(message: str | None) -> InstallReport | None:
    """Parse a termination message into the install report.

    Args:
        message: The container's ``state.terminated.message`` (may be empty or a log tail).

    Returns:
        The report from the last line that is a JSON object with an ``ok`` key; a failed
        ``InternalError`` report quoting the text when no line is one; ``None`` when the
        message is empty.
    """
    if not message or not message.strip():
        return None
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            data: Any = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "ok" in data:
            try:
                return InstallReport.model_validate(data)
            except ValidationError as exc:
                return InstallReport(
                    ok=False,
                    reason="InternalError",
                    message=f"install report is malformed: {exc.errors()[0]['msg']}",
                )
    tail = message.strip()[-QUOTE_CHARS:]
    return InstallReport(
        ok=False,
        reason="InternalError",
        message=f"installer ended without a report; output ends with: {tail}",
    )


def format_progress(progress: dict[str, Any] | None) -> str | None:
    """Render the installer's progress file content as a short status string.

    Args:
        progress: ``{"bytesDone": int, "bytesTotal": int | None, "updatedAt": float}``.

    Returns:
        ``"42%"`` when the total is known, ``"1.5 GiB"`` (bytes done) otherwise, ``None`` when
        ``progress`` is empty or malformed.
    """
    if not isinstance(progress, dict):
        return None
    done = progress.get("bytesDone")
    total = progress.get("bytesTotal")
    if not isinstance(done, int) or done < 0:
        return None
    if isinstance(total, int) and total > 0:
        return f"{min(100, int(done * 100 / total))}%"
    size = float(done)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return None


def progress_from_log(text: str) -> dict[str, Any] | None:
    """The progress of the last progress line in an install container's log tail.

    Args:
        text: Log text (a few trailing lines; stderr and stdout interleaved).

    Returns:
        ``{"bytesDone": int, "bytesTotal": int | None}`` (what :func:`format_progress` takes),
        or None when no line matches docs/interfaces.md's progress line.
    """
    for line in reversed(text.splitlines()):
        match = PROGRESS_LINE.search(line.rstrip())
        if match:
            total = match["total"]
            return {
                "bytesDone": int(match["done"]),
                "bytesTotal": None if total == "?" else int(total),
            }
    return None


def pod_path(
    report_path: str | None, mount: str, namespace: str, kind: str, name: str
) -> str | None:
    """The install folder as pods see it (under the volume mount).

    The installer reports the folder as it saw it; where the volume is mounted elsewhere (local
    runs), the part from ``/<namespace>/<basemodels|adapters>/<name>/`` on is re-rooted at the
    mount, following the install layout of docs/interfaces.md.

    Args:
        report_path: ``path`` from the install report.
        mount: The volume mount path of Jobs and Ray pods.
        namespace: The object's namespace.
        kind: ``BaseModel`` or ``LoraAdapter``.
        name: The object's name.

    Returns:
        The path under ``mount``, or ``report_path`` unchanged when it does not follow the layout.
    """
    if not report_path:
        return report_path
    mount = mount.rstrip("/")
    if report_path.startswith(mount + "/"):
        return report_path
    plural = "basemodels" if kind == BASEMODEL_KIND else "adapters"
    marker = f"/{namespace}/{plural}/{name}/"
    index = report_path.find(marker)
    if index < 0:
        return report_path
    return mount + report_path[index:].rstrip("/")
