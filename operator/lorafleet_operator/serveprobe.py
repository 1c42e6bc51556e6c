"""Ask a BaseModel's Serve application what it serves, before anything is called Ready.

KubeRay's ``Ready`` condition on a RayService means "the Serve Service has endpoints", and it
stays True while a new ``serveConfigV2`` is applied: it does not say that the application
answers, nor that a replica already holds the adapter registry the operator just wrote. So
the operator asks the application itself, through the same Service clients use
(``status.endpoint``): ``GET /stats`` is answered by the Ingress and one ``Model`` replica
(``lorafleet_serving.ray_app.Model.info``) with the base folder it loaded (``base_path``) and the
adapter names its registry holds (``registered``). A BaseModel turns Ready only when that
answers; an adapter only when it is listed; an old revision's files are removed only when the
answer names the new folder.

With several ``Model`` replicas one answer comes from one replica; the operator also waits for
KubeRay to report every application ``RUNNING`` (Serve marks an application ``DEPLOYING``
until every replica has applied a new ``user_config``), see :func:`applications_running`. The
answer also carries every live replica's residency facts (``replicas``, from the application's
residency board, ``lorafleet_serving.residency_board``), which become ``status.serving``
(:mod:`lorafleet_operator.serving_status`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

#: The lorafleet serving route the probe reads (``lorafleet_serving.http.routes``).
STATS_ROUTE = "/stats"


@dataclass(frozen=True)
class ReplicaFacts:
    """What one ``Model`` replica reported to its application's residency board.

    Attributes:
        resident: Adapters loaded on it now.
        requests_per_minute: Requests it finished in the last minute, per adapter name
            (``__base__`` for the bare base, ``__unknown__`` for names not registered).
        last_load_seconds: Seconds the latest load of each adapter took on it.
        load_failures: Failed loads of each adapter on it since it started.
    """

    resident: frozenset[str] = frozenset()
    requests_per_minute: Mapping[str, int] = field(default_factory=dict)
    last_load_seconds: Mapping[str, float] = field(default_factory=dict)
    load_failures: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeAnswer:
    """What the Serve application answered (or why it did not).

    Attributes:
        ok: The application answered ``200`` with the expected JSON.
        base_path: The base model folder the answering replica loaded (``None`` if not said).
        adapters: Adapter names in the answering replica's registry.
        error: Why it did not answer, for a status message (no secrets: the URL is the
            in-cluster Service address); ``None`` when ``ok``.
        replicas: Replica id -> its residency facts (empty from a serving image that does
            not report them).
    """

    ok: bool
    base_path: str | None = None
    adapters: frozenset[str] = field(default_factory=frozenset)
    error: str | None = None
    replicas: Mapping[str, ReplicaFacts] = field(default_factory=dict)


def parse_stats(payload: Any) -> ServeAnswer:
    """Read a ``GET /stats`` body.

    Args:
        payload: The decoded JSON body.

    Returns:
        The answer; ``ok`` False with the reason when the body is not the expected object
        (e.g. another application answers on the port).
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("registered"), list):
        return ServeAnswer(ok=False, error="the answer is not lorafleet's (no 'registered' list)")
    base_path = payload.get("base_path")
    return ServeAnswer(
        ok=True,
        base_path=base_path if isinstance(base_path, str) else None,
        adapters=frozenset(str(n) for n in payload["registered"]),
        replicas=parse_replicas(payload.get("replicas")),
    )


#: At most this many replicas, and adapters per replica, are read from one answer (status
#: stays far below etcd's object size limit whatever the app says).
MAX_REPLICAS = 256
MAX_NAMES = 4096
#: Counts and seconds above this are not believed (the API server takes int64 and finite JSON).
MAX_NUMBER = 10**12


def parse_replicas(value: Any) -> dict[str, ReplicaFacts]:
    """Read the ``replicas`` map of a ``GET /stats`` body; anything malformed is left out
    (status only shows what was reported well), and at most :data:`MAX_REPLICAS` replicas
    (by id) of :data:`MAX_NAMES` adapters each are read."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, ReplicaFacts] = {}
    for replica in sorted(str(k) for k in value)[:MAX_REPLICAS]:
        facts = value.get(replica)
        if not isinstance(facts, Mapping) or not isinstance(facts.get("resident"), list):
            continue
        if len(facts["resident"]) > MAX_NAMES:
            continue
        out[str(replica)] = ReplicaFacts(
            resident=frozenset(str(n) for n in facts["resident"]),
            requests_per_minute=_counts(facts.get("requests_per_minute")),
            last_load_seconds={
                k: float(v) for k, v in _numbers(facts.get("last_load_seconds")).items()
            },
            load_failures=_counts(facts.get("load_failures")),
        )
    return out


def _numbers(value: Any) -> dict[str, int | float]:
    """The entries of a name -> finite number in ``[0, MAX_NUMBER]`` map (others, and any
    beyond :data:`MAX_NAMES` entries, left out)."""
    if not isinstance(value, Mapping) or len(value) > MAX_NAMES:
        return {}
    return {
        str(k): v
        for k, v in value.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and (isinstance(v, int) or math.isfinite(v))
        and 0 <= v <= MAX_NUMBER
    }


def _counts(value: Any) -> dict[str, int]:
    """The entries of a name -> non-negative integer map (others left out)."""
    return {k: v for k, v in _numbers(value).items() if isinstance(v, int)}


async def probe_serve(
    endpoint: str, *, timeout_s: float = 5.0, attempts: int = 2, retry_after_s: float = 1.0
) -> ServeAnswer:
    """Ask the application at ``endpoint`` what it serves.

    Args:
        endpoint: Base URL of the Serve Service (``http://<name>-serve-svc.<ns>.svc:8000``).
        timeout_s: Seconds for connecting and for each answer.
        attempts: Tries before the answer counts as a failure (one slow answer does not turn
            a serving model un-Ready).
        retry_after_s: Seconds between tries.

    Returns:
        The first good answer, else the last failure; never raises for network or HTTP
        errors (they are the ``error``).
    """
    answer = ServeAnswer(ok=False, error="not asked")
    for attempt in range(max(1, attempts)):
        if attempt:
            await asyncio.sleep(retry_after_s)
        answer = await _ask(endpoint, timeout_s)
        if answer.ok:
            break
    return answer


async def _ask(endpoint: str, timeout_s: float) -> ServeAnswer:
    url = endpoint.rstrip("/") + STATS_ROUTE
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            resp = await client.get(url)
    except httpx.HTTPError as exc:
        return ServeAnswer(ok=False, error=f"GET {url}: {type(exc).__name__}: {exc}".rstrip(": "))
    if resp.status_code != 200:
        detail = resp.text[:200].replace("\n", " ")
        return ServeAnswer(ok=False, error=f"GET {url}: HTTP {resp.status_code}: {detail}")
    try:
        payload = resp.json()
    except ValueError:
        return ServeAnswer(ok=False, error=f"GET {url}: the answer is not JSON")
    answer = parse_stats(payload)
    if not answer.ok:
        return ServeAnswer(ok=False, error=f"GET {url}: {answer.error}")
    return answer


#: Serve application states that do not heal without a new config (``ray.serve.schema``).
FAILED_APPLICATION_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


def failed_applications(rayservice: Mapping[str, Any]) -> str | None:
    """Serve applications KubeRay reports failed, with their messages, or None.

    Args:
        rayservice: The RayService object.

    Returns:
        ``"application <name>: <STATUS>: <message>; ..."``, or None when none failed.
    """
    status = rayservice.get("status") or {}
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    failed = [
        f"application {name}: {(app or {}).get('status')}: {(app or {}).get('message') or ''}"
        for name, app in sorted(apps.items())
        if (app or {}).get("status") in FAILED_APPLICATION_STATES
    ]
    return "; ".join(f.rstrip(": ") for f in failed) or None


def applications_running(rayservice: Mapping[str, Any]) -> bool:
    """Whether KubeRay reports every Serve application of the RayService ``RUNNING``.

    Args:
        rayservice: The RayService object.

    Returns:
        True when ``status.activeServiceStatus.applicationStatuses`` is empty or absent (older
        KubeRay, nothing to wait for) or every application's ``status`` is ``RUNNING``.
    """
    status = rayservice.get("status") or {}
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    return all((app or {}).get("status") == "RUNNING" for app in apps.values())
