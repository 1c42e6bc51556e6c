"""Writes one object's ``status``: only what changed, typed, with an Event on phase changes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import kopf

from lorafleet_operator import conditions as cond
from lorafleet_operator import metrics
from lorafleet_operator.models import (
    BASEMODEL_KIND,
    BASEMODEL_PLURAL,
    LORAADAPTER_PLURAL,
    Phase,
    status_patch,
)
from lorafleet_operator.operator_state import OperatorState
from lorafleet_operator.status_update import ConditionUpdate, StatusUpdate


class StatusWriter:
    """The status of one object as this operator last wrote it, and the means to change it.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        body: The object (kopf body or dict); its ``status`` is used when this operator has
            not written one yet.
        state: The operator's state (API, status cache).
        logger: kopf's per-object logger.
    """

    def __init__(
        self, kind: str, body: Mapping[str, Any], state: OperatorState, logger: kopf.Logger
    ) -> None:
        self.kind = kind
        self.body: dict[str, Any] = json.loads(json.dumps(dict(body), default=str))
        self.meta: dict[str, Any] = self.body["metadata"]
        self.name: str = self.meta["name"]
        self.namespace: str = self.meta["namespace"]
        self.key = (kind, self.namespace, self.name)
        self.generation: int | None = self.meta.get("generation")
        self.plural = BASEMODEL_PLURAL if kind == BASEMODEL_KIND else LORAADAPTER_PLURAL
        self.state = state
        self.logger = logger
        cached = state.statuses.get(self.key)
        self.status: dict[str, Any] = dict(
            cached if cached is not None else (self.body.get("status") or {})
        )

    def conditions(self, *updates: ConditionUpdate) -> list[dict[str, Any]]:
        """The current conditions with ``(type, status, reason, message)`` updates applied."""
        result = self.status.get("conditions") or []
        for ctype, status, reason, message in updates:
            result = cond.set_condition(result, ctype, status, reason, message, self.generation)
        return result

    async def apply(self, update: StatusUpdate) -> None:
        """Write a decision's :class:`StatusUpdate` (counting its failure, if any).

        Raises:
            ValueError: A field the kind's status model does not declare, or a wrong type.
            kubernetes.client.rest.ApiException: The patch failed (other than 404).
        """
        if update.failure:
            metrics.FAILURES.labels(self.kind, update.failure).inc()
        fields = dict(update.fields)
        if update.conditions:
            fields["conditions"] = self.conditions(*update.conditions)
        await self.write(fields)

    async def write(self, fields: Mapping[str, Any]) -> None:
        """Patch ``status`` with ``fields`` (only what changed); Event on a phase change.

        ``observedGeneration`` is set to the object's generation unless given.

        Raises:
            ValueError: A field the kind's status model does not declare, or a wrong type
                (:func:`lorafleet_operator.models.status_patch`).
            kubernetes.client.rest.ApiException: The patch failed (other than 404: gone).
        """
        desired = status_patch(self.kind, {"observedGeneration": self.generation, **fields})
        changes = cond.status_changes(self.status, desired)
        if not changes:
            return
        old_phase = self.status.get("phase")
        if not await self.state.api.patch_status(self.plural, self.namespace, self.name, changes):
            return
        self.status.update(changes)
        self.state.statuses[self.key] = dict(self.status)
        new_phase = self.status.get("phase")
        if "phase" in changes and new_phase != old_phase:
            self._phase_event(old_phase, new_phase, changes)

    def _phase_event(self, old: str | None, new: str | None, changes: Mapping[str, Any]) -> None:
        """A Kubernetes Event for a phase change (Warning for Failed or Degraded)."""
        failed = new == Phase.FAILED or "Degraded" in str(changes.get("message", ""))
        message = f"phase {old or '-'} -> {new}"
        if self.status.get("message"):
            message += f": {self.status['message']}"
        kopf.event(
            self._body,
            type="Warning" if failed else "Normal",
            reason=str(new),
            message=message[:1000],
        )
        self.logger.info("phase %s -> %s", old, new)

    @property
    def _body(self) -> kopf.Body:
        """The object for kopf's event helpers (they read its kind, name and uid)."""
        return cast(kopf.Body, self.body)

    def warn(self, *, reason: str, message: str) -> None:
        """Post a Warning Event on the object (kopf posts it in the background)."""
        kopf.warn(self._body, reason=reason, message=message)

    def info(self, *, reason: str, message: str) -> None:
        """Post a Normal Event on the object."""
        kopf.info(self._body, reason=reason, message=message)
