"""The official ``openai`` Python client against the running Ray Serve app, unchanged.

Uses the same deployment as ``test_app_ray.py`` (re-PUTting an identical config is a no-op).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.serving.test_api_http import PROMPTS, peft_greedy
from tests.serving.test_app_ray import GEN_APP, app_configs
from tests.support.ray_cluster import RayCluster, deploy_serve_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def client(
    ray_cluster: RayCluster,
    tiny_causal_lm: Path,
    tiny_lora_adapters: dict,
    tiny_classifier: Path,
    tiny_cls_adapters: dict,
) -> Iterator[openai.OpenAI]:
    """An ``openai.OpenAI`` client pointed at the Serve proxy's ``/v1``."""
    adapters = {n: tiny_lora_adapters[n] for n in ("alpha", "beta", "gamma")}
    config = app_configs(tiny_causal_lm, adapters, tiny_classifier, tiny_cls_adapters)
    deploy_serve_config(ray_cluster.dashboard_url, config, timeout=600, token=ray_cluster.token)
    with openai.OpenAI(
        base_url=f"{ray_cluster.http_url}/v1", api_key="not-needed", max_retries=0, timeout=120
    ) as oai:
        yield oai


def test_list_models(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {GEN_APP, "alpha", "beta", "gamma"} <= set(models)
    assert models["alpha"].owned_by == "lorafleet"
    assert models["alpha"].model_extra["parent"] == GEN_APP


def test_completion(client: openai.OpenAI, tiny_causal_lm: Path, tiny_lora_adapters: dict) -> None:
    out = client.completions.create(model="beta", prompt=PROMPTS[0], max_tokens=10, temperature=0)
    ids, text, n_prompt = peft_greedy(tiny_causal_lm, tiny_lora_adapters["beta"], PROMPTS[0], 10)
    assert out.choices[0].text == text
    assert out.model == "beta"
    assert out.usage is not None
    assert out.usage.completion_tokens == len(ids)
    assert out.usage.prompt_tokens == n_prompt


def test_completion_stream(client: openai.OpenAI) -> None:
    plain = client.completions.create(
        model="gamma", prompt=PROMPTS[1], max_tokens=10, temperature=0
    )
    stream = client.completions.create(
        model="gamma",
        prompt=PROMPTS[1],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert len([c for c in chunks if c.choices]) > 1, "expected several chunks"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_chat_completion_and_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "the robot sings"}]
    plain = client.chat.completions.create(
        model="alpha", messages=messages, max_tokens=8, temperature=0
    )
    assert plain.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="alpha", messages=messages, max_tokens=8, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plain.choices[0].message.content


def test_errors_raise_openai_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.completions.create(model="nope", prompt="hi", max_tokens=4)
    assert not_found.value.status_code == 404
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="alpha", prompt="hi", max_tokens=100_000)
    assert bad.value.param == "max_tokens"
