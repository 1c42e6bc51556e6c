"""End to end: BaseModel from the olah Hub mirror + adapters -> Ready -> answered by Ray Serve.

Real parts: kube-apiserver + controller-manager, the kopf operator (in this process), the real
installer in install Jobs run as Pods on the test node from the project's image (reading the
hub mirror on the node's address), the RayService deployed by the KubeRay stand-in to a real
local Ray Serve, and the lorafleet serving app. Outputs are compared with plain peft.

The operator runs as the Helm chart's ServiceAccount (a TokenRequest token, the chart's own
namespaced Role), not as the admin: the flow passing proves the chart's RBAC suffices.

Why a KubeRay stand-in here: this test covers a text-generation base (completions equal to
peft's greedy output) through the operator, on the session's host Ray that the serving tests
already run; real KubeRay would add a second Ray cluster (head 1 CPU + worker, each loading
torch and the model) on the 2-core node, which ``tests/k8s/test_kuberay_e2e.py`` already starts
for the whole real path (chart, Ray Pods from the image, the Serve Service, the operator's
Serve probe). What differs between the two tasks lies below the operator (the serving app,
tested against peft on real Ray Serve in ``tests/serving``), not in what KubeRay does. The
operator's Serve probe is off here (``SERVING_PROBE=false``, conftest): this process cannot
resolve the in-cluster Service name the probe asks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.chart.operator_identity import (  # noqa: F401 (operator_sa_kubeconfig: a fixture)
    kubeconfig_in_process,
    operator_sa_kubeconfig,
)
from tests.operator.conftest import GROUP, VERSION, wait_for
from tests.operator.test_operator_k8s import _bm, _get, _lora, _phase, _rayservice, _registry

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def run_operator(
    run_operator: Callable[..., Any],
    operator_sa_kubeconfig: Path,  # noqa: F811 (the imported fixture)
) -> Callable[..., Any]:
    """conftest's ``run_operator``, with the operator's client using the chart's ServiceAccount."""

    @contextlib.contextmanager
    def start(**env: str) -> Iterator[Any]:
        with kubeconfig_in_process(operator_sa_kubeconfig), run_operator(**env) as runner:
            yield runner

    return start


PROMPT = "hello world"
MAX_TOKENS = 6


def _peft_text(base: Path, adapter: Path) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), str(adapter)
    ).eval()
    ids = torch.tensor([tok(PROMPT).input_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def _complete(http_url: str, model: str) -> requests.Response:
    return requests.post(
        f"{http_url}/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0},
        timeout=120,
    )


def _replica_pids(dashboard_url: str, app: str, headers: dict[str, str]) -> set[int]:
    reply = requests.get(
        f"{dashboard_url}/api/serve/applications/", headers=headers, timeout=30
    ).json()
    deployments = reply["applications"][app]["deployments"]
    return {r["pid"] for r in deployments["Model"]["replicas"]}


def test_end_to_end_adapters_served_added_and_removed(
    custom: Any,
    namespace: str,
    model_volume: Path,
    kuberay_standin: Any,
    ray_cluster: Any,
    pod_hub: Any,
    run_operator: Any,
    tiny_causal_lm: Path,
    tiny_lora_adapters: dict[str, Path],
):
    pod_hub.create_repo("lorafleet/tiny-llama", tiny_causal_lm)
    for name in ("alpha", "beta", "gamma"):
        pod_hub.create_repo(f"lorafleet/tiny-llama-{name}", tiny_lora_adapters[name])
    standin = kuberay_standin(
        ray_cluster.dashboard_url,
        path_map={"/models": str(model_volume)},
        headers=ray_cluster.auth_headers,
    )
    standin.start([namespace])
    with run_operator(HF_ENDPOINT=pod_hub.endpoint):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "basemodels",
            _bm(
                "tiny",
                "hf://lorafleet/tiny-llama",
                serving={"gpus": 0, "cpu": "500m", "maxAdaptersPerReplica": 4},
            ),
        )
        for name in ("alpha", "beta"):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "loraadapters",
                _lora(name, "tiny", f"hf://lorafleet/tiny-llama-{name}"),
            )
        for plural, name in (
            ("basemodels", "tiny"),
            ("loraadapters", "alpha"),
            ("loraadapters", "beta"),
        ):
            wait_for(
                f"{plural}/{name} Ready",
                lambda p=plural, n=name: _phase(_get(custom, namespace, p, n)) == "Ready",
                timeout=400,
            )
        for name in ("alpha", "beta"):
            reply = wait_for(
                f"{name} answered",
                lambda n=name: (r := _complete(ray_cluster.http_url, n)).status_code == 200 and r,
                timeout=120,
            )
            assert reply.json()["choices"][0]["text"] == _peft_text(
                tiny_causal_lm, tiny_lora_adapters[name]
            )
        pids = _replica_pids(ray_cluster.dashboard_url, "tiny", ray_cluster.auth_headers)
        generation = _rayservice(custom, namespace, "tiny")["metadata"]["generation"]
        # A third adapter: served with no replica restarted.
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "loraadapters",
            _lora("gamma", "tiny", "hf://lorafleet/tiny-llama-gamma"),
        )
        wait_for(
            "gamma Ready",
            lambda: _phase(_get(custom, namespace, "loraadapters", "gamma")) == "Ready",
            timeout=300,
        )
        reply = wait_for(
            "gamma answered",
            lambda: (r := _complete(ray_cluster.http_url, "gamma")).status_code == 200 and r,
            timeout=120,
        )
        assert reply.json()["choices"][0]["text"] == _peft_text(
            tiny_causal_lm, tiny_lora_adapters["gamma"]
        )
        assert _replica_pids(ray_cluster.dashboard_url, "tiny", ray_cluster.auth_headers) == pids
        assert _rayservice(custom, namespace, "tiny")["metadata"]["generation"] > generation
        # Delete one: 404, files gone, the others keep serving.
        alpha_path = _registry(_rayservice(custom, namespace, "tiny"))["alpha"]["path"]
        local_alpha = model_volume / alpha_path.removeprefix("/models/")
        assert local_alpha.is_dir()
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "alpha")
        wait_for("alpha gone", lambda: _get(custom, namespace, "loraadapters", "alpha") is None, 60)
        wait_for(
            "alpha 404",
            lambda: _complete(ray_cluster.http_url, "alpha").status_code == 404,
            timeout=60,
        )
        assert not local_alpha.exists()
        assert _complete(ray_cluster.http_url, "beta").status_code == 200
    standin.stop()
