"""LoraAdapter executor: reads the cluster, asks :mod:`lorafleet_operator.loraadapter`, applies.

One :meth:`LoraAdapterReconciler.reconcile` pass: wait for the base, run the install Job, and
hand the installed entry to the BaseModel's daemon (a registry hint, then a wake-up: only the
BaseModel writes its RayService). :meth:`LoraAdapterReconciler.delete` is the finalizer's
work: out of the registry, then the files (per ``deletionPolicy``), within
:data:`~lorafleet_operator.loraadapter.DELETE_BOUND_S`.
"""

from __future__ import annotations

import kopf

from lorafleet_operator import loraadapter, metrics
from lorafleet_operator.install_job import InstallObservation, is_installed
from lorafleet_operator.jobs import (
    KIND_LABEL,
    NAME_LABEL,
    ROLE_LABEL,
    build_adapter_install_job,
    build_cleanup_job,
)
from lorafleet_operator.models import BASEMODEL_KIND, LORAADAPTER_KIND
from lorafleet_operator.rayservice import rayservice_name
from lorafleet_operator.reconciler import Reconciler
from lorafleet_operator.serveconfig import registry_of
from lorafleet_operator.status_update import StatusUpdate


class LoraAdapterReconciler(Reconciler):
    """One reconcile pass (or the deletion) of one LoraAdapter."""

    KIND = LORAADAPTER_KIND

    async def reconcile(self) -> float | None:
        """One pass. Returns seconds until the next poll, or ``None`` to idle until woken.

        Raises:
            kubernetes.client.rest.ApiException: An API call failed (the daemon records it).
        """
        metrics.RECONCILES.labels(LORAADAPTER_KIND).inc()
        checked = loraadapter.check_spec(self.writer.body.get("spec"))
        if isinstance(checked, StatusUpdate):
            await self.writer.apply(checked)
            return None
        spec = checked
        served = spec.served_name or self.name
        blocked = loraadapter.served_name_conflict(
            self.name,
            self.writer.meta.get("creationTimestamp") or "",
            served,
            spec.base_model,
            self.indexes.adapters(self.namespace, spec.base_model),
        ) or loraadapter.base_not_ready(
            spec.base_model, self.indexes.base(self.namespace, spec.base_model), served
        )
        if blocked is not None:
            await self.writer.apply(blocked)
            return None
        base = self.indexes.base(self.namespace, spec.base_model)
        assert base is not None and base.claim and base.path  # base_not_ready checked them
        job = build_adapter_install_job(
            self.writer.body,
            spec,
            claim_name=base.claim,
            base_path=base.path,
            base_source=base.source_uri,
            max_rank=base.max_rank,
            settings=self.settings,
        )
        job_name = job["metadata"]["name"]
        if is_installed(self.writer.status, job_name):
            return None
        observed, progress = await self.observe_install(job)
        step = loraadapter.install_step(
            observed,
            job_name=job_name,
            served=served,
            labels=spec.labels,
            base_path=base.path,
            progress=progress,
            mount=self.settings.models_mount,
            namespace=self.namespace,
            name=self.name,
            poll_s=self.settings.poll_interval_s,
        )
        await self.writer.apply(step.update)
        entry = step.registry_entry()
        if entry is not None:
            self.state.hints[(self.namespace, spec.base_model)][served] = entry
            self.state.wakeups.wake(BASEMODEL_KIND, self.namespace, spec.base_model)
        return step.requeue

    async def delete(self, elapsed_s: float) -> None:
        """The finalizer: out of the registry, then the files, then let go.

        Args:
            elapsed_s: Seconds since the deletion started (kopf's ``runtime``).

        Raises:
            kopf.TemporaryError: Still waiting for the registry update or the cleanup Job.
        """
        body = self.writer.body
        spec, status = body.get("spec") or {}, body.get("status") or {}
        base = spec.get("baseModel", "")
        served = spec.get("servedName") or self.name
        over_bound = elapsed_s > loraadapter.DELETE_BOUND_S
        self.state.hints[(self.namespace, base)][served] = None
        self.state.wakeups.wake(BASEMODEL_KIND, self.namespace, base)
        await self.api.delete_jobs(
            self.namespace,
            f"{KIND_LABEL}={LORAADAPTER_KIND.lower()},{NAME_LABEL}={self.name},{ROLE_LABEL}=install",
        )
        rs = await self.api.get_rayservice(self.namespace, rayservice_name(base))
        facts = self.indexes.base(self.namespace, base)
        base_going = facts is None or facts.deleting
        in_registry = rs is not None and served in registry_of(
            (rs.get("spec") or {}).get("serveConfigV2")
        )
        if loraadapter.must_wait_for_registry(in_registry, base_going):
            if not over_bound:
                await self.writer.apply(loraadapter.removing_from_registry(base))
                raise kopf.TemporaryError("waiting for the serve config update", delay=1)
            self.writer.warn(reason="DeletionTimeout", message="still in the serve config registry")
        path = status.get("path")
        claim = (facts.claim if facts else None) or status.get("claimName")
        plan = loraadapter.cleanup_plan(
            path, spec.get("deletionPolicy", "Delete"), claim, over_bound
        )
        if plan == "remove":
            await self._remove_files(str(path), str(claim))
        elif plan == "timeout":
            self.writer.warn(reason="DeletionTimeout", message=f"files at {path} were not removed")
        self.state.hints[(self.namespace, base)].pop(served, None)
        self.state.forget(LORAADAPTER_KIND, self.namespace, self.name)
        self.logger.info("adapter %s removed", self.name)

    async def _remove_files(self, path: str, claim: str) -> None:
        """Run the cleanup Job; a failed cleanup is a Warning, not a stuck deletion.

        Raises:
            kopf.TemporaryError: The cleanup Job is still running.
        """
        body = self.writer.body
        try:
            job = build_cleanup_job(
                LORAADAPTER_KIND, body, path=path, claim_name=claim, settings=self.settings
            )
        except ValueError as exc:
            self.writer.warn(reason="CleanupRefused", message=str(exc))
            return
        observed: InstallObservation = await self.jobs.observe(self.namespace, job, self.logger)
        if observed.state == "running":
            await self.writer.apply(loraadapter.removing_files(observed.detail))
            raise kopf.TemporaryError(observed.detail, delay=1)
        self.state.job_created.pop((self.namespace, job["metadata"]["name"]), None)
        report = observed.report
        if observed.state == "failed" or (report is not None and not report.ok):
            message = report.message if report else observed.detail
            self.writer.warn(reason="CleanupFailed", message=message[:1000])
