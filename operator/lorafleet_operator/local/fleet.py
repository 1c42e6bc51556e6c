"""Local-mode reconcile: desired objects -> installs -> one Serve application per BaseModel.

:meth:`Fleet.apply` is called with the validated objects of the manifest folder, first at
start-up and then after every change of the folder. It

1. installs what is new or changed (the installer runs as a subprocess; an object whose spec and
   local source files are unchanged since a successful install is reused without running it);
2. builds each BaseModel's serve config with the operator's own
   :func:`lorafleet_operator.serveconfig.build_serve_config` (local overrides: no GPUs,
   fractional CPUs, a ``route_prefix`` per application -- ``/`` when there is one BaseModel,
   ``/<name>`` when there are several, since they share one Serve HTTP proxy -- and
   ``allowed_hosts``: only loopback ``Host`` names);
3. PUTs the configs to Ray Serve when they differ from what is deployed and waits until they are
   RUNNING. An adapter added or removed changes only ``user_config``, so Serve reconfigures the
   running replicas in place (no restart) -- exactly what happens on a cluster;
4. forgets removed objects (an adapter's files are removed with ``lorafleet-install remove``
   unless its ``deletionPolicy`` is ``Retain``).

One object's install failure does not stop the others: it is ``Failed`` with the installer's
reason in ``state.json`` (its adapters wait with ``BaseModelNotReady``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet_operator.local.install import (
    InstallFailed,
    Progress,
    install_args,
    installer_command,
    run_installer,
)
from lorafleet_operator.local.manifests import LocalObject, display_uri
from lorafleet_operator.local.serve_rest import DeployFailed, ServeREST
from lorafleet_operator.local.state import LocalState
from lorafleet_operator.models import (
    BASEMODEL_KIND,
    BaseModelSpec,
    DeletionPolicy,
    LoraAdapterSpec,
    Task,
)
from lorafleet_operator.serveconfig import adapter_entry, build_serve_config, parse_cpu_quantity

#: CPUs of a model replica in local mode when the spec sets no ``serving.cpu``: two bases and
#: their ingresses fit on a 2-core machine.
LOCAL_MODEL_NUM_CPUS = 0.5
#: Name of the install report file inside every install folder (docs/interfaces.md).
INSTALL_MANIFEST = "lorafleet.json"
#: ``Host`` names the local API answers (``args.allowed_hosts``): loopback only, so a web page
#: cannot reach it through DNS rebinding (its requests carry the attacker's host name).
LOCAL_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass
class Reporter:
    """Callbacks through which :class:`Fleet` tells the user what it does.

    Attributes:
        info: Prints one line.
        error: Prints one error line.
        progress: Called as ``progress(key, sample)`` while an install runs.
        install_done: Called as ``install_done(key)`` when an install ends (success or not).
    """

    info: Callable[[str], None]
    error: Callable[[str], None]
    progress: Callable[[str, Progress], None] | None = None
    install_done: Callable[[str], None] | None = None


class Fleet:
    """The objects ``lorafleet up`` serves, their installs and the deployed serve configs.

    Args:
        home: The ``--home`` folder; installs go to ``home/models``, logs to ``home/logs``.
        serve: REST client of the Ray dashboard.
        http_port: Port of Serve's HTTP proxy (``http_options.port``).
        reporter: Output callbacks.
        shared_cluster: The Ray cluster was not started by this ``up``: keep other
            applications in every PUT.
        timeout_s: Seconds to wait for one install and for a deployment to be RUNNING.
    """

    def __init__(
        self,
        home: Path,
        serve: ServeREST,
        http_port: int,
        reporter: Reporter,
        *,
        shared_cluster: bool = False,
        timeout_s: float = 600.0,
        reinstall: bool = False,
    ) -> None:
        self.home = Path(home).resolve()
        self.models_root = self.home / "models"
        self.logs_dir = self.home / "logs"
        self.models_root.mkdir(parents=True, exist_ok=True)
        self.state = LocalState(self.home)
        self.serve = serve
        self.http_port = http_port
        self.out = reporter
        self.shared_cluster = shared_cluster
        self.timeout_s = timeout_s
        #: Keys whose previous install must not be reused (``--reinstall``: all at start-up).
        self._no_reuse: set[str] | None = set() if not reinstall else None
        self.objects: dict[str, LocalObject] = {}
        #: Application name -> the config last deployed (and RUNNING).
        self.deployed: dict[str, dict[str, Any]] = {}
        #: Application name -> route prefix.
        self.routes: dict[str, str] = {}

    # -- installs --------------------------------------------------------------------------

    def _reusable(self, obj: LocalObject, base_path: str | None) -> dict[str, Any] | None:
        if self._no_reuse is None or obj.key in self._no_reuse:
            return None
        record = self.state.objects.get(obj.key) or {}
        path = record.get("path")
        if (
            record.get("fingerprint") != obj.fingerprint
            or record.get("phase") in (None, "Pending", "Installing", "Failed")
            or not path
            or not (Path(path) / INSTALL_MANIFEST).is_file()
        ):
            return None
        if obj.kind != BASEMODEL_KIND and record.get("basePath") != base_path:
            return None
        return record

    def _install(self, obj: LocalObject, base: dict[str, Any] | None) -> dict[str, Any] | None:
        """Install (or reuse) one object; return its state record, or ``None`` on failure."""
        base_path = base.get("path") if base else None
        reuse = self._reusable(obj, base_path)
        if reuse is not None:
            self.out.info(
                f"{obj.key}: reusing install {reuse.get('resolvedRevision')} at {reuse['path']}"
            )
            return self.state.update(obj.key, phase="Installed", reason="Installed")
        if obj.kind != BASEMODEL_KIND and base is None:
            assert isinstance(obj.spec, LoraAdapterSpec)
            self.state.update(
                obj.key,
                **_identity(obj),
                phase="Pending",
                reason="BaseModelNotReady",
                message=f"BaseModel {obj.spec.base_model!r} is not installed",
                fingerprint=None,
            )
            self.out.error(
                f"{obj.key}: waiting: BaseModel {obj.spec.base_model!r} is not installed"
            )
            return None
        self.state.update(
            obj.key,
            **_identity(obj),
            task=str(obj.spec.task) if isinstance(obj.spec, BaseModelSpec) else None,
            phase="Installing",
            reason="Installing",
            message=f"installing from {display_uri(obj.spec.source.uri)}",
            progress=None,
        )
        self.out.info(f"{obj.key}: installing from {display_uri(obj.spec.source.uri)}")
        return self._run_installer(obj, base, base_path)

    def _run_installer(
        self, obj: LocalObject, base: dict[str, Any] | None, base_path: str | None
    ) -> dict[str, Any] | None:
        """Run the installer for one object; return its Installed record, or ``None``."""
        max_rank = None
        base_source = None
        if base is not None:
            base_obj = self.objects.get(base["key"])
            if base_obj is not None and isinstance(base_obj.spec, BaseModelSpec):
                max_rank = base_obj.spec.serving.max_rank
                base_source = base_obj.spec.source.uri
        args = install_args(
            obj, self.models_root, base_path=base_path, base_source=base_source, max_rank=max_rank
        )
        started = time.monotonic()

        def progress(sample: Progress) -> None:
            if sample.bytes_total:
                self.state.update(
                    obj.key, progress=f"{100 * sample.bytes_done // sample.bytes_total}%"
                )
            if self.out.progress is not None:
                self.out.progress(obj.key, sample)

        try:
            report = run_installer(
                obj, args, self.logs_dir, on_progress=progress, timeout=self.timeout_s
            )
        except InstallFailed as exc:
            self.state.update(
                obj.key, phase="Failed", reason=exc.reason, message=exc.message, fingerprint=None
            )
            self.out.error(f"{obj.key}: install failed: {exc.reason}: {exc.message}")
            self.out.error(f"  installer log: {exc.log}")
            return None
        finally:
            if self.out.install_done is not None:
                self.out.install_done(obj.key)
        seconds = time.monotonic() - started
        wire = report.model_dump(by_alias=True)
        fields: dict[str, Any] = {
            "phase": "Installed",
            "reason": report.reason or "Installed",
            "message": report.message,
            "resolvedRevision": report.resolved_revision,
            "sizeBytes": report.size_bytes,
            "path": report.path,
            "progress": "100%",
            "fingerprint": obj.fingerprint,
            "basePath": base_path,
            "installSeconds": round(seconds, 2),
        }
        for key in ("numLabels", "architecture", "rank", "loraAlpha", "labels", "targetModules"):
            fields[key] = wire.get(key)
        record = self.state.update(obj.key, **fields)
        self.out.info(
            f"{obj.key}: installed {report.resolved_revision} "
            f"({_human_bytes(report.size_bytes)}) in {seconds:.1f} s -> {report.path}"
        )
        return record

    # -- serve configs ---------------------------------------------------------------------

    def _app_names(self, bases: list[LocalObject]) -> dict[str, str]:
        """One distinct Serve application name per BaseModel: its name; ``<ns>-<name>`` when
        two namespaces use the name; plus a short hash of its key where even that repeats
        (``a/x`` and ``default/a-x`` would both be ``a-x``)."""
        names = [b.name for b in bases]
        chosen = {
            b.key: (b.name if names.count(b.name) == 1 else f"{b.namespace}-{b.name}")
            for b in bases
        }
        values = list(chosen.values())
        for key, value in chosen.items():
            if values.count(value) > 1:
                chosen[key] = f"{value}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
        return chosen

    def build_configs(self, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Build one application config per installed BaseModel.

        Args:
            records: State records of the installed objects, by key.

        Returns:
            Application configs (``ServeApplicationSchema`` dicts), sorted by name.
        """
        bases = [o for k, o in self.objects.items() if o.kind == BASEMODEL_KIND and k in records]
        app_names = self._app_names(bases)
        apps = []
        for base in bases:
            spec = base.spec
            assert isinstance(spec, BaseModelSpec)
            record = records[base.key]
            registry: dict[str, dict[str, Any]] = {}
            for key, obj in self.objects.items():
                if (
                    obj.kind == BASEMODEL_KIND
                    or key not in records
                    or obj.namespace != base.namespace
                ):
                    continue
                assert isinstance(obj.spec, LoraAdapterSpec)
                if obj.spec.base_model != base.name:
                    continue
                adapter = records[key]
                labels = obj.spec.labels or adapter.get("labels")
                registry[obj.served_name] = adapter_entry(
                    adapter["path"],
                    int(adapter["rank"]) if adapter.get("rank") else None,
                    labels if spec.task == Task.TEXT_CLASSIFICATION else None,
                )
            app_name = app_names[base.key]
            # One Serve HTTP proxy per Ray cluster: "/" only when this up owns the cluster and
            # serves a single BaseModel; otherwise each application under /<name>.
            own_root = len(bases) == 1 and not self.shared_cluster
            route = "/" if own_root else f"/{app_name}"
            labels = spec.id2label or record.get("labels")
            num_cpus = (
                parse_cpu_quantity(spec.serving.cpu) if spec.serving.cpu else LOCAL_MODEL_NUM_CPUS
            )
            config = build_serve_config(
                app_name,
                record["path"],
                spec,
                registry,
                served_name=base.name,
                labels=labels if spec.task == Task.TEXT_CLASSIFICATION else None,
                num_cpus=num_cpus,
                num_gpus=0,
                route_prefix=route,
                allowed_hosts=LOCAL_ALLOWED_HOSTS,
            )
            apps.extend(config["applications"])
            self.routes[app_name] = route
        return sorted(apps, key=lambda a: a["name"])

    def endpoint(self, app_name: str) -> str:
        """HTTP base URL of one application (``http://127.0.0.1:<port><route_prefix>``)."""
        route = self.routes.get(app_name, "/")
        return f"http://127.0.0.1:{self.http_port}{'' if route == '/' else route}"

    # -- reconcile -------------------------------------------------------------------------

    def apply(self, objects: list[LocalObject]) -> bool:
        """Make installs and Serve match ``objects``.

        Args:
            objects: Validated objects of the folder (BaseModels first).

        Returns:
            ``True`` when every object is Ready, ``False`` when some failed (details in the
            state file and already reported).

        Raises:
            DeployFailed: If Ray Serve refused the config or did not get it RUNNING in time.
        """
        previous = self.objects
        self.objects = {o.key: o for o in objects}
        reinstall_all = self._no_reuse is None
        records: dict[str, dict[str, Any]] = {}
        base_records: dict[tuple[str, str], dict[str, Any]] = {}
        for obj in objects:
            if obj.kind == BASEMODEL_KIND:
                record = self._install(obj, None)
                if record is not None:
                    records[obj.key] = record
                    base_records[(obj.namespace, obj.name)] = {**record, "key": obj.key}
        for obj in objects:
            if obj.kind != BASEMODEL_KIND:
                assert isinstance(obj.spec, LoraAdapterSpec)
                base = base_records.get((obj.namespace, obj.spec.base_model))
                record = self._install(obj, base)
                if record is not None:
                    records[obj.key] = record
        if reinstall_all:  # --reinstall applies to the first apply only
            self._no_reuse = set()
        apps = self.build_configs(records)
        wanted = {a["name"]: a for a in apps}
        gone = set(self.deployed) - set(wanted)
        changed = [a for a in apps if self.deployed.get(a["name"]) != a]
        if changed or gone:
            changed_names = {a["name"] for a in changed}
            for key in records:
                if self._app_of(self.objects[key]) in changed_names:
                    self.state.update(key, phase="Deploying", reason="Deploying", message="")
            kinds = ", ".join(_describe_change(self.deployed.get(a["name"]), a) for a in changed)
            if gone:
                kinds += (", " if kinds else "") + f"removing {sorted(gone)}"
            self.out.info(f"deploying to Ray Serve: {kinds}")
            since = self.serve.deploy(
                apps,
                http_options={"host": "127.0.0.1", "port": self.http_port},
                keep_others=self.shared_cluster,
                mine=set(self.deployed) | set(wanted),
            )
            try:
                self.serve.wait_running(changed, since, self.timeout_s, gone=gone)
            except DeployFailed as exc:
                for key in records:
                    self.state.update(key, phase="Failed", reason=exc.reason, message=str(exc))
                raise
            self.deployed = copy.deepcopy(wanted)
        for key in records:
            obj = self.objects[key]
            app = self._app_of(obj)
            self.state.update(
                key,
                phase="Ready",
                reason="Serving",
                message=f"served as {obj.served_name!r} at {self.endpoint(app)}",
                endpoint=self.endpoint(app),
                progress=None,
            )
        self._forget(previous, self.objects)
        failed = [k for k in self.objects if self.state.get(k).get("phase") != "Ready"]
        return not failed

    def _app_of(self, obj: LocalObject) -> str:
        bases = [o for o in self.objects.values() if o.kind == BASEMODEL_KIND]
        names = self._app_names(bases)
        if obj.kind == BASEMODEL_KIND:
            return names[obj.key]
        assert isinstance(obj.spec, LoraAdapterSpec)
        return names.get(f"{BASEMODEL_KIND}/{obj.namespace}/{obj.spec.base_model}", "")

    def _forget(self, previous: dict[str, LocalObject], current: dict[str, LocalObject]) -> None:
        for key, obj in previous.items():
            if key in current:
                continue
            record = self.state.objects.get(key) or {}
            policy = getattr(obj.spec, "deletion_policy", DeletionPolicy.DELETE)
            if (
                obj.kind != BASEMODEL_KIND
                and policy == DeletionPolicy.DELETE
                and record.get("path")
            ):
                self._remove_files(key, record["path"])
            self.state.remove(key)
            self.out.info(f"{key}: removed (no longer in the manifests)")
        # Objects in state that were never seen by this run and are not in the folder.
        for key in list(self.state.objects):
            if key not in current and key not in previous:
                self.state.remove(key)

    def _remove_files(self, key: str, path: str) -> None:
        cmd = [*installer_command(), "remove", "--path", path]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                self.out.error(f"{key}: could not remove {path}: {result.stderr.strip()[-300:]}")

    def undeploy(self) -> None:
        """Remove this fleet's applications from a shared Ray cluster and wait until gone."""
        if not self.deployed:
            return
        gone = set(self.deployed)
        since = self.serve.deploy([], keep_others=True, mine=gone)
        self.serve.wait_running([], since, 120.0, gone=gone)
        self.deployed = {}

    def mark_stopped(self) -> None:
        """Record that nothing is served any more.

        Ready/Deploying objects go back to ``Installed``; an interrupted install becomes
        ``Pending`` with reason ``InstallInterrupted``.
        """
        for record in self.state.objects.values():
            if record.get("phase") in ("Ready", "Deploying"):
                record.update(
                    phase="Installed",
                    reason="Installed",
                    message="installed; not served (lorafleet up is not running)",
                )
                record.pop("endpoint", None)
            elif record.get("phase") == "Installing":
                record.update(
                    phase="Pending",
                    reason="InstallInterrupted",
                    message="the install was interrupted; the next `lorafleet up` resumes it",
                )
        self.state.set_top(pid=None, endpoint=None, dashboard=None)


def _describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return f"new application {new['name']!r}"
    if _without_user_config(old) == _without_user_config(new):
        return f"{new['name']!r} adapters (user_config only, replicas reconfigured in place)"
    return f"{new['name']!r} (args/resources changed: replicas restart)"


def _without_user_config(app: dict[str, Any]) -> dict[str, Any]:
    app = copy.deepcopy(app)
    for dep in app.get("deployments", []):
        dep.pop("user_config", None)
    return app


def _human_bytes(size: int | None) -> str:
    if size is None:
        return "? B"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"


def _identity(obj: Any) -> dict[str, Any]:
    """The state fields that name an object: kind, name, namespace, file, served name, base."""
    return {
        "kind": obj.kind,
        "name": obj.name,
        "namespace": obj.namespace,
        "file": str(obj.file),
        "servedName": obj.served_name,
        "baseModel": getattr(obj.spec, "base_model", None),
    }
