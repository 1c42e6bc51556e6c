"""Status conditions (Kubernetes API conventions) and status diffs, as plain dict helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

#: Condition types used by lorafleet.
INSTALLED = "Installed"
SERVING = "Serving"
READY = "Ready"
DEGRADED = "Degraded"
DELETING = "Deleting"


def now_rfc3339() -> str:
    """Current UTC time as RFC 3339 with second precision (``2026-01-02T03:04:05Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    ctype: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with one condition set (others kept, order stable).

    ``lastTransitionTime`` changes only when the condition's status changes.

    Args:
        conditions: The current list (``status.conditions``), may be ``None``.
        ctype: Condition type, e.g. ``Installed``.
        status: ``True``/``False`` or ``"True"``/``"False"``/``"Unknown"``.
        reason: CamelCase reason.
        message: Human-readable message (truncated to 4000 characters).
        generation: ``metadata.generation`` observed.

    Returns:
        The new list of condition dicts.
    """
    value = status if isinstance(status, str) else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        cond = dict(cond)
        if cond.get("type") == ctype:
            found = True
            changed = cond.get("status") != value
            cond.update(
                status=value,
                reason=reason,
                message=message[:4000],
                lastTransitionTime=now_rfc3339()
                if changed or not cond.get("lastTransitionTime")
                else cond["lastTransitionTime"],
            )
            if generation is not None:
                cond["observedGeneration"] = generation
        out.append(cond)
    if not found:
        cond = {
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message[:4000],
            "lastTransitionTime": now_rfc3339(),
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def get_condition(
    conditions: Iterable[Mapping[str, Any]] | None, ctype: str
) -> Mapping[str, Any] | None:
    """Return the condition of type ``ctype`` or ``None``."""
    for cond in conditions or []:
        if cond.get("type") == ctype:
            return cond
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> bool:
    """Whether the condition ``ctype`` exists with status ``True``."""
    cond = get_condition(conditions, ctype)
    return cond is not None and cond.get("status") == "True"


def _strip_times(value: Any) -> Any:
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    return value


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields of ``desired`` that differ from ``current``.

    Condition timestamps are ignored in the comparison, so re-setting an unchanged condition
    writes nothing.

    Args:
        current: The status as last written/read.
        desired: Fields to set.

    Returns:
        The subset of ``desired`` worth patching (empty when nothing changed).
    """
    return {
        key: value
        for key, value in desired.items()
        if _strip_times(current.get(key)) != _strip_times(value)
    }
