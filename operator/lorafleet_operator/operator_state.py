"""Per-operator state, kept in kopf's operator-level ``memo`` (never in a module global).

kopf gives every handler a ``memo``: a shallow copy of the operator-level memo that
:func:`lorafleet_operator.handlers.configure` fills at start-up, so the one
:class:`OperatorState` it holds is shared by all handlers of one operator run, and a second
run in the same process (tests, ``kopf.testing.KopfRunner``) starts from a new one.
See kopf's ``docs/memos.rst``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from lorafleet_operator.kubeapi import KubeApi
from lorafleet_operator.models import BASEMODEL_KIND
from lorafleet_operator.settings import Settings

#: ``(kind, namespace, name)`` of a lorafleet object.
ObjectKey = tuple[str, str, str]
#: ``(namespace, name)`` of a BaseModel.
BaseKey = tuple[str, str]
#: The memo attribute holding the state.
MEMO_KEY = "lorafleet"


class Wakeups:
    """One :class:`asyncio.Event` per object whose daemon sleeps between passes."""

    def __init__(self) -> None:
        self._events: dict[ObjectKey, asyncio.Event] = {}

    def event_for(self, key: ObjectKey) -> asyncio.Event:
        """The object's event (created on first use)."""
        if key not in self._events:
            self._events[key] = asyncio.Event()
        return self._events[key]

    def wake(self, kind: str, namespace: str, name: str) -> None:
        """Wake the object's daemon, if it has one."""
        event = self._events.get((kind, namespace, name))
        if event is not None:
            event.set()

    def forget(self, key: ObjectKey) -> None:
        """Drop a deleted object's event."""
        self._events.pop(key, None)

    async def sleep(
        self, key: ObjectKey, stopped: Any, timeout: float, debounce: float = 0.0
    ) -> None:
        """Sleep until woken, stopped, or ``timeout`` seconds pass.

        Args:
            key: The sleeping object.
            stopped: kopf's daemon stop flag (``await stopped.wait()``; truthy once stopped).
            timeout: Seconds to sleep at most.
            debounce: Seconds to wait after a wake-up, so a burst of wake-ups becomes one pass.
        """
        event = self.event_for(key)
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if event.is_set() and debounce and not stopped:
            await asyncio.sleep(debounce)
        event.clear()


@dataclass
class OperatorState:
    """What one operator run remembers between handler calls.

    Attributes:
        settings: lorafleet settings read at start-up.
        api: The Kubernetes API.
        wakeups: Daemon wake-up events.
        statuses: The status each object's daemon last wrote (its own writes are seen before
            the watch delivers them).
        generations: The ``metadata.generation`` each event handler last saw per object.
        rayservice_seen: Per RayService, the readiness signature its event handler last saw.
        hints: Registry entries adapter daemons wrote before the index caught up:
            (namespace, base) -> served name -> entry (``None``: being removed).
        deploy_started: Monotonic seconds a BaseModel's current (re)deploy started.
        registry_writes: Monotonic seconds of a BaseModel's last registry-only write.
        job_created: Monotonic seconds an install Job was first seen, by (namespace, Job).
        base_paths: The installed path last seen in each BaseModel's status.
        network_policies: BaseModels whose NetworkPolicy this run has made or found.
    """

    settings: Settings
    api: KubeApi
    wakeups: Wakeups = field(default_factory=Wakeups)
    statuses: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    generations: dict[ObjectKey, Any] = field(default_factory=dict)
    rayservice_seen: dict[BaseKey, tuple[Any, ...]] = field(default_factory=dict)
    hints: defaultdict[BaseKey, dict[str, dict[str, Any] | None]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    deploy_started: dict[BaseKey, float] = field(default_factory=dict)
    registry_writes: dict[BaseKey, float] = field(default_factory=dict)
    job_created: dict[tuple[str, str], float] = field(default_factory=dict)
    base_paths: dict[BaseKey, str | None] = field(default_factory=dict)
    network_policies: set[BaseKey] = field(default_factory=set)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop what this run remembers about a deleted object (its finalizer ran).

        Watch events that arrive after the finalizer (the object's last updates) may record
        its generation or path again; those few keys stay until the operator restarts.
        """
        key = (kind, namespace, name)
        self.statuses.pop(key, None)
        self.generations.pop(key, None)
        self.wakeups.forget(key)
        if kind == BASEMODEL_KIND:
            base = (namespace, name)
            for per_base in (
                self.deploy_started,
                self.registry_writes,
                self.base_paths,
                self.rayservice_seen,
                self.hints,
            ):
                per_base.pop(base, None)
            self.network_policies.discard(base)


def state_of(memo: kopf.Memo) -> OperatorState:
    """The operator's state from a handler's ``memo``.

    Raises:
        RuntimeError: The start-up handler has not run (no state in the memo).
    """
    state = memo.get(MEMO_KEY)
    if state is None:
        raise RuntimeError("lorafleet operator state missing from kopf's memo (startup not run)")
    return cast(OperatorState, state)
