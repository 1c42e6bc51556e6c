"""Where every adapter is resident across a Serve application's ``Model`` replicas.

A request through the Serve Service reaches one replica, so one replica alone cannot say which
replicas hold an adapter. Each ``Model`` replica therefore reports its facts (resident adapters,
requests per adapter in the last minute, last load seconds) to one small Ray actor per
application, :class:`ResidencyBoard`, whenever an adapter is loaded or unloaded and every
:data:`HEARTBEAT_S` seconds; ``GET /stats`` (``Model.info``) includes the board's view, which
the operator writes into ``status.serving`` of the BaseModel and each LoraAdapter.

The board is a named actor (``lorafleet-residency-<application>``, ``num_cpus=0``) created by the
first replica that reports, with ``get_if_exists``: whoever created it owns it, so it goes away
with that replica; the next report or read then makes a new one, which fills up again within
one heartbeat. A replica that stops reporting (gone, or stuck) drops out of the view after
:data:`STALE_AFTER_S` seconds, so the view never shows an adapter on a replica that is gone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError

logger = logging.getLogger(__name__)

#: Seconds between two reports of an idle replica.
HEARTBEAT_S = 10.0
#: A replica that has not reported for this long is left out of the view, seconds.
STALE_AFTER_S = 3 * HEARTBEAT_S
#: Prefix of the board actor's name (the application name follows).
BOARD_PREFIX = "lorafleet-residency-"


@ray.remote(num_cpus=0)
class ResidencyBoard:
    """The latest facts each replica of one application reported (a Ray actor)."""

    def __init__(self) -> None:
        self._facts: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, replica: str, facts: dict[str, Any]) -> None:
        """Keep ``facts`` as ``replica``'s latest (stamped with the board's clock)."""
        self._facts[replica] = (time.monotonic(), facts)

    def forget(self, replica: str) -> None:
        """Drop ``replica`` (it is shutting down)."""
        self._facts.pop(replica, None)

    def view(self, stale_after_s: float = STALE_AFTER_S) -> dict[str, dict[str, Any]]:
        """Replica id -> its latest facts, replicas silent for ``stale_after_s`` left out."""
        now = time.monotonic()
        for replica in [r for r, (at, _) in self._facts.items() if now - at > stale_after_s]:
            del self._facts[replica]
        return {replica: facts for replica, (_, facts) in sorted(self._facts.items())}


class BoardClient:
    """One replica's link to its application's :class:`ResidencyBoard`.

    Args:
        app_name: The Serve application (names the board).
        replica: This replica's id (``ReplicaContext.replica_tag``).
    """

    def __init__(self, app_name: str, replica: str) -> None:
        self.name = BOARD_PREFIX + app_name
        self.replica = replica
        self._board: Any = None

    def _get(self) -> Any:
        if self._board is None:
            self._board = ResidencyBoard.options(  # type: ignore[attr-defined]
                name=self.name, get_if_exists=True, lifetime=None
            ).remote()
        return self._board

    async def _call(self, method: str, *args: Any) -> Any:
        """Call the board; a board that died with its owner is made again once."""
        for attempt in (0, 1):
            try:
                return await getattr(self._get(), method).remote(*args)
            except RayActorError:
                self._board = None
                if attempt:
                    raise
        return None

    async def report(self, facts: dict[str, Any]) -> None:
        """Report this replica's facts; a failure is logged, never raised (a report is only
        what status shows; serving goes on)."""
        try:
            await self._call("report", self.replica, facts)
        except Exception as exc:
            logger.warning("residency report to %s failed: %s", self.name, exc)

    async def view(self) -> dict[str, dict[str, Any]]:
        """Every live replica's facts, this one's included; ``{}`` if the board cannot answer."""
        try:
            return dict(await self._call("view"))
        except Exception as exc:
            logger.warning("residency view of %s failed: %s", self.name, exc)
            return {}

    async def forget(self) -> None:
        """Take this replica off the board (shutdown); failures are ignored."""
        try:
            await self._call("forget", self.replica)
        except Exception:
            logger.debug("residency forget on %s failed", self.name, exc_info=True)
