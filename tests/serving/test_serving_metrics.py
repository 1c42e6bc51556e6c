"""Serving metrics recorded by the model server (``server/metrics.py``) through a stand-in of
``ray.serve.metrics`` (tests/support/metrics.py); the real Ray endpoint is scraped in
test_app_ray.py."""

from __future__ import annotations

import pytest
from lorafleet_serving.errors import InvalidRequestError, UnknownModelError
from lorafleet_serving.server.factory import build_model_server
from lorafleet_serving.types import ClassifyRequest, GenerateRequest

from tests.support.metrics import RecordingFactory


async def test_loads_evictions_residency_requests_and_token_timing(
    tiny_causal_lm, tiny_lora_adapters
):
    recorded = RecordingFactory()
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_adapters=1, metrics_factory=recorded
    )
    paths = {n: str(tiny_lora_adapters[n]) for n in ("alpha", "beta")}
    server.apply_user_config({"adapters": {n: {"path": p} for n, p in paths.items()}})
    try:
        streamed = 0
        for name in ("alpha", "beta", "alpha", None):
            tokens = 0
            async for _ in server.generate_stream(GenerateRequest("the cat", name, max_tokens=4)):
                tokens += 1
            streamed += 1
            assert tokens == 4
        with pytest.raises(UnknownModelError):
            await server.generate(GenerateRequest("hi", adapter="no-such", max_tokens=2))
    finally:
        await server.close()

    def adapter(name):
        return {"adapter": name}

    # One place: alpha loads, beta evicts it, alpha evicts beta.
    assert len(recorded.observed("lorafleet_adapter_load_seconds", **adapter("alpha"))) == 2
    assert len(recorded.observed("lorafleet_adapter_load_seconds", **adapter("beta"))) == 1
    assert recorded.counter("lorafleet_adapter_evictions", **adapter("alpha")) == 1
    assert recorded.counter("lorafleet_adapter_evictions", **adapter("beta")) == 1
    assert recorded.gauge("lorafleet_adapter_resident", **adapter("alpha")) == [1.0, 0.0, 1.0]
    assert recorded.gauge("lorafleet_adapter_resident", **adapter("beta")) == [1.0, 0.0]
    # Requests by adapter and status class; an unknown name never becomes a label value.
    ok = {"status": "2xx"}
    assert recorded.counter("lorafleet_requests", adapter="alpha", **ok) == 2
    assert recorded.counter("lorafleet_requests", adapter="beta", **ok) == 1
    assert recorded.counter("lorafleet_requests", adapter="__base__", **ok) == 1
    assert recorded.counter("lorafleet_requests", adapter="__unknown__", status="4xx") == 1
    assert all("no-such" not in str(k) for c in recorded.counters.values() for k in c)
    assert recorded.counter("lorafleet_generation_tokens", **adapter("alpha")) == 8
    # One time-to-first-token per streamed request; a gap between each two tokens.
    ttft = [
        len(recorded.observed("lorafleet_time_to_first_token_seconds", **adapter(n)))
        for n in ("alpha", "beta", "__base__")
    ]
    assert sum(ttft) == streamed
    assert len(recorded.observed("lorafleet_inter_token_latency_seconds", **adapter("beta"))) == 3
    assert len(recorded.observed("lorafleet_queue_wait_seconds", **adapter("alpha"))) == 2
    # Each decode step's rows and distinct adapters.
    assert recorded.observed("lorafleet_step_rows") and recorded.observed("lorafleet_step_adapters")
    assert set(recorded.observed("lorafleet_step_adapters")) == {1.0}
    assert recorded.gauge("lorafleet_adapter_bytes")[-1] > 0


async def test_classification_requests_are_counted_with_their_tokens(tiny_classifier):
    recorded = RecordingFactory()
    server = build_model_server(tiny_classifier, "text-classification", metrics_factory=recorded)
    try:
        await server.classify(ClassifyRequest(["good film", "bad"], adapter=None))
        with pytest.raises(InvalidRequestError):
            await server.classify(ClassifyRequest([], adapter=None))
    finally:
        await server.close()
    assert recorded.counter("lorafleet_requests", adapter="__base__", status="2xx") == 1
    assert recorded.counter("lorafleet_requests", adapter="__base__", status="4xx") == 1
    assert recorded.counter("lorafleet_prompt_tokens", adapter="__base__") > 2


async def test_a_multi_prompt_request_counts_once_and_a_chat_refusal_counts(tiny_causal_lm):
    from lorafleet_serving.server.backend import ModelServerBackend

    recorded = RecordingFactory()
    server = build_model_server(tiny_causal_lm, "text-generation", metrics_factory=recorded)
    try:
        reqs = [GenerateRequest(p, None, max_tokens=2) for p in ("a", "b", "c")]
        await server.generate_many(reqs)
        reqs[1] = GenerateRequest("x", None, max_tokens=10**6)  # over max_tokens_limit
        with pytest.raises(InvalidRequestError):
            await server.generate_many(reqs)
        backend = ModelServerBackend(server)
        huge = [{"role": "user", "content": "w " * 10**6}]
        with pytest.raises(InvalidRequestError):
            await backend.generate(GenerateRequest("", None, max_tokens=2), huge)
    finally:
        await server.close()
    base = {"adapter": "__base__"}
    assert recorded.counter("lorafleet_requests", status="2xx", **base) == 1
    assert recorded.counter("lorafleet_requests", status="4xx", **base) == 2  # no 499s
    assert recorded.counter("lorafleet_generation_tokens", **base) == 6
