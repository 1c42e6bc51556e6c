"""kopf handlers: only the decorators, wiring kopf's events to the reconcilers.

Shape of the control loop:

- one kopf **daemon** per BaseModel and per LoraAdapter runs a level-triggered reconcile pass
  (:class:`~lorafleet_operator.basemodel_reconcile.BaseModelReconciler`,
  :class:`~lorafleet_operator.loraadapter_reconcile.LoraAdapterReconciler`), then sleeps until
  woken (a spec change, its Job changed, its base got installed, an adapter changed) or until
  a poll interval passes while something is in flight;
- kopf **indexes** (:mod:`lorafleet_operator.indexes`) hold BaseModel -> facts and
  (namespace, baseModel) -> adapters, so no handler lists all adapters on an event;
- the adapter registry of a BaseModel is written only by that BaseModel's daemon, which waits
  ``debounce_s`` after a wake-up before writing, so many adapter changes become one
  ``serveConfigV2`` update;
- **deletion** handlers (kopf finalizers) remove an adapter from the registry, then its files
  (cleanup Job, ``deletionPolicy: Delete``), within ``DELETE_BOUND_S``; a BaseModel waits for
  its adapters and says which in ``status.blockedBy``.

Per-operator state lives in kopf's ``memo`` (:mod:`lorafleet_operator.operator_state`). Every
failure ends in a condition with a CamelCase reason and a Kubernetes Event; secrets never leave
the Secret (the Jobs reference them with ``secretKeyRef``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lorafleet_operator.basemodel_reconcile import BaseModelReconciler
from lorafleet_operator.indexes import (
    AdapterFacts,
    BaseFacts,
    Indexes,
    IndexKey,
    adapter_facts,
    base_facts,
)
from lorafleet_operator.jobs import KIND_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from lorafleet_operator.kubeapi import KubeApi, api_error_message
from lorafleet_operator.loraadapter_reconcile import LoraAdapterReconciler
from lorafleet_operator.models import (
    BASEMODEL_KIND,
    BASEMODEL_PLURAL,
    GROUP,
    LORAADAPTER_KIND,
    LORAADAPTER_PLURAL,
    VERSION,
    Phase,
)
from lorafleet_operator.operator_state import MEMO_KEY, OperatorState, state_of
from lorafleet_operator.rayservice import (
    RAY_GROUP,
    RAY_VERSION,
    RAYSERVICE_PLURAL,
    rayservice_readiness,
)
from lorafleet_operator.settings import settings_from_env
from lorafleet_operator.status_update import api_error, internal_error

#: Seconds an idle daemon sleeps before a safety re-check when nobody wakes it.
IDLE_RECHECK_S = 120.0
#: The types of the two index arguments (see INDEX_KWARGS).
BaseIndex = kopf.Index[IndexKey, BaseFacts]
AdapterIndex = kopf.Index[IndexKey, AdapterFacts]
#: Labels of the Jobs and RayServices this operator watches (the ones it made).
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}
#: kopf passes each index to every handler as a keyword argument named after the index
#: function; its callback protocols do not declare such arguments, so the handlers that take
#: them typed carry ``type: ignore[arg-type]`` on their decorator.
INDEX_KWARGS = ("basemodels_by_name", "adapters_by_base")


# --------------------------------------------------------------------------------- startup


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Read lorafleet settings, connect to the API, keep both in ``memo``; tune kopf."""
    memo[MEMO_KEY] = OperatorState(settings=settings_from_env(), api=KubeApi.connect())
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate kopf in-cluster (service account) or from ``KUBECONFIG`` read at start-up.

    kopf's default client-library login reads the kubeconfig path the ``kubernetes`` package
    captured when it was imported; this one reads the environment when the operator starts.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# --------------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, BASEMODEL_PLURAL)
def basemodels_by_name(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    **_: Any,
) -> dict[IndexKey, BaseFacts]:
    """Index BaseModel -> the facts adapters need (installed path, claim, max rank)."""
    return base_facts(namespace or "", name, spec, status, meta)


@kopf.index(GROUP, VERSION, LORAADAPTER_PLURAL)
def adapters_by_base(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    **_: Any,
) -> dict[tuple[str, Any], AdapterFacts]:
    """Index (namespace, baseModel) -> each adapter's registry entry and phase."""
    return adapter_facts(namespace or "", name, spec, status, meta)


# -------------------------------------------------------------------------------- daemons


async def _reconcile_forever(
    kind: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    state: OperatorState,
    indexes: Indexes,
) -> None:
    """Reconcile, sleep until woken or polled, repeat; every failure ends in a condition."""
    key = (kind, body["metadata"]["namespace"], body["metadata"]["name"])
    state.wakeups.event_for(key)
    debounce = state.settings.debounce_s if kind == BASEMODEL_KIND else 0.0
    failures = 0
    while not stopped:
        if body["metadata"].get("deletionTimestamp"):
            return
        reconciler = (
            BaseModelReconciler(body, state, indexes, logger)
            if kind == BASEMODEL_KIND
            else LoraAdapterReconciler(body, state, indexes, logger)
        )
        try:
            delay = await reconciler.reconcile()
            failures = 0
        except ApiException as exc:
            failures += 1
            detail = api_error_message(exc)
            logger.warning("reconcile failed: %s %s: %s", exc.status, exc.reason, detail)
            # The API is failing: if this write fails too, the next pass sets the condition.
            with contextlib.suppress(Exception):
                await reconciler.writer.apply(api_error(exc.status, exc.reason, detail))
            delay = min(60.0, 2.0 * failures)
        except Exception as exc:  # every error path ends in a condition, not only a log
            failures += 1
            logger.exception("reconcile failed")
            with contextlib.suppress(Exception):
                await reconciler.writer.apply(internal_error(exc))
            delay = min(60.0, 2.0 * failures)
        await state.wakeups.sleep(key, stopped, delay or IDLE_RECHECK_S, debounce)


@kopf.daemon(GROUP, VERSION, BASEMODEL_PLURAL, cancellation_timeout=5.0)  # type: ignore[arg-type]  # index kwargs: see INDEX_KWARGS
async def basemodel_daemon(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    memo: kopf.Memo,
    basemodels_by_name: BaseIndex,
    adapters_by_base: AdapterIndex,
    **_: Any,
) -> None:
    """Keep a BaseModel reconciled: volume, install Job, RayService, status."""
    indexes = Indexes(basemodels_by_name, adapters_by_base)
    await _reconcile_forever(BASEMODEL_KIND, body, stopped, logger, state_of(memo), indexes)


@kopf.daemon(GROUP, VERSION, LORAADAPTER_PLURAL, cancellation_timeout=5.0)  # type: ignore[arg-type]  # index kwargs: see INDEX_KWARGS
async def adapter_daemon(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    memo: kopf.Memo,
    basemodels_by_name: BaseIndex,
    adapters_by_base: AdapterIndex,
    **_: Any,
) -> None:
    """Keep a LoraAdapter reconciled: wait for its base, install Job, registry hint."""
    indexes = Indexes(basemodels_by_name, adapters_by_base)
    await _reconcile_forever(LORAADAPTER_KIND, body, stopped, logger, state_of(memo), indexes)


# ------------------------------------------------------------------------ wake-up events


@kopf.on.event(GROUP, VERSION, BASEMODEL_PLURAL)  # type: ignore[arg-type]  # index kwargs: see INDEX_KWARGS
def basemodel_event(
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    adapters_by_base: AdapterIndex,
    **_: Any,
) -> None:
    """Wake a BaseModel's daemon when its spec changed (new generation), and its adapters
    when its installed path changed: an adapter waiting for its base reads the index, which
    this event has just updated (a wake-up at the base's own status write could come first)."""
    namespace = namespace or ""  # kopf passes it for namespaced resources
    state = state_of(memo)
    key = (BASEMODEL_KIND, namespace, name)
    if state.generations.get(key) != meta.get("generation"):
        state.generations[key] = meta.get("generation")
        state.wakeups.wake(*key)
    path = status.get("path")
    if state.base_paths.get((namespace, name)) != path:
        state.base_paths[(namespace, name)] = path
        for adapter in Indexes(None, adapters_by_base).adapters(namespace, name):
            state.wakeups.wake(LORAADAPTER_KIND, namespace, adapter.name)


@kopf.on.event(GROUP, VERSION, LORAADAPTER_PLURAL)
def adapter_event(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Wake an adapter's daemon on a spec change; wake its base when its entry may change."""
    namespace = namespace or ""  # kopf passes it for namespaced resources
    state = state_of(memo)
    key = (LORAADAPTER_KIND, namespace, name)
    if state.generations.get(key) != meta.get("generation"):
        state.generations[key] = meta.get("generation")
        state.wakeups.wake(*key)
    if status.get("phase") == Phase.DEPLOYING or meta.get("deletionTimestamp"):
        state.wakeups.wake(BASEMODEL_KIND, namespace, spec.get("baseModel", ""))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def job_event(namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, **_: Any) -> None:
    """Wake the owner of an install Job when the Job changes."""
    namespace = namespace or ""  # kopf passes it for namespaced resources
    kind = {"basemodel": BASEMODEL_KIND, "loraadapter": LORAADAPTER_KIND}.get(
        labels.get(KIND_LABEL, "")
    )
    if kind and labels.get(NAME_LABEL):
        state_of(memo).wakeups.wake(kind, namespace, labels[NAME_LABEL])


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYSERVICE_PLURAL, labels=MANAGED)
def rayservice_event(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Wake the owning BaseModel when KubeRay changes its RayService's readiness."""
    namespace = namespace or ""  # kopf passes it for namespaced resources
    owner = labels.get(NAME_LABEL)
    if not owner:
        return
    state = state_of(memo)
    signature = (
        rayservice_readiness(body)[0],
        (body.get("status") or {}).get("observedGeneration"),
        body.get("metadata", {}).get("generation"),
    )
    if state.rayservice_seen.get((namespace, owner)) == signature:
        return
    state.rayservice_seen[(namespace, owner)] = signature
    state.wakeups.wake(BASEMODEL_KIND, namespace, owner)


# ------------------------------------------------------------------------------ deletion


@kopf.on.delete(GROUP, VERSION, LORAADAPTER_PLURAL)  # type: ignore[arg-type]  # index kwargs: see INDEX_KWARGS
async def adapter_deleted(
    body: kopf.Body,
    runtime: datetime.timedelta,
    logger: kopf.Logger,
    memo: kopf.Memo,
    basemodels_by_name: BaseIndex,
    adapters_by_base: AdapterIndex,
    **_: Any,
) -> None:
    """Remove the adapter from the registry, then its files (per deletionPolicy), then go."""
    indexes = Indexes(basemodels_by_name, adapters_by_base)
    reconciler = LoraAdapterReconciler(body, state_of(memo), indexes, logger)
    await reconciler.delete(runtime.total_seconds())


@kopf.on.delete(GROUP, VERSION, BASEMODEL_PLURAL)  # type: ignore[arg-type]  # index kwargs: see INDEX_KWARGS
async def basemodel_deleted(
    body: kopf.Body,
    logger: kopf.Logger,
    memo: kopf.Memo,
    basemodels_by_name: BaseIndex,
    adapters_by_base: AdapterIndex,
    **_: Any,
) -> None:
    """Wait until no LoraAdapter points at the BaseModel, then delete its RayService."""
    indexes = Indexes(basemodels_by_name, adapters_by_base)
    await BaseModelReconciler(body, state_of(memo), indexes, logger).delete()
