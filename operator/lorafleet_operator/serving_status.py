"""``status.serving`` of a BaseModel and its LoraAdapters, from what the Serve app answers.

Pure: the Serve application's answer (``GET /stats`` with every live replica's residency facts;
:class:`~lorafleet_operator.serveprobe.ServeAnswer`) in, status fields out. The BaseModel gets
its replicas reporting vs desired (``kubectl get bm`` REPLICAS) and the adapters resident on each
replica; each LoraAdapter gets the replicas holding it (``kubectl get lora`` RESIDENT, e.g.
``1/2``), the latest load time and its requests in the last minute. The reconciler writes them
only when they differ from what is there (:class:`~lorafleet_operator.status_writer.StatusWriter`),
and polls more slowly while nothing moves (:func:`next_poll_s`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorafleet_operator.models import AdapterServing, BaseModelServing, BaseModelSpec
from lorafleet_operator.serveprobe import ServeAnswer


def desired_replicas(spec: BaseModelSpec) -> int | None:
    """``Model`` replicas the serve config asks for: ``spec.serving.replicas`` (1 when unset),
    ``None`` when autoscaling decides."""
    serving = spec.serving
    if serving.autoscaling is not None:
        return None
    return 1 if serving.replicas is None else serving.replicas


def base_serving(answer: ServeAnswer, desired: int | None) -> dict[str, Any] | None:
    """A BaseModel's ``status.serving``, or ``None`` when the app did not answer or reports no
    replicas (a serving image without the residency board).

    Args:
        answer: The Serve application's answer.
        desired: :func:`desired_replicas`.

    Returns:
        The camelCase ``serving`` object.
    """
    if not answer.ok or not answer.replicas:
        return None
    ready = len(answer.replicas)
    return BaseModelServing(
        replicas=f"{ready}/{desired}" if desired is not None else str(ready),
        ready_replicas=ready,
        desired_replicas=desired,
        resident_by_replica={r: sorted(f.resident) for r, f in answer.replicas.items()},
        requests_per_minute=sum(
            sum(f.requests_per_minute.values()) for f in answer.replicas.values()
        ),
    ).to_wire()


def adapter_serving(answer: ServeAnswer, served_name: str) -> dict[str, Any] | None:
    """A LoraAdapter's ``status.serving``, or ``None`` as for :func:`base_serving`.

    Args:
        answer: The Serve application's answer.
        served_name: The adapter's served name (its registry key).

    Returns:
        The camelCase ``serving`` object: ``resident`` is replicas holding it / replicas
        reporting; ``lastLoadSeconds`` the slowest of the replicas' latest loads of it (ms
        precision).
    """
    if not answer.ok or not answer.replicas:
        return None
    facts = answer.replicas.values()
    holding = sorted(r for r, f in answer.replicas.items() if served_name in f.resident)
    loads = [f.last_load_seconds[served_name] for f in facts if served_name in f.last_load_seconds]
    return AdapterServing(
        resident=f"{len(holding)}/{len(answer.replicas)}",
        replicas=holding,
        last_load_seconds=round(max(loads), 3) if loads else None,
        requests_per_minute=sum(f.requests_per_minute.get(served_name, 0) for f in facts),
        load_failures=sum(f.load_failures.get(served_name, 0) for f in facts),
    ).to_wire()


@dataclass(frozen=True)
class ServingEvent:
    """A Kubernetes Event to post on a LoraAdapter about its residency.

    Attributes:
        warning: A Warning (else Normal) Event.
        reason: CamelCase reason (docs/reasons.md).
        message: What happened, naming the replicas and seconds.
    """

    warning: bool
    reason: str
    message: str


def adapter_events(
    before: Mapping[str, Any] | None, now: Mapping[str, Any] | None, slow_load_s: float
) -> list[ServingEvent]:
    """Events a change of an adapter's ``status.serving`` calls for.

    ``Loaded`` when it becomes resident on a replica while none held it; ``LoadFailed`` when its
    failed loads grew; ``SlowLoad`` when its latest load took longer than ``slow_load_s``.

    Args:
        before: Its ``status.serving`` as last written (``None``: none yet).
        now: The one just computed (``None``: nothing known; no events).
        slow_load_s: Load time above which a load is a Warning, seconds.
    """
    if now is None:
        return []
    before = before or {}
    events = []
    replicas = now.get("replicas") or []
    load_s = now.get("lastLoadSeconds")
    if replicas and not before.get("replicas"):
        took = f" (latest load {load_s:.3f} s)" if load_s is not None else ""
        events.append(
            ServingEvent(False, reason="Loaded", message=f"resident on {', '.join(replicas)}{took}")
        )
    failures = int(now.get("loadFailures") or 0) - int(before.get("loadFailures") or 0)
    if failures > 0:
        events.append(
            ServingEvent(
                True,
                reason="LoadFailed",
                message=f"{failures} load(s) failed on a replica; the replica's log has why",
            )
        )
    if load_s is not None and load_s > slow_load_s and load_s != before.get("lastLoadSeconds"):
        events.append(
            ServingEvent(
                True,
                reason="SlowLoad",
                message=f"a load took {load_s:.1f} s (over {slow_load_s:g} s): check the volume's "
                "read speed and the replica's memory",
            )
        )
    return events


def next_poll_s(
    before: Mapping[str, Any] | None, now: Mapping[str, Any] | None, active_s: float, idle_s: float
) -> float:
    """Seconds until the next look at the app: ``active_s`` while residency changes or requests
    flow, ``idle_s`` once two looks in a row saw the same residency and no traffic.

    Args:
        before: The BaseModel's previous ``status.serving`` (``None``: none yet).
        now: The one just computed.
        active_s: Interval while things move.
        idle_s: Interval while nothing does.
    """
    if now is None or before is None:
        return active_s
    if now.get("requestsPerMinute") or now.get("residentByReplica") != before.get(
        "residentByReplica"
    ):
        return active_s
    return idle_s
