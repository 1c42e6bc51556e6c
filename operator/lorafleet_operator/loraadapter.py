"""LoraAdapter decisions: pure functions from what was observed to the status to write.

Nothing here calls the Kubernetes API; every input is an argument, so each reason and phase
transition is tested without a control plane (tests/operator/test_loraadapter_decisions.py).
:class:`lorafleet_operator.loraadapter_reconcile.LoraAdapterReconciler` reads the cluster,
calls these, and applies what they return.

A LoraAdapter goes Pending (its base is not installed) -> Installing -> Deploying (installed,
waiting for the serve config) -> Ready (its BaseModel's Serve app lists it), or Failed with
the installer's reason; deleting it goes through Deleting (out of the registry, then files).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from lorafleet_operator import conditions as cond
from lorafleet_operator.indexes import AdapterFacts, BaseFacts
from lorafleet_operator.install_job import (
    InstallObservation,
    failure_reason,
    install_failed,
    install_succeeded,
)
from lorafleet_operator.jobs import cluster_source_error
from lorafleet_operator.models import LORAADAPTER_KIND, LoraAdapterSpec, Phase
from lorafleet_operator.report import pod_path
from lorafleet_operator.serveconfig import adapter_entry
from lorafleet_operator.status_update import StatusUpdate, failed, invalid_spec

#: Installer reasons that mean "this adapter does not fit its base" (status.compatible false).
INCOMPATIBLE_REASONS = frozenset(
    {"TargetModulesNotFound", "BaseMismatch", "RankExceedsLimit", "NoAdapterWeightsApplied"}
)
#: Seconds a deletion may take before the finalizer is removed regardless (with a Warning).
DELETE_BOUND_S = 25.0

CleanupPlan = Literal["remove", "timeout", "keep"]


@dataclass(frozen=True)
class AdapterInstallStep:
    """The outcome of one look at the adapter's install.

    Attributes:
        update: The status to write.
        entry_args: Once installed, the arguments of its registry entry (path, rank, labels):
            :meth:`registry_entry` builds it after the status is written.
        requeue: Seconds until the next pass (``None``: wait to be woken).
    """

    update: StatusUpdate
    entry_args: tuple[str, int | None, Mapping[str, str] | None] | None
    requeue: float | None

    def registry_entry(self) -> dict[str, Any] | None:
        """The registry entry handed to the BaseModel, or ``None`` while not installed.

        Raises:
            lorafleet_operator.serveconfig.ServeConfigError: The report named no path or an
                invalid rank (the Installed status is written first, then this fails).
        """
        if self.entry_args is None:
            return None
        return adapter_entry(*self.entry_args)


def check_spec(spec: Mapping[str, Any] | None) -> LoraAdapterSpec | StatusUpdate:
    """The parsed spec, or ``InvalidSpec`` / ``UnsupportedSource`` (``file://`` in a cluster)."""
    try:
        parsed = LoraAdapterSpec.model_validate(spec or {})
    except ValidationError as exc:
        return invalid_spec(exc)
    unsupported = cluster_source_error(source_uri=parsed.source.uri)
    if unsupported:
        return failed("UnsupportedSource", unsupported)
    return parsed


def served_name_conflict(
    name: str, created: str, served: str, base: str, others: Iterable[AdapterFacts]
) -> StatusUpdate | None:
    """``ServedNameConflict`` when an older adapter of the same base serves the same name.

    Args:
        name: This adapter's name.
        created: Its creationTimestamp (RFC 3339).
        served: The name it would serve.
        base: Its BaseModel.
        others: The base's adapters (index), this one included.
    """
    for other in others:
        if (
            other.name != name
            and other.served_name == served
            and not other.deleting
            and (other.created, other.name) < (created, name)
        ):
            return failed(
                "ServedNameConflict",
                f"LoraAdapter {other.name!r} already serves the name {served!r} over "
                f"BaseModel {base!r}; set spec.servedName to another name",
            )
    return None


def base_not_ready(base: str, facts: BaseFacts | None, served: str) -> StatusUpdate | None:
    """``BaseModelNotReady`` (Pending) until the base exists, is installed and not deleting."""
    if facts is not None and facts.installed and not facts.deleting and facts.claim:
        return None
    why = (
        f"BaseModel {base!r} does not exist"
        if facts is None
        else f"BaseModel {base!r} is not installed yet (phase {facts.phase or 'Pending'})"
    )
    return StatusUpdate(
        {"phase": str(Phase.PENDING), "servedName": served, "message": f"BaseModelNotReady: {why}"},
        (
            (cond.INSTALLED, False, "BaseModelNotReady", why),
            (cond.READY, False, "BaseModelNotReady", why),
        ),
    )


def install_step(
    observed: InstallObservation,
    *,
    job_name: str,
    served: str,
    labels: Mapping[str, str] | None,
    base_path: str | None,
    progress: str | None,
    mount: str,
    namespace: str,
    name: str,
    poll_s: float,
) -> AdapterInstallStep:
    """What to write for the install Job's current state.

    Args:
        observed: The install Job's state and report.
        job_name: The Job installing the spec.
        served: The served name.
        labels: ``spec.labels`` (win over the report's).
        base_path: The base's install folder the adapter is validated against.
        progress: The running install's progress, if read.
        mount: Where Jobs and Ray Pods mount the volume.
        namespace: The adapter's namespace.
        name: The adapter's name.
        poll_s: Seconds between passes while the Job runs.

    Returns:
        Running: Installing. Failed: the installer's reason (``compatible: false`` for
        :data:`INCOMPATIBLE_REASONS`). Succeeded: Deploying with ``RegistryUpdatePending``
        and the registry entry for the base.
    """
    if observed.state == "running":
        update = StatusUpdate(
            {
                "phase": str(Phase.INSTALLING),
                "installJob": job_name,
                "servedName": served,
                "progress": progress or "0%",
                "message": observed.detail,
            },
            ((cond.INSTALLED, False, "Installing", observed.detail),),
        )
        return AdapterInstallStep(update, None, poll_s)
    report = install_succeeded(observed)
    if report is None:
        reason = failure_reason(observed)
        update = install_failed(
            observed,
            installJob=job_name,
            servedName=served,
            compatible=False if reason in INCOMPATIBLE_REASONS else None,
        )
        return AdapterInstallStep(update, None, None)
    path = pod_path(report.path, mount, namespace, LORAADAPTER_KIND, name)
    pending = "waiting for the serve config update"
    update = StatusUpdate(
        {
            "phase": str(Phase.DEPLOYING),
            "installJob": job_name,
            "servedName": served,
            "path": path,
            "resolvedRevision": report.resolved_revision,
            "sizeBytes": report.size_bytes,
            "progress": "100%",
            "rank": report.rank,
            "loraAlpha": report.lora_alpha,
            "targetModules": report.target_modules,
            "modulesToSave": report.modules_to_save,
            "labels": report.labels,
            "compatible": True,
            "basePath": base_path,
            "message": f"installed; {pending}",
        },
        (
            (cond.INSTALLED, True, report.reason or "Installed", report.message or "installed"),
            (cond.SERVING, False, "RegistryUpdatePending", pending),
            (cond.READY, False, "RegistryUpdatePending", pending),
        ),
    )
    entry_args = (path or "", report.rank or None, dict(labels or {}) or report.labels)
    return AdapterInstallStep(update, entry_args, None)


def removing_from_registry(base: str) -> StatusUpdate:
    """Deleting, while the BaseModel's serve config still lists the adapter."""
    return StatusUpdate(
        {"phase": str(Phase.DELETING)},
        ((cond.DELETING, True, "RemovingFromRegistry", f"removing from BaseModel {base}"),),
    )


def removing_files(detail: str) -> StatusUpdate:
    """Deleting, while the cleanup Job removes the adapter's files."""
    return StatusUpdate(
        {"phase": str(Phase.DELETING)}, ((cond.DELETING, True, "RemovingFiles", detail),)
    )


def must_wait_for_registry(in_registry: bool, base_going: bool) -> bool:
    """Whether deletion waits for the registry update (the base stays and still lists it)."""
    return in_registry and not base_going


def cleanup_plan(path: str | None, policy: str, claim: str | None, over_bound: bool) -> CleanupPlan:
    """What deletion does with the files: ``remove`` (``deletionPolicy: Delete``),
    ``timeout`` (the deletion took longer than :data:`DELETE_BOUND_S`: files stay, a
    Warning says so) or ``keep`` (``Retain``, nothing installed, or no claim known)."""
    if not path or policy != "Delete":
        return "keep"
    if over_bound:
        return "timeout"
    return "remove" if claim else "keep"
