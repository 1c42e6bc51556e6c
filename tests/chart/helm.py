"""Run the Go-built helm against ``charts/lorafleet`` and parse what it renders.

The helm binary comes from ``scripts/cluster.sh build`` (built from Go modules, cached), or
from the ``HELM`` environment variable when set. Tests use these helpers; so can the operator's
end-to-end test through :mod:`tests.chart.operator_identity`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorafleet"
#: The API the chart's prerequisite check looks for (``helm template`` has no cluster).
RAYSERVICE_API = "ray.io/v1/RayService"


def _cluster_kube_version() -> str:
    """The test control plane's Kubernetes version (``K8S_VERSION`` in scripts/cluster.sh).

    ``helm template``/``lint`` have no cluster to ask, and a helm built from Go modules
    without helm's Makefile ldflags defaults to v1.20, below the chart's kubeVersion; the
    tests render for the version they test against.
    """
    text = (ROOT / "scripts" / "cluster.sh").read_text()
    match = re.search(r"^K8S_VERSION=(v[0-9.]+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("scripts/cluster.sh does not pin K8S_VERSION")
    return match.group(1)


KUBE_VERSION = _cluster_kube_version()


class HelmError(RuntimeError):
    """helm exited non-zero; ``stderr`` holds its message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"helm {' '.join(args)} exited {returncode}: {stderr.strip()}")


def find_helm() -> Path | None:
    """Return the helm binary: ``$HELM``, else the one ``scripts/cluster.sh`` builds.

    Returns:
        The path of an executable helm, or None when there is none and none can be built
        (no Go toolchain).

    Raises:
        RuntimeError: ``scripts/cluster.sh build`` failed (its stderr is in the message).
    """
    env = os.environ.get("HELM")
    if env:
        return Path(env)
    script = ROOT / "scripts" / "cluster.sh"
    if not script.exists() or not (shutil.which("go") or Path("/usr/local/go/bin/go").exists()):
        on_path = shutil.which("helm")
        return Path(on_path) if on_path else None
    for cmd in (["build", "control-plane"], ["paths"]):
        done = subprocess.run(
            [str(script), *cmd], capture_output=True, text=True, timeout=3600, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/cluster.sh {cmd[0]} failed: {done.stderr[-2000:]}")
    paths = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    helm = Path(paths.get("HELM", ""))
    if not helm.is_file():
        raise RuntimeError(f"scripts/cluster.sh built no helm (paths: HELM={helm})")
    return helm


def run_helm(
    helm: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120
) -> str:
    """Run ``helm ARGS`` and return its stdout.

    Args:
        helm: Path of the helm binary.
        args: Arguments after ``helm``.
        env: Extra environment (for example ``KUBECONFIG``).
        timeout: Seconds before the call is abandoned.

    Returns:
        helm's standard output.

    Raises:
        HelmError: helm exited non-zero.
    """
    full_env = {**os.environ, **(env or {})}
    # Keep helm's caches and repository config out of the user's home.
    full_env.setdefault("HELM_CACHE_HOME", "/tmp/lorafleet-helm/cache")
    full_env.setdefault("HELM_CONFIG_HOME", "/tmp/lorafleet-helm/config")
    full_env.setdefault("HELM_DATA_HOME", "/tmp/lorafleet-helm/data")
    done = subprocess.run(
        [str(helm), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
    if done.returncode != 0:
        raise HelmError(args, done.returncode, done.stderr)
    return done.stdout


def values_args(values_files: Iterable[Path] = (), sets: Mapping[str, str] | None = None) -> list:
    """Return helm's ``-f FILE`` and ``--set-json KEY=JSON`` arguments.

    Args:
        values_files: Values files, applied in order.
        sets: Values by dotted key, each a JSON text (``"3"``, ``'"info"'``, ``'["a"]'``).

    Returns:
        The argument list.
    """
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set-json", f"{key}={value}"]
    return args


def template(
    helm: Path,
    *,
    release: str = "lorafleet",
    namespace: str = "lorafleet-system",
    values_files: Iterable[Path] = (),
    sets: Mapping[str, str] | None = None,
    api_versions: Sequence[str] = (RAYSERVICE_API,),
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """Render the chart with ``helm template`` and return its objects.

    Args:
        helm: Path of the helm binary.
        release: Release name.
        namespace: Release namespace.
        values_files: Values files (``-f``).
        sets: Values by dotted key as JSON texts (``--set-json``).
        api_versions: Extra APIs to declare as served (``--api-versions``); by default the
            RayService API, as a cluster with KubeRay would.
        include_crds: Also render ``crds/``.

    Returns:
        The rendered objects, in helm's order, empty documents dropped.

    Raises:
        HelmError: rendering failed (schema validation, a template's ``fail``).
    """
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    for api in api_versions:
        args += ["--api-versions", api]
    if include_crds:
        args.append("--include-crds")
    out = run_helm(helm, args + values_args(values_files, sets))
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """Return the objects of one ``kind``, in order."""
    return [obj for obj in objects if obj.get("kind") == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    """Return the only object of ``kind``.

    Raises:
        AssertionError: there is not exactly one.
    """
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
