"""Issue 12, in process: what one request may cost, and bad values answered 400, not 500.

- The request body limit (FastAPI's ``max_body_size``) answers 413 with an OpenAI error object
  before parsing: at once on ``Content-Length``, and for a chunked body as soon as the bytes
  read pass the limit (the rest is never pulled from the client).
- Text too long for the context is refused by its length in characters before it is tokenized;
  classify inputs are truncated like transformers' pipeline (``truncation=True``).
- Numerical edge values and lone UTF-16 surrogates are 400s naming the field.
- Fair share: a classify request with many texts delays a one-text request by one pass, and a
  completion with many prompts takes one turn per round with other requests.

Real ModelServer and FastAPI app over the tiny test models (``tests/support/models.py``); the
same over real Ray Serve and HTTP is in ``test_api_limits_ray.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from lorafleet_serving.errors import InvalidRequestError
from lorafleet_serving.http.app import DEFAULT_MAX_REQUEST_BYTES, create_app
from lorafleet_serving.ray_app import AppArgs
from lorafleet_serving.server.backend import ModelServerBackend
from lorafleet_serving.server.factory import build_model_server
from lorafleet_serving.server.model_server import ModelServer
from lorafleet_serving.types import MAX_SEED, MIN_SEED, ClassifyRequest, GenerateRequest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.serving.test_api_http import assert_error

GEN = "tiny-llama"
CLS = "tiny-bert"
LIMIT = 64 * 1024  # bytes: small, so the tests send little


@pytest.fixture(scope="module")
def gen_server(tiny_causal_lm: Path) -> ModelServer:
    return build_model_server(tiny_causal_lm, "text-generation", max_tokens_limit=64)


@pytest.fixture(scope="module")
def gen(gen_server: ModelServer) -> Iterator[TestClient]:
    """The generation API with a 64 KiB body limit."""
    app = create_app(
        ModelServerBackend(gen_server),
        served_name=GEN,
        task="text-generation",
        max_tokens_limit=64,
        max_request_bytes=LIMIT,
    )
    with TestClient(app) as client:
        yield client
        client.portal.call(gen_server.close)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def cls(tiny_classifier: Path) -> Iterator[TestClient]:
    """The classification API (default body limit)."""
    server = build_model_server(tiny_classifier, "text-classification")
    app = create_app(ModelServerBackend(server), served_name=CLS, task="text-classification")
    with TestClient(app) as client:
        client.server = server  # type: ignore[attr-defined]
        yield client
        client.portal.call(server.close)  # type: ignore[union-attr]


def _raw(client: TestClient, path: str, text: str) -> Any:
    """POST a JSON body written by hand (for escapes and literals ``json.dumps`` won't make)."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


# ----------------------------------------------------------------------------- body size


def test_default_limit_and_args() -> None:
    assert DEFAULT_MAX_REQUEST_BYTES == 4 * 1024 * 1024
    args = {"served_name": "m", "base_path": "/m", "task": "text-generation"}
    assert AppArgs.parse(args).max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    assert AppArgs.parse({**args, "max_request_bytes": 1000}).max_request_bytes == 1000
    with pytest.raises(ValueError, match=r"args\.max_request_bytes"):
        AppArgs.parse({**args, "max_request_bytes": 0})


def test_body_over_the_limit_is_413_naming_the_limit(gen: TestClient) -> None:
    body = json.dumps({"model": GEN, "prompt": "the cat", "max_tokens": 2, "temperature": 0})
    at_limit = body + " " * (LIMIT - len(body))  # JSON allows trailing whitespace
    assert len(at_limit) == LIMIT
    assert _raw(gen, "/v1/completions", at_limit).status_code == 200
    resp = _raw(gen, "/v1/completions", at_limit + " ")
    err = assert_error(resp, 413, "request_too_large")
    assert str(LIMIT) in err["message"] and "bytes" in err["message"], err
    for path in ("/v1/chat/completions", "/v1/classify"):
        assert_error(_raw(gen, path, "[" + " " * LIMIT + "]"), 413, "request_too_large")


async def test_chunked_body_stops_being_read_past_the_limit(gen_server: ModelServer) -> None:
    """No Content-Length: the app counts what it reads and stops pulling once past the limit.

    Driven through the ASGI interface directly, as an HTTP server drives it: the TestClient
    would read the whole body before calling the app.
    """
    app = create_app(
        ModelServerBackend(gen_server),
        served_name=GEN,
        task="text-generation",
        max_request_bytes=LIMIT,
    )
    chunk = b" " * 4096
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        if pulled == 1:
            return {"type": "http.request", "body": b'{"prompt": "hi"', "more_body": True}
        more = pulled < 50 * 1024 * 1024 // len(chunk)  # 50 MB if read to the end
        return {"type": "http.request", "body": chunk if more else b"}", "more_body": more}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413, sent[0]
    err = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert err["code"] == "request_too_large" and str(LIMIT) in err["message"], err
    assert pulled <= LIMIT // len(chunk) + 2, f"read {pulled} chunks of a body over the limit"


# ----------------------------------------------------------------------------- bad values

BASE = {"model": GEN, "prompt": "the cat eats", "max_tokens": 3}

BAD_VALUES = [
    # (JSON fragment merged into BASE, param)
    ('"temperature": 1e-40', "temperature"),
    ('"temperature": 5e-324', "temperature"),
    ('"temperature": 1e-7', "temperature"),
    ('"temperature": NaN', "temperature"),
    ('"temperature": Infinity', "temperature"),
    ('"temperature": -0.1', "temperature"),
    ('"temperature": 2.0000001', "temperature"),
    ('"temperature": 1e308', "temperature"),
    ('"top_p": 0', "top_p"),
    ('"top_p": -1e-300', "top_p"),
    ('"top_p": 1.0000001', "top_p"),
    ('"top_p": NaN', "top_p"),
    ('"top_p": -Infinity', "top_p"),
    (f'"temperature": 1, "seed": {2**70}', "seed"),
    (f'"temperature": 1, "seed": {MAX_SEED + 1}', "seed"),
    (f'"temperature": 1, "seed": {MIN_SEED - 1}', "seed"),
    (f'"max_tokens": {2**70}', "max_tokens"),
    (f'"n": {2**70}', "n"),
]


@pytest.mark.parametrize(("fragment", "param"), BAD_VALUES)
def test_numeric_edge_values_are_400_naming_the_field(
    gen: TestClient, fragment: str, param: str
) -> None:
    body = json.dumps(BASE)[:-1] + ", " + fragment + "}"
    err = assert_error(_raw(gen, "/v1/completions", body), 400, "invalid_request", param)
    assert param in err["message"]
    chat = {"model": GEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    if param not in ("max_tokens", "n"):
        body = json.dumps(chat)[:-1] + ", " + fragment + "}"
        assert_error(_raw(gen, "/v1/chat/completions", body), 400, "invalid_request", param)


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 1.0, "seed": MAX_SEED},
        {"temperature": 1.0, "seed": MIN_SEED},
        {"temperature": 1.0, "seed": 0},
        {"temperature": 2.0, "top_p": 5e-324},
        {"temperature": -0.0},
    ],
)
def test_edge_values_inside_the_range_are_served(gen: TestClient, extra: dict) -> None:
    resp = gen.post("/v1/completions", json={**BASE, **extra})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] >= 1


def test_smallest_temperature_samples_like_greedy(gen: TestClient) -> None:
    """1e-6 (some clients' way to say greedy) divides the logits by 1e-6 without inf or nan."""
    greedy = gen.post("/v1/completions", json={**BASE, "max_tokens": 8, "temperature": 0})
    tiny = gen.post(
        "/v1/completions", json={**BASE, "max_tokens": 8, "temperature": 1e-6, "seed": 3}
    )
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


async def test_model_server_refuses_the_same_values_itself(gen_server: ModelServer) -> None:
    """The model server is a boundary too (tests, benchmarks, the Ray deployment)."""
    for field, value in [("temperature", 1e-40), ("seed", 2**64), ("seed", -(2**63) - 1)]:
        kwargs: dict[str, Any] = {"temperature": 1.0, field: value}
        with pytest.raises(InvalidRequestError) as err:
            await gen_server.generate(GenerateRequest("hi", max_tokens=2, **kwargs))
        assert err.value.param == field


SURROGATE = "\\ud800"  # as JSON writes it: a lone high surrogate
LOW = "\\udfff"

SURROGATE_CASES = [
    # (path, JSON body, param)
    ("/v1/completions", f'{{"model": "{GEN}", "prompt": "a{SURROGATE}b"}}', "prompt"),
    ("/v1/completions", f'{{"model": "{GEN}", "prompt": ["ok", "{LOW}"]}}', "prompt[1]"),
    ("/v1/completions", f'{{"model": "{GEN}", "prompt": "hi", "stop": "{LOW}"}}', "stop"),
    (
        "/v1/completions",
        f'{{"model": "{GEN}", "prompt": "hi", "stop": ["x", "{SURROGATE}"]}}',
        "stop[1]",
    ),
    ("/v1/completions", f'{{"model": "{GEN}", "prompt": "hi", "user": "{LOW}"}}', "user"),
    ("/v1/completions", f'{{"model": "{SURROGATE}", "prompt": "hi"}}', "model"),
    (
        "/v1/chat/completions",
        f'{{"model": "{GEN}", "messages": [{{"role": "user", "content": "{SURROGATE}"}}]}}',
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        f'{{"model": "{GEN}", "messages": [{{"role": "user", "content": "hi"}}, '
        f'{{"role": "user", "content": [{{"type": "text", "text": "x{LOW}"}}]}}]}}',
        "messages[1].content[0].text",
    ),
    (
        "/v1/chat/completions",
        f'{{"model": "{GEN}", "messages": [{{"role": "user", "content": "hi", '
        f'"name": "{SURROGATE}"}}]}}',
        "messages[0].name",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), SURROGATE_CASES)
def test_lone_surrogates_are_400_naming_the_field(
    gen: TestClient, path: str, body: str, param: str
) -> None:
    err = assert_error(_raw(gen, path, body), 400, "invalid_request", param)
    assert "surrogate" in err["message"]
    # A valid pair (an emoji) in the same place is text, and is served.
    fixed = body.replace(SURROGATE, "\\ud83d\\ude00").replace(LOW, "\\ud83d\\ude00")
    if '"model": "\\ud83d' not in fixed:
        assert _raw(gen, path, fixed).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (f'{{"model": "{CLS}", "input": "{SURROGATE}"}}', "input"),
        (f'{{"model": "{CLS}", "input": ["a", "b", "c{LOW}"]}}', "input[2]"),
    ],
)
def test_lone_surrogates_in_classify_input(cls: TestClient, body: str, param: str) -> None:
    assert_error(_raw(cls, "/v1/classify", body), 400, "invalid_request", param)


# ----------------------------------------------------------------------------- text length


def test_prompt_longer_than_the_context_can_hold_is_refused_by_its_length(
    gen: TestClient, gen_server: ModelServer
) -> None:
    engine = gen_server.engine
    limit = engine.prompt_char_limit
    assert limit == engine.max_positions * engine.chars_per_token
    # One character past the limit: refused by length, naming 'prompt' and the numbers.
    err = assert_error(
        gen.post("/v1/completions", json={**BASE, "prompt": "a" * (limit + 1)}),
        400,
        "invalid_request",
        "prompt",
    )
    assert str(limit + 1) in err["message"] and str(limit) in err["message"]
    # At the limit it is tokenized: far more tokens than the context, so max_tokens is named.
    at_limit = gen.post("/v1/completions", json={**BASE, "prompt": "a " * (limit // 2)})
    assert_error(at_limit, 400, "invalid_request", "max_tokens")
    # Chat: the messages' contents together.
    messages = [{"role": "user", "content": "b" * (limit // 2 + 1)}] * 2
    chat = gen.post("/v1/chat/completions", json={"model": GEN, "messages": messages})
    assert_error(chat, 400, "invalid_request", "messages")


def test_character_limit_never_refuses_a_prompt_that_fits(gen_server: ModelServer) -> None:
    """No token of the vocabulary spells more than chars_per_token characters, so a prompt
    refused by its length could not have fit in the context."""
    tok = gen_server.tokenizer
    longest = max(len(tok.decode([i])) for i in range(len(tok)))
    assert longest < gen_server.engine.chars_per_token


def test_long_classify_input_is_truncated_like_the_pipeline(
    cls: TestClient, tiny_classifier: Path
) -> None:
    """A 200 KB text: the answer is the encoder's on its first tokens, as with transformers'
    ``truncation=True``, and usage counts the tokens the encoder saw."""
    text = "the quick brown fox jumps over the lazy dog and runs away " * 3500
    resp = cls.post("/v1/classify", json={"model": CLS, "input": [text, "short text"]})
    assert resp.status_code == 200, resp.text
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    engine = cls.server.engine  # type: ignore[attr-defined]
    enc = tok([text], truncation=True, max_length=engine.classify_max_tokens, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits[0].tolist()
    got = resp.json()["data"][0]["logits"]
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < 1e-4
    short = len(tok("short text").input_ids)
    assert resp.json()["usage"]["prompt_tokens"] == engine.classify_max_tokens + short


# ----------------------------------------------------------------------------- fair share


async def test_one_text_request_is_not_held_behind_a_many_text_request(
    tiny_classifier: Path,
) -> None:
    """256 long texts run in passes of 16; a one-text request arriving meanwhile joins the next
    pass and is answered while the big one still runs (before: after all of it)."""
    server = build_model_server(tiny_classifier, "text-classification", batch_wait_timeout_s=0.0)
    try:
        long_text = "the weather is terrible today and the movie was great " * 40
        big = asyncio.create_task(server.classify(ClassifyRequest([long_text] * 256)))
        while server.stats()["classification_batches"] < 1:  # the big request's batch runs
            await asyncio.sleep(0.001)
        small = await server.classify(ClassifyRequest(["i love this movie"]))
        assert not big.done(), "the one-text request waited for all 256 texts"
        assert len(small.labels) == 1
        result = await big
        assert len(result.labels) == 256 and len(set(result.labels)) == 1
        assert server.stats()["classification_batches"] == 1  # it joined the running batch
    finally:
        await server.close()


async def test_many_prompts_take_one_turn_per_round(tiny_causal_lm: Path) -> None:
    """A completion with 48 prompts queues them as one group: a later single prompt is taken
    into a batch after at most one of them, so it finishes before most of them."""
    server = build_model_server(
        tiny_causal_lm, "text-generation", max_batch_size=4, batch_wait_timeout_s=0.0
    )
    try:
        finished: list[str] = []

        async def one(name: str, req: GenerateRequest, group: object) -> None:
            await server.generate(req, group=group)
            finished.append(name)

        many = object()
        reqs = [GenerateRequest(f"the cat eats {i}", max_tokens=24) for i in range(48)]
        tasks = [asyncio.create_task(one(f"p{i}", r, many)) for i, r in enumerate(reqs)]
        while server.stats()["generation_batches"] < 1:
            await asyncio.sleep(0.001)
        await one("single", GenerateRequest("a dog sees", max_tokens=24), None)
        assert len(finished) < 24, f"the single prompt finished after {finished}"
        await asyncio.gather(*tasks)
        many_results = await server.generate_many(reqs[:3])
        alone = [await server.generate(r) for r in reqs[:3]]
        assert [r.token_ids for r in many_results] == [r.token_ids for r in alone]
    finally:
        await server.close()
