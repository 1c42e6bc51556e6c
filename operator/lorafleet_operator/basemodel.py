"""BaseModel decisions: pure functions from what was observed to the status to write.

Nothing here calls the Kubernetes API or reads a clock; every input is an argument, so each
reason and phase transition is tested without a control plane (tests/operator/
test_basemodel_decisions.py). :class:`lorafleet_operator.basemodel_reconcile.BaseModelReconciler`
reads the cluster, calls these, and applies what they return.

A BaseModel goes Pending -> Installing -> Installed -> Deploying -> Ready (or Failed with a
reason); while a new revision installs or rolls out, a model that serves stays Ready.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lorafleet_operator import conditions as cond
from lorafleet_operator.indexes import AdapterFacts
from lorafleet_operator.install_job import InstallObservation, install_failed, install_succeeded
from lorafleet_operator.jobs import cluster_source_error
from lorafleet_operator.models import BASEMODEL_KIND, BaseModelSpec, Phase
from lorafleet_operator.rayservice import rayservice_name_error, rayservice_readiness
from lorafleet_operator.report import pod_path
from lorafleet_operator.serveconfig import registry_of
from lorafleet_operator.serveprobe import ServeAnswer, applications_running, failed_applications
from lorafleet_operator.status_update import StatusUpdate, failed, invalid_spec

#: Annotation on the RayService: hash of the rayClusterConfig last written.
CLUSTER_HASH_ANNOTATION = "lorafleet.io/cluster-config-hash"


@dataclass(frozen=True)
class InstallStep:
    """The outcome of one look at the install.

    Attributes:
        update: The status to write.
        done: The revision is installed: go on to deploy.
        requeue: Seconds until the next pass when not done (``None``: wait to be woken).
    """

    update: StatusUpdate
    done: bool
    requeue: float | None


@dataclass(frozen=True)
class RayServicePlan:
    """How to bring an existing RayService to the desired one.

    Attributes:
        patch: Merge patch to send (empty: nothing to change).
        defer_s: Seconds a registry-only change waits so bursts become one write.
        rolled: The serve args or the cluster changed: a new deploy starts.
        registry_write: The patch is a registry-only write (its time is remembered).
    """

    patch: dict[str, Any]
    defer_s: float | None
    rolled: bool
    registry_write: bool


@dataclass(frozen=True)
class Readiness:
    """Whether the RayService serves what this BaseModel wants, and why not.

    Attributes:
        ready: It serves (KubeRay Ready, no failed application, the app answers).
        reason: CamelCase reason when not ready.
        message: Details when not ready.
        applied: KubeRay applied the RayService generation holding this config and the app
            serves the current base folder.
        answered: Served names the app lists (the registry's names without a probe).
    """

    ready: bool
    reason: str
    message: str
    applied: bool
    answered: frozenset[str]


def check_spec(name: str, spec: Mapping[str, Any] | None) -> BaseModelSpec | StatusUpdate:
    """The parsed spec, or the failure that stops reconciling it.

    Reasons: ``InvalidSpec`` (schema), ``UnsupportedSource`` (``file://`` in a cluster),
    ``InvalidName`` (KubeRay would refuse the RayService name).
    """
    try:
        parsed = BaseModelSpec.model_validate(spec or {})
    except ValidationError as exc:
        return invalid_spec(exc)
    unsupported = cluster_source_error(
        source_uri=parsed.source.uri,
        checkpoint_uri=parsed.checkpoint.uri if parsed.checkpoint else None,
    )
    if unsupported:
        return failed("UnsupportedSource", unsupported)
    bad_name = rayservice_name_error(name)
    if bad_name:
        return failed("InvalidName", bad_name)
    return parsed


def volume_not_found(claim: str, namespace: str) -> StatusUpdate:
    """``VolumeNotFound``: the named claim does not exist (Pending: it may be created)."""
    return failed(
        "VolumeNotFound",
        f"PersistentVolumeClaim {claim!r} does not exist in namespace {namespace}",
        phase=Phase.PENDING,
    )


def serves_previous(status: Mapping[str, Any]) -> bool:
    """Whether a revision already serves (Ready with a served path): it stays Ready."""
    return bool(status.get("servedPath")) and status.get("phase") == Phase.READY


def install_step(
    status: Mapping[str, Any],
    observed: InstallObservation,
    *,
    job_name: str,
    claim: str,
    progress: str | None,
    mount: str,
    namespace: str,
    name: str,
    poll_s: float,
) -> InstallStep:
    """What to write for the install Job's current state.

    Args:
        status: The BaseModel's status.
        observed: The install Job's state and report.
        job_name: The Job installing the spec's revision.
        claim: The claim holding the files.
        progress: The running install's progress, if read.
        mount: Where Jobs and Ray Pods mount the volume.
        namespace: The BaseModel's namespace.
        name: The BaseModel's name.
        poll_s: Seconds between passes while the Job runs.

    Returns:
        Running: Installing (or still Ready while a new revision installs), poll again.
        Failed: the installer's reason (``InstallFailed`` without a report), Failed.
        Succeeded: Installed (or Ready while rolling), ``done``.
    """
    serving_old = serves_previous(status)
    if observed.state == "running":
        conditions = (
            () if serving_old else ((cond.INSTALLED, False, "Installing", observed.detail),)
        )
        # installJob names the Job whose files status.path holds: it changes only when the
        # new revision is installed (the detail message names the running Job).
        fields = {
            "phase": str(Phase.READY if serving_old else Phase.INSTALLING),
            "installJob": status.get("installJob") if serving_old else job_name,
            "claimName": claim,
            "progress": progress or status.get("progress") or "0%",
            "message": observed.detail,
        }
        return InstallStep(StatusUpdate(fields, conditions), done=False, requeue=poll_s)
    report = install_succeeded(observed)
    if report is None:
        update = install_failed(observed, installJob=job_name, claimName=claim)
        return InstallStep(update, done=False, requeue=None)
    fields = {
        # A model serving the previous revision stays Ready while it rolls.
        "phase": str(Phase.READY if serving_old else Phase.INSTALLED),
        "installJob": job_name,
        "claimName": claim,
        "path": pod_path(report.path, mount, namespace, BASEMODEL_KIND, name),
        "resolvedRevision": report.resolved_revision,
        "sizeBytes": report.size_bytes,
        "architecture": report.architecture,
        "progress": "100%",
        "message": report.message or "installed",
        "labels": report.labels,
    }
    installed = (cond.INSTALLED, True, report.reason or "Installed", report.message or "installed")
    return InstallStep(StatusUpdate(fields, (installed,)), done=True, requeue=None)


def cluster_config_hash(rayservice: Mapping[str, Any]) -> str:
    """Hash of a RayService's ``spec.rayClusterConfig`` (a change means a cluster roll)."""
    config = rayservice["spec"]["rayClusterConfig"]
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def plan_rayservice(
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    registry: Mapping[str, Any],
    *,
    since_registry_write_s: float,
    registry_write_interval_s: float,
) -> RayServicePlan:
    """The patch that brings ``current`` to ``desired``.

    A change of the serve args (base folder, settings) or of the cluster is patched at once;
    a change of the adapter registry alone waits until ``registry_write_interval_s`` passed
    since the last registry write, so a burst of adapter changes becomes one
    ``serveConfigV2`` update (an in-place ``user_config`` change for Serve).

    Args:
        current: The RayService as read.
        desired: The RayService to have (its annotations hold the cluster hash).
        registry: The registry ``desired``'s serve config holds.
        since_registry_write_s: Seconds since the last registry-only write.
        registry_write_interval_s: Minimum seconds between registry-only writes.
    """
    patch: dict[str, Any] = {}
    defer_s: float | None = None
    rolled = registry_write = False
    config_yaml = desired["spec"]["serveConfigV2"]
    current_yaml = (current.get("spec") or {}).get("serveConfigV2")
    if current_yaml != config_yaml:
        if registry_of(current_yaml) == registry:
            rolled = True  # the args changed: a roll
            patch.setdefault("spec", {})["serveConfigV2"] = config_yaml
        elif since_registry_write_s < registry_write_interval_s:
            defer_s = registry_write_interval_s - since_registry_write_s
        else:
            patch.setdefault("spec", {})["serveConfigV2"] = config_yaml
            registry_write = True
    cluster_hash = desired["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    if annotations.get(CLUSTER_HASH_ANNOTATION) != cluster_hash:
        patch.setdefault("spec", {})["rayClusterConfig"] = desired["spec"]["rayClusterConfig"]
        patch["metadata"] = {"annotations": {CLUSTER_HASH_ANNOTATION: cluster_hash}}
        rolled = True
    return RayServicePlan(patch, defer_s, rolled, registry_write)


def rayservice_state(
    rayservice: Mapping[str, Any], path: str, registry: Collection[str]
) -> Readiness:
    """Readiness from the RayService alone (before asking the app itself).

    KubeRay's Ready says the Serve Service has endpoints; a failed or unhealthy application
    (``ApplicationFailed``) is not served even then. ``applied`` needs KubeRay to have
    observed the RayService generation holding the config and every application RUNNING.
    """
    ready, reason, message = rayservice_readiness(rayservice)
    generation = (rayservice.get("metadata") or {}).get("generation")
    observed = (rayservice.get("status") or {}).get("observedGeneration")
    applied = generation is None or observed is None or observed >= generation
    applied = applied and applications_running(rayservice)
    failed_apps = failed_applications(rayservice)
    if ready and failed_apps:
        # KubeRay keeps Ready while a new config fails to deploy; it does not serve it.
        ready, reason, message = False, "ApplicationFailed", failed_apps
    return Readiness(ready, reason, message, applied, frozenset(registry))


def with_answer(readiness: Readiness, answer: ServeAnswer, path: str) -> Readiness:
    """Readiness after asking the Serve app (``GET /stats``): Ready means served.

    ``ServeNotAnswering`` when it does not answer; not ``applied`` while it still serves
    another base folder (the previous revision).
    """
    if not answer.ok:
        return Readiness(
            ready=False,
            reason="ServeNotAnswering",
            message=answer.error or "",
            applied=readiness.applied,
            answered=answer.adapters,
        )
    applied = readiness.applied
    if answer.base_path is not None and answer.base_path != path:
        applied = False  # the previous revision still answers
    return Readiness(True, readiness.reason, readiness.message, applied, answer.adapters)


def ready_update(
    readiness: Readiness,
    status: Mapping[str, Any],
    *,
    path: str,
    registry_size: int,
    endpoint: str,
    rayservice: str,
    probed: bool,
) -> StatusUpdate:
    """Ready: served; ``servedPath`` moves only once the config naming ``path`` is applied."""
    applied = readiness.applied
    serving_message = f"RayService {rayservice} serves {registry_size} adapter(s)" + (
        f" at {endpoint}" if probed else ""
    )
    fields = {
        "phase": str(Phase.READY),
        "endpoint": endpoint,
        "adapters": registry_size,
        "servedPath": path if applied else status.get("servedPath"),
        "servedRevision": status.get("resolvedRevision")
        if applied
        else status.get("servedRevision"),
        "rayService": rayservice,
        "message": "serving",
    }
    return StatusUpdate(
        fields,
        (
            (
                cond.SERVING,
                True,
                "ServeAnswering" if probed else "RayServiceReady",
                serving_message,
            ),
            (cond.READY, True, "Ready", "installed and serving"),
            (cond.DEGRADED, False, "RayServiceReady", "serving"),
        ),
    )


def not_ready_update(
    readiness: Readiness,
    *,
    pod_problems: str | None,
    waited_s: float,
    ready_timeout_s: float,
    registry_size: int,
    endpoint: str,
    rayservice: str,
) -> StatusUpdate:
    """Deploying with the reason it does not serve; Degraded after ``ready_timeout_s``.

    What stops the Ray Pods (image pulls, crash loops, scheduling) is on the Pods, not in
    KubeRay's status: when they have a problem, the reason is ``RayPodsNotRunning``.
    """
    reason, message = readiness.reason, readiness.message
    if pod_problems:
        reason, message = "RayPodsNotRunning", pod_problems
    updates: list[tuple[str, bool, str, str]] = [(cond.SERVING, False, reason, message)]
    timed_out = waited_s > ready_timeout_s
    if timed_out:
        updates.append(
            (
                cond.DEGRADED,
                True,
                "ReadyTimeout",
                f"RayService {rayservice} not ready within "
                f"{ready_timeout_s:.0f}s: {reason}: {message}",
            )
        )
        updates.append((cond.READY, False, "Degraded", f"RayService not ready: {reason}"))
    else:
        updates.append((cond.READY, False, reason, message))
    fields = {
        "phase": str(Phase.DEPLOYING),
        "endpoint": endpoint,
        "rayService": rayservice,
        "adapters": registry_size,
        "message": f"{reason}: {message}",
    }
    return StatusUpdate(fields, tuple(updates), failure="ReadyTimeout" if timed_out else None)


def requeue_after_ready(
    readiness: Readiness, registry: Collection[str], poll_s: float
) -> float | None:
    """Poll again while the config is not applied or the app lists fewer adapters."""
    if not readiness.applied:
        return poll_s
    return poll_s if set(registry) - readiness.answered else None


def adapters_to_mark_ready(
    adapters: Iterable[AdapterFacts],
    registry: Mapping[str, Any],
    answered: Collection[str],
    written: Mapping[str, Mapping[str, Any]],
) -> list[AdapterFacts]:
    """Adapters that are served now and not yet Ready.

    Args:
        adapters: The BaseModel's adapters (index).
        registry: The registry the ready RayService holds (served name -> entry).
        answered: Served names the Serve app lists.
        written: Adapter name -> the status this operator last wrote for it.

    Returns:
        Adapters in the registry with their own entry (not an older one under the same
        name), listed by the app, not deleting, and not Ready already.
    """
    out = []
    for adapter in adapters:
        name = adapter.served_name
        if adapter.deleting or name not in registry or name not in answered:
            continue
        if adapter.entry is not None and registry[name] != adapter.entry:
            continue
        current = written.get(adapter.name) or {}
        if adapter.phase == Phase.READY and current.get("phase") in (None, Phase.READY):
            continue
        out.append(adapter)
    return out


def adapter_served(base: str) -> StatusUpdate:
    """The status of an adapter the BaseModel's Serve app now serves: Ready."""
    return StatusUpdate(
        {"phase": str(Phase.READY), "message": "serving"},
        (
            (cond.SERVING, True, "InRegistry", f"served by BaseModel {base}"),
            (cond.READY, True, "Ready", "installed and serving"),
        ),
    )


def deletion_blocked(adapters: Iterable[str]) -> StatusUpdate | None:
    """``AdaptersRemain`` while LoraAdapters still point at the BaseModel, else ``None``."""
    names = sorted(adapters)
    if not names:
        return None
    message = f"waiting for {len(names)} LoraAdapter(s) to be deleted: {', '.join(names[:20])}"
    return StatusUpdate(
        {"phase": str(Phase.DELETING), "blockedBy": names, "message": message},
        ((cond.DELETING, False, "AdaptersRemain", message),),
    )
