"""What the operator indexes about BaseModels and LoraAdapters, and the registry it derives.

kopf keeps two in-memory indexes (kopf ``examples/16-indexing``), filled by the index
handlers in :mod:`lorafleet_operator.handlers` from the functions here:

- ``basemodels_by_name``: ``(namespace, name)`` -> :class:`BaseFacts`;
- ``adapters_by_base``: ``(namespace, baseModel)`` -> :class:`AdapterFacts` of each adapter.

Handlers receive them as typed ``kopf.Index`` arguments and wrap them in :class:`Indexes`; no
handler lists all adapters on an event. :func:`desired_registry` is the adapter registry a
BaseModel should serve (served name -> entry, docs/interfaces.md section 3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from lorafleet_operator import conditions as cond
from lorafleet_operator.serveconfig import adapter_entry

#: ``(namespace, name)``.
IndexKey = tuple[str, str]


@dataclass(frozen=True)
class BaseFacts:
    """What adapters need to know of their BaseModel.

    Attributes:
        installed: Installed is True and a path is set.
        path: The install folder (``status.path``).
        phase: ``status.phase``.
        claim: The claim holding its files (``status.claimName``).
        max_rank: ``spec.serving.maxRank``.
        source_uri: ``spec.source.uri`` (adapters are checked against it).
        deleting: It has a deletionTimestamp.
    """

    installed: bool
    path: str | None
    phase: str | None
    claim: str | None
    max_rank: int
    source_uri: str | None
    deleting: bool


@dataclass(frozen=True)
class AdapterFacts:
    """What a BaseModel needs to know of one of its adapters.

    Attributes:
        name: The LoraAdapter's name.
        served_name: The name clients send (``spec.servedName`` or the name).
        entry: Its registry entry once installed, else ``None``.
        phase: ``status.phase``.
        deleting: It has a deletionTimestamp.
        created: ``metadata.creationTimestamp`` (RFC 3339; the older wins a name clash).
        uid: ``metadata.uid``.
        generation: ``metadata.generation``.
        status: Its ``status`` as last seen.
    """

    name: str
    served_name: str
    entry: dict[str, Any] | None
    phase: str | None
    deleting: bool
    created: str
    uid: str | None
    generation: int | None
    status: dict[str, Any]


def base_facts(
    namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any], meta: Any
) -> dict[IndexKey, BaseFacts]:
    """The ``basemodels_by_name`` index entry of one BaseModel (pure)."""
    status = dict(status or {})
    spec = dict(spec or {})
    installed = cond.is_true(status.get("conditions"), cond.INSTALLED) and bool(status.get("path"))
    return {
        (namespace, name): BaseFacts(
            installed=installed,
            path=status.get("path"),
            phase=status.get("phase"),
            claim=status.get("claimName"),
            max_rank=int((spec.get("serving") or {}).get("maxRank", 64) or 64),
            source_uri=(spec.get("source") or {}).get("uri"),
            deleting=bool(meta.get("deletionTimestamp")),
        )
    }


def adapter_facts(
    namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any], meta: Any
) -> dict[tuple[str, Any], AdapterFacts]:
    """The ``adapters_by_base`` index entry of one LoraAdapter (pure)."""
    status = dict(status or {})
    spec = dict(spec or {})
    entry = None
    if cond.is_true(status.get("conditions"), cond.INSTALLED) and status.get("path"):
        entry = adapter_entry(
            status["path"],
            int(status["rank"]) if status.get("rank") else None,
            spec.get("labels") or status.get("labels"),
        )
    return {
        (namespace, spec.get("baseModel")): AdapterFacts(
            name=name,
            served_name=spec.get("servedName") or name,
            entry=entry,
            phase=status.get("phase"),
            deleting=bool(meta.get("deletionTimestamp")),
            created=meta.get("creationTimestamp") or "",
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            status=status,
        )
    }


class Indexes:
    """Read access to the two kopf indexes (either may be absent in a handler's kwargs).

    Args:
        bases: The ``basemodels_by_name`` index.
        adapters: The ``adapters_by_base`` index.
    """

    def __init__(
        self,
        bases: kopf.Index[IndexKey, BaseFacts] | None,
        adapters: kopf.Index[IndexKey, AdapterFacts] | None,
    ) -> None:
        self._bases = bases
        self._adapters = adapters

    def base(self, namespace: str, name: str) -> BaseFacts | None:
        """The BaseModel's facts, or ``None`` when it is not (yet) indexed."""
        if self._bases is None or (namespace, name) not in self._bases:
            return None
        for facts in self._bases[(namespace, name)]:
            return facts
        return None

    def adapters(self, namespace: str, base: str) -> list[AdapterFacts]:
        """The facts of every LoraAdapter naming ``base`` in ``namespace``."""
        if self._adapters is None or (namespace, base) not in self._adapters:
            return []
        return list(self._adapters[(namespace, base)])


def desired_registry(
    adapters: Iterable[AdapterFacts], hints: Mapping[str, dict[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """The adapter registry a BaseModel should serve: installed, not-deleting adapters (pure).

    The index (adapters' status) is overlaid with hints adapter daemons left before the index
    caught up. A served name claimed by two adapters goes to the older one.

    Args:
        adapters: The BaseModel's adapters (from the index).
        hints: Served name -> entry written by adapter daemons (``None``: being removed).

    Returns:
        Served name -> registry entry.
    """
    registry: dict[str, dict[str, Any]] = {}
    for adapter in sorted(adapters, key=lambda a: (a.created, a.name)):
        if adapter.deleting or not adapter.entry:
            continue
        registry.setdefault(adapter.served_name, adapter.entry)
    for served, entry in hints.items():
        if entry is None:
            registry.pop(served, None)
        else:
            registry[served] = entry
    return registry
