"""What a reconcile decision asks to write into an object's ``status`` (pure data).

The decision functions of :mod:`lorafleet_operator.basemodel` and
:mod:`lorafleet_operator.loraadapter` return a :class:`StatusUpdate`; the
:class:`lorafleet_operator.status_writer.StatusWriter` applies it (conditions merged into the
current ones, only changed fields patched, an Event on a phase change). Conditions follow the
Kubernetes API conventions (``metav1.Condition``); reasons are CamelCase and listed in
docs/reasons.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lorafleet_operator import conditions as cond
from lorafleet_operator.models import Phase

#: ``(type, status, reason, message)`` of one condition to set.
ConditionUpdate = tuple[str, bool | str, str, str]


@dataclass(frozen=True)
class StatusUpdate:
    """Status fields and conditions to set on one object.

    Attributes:
        fields: camelCase status fields (``phase``, ``message``, ...), checked against the
            kind's status model when written; ``None`` removes a field.
        conditions: Conditions to set, in order; others are kept.
        failure: The reason counted in ``lorafleet_failures_total``, when this records one.
    """

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[ConditionUpdate, ...] = ()
    failure: str | None = None

    @property
    def phase(self) -> str | None:
        """The phase this update sets, if any."""
        phase = self.fields.get("phase")
        return None if phase is None else str(phase)

    def reason_of(self, ctype: str) -> str | None:
        """The reason this update gives condition ``ctype``, if it sets it."""
        for update in self.conditions:
            if update[0] == ctype:
                return update[2]
        return None


def failed(
    reason: str,
    message: str,
    phase: Phase = Phase.FAILED,
    ctype: str = cond.INSTALLED,
    **fields: Any,
) -> StatusUpdate:
    """A failure: condition ``ctype`` False with ``reason``, Ready False, the phase.

    Args:
        reason: CamelCase reason (docs/reasons.md).
        message: What is wrong and where.
        phase: The phase to set (``Failed`` unless the object may recover by itself).
        ctype: The condition that failed (``Installed`` for install problems, ``Ready`` for
            API errors).
        **fields: Further status fields to set with it (e.g. ``installJob``).

    Returns:
        The update; ``message`` is ``"<reason>: <message>"``.
    """
    updates: list[ConditionUpdate] = [(ctype, False, reason, message)]
    if ctype != cond.READY:
        updates.append((cond.READY, False, reason, message))
    return StatusUpdate(
        fields={**fields, "phase": str(phase), "message": f"{reason}: {message}"},
        conditions=tuple(updates),
        failure=reason,
    )


def invalid_spec(exc: ValidationError) -> StatusUpdate:
    """``InvalidSpec`` naming the first field pydantic refused (``spec.source.uri: ...``)."""
    first = exc.errors()[0]
    return failed("InvalidSpec", f"spec.{'.'.join(map(str, first['loc']))}: {first['msg']}")


def api_error(status: int | None, http_reason: str | None, detail: str) -> StatusUpdate:
    """A reconcile pass that failed on a Kubernetes API call: ``Forbidden`` (403, RBAC) or
    ``KubernetesApiError``; phase Pending (retried), Ready False.

    Args:
        status: The HTTP status.
        http_reason: The HTTP reason phrase.
        detail: The API server's message (:func:`lorafleet_operator.kubeapi.api_error_message`).
    """
    reason = "Forbidden" if status == 403 else "KubernetesApiError"
    return failed(
        reason,
        f"Kubernetes API error {status} {http_reason}: {detail}"[:1000],
        phase=Phase.PENDING,
        ctype=cond.READY,
    )


def internal_error(exc: BaseException) -> StatusUpdate:
    """A reconcile pass that failed on a bug or an unexpected error: ``InternalError``."""
    return failed("InternalError", f"{type(exc).__name__}: {exc}", ctype=cond.READY)
