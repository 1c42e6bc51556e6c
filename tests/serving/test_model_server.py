"""ModelServer facade: concurrent mixed batches equal peft, residency, streaming, errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from lorafleet_serving.errors import AdapterLoadError, InvalidRequestError, UnknownModelError
from lorafleet_serving.server.factory import build_model_server
from lorafleet_serving.types import ClassifyRequest, GenerateRequest

from tests.support.models import reference_greedy, reference_logits

PROMPTS = ["the cat eats an apple", "hello", "a dog sees the river near the sea after lunch"]
MAX_NEW = 10


def registry(adapters: dict[str, Path], **labels: dict) -> dict:
    return {
        "adapters": {
            n: {"path": str(p), "rank": 8, **({"labels": labels[n]} if n in labels else {})}
            for n, p in adapters.items()
        }
    }


@pytest.fixture(scope="module")
def refs(tiny_causal_lm: Path, tiny_lora_adapters: dict) -> dict:
    """(adapter name or None, prompt) -> peft greedy ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    return {
        (n, p): reference_greedy(
            tiny_causal_lm, tiny_lora_adapters[n] if n else None, tok(p).input_ids, MAX_NEW
        )
        for n in [None, *tiny_lora_adapters]
        for p in PROMPTS
    }


async def test_concurrent_requests_for_different_adapters_share_batches_and_equal_peft(
    tiny_causal_lm, tiny_lora_adapters, refs
):
    server = build_model_server(
        tiny_causal_lm,
        "text-generation",
        max_adapters=4,
        max_batch_size=32,
        batch_wait_timeout_s=0.05,
    )
    try:
        server.apply_user_config(registry(tiny_lora_adapters))
        for name in tiny_lora_adapters:  # resident first, so the burst lands in one window
            await server.ensure_adapter(name)
        combos = [(n, p) for p in PROMPTS for n in [None, "__base__", *tiny_lora_adapters]]
        results = await asyncio.gather(
            *[server.generate(GenerateRequest(p, adapter=n, max_tokens=MAX_NEW)) for n, p in combos]
        )
        for (name, prompt), result in zip(combos, results, strict=True):
            key = (None if name == "__base__" else name, prompt)
            assert result.token_ids == refs[key], key
            assert result.completion_tokens == len(result.token_ids)
            assert result.prompt_tokens == len(server.tokenizer(prompt).input_ids)
        stats = server.stats()
        assert stats["generation_batches"] == 1, stats
        assert stats["mean_batch_size"] == len(combos)
    finally:
        await server.close()


async def test_two_slots_three_adapters_burst_of_first_requests(
    tiny_causal_lm, tiny_lora_adapters, refs
):
    names = ["alpha", "beta", "gamma"]
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_adapters=2, batch_wait_timeout_s=0.01
    )
    try:
        baseline = server.stats()["tensor_bytes"]
        server.apply_user_config(registry({n: tiny_lora_adapters[n] for n in names}))
        combos = [(n, p) for p in PROMPTS for n in names]
        results = await asyncio.gather(
            *[server.generate(GenerateRequest(p, adapter=n, max_tokens=MAX_NEW)) for n, p in combos]
        )
        for combo, result in zip(combos, results, strict=True):
            assert result.token_ids == refs[combo], combo
        stats = server.stats()
        assert stats["loads"] == {n: 1 for n in names}, stats
        assert stats["evictions"] >= 1
        assert len(server.resident_adapters()) == 2
        loaded = stats["tensor_bytes"]
        assert loaded > baseline * 1.05
        for name in list(server.resident_adapters()):
            await server.evict(name)
        after = server.stats()["tensor_bytes"]
        assert abs(after - baseline) <= 0.05 * baseline, (baseline, loaded, after)
        # Transparent reload after eviction.
        again = await server.generate(
            GenerateRequest(PROMPTS[0], adapter="alpha", max_tokens=MAX_NEW)
        )
        assert again.token_ids == refs["alpha", PROMPTS[0]]
        assert server.stats()["loads"]["alpha"] == 2
    finally:
        await server.close()


async def test_stream_matches_generate_and_ends_with_counts(tiny_causal_lm, tiny_lora_adapters):
    server = build_model_server(tiny_causal_lm, "text-generation", max_adapters=2)
    try:
        server.apply_user_config(registry(tiny_lora_adapters))
        req = GenerateRequest(PROMPTS[2], adapter="gamma", max_tokens=MAX_NEW)
        full, deltas = await asyncio.gather(
            server.generate(req), _collect(server.generate_stream(req))
        )
        assert "".join(d.text for d in deltas) == full.text
        assert [d.token_id for d in deltas] == full.token_ids
        assert all(d.finish_reason is None for d in deltas[:-1])
        last = deltas[-1]
        assert last.finish_reason == full.finish_reason
        assert (last.prompt_tokens, last.completion_tokens) == (
            full.prompt_tokens,
            full.completion_tokens,
        )
    finally:
        await server.close()


async def test_stream_with_stop_string_never_leaks_it(tiny_causal_lm, tiny_lora_adapters):
    server = build_model_server(tiny_causal_lm, "text-generation")
    try:
        server.apply_user_config(registry(tiny_lora_adapters))
        full = await server.generate(GenerateRequest(PROMPTS[0], adapter="gamma", max_tokens=24))
        text = full.text
        k = next(
            i
            for i in range(3, len(text) - 3)
            if text[i : i + 3].isascii()
            and text[i : i + 3].strip()
            and text.find(text[i : i + 3]) == i
        )
        stop = text[k : k + 3]
        req = GenerateRequest(PROMPTS[0], adapter="gamma", max_tokens=24, stop=[stop])
        deltas = await _collect(server.generate_stream(req))
        streamed = "".join(d.text for d in deltas)
        assert streamed == text[:k]
        assert stop not in streamed
        assert deltas[-1].finish_reason == "stop"
    finally:
        await server.close()


async def _collect(stream):
    return [d async for d in stream]


async def test_cancelled_stream_leaves_the_batch_and_others_finish(
    tiny_causal_lm, tiny_lora_adapters, refs
):
    server = build_model_server(tiny_causal_lm, "text-generation", batch_wait_timeout_s=0.05)
    try:
        server.apply_user_config(registry(tiny_lora_adapters))
        stream = server.generate_stream(
            GenerateRequest(PROMPTS[0], adapter="alpha", max_tokens=200)
        )
        other = asyncio.create_task(
            server.generate(GenerateRequest(PROMPTS[1], adapter="beta", max_tokens=MAX_NEW))
        )
        first = [await anext(stream), await anext(stream)]
        await stream.aclose()
        result = await asyncio.wait_for(other, 30)
        assert len(first) == 2
        assert result.token_ids == refs["beta", PROMPTS[1]]
        # The cancelled row stopped: the worker is idle again quickly, not 200 steps later.
        t0 = time.monotonic()
        await server.generate(GenerateRequest(PROMPTS[1], max_tokens=2))
        assert time.monotonic() - t0 < 5
    finally:
        await server.close()


async def test_event_loop_stays_responsive_while_generating(tiny_causal_lm):
    server = build_model_server(tiny_causal_lm, "text-generation", max_batch_size=8)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    try:
        tick = asyncio.create_task(ticker())
        t0 = time.monotonic()
        await asyncio.gather(
            *[server.generate(GenerateRequest(p, max_tokens=120)) for p in PROMPTS * 2]
        )
        elapsed = time.monotonic() - t0
        stop.set()
        await tick
        assert max(gaps) < elapsed / 4, (max(gaps), elapsed)
    finally:
        await server.close()


async def test_requests_arriving_mid_generation_join_the_running_batch(
    tiny_causal_lm, tiny_lora_adapters, refs
):
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_batch_size=8, batch_wait_timeout_s=0.0
    )
    try:
        server.apply_user_config(registry(tiny_lora_adapters))
        for name in ("alpha", "beta"):
            await server.ensure_adapter(name)
        long_req = GenerateRequest(PROMPTS[2], adapter="alpha", max_tokens=MAX_NEW)
        stream = server.generate_stream(long_req)
        deltas = [await anext(stream), await anext(stream)]  # the batch is running now
        late = await asyncio.gather(
            server.generate(GenerateRequest(PROMPTS[0], adapter="beta", max_tokens=MAX_NEW)),
            server.generate(GenerateRequest(PROMPTS[1], max_tokens=MAX_NEW)),
        )
        deltas += [d async for d in stream]
        assert [d.token_id for d in deltas] == refs["alpha", PROMPTS[2]]
        assert late[0].token_ids == refs["beta", PROMPTS[0]]
        assert late[1].token_ids == refs[None, PROMPTS[1]]
        stats = server.stats()
        assert stats["generation_batches"] == 1, stats
        assert stats["joined"] == 2
        assert 1 < stats["mean_rows_per_step"] <= 3
    finally:
        await server.close()


async def test_random_traffic_with_churn_and_cancellations(
    tiny_causal_lm, tiny_lora_adapters, refs
):
    """Mixed adapters, 2 slots for 4 adapters, joins, cancelled streams: all answers correct."""
    import random

    rng = random.Random(1234)
    server = build_model_server(
        tiny_causal_lm,
        "text-generation",
        max_adapters=2,
        max_batch_size=6,
        batch_wait_timeout_s=0.002,
    )
    names = [None, *tiny_lora_adapters]
    try:
        server.apply_user_config(registry(tiny_lora_adapters))

        async def one(i: int) -> None:
            await asyncio.sleep(rng.random() * 0.3)
            name, prompt = rng.choice(names), rng.choice(PROMPTS)
            n = rng.randint(1, MAX_NEW)
            req = GenerateRequest(prompt, adapter=name, max_tokens=n)
            if i % 5 == 0:  # a client that goes away after the first token
                stream = server.generate_stream(req)
                first = await anext(stream)
                await stream.aclose()
                assert first.token_id == refs[name, prompt][0]
                return
            result = await server.generate(req)
            assert result.token_ids == refs[name, prompt][:n], (name, prompt, n)

        await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(40)]), 120)
        stats = server.stats()
        assert stats["failed_requests"] == 0
        assert stats["evictions"] > 0 and len(server.resident_adapters()) <= 2
        assert stats["mean_rows_per_step"] > 1
    finally:
        await server.close()


# ----------------------------------------------------------------------------- errors


async def test_errors_reach_only_their_request(tiny_causal_lm, tiny_lora_adapters, refs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_lora_adapters["alpha"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"garbage" * 16)
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_tokens_limit=64, batch_wait_timeout_s=0.05
    )
    try:
        server.apply_user_config(registry({"beta": tiny_lora_adapters["beta"], "broken": broken}))
        results = await asyncio.gather(
            server.generate(GenerateRequest(PROMPTS[0], adapter="broken", max_tokens=MAX_NEW)),
            server.generate(GenerateRequest(PROMPTS[0], adapter="beta", max_tokens=MAX_NEW)),
            server.generate(GenerateRequest(PROMPTS[0], adapter="missing", max_tokens=MAX_NEW)),
            server.generate(GenerateRequest(PROMPTS[0], max_tokens=MAX_NEW)),
            return_exceptions=True,
        )
        assert isinstance(results[0], AdapterLoadError)
        assert results[0].status_code == 503 and "could not be loaded" in results[0].message
        assert results[1].token_ids == refs["beta", PROMPTS[0]]
        assert isinstance(results[2], UnknownModelError) and results[2].status_code == 404
        assert results[3].token_ids == refs[None, PROMPTS[0]]
        # Errors from a stream come from its first __anext__, before any delta.
        with pytest.raises(UnknownModelError):
            await anext(server.generate_stream(GenerateRequest("hi", adapter="missing")))
        bad = {
            "max_tokens": GenerateRequest("hi", max_tokens=65),
            "temperature": GenerateRequest("hi", temperature=-1),
            "top_p": GenerateRequest("hi", top_p=0),
            "stop": GenerateRequest("hi", stop=[""]),
            "prompt": GenerateRequest(""),
            "seed": GenerateRequest("hi", seed="x"),  # type: ignore[arg-type]
        }
        for param, req in bad.items():
            with pytest.raises(InvalidRequestError) as err:
                await server.generate(req)
            assert err.value.param == param and err.value.status_code == 400
            assert err.value.to_dict()["error"]["param"] == param
        with pytest.raises(InvalidRequestError, match="classification is not available"):
            await server.classify(ClassifyRequest(["x"]))
        # The server still works after all that.
        ok = await server.generate(GenerateRequest(PROMPTS[0], adapter="beta", max_tokens=MAX_NEW))
        assert ok.token_ids == refs["beta", PROMPTS[0]]
        assert server.stats()["load_failures"] == {"broken": 1}
    finally:
        await server.close()


async def test_user_config_changes_while_requests_flow(tiny_causal_lm, tiny_lora_adapters, refs):
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_adapters=3, batch_wait_timeout_s=0.01
    )
    try:
        keep = {n: tiny_lora_adapters[n] for n in ("alpha", "beta")}
        server.apply_user_config(registry(keep))
        running = True
        failures: list[BaseException] = []
        served = 0

        async def traffic(name: str) -> None:
            nonlocal served
            while running:
                try:
                    r = await server.generate(
                        GenerateRequest(PROMPTS[0], adapter=name, max_tokens=4)
                    )
                    assert r.token_ids == refs[name, PROMPTS[0]][:4]
                    served += 1
                except BaseException as exc:
                    failures.append(exc)

        tasks = [asyncio.create_task(traffic(n)) for n in ("alpha", "beta")]
        await asyncio.sleep(0.3)
        server.apply_user_config(registry({**keep, "gamma": tiny_lora_adapters["gamma"]}))
        r = await server.generate(GenerateRequest(PROMPTS[1], adapter="gamma", max_tokens=MAX_NEW))
        assert r.token_ids == refs["gamma", PROMPTS[1]]
        await server.reconfigure(registry(keep))
        assert "gamma" not in server.resident_adapters()
        assert "gamma" not in server.registered_adapters()
        with pytest.raises(UnknownModelError):
            await server.generate(GenerateRequest(PROMPTS[1], adapter="gamma"))
        await asyncio.sleep(0.2)
        running = False
        await asyncio.gather(*tasks)
        assert failures == [] and served > 4
        with pytest.raises(InvalidRequestError, match=r"adapters\.x\.path"):
            server.apply_user_config({"adapters": {"x": {}}})
        with pytest.raises(InvalidRequestError, match="max_adapters"):
            server.apply_user_config({"max_adapters": 0})
        assert set(server.registered_adapters()) == set(keep)
    finally:
        await server.close()


async def test_max_adapters_shrinks_through_user_config(tiny_causal_lm, tiny_lora_adapters):
    server = build_model_server(tiny_causal_lm, "text-generation", max_adapters=4)
    try:
        await server.reconfigure(registry(tiny_lora_adapters))
        for name in tiny_lora_adapters:
            await server.ensure_adapter(name)
        assert len(server.resident_adapters()) == 4
        await server.reconfigure({"max_adapters": 2, **registry(tiny_lora_adapters)})
        assert server.resident_adapters() == ["gamma", "delta"]
        await server.ensure_adapter("alpha")
        assert len(server.resident_adapters()) == 2
    finally:
        await server.close()


# ----------------------------------------------------------------------------- classification


async def test_classification_mixed_concurrent_requests(tiny_classifier, tiny_cls_adapters):
    topic = {"0": "sport", "1": "politics", "2": "science", "3": "business"}
    server = build_model_server(tiny_classifier, "text-classification", batch_wait_timeout_s=0.05)
    try:
        server.apply_user_config(registry(tiny_cls_adapters, topic=topic))
        for name in tiny_cls_adapters:
            await server.ensure_adapter(name)
        texts = ["i love this movie", "the weather is terrible today"]
        names = [None, "sentiment", "topic", "plain"]
        results = await asyncio.gather(
            *[server.classify(ClassifyRequest(texts, adapter=n)) for n in names]
        )
        assert server.stats()["classification_batches"] == 1
        for name, result in zip(names, results, strict=True):
            refs = reference_logits(tiny_classifier, tiny_cls_adapters.get(name), texts)
            for logits, ref, scores, label in zip(
                result.logits, refs, result.scores, result.labels, strict=True
            ):
                assert max(abs(a - b) for a, b in zip(logits, ref, strict=True)) < 1e-4
                assert abs(sum(scores.values()) - 1) < 1e-6
                assert label == max(scores, key=scores.get)
            expected = list(topic.values()) if name == "topic" else ["negative", "positive"]
            assert list(result.scores[0]) == expected
        assert server.labels == ["negative", "positive"]
        for bad in ([], [""], "text"):
            with pytest.raises(InvalidRequestError) as err:
                await server.classify(ClassifyRequest(bad))  # type: ignore[arg-type]
            assert err.value.param == "input"
        with pytest.raises(InvalidRequestError, match="completions are not available"):
            await server.generate(GenerateRequest("hi"))
    finally:
        await server.close()


async def test_adapter_with_wrong_base_is_503(
    tiny_classifier, tiny_lora_adapters, tiny_cls_adapters
):
    """A causal-LM adapter registered on a BERT base fails to load with a reason."""
    server = build_model_server(tiny_classifier, "text-classification")
    try:
        server.apply_user_config(registry({"llama": tiny_lora_adapters["alpha"]}))
        with pytest.raises(AdapterLoadError) as err:
            await server.classify(ClassifyRequest(["hi"], adapter="llama"))
        assert "does not fit" in err.value.reason
        cfg = json.loads((tiny_lora_adapters["alpha"] / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA"
        result = await server.classify(ClassifyRequest(["hi"]))
        assert result.labels[0] in ("negative", "positive")
    finally:
        await server.close()
