"""Checks that the shared tiny-model fixtures are what other tests rely on."""

from __future__ import annotations

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_causal_adapters_change_greedy_output(tiny_causal_lm, tiny_lora_adapters):
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    ids = tok(["the cat eats an apple"], return_tensors="pt")
    outs = {}
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    outs["__base__"] = base.generate(**ids, max_new_tokens=8, do_sample=False)[0].tolist()
    for name, path in tiny_lora_adapters.items():
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_causal_lm), path
        )
        outs[name] = model.generate(**ids, max_new_tokens=8, do_sample=False)[0].tolist()
    assert len(tiny_lora_adapters) >= 3
    assert len({tuple(v) for v in outs.values()}) == len(outs), outs


def test_cls_adapters_heads(tiny_classifier, tiny_cls_adapters):
    heads = {
        name: load_file(path / "adapter_model.safetensors")
        for name, path in tiny_cls_adapters.items()
    }
    w = "base_model.model.classifier.weight"
    assert heads["sentiment"][w].shape[0] == 2
    assert heads["topic"][w].shape[0] == 4
    assert w not in heads["plain"]
    assert any(torch.count_nonzero(t) for t in heads["plain"].values())
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    assert tok("hello world").input_ids[0] == tok.cls_token_id
