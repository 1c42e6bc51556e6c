"""Streaming never splits a character: multi-byte UTF-8 text generated one byte per token.

The tiny byte-level BPE tokenizer (trained on ASCII sentences) has one token per byte for
anything outside ASCII, so ``é`` is 2 tokens, ``日`` 3 and ``🙂`` 4; decoding a prefix of them
gives U+FFFD. The model is a real ``LlamaForCausalLM`` whose weights are set so that greedy
decoding follows a fixed chain of tokens (a bigram table): attention and MLP outputs are zero,
so the last hidden state is the current token's embedding, and ``lm_head`` maps each chain
token's (orthogonal) embedding to its successor. The stream, over the ModelServer and over the
HTTP API, must concatenate to exactly the non-stream text, with no replacement character.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from lorafleet_serving.http.app import create_app
from lorafleet_serving.server.backend import ModelServerBackend
from lorafleet_serving.server.factory import build_model_server
from lorafleet_serving.types import GenerateRequest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.models import make_tiny_causal_lm

PROMPT = "a"
TEXT = "é日🙂xд"  # 2-, 3- and 4-byte characters, ASCII between; no byte occurs twice


@pytest.fixture(scope="module")
def chain_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose greedy continuation of ``PROMPT`` is ``TEXT`` then EOS."""
    out = make_tiny_causal_lm(tmp_path_factory.mktemp("utf8") / "chain", seed=3)
    tok = AutoTokenizer.from_pretrained(out)
    text_ids = tok(TEXT, add_special_tokens=False).input_ids
    assert len(text_ids) == len(TEXT.encode()), "the tokenizer must give one token per byte here"
    chain = [tok(PROMPT, add_special_tokens=False).input_ids[-1], *text_ids, tok.eos_token_id]
    assert len(set(chain[:-1])) == len(chain) - 1, "each chain token needs one successor"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    hidden = model.config.hidden_size
    assert len(chain) <= hidden
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        basis = torch.linalg.qr(
            torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(0))
        )[0]
        model.lm_head.weight.zero_()
        for n, (token, successor) in enumerate(itertools.pairwise(chain)):
            model.model.embed_tokens.weight[token] = basis[n]
            model.lm_head.weight[successor] = 50.0 * basis[n]
    model.save_pretrained(out, safe_serialization=True)
    return out


async def test_stream_of_split_characters_equals_the_text(chain_lm: Path) -> None:
    server = build_model_server(chain_lm, "text-generation")
    try:
        req = GenerateRequest(PROMPT, max_tokens=64)
        full = await server.generate(req)
        assert full.text == TEXT, "the chain model must generate the test text"
        deltas = [d async for d in server.generate_stream(req)]
        streamed = [d.text for d in deltas]
        assert "".join(streamed) == full.text
        assert not any("\ufffd" in piece for piece in streamed), streamed
        # One token per byte: the bytes of a character arrive as several deltas, all but the
        # last empty.
        assert len(deltas) == len(TEXT.encode()) + 1  # one per byte, + EOS
        assert [p for p in streamed if p] == list(TEXT)
    finally:
        await server.close()


def test_http_stream_of_split_characters_equals_the_text(chain_lm: Path) -> None:
    server = build_model_server(chain_lm, "text-generation")
    app = create_app(ModelServerBackend(server), served_name="chain", task="text-generation")
    with TestClient(app) as client:
        try:
            body = {"model": "chain", "prompt": PROMPT, "max_tokens": 64, "temperature": 0}
            plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
            assert plain == TEXT
            resp = client.post("/v1/completions", json={**body, "stream": True})
            assert resp.status_code == 200
            pieces = [
                json.loads(line[len("data: ") :])["choices"][0]["text"]
                for line in resp.text.splitlines()
                if line.startswith("data: {")
            ]
            assert "".join(pieces) == plain
            assert not any("\ufffd" in p for p in pieces), pieces
        finally:
            client.portal.call(server.close)  # type: ignore[union-attr]
