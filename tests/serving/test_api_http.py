"""The OpenAI-compatible HTTP API over a real in-process ModelServer (no Ray): FastAPI TestClient.

Outputs are checked against plain peft (``PeftModel.from_pretrained`` with only that adapter,
greedy ``generate`` / classification logits); every error case checks status and error body.
The same checks over a real Ray Serve deployment are in ``test_app_ray.py``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from lorafleet_serving.http.app import create_app
from lorafleet_serving.server.backend import ModelServerBackend
from lorafleet_serving.server.factory import build_model_server
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

GEN_NAME = "tiny-llama"
CLS_NAME = "tiny-bert"
MAX_TOKENS_LIMIT = 64
PROMPTS = ["the cat eats an apple", "a dog sees the river", "my friend reads the old book"]

# ----------------------------------------------------------------------------- peft reference


@functools.cache
def _peft_lm(base: str, adapter: str | None) -> Any:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


@functools.cache
def _tokenizer(base: str) -> Any:
    return AutoTokenizer.from_pretrained(base)


def peft_greedy(
    base: Path, adapter: Path | None, prompt: str | list[int], max_new_tokens: int
) -> tuple[list[int], str, int]:
    """Greedy generation with plain transformers/peft, only ``adapter`` active.

    Args:
        base: Base model folder.
        adapter: Adapter folder, or ``None`` for the bare base.
        prompt: Text (tokenized with special tokens, as the server does) or token ids.
        max_new_tokens: Tokens to generate at most (stops at EOS).

    Returns:
        ``(generated token ids incl. EOS if produced, decoded text without special tokens,
        prompt length in tokens)``.
    """
    tok = _tokenizer(str(base))
    ids = list(tok(prompt).input_ids) if isinstance(prompt, str) else list(prompt)
    model = _peft_lm(str(base), str(adapter) if adapter else None)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(ids) :].tolist()
    return new, tok.decode(new, skip_special_tokens=True), len(ids)


def _head_size(adapter: Path) -> int | None:
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    for key, value in weights.items():
        if key.endswith("classifier.weight"):
            return int(value.shape[0])
    return None


@functools.cache
def _peft_cls(base: str, adapter: str | None) -> Any:
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    n = _head_size(Path(adapter)) if adapter else None
    if n is not None:
        kwargs.update(num_labels=n, ignore_mismatched_sizes=True)
    model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def peft_logits(base: Path, adapter: Path | None, text: str) -> list[float]:
    """Classification logits of one text with plain transformers/peft (only ``adapter`` active).

    Returns:
        The logits (length = that head's number of labels).
    """
    tok = _tokenizer(str(base))
    model = _peft_cls(str(base), str(adapter) if adapter else None)
    with torch.no_grad():
        return model(**tok([text], return_tensors="pt")).logits[0].tolist()


# ----------------------------------------------------------------------------- fixtures


def broken_adapter(src: Path, dest: Path) -> Path:
    """A copy of an adapter whose weights file is garbage (loading it must fail)."""
    shutil.copytree(src, dest, dirs_exist_ok=True)
    (dest / "adapter_model.safetensors").write_bytes(b"not a safetensors file" * 10)
    return dest


@pytest.fixture(scope="module")
def gen_adapters(tiny_lora_adapters: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three working adapters plus ``broken`` (files that fail to load)."""
    adapters = {n: tiny_lora_adapters[n] for n in ("alpha", "beta", "gamma")}
    adapters["broken"] = broken_adapter(
        tiny_lora_adapters["alpha"], tmp_path_factory.mktemp("broken") / "broken"
    )
    return adapters


@pytest.fixture(scope="module")
def gen_client(tiny_causal_lm: Path, gen_adapters: dict) -> Iterator[TestClient]:
    """TestClient over a generation ModelServer, max_adapters=2 (so adapters get evicted)."""
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_tokens_limit=MAX_TOKENS_LIMIT
    )
    server.apply_user_config(
        {
            "max_adapters": 2,
            "adapters": {n: {"path": str(p), "rank": 8} for n, p in gen_adapters.items()},
        }
    )
    app = create_app(
        ModelServerBackend(server),
        served_name=GEN_NAME,
        task="text-generation",
        max_tokens_limit=MAX_TOKENS_LIMIT,
    )
    with TestClient(app) as client:
        client.server = server  # type: ignore[attr-defined]
        yield client
        client.portal.call(server.close)  # type: ignore[union-attr]


#: Label names of the adapters' own heads, as the installer reports them (peft does not save them).
CLS_LABELS = {
    "sentiment": {"0": "negative", "1": "positive"},
    "topic": {"0": "sport", "1": "politics", "2": "science", "3": "business"},
}


@pytest.fixture(scope="module")
def cls_client(tiny_classifier: Path, tiny_cls_adapters: dict) -> Iterator[TestClient]:
    """TestClient over a classification ModelServer with sentiment, topic and plain adapters."""
    server = build_model_server(tiny_classifier, "text-classification")
    registry: dict[str, Any] = {}
    for name, path in tiny_cls_adapters.items():
        registry[name] = {"path": str(path), "rank": 8}
        if name in CLS_LABELS:
            registry[name]["labels"] = CLS_LABELS[name]
    server.apply_user_config({"max_adapters": 4, "adapters": registry})
    app = create_app(
        ModelServerBackend(server),
        served_name=CLS_NAME,
        task="text-classification",
        labels={"0": "negative", "1": "positive"},
    )
    with TestClient(app) as client:
        yield client
        client.portal.call(server.close)  # type: ignore[union-attr]


def _complete(client: TestClient, model: str | None, prompt: Any, **extra: Any) -> Any:
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, **extra}
    if model is not None:
        body["model"] = model
    return client.post("/v1/completions", json=body)


def assert_error(resp: Any, status: int, code: str, param: str | None = None) -> dict:
    """Assert an OpenAI-style error answer and return its ``error`` object."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == code, err
    assert err["type"] in ("invalid_request_error", "server_error"), err
    assert isinstance(err["message"], str) and err["message"], err
    if param is not None:
        assert err["param"] == param, err
    return err


def sse_events(text: str) -> list[Any]:
    """Parse a server-sent event stream into JSON payloads, with ``"[DONE]"`` kept as is."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ----------------------------------------------------------------------------- generation


def test_health_and_ready(gen_client: TestClient) -> None:
    assert gen_client.get("/health").json() == {"status": "ok"}
    ready = gen_client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_stats_route(gen_client: TestClient) -> None:
    _complete(gen_client, "alpha", PROMPTS[0])
    info = gen_client.get("/stats").json()
    assert info["pid"] == os.getpid()
    assert info["registered"] == ["alpha", "beta", "broken", "gamma"]
    assert "alpha" in info["resident"]
    assert info["stats"]["loads"]["alpha"] >= 1


def test_models_lists_base_and_adapters_with_parent(gen_client: TestClient) -> None:
    body = gen_client.get("/v1/models").json()
    assert body["object"] == "list"
    cards = {c["id"]: c for c in body["data"]}
    assert set(cards) == {GEN_NAME, "alpha", "beta", "gamma", "broken"}
    assert cards[GEN_NAME]["parent"] is None
    for name in ("alpha", "beta", "gamma", "broken"):
        assert cards[name]["parent"] == GEN_NAME
        assert cards[name]["object"] == "model"
        assert cards[name]["rank"] == 8


@pytest.mark.parametrize("adapter", [None, "alpha", "beta", "gamma"])
def test_completion_equals_peft(
    gen_client: TestClient, tiny_causal_lm: Path, gen_adapters: dict, adapter: str | None
) -> None:
    prompt = PROMPTS[0]
    resp = _complete(gen_client, adapter or GEN_NAME, prompt)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids, text, n_prompt = peft_greedy(
        tiny_causal_lm, gen_adapters.get(adapter) if adapter else None, prompt, 12
    )
    assert body["object"] == "text_completion"
    assert body["model"] == (adapter or GEN_NAME)
    choice = body["choices"][0]
    assert choice["text"] == text
    assert body["usage"] == {
        "prompt_tokens": n_prompt,
        "completion_tokens": len(ids),
        "total_tokens": n_prompt + len(ids),
    }
    assert choice["finish_reason"] == ("length" if len(ids) == 12 else "stop")


def test_adapters_really_differ(gen_client: TestClient) -> None:
    texts = {
        name: _complete(gen_client, name, PROMPTS[1]).json()["choices"][0]["text"]
        for name in (GEN_NAME, "alpha", "beta", "gamma")
    }
    assert len(set(texts.values())) == 4, texts


def test_concurrent_mixed_requests_equal_peft(
    gen_client: TestClient, tiny_causal_lm: Path, gen_adapters: dict
) -> None:
    jobs = [(a, p) for a in (None, "alpha", "beta", "gamma") for p in PROMPTS[:2]]

    def run(job: tuple[str | None, str]) -> Any:
        return _complete(gen_client, job[0] or GEN_NAME, job[1])

    before = gen_client.server.stats()["batches"]  # type: ignore[attr-defined]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(run, jobs))
    for (adapter, prompt), resp in zip(jobs, responses, strict=True):
        assert resp.status_code == 200, resp.text
        _, text, _ = peft_greedy(
            tiny_causal_lm, gen_adapters.get(adapter) if adapter else None, prompt, 12
        )
        assert resp.json()["choices"][0]["text"] == text, (adapter, prompt)
    stats = gen_client.server.stats()  # type: ignore[attr-defined]
    # max_adapters=2 with 3 adapters in flight: something was evicted and reloaded.
    assert stats["evictions"] >= 1
    assert stats["batches"] - before < len(jobs), "requests were not batched together"


def test_list_of_prompts_gives_one_choice_each(
    gen_client: TestClient, tiny_causal_lm: Path, gen_adapters: dict
) -> None:
    resp = _complete(gen_client, "beta", PROMPTS)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    total_prompt = total_completion = 0
    for prompt, choice in zip(PROMPTS, body["choices"], strict=True):
        ids, text, n_prompt = peft_greedy(tiny_causal_lm, gen_adapters["beta"], prompt, 12)
        assert choice["text"] == text
        total_prompt += n_prompt
        total_completion += len(ids)
    assert body["usage"]["prompt_tokens"] == total_prompt
    assert body["usage"]["completion_tokens"] == total_completion


def test_token_id_prompt(gen_client: TestClient, tiny_causal_lm: Path, gen_adapters: dict) -> None:
    ids = list(_tokenizer(str(tiny_causal_lm))(PROMPTS[2]).input_ids)
    resp = _complete(gen_client, "gamma", ids)
    assert resp.status_code == 200, resp.text
    _, text, _ = peft_greedy(tiny_causal_lm, gen_adapters["gamma"], ids, 12)
    assert resp.json()["choices"][0]["text"] == text


def test_chat_completion_uses_chat_template(
    gen_client: TestClient, tiny_causal_lm: Path, gen_adapters: dict
) -> None:
    messages = [
        {"role": "system", "content": "you answer"},
        {"role": "user", "content": "hello world"},
    ]
    resp = gen_client.post(
        "/v1/chat/completions",
        json={"model": "alpha", "messages": messages, "max_tokens": 10, "temperature": 0},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    tok = _tokenizer(str(tiny_causal_lm))
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    assert tok.decode(prompt_ids).startswith("<s><|system|>you answer")
    ids, text, n_prompt = peft_greedy(tiny_causal_lm, gen_adapters["alpha"], prompt_ids, 10)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert body["usage"]["prompt_tokens"] == n_prompt
    assert body["usage"]["completion_tokens"] == len(ids)


def test_chat_default_budget_is_capped_by_the_limit(gen_client: TestClient) -> None:
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    out = gen_client.post("/v1/chat/completions", json=body).json()
    used = out["usage"]["completion_tokens"]
    assert used <= MAX_TOKENS_LIMIT
    assert (out["choices"][0]["finish_reason"] == "length") == (used == MAX_TOKENS_LIMIT)


def test_stream_completion_equals_non_stream(gen_client: TestClient) -> None:
    plain = _complete(gen_client, "gamma", PROMPTS[0]).json()
    resp = _complete(
        gen_client, "gamma", PROMPTS[0], stream=True, stream_options={"include_usage": True}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == plain["choices"][0]["text"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == plain["choices"][0]["finish_reason"]
    assert all(f is None for f in finals[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_stream_chat_completion(gen_client: TestClient) -> None:
    body = {
        "model": "beta",
        "messages": [{"role": "user", "content": "the robot sings"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    plain = gen_client.post("/v1/chat/completions", json=body).json()
    resp = gen_client.post("/v1/chat/completions", json={**body, "stream": True})
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


@pytest.mark.parametrize("header", ["serve_multiplexed_model_id", "serve-multiplexed-model-id"])
def test_multiplexed_header_selects_adapter(gen_client: TestClient, header: str) -> None:
    by_body = _complete(gen_client, "beta", PROMPTS[1]).json()
    by_header = gen_client.post(
        "/v1/completions",
        json={"model": GEN_NAME, "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0},
        headers={header: "beta"},
    )
    assert by_header.status_code == 200, by_header.text
    assert by_header.json()["choices"][0]["text"] == by_body["choices"][0]["text"]
    assert by_header.json()["model"] == "beta"
    no_model = gen_client.post(
        "/v1/completions",
        json={"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0},
        headers={header: "beta"},
    )
    assert no_model.json()["choices"][0]["text"] == by_body["choices"][0]["text"]


def test_sampling_is_seeded(gen_client: TestClient) -> None:
    kwargs = {"temperature": 1.0, "top_p": 0.9, "seed": 7}
    one = _complete(gen_client, "alpha", PROMPTS[0], **kwargs).json()["choices"][0]["text"]
    two = _complete(gen_client, "alpha", PROMPTS[0], **kwargs).json()["choices"][0]["text"]
    assert one == two


def test_stop_sequence_cuts_text(gen_client: TestClient) -> None:
    full = _complete(gen_client, "alpha", PROMPTS[0]).json()["choices"][0]["text"]
    stop = full.strip()[3:6] if len(full.strip()) > 6 else None
    # The tiny model's greedy completion is deterministic: it must be long enough to cut.
    assert stop and stop.strip(), f"completion too short to pick a stop string: {full!r}"
    cut = _complete(gen_client, "alpha", PROMPTS[0], stop=[stop]).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"


# ----------------------------------------------------------------------------- errors

ERROR_CASES = [
    # (path, body, status, code, param)
    ("/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "model_not_found", "model"),
    (
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        404,
        "model_not_found",
        "model",
    ),
    ("/v1/completions", {"model": "alpha"}, 400, "invalid_request", "prompt"),
    ("/v1/completions", {"prompt": "hi"}, 400, "invalid_request", "model"),
    ("/v1/completions", {"model": "alpha", "prompt": ""}, 400, "invalid_request", "prompt"),
    ("/v1/completions", {"model": "alpha", "prompt": []}, 400, "invalid_request", "prompt"),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": ["ok", " "]},
        400,
        "invalid_request",
        "prompt[1]",
    ),
    ("/v1/completions", {"model": "alpha", "prompt": 5}, 400, "invalid_request", "prompt"),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "max_tokens": "ten"},
        400,
        "invalid_request",
        "max_tokens",
    ),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "max_tokens": 0},
        400,
        "invalid_request",
        "max_tokens",
    ),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "max_tokens": MAX_TOKENS_LIMIT + 1},
        400,
        "invalid_request",
        "max_tokens",
    ),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "temperature": "hot"},
        400,
        "invalid_request",
        "temperature",
    ),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "top_p": 0},
        400,
        "invalid_request",
        "top_p",
    ),
    ("/v1/completions", {"model": "alpha", "prompt": "hi", "n": 2}, 400, "invalid_request", "n"),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "stream": "yes"},
        400,
        "invalid_request",
        "stream",
    ),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": "hi", "echo": True},
        400,
        "invalid_request",
        "echo",
    ),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": ["a", "b"], "stream": True},
        400,
        "invalid_request",
        "prompt",
    ),
    ("/v1/completions", {"model": "alpha", "prompt": [-1, 5]}, 400, "invalid_request", "prompt"),
    (
        "/v1/chat/completions",
        {"model": "alpha", "messages": []},
        400,
        "invalid_request",
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": "alpha", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_request",
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        {"model": "alpha", "messages": [{"role": "user", "content": ""}]},
        400,
        "invalid_request",
        "messages",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "alpha",
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": MAX_TOKENS_LIMIT + 5,
        },
        400,
        "invalid_request",
        "max_completion_tokens",
    ),
    ("/v1/classify", {"model": "alpha", "input": ["x"]}, 400, "unsupported_task", "model"),
    (
        "/v1/completions",
        {"model": "alpha", "prompt": ["hi"] * 257, "max_tokens": 1},
        400,
        "invalid_request",
        "prompt",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), ERROR_CASES)
def test_error_answers(
    gen_client: TestClient, path: str, body: dict, status: int, code: str, param: str
) -> None:
    err = assert_error(gen_client.post(path, json=body), status, code, param)
    if param:
        assert param.split("[")[0].split(".")[0] in err["message"] or status == 404


def test_too_many_inputs_is_400_and_the_server_keeps_serving(cls_client: TestClient) -> None:
    """One request may not carry more texts than the limit (default 256): 400 naming input."""
    resp = cls_client.post("/v1/classify", json={"model": "sentiment", "input": ["good"] * 100_000})
    err = assert_error(resp, 400, "invalid_request", "input")
    assert "100000" in err["message"] and "256" in err["message"]
    ok = cls_client.post("/v1/classify", json={"model": "sentiment", "input": ["good"] * 256})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 256


def test_binary_body_is_400_invalid_request(gen_client: TestClient) -> None:
    resp = gen_client.post(
        "/v1/completions",
        content=b'{"model": "\xc3\x28"}',  # invalid UTF-8: the body cannot even be decoded
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_request" and "cannot be read" in err["message"], err


def test_malformed_json_is_400(gen_client: TestClient) -> None:
    resp = gen_client.post(
        "/v1/completions",
        content=b'{"model": "alpha", "prompt": ',
        headers={"content-type": "application/json"},
    )
    err = assert_error(resp, 400, "invalid_request")
    assert "JSON" in err["message"]


def test_body_not_an_object_is_400(gen_client: TestClient) -> None:
    err = assert_error(gen_client.post("/v1/completions", json=["hi"]), 400, "invalid_request")
    assert "JSON object" in err["message"]


def test_header_conflicting_with_body_is_400(gen_client: TestClient) -> None:
    resp = gen_client.post(
        "/v1/completions",
        json={"model": "alpha", "prompt": "hi"},
        headers={"serve_multiplexed_model_id": "beta"},
    )
    assert_error(resp, 400, "invalid_request", "model")


def test_unknown_route_and_method(gen_client: TestClient) -> None:
    assert_error(gen_client.get("/v1/nothing"), 404, "not_found")
    assert_error(gen_client.get("/v1/completions"), 405, "method_not_allowed")


def test_stream_of_unknown_model_is_a_404_not_a_stream(gen_client: TestClient) -> None:
    resp = _complete(gen_client, "nope", "hi", stream=True)
    assert_error(resp, 404, "model_not_found", "model")


def test_broken_adapter_is_503_and_others_keep_serving(
    gen_client: TestClient, tiny_causal_lm: Path, gen_adapters: dict
) -> None:
    for _ in range(2):  # a failed load is not cached as success, and fails the same way again
        err = assert_error(_complete(gen_client, "broken", "hi"), 503, "adapter_unavailable")
        assert "broken" in err["message"]
    stream = _complete(gen_client, "broken", "hi", stream=True)
    assert_error(stream, 503, "adapter_unavailable")
    resp = _complete(gen_client, "alpha", PROMPTS[0])
    assert resp.status_code == 200
    _, text, _ = peft_greedy(tiny_causal_lm, gen_adapters["alpha"], PROMPTS[0], 12)
    assert resp.json()["choices"][0]["text"] == text
    assert "broken" not in gen_client.server.resident_adapters()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("adapter", [None, "sentiment", "topic", "plain"])
def test_classify_equals_peft(
    cls_client: TestClient,
    tiny_classifier: Path,
    tiny_cls_adapters: dict,
    adapter: str | None,
) -> None:
    texts = ["the cat eats an apple", "good movie", "the server answers very fast"]
    resp = cls_client.post("/v1/classify", json={"model": adapter or CLS_NAME, "input": texts})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "classification"
    assert body["model"] == (adapter or CLS_NAME)
    names = (
        list(CLS_LABELS[adapter].values()) if adapter in CLS_LABELS else ["negative", "positive"]
    )
    for i, (text, item) in enumerate(zip(texts, body["data"], strict=True)):
        ref = peft_logits(tiny_classifier, tiny_cls_adapters[adapter] if adapter else None, text)
        assert item["index"] == i
        assert len(item["logits"]) == len(ref) == len(names)
        assert max(abs(a - b) for a, b in zip(item["logits"], ref, strict=True)) < 1e-4
        assert list(item["scores"]) == names
        assert abs(sum(item["scores"].values()) - 1.0) < 1e-5
        assert item["label"] == names[max(range(len(ref)), key=ref.__getitem__)]
    assert body["usage"]["prompt_tokens"] > 0


def test_classify_single_string_input(cls_client: TestClient) -> None:
    resp = cls_client.post("/v1/classify", json={"model": "topic", "input": "good movie"})
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert len(data) == 1 and data[0]["label"] in CLS_LABELS["topic"].values()


def test_models_of_classification_base(cls_client: TestClient) -> None:
    cards = {c["id"]: c for c in cls_client.get("/v1/models").json()["data"]}
    assert cards[CLS_NAME]["labels"] == {"0": "negative", "1": "positive"}
    assert cards["topic"]["labels"] == CLS_LABELS["topic"]
    assert cards["topic"]["parent"] == CLS_NAME
    assert cards["topic"]["task"] == "text-classification"


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/classify", {"model": "topic", "input": []}, 400, "invalid_request", "input"),
        ("/v1/classify", {"model": "topic", "input": ""}, 400, "invalid_request", "input"),
        (
            "/v1/classify",
            {"model": "topic", "input": ["ok", ""]},
            400,
            "invalid_request",
            "input[1]",
        ),
        ("/v1/classify", {"model": "topic", "input": [1, 2]}, 400, "invalid_request", "input"),
        ("/v1/classify", {"model": "topic"}, 400, "invalid_request", "input"),
        ("/v1/classify", {"model": "nope", "input": ["x"]}, 404, "model_not_found", "model"),
        ("/v1/completions", {"model": "topic", "prompt": "x"}, 400, "unsupported_task", "model"),
        (
            "/v1/chat/completions",
            {"model": "topic", "messages": [{"role": "user", "content": "x"}]},
            400,
            "unsupported_task",
            "model",
        ),
    ],
)
def test_classification_errors(
    cls_client: TestClient, path: str, body: dict, status: int, code: str, param: str
) -> None:
    assert_error(cls_client.post(path, json=body), status, code, param)
