"""kopf handlers: BaseModel and LoraAdapter reconciled into Jobs, a RayService and status.

Shape of the control loop:

- one kopf **daemon** per BaseModel and per LoraAdapter runs a level-triggered reconcile pass
  (:class:`Reconciler`), then sleeps until woken (a spec change, its Job changed, its base got
  installed, an adapter changed) or until a poll interval passes while something is in flight;
- kopf **indexes** hold BaseModel -> {name: facts} and (namespace, baseModel) -> adapters, so
  no handler lists all adapters on an event;
- the adapter registry of a BaseModel is written only by that BaseModel's daemon, which waits
  ``debounce_s`` after a wake-up before writing, so many adapter changes become one
  ``serveConfigV2`` update;
- **deletion** handlers (kopf finalizers) remove an adapter from the registry, then its files
  (cleanup Job, ``deletionPolicy: Delete``), within ``DELETE_BOUND_S``; a BaseModel waits for
  its adapters and says which in ``status.blockedBy``.

Every failure ends in a condition with a CamelCase reason and a Kubernetes Event; secrets
never leave the Secret (the Jobs reference them with ``secretKeyRef``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from lorafleet_operator import conditions as cond
from lorafleet_operator import metrics
from lorafleet_operator.jobs import (
    CONTAINER_NAME,
    KIND_LABEL,
    NAME_LABEL,
    ROLE_LABEL,
    build_adapter_install_job,
    build_base_install_job,
    build_cleanup_job,
    cluster_source_error,
    progress_file,
)
from lorafleet_operator.models import (
    BASEMODEL_KIND,
    BASEMODEL_PLURAL,
    GROUP,
    LORAADAPTER_KIND,
    LORAADAPTER_PLURAL,
    VERSION,
    BaseModelSpec,
    LoraAdapterSpec,
    Phase,
    status_patch,
)
from lorafleet_operator.networkpolicy import build_network_policy
from lorafleet_operator.rayservice import (
    RAY_GROUP,
    RAY_VERSION,
    RAYSERVICE_PLURAL,
    build_rayservice,
    ray_pod_labels,
    ray_pod_problems,
    rayservice_name,
    rayservice_name_error,
    rayservice_readiness,
    serve_endpoint,
)
from lorafleet_operator.report import (
    InstallReport,
    format_progress,
    parse_report,
    progress_from_log,
)
from lorafleet_operator.serveconfig import (
    adapter_entry,
    build_serve_config,
    dump_serve_config,
    registry_of,
)
from lorafleet_operator.serveprobe import (
    ServeAnswer,
    applications_running,
    failed_applications,
    probe_serve,
)
from lorafleet_operator.settings import Settings, settings_from_env
from lorafleet_operator.volumes import build_claim, claim_name_for

log = logging.getLogger("lorafleet.operator")

#: Seconds a deletion may take before the finalizer is removed regardless (with a Warning).
DELETE_BOUND_S = 25.0
#: Seconds an idle daemon sleeps before a safety re-check when nobody wakes it.
IDLE_RECHECK_S = 120.0
#: How much of a running install Pod's log is read for its progress line (lines, bytes).
PROGRESS_LOG_LINES = 20
PROGRESS_LOG_BYTES = 16384
CLUSTER_HASH_ANNOTATION = "lorafleet.io/cluster-config-hash"
#: Installer reasons that mean "this adapter does not fit its base" (status.compatible false).
INCOMPATIBLE_REASONS = frozenset(
    {"TargetModulesNotFound", "BaseMismatch", "RankExceedsLimit", "NoAdapterWeightsApplied"}
)


class _State:
    """Process-wide operator state: settings, API clients, wake-up events, caches."""

    def __init__(self) -> None:
        self.settings: Settings = Settings()
        self.api_client: client.ApiClient | None = None
        self.wakeups: dict[tuple[str, str, str], asyncio.Event] = {}
        self.statuses: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.generations: dict[tuple[str, str, str], int] = {}
        # Registry hints written by adapter daemons before the index catches up:
        # (namespace, base) -> served name -> entry (None: removed).
        self.hints: dict[tuple[str, str], dict[str, dict[str, Any] | None]] = defaultdict(dict)
        self.deploy_started: dict[tuple[str, str], float] = {}
        self.registry_writes: dict[tuple[str, str], float] = {}
        self.job_created: dict[str, float] = {}
        # (namespace, BaseModel) -> the installed path last seen in its status.
        self.base_paths: dict[tuple[str, str], str | None] = {}
        # BaseModels whose NetworkPolicy this process has made or found.
        self.network_policies: set[tuple[str, str]] = set()
        self.base_index: Any = None
        self.adapter_index: Any = None

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api_client)

    def event_for(self, key: tuple[str, str, str]) -> asyncio.Event:
        if key not in self.wakeups:
            self.wakeups[key] = asyncio.Event()
        return self.wakeups[key]

    def wake(self, kind: str, namespace: str, name: str) -> None:
        event = self.wakeups.get((kind, namespace, name))
        if event is not None:
            event.set()


STATE = _State()


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking kubernetes-client call in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _get_or_none(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await _call(fn, *args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def _create_ignoring_conflict(fn: Any, namespace: str, body: dict[str, Any]) -> bool:
    """Create an object; return False when it already exists (adopted, not duplicated)."""
    try:
        await _call(fn, namespace, body)
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise


def _api_error_message(exc: ApiException) -> str:
    """The API server's own explanation of a failed call (``Status.message``), e.g. which
    field of a Job it rejected with 422; the status text when the body holds none."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or "")


def _plain(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    return (STATE.api_client or client.ApiClient()).sanitize_for_serialization(obj)


# --------------------------------------------------------------------------------- startup


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Read lorafleet settings, load the kube config, and tune kopf (annotation storage)."""
    STATE.settings = settings_from_env()
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        # The client reads KUBECONFIG when imported; read it again now.
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32
    STATE.api_client = client.ApiClient(configuration)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    for cache in (
        STATE.wakeups,
        STATE.statuses,
        STATE.generations,
        STATE.hints,
        STATE.deploy_started,
        STATE.job_created,
        STATE.base_paths,
        STATE.network_policies,
    ):
        cache.clear()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate kopf in-cluster (service account) or from ``KUBECONFIG`` read at start-up.

    kopf's default client-library login reads the kubeconfig path the ``kubernetes`` package
    captured when it was imported; this one reads the environment when the operator starts.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# --------------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, BASEMODEL_PLURAL)
def basemodels_by_name(namespace: str, name: str, spec: Any, status: Any, meta: Any, **_: Any):
    """Index BaseModel -> the facts adapters need (installed path, claim, max rank)."""
    status = dict(status or {})
    installed = cond.is_true(status.get("conditions"), cond.INSTALLED) and bool(status.get("path"))
    return {
        (namespace, name): {
            "installed": installed,
            "path": status.get("path"),
            "phase": status.get("phase"),
            "claim": status.get("claimName"),
            "maxRank": ((spec or {}).get("serving") or {}).get("maxRank", 64),
            "sourceUri": ((spec or {}).get("source") or {}).get("uri"),
            "deleting": bool(meta.get("deletionTimestamp")),
        }
    }


@kopf.index(GROUP, VERSION, LORAADAPTER_PLURAL)
def adapters_by_base(namespace: str, name: str, spec: Any, status: Any, meta: Any, **_: Any):
    """Index (namespace, baseModel) -> each adapter's registry entry and phase."""
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
        (namespace, spec.get("baseModel")): {
            "name": name,
            "servedName": spec.get("servedName") or name,
            "entry": entry,
            "phase": status.get("phase"),
            "deleting": bool(meta.get("deletionTimestamp")),
            "created": meta.get("creationTimestamp") or "",
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "status": status,
        }
    }


def _base_facts(namespace: str, name: str) -> dict[str, Any] | None:
    index = STATE.base_index
    if index is None or (namespace, name) not in index:
        return None
    for facts in index[(namespace, name)]:
        return dict(facts)
    return None


def _adapters_of(namespace: str, base: str) -> list[dict[str, Any]]:
    index = STATE.adapter_index
    if index is None or (namespace, base) not in index:
        return []
    return [dict(a) for a in index[(namespace, base)]]


def _remember_indexes(kwargs: Mapping[str, Any]) -> None:
    if "basemodels_by_name" in kwargs:
        STATE.base_index = kwargs["basemodels_by_name"]
    if "adapters_by_base" in kwargs:
        STATE.adapter_index = kwargs["adapters_by_base"]


def desired_registry(namespace: str, base: str) -> dict[str, dict[str, Any]]:
    """The adapter registry a BaseModel should serve: installed, not-deleting adapters.

    The index (adapters' status) is overlaid with hints adapter daemons left before the index
    caught up. A served name claimed by two adapters goes to the older one.

    Args:
        namespace: The namespace.
        base: The BaseModel's name.

    Returns:
        Served name -> registry entry.
    """
    registry: dict[str, dict[str, Any]] = {}
    for adapter in sorted(_adapters_of(namespace, base), key=lambda a: (a["created"], a["name"])):
        if adapter["deleting"] or not adapter["entry"]:
            continue
        registry.setdefault(adapter["servedName"], adapter["entry"])
    for served, entry in STATE.hints.get((namespace, base), {}).items():
        if entry is None:
            registry.pop(served, None)
        else:
            registry[served] = entry
    return registry


# ------------------------------------------------------------------------------ reconciler


def pod_path(
    report_path: str | None, mount: str, namespace: str, kind: str, name: str
) -> str | None:
    """The install folder as pods see it (under the volume mount).

    The installer reports the folder as it saw it; where the volume is mounted elsewhere (local
    runs), the part from ``/<namespace>/<basemodels|adapters>/<name>/`` on is re-rooted at the
    mount, following the install layout of docs/interfaces.md.

    Args:
        report_path: ``path`` from the install report.
        mount: The volume mount path of Jobs and Ray pods.
        namespace: The object's namespace.
        kind: ``BaseModel`` or ``LoraAdapter``.
        name: The object's name.

    Returns:
        The path under ``mount``, or ``report_path`` unchanged when it does not follow the layout.
    """
    if not report_path:
        return report_path
    mount = mount.rstrip("/")
    if report_path.startswith(mount + "/"):
        return report_path
    plural = "basemodels" if kind == BASEMODEL_KIND else "adapters"
    marker = f"/{namespace}/{plural}/{name}/"
    index = report_path.find(marker)
    if index < 0:
        return report_path
    return mount + report_path[index:].rstrip("/")


class Reconciler:
    """One reconcile pass over one object; holds the status it last wrote.

    Args:
        kind: ``BaseModel`` or ``LoraAdapter``.
        body: The object (kopf body or dict).
        logger: kopf's per-object logger.
    """

    def __init__(self, kind: str, body: Mapping[str, Any], logger: logging.Logger) -> None:
        self.kind = kind
        self.body = json.loads(json.dumps(dict(body), default=str))
        self.meta = self.body["metadata"]
        self.name = self.meta["name"]
        self.namespace = self.meta["namespace"]
        self.key = (kind, self.namespace, self.name)
        self.logger = logger
        self.settings = STATE.settings
        self.plural = BASEMODEL_PLURAL if kind == BASEMODEL_KIND else LORAADAPTER_PLURAL
        self.generation = self.meta.get("generation")
        cached = STATE.statuses.get(self.key)
        self.status: dict[str, Any] = dict(
            cached if cached is not None else (self.body.get("status") or {})
        )

    # ----------------------------------------------------------------- status and events

    async def write_status(self, **fields: Any) -> None:
        """Patch ``status`` with ``fields`` (only what changed); Event on a phase change.

        Raises:
            ValueError: A field the kind's status model does not declare, or a wrong type
                (:func:`lorafleet_operator.models.status_patch`).
        """
        fields.setdefault("observedGeneration", self.generation)
        fields = status_patch(self.kind, fields)
        changes = cond.status_changes(self.status, fields)
        if not changes:
            return
        old_phase = self.status.get("phase")
        try:
            await _call(
                STATE.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                self.namespace,
                self.plural,
                self.name,
                {"status": changes},
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        self.status.update(changes)
        STATE.statuses[self.key] = dict(self.status)
        new_phase = self.status.get("phase")
        if "phase" in changes and new_phase != old_phase:
            failed = new_phase == Phase.FAILED or "Degraded" in str(changes.get("message", ""))
            message = f"phase {old_phase or '-'} -> {new_phase}"
            if self.status.get("message"):
                message += f": {self.status['message']}"
            kopf.event(
                self.body,
                type="Warning" if failed else "Normal",
                reason=str(new_phase),
                message=message[:1000],
            )
            self.logger.info("phase %s -> %s", old_phase, new_phase)

    def conditions(self, *updates: tuple[str, bool | str, str, str]) -> list[dict[str, Any]]:
        """Apply ``(type, status, reason, message)`` updates to the current conditions."""
        result = self.status.get("conditions") or []
        for ctype, status, reason, message in updates:
            result = cond.set_condition(result, ctype, status, reason, message, self.generation)
        return result

    async def fail(
        self, reason: str, message: str, phase: Phase = Phase.FAILED, ctype: str = cond.INSTALLED
    ) -> None:
        """Record a failure: condition ``ctype`` False with ``reason``, Ready False, phase."""
        metrics.FAILURES.labels(self.kind, reason).inc()
        updates = [(ctype, False, reason, message)]
        if ctype != cond.READY:
            updates.append((cond.READY, False, reason, message))
        await self.write_status(
            phase=str(phase), message=f"{reason}: {message}", conditions=self.conditions(*updates)
        )

    # --------------------------------------------------------------------- install Job

    async def run_install_job(
        self, job_manifest: dict[str, Any]
    ) -> tuple[str, InstallReport | None, str]:
        """Ensure the install Job exists and read its state.

        Args:
            job_manifest: The Job to create if missing (deterministic name).

        Returns:
            ``(state, report, detail)`` with state ``running``, ``succeeded`` or ``failed``;
            the report from the pod's termination message once finished; a detail message.
        """
        name = job_manifest["metadata"]["name"]
        job = await _get_or_none(STATE.batch.read_namespaced_job, name, self.namespace)
        if job is None:
            created = await _create_ignoring_conflict(
                STATE.batch.create_namespaced_job, self.namespace, job_manifest
            )
            STATE.job_created.setdefault(name, time.monotonic())
            if created:
                self.logger.info("created install Job %s", name)
            return "running", None, f"install Job {name} created"
        job = _plain(job)
        STATE.job_created.setdefault(name, time.monotonic())
        job_status = job.get("status") or {}
        finished = None
        for c in job_status.get("conditions") or []:
            if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
                finished = c
        if finished is None:
            failed = job_status.get("failed") or 0
            detail = f"install Job {name} running"
            if failed:
                detail += f" (attempt {failed + 1}; earlier attempts failed)"
            return "running", None, detail
        report = await self.termination_report(name)
        self.logger.info(
            "install Job %s finished: %s (report: %s)",
            name,
            finished["type"],
            f"{report.reason}" if report else "none",
        )
        if finished["type"] == "Complete":
            return "succeeded", report, f"install Job {name} completed"
        attempts = job_status.get("failed") or 0
        detail = (
            f"install Job {name} failed ({finished.get('reason') or 'Failed'} after "
            f"{attempts} attempt(s))"
        )
        return "failed", report, detail

    async def termination_report(self, job_name: str) -> InstallReport | None:
        """Read the installer report from the newest finished pod of a Job."""
        pods = await _call(
            STATE.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"batch.kubernetes.io/job-name={job_name}",
        )
        best: tuple[str, str] | None = None
        for pod in pods.items:
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                if cs.name != CONTAINER_NAME or cs.state is None or cs.state.terminated is None:
                    continue
                finished = str(cs.state.terminated.finished_at or "")
                if best is None or finished >= best[0]:
                    best = (finished, cs.state.terminated.message or "")
        return parse_report(best[1]) if best else None

    async def read_progress(self, job_name: str) -> str | None:
        """The running install's progress (``42%`` or ``1.5 GiB``), or None if not known yet.

        Read from the installer's progress file when the operator sees the volume
        (``LORAFLEET_MODELS_LOCAL_ROOT``), else from the last progress line in the log tail of
        the Job's running Pod (``pods/log``; docs/interfaces.md section 2).
        """
        root = self.settings.models_local_root
        if root:
            path = progress_file(self.settings, self.namespace, self.kind, self.name)
            local = Path(root) / path[len(self.settings.models_mount) :].lstrip("/")
            try:
                return format_progress(json.loads(local.read_text()))
            except (OSError, ValueError):
                return None
        try:
            pods = await _call(
                STATE.core.list_namespaced_pod,
                self.namespace,
                label_selector=f"batch.kubernetes.io/job-name={job_name}",
            )
            running = [p for p in pods.items if p.status and p.status.phase == "Running"]
            if not running:
                return None
            text = await _call(
                STATE.core.read_namespaced_pod_log,
                running[-1].metadata.name,
                self.namespace,
                container=CONTAINER_NAME,
                tail_lines=PROGRESS_LOG_LINES,
                limit_bytes=PROGRESS_LOG_BYTES,
            )
        except ApiException:
            return None
        return format_progress(progress_from_log(text or ""))

    def observe_install_duration(self, job_name: str) -> None:
        started = STATE.job_created.pop(job_name, None)
        if started is not None:
            metrics.INSTALL_SECONDS.labels(self.kind).observe(time.monotonic() - started)

    # --------------------------------------------------------------------- BaseModel

    async def reconcile_base(self) -> float | None:
        """One pass over a BaseModel. Returns seconds until the next poll, or None to idle."""
        metrics.RECONCILES.labels(self.kind).inc()
        try:
            spec = BaseModelSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            await self.fail(
                "InvalidSpec", f"spec.{'.'.join(map(str, first['loc']))}: {first['msg']}"
            )
            return None
        unsupported = cluster_source_error(
            source_uri=spec.source.uri,
            checkpoint_uri=spec.checkpoint.uri if spec.checkpoint else None,
        )
        if unsupported:
            await self.fail("UnsupportedSource", unsupported)
            return None
        bad_name = rayservice_name_error(self.name)
        if bad_name:
            await self.fail("InvalidName", bad_name)
            return None
        poll = self.settings.poll_interval_s
        claim = claim_name_for(self.name, spec, self.settings)
        manifest = build_claim(self.body, spec, self.settings)
        if manifest is not None:
            await _create_ignoring_conflict(
                STATE.core.create_namespaced_persistent_volume_claim, self.namespace, manifest
            )
        elif (
            await _get_or_none(
                STATE.core.read_namespaced_persistent_volume_claim, claim, self.namespace
            )
            is None
        ):
            await self.fail(
                "VolumeNotFound",
                f"PersistentVolumeClaim {claim!r} does not exist in namespace {self.namespace}",
                phase=Phase.PENDING,
            )
            return poll * 5
        job_manifest = build_base_install_job(self.body, spec, claim, self.settings)
        job_name = job_manifest["metadata"]["name"]
        installed = (
            self.status.get("installJob") == job_name
            and cond.is_true(self.status.get("conditions"), cond.INSTALLED)
            and bool(self.status.get("path"))
        )
        if not installed:
            state, report, detail = await self.run_install_job(job_manifest)
            if state == "running":
                # While a new revision installs, a model that already serves stays Ready.
                serving_old = bool(self.status.get("servedPath")) and (
                    self.status.get("phase") == Phase.READY
                )
                conditions = self.status.get("conditions")
                if not serving_old:
                    conditions = self.conditions((cond.INSTALLED, False, "Installing", detail))
                # installJob names the Job whose files status.path holds: it changes only when
                # the new revision is installed (the detail message names the running Job).
                await self.write_status(
                    phase=str(Phase.READY if serving_old else Phase.INSTALLING),
                    installJob=self.status.get("installJob") if serving_old else job_name,
                    claimName=claim,
                    progress=await self.read_progress(job_name)
                    or self.status.get("progress")
                    or "0%",
                    message=detail,
                    conditions=conditions,
                )
                return poll
            if state == "failed" or report is None or not report.ok:
                self.observe_install_duration(job_name)
                reason = report.reason if report else "InstallFailed"
                message = report.message if report else detail
                await self.write_status(installJob=job_name, claimName=claim)
                await self.fail(reason, f"{message} [{detail}]")
                return None
            self.observe_install_duration(job_name)
            serving_old = bool(self.status.get("servedPath")) and (
                self.status.get("phase") == Phase.READY
            )
            await self.write_status(
                # A model serving the previous revision stays Ready while it rolls.
                phase=str(Phase.READY if serving_old else Phase.INSTALLED),
                installJob=job_name,
                claimName=claim,
                path=pod_path(
                    report.path, self.settings.models_mount, self.namespace, self.kind, self.name
                ),
                resolvedRevision=report.resolved_revision,
                sizeBytes=report.size_bytes,
                architecture=report.architecture,
                progress="100%",
                message=report.message or "installed",
                labels=report.labels,
                conditions=self.conditions(
                    (
                        cond.INSTALLED,
                        True,
                        report.reason or "Installed",
                        report.message or "installed",
                    )
                ),
            )
            for adapter in _adapters_of(self.namespace, self.name):
                STATE.wake(LORAADAPTER_KIND, self.namespace, adapter["name"])
        return await self.deploy_base(spec, claim)

    async def deploy_base(self, spec: BaseModelSpec, claim: str) -> float | None:
        """Create or update the RayService and mirror its readiness into the status."""
        poll = self.settings.poll_interval_s
        path = self.status["path"]
        registry = desired_registry(self.namespace, self.name)
        config = build_serve_config(
            self.name, path, spec, registry, labels=self.status.get("labels") or None
        )
        config_yaml = dump_serve_config(config)
        desired = build_rayservice(
            self.body, spec, serve_config_yaml=config_yaml, claim_name=claim, settings=self.settings
        )
        cluster_hash = hashlib.sha256(
            json.dumps(desired["spec"]["rayClusterConfig"], sort_keys=True).encode()
        ).hexdigest()[:16]
        desired["metadata"]["annotations"] = {CLUSTER_HASH_ANNOTATION: cluster_hash}
        rs_name = rayservice_name(self.name)
        rs = await _get_or_none(
            STATE.custom.get_namespaced_custom_object,
            RAY_GROUP,
            RAY_VERSION,
            self.namespace,
            RAYSERVICE_PLURAL,
            rs_name,
        )
        bm_key = (self.namespace, self.name)
        if self.settings.network_policy and bm_key not in STATE.network_policies:
            # Once per operator process (so an upgrade or a failed create is retried): create,
            # or find it there (409). A policy deleted by hand comes back at the next restart.
            await _create_ignoring_conflict(
                STATE.networking.create_namespaced_network_policy,
                self.namespace,
                build_network_policy(self.body, self.settings),
            )
            STATE.network_policies.add(bm_key)
        if rs is None:
            rs = await _call(
                STATE.custom.create_namespaced_custom_object,
                RAY_GROUP,
                RAY_VERSION,
                self.namespace,
                RAYSERVICE_PLURAL,
                desired,
            )
            metrics.SERVE_CONFIG_WRITES.labels(self.namespace, self.name).inc()
            STATE.deploy_started[bm_key] = time.monotonic()
            self.logger.info("created RayService %s", rs_name)
            if "authOptions" not in ((rs.get("spec") or {}).get("rayClusterConfig") or {}):
                # The RayService CRD is older than KubeRay 1.5 and pruned the field: Ray runs
                # without token auth. Said once, where the user looks.
                kopf.warn(
                    self.body,
                    reason="RayAuthDropped",
                    message=f"RayService {rs_name}: the cluster's RayService CRD dropped"
                    " rayClusterConfig.authOptions (KubeRay < 1.5): Ray runs without token"
                    " auth; upgrade KubeRay to 1.5 or newer",
                )
        else:
            patch: dict[str, Any] = {}
            deferred: float | None = None
            if (rs.get("spec") or {}).get("serveConfigV2") != config_yaml:
                if registry_of((rs.get("spec") or {}).get("serveConfigV2")) == registry:
                    STATE.deploy_started[bm_key] = time.monotonic()  # args changed: a roll
                    patch.setdefault("spec", {})["serveConfigV2"] = config_yaml
                else:
                    # Only the adapter registry changed: coalesce bursts into one write per
                    # registry_write_interval_s.
                    since = time.monotonic() - STATE.registry_writes.get(bm_key, 0.0)
                    wait = self.settings.registry_write_interval_s - since
                    if wait > 0:
                        deferred = wait
                    else:
                        patch.setdefault("spec", {})["serveConfigV2"] = config_yaml
                        STATE.registry_writes[bm_key] = time.monotonic()
            annotations = (rs.get("metadata") or {}).get("annotations") or {}
            if annotations.get(CLUSTER_HASH_ANNOTATION) != cluster_hash:
                patch.setdefault("spec", {})["rayClusterConfig"] = desired["spec"][
                    "rayClusterConfig"
                ]
                patch["metadata"] = {"annotations": {CLUSTER_HASH_ANNOTATION: cluster_hash}}
                STATE.deploy_started[bm_key] = time.monotonic()
            if deferred is not None and not patch:
                return deferred
            if patch:
                rs = await _call(
                    STATE.custom.patch_namespaced_custom_object,
                    RAY_GROUP,
                    RAY_VERSION,
                    self.namespace,
                    RAYSERVICE_PLURAL,
                    rs_name,
                    patch,
                )
                if "serveConfigV2" in patch.get("spec", {}):
                    metrics.SERVE_CONFIG_WRITES.labels(self.namespace, self.name).inc()
        metrics.ADAPTERS_SERVED.labels(self.namespace, self.name).set(len(registry))
        STATE.deploy_started.setdefault(bm_key, time.monotonic())
        ready, reason, message = rayservice_readiness(rs)
        # A user_config update keeps the app serving; adapters count as served only once
        # KubeRay has observed the RayService generation holding them, Serve reports every
        # application RUNNING (all replicas applied it) and the app itself lists them.
        generation = (rs.get("metadata") or {}).get("generation")
        observed = (rs.get("status") or {}).get("observedGeneration")
        applied = generation is None or observed is None or observed >= generation
        applied = applied and applications_running(rs)
        endpoint = serve_endpoint(self.name, self.namespace, self.settings)
        # Ready means served: KubeRay's Ready says the Service has endpoints; the app answers.
        answer = ServeAnswer(
            ok=True, base_path=path if applied else None, adapters=frozenset(registry)
        )
        failed = failed_applications(rs)
        if ready and failed:
            # KubeRay keeps Ready while a new config fails to deploy; it does not serve it.
            ready, reason, message = False, "ApplicationFailed", failed
        if ready and self.settings.serving_probe:
            answer = await probe_serve(endpoint)
            if not answer.ok:
                ready, reason, message = False, "ServeNotAnswering", answer.error or ""
            elif answer.base_path is not None and answer.base_path != path:
                applied = False  # the previous revision still answers
        if ready:
            STATE.deploy_started.pop(bm_key, None)
            previous_path = self.status.get("servedPath")
            await self.write_status(
                phase=str(Phase.READY),
                endpoint=endpoint,
                adapters=len(registry),
                # servedPath moves only once KubeRay applied the config naming this path.
                servedPath=path if applied else previous_path,
                servedRevision=self.status.get("resolvedRevision")
                if applied
                else self.status.get("servedRevision"),
                rayService=rs_name,
                message="serving",
                conditions=self.conditions(
                    (
                        cond.SERVING,
                        True,
                        "ServeAnswering" if self.settings.serving_probe else "RayServiceReady",
                        f"RayService {rs_name} serves {len(registry)} adapter(s)"
                        + (f" at {endpoint}" if self.settings.serving_probe else ""),
                    ),
                    (cond.READY, True, "Ready", "installed and serving"),
                    (cond.DEGRADED, False, "RayServiceReady", "serving"),
                ),
            )
            if not applied:
                return poll
            await self.mark_adapters_ready(registry, answer.adapters)
            await self.remove_old_revision(previous_path, path, claim)
            # Adapters the answering replica does not list yet: ask again.
            return poll if set(registry) - answer.adapters else None
        waited = time.monotonic() - STATE.deploy_started[bm_key]
        pods = await _call(
            STATE.core.list_namespaced_pod,
            self.namespace,
            label_selector=",".join(f"{k}={v}" for k, v in ray_pod_labels(self.name).items()),
        )
        problems = ray_pod_problems([_plain(p) for p in pods.items])
        if problems:
            # What stops the Ray Pods is on the Pods, not in KubeRay's status.
            reason, message = "RayPodsNotRunning", problems
        updates = [(cond.SERVING, False, reason, message)]
        phase = Phase.DEPLOYING
        if waited > self.settings.ready_timeout_s:
            updates.append(
                (
                    cond.DEGRADED,
                    True,
                    "ReadyTimeout",
                    f"RayService {rs_name} not ready within "
                    f"{self.settings.ready_timeout_s:.0f}s: {reason}: {message}",
                )
            )
            updates.append((cond.READY, False, "Degraded", f"RayService not ready: {reason}"))
            metrics.FAILURES.labels(self.kind, "ReadyTimeout").inc()
        else:
            updates.append((cond.READY, False, reason, message))
        await self.write_status(
            phase=str(phase),
            endpoint=endpoint,
            rayService=rs_name,
            adapters=len(registry),
            message=f"{reason}: {message}",
            conditions=self.conditions(*updates),
        )
        return poll

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
                BASEMODEL_KIND, self.body, path=old_path, claim_name=claim, settings=self.settings
            )
        except ValueError as exc:
            kopf.warn(self.body, reason="CleanupRefused", message=str(exc))
            return
        if await _create_ignoring_conflict(STATE.batch.create_namespaced_job, self.namespace, job):
            kopf.info(
                self.body,
                reason="RemovingOldRevision",
                message=f"{new_path} serves; removing {old_path}",
            )

    async def mark_adapters_ready(
        self, registry: Mapping[str, Any], answered: Collection[str]
    ) -> None:
        """Set Serving/Ready on adapters the (ready) RayService's registry holds and the
        Serve application lists.

        Args:
            registry: The registry written to the RayService (served name -> entry).
            answered: Served names the application's ``GET /stats`` listed (with the probe
                off: the registry's names).
        """
        for adapter in _adapters_of(self.namespace, self.name):
            name = adapter["servedName"]
            if adapter["deleting"] or name not in registry or name not in answered:
                continue
            if registry[adapter["servedName"]] != adapter["entry"] and adapter["entry"] is not None:
                continue
            key = (LORAADAPTER_KIND, self.namespace, adapter["name"])
            current = STATE.statuses.get(key) or {}
            if adapter["phase"] == Phase.READY and current.get("phase") in (None, Phase.READY):
                continue
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": LORAADAPTER_KIND,
                "metadata": {
                    "name": adapter["name"],
                    "namespace": self.namespace,
                    "uid": adapter.get("uid") or "",
                    "generation": adapter.get("generation"),
                },
                "status": current or adapter.get("status") or {},
            }
            other = Reconciler(LORAADAPTER_KIND, body, self.logger)
            await other.write_status(
                phase=str(Phase.READY),
                message="serving",
                conditions=other.conditions(
                    (cond.SERVING, True, "InRegistry", f"served by BaseModel {self.name}"),
                    (cond.READY, True, "Ready", "installed and serving"),
                ),
            )

    # --------------------------------------------------------------------- LoraAdapter

    async def reconcile_adapter(self) -> float | None:
        """One pass over a LoraAdapter. Returns seconds until the next poll, or None to idle."""
        metrics.RECONCILES.labels(self.kind).inc()
        try:
            spec = LoraAdapterSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            await self.fail(
                "InvalidSpec", f"spec.{'.'.join(map(str, first['loc']))}: {first['msg']}"
            )
            return None
        unsupported = cluster_source_error(source_uri=spec.source.uri)
        if unsupported:
            await self.fail("UnsupportedSource", unsupported)
            return None
        served = spec.served_name or self.name
        created = self.meta.get("creationTimestamp") or ""
        for other in _adapters_of(self.namespace, spec.base_model):
            if (
                other["name"] != self.name
                and other["servedName"] == served
                and not other["deleting"]
                and (other["created"], other["name"]) < (created, self.name)
            ):
                await self.fail(
                    "ServedNameConflict",
                    f"LoraAdapter {other['name']!r} already serves the name {served!r} over "
                    f"BaseModel {spec.base_model!r}; set spec.servedName to another name",
                )
                return None
        base = _base_facts(self.namespace, spec.base_model)
        if base is None or not base["installed"] or base["deleting"] or not base.get("claim"):
            why = (
                f"BaseModel {spec.base_model!r} does not exist"
                if base is None
                else f"BaseModel {spec.base_model!r} is not installed yet (phase {base['phase'] or 'Pending'})"
            )
            await self.write_status(
                phase=str(Phase.PENDING),
                servedName=served,
                message=f"BaseModelNotReady: {why}",
                conditions=self.conditions(
                    (cond.INSTALLED, False, "BaseModelNotReady", why),
                    (cond.READY, False, "BaseModelNotReady", why),
                ),
            )
            return None
        job_manifest = build_adapter_install_job(
            self.body,
            spec,
            claim_name=base["claim"],
            base_path=base["path"],
            base_source=base.get("sourceUri"),
            max_rank=int(base.get("maxRank") or 64),
            settings=self.settings,
        )
        job_name = job_manifest["metadata"]["name"]
        installed = (
            self.status.get("installJob") == job_name
            and cond.is_true(self.status.get("conditions"), cond.INSTALLED)
            and bool(self.status.get("path"))
        )
        if installed:
            return None
        state, report, detail = await self.run_install_job(job_manifest)
        if state == "running":
            await self.write_status(
                phase=str(Phase.INSTALLING),
                installJob=job_name,
                servedName=served,
                progress=await self.read_progress(job_name) or "0%",
                message=detail,
                conditions=self.conditions((cond.INSTALLED, False, "Installing", detail)),
            )
            return self.settings.poll_interval_s
        self.observe_install_duration(job_name)
        if state == "failed" or report is None or not report.ok:
            reason = report.reason if report else "InstallFailed"
            message = report.message if report else detail
            await self.write_status(
                installJob=job_name,
                servedName=served,
                compatible=False if reason in INCOMPATIBLE_REASONS else None,
            )
            await self.fail(reason, f"{message} [{detail}]")
            return None
        labels = spec.labels or report.labels
        path = pod_path(
            report.path, self.settings.models_mount, self.namespace, self.kind, self.name
        )
        await self.write_status(
            phase=str(Phase.DEPLOYING),
            installJob=job_name,
            servedName=served,
            path=path,
            resolvedRevision=report.resolved_revision,
            sizeBytes=report.size_bytes,
            progress="100%",
            rank=report.rank,
            loraAlpha=report.lora_alpha,
            targetModules=report.target_modules,
            modulesToSave=report.modules_to_save,
            labels=report.labels,
            compatible=True,
            basePath=base["path"],
            message="installed; waiting for the serve config update",
            conditions=self.conditions(
                (cond.INSTALLED, True, report.reason or "Installed", report.message or "installed"),
                (
                    cond.SERVING,
                    False,
                    "RegistryUpdatePending",
                    "waiting for the serve config update",
                ),
                (cond.READY, False, "RegistryUpdatePending", "waiting for the serve config update"),
            ),
        )
        entry = adapter_entry(path, report.rank or None, labels)
        STATE.hints[(self.namespace, spec.base_model)][served] = entry
        STATE.wake(BASEMODEL_KIND, self.namespace, spec.base_model)
        return None


# -------------------------------------------------------------------------------- daemons


async def _sleep_until_woken(
    key: tuple[str, str, str], stopped: Any, timeout: float, debounce: float = 0.0
) -> None:
    event = STATE.event_for(key)
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if event.is_set() and debounce and not stopped:
        await asyncio.sleep(debounce)  # coalesce a burst of wake-ups into one pass
    event.clear()


async def _daemon_loop(kind: str, body: Any, stopped: Any, logger: Any, **kwargs: Any) -> None:
    _remember_indexes(kwargs)
    key = (kind, body["metadata"]["namespace"], body["metadata"]["name"])
    STATE.event_for(key)
    debounce = STATE.settings.debounce_s if kind == BASEMODEL_KIND else 0.0
    failures = 0
    while not stopped:
        reconciler = Reconciler(kind, body, logger)
        if reconciler.meta.get("deletionTimestamp"):
            return
        try:
            if kind == BASEMODEL_KIND:
                delay = await reconciler.reconcile_base()
            else:
                delay = await reconciler.reconcile_adapter()
            failures = 0
        except ApiException as exc:
            failures += 1
            reason = "Forbidden" if exc.status == 403 else "KubernetesApiError"
            detail = _api_error_message(exc)
            logger.warning("reconcile failed: %s %s: %s", exc.status, exc.reason, detail)
            # The API is failing: if this write fails too, the next pass sets the condition.
            with contextlib.suppress(Exception):
                await reconciler.fail(
                    reason,
                    f"Kubernetes API error {exc.status} {exc.reason}: {detail}"[:1000],
                    phase=Phase.PENDING,
                    ctype=cond.READY,
                )
            delay = min(60.0, 2.0 * failures)
        except Exception as exc:  # every error path ends in a condition, not only a log
            failures += 1
            logger.exception("reconcile failed")
            with contextlib.suppress(Exception):
                await reconciler.fail(
                    "InternalError", f"{type(exc).__name__}: {exc}", ctype=cond.READY
                )
            delay = min(60.0, 2.0 * failures)
        await _sleep_until_woken(key, stopped, delay or IDLE_RECHECK_S, debounce)


@kopf.daemon(GROUP, VERSION, BASEMODEL_PLURAL, cancellation_timeout=5.0)
async def basemodel_daemon(body: Any, stopped: Any, logger: Any, **kwargs: Any) -> None:
    """Keep a BaseModel reconciled: volume, install Job, RayService, status."""
    await _daemon_loop(BASEMODEL_KIND, body, stopped, logger, **kwargs)


@kopf.daemon(GROUP, VERSION, LORAADAPTER_PLURAL, cancellation_timeout=5.0)
async def adapter_daemon(body: Any, stopped: Any, logger: Any, **kwargs: Any) -> None:
    """Keep a LoraAdapter reconciled: wait for its base, install Job, registry hint."""
    await _daemon_loop(LORAADAPTER_KIND, body, stopped, logger, **kwargs)


# ------------------------------------------------------------------------ wake-up events


@kopf.on.event(GROUP, VERSION, BASEMODEL_PLURAL)
def basemodel_event(namespace: str, name: str, meta: Any, status: Any, **kwargs: Any) -> None:
    """Wake a BaseModel's daemon when its spec changed (new generation), and its adapters
    when its installed path changed: an adapter waiting for its base reads the index, which
    this event has just updated (a wake-up at the base's own status write could come first)."""
    _remember_indexes(kwargs)
    key = (BASEMODEL_KIND, namespace, name)
    if STATE.generations.get(key) != meta.get("generation"):
        STATE.generations[key] = meta.get("generation")
        STATE.wake(*key)
    path = (status or {}).get("path")
    if STATE.base_paths.get((namespace, name)) != path:
        STATE.base_paths[(namespace, name)] = path
        for adapter in _adapters_of(namespace, name):
            STATE.wake(LORAADAPTER_KIND, namespace, adapter["name"])


@kopf.on.event(GROUP, VERSION, LORAADAPTER_PLURAL)
def adapter_event(
    namespace: str, name: str, spec: Any, meta: Any, status: Any, **kwargs: Any
) -> None:
    """Wake an adapter's daemon on a spec change; wake its base when its entry may change."""
    _remember_indexes(kwargs)
    key = (LORAADAPTER_KIND, namespace, name)
    if STATE.generations.get(key) != meta.get("generation"):
        STATE.generations[key] = meta.get("generation")
        STATE.wake(*key)
    if (status or {}).get("phase") == Phase.DEPLOYING or meta.get("deletionTimestamp"):
        STATE.wake(BASEMODEL_KIND, namespace, (spec or {}).get("baseModel", ""))


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": "lorafleet"})
def job_event(namespace: str, labels: Mapping[str, str], **_: Any) -> None:
    """Wake the owner of an install Job when the Job changes."""
    kind = {"basemodel": BASEMODEL_KIND, "loraadapter": LORAADAPTER_KIND}.get(
        labels.get(KIND_LABEL, "")
    )
    if kind and labels.get(NAME_LABEL):
        STATE.wake(kind, namespace, labels[NAME_LABEL])


@kopf.on.event(
    RAY_GROUP, RAY_VERSION, RAYSERVICE_PLURAL, labels={"app.kubernetes.io/managed-by": "lorafleet"}
)
def rayservice_event(
    namespace: str, name: str, labels: Mapping[str, str], body: Any, **_: Any
) -> None:
    """Wake the owning BaseModel when KubeRay changes its RayService's readiness."""
    ready = rayservice_readiness(body)[0]
    observed = ((body.get("status") or {}).get("observedGeneration"),)
    signature = (ready, observed, body.get("metadata", {}).get("generation"))
    key = ("RayService", namespace, name)
    if STATE.generations.get(key) == signature:
        return
    STATE.generations[key] = signature
    if labels.get(NAME_LABEL):
        STATE.wake(BASEMODEL_KIND, namespace, labels[NAME_LABEL])


# ------------------------------------------------------------------------------ deletion


async def _delete_jobs(namespace: str, kind: str, name: str, role: str) -> None:
    selector = f"{KIND_LABEL}={kind.lower()},{NAME_LABEL}={name},{ROLE_LABEL}={role}"
    jobs = await _call(STATE.batch.list_namespaced_job, namespace, label_selector=selector)
    for job in jobs.items:
        try:
            await _call(
                STATE.batch.delete_namespaced_job,
                job.metadata.name,
                namespace,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise


@kopf.on.delete(GROUP, VERSION, LORAADAPTER_PLURAL)
async def adapter_deleted(
    body: Any, spec: Any, status: Any, runtime: Any, logger: Any, **kwargs: Any
) -> None:
    """Remove the adapter from the registry, then its files (per deletionPolicy), then go."""
    _remember_indexes(kwargs)
    reconciler = Reconciler(LORAADAPTER_KIND, body, logger)
    namespace, name = reconciler.namespace, reconciler.name
    base = (spec or {}).get("baseModel", "")
    served = (spec or {}).get("servedName") or name
    over_bound = runtime.total_seconds() > DELETE_BOUND_S
    STATE.hints[(namespace, base)][served] = None
    STATE.wake(BASEMODEL_KIND, namespace, base)
    await _delete_jobs(namespace, LORAADAPTER_KIND, name, "install")
    rs = await _get_or_none(
        STATE.custom.get_namespaced_custom_object,
        RAY_GROUP,
        RAY_VERSION,
        namespace,
        RAYSERVICE_PLURAL,
        rayservice_name(base),
    )
    facts = _base_facts(namespace, base) or {}
    base_going = not facts or facts.get("deleting")
    in_registry = rs is not None and served in registry_of(
        (rs.get("spec") or {}).get("serveConfigV2")
    )
    if in_registry and not base_going:
        if not over_bound:
            await reconciler.write_status(
                phase=str(Phase.DELETING),
                conditions=reconciler.conditions(
                    (cond.DELETING, True, "RemovingFromRegistry", f"removing from BaseModel {base}")
                ),
            )
            raise kopf.TemporaryError("waiting for the serve config update", delay=1)
        kopf.warn(body, reason="DeletionTimeout", message="still in the serve config registry")
    path = (status or {}).get("path")
    policy = (spec or {}).get("deletionPolicy", "Delete")
    claim = facts.get("claim") or (status or {}).get("claimName")
    if path and policy == "Delete" and claim and not over_bound:
        try:
            job = build_cleanup_job(
                LORAADAPTER_KIND, body, path=path, claim_name=claim, settings=STATE.settings
            )
        except ValueError as exc:
            kopf.warn(body, reason="CleanupRefused", message=str(exc))
            job = None
        state, report, detail = (
            await reconciler.run_install_job(job) if job else ("skipped", None, "")
        )
        if state == "running":
            await reconciler.write_status(
                phase=str(Phase.DELETING),
                conditions=reconciler.conditions((cond.DELETING, True, "RemovingFiles", detail)),
            )
            raise kopf.TemporaryError(detail, delay=1)
        if state == "failed" or (report is not None and not report.ok):
            kopf.warn(
                body, reason="CleanupFailed", message=(report.message if report else detail)[:1000]
            )
    elif path and policy == "Delete" and over_bound:
        kopf.warn(body, reason="DeletionTimeout", message=f"files at {path} were not removed")
    STATE.hints[(namespace, base)].pop(served, None)
    STATE.statuses.pop(reconciler.key, None)
    STATE.wakeups.pop(reconciler.key, None)
    logger.info("adapter %s removed", name)


@kopf.on.delete(GROUP, VERSION, BASEMODEL_PLURAL)
async def basemodel_deleted(body: Any, logger: Any, **kwargs: Any) -> None:
    """Wait until no LoraAdapter points at the BaseModel, then delete its RayService."""
    _remember_indexes(kwargs)
    reconciler = Reconciler(BASEMODEL_KIND, body, logger)
    adapters = sorted(a["name"] for a in _adapters_of(reconciler.namespace, reconciler.name))
    if adapters:
        message = (
            f"waiting for {len(adapters)} LoraAdapter(s) to be deleted: {', '.join(adapters[:20])}"
        )
        await reconciler.write_status(
            phase=str(Phase.DELETING),
            blockedBy=adapters,
            message=message,
            conditions=reconciler.conditions((cond.DELETING, False, "AdaptersRemain", message)),
        )
        raise kopf.TemporaryError(message, delay=2)
    try:
        await _call(
            STATE.custom.delete_namespaced_custom_object,
            RAY_GROUP,
            RAY_VERSION,
            reconciler.namespace,
            RAYSERVICE_PLURAL,
            rayservice_name(reconciler.name),
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
    await _delete_jobs(reconciler.namespace, BASEMODEL_KIND, reconciler.name, "install")
    STATE.statuses.pop(reconciler.key, None)
    STATE.wakeups.pop(reconciler.key, None)
    metrics.ADAPTERS_SERVED.labels(reconciler.namespace, reconciler.name).set(0)
