"""BaseModel executor: reads the cluster, asks :mod:`lorafleet_operator.basemodel`, applies.

One :meth:`BaseModelReconciler.reconcile` pass: volume, install Job, RayService (created, or
patched by :func:`~lorafleet_operator.basemodel.plan_rayservice`), the NetworkPolicy, then
readiness mirrored into the status (asking the Serve app itself when the probe is on) and
adapters marked Ready once the app lists them. :meth:`BaseModelReconciler.delete` is the
finalizer's work.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

import kopf

from lorafleet_operator import basemodel, metrics, serving_status
from lorafleet_operator.indexes import AdapterFacts, desired_registry
from lorafleet_operator.install_job import is_installed
from lorafleet_operator.jobs import (
    KIND_LABEL,
    NAME_LABEL,
    ROLE_LABEL,
    build_base_install_job,
    build_cleanup_job,
)
from lorafleet_operator.models import (
    BASEMODEL_KIND,
    GROUP,
    LORAADAPTER_KIND,
    VERSION,
    BaseModelSpec,
)
from lorafleet_operator.networkpolicy import build_network_policy
from lorafleet_operator.rayservice import (
    build_rayservice,
    probe_endpoint,
    ray_pod_labels,
    ray_pod_problems,
    rayservice_name,
    serve_endpoint,
)
from lorafleet_operator.reconciler import Reconciler
from lorafleet_operator.serveconfig import build_serve_config, dump_serve_config
from lorafleet_operator.serveprobe import ServeAnswer, probe_serve
from lorafleet_operator.serving_status import desired_replicas
from lorafleet_operator.status_update import StatusUpdate
from lorafleet_operator.status_writer import StatusWriter
from lorafleet_operator.volumes import build_claim, claim_name_for


class BaseModelReconciler(Reconciler):
    """One reconcile pass (or the deletion) of one BaseModel."""

    KIND = BASEMODEL_KIND

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, name)``: the BaseModel's key in the operator's per-base state."""
        return (self.namespace, self.name)

    async def reconcile(self) -> float | None:
        """One pass. Returns seconds until the next poll, or ``None`` to idle until woken.

        Raises:
            kubernetes.client.rest.ApiException: An API call failed (the daemon records it).
        """
        metrics.RECONCILES.labels(BASEMODEL_KIND).inc()
        checked = basemodel.check_spec(self.name, self.writer.body.get("spec"))
        if isinstance(checked, StatusUpdate):
            await self.writer.apply(checked)
            return None
        spec = checked
        claim = claim_name_for(self.name, spec, self.settings)
        if not await self._ensure_volume(spec, claim):
            await self.writer.apply(basemodel.volume_not_found(claim, self.namespace))
            return self.settings.poll_interval_s * 5
        job = build_base_install_job(self.writer.body, spec, claim, self.settings)
        job_name = job["metadata"]["name"]
        if not is_installed(self.status, job_name):
            observed, progress = await self.observe_install(job)
            step = basemodel.install_step(
                self.status,
                observed,
                job_name=job_name,
                claim=claim,
                progress=progress,
                mount=self.settings.models_mount,
                namespace=self.namespace,
                name=self.name,
                poll_s=self.settings.poll_interval_s,
            )
            await self.writer.apply(step.update)
            if not step.done:
                return step.requeue
            for adapter in self.indexes.adapters(self.namespace, self.name):
                self.state.wakeups.wake(LORAADAPTER_KIND, self.namespace, adapter.name)
        return await self.deploy(spec, claim)

    async def _ensure_volume(self, spec: BaseModelSpec, claim: str) -> bool:
        """Create the claim lorafleet owns, or check a named one exists."""
        manifest = build_claim(self.writer.body, spec, self.settings)
        if manifest is not None:
            await self.api.create_claim(self.namespace, manifest)
            return True
        return await self.api.claim_exists(self.namespace, claim)

    async def deploy(self, spec: BaseModelSpec, claim: str) -> float | None:
        """Create or update the RayService and mirror its readiness into the status."""
        path = self.status["path"]
        registry = desired_registry(
            self.indexes.adapters(self.namespace, self.name), self.state.hints.get(self.key, {})
        )
        config = build_serve_config(
            self.name, path, spec, registry, labels=self.status.get("labels") or None
        )
        desired = build_rayservice(
            self.writer.body,
            spec,
            serve_config_yaml=dump_serve_config(config),
            claim_name=claim,
            settings=self.settings,
        )
        desired["metadata"]["annotations"] = {
            basemodel.CLUSTER_HASH_ANNOTATION: basemodel.cluster_config_hash(desired)
        }
        rs = await self.api.get_rayservice(self.namespace, rayservice_name(self.name))
        await self._ensure_network_policy()
        if rs is None:
            rs = await self._create(desired)
        else:
            plan = basemodel.plan_rayservice(
                rs,
                desired,
                registry,
                since_registry_write_s=time.monotonic()
                - self.state.registry_writes.get(self.key, 0.0),
                registry_write_interval_s=self.settings.registry_write_interval_s,
            )
            if plan.defer_s is not None and not plan.patch:
                return plan.defer_s
            rs = await self._patch(rs, plan)
        metrics.ADAPTERS_SERVED.labels(self.namespace, self.name).set(len(registry))
        self.state.deploy_started.setdefault(self.key, time.monotonic())
        return await self.mirror_readiness(rs, path, registry, claim, desired_replicas(spec))

    async def _ensure_network_policy(self) -> None:
        """Once per operator run (so an upgrade, a settings change or a failed create takes
        effect): create the BaseModel's NetworkPolicy, or bring an existing one's rules up to
        date. One deleted by hand comes back at the next restart."""
        if not self.settings.network_policy or self.key in self.state.network_policies:
            return
        await self.api.apply_network_policy(
            self.namespace, build_network_policy(self.writer.body, self.settings)
        )
        self.state.network_policies.add(self.key)

    async def _create(self, desired: Mapping[str, Any]) -> dict[str, Any]:
        """Create the RayService; warn when the cluster's CRD dropped ``authOptions``."""
        rs = await self.api.create_rayservice(self.namespace, desired)
        metrics.SERVE_CONFIG_WRITES.labels(self.namespace, self.name).inc()
        self.state.deploy_started[self.key] = time.monotonic()
        rs_name = desired["metadata"]["name"]
        self.logger.info("created RayService %s", rs_name)
        if "authOptions" not in ((rs.get("spec") or {}).get("rayClusterConfig") or {}):
            # The RayService CRD is older than KubeRay 1.5 and pruned the field: Ray runs
            # without token auth. Said once, where the user looks.
            self.writer.warn(
                reason="RayAuthDropped",
                message=f"RayService {rs_name}: the cluster's RayService CRD dropped"
                " rayClusterConfig.authOptions (KubeRay < 1.5): Ray runs without token"
                " auth; upgrade KubeRay to 1.5 or newer",
            )
        return rs

    async def _patch(self, rs: dict[str, Any], plan: basemodel.RayServicePlan) -> dict[str, Any]:
        """Apply a :class:`~lorafleet_operator.basemodel.RayServicePlan`."""
        now = time.monotonic()
        if plan.rolled:
            self.state.deploy_started[self.key] = now
        if plan.registry_write:
            self.state.registry_writes[self.key] = now
        if not plan.patch:
            return rs
        rs = await self.api.patch_rayservice(self.namespace, rayservice_name(self.name), plan.patch)
        if "serveConfigV2" in plan.patch.get("spec", {}):
            metrics.SERVE_CONFIG_WRITES.labels(self.namespace, self.name).inc()
        return rs

    async def mirror_readiness(
        self,
        rs: Mapping[str, Any],
        path: str,
        registry: Mapping[str, Any],
        claim: str,
        desired: int | None = None,
    ) -> float | None:
        """Write Ready (the app answers) or Deploying with why not; after Ready, mark the
        adapters the app lists Ready, remove the previous revision's files and write where
        adapters are resident (``status.serving``; ``desired``: the replicas asked for)."""
        rs_name = rayservice_name(self.name)
        endpoint = serve_endpoint(self.name, self.namespace, self.settings)
        readiness = basemodel.rayservice_state(rs, path, registry)
        probed = self.settings.serving_probe
        answer: ServeAnswer | None = None
        if readiness.ready and probed:
            answer = await probe_serve(probe_endpoint(self.name, self.namespace, self.settings))
            readiness = basemodel.with_answer(readiness, answer, path)
        if not readiness.ready:
            waited = time.monotonic() - self.state.deploy_started[self.key]
            pods = await self.api.list_pods(
                self.namespace, ",".join(f"{k}={v}" for k, v in ray_pod_labels(self.name).items())
            )
            update = basemodel.not_ready_update(
                readiness,
                pod_problems=ray_pod_problems(pods),
                waited_s=waited,
                ready_timeout_s=self.settings.ready_timeout_s,
                registry_size=len(registry),
                endpoint=endpoint,
                rayservice=rs_name,
            )
            await self.writer.apply(update)
            await self.writer.write({"serving": None})  # nothing is known to serve
            return self.settings.poll_interval_s
        self.state.deploy_started.pop(self.key, None)
        previous_path = self.status.get("servedPath")
        await self.writer.apply(
            basemodel.ready_update(
                readiness,
                self.status,
                path=path,
                registry_size=len(registry),
                endpoint=endpoint,
                rayservice=rs_name,
                probed=probed,
            )
        )
        requeue = basemodel.requeue_after_ready(readiness, registry, self.settings.poll_interval_s)
        if not readiness.applied:
            return requeue
        await self.mark_adapters_ready(registry, readiness.answered)
        await self.remove_old_revision(previous_path, path, claim)
        if answer is None:
            return requeue
        poll = await self.write_serving(answer, registry, desired)
        return poll if requeue is None else min(requeue, poll)

    async def write_serving(
        self, answer: ServeAnswer, registry: Mapping[str, Any], desired: int | None
    ) -> float:
        """Write ``status.serving`` on the BaseModel and each served adapter where it changed
        (:mod:`~lorafleet_operator.serving_status`).

        Returns:
            Seconds until the residency should be read again.
        """
        before = self.status.get("serving")
        now = serving_status.base_serving(answer, desired)
        if now is None:
            # No replica reported (the residency board is being made again, or an older
            # serving image): keep what status says rather than flap it, and post nothing.
            return self.settings.serving_status_interval_s
        await self.writer.write({"serving": now})
        for adapter in self.indexes.adapters(self.namespace, self.name):
            if adapter.deleting or adapter.served_name not in registry:
                continue
            written = self.state.statuses.get((LORAADAPTER_KIND, self.namespace, adapter.name))
            fields = serving_status.adapter_serving(answer, adapter.served_name)
            status = written or adapter.status or {}
            if fields is None or status.get("serving") == fields:
                continue
            # observedGeneration stays as written: this says nothing about the spec.
            generation = status.get("observedGeneration", adapter.generation)
            writer = self._adapter_writer(adapter, status, generation)
            slow_s = self.settings.slow_load_s
            for event in serving_status.adapter_events(status.get("serving"), fields, slow_s):
                post = writer.warn if event.warning else writer.info
                post(reason=event.reason, message=event.message)
            await writer.write({"serving": fields})
        return serving_status.next_poll_s(
            before,
            now,
            self.settings.serving_status_interval_s,
            self.settings.serving_status_idle_s,
        )

    def _adapter_writer(
        self, adapter: AdapterFacts, status: Mapping[str, Any] | None, generation: int | None
    ) -> StatusWriter:
        """A status writer for one of this BaseModel's adapters.

        Args:
            adapter: The adapter (index facts).
            status: Its status as last written here, or ``None`` for the index's.
            generation: The ``observedGeneration`` its writes carry.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": LORAADAPTER_KIND,
            "metadata": {
                "name": adapter.name,
                "namespace": self.namespace,
                "uid": adapter.uid or "",
                "generation": generation,
            },
            "status": dict(status or adapter.status or {}),
        }
        return StatusWriter(LORAADAPTER_KIND, body, self.state, self.logger)

    async def remove_old_revision(self, old_path: str | None, new_path: str, claim: str) -> None:
        """Once a new revision serves, remove the files of the one served before it.

        Args:
            old_path: The install folder served before (``status.servedPath``), or ``None``.
            new_path: The folder served now.
            claim: The volume's claim.
        """
        if not old_path or old_path == new_path:
            return
        try:
            job = build_cleanup_job(
                BASEMODEL_KIND,
                self.writer.body,
                path=old_path,
                claim_name=claim,
                settings=self.settings,
            )
        except ValueError as exc:
            self.writer.warn(reason="CleanupRefused", message=str(exc))
            return
        if await self.api.create_job(self.namespace, job):
            self.writer.info(
                reason="RemovingOldRevision",
                message=f"{new_path} serves; removing {old_path}",
            )

    async def mark_adapters_ready(
        self, registry: Mapping[str, Any], answered: Collection[str]
    ) -> None:
        """Set Serving/Ready on adapters the ready RayService's registry holds and the Serve
        application lists (:func:`~lorafleet_operator.basemodel.adapters_to_mark_ready`)."""
        adapters = self.indexes.adapters(self.namespace, self.name)
        written = {
            a.name: self.state.statuses.get((LORAADAPTER_KIND, self.namespace, a.name)) or {}
            for a in adapters
        }
        for adapter in basemodel.adapters_to_mark_ready(adapters, registry, answered, written):
            writer = self._adapter_writer(adapter, written[adapter.name], adapter.generation)
            await writer.apply(basemodel.adapter_served(self.name))

    async def delete(self) -> None:
        """The finalizer: wait until no LoraAdapter points here, then delete the RayService.

        Raises:
            kopf.TemporaryError: Adapters remain (``status.blockedBy`` names them).
        """
        names = [a.name for a in self.indexes.adapters(self.namespace, self.name)]
        blocked = basemodel.deletion_blocked(names)
        if blocked is not None:
            await self.writer.apply(blocked)
            raise kopf.TemporaryError(str(blocked.fields["message"]), delay=2)
        await self.api.delete_rayservice(self.namespace, rayservice_name(self.name))
        selector = (
            f"{KIND_LABEL}={BASEMODEL_KIND.lower()},{NAME_LABEL}={self.name},{ROLE_LABEL}=install"
        )
        await self.api.delete_jobs(self.namespace, selector)
        self.state.forget(BASEMODEL_KIND, self.namespace, self.name)
        metrics.ADAPTERS_SERVED.labels(self.namespace, self.name).set(0)
