"""Operator scale benchmark: many LoraAdapters against one Ready BaseModel.

Measures, in one run against the Go-built test control plane (``scripts/cluster.sh``):

- ``adapters_ready_s``: seconds from creating N LoraAdapters until all are ``Ready``;
- ``serve_config_writes``: how many times the RayService's ``serveConfigV2`` changed meanwhile
  (RayService ``metadata.generation`` increments; the operator coalesces adapter changes);
- ``per_adapter_ms``: ``adapters_ready_s / N`` in milliseconds;
- the operator process's CPU use over an idle window once everything is settled.

The operator runs as a separate process (``lorafleet operator``) so its CPU can be measured.
Install Jobs run through the kubelet stand-in (tests/support/kubelet_standin.py) on a control
plane without a node (`cluster.sh up`, no `--node`): the benchmark measures the operator, not
container start-up, which on a 2-core test node would dominate 200 Jobs. To measure the
operator rather than torch start-up, the Jobs' ``lorafleet-install`` resolves (through ``PATH``)
to a *benchmark installer* written by this script, which lays out the install folder and writes
an install report exactly as the real installer does (docs/interfaces.md sections 1-2) for a
trivial source. RayService readiness is written by a thread standing in for KubeRay's status
writer, and ``GET /stats`` of the Serve application (the operator's probe, and the residency
report it writes into ``status.serving``) is answered by a stand-in on 127.0.0.1
(``LORAFLEET_SERVING_PROBE_URL``): status feedback is on, as in a cluster. Last line (exactly): ``adapters_ready_s=<s> serve_config_writes=<n> per_adapter_ms=<ms>``.

Usage: ``python benchmarks/operator.py [--quick] [--adapters N] [--kubeconfig PATH]``
(without ``--kubeconfig`` a control plane is started with ``scripts/cluster.sh up`` and stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUP, VERSION = "lorafleet.io", "v1alpha1"
CLAIM = "models"

BENCH_INSTALLER = textwrap.dedent(
    '''\
    #!{python}
    """Benchmark installer: the real installer's layout and report for a trivial source."""
    import argparse, json, os, sys
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    for flag in ("--namespace", "--name", "--source", "--revision", "--dest", "--base-path",
                 "--base-source", "--max-rank", "--report-file", "--progress-file", "--timeout",
                 "--task", "--num-labels", "--path"):
        p.add_argument(flag)
    a, _ = p.parse_known_args()
    def report(obj):
        line = json.dumps(obj)
        print(line)
        if a.report_file:
            with open(a.report_file, "a") as f:
                f.write(line + "\\n")
    if a.mode == "remove":
        import shutil
        shutil.rmtree(a.path, ignore_errors=True)
        report({{"ok": True, "reason": "Removed", "message": "removed", "path": a.path}})
        sys.exit(0)
    kind = "basemodels" if a.mode == "base" else "adapters"
    rev = a.revision or "bench"
    folder = os.path.join(a.dest, a.namespace, kind, a.name, rev)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "lorafleet.json"), "w") as f:
        json.dump({{"source": a.source}}, f)
    report({{"ok": True, "reason": "Installed", "message": "installed", "kind": a.mode,
            "resolvedRevision": rev, "sizeBytes": 16, "path": folder, "rank": 8,
            "targetModules": ["q_proj", "v_proj"]}})
    '''
)


def _cluster(args: argparse.Namespace, stack: contextlib.ExitStack) -> str:
    if args.kubeconfig:
        return args.kubeconfig
    from tests.support.kube import _script, _script_env

    run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lf-bench-"))) / "run"
    env = _script_env(run_dir)
    proc = _script("up", env, 3600)
    stack.callback(_script, "down", env, 120)
    if proc.returncode != 0:
        raise SystemExit(f"scripts/cluster.sh up failed: {proc.stderr[-2000:]}")
    paths = dict(
        line.split("=", 1) for line in _script("paths", env, 60).stdout.splitlines() if "=" in line
    )
    return paths["KUBECONFIG"]


def _readiness_writer(namespace: str, stop: threading.Event) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi()
    while not stop.wait(0.5):
        with contextlib.suppress(ApiException):
            for rs in api.list_namespaced_custom_object("ray.io", "v1", namespace, "rayservices")[
                "items"
            ]:
                gen = rs["metadata"].get("generation")
                if (rs.get("status") or {}).get("observedGeneration") == gen:
                    continue
                api.patch_namespaced_custom_object_status(
                    "ray.io",
                    "v1",
                    namespace,
                    "rayservices",
                    rs["metadata"]["name"],
                    {
                        "status": {
                            "observedGeneration": gen,
                            "conditions": [
                                {
                                    "type": "Ready",
                                    "status": "True",
                                    "reason": "NonZeroServeEndpoints",
                                    "message": "benchmark",
                                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                                }
                            ],
                        }
                    },
                )


def _serve_stub(namespace: str, resident: int) -> tuple[Any, int]:
    """A stand-in for the Serve application's ``GET /stats`` on 127.0.0.1 (there are no Ray
    Pods): it lists the adapter registry the RayService's serve config holds, as the real app
    does, and reports two replicas holding ``resident`` of them each (the residency report
    ``status.serving`` is written from), with some requests per minute.

    Returns:
        (the running ``ThreadingHTTPServer``, its port).
    """
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import yaml
    from kubernetes import client

    api = client.CustomObjectsApi()

    def registry() -> list[str]:
        rs = api.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "base")
        config = yaml.safe_load(rs["spec"].get("serveConfigV2") or "{}") or {}
        names: list[str] = []
        for app in config.get("applications", []):
            for dep in app.get("deployments", []):
                names += list((dep.get("user_config") or {}).get("adapters") or {})
        return sorted(names)

    class Stats(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            names = registry()
            body = {
                "registered": names,
                "replicas": {
                    f"replica-{k}": {
                        "resident": names[k * resident : (k + 1) * resident],
                        "requests_per_minute": {n: 3 for n in names[:resident]},
                        "last_load_seconds": {n: 0.012 for n in names[: 2 * resident]},
                    }
                    for k in range(2)
                },
            }
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _cpu_seconds(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the process exit code (1 when a target is missed)."""
    from kubernetes import client, config

    from tests.support.kubelet_standin import KubeletStandIn

    with contextlib.ExitStack() as stack:
        kubeconfig = _cluster(args, stack)
        os.environ["KUBECONFIG"] = kubeconfig
        config.load_kube_config(config_file=kubeconfig)
        from lorafleet_operator.crdgen import build_crd
        from lorafleet_operator.models import BASEMODEL_KIND, LORAADAPTER_KIND

        ext = client.ApiextensionsV1Api()
        for kind in (BASEMODEL_KIND, LORAADAPTER_KIND):
            with contextlib.suppress(client.ApiException):
                ext.create_custom_resource_definition(build_crd(kind))
        time.sleep(2)
        core, custom = client.CoreV1Api(), client.CustomObjectsApi()
        ns = f"bench-{int(time.time())}"
        core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_persistent_volume_claim(
            ns,
            {
                "metadata": {"name": CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lf-bench-work-")))
        bindir = work / "bin"
        bindir.mkdir()
        installer = bindir / "lorafleet-install"
        installer.write_text(BENCH_INSTALLER.format(python=sys.executable))
        installer.chmod(0o755)
        volume = work / "volume"
        volume.mkdir()
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"

        stub, stub_port = _serve_stub(ns, resident=8)
        stack.callback(stub.shutdown)
        env = dict(os.environ)
        env.update(
            # The operator's Serve probe (Ready means served) and status.serving feedback ask
            # the stub instead of the in-cluster Service name this host cannot resolve.
            LORAFLEET_SERVING_PROBE="true",
            LORAFLEET_SERVING_PROBE_URL=f"http://127.0.0.1:{stub_port}",
            LORAFLEET_DEFAULT_CLAIM=CLAIM,
            LORAFLEET_POLL_INTERVAL_S="1",
            LORAFLEET_DEBOUNCE_S="1",
            LORAFLEET_JOB_BACKOFF_LIMIT="0",
            LORAFLEET_METRICS_PORT="0",
            LORAFLEET_HEALTH_PORT="0",
            LORAFLEET_LOG_FORMAT="plain",
        )
        log = open(work / "operator.log", "w")  # noqa: SIM115 - closed by the exit stack
        stack.callback(log.close)
        operator = subprocess.Popen(
            [sys.executable, "-m", "lorafleet_operator", "operator", "--namespace", ns],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop_operator() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)

        stack.callback(stop_operator)
        kubelet = KubeletStandIn(
            client.ApiClient(),
            volume_map={CLAIM: volume},
            path_prefix=[str(bindir), str(Path(sys.executable).parent)],
        )
        kubelet.start([ns], interval=0.3, workers=2)
        stack.callback(kubelet.stop)
        stop = threading.Event()
        writer = threading.Thread(target=_readiness_writer, args=(ns, stop), daemon=True)
        writer.start()
        stack.callback(stop.set)

        def get(plural: str, name: str) -> dict[str, Any]:
            return custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)

        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            "basemodels",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BaseModel",
                "metadata": {"name": "base"},
                "spec": {"source": {"uri": f"pvc://{CLAIM}/bench/base"}, "serving": {"gpus": 0}},
            },
        )
        deadline = time.monotonic() + 300
        while (get("basemodels", "base").get("status") or {}).get("phase") != "Ready":
            if time.monotonic() > deadline:
                print(f"BaseModel not Ready: {get('basemodels', 'base').get('status')}")
                return 1
            time.sleep(0.5)
        rs = custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayservices", "base")
        gen0 = rs["metadata"]["generation"]

        n = args.adapters
        print(
            "note: install Jobs run through the kubelet STAND-IN (no node, no containers) and"
            " RayService readiness is written by the benchmark: this measures the operator,"
            " not container start-up",
            flush=True,
        )
        print(f"creating {n} LoraAdapters", flush=True)
        started = time.monotonic()
        for i in range(n):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                "loraadapters",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "LoraAdapter",
                    "metadata": {"name": f"a{i:04d}"},
                    "spec": {
                        "baseModel": "base",
                        "source": {"uri": f"pvc://{CLAIM}/bench/a{i}"},
                    },
                },
            )
        deadline = started + args.timeout
        ready = 0
        while True:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "loraadapters")[
                "items"
            ]
            ready = sum(1 for o in items if (o.get("status") or {}).get("phase") == "Ready")
            if ready == n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        rs = custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayservices", "base")
        writes = rs["metadata"]["generation"] - gen0
        print(f"ready={ready}/{n} registry_writes={writes}", flush=True)
        deadline = time.monotonic() + 120
        while True:  # status feedback: every adapter's RESIDENT written
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "loraadapters")[
                "items"
            ]
            fed = sum(1 for o in items if ((o.get("status") or {}).get("serving") or {}))
            if fed == n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        resident = sum(
            1 for o in items if (o["status"].get("serving") or {}).get("resident", "0/2") != "0/2"
        )
        print(f"status.serving written on {fed}/{n} adapters ({resident} resident)", flush=True)
        time.sleep(5)  # let the last status writes settle
        cpu0, t0 = _cpu_seconds(operator.pid), time.monotonic()
        time.sleep(args.idle_s)
        idle_pct = 100.0 * (_cpu_seconds(operator.pid) - cpu0) / (time.monotonic() - t0)
        print(f"operator_idle_cpu_percent={idle_pct:.2f} over {args.idle_s:.0f}s", flush=True)
        core.delete_namespace(ns)
        per_ms = 1000.0 * elapsed / n
        ok = ready == n and fed == n and writes <= 20 and idle_pct < 2.0
        if not ok:
            print(
                f"targets missed: ready {ready}/{n}, writes {writes} (<=20), idle {idle_pct:.2f}% (<2)"
            )
        print(
            f"adapters_ready_s={elapsed:.1f} serve_config_writes={writes} per_adapter_ms={per_ms:.1f}"
        )
        return 0 if ok else 1


def main() -> int:
    """Parse flags and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 adapters, 30 s idle window")
    parser.add_argument("--adapters", type=int, default=None, help="number of LoraAdapters")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for Ready")
    parser.add_argument("--kubeconfig", help="use this running cluster instead of starting one")
    args = parser.parse_args()
    if args.adapters is None:
        args.adapters = 200 if args.quick else 500
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
