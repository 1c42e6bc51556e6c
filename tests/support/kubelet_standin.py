"""A TEST STAND-IN for the kubelet: runs the Pods of Jobs as local processes.

Used only by ``benchmarks/operator.py`` (hundreds of Jobs, to measure the operator rather than
container start-up) on a control plane started without a node. Every test runs its Pods on the
real test node (``scripts/cluster.sh up --node``; tests/cluster/README.md).

The test control plane (``scripts/cluster.sh``) has a real kube-apiserver and a real
kube-controller-manager, whose Job controller creates a Job's Pods and writes the Job's
status (``succeeded``/``failed`` counts, ``Complete``/``Failed`` conditions, retries up to
``backoffLimit`` with its exponential back-off of 10 s, 20 s, ...). There is no scheduler, no
kubelet and no container runtime, so those Pods would stay ``Pending`` forever.
:class:`KubeletStandIn` plays the kubelet's part for them:

1. runs each container of the Pod (init containers first, in order; then the app containers,
   one after another) as a local process with the container's own ``command`` + ``args``
   (``$(VAR)`` references expanded as the kubelet does), ``workingDir``, and an environment
   built from ``env``/``envFrom`` with ``secretKeyRef``/``configMapKeyRef``/``fieldRef``
   resolved through the API;
2. maps volume mounts to local folders: a ``persistentVolumeClaim`` volume to the folder given
   for its ``claimName`` in ``volume_map``; ``emptyDir`` to a fresh temporary folder;
   ``secret``/``configMap`` volumes to a temporary folder holding their keys as files. Every
   ``mountPath`` (and the ``terminationMessagePath``, default ``/dev/termination-log``) that
   appears in the command, args, env values or ``workingDir`` is rewritten to its local folder
   (longest mount path first, only at path boundaries);
3. writes the Pod status as a kubelet would: ``Running`` with ``state.running`` while the
   process runs, then ``Succeeded``/``Failed`` with
   ``containerStatuses[].state.terminated`` = ``{exitCode, reason, message, startedAt,
   finishedAt}``. ``message`` is the termination message: the first 4096 bytes of the
   termination-message file, or with ``terminationMessagePolicy: FallbackToLogsOnError`` and
   an empty file on failure, the last 80 lines (at most 2048 bytes) of the container's output
   (kubelet: ``pkg/kubelet/kuberuntime/kuberuntime_container.go``). ``restartPolicy:
   OnFailure`` restarts the container in the same Pod (``restartCount`` + 1).

The Pods are not bound to a node (no ``spec.nodeName``): the API server then deletes them at
once when the Job is deleted or garbage-collected, instead of waiting for a kubelet to
confirm a graceful deletion. A Pod deleted while its process runs gets its process killed.

Processes run on this machine with this machine's rights: the stand-in is for tests only.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

__all__ = [
    "ContainerRun",
    "JobOutcome",
    "KubeletStandIn",
    "StandInError",
    "expand_vars",
]

log = logging.getLogger(__name__)

#: Cap of a container's termination message read from its file (kubelet: 4096 bytes).
MAX_TERMINATION_MESSAGE_BYTES = 4096
#: Log tail used by ``FallbackToLogsOnError`` (kubelet: 80 lines, at most 2048 bytes).
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
#: Host environment variables a container inherits so local tools work (PATH, HOME, ...).
#: Nothing else from the host leaks in: a Job gets only what its spec gives it.
HOST_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
MERGE_PATCH = "application/merge-patch+json"


class StandInError(RuntimeError):
    """A Pod cannot be run by the stand-in (unmapped claim, missing Secret key, ...)."""


@dataclass
class ContainerRun:
    """What one container run did.

    Attributes:
        name: container name.
        exit_code: process exit code (128 + signal number when killed by a signal).
        message: the termination message written into the Pod status.
        output: combined stdout and stderr of the process (text).
        restart_count: how many times the container had been restarted before this run.
    """

    name: str
    exit_code: int
    message: str
    output: str
    restart_count: int = 0


@dataclass
class JobOutcome:
    """The end of a Job as seen through the API after the stand-in ran its Pods.

    Attributes:
        condition: ``"Complete"`` or ``"Failed"`` (the Job condition that became True).
        reason: that condition's reason (e.g. ``BackoffLimitExceeded``) or ``""``.
        job: the Job object (``V1Job``) as last read.
        runs: every container run of every Pod of the Job, in order.
    """

    condition: str
    reason: str
    job: Any
    runs: list[ContainerRun] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """True when the Job ended ``Complete``."""
        return self.condition == "Complete"

    @property
    def message(self) -> str:
        """The termination message of the last container run, ``""`` when none ran."""
        return self.runs[-1].message if self.runs else ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references the way the kubelet does for command, args and env.

    ``$(VAR)`` becomes ``env[VAR]`` when VAR is defined and stays as written otherwise;
    ``$$`` is an escaped ``$`` (source: k8s.io/kubernetes third_party/forked/golang/expansion).

    Args:
        text: the string to expand.
        env: the variables defined so far.

    Returns:
        The expanded string.
    """

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, text)


class _PathRewriter:
    """Rewrites container paths (mount paths) into local folders, longest prefix first."""

    def __init__(self, mapping: Mapping[str, str]):
        self.mapping = dict(sorted(mapping.items(), key=lambda kv: -len(kv[0])))
        if self.mapping:
            alternatives = "|".join(re.escape(p.rstrip("/") or "/") for p in self.mapping)
            # A container path starts at the beginning or after a separator-like character and
            # ends at a path boundary, so /models does not match inside /models2 or /x/models.
            self.pattern = re.compile(rf"(?<![\w.\-/])({alternatives})(?=/|$|[\s\"',;:=])")
        else:
            self.pattern = None

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        lookup = {k.rstrip("/") or "/": v for k, v in self.mapping.items()}
        return self.pattern.sub(lambda m: lookup[m.group(1)], text)


class KubeletStandIn:
    """Runs the Pods that the Job controller creates for Jobs, locally (tests only).

    Args:
        api_client: a ``kubernetes.client.ApiClient`` for the test cluster (admin rights).
        volume_map: ``{claimName: local folder}`` for ``persistentVolumeClaim`` volumes.
        extra_env: variables added to every container's environment before the spec's own
            (for example ``HF_ENDPOINT`` pointing at the test hub); the spec wins on conflict.
        path_prefix: folders put in front of ``PATH`` (default: the folder of the running
            Python, so console scripts of the test virtualenv such as ``lorafleet-install``
            resolve as in the image).
        workdir: parent folder for per-Pod scratch folders (default: a new temp folder).
        timeout: seconds a single container may run before it is killed.

    Use :meth:`run_job` to run one Job to its end, or :meth:`start`/:meth:`stop` to run every
    Job Pod that appears in some namespaces in the background.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        volume_map: Mapping[str, str | os.PathLike[str]] | None = None,
        *,
        extra_env: Mapping[str, str] | None = None,
        path_prefix: Iterable[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timeout: float = 600.0,
    ):
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.volume_map = {k: str(Path(v)) for k, v in (volume_map or {}).items()}
        self.extra_env = dict(extra_env or {})
        self.path_prefix = (
            list(path_prefix) if path_prefix is not None else [str(Path(sys.executable).parent)]
        )
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubelet-standin-"))
        self.timeout = timeout
        self.runs: dict[str, list[ContainerRun]] = {}  # pod uid -> runs
        self._handled: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[Any]] = []
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------------ public API

    def run_job(self, namespace: str, name: str, timeout: float = 300.0) -> JobOutcome:
        """Run the Pods of Job ``namespace/name`` until the Job is ``Complete`` or ``Failed``.

        The Job controller creates the Pods (and replacement Pods after failures, honouring
        ``backoffLimit``); this method runs each new one and waits for the Job's final
        condition.

        Args:
            namespace: the Job's namespace.
            name: the Job's name.
            timeout: seconds to wait for the Job to end, in total.

        Returns:
            A :class:`JobOutcome`.

        Raises:
            TimeoutError: the Job did not end within ``timeout`` seconds.
            StandInError: a Pod of the Job cannot be run (its message says why).
        """
        deadline = time.monotonic() + timeout
        runs: list[ContainerRun] = []
        while True:
            job = self.batch.read_namespaced_job(name, namespace)
            cond = _final_condition(job)
            if cond is not None:
                return JobOutcome(cond[0], cond[1], job, runs)
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=f"{JOB_NAME_LABEL}={name}"
            ).items
            ran = False
            for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
                if self._claim(pod):
                    runs.extend(self.run_pod(pod))
                    ran = True
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Job {namespace}/{name} did not become Complete or Failed within "
                    f"{timeout:.0f} s (status: {job.status.to_dict() if job.status else None})"
                )
            if not ran:
                time.sleep(0.2)

    def start(self, namespaces: Iterable[str], interval: float = 0.3, workers: int = 2) -> None:
        """Run, in the background, every Job Pod that appears in ``namespaces``.

        Args:
            namespaces: namespaces to watch.
            interval: seconds between polls of the Pod lists.
            workers: how many Pods may run at the same time.
        """
        if self._thread is not None:
            raise RuntimeError("KubeletStandIn.start() called twice")
        self._namespaces = list(namespaces)
        self._stop.clear()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubelet-pod")
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="kubelet-standin", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the background mode, kill running containers, remove scratch folders.

        Args:
            timeout: seconds to wait for running Pods to wind down.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeletStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ background loop

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            for ns in self._namespaces:
                try:
                    pods = self.core.list_namespaced_pod(ns).items
                except ApiException as e:
                    if e.status != 404:
                        log.warning("kubelet stand-in: listing pods in %s failed: %s", ns, e.reason)
                    continue
                except Exception as e:  # connection refused at teardown, ...
                    if not self._stop.is_set():
                        log.warning("kubelet stand-in: listing pods in %s failed: %s", ns, e)
                    continue
                for pod in pods:
                    if _owned_by_job(pod) and self._claim(pod):
                        assert self._pool is not None
                        self._futures.append(self._pool.submit(self._run_logged, pod))
            self._stop.wait(interval)

    def _run_logged(self, pod: Any) -> None:
        try:
            self.run_pod(pod)
        except Exception as e:
            log.exception("kubelet stand-in: pod %s/%s", pod.metadata.namespace, pod.metadata.name)
            self.errors.append(e)

    def _claim(self, pod: Any) -> bool:
        """Take a pending, not yet handled, not deleted Pod; False if someone else has it."""
        if (pod.status and pod.status.phase not in (None, "Pending")) or (
            pod.metadata.deletion_timestamp is not None
        ):
            return False
        with self._lock:
            if pod.metadata.uid in self._handled:
                return False
            self._handled.add(pod.metadata.uid)
            return True

    # ------------------------------------------------------------------ running a Pod

    def run_pod(self, pod: Any) -> list[ContainerRun]:
        """Run one Pod's containers locally and write its status.

        Args:
            pod: a ``V1Pod`` as read from the API.

        Returns:
            The container runs, in order.

        Raises:
            StandInError: the Pod cannot be run here; the Pod is marked ``Failed`` with that
                message as well, as a kubelet reports a container that cannot start.
        """
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        runs: list[ContainerRun] = []
        start_time = _now()
        try:
            try:
                mounts = self._prepare_volumes(pod, scratch)
            except StandInError as e:
                self._write_failed_to_start(pod, start_time, str(e))
                raise
            containers = list(pod.spec.init_containers or []) + list(pod.spec.containers)
            init_names = {c.name for c in pod.spec.init_containers or []}
            statuses: dict[str, dict[str, Any]] = {}
            phase = "Succeeded"
            for c in containers:
                restart_count = 0
                while True:
                    try:
                        env, argv, cwd, msg_file = self._prepare_container(pod, c, mounts, scratch)
                    except StandInError as e:
                        self._write_failed_to_start(pod, start_time, str(e), container=c.name)
                        raise
                    started = _now()
                    running = {
                        "name": c.name,
                        "image": c.image or "",
                        "imageID": "",
                        "containerID": f"standin://{uuid.uuid4().hex}",
                        "ready": c.name not in init_names,
                        "started": True,
                        "restartCount": restart_count,
                        "state": {"running": {"startedAt": started}},
                    }
                    if statuses.get(c.name, {}).get("state", {}).get("terminated"):
                        running["lastState"] = {
                            "terminated": statuses[c.name]["state"]["terminated"]
                        }
                    statuses[c.name] = running
                    if not self._patch_status(pod, "Running", start_time, statuses, init_names):
                        return runs  # Pod deleted before it ran
                    code, output, killed_for = self._exec(pod, argv, env, cwd)
                    message = _termination_message(
                        msg_file, code, output, c.termination_message_policy
                    )
                    runs.append(ContainerRun(c.name, code, message, output, restart_count))
                    terminated = {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else (killed_for or "Error"),
                        "startedAt": started,
                        "finishedAt": _now(),
                        "containerID": running["containerID"],
                    }
                    if message:
                        terminated["message"] = message
                    statuses[c.name] = {
                        **running,
                        "ready": False,
                        "started": False,
                        "state": {"terminated": terminated},
                    }
                    if killed_for == "PodDeleted":
                        return runs
                    if code == 0 or pod.spec.restart_policy != "OnFailure":
                        break
                    # OnFailure: the kubelet restarts the container in the same Pod; the Job
                    # controller counts restarts against backoffLimit and deletes the Pod.
                    restart_count += 1
                    if not self._patch_status(pod, "Running", start_time, statuses, init_names):
                        return runs
                if code != 0:
                    phase = "Failed"
                    break
            self._patch_status(pod, phase, start_time, statuses, init_names)
            log.info("kubelet stand-in: pod %s/%s %s", ns, name, phase)
            return runs
        finally:
            with self._lock:
                self.runs[uid] = runs
            shutil.rmtree(scratch, ignore_errors=True)

    def _prepare_volumes(self, pod: Any, scratch: Path) -> dict[str, Path]:
        """Map each volume of the Pod to a local folder; returns ``{volume name: folder}``."""
        ns = pod.metadata.namespace
        where = f"Pod {ns}/{pod.metadata.name}"
        out: dict[str, Path] = {}
        for vol in pod.spec.volumes or []:
            if vol.persistent_volume_claim is not None:
                claim = vol.persistent_volume_claim.claim_name
                if claim not in self.volume_map:
                    raise StandInError(
                        f"{where}: volume {vol.name!r} uses PersistentVolumeClaim {claim!r}, "
                        f"which has no local folder in the kubelet stand-in's volume_map "
                        f"(known claims: {sorted(self.volume_map)})"
                    )
                local = Path(self.volume_map[claim])
                local.mkdir(parents=True, exist_ok=True)
                out[vol.name] = local
            elif vol.empty_dir is not None or vol.projected is not None:
                # projected: the service-account token volume the admission plugin adds.
                local = scratch / "volumes" / vol.name
                local.mkdir(parents=True)
                out[vol.name] = local
            elif vol.secret is not None:
                out[vol.name] = self._materialise(
                    scratch / "volumes" / vol.name,
                    self._secret_data(ns, vol.secret.secret_name, vol.secret.optional, where),
                    vol.secret.items,
                )
            elif vol.config_map is not None:
                out[vol.name] = self._materialise(
                    scratch / "volumes" / vol.name,
                    self._configmap_data(ns, vol.config_map.name, vol.config_map.optional, where),
                    vol.config_map.items,
                )
            elif vol.host_path is not None:
                out[vol.name] = Path(vol.host_path.path)
            else:
                raise StandInError(
                    f"{where}: volume {vol.name!r} is of a kind the kubelet stand-in cannot map "
                    f"(supported: persistentVolumeClaim, emptyDir, secret, configMap, hostPath, "
                    f"projected)"
                )
        return out

    @staticmethod
    def _materialise(folder: Path, data: Mapping[str, bytes], items: Any) -> Path:
        folder.mkdir(parents=True)
        pairs = [(i.key, i.path) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key in data:
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[key])
        return folder

    def _secret_data(
        self, ns: str, name: str, optional: bool | None, where: str
    ) -> dict[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, ns)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            raise StandInError(f"{where}: Secret {ns}/{name} cannot be read ({e.reason})") from e
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        data.update({k: v.encode() for k, v in (secret.string_data or {}).items()})
        return data

    def _configmap_data(
        self, ns: str, name: str, optional: bool | None, where: str
    ) -> dict[str, bytes]:
        try:
            cm = self.core.read_namespaced_config_map(name, ns)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            raise StandInError(f"{where}: ConfigMap {ns}/{name} cannot be read ({e.reason})") from e
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def _prepare_container(
        self, pod: Any, c: Any, volumes: Mapping[str, Path], scratch: Path
    ) -> tuple[dict[str, str], list[str], str, Path]:
        """Build (environment, argv, working folder, termination-message file) for ``c``."""
        ns = pod.metadata.namespace
        where = f"Pod {ns}/{pod.metadata.name} container {c.name!r}"
        mapping: dict[str, str] = {}
        for m in c.volume_mounts or []:
            if m.name not in volumes:
                raise StandInError(f"{where}: volumeMount {m.name!r} names no volume of the Pod")
            local = volumes[m.name] / m.sub_path if m.sub_path else volumes[m.name]
            if m.sub_path:
                local.mkdir(parents=True, exist_ok=True)
            mapping[m.mount_path] = str(local)
        msg_path = c.termination_message_path or "/dev/termination-log"
        msg_file = scratch / f"termination-log-{c.name}-{uuid.uuid4().hex[:8]}"
        msg_file.write_bytes(b"")
        mapping[msg_path] = str(msg_file)
        rewrite = _PathRewriter(mapping)

        env: dict[str, str] = {k: os.environ[k] for k in HOST_ENV_KEEP if k in os.environ}
        if self.path_prefix:
            env["PATH"] = os.pathsep.join([*self.path_prefix, env.get("PATH", os.defpath)])
        env.update(self.extra_env)
        spec_env: dict[str, str] = {}
        for src in c.env_from or []:
            prefix = src.prefix or ""
            if src.secret_ref is not None:
                data = self._secret_data(ns, src.secret_ref.name, src.secret_ref.optional, where)
            elif src.config_map_ref is not None:
                data = self._configmap_data(
                    ns, src.config_map_ref.name, src.config_map_ref.optional, where
                )
            else:
                continue
            spec_env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in c.env or []:
            if var.value_from is None:
                spec_env[var.name] = expand_vars(var.value or "", {**env, **spec_env})
            else:
                value = self._resolve_value_from(pod, c, var, where)
                if value is not None:
                    spec_env[var.name] = value
        env.update({k: rewrite(v) for k, v in spec_env.items()})

        argv = [expand_vars(a, env) for a in [*(c.command or []), *(c.args or [])]]
        if not argv:
            raise StandInError(
                f"{where}: no command or args; the stand-in cannot run an image's entrypoint "
                f"(image {c.image!r})"
            )
        argv = [rewrite(a) for a in argv]
        cwd = rewrite(c.working_dir) if c.working_dir else str(scratch)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return env, argv, cwd, msg_file

    def _resolve_value_from(self, pod: Any, c: Any, var: Any, where: str) -> str | None:
        vf = var.value_from
        ns = pod.metadata.namespace
        if vf.secret_key_ref is not None:
            ref = vf.secret_key_ref
            data = self._secret_data(ns, ref.name, ref.optional, where)
            if ref.key not in data:
                if ref.optional:
                    return None
                raise StandInError(
                    f"{where}: env {var.name!r} wants key {ref.key!r} of Secret {ns}/{ref.name}, "
                    f"which has no such key"
                )
            return data[ref.key].decode()
        if vf.config_map_key_ref is not None:
            ref = vf.config_map_key_ref
            data = self._configmap_data(ns, ref.name, ref.optional, where)
            if ref.key not in data:
                if ref.optional:
                    return None
                raise StandInError(
                    f"{where}: env {var.name!r} wants key {ref.key!r} of ConfigMap "
                    f"{ns}/{ref.name}, which has no such key"
                )
            return data[ref.key].decode()
        if vf.field_ref is not None:
            return _field_ref(pod, vf.field_ref.field_path, where, var.name)
        if vf.resource_field_ref is not None:
            ref = vf.resource_field_ref
            res = c.resources
            source = (res.limits or {}) if res else {}
            if ref.resource.startswith("requests."):
                source = (res.requests or {}) if res else {}
            value = source.get(ref.resource.split(".", 1)[1])
            return str(value if value is not None else 0)
        raise StandInError(f"{where}: env {var.name!r} has a valueFrom the stand-in cannot read")

    def _exec(
        self, pod: Any, argv: list[str], env: dict[str, str], cwd: str
    ) -> tuple[int, str, str]:
        """Run ``argv``; returns (exit code, output, kill reason or "")."""
        with tempfile.TemporaryFile() as out_file:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                # As a runtime reports an exec failure: exit code 128, reason StartError.
                return 128, f"cannot run {argv[0]!r}: {e}", "StartError"
            killed_for = self._supervise(proc, pod)
            code = proc.wait()
            if code < 0:
                code = 128 - code  # killed by signal N: a runtime reports 128 + N
            out_file.seek(0)
            output = out_file.read().decode(errors="replace")
        return code, output, killed_for

    def _supervise(self, proc: subprocess.Popen[bytes], pod: Any) -> str:
        """Wait for ``proc``; kill it on timeout, Pod deletion or stop(). Returns the reason."""
        deadline = time.monotonic() + self.timeout
        last_check = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            killed_for = ""
            if now > deadline:
                killed_for = "DeadlineExceeded"
            elif self._stop.is_set():
                killed_for = "StandInStopped"
            elif now - last_check > 1.0:
                last_check = now
                if self._pod_gone(pod):
                    killed_for = "PodDeleted"
            if killed_for:
                _kill_group(proc)
                return killed_for
        return ""

    def _pod_gone(self, pod: Any) -> bool:
        try:
            cur = self.core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
        except ApiException as e:
            return e.status == 404
        except Exception:
            return False
        return cur.metadata.uid != pod.metadata.uid or cur.metadata.deletion_timestamp is not None

    def _patch_status(
        self,
        pod: Any,
        phase: str,
        start_time: str,
        statuses: Mapping[str, dict[str, Any]],
        init_names: set[str],
    ) -> bool:
        """Write the Pod status; False when the Pod no longer exists."""
        now = _now()
        finished = phase in ("Succeeded", "Failed")
        ready = "False"
        reason = "PodCompleted" if finished else None
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": start_time},
            {"type": "Initialized", "status": "True", "lastTransitionTime": start_time},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ]
        if reason:
            for cond in conditions[2:]:
                cond["reason"] = reason
        body = {
            "status": {
                "phase": phase,
                "startTime": start_time,
                "conditions": conditions,
                "initContainerStatuses": [v for k, v in statuses.items() if k in init_names],
                "containerStatuses": [v for k, v in statuses.items() if k not in init_names],
            }
        }
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, body, _content_type=MERGE_PATCH
            )
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    def _write_failed_to_start(
        self, pod: Any, start_time: str, message: str, container: str | None = None
    ) -> None:
        c = container or pod.spec.containers[0].name
        statuses = {
            c: {
                "name": c,
                "image": "",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            }
        }
        init = {i.name for i in pod.spec.init_containers or []}
        with contextlib.suppress(ApiException):
            self._patch_status(pod, "Failed", start_time, statuses, init)


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _termination_message(msg_file: Path, code: int, output: str, policy: str | None) -> str:
    """The message a kubelet would put in ``state.terminated.message``."""
    with open(msg_file, "rb") as f:
        data = f.read(MAX_TERMINATION_MESSAGE_BYTES)
    message = data.decode(errors="replace")
    if not message and code != 0 and policy == "FallbackToLogsOnError":
        tail = "\n".join(output.splitlines()[-FALLBACK_LOG_LINES:])
        message = tail.encode()[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return message


def _field_ref(pod: Any, path: str, where: str, var: str) -> str:
    md = pod.metadata
    simple = {
        "metadata.name": md.name,
        "metadata.namespace": md.namespace,
        "metadata.uid": md.uid,
        "spec.nodeName": pod.spec.node_name or "",
        "spec.serviceAccountName": pod.spec.service_account_name or "",
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        source = (md.labels if m.group(1) == "labels" else md.annotations) or {}
        return source.get(m.group(2), "")
    raise StandInError(
        f"{where}: env {var!r} has fieldRef {path!r}, which the stand-in cannot read"
    )


def _owned_by_job(pod: Any) -> bool:
    return any(
        ref.kind == "Job" and ref.api_version == "batch/v1"
        for ref in pod.metadata.owner_references or []
    )


def _final_condition(job: Any) -> tuple[str, str] | None:
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type, cond.reason or ""
    return None
