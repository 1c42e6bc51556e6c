"""The Ray Serve application on a real local Ray, deployed like KubeRay deploys it.

The serve config is built by the operator's own ``build_serve_config`` (docs/interfaces.md
section 3) and PUT to the dashboard REST API; requests go through Serve's HTTP proxy. Two
applications run side by side: a generation base at ``/`` and a classification base at ``/cls``.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.serveconfig import build_serve_config

from tests.serving.test_adapter_variants import CLS_VARIANTS, GEN_VARIANTS, make_variants
from tests.serving.test_api_http import (
    CLS_LABELS,
    PROMPTS,
    assert_error,
    broken_adapter,
    peft_greedy,
    peft_logits,
    sse_events,
)
from tests.support.ray_cluster import (
    RayCluster,
    deploy_serve_config,
    replica_pids,
    serve_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

GEN_APP = "tinyllama"
CLS_APP = "tinybert"
MULTI_APP = "twin"  # two Model replicas, one adapter each at most: multiplexed routing
MAX_TOKENS_LIMIT = 64
MODEL_NUM_CPUS = 0.5


def app_configs(
    base: Path,
    adapters: dict[str, Path],
    cls_base: Path,
    cls_adapters: dict[str, Path],
    *,
    max_adapters: int = 2,
) -> dict[str, Any]:
    """The serve config of the test applications, built by the operator's builder.

    Args:
        base: Generation base folder (served as ``tinyllama`` at ``/`` and as ``twin`` at
            ``/twin`` with two Model replicas, ``max_adapters`` 1 and adapters alpha, beta).
        adapters: Its adapter registry (name -> folder).
        cls_base: Classification base folder (served as ``tinybert`` at ``/cls``).
        cls_adapters: Its adapter registry (name -> folder); labels from ``CLS_LABELS``.
        max_adapters: ``maxAdaptersPerReplica`` of the generation base.

    Returns:
        ``{"applications": [generation app, classification app, twin app]}``.
    """
    gen_spec = BaseModelSpec.model_validate(
        {
            "source": {"uri": f"file://{base}"},
            "task": "text-generation",
            "serving": {
                "gpus": 0,
                "maxAdaptersPerReplica": max_adapters,
                "maxTokensLimit": MAX_TOKENS_LIMIT,
            },
        }
    )
    cls_spec = BaseModelSpec.model_validate(
        {
            "source": {"uri": f"file://{cls_base}"},
            "task": "text-classification",
            "id2label": {"0": "negative", "1": "positive"},
            "serving": {"gpus": 0, "maxAdaptersPerReplica": 4},
        }
    )
    gen = build_serve_config(
        GEN_APP,
        str(base),
        gen_spec,
        {n: {"path": str(p), "rank": 8} for n, p in adapters.items()},
        num_cpus=MODEL_NUM_CPUS,
        num_gpus=0,
    )
    cls_registry: dict[str, Any] = {}
    for name, path in cls_adapters.items():
        cls_registry[name] = {"path": str(path), "rank": 8}
        if name in CLS_LABELS:
            cls_registry[name]["labels"] = CLS_LABELS[name]
    cls = build_serve_config(
        CLS_APP,
        str(cls_base),
        cls_spec,
        cls_registry,
        num_cpus=MODEL_NUM_CPUS,
        num_gpus=0,
        route_prefix="/cls",
    )
    twin_spec = BaseModelSpec.model_validate(
        {
            "source": {"uri": f"file://{base}"},
            "task": "text-generation",
            "serving": {"gpus": 0, "replicas": 2, "maxAdaptersPerReplica": 1},
        }
    )
    twin = build_serve_config(
        MULTI_APP,
        str(base),
        twin_spec,
        {n: {"path": str(adapters[n]), "rank": 8} for n in ("alpha", "beta")},
        num_cpus=MODEL_NUM_CPUS,
        num_gpus=0,
        route_prefix=f"/{MULTI_APP}",
    )
    return {"applications": gen["applications"] + cls["applications"] + twin["applications"]}


def model_user_config(config: dict[str, Any], app: str = GEN_APP) -> dict[str, Any]:
    """The ``Model`` deployment's ``user_config`` of ``app`` inside ``config`` (mutable)."""
    for application in config["applications"]:
        if application["name"] == app:
            for dep in application["deployments"]:
                if dep["name"] == "Model":
                    return dep["user_config"]
    raise KeyError(f"no Model deployment in application {app!r}")


@pytest.fixture(scope="module")
def ray_adapters(tiny_lora_adapters: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """alpha, beta, gamma and ``broken`` (delta is added later through user_config)."""
    adapters = {n: tiny_lora_adapters[n] for n in ("alpha", "beta", "gamma")}
    adapters["broken"] = broken_adapter(
        tiny_lora_adapters["alpha"], tmp_path_factory.mktemp("ray-broken") / "broken"
    )
    return adapters


@pytest.fixture(scope="module")
def deployed(
    ray_cluster: RayCluster,
    tiny_causal_lm: Path,
    ray_adapters: dict,
    tiny_classifier: Path,
    tiny_cls_adapters: dict,
) -> Iterator[dict[str, Any]]:
    """Both applications deployed through ``PUT /api/serve/applications/``; yields the config."""
    config = app_configs(tiny_causal_lm, ray_adapters, tiny_classifier, tiny_cls_adapters)
    deploy_serve_config(ray_cluster.dashboard_url, config, timeout=600, token=ray_cluster.token)
    yield config


def _post(cluster: RayCluster, path: str, body: dict, **kwargs: Any) -> requests.Response:
    return requests.post(f"{cluster.http_url}{path}", json=body, timeout=120, **kwargs)


def _complete(cluster: RayCluster, model: str, prompt: str, **extra: Any) -> requests.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, **extra}
    return _post(cluster, "/v1/completions", body)


def test_deployment_shape(ray_cluster: RayCluster, deployed: dict) -> None:
    status = serve_status(ray_cluster.dashboard_url, token=ray_cluster.token)
    for app in (GEN_APP, CLS_APP):
        assert status["applications"][app]["status"] == "RUNNING"
        deployments = status["applications"][app]["deployments"]
        assert set(deployments) == {"Ingress", "Model"}
        # The code's default applies where the serve config says nothing (Serve's own is 5).
        assert deployments["Ingress"]["deployment_config"]["max_ongoing_requests"] == 1024
    assert ray_cluster.http_url.startswith("http://127.0.0.1:")
    assert requests.get(f"{ray_cluster.http_url}/health", timeout=30).json() == {"status": "ok"}
    ready = requests.get(f"{ray_cluster.http_url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["model"] == GEN_APP
    ready_cls = requests.get(f"{ray_cluster.http_url}/cls/ready", timeout=30)
    assert ready_cls.status_code == 200 and ready_cls.json()["model"] == CLS_APP


def test_models_route(ray_cluster: RayCluster, deployed: dict) -> None:
    cards = {
        c["id"]: c
        for c in requests.get(f"{ray_cluster.http_url}/v1/models", timeout=30).json()["data"]
    }
    assert set(cards) == {GEN_APP, "alpha", "beta", "gamma", "broken"}
    assert all(cards[n]["parent"] == GEN_APP for n in ("alpha", "beta", "gamma", "broken"))
    assert cards[GEN_APP]["parent"] is None


def test_concurrent_requests_equal_peft(
    ray_cluster: RayCluster, deployed: dict, tiny_causal_lm: Path, ray_adapters: dict
) -> None:
    jobs = [(a, p) for a in (GEN_APP, "alpha", "beta", "gamma") for p in PROMPTS[:2]]
    before = requests.get(f"{ray_cluster.http_url}/stats", timeout=30).json()["stats"]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: _complete(ray_cluster, *job), jobs))
    for (model, prompt), resp in zip(jobs, responses, strict=True):
        assert resp.status_code == 200, resp.text
        ids, text, n_prompt = peft_greedy(
            tiny_causal_lm, ray_adapters.get(model) if model != GEN_APP else None, prompt, 12
        )
        body = resp.json()
        assert body["choices"][0]["text"] == text, (model, prompt)
        assert body["usage"]["completion_tokens"] == len(ids)
        assert body["usage"]["prompt_tokens"] == n_prompt
    texts = {r.json()["choices"][0]["text"] for r in responses[::2]}
    assert len(texts) == 4, "base and adapters should answer differently"
    info = requests.get(f"{ray_cluster.http_url}/stats", timeout=30).json()
    pids = replica_pids(serve_status(ray_cluster.dashboard_url, token=ray_cluster.token))
    assert [info["pid"]] == pids[(GEN_APP, "Model")]
    # max_adapters=2 and three adapters in use: Serve's multiplex LRU evicted some.
    assert info["stats"]["evictions"] >= 1
    # Requests for different adapters shared batches.
    assert info["stats"]["generation_batches"] - before["generation_batches"] < len(jobs)
    assert len(info["resident"]) <= 2
    assert set(info["multiplexed"]) <= set(info["resident"])


def test_one_eviction_policy_serve_routes_what_the_cache_holds(
    ray_cluster: RayCluster, deployed: dict
) -> None:
    """Serve's multiplex LRU never evicts on its own (unlimited); the adapter cache (2 places
    here) decides, and after every request the ids Serve routes by are exactly the resident
    adapters. Sequential uses, so the cache's LRU order is known."""

    def stats() -> dict[str, Any]:
        return requests.get(f"{ray_cluster.http_url}/stats", timeout=30).json()

    for model in ("beta", "alpha"):  # alpha most recent, beta next: both resident
        assert _complete(ray_cluster, model, PROMPTS[0]).status_code == 200
    before = stats()["stats"]["evictions"]
    expected = [("gamma", {"alpha", "gamma"}), ("alpha", {"alpha", "gamma"})]
    expected += [("beta", {"alpha", "beta"}), ("alpha", {"alpha", "beta"})]
    for model, resident in expected:
        assert _complete(ray_cluster, model, PROMPTS[0]).status_code == 200
        info = stats()
        assert set(info["resident"]) == resident, (model, info["resident"])
        assert set(info["multiplexed"]) == resident, (model, info["multiplexed"])
    # gamma took beta's place, beta took gamma's: two evictions, no extra ones by Serve.
    assert stats()["stats"]["evictions"] - before == 2


def test_classification_equals_peft(
    ray_cluster: RayCluster, deployed: dict, tiny_classifier: Path, tiny_cls_adapters: dict
) -> None:
    texts = ["good movie", "the cat eats an apple"]
    for model in (CLS_APP, "sentiment", "topic", "plain"):
        resp = _post(ray_cluster, "/cls/v1/classify", {"model": model, "input": texts})
        assert resp.status_code == 200, resp.text
        names = (
            list(CLS_LABELS[model].values()) if model in CLS_LABELS else ["negative", "positive"]
        )
        adapter = tiny_cls_adapters.get(model)
        for text, item in zip(texts, resp.json()["data"], strict=True):
            ref = peft_logits(tiny_classifier, adapter, text)
            assert max(abs(a - b) for a, b in zip(item["logits"], ref, strict=True)) < 1e-4
            assert list(item["scores"]) == names


def test_streaming_over_serve(ray_cluster: RayCluster, deployed: dict) -> None:
    plain = _complete(ray_cluster, "gamma", PROMPTS[0]).json()
    resp = requests.post(
        f"{ray_cluster.http_url}/v1/completions",
        json={
            "model": "gamma",
            "prompt": PROMPTS[0],
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        stream=True,
        timeout=120,
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert text == plain["choices"][0]["text"]
    assert events[-2]["usage"] == plain["usage"]


@pytest.mark.parametrize("header", ["serve_multiplexed_model_id", "serve-multiplexed-model-id"])
def test_multiplexed_header(ray_cluster: RayCluster, deployed: dict, header: str) -> None:
    by_body = _complete(ray_cluster, "beta", PROMPTS[1]).json()
    resp = requests.post(
        f"{ray_cluster.http_url}/v1/completions",
        json={"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0},
        headers={header: "beta"},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == by_body["choices"][0]["text"]


def test_errors_over_serve(ray_cluster: RayCluster, deployed: dict) -> None:
    assert_error(_complete(ray_cluster, "nope", "hi"), 404, "model_not_found", "model")
    assert_error(_complete(ray_cluster, "nope", "hi", stream=True), 404, "model_not_found")
    assert_error(
        _complete(ray_cluster, "alpha", "hi", max_tokens=MAX_TOKENS_LIMIT + 1),
        400,
        "invalid_request",
        "max_tokens",
    )
    assert_error(_complete(ray_cluster, "alpha", ""), 400, "invalid_request", "prompt")
    bad_json = requests.post(
        f"{ray_cluster.http_url}/v1/completions",
        data=b"{nope",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_error(bad_json, 400, "invalid_request")
    assert_error(
        _post(ray_cluster, "/v1/classify", {"model": "alpha", "input": ["x"]}),
        400,
        "unsupported_task",
    )
    assert_error(
        _post(ray_cluster, "/cls/v1/completions", {"model": "topic", "prompt": "x"}),
        400,
        "unsupported_task",
    )
    assert_error(
        _post(ray_cluster, "/cls/v1/classify", {"model": "topic", "input": []}),
        400,
        "invalid_request",
        "input",
    )


def test_broken_adapter_is_503_and_replica_keeps_serving(
    ray_cluster: RayCluster, deployed: dict, tiny_causal_lm: Path, ray_adapters: dict
) -> None:
    pids = replica_pids(serve_status(ray_cluster.dashboard_url, token=ray_cluster.token))
    err = assert_error(_complete(ray_cluster, "broken", "hi"), 503, "adapter_unavailable")
    assert "broken" in err["message"]
    resp = _complete(ray_cluster, "alpha", PROMPTS[0])
    assert resp.status_code == 200
    _, text, _ = peft_greedy(tiny_causal_lm, ray_adapters["alpha"], PROMPTS[0], 12)
    assert resp.json()["choices"][0]["text"] == text
    assert replica_pids(serve_status(ray_cluster.dashboard_url, token=ray_cluster.token)) == pids


def test_user_config_adds_and_removes_adapters_in_place(
    ray_cluster: RayCluster,
    deployed: dict,
    tiny_causal_lm: Path,
    tiny_lora_adapters: dict,
    ray_adapters: dict,
) -> None:
    pids_before = replica_pids(serve_status(ray_cluster.dashboard_url, token=ray_cluster.token))
    assert pids_before[(GEN_APP, "Model")], pids_before
    expected = {
        m: peft_greedy(tiny_causal_lm, ray_adapters.get(m), PROMPTS[2], 12)[1]
        for m in ("alpha", GEN_APP)
    }
    stop = threading.Event()
    outcomes: list[tuple[str, int, bool]] = []

    def traffic(model: str) -> None:
        while not stop.is_set():
            try:
                resp = _complete(ray_cluster, model, PROMPTS[2])
                ok = resp.status_code == 200 and (
                    resp.json()["choices"][0]["text"] == expected[model]
                )
                outcomes.append((model, resp.status_code, ok))
            except requests.RequestException:
                outcomes.append((model, -1, False))

    threads = [threading.Thread(target=traffic, args=(m,)) for m in ("alpha", GEN_APP)]
    for t in threads:
        t.start()
    added = copy.deepcopy(deployed)
    model_user_config(added)["adapters"]["delta"] = {
        "path": str(tiny_lora_adapters["delta"]),
        "rank": 8,
    }
    removed = copy.deepcopy(added)
    del model_user_config(removed)["adapters"]["beta"]
    try:
        time.sleep(1.0)
        # Make beta resident, so removing it must really evict it.
        assert _complete(ray_cluster, "beta", PROMPTS[0]).status_code == 200

        deploy_serve_config(ray_cluster.dashboard_url, added, timeout=120, token=ray_cluster.token)
        resp = _complete(ray_cluster, "delta", PROMPTS[0])
        assert resp.status_code == 200, resp.text
        _, text, _ = peft_greedy(tiny_causal_lm, tiny_lora_adapters["delta"], PROMPTS[0], 12)
        assert resp.json()["choices"][0]["text"] == text
        models = requests.get(f"{ray_cluster.http_url}/v1/models", timeout=30).json()["data"]
        assert "delta" in {m["id"] for m in models}

        beta_again = _complete(ray_cluster, "beta", PROMPTS[0])  # beta resident when removed
        assert beta_again.status_code == 200
        assert (
            "beta" in requests.get(f"{ray_cluster.http_url}/stats", timeout=30).json()["resident"]
        )
        deploy_serve_config(
            ray_cluster.dashboard_url, removed, timeout=120, token=ray_cluster.token
        )
        info = requests.get(f"{ray_cluster.http_url}/stats", timeout=30).json()
        assert "beta" not in info["registered"]
        assert "beta" not in info["resident"], info
        assert "beta" not in info["multiplexed"], info
        assert_error(_complete(ray_cluster, "beta", PROMPTS[0]), 404, "model_not_found")
        models = requests.get(f"{ray_cluster.http_url}/v1/models", timeout=30).json()["data"]
        assert "beta" not in {m["id"] for m in models}
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        # Leave the module's original config in place for later tests.
        deploy_serve_config(
            ray_cluster.dashboard_url, deployed, timeout=120, token=ray_cluster.token
        )
    failures = [o for o in outcomes if not o[2]]
    assert not failures, failures[:5]
    assert {m for m, _, _ in outcomes} == {"alpha", GEN_APP}
    assert len(outcomes) >= 4
    assert (
        replica_pids(serve_status(ray_cluster.dashboard_url, token=ray_cluster.token))
        == pids_before
    )


def test_multiplexed_routing_prefers_the_replica_holding_the_adapter(
    ray_cluster: RayCluster, deployed: dict
) -> None:
    """Two replicas holding one adapter each: after warm-up no request causes another load."""
    url = f"{ray_cluster.http_url}/{MULTI_APP}"
    pids = replica_pids(serve_status(ray_cluster.dashboard_url, token=ray_cluster.token))[
        (MULTI_APP, "Model")
    ]
    assert len(pids) == 2

    def complete(model: str) -> None:
        body = {"model": model, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0}
        assert requests.post(f"{url}/v1/completions", json=body, timeout=120).status_code == 200

    def stats_by_pid() -> dict[int, dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(60):  # /stats carries no model id: any replica answers
            info = requests.get(f"{url}/stats", timeout=30).json()
            seen[info["pid"]] = info
            if len(seen) == 2:
                break
        assert set(seen) == set(pids), seen.keys()
        return seen

    # Warm up: alpha lands on one replica; once Serve knows (ids are pushed every 0.1 s),
    # beta goes to the replica with the fewest adapters, the other one.
    complete("alpha")
    time.sleep(2.0)
    complete("beta")
    time.sleep(2.0)
    before = stats_by_pid()
    for _ in range(6):
        complete("alpha")
        complete("beta")
    after = stats_by_pid()
    holders = {
        name: [p for p, i in after.items() if name in i["multiplexed"]]
        for name in ("alpha", "beta")
    }
    assert len(holders["alpha"]) == 1 and len(holders["beta"]) == 1, holders
    assert holders["alpha"] != holders["beta"], holders
    for pid in pids:
        assert after[pid]["stats"]["loads"] == before[pid]["stats"]["loads"], (pid, after[pid])
        assert after[pid]["stats"]["evictions"] == before[pid]["stats"]["evictions"]


def test_lora_variants_over_serve_equal_peft_mixed_with_plain_and_base(
    ray_cluster: RayCluster,
    deployed: dict,
    tiny_causal_lm: Path,
    tiny_classifier: Path,
    tiny_cls_adapters: dict,
    tmp_path: Path,
) -> None:
    """DoRA, LoRA bias, embedding LoRA, rsLoRA with patterns and a saved lm_head (generation),
    a saved pooler and DoRA (classification), added through user_config and requested at once
    with plain adapters and the base: each answer equals peft with only that adapter."""
    gen = make_variants(tiny_causal_lm, tmp_path, "CAUSAL_LM", GEN_VARIANTS, 10)
    cls = make_variants(tiny_classifier, tmp_path, "SEQ_CLS", CLS_VARIANTS, 20)
    config = copy.deepcopy(deployed)
    for name, path in gen.items():
        model_user_config(config)["adapters"][name] = {"path": str(path), "rank": 4}
    for name, path in cls.items():
        model_user_config(config, CLS_APP)["adapters"][name] = {"path": str(path), "rank": 4}
    deploy_serve_config(ray_cluster.dashboard_url, config, timeout=120, token=ray_cluster.token)
    try:
        jobs = [(m, p) for m in (*gen, "alpha", GEN_APP) for p in PROMPTS[:2]]
        with ThreadPoolExecutor(len(jobs)) as pool:
            responses = list(pool.map(lambda job: _complete(ray_cluster, *job), jobs))
        paths = {**gen, "alpha": deployed_adapter(deployed, "alpha"), GEN_APP: None}
        for (model, prompt), resp in zip(jobs, responses, strict=True):
            assert resp.status_code == 200, (model, resp.text)
            _, text, _ = peft_greedy(tiny_causal_lm, paths[model], prompt, 12)
            assert resp.json()["choices"][0]["text"] == text, (model, prompt)
        texts = ["good movie", "the cat eats an apple"]
        cls_paths = {**cls, "plain": tiny_cls_adapters["plain"], CLS_APP: None}
        for model, adapter in cls_paths.items():
            resp = _post(ray_cluster, "/cls/v1/classify", {"model": model, "input": texts})
            assert resp.status_code == 200, (model, resp.text)
            for text, item in zip(texts, resp.json()["data"], strict=True):
                ref = peft_logits(tiny_classifier, adapter, text)
                diff = max(abs(a - b) for a, b in zip(item["logits"], ref, strict=True))
                assert diff < 1e-4, (model, text, diff)
    finally:
        deploy_serve_config(
            ray_cluster.dashboard_url, deployed, timeout=120, token=ray_cluster.token
        )


def deployed_adapter(config: dict[str, Any], name: str, app: str = GEN_APP) -> Path:
    """The folder of adapter ``name`` in the serve config's registry of ``app``."""
    return Path(model_user_config(config, app)["adapters"][name]["path"])


SOLO_APP = "solo"  # one replica, one adapter place: every switch loads and evicts


def scrape(cluster: RayCluster, app: str) -> dict[tuple[str, frozenset], float]:
    """The node's Prometheus endpoint: ``{(sample name, labels): value}`` of ``app``'s samples,
    with only lorafleet's own labels (``adapter``, ``status``) and histograms' ``le`` (Serve
    and Ray add deployment, replica, application, node and OpenTelemetry scope labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{cluster.head.metrics_port}/metrics"
    text = requests.get(url, timeout=30).text
    own = {"adapter", "status", "le"}
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("application") != app or not sample.name.startswith(
                "ray_lorafleet_"
            ):
                continue
            labels = frozenset((k, v) for k, v in sample.labels.items() if k in own)
            out[sample.name, labels] = out.get((sample.name, labels), 0.0) + sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _stream(cluster: RayCluster, model: str) -> int:
    """Stream one completion; its generated tokens as the final usage says (sampling may
    stop it before ``max_tokens``)."""
    resp = requests.post(
        f"{cluster.http_url}/{SOLO_APP}/v1/completions",
        json={
            "model": model,
            "prompt": PROMPTS[0],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        stream=True,
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    return int(events[-2]["usage"]["completion_tokens"])


def _wait_for(cluster: RayCluster, check: Any, timeout: float = 90.0) -> dict:
    """Scrape until ``check(samples)`` holds (Ray exports every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(cluster, SOLO_APP)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(2.0)


def test_serving_metrics_on_the_ray_node_endpoint(
    ray_cluster: RayCluster, deployed: dict, tiny_causal_lm: Path, ray_adapters: dict
) -> None:
    """Two adapters, one place on one replica: the node's metrics endpoint shows each load,
    the eviction, the resident gauge flipping, the requests per adapter as sent and one time to
    first token per streamed request."""
    spec = BaseModelSpec.model_validate(
        {
            "source": {"uri": f"file://{tiny_causal_lm}"},
            "task": "text-generation",
            "serving": {"gpus": 0, "replicas": 1, "maxAdaptersPerReplica": 1},
        }
    )
    solo = build_serve_config(
        SOLO_APP,
        str(tiny_causal_lm),
        spec,
        {n: {"path": str(ray_adapters[n]), "rank": 8} for n in ("alpha", "beta", "broken")},
        num_cpus=MODEL_NUM_CPUS,
        num_gpus=0,
        route_prefix=f"/{SOLO_APP}",
    )
    config = copy.deepcopy(deployed)
    config["applications"] += solo["applications"]
    deploy_serve_config(ray_cluster.dashboard_url, config, timeout=300, token=ray_cluster.token)
    resident = "ray_lorafleet_adapter_resident"
    try:
        # First a load that fails (nothing resident yet, so nothing is evicted for it).
        broken = requests.post(
            f"{ray_cluster.http_url}/{SOLO_APP}/v1/completions",
            json={"model": "broken", "prompt": PROMPTS[0], "max_tokens": 2},
            timeout=120,
        )
        assert broken.status_code == 503, broken.text
        tokens = {"alpha": _stream(ray_cluster, "alpha"), "beta": 0}
        first = _wait_for(ray_cluster, lambda s: _value(s, resident, adapter="alpha") == 1)
        assert _value(first, resident, adapter="alpha") == 1
        for model in ("beta", "alpha", "beta", "beta"):
            tokens[model] += _stream(ray_cluster, model)
        sent = {"alpha": 2, "beta": 3}

        def failed(s: dict) -> float:
            return _value(s, "ray_lorafleet_adapter_load_failures_total", adapter="broken")

        def settled(s: dict) -> bool:
            return (
                all(
                    _value(s, "ray_lorafleet_requests_total", adapter=n, status="2xx") == k
                    for n, k in sent.items()
                )
                and all(
                    _value(s, "ray_lorafleet_generation_tokens_total", adapter=n) == tokens[n]
                    for n in sent
                )
                and _value(s, resident, adapter="alpha") == 0
                and failed(s) == 1
            )

        samples = _wait_for(ray_cluster, settled)
        board = requests.get(f"{ray_cluster.http_url}/{SOLO_APP}/stats", timeout=30).json()
    finally:
        deploy_serve_config(
            ray_cluster.dashboard_url, deployed, timeout=120, token=ray_cluster.token
        )
    for name, count in sent.items():
        assert _value(samples, "ray_lorafleet_requests_total", adapter=name, status="2xx") == count
        assert (
            _value(samples, "ray_lorafleet_generation_tokens_total", adapter=name) == tokens[name]
        )
    # alpha, beta, alpha, beta: four loads, three evictions; beta stays.
    loads = "ray_lorafleet_adapter_load_seconds_count"
    assert _value(samples, loads, adapter="alpha") == 2
    assert _value(samples, loads, adapter="beta") == 2
    assert _value(samples, "ray_lorafleet_adapter_evictions_total", adapter="alpha") == 2
    assert _value(samples, "ray_lorafleet_adapter_evictions_total", adapter="beta") == 1
    assert _value(samples, resident, adapter="alpha") == 0
    assert _value(samples, resident, adapter="beta") == 1
    ttft = "ray_lorafleet_time_to_first_token_seconds_count"
    assert sum(_value(samples, ttft, adapter=n) for n in sent) == sum(sent.values())
    assert _value(samples, "ray_lorafleet_step_rows_count") > 0
    assert failed(samples) == 1
    assert _value(samples, "ray_lorafleet_requests_total", adapter="broken", status="5xx") == 1
    # Every metric the dashboard may query (EXPORTED; tests/chart/test_dashboard.py checks the
    # dashboard against it) is on the real endpoint.
    from lorafleet_serving.server.metrics import EXPORTED

    scraped = {name for name, _ in samples}
    suffixes = ("", "_bucket", "_count", "_sum")
    assert all(any(m + x in scraped for x in suffixes) for m in EXPORTED), set(EXPORTED) - {
        n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in scraped
    }
    # The residency board (GET /stats -> replicas): the one replica holds beta, with its
    # requests of the last minute and each adapter's last load time.
    (facts,) = board["replicas"].values()
    assert facts["resident"] == ["beta"]
    assert facts["requests_per_minute"] == {**sent, "broken": 1}
    assert set(facts["last_load_seconds"]) == {"alpha", "beta"}
