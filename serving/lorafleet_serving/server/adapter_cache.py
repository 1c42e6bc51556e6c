"""Adapter residency for one replica: registry, LRU eviction, single-flight loads, pinning.

At most ``max_adapters`` adapters are resident. A request *leases* its adapter
(:meth:`AdapterCache.lease`): the adapter is loaded if needed - one load at a time per adapter,
however many requests arrive for it at once - and pinned until the request finishes, so an
adapter in use is never evicted under it. When a load needs room the least recently used
unpinned adapter is evicted; if all are pinned, the load waits for one to be released, and
meanwhile new leases wait too, so steady traffic to resident adapters cannot starve it.

The cache only does bookkeeping; loading and unloading are the ``load``/``unload`` coroutines it
is given (the model server runs them on the engine's worker thread). :func:`parse_user_config`
reads the registry (and ``max_adapters``) from the deployment's ``user_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdapterLoadError, InvalidRequestError, UnknownModelError
from .requests import is_int

logger = logging.getLogger(__name__)


@dataclass
class AdapterSpec:
    """A registered adapter (from ``user_config["adapters"][name]``).

    Attributes:
        name: Served name.
        path: Local folder of the adapter files.
        rank: LoRA ``r`` as recorded by the installer (informational), or ``None``.
        labels: Label names of its classification head (``{"0": "neg", ...}``), or ``None``.
        extra: Any other metadata given, kept for ``/v1/models``.
    """

    name: str
    path: str
    rank: int | None = None
    labels: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, value: Any) -> AdapterSpec:
        """Parse one registry entry.

        Args:
            name: Adapter name (a non-empty string, not ``"__base__"``).
            value: ``{"path": str, "rank": int?, "labels": dict?, ...}``.

        Returns:
            The spec.

        Raises:
            InvalidRequestError: Missing/ill-typed ``path``, ``rank`` or ``labels``; the message
                names ``adapters.<name>.<field>``.
        """
        where = f"user_config.adapters.{name}"
        if not isinstance(name, str) or not name or name == "__base__":
            raise InvalidRequestError(f"{where}: invalid adapter name", param="adapters")
        if not isinstance(value, dict):
            raise InvalidRequestError(f"{where} must be a mapping", param="adapters")
        path = value.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidRequestError(f"{where}.path must be a non-empty string", param="path")
        rank = value.get("rank")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise InvalidRequestError(f"{where}.rank must be a positive integer", param="rank")
        labels = value.get("labels")
        if labels is not None:
            if isinstance(labels, list):
                labels = {str(i): str(v) for i, v in enumerate(labels)}
            elif isinstance(labels, dict):
                labels = {str(k): str(v) for k, v in labels.items()}
            else:
                raise InvalidRequestError(f"{where}.labels must be a mapping", param="labels")
        extra = {k: v for k, v in value.items() if k not in ("path", "rank", "labels")}
        return cls(name=name, path=path, rank=rank, labels=labels, extra=extra)

    def as_dict(self) -> dict[str, Any]:
        """The spec as the registry mapping value (``path``, ``rank``, ``labels``, extras)."""
        out: dict[str, Any] = {"path": self.path, **self.extra}
        if self.rank is not None:
            out["rank"] = self.rank
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        return out


def parse_user_config(user_config: Any) -> tuple[int | None, dict[str, AdapterSpec]]:
    """Validate a ``user_config`` (the ``Model`` deployment's adapter registry).

    Args:
        user_config: ``{"max_adapters": int?, "adapters": {name: {"path", "rank"?,
            "labels"?}}?}``.

    Returns:
        (``max_adapters`` or ``None`` when absent, adapter specs by name).

    Raises:
        InvalidRequestError: Not a mapping, unknown keys, bad ``max_adapters`` or entries.
    """
    if user_config is None:
        return None, {}
    if not isinstance(user_config, dict):
        raise InvalidRequestError("user_config must be a mapping", param="user_config")
    unknown = set(user_config) - {"max_adapters", "adapters"}
    if unknown:
        raise InvalidRequestError(
            f"user_config has unknown keys {sorted(unknown)}", param="user_config"
        )
    max_adapters = user_config.get("max_adapters")
    if max_adapters is not None and (not is_int(max_adapters) or max_adapters < 1):
        raise InvalidRequestError(
            f"user_config.max_adapters must be an integer >= 1, got {max_adapters!r}",
            param="max_adapters",
        )
    adapters = user_config.get("adapters") or {}
    if not isinstance(adapters, dict):
        raise InvalidRequestError("user_config.adapters must be a mapping", param="adapters")
    specs = {name: AdapterSpec.from_config(name, value) for name, value in adapters.items()}
    return max_adapters, specs


Loader = Callable[[AdapterSpec], Awaitable[None]]
Unloader = Callable[[str], Awaitable[None]]


class AdapterCache:
    """LRU cache of resident adapters with single-flight loading and pinning.

    Must be used from one asyncio event loop.

    Args:
        load: Coroutine function loading a spec into the engine (raises ``AdapterLoadError``).
        unload: Coroutine function unloading an adapter by name.
        max_adapters: Maximum resident adapters (>= 1).
    """

    def __init__(self, load: Loader, unload: Unloader, max_adapters: int = 8) -> None:
        if max_adapters < 1:
            raise InvalidRequestError("max_adapters must be >= 1", param="max_adapters")
        self._load = load
        self._unload = unload
        self.max_adapters = max_adapters
        self.registry: dict[str, AdapterSpec] = {}
        self._resident: OrderedDict[str, None] = OrderedDict()  # LRU order: oldest first
        self._pins: Counter[str] = Counter()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._evicting: set[str] = set()
        self._reserved: set[str] = set()  # loads that have room and are running
        #: Resident adapters chosen to make room for a load that found every resident adapter
        #: in use: new leases on them wait until they are evicted (others go on).
        self._draining: set[str] = set()
        self._wanted: Counter[str] = Counter()  # leases waiting for a load of the adapter
        self._room_queue: deque[str] = deque()  # loads waiting for a place, first come first
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.loads: Counter[str] = Counter()
        self.load_failures: Counter[str] = Counter()
        self.evictions = 0

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    # ----------------------------------------------------------------- queries

    def resident(self) -> list[str]:
        """Resident adapter names, least recently used first."""
        return list(self._resident)

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` is in the registry."""
        return name in self.registry

    # ----------------------------------------------------------------- registry

    def set_registry(self, specs: dict[str, AdapterSpec]) -> list[str]:
        """Replace the registry.

        Args:
            specs: New registry.

        Returns:
            Names that are resident (or loading) but no longer registered, or whose path
            changed: the caller evicts them (:meth:`evict`).
        """
        stale = [
            n
            for n in [*self._resident, *self._loading]
            if n not in specs or specs[n].path != self.registry.get(n, specs[n]).path
        ]
        self.registry = dict(specs)
        return list(dict.fromkeys(stale))

    # ----------------------------------------------------------------- residency

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[None]:
        """Make ``name`` resident and pin it for the duration of the block.

        Args:
            name: Registered adapter.

        Yields:
            Nothing; the adapter stays loaded until the block exits.

        Raises:
            UnknownModelError: Not registered.
            AdapterLoadError: Its files failed to load.
        """
        while True:
            # While this lease waits for a load of ``name``, ``name`` is "wanted": it is not
            # evicted between the load finishing and this task resuming to pin it.
            self._wanted[name] += 1
            try:
                waited_for_load = await self.ensure(name)
            finally:
                self._wanted[name] -= 1
                if self._wanted[name] <= 0:
                    del self._wanted[name]
            if name in self._draining and not waited_for_load:
                # A load waits for this adapter's place (every resident adapter was in use):
                # new pins on it wait until it is evicted, or steady traffic to it would
                # starve the load forever. Leases on the other resident adapters go on.
                await self._wait_change()
                continue
            if name in self._resident and name not in self._evicting:
                break
        self._pins[name] += 1
        self._resident.move_to_end(name)
        try:
            yield
        finally:
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]
                await self._notify()

    async def ensure(self, name: str) -> bool:
        """Load ``name`` if it is not resident (single flight); mark it most recently used.

        Args:
            name: Registered adapter.

        Returns:
            True if this call waited for a load of ``name`` (its own or a concurrent one).

        Raises:
            UnknownModelError: Not registered.
            AdapterLoadError: Its files failed to load (every concurrent waiter gets it).
        """
        waited = False
        while True:
            if name not in self.registry:
                raise UnknownModelError(name)
            if name in self._resident and name not in self._evicting:
                self._resident.move_to_end(name)
                return waited
            pending = self._loading.get(name)
            if pending is not None:
                waited = True
                await asyncio.shield(pending)
                continue
            if name in self._evicting:
                await self._wait_change()
                continue
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._loading[name] = future
            # The load runs as its own task: a cancelled requester (client gone) must not leave
            # the engine half-loaded; the other waiters still get the adapter.
            task = loop.create_task(self._run_load(name, self.registry[name], future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_load(self, name: str, spec: AdapterSpec, future: asyncio.Future[None]) -> None:
        try:
            await self._make_room(name)
            current = self.registry.get(name)
            if current is None or current.path != spec.path:
                raise UnknownModelError(name)
            await self._load(spec)
            self.loads[name] += 1
            self._resident[name] = None
            future.set_result(None)
        except (AdapterLoadError, UnknownModelError) as exc:
            self.load_failures[name] += isinstance(exc, AdapterLoadError)
            future.set_exception(exc)
        except Exception as exc:
            logger.exception("loading adapter %s failed", name)
            self.load_failures[name] += 1
            future.set_exception(AdapterLoadError(name, f"{type(exc).__name__}: {exc}"))
        finally:
            self._reserved.discard(name)
            del self._loading[name]
            if not future.done():
                future.set_exception(AdapterLoadError(name, "load was cancelled"))
            if not future.cancelled():
                future.exception()  # mark retrieved: waiters may all have gone
            await self._notify()

    async def _wait_change(self) -> None:
        cond = self._condition()
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait(), timeout=1.0)

    async def _make_room(self, name: str) -> None:
        """Wait for ``name``'s turn, evict LRU idle adapters until it fits, reserve its place.

        Loads take places first come, first served (``_room_queue``). When the load at the head
        finds every resident adapter in use, it picks one to drain (:meth:`_drain_candidate`):
        new leases on that one wait (``_draining``) while the others keep running, so steady
        traffic cannot starve the load and the batch stays full meanwhile. There is no await
        between the capacity check and the reservation, so two loads never take the same place.
        """
        self._room_queue.append(name)
        draining: str | None = None
        try:
            while True:
                if self._room_queue[0] != name:
                    await self._wait_change()
                    continue
                if len(self._resident) + len(self._reserved) < self.max_adapters:
                    self._reserved.add(name)
                    return
                victim = next(
                    (
                        n
                        for n in self._resident
                        if not self._pins[n] and not self._wanted[n] and n not in self._evicting
                    ),
                    None,
                )
                if victim is None:
                    if draining not in self._resident:
                        self._draining.discard(draining or "")
                        draining = self._drain_candidate()
                        if draining is not None:
                            self._draining.add(draining)
                    await self._wait_change()
                    continue
                await self.evict(victim)
        finally:
            self._room_queue.remove(name)
            if draining is not None:
                self._draining.discard(draining)
            await self._notify()

    def _drain_candidate(self) -> str | None:
        """The resident adapter to stop admitting new requests to, so it empties soonest: the
        fewest requests in flight, then least recently used (``None`` if none can go)."""
        order = {n: i for i, n in enumerate(self._resident)}
        candidates = [n for n in self._resident if n not in self._evicting]
        if not candidates:
            return None
        return min(candidates, key=lambda n: (self._pins[n], order[n]))

    async def evict(self, name: str) -> bool:
        """Unload ``name`` now if it is resident and not pinned; else when its last lease ends.

        Args:
            name: Adapter name.

        Returns:
            True if it was unloaded by this call.
        """
        pending = self._loading.get(name)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        while name in self._resident and self._pins[name] and name not in self._evicting:
            await self._wait_change()
        if name not in self._resident or name in self._evicting:
            return False
        self._evicting.add(name)
        try:
            await self._unload(name)
            self._resident.pop(name, None)
            self.evictions += 1
            logger.info("evicted adapter %s", name)
        finally:
            self._evicting.discard(name)
            await self._notify()
        return True

    async def shrink_to(self, max_adapters: int) -> None:
        """Set ``max_adapters`` and evict least recently used adapters beyond it.

        Args:
            max_adapters: New limit (>= 1).

        Raises:
            InvalidRequestError: ``max_adapters`` < 1.
        """
        if not isinstance(max_adapters, int) or isinstance(max_adapters, bool) or max_adapters < 1:
            raise InvalidRequestError("max_adapters must be an integer >= 1", param="max_adapters")
        self.max_adapters = max_adapters
        while len(self._resident) > self.max_adapters:
            victim = next((n for n in self._resident if n not in self._evicting), None)
            if victim is None:
                break
            await self.evict(victim)
