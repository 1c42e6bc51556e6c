"""The peft LoRA variants users publish, served by the engine equal to plain peft with only
that adapter active — alone and mixed in one batch with plain LoRA and the bare base.

Variants (each built with peft over the tiny test models, weights perturbed so that every
part of the variant changes the output): DoRA, LoRA bias, LoRA on the embedding layer, rsLoRA
with rank/alpha patterns, ``modules_to_save`` of a causal LM's output layer and of a
classifier's non-head module (its pooler) beside its head.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet_serving.engine.protocol import GenerationRow
from lorafleet_serving.engine.transformers_engine import TransformersEngine

from tests.support.models import make_variant_adapter, reference_greedy, reference_logits

PROMPTS = ["the cat eats an apple", "hello", "a dog sees the river near the sea after lunch"]
MAX_NEW = 10
GEN_VARIANTS = {
    "dora": {"target_modules": ["q_proj", "v_proj", "down_proj"], "use_dora": True},
    "bias": {"target_modules": ["q_proj", "v_proj"], "lora_bias": True},
    "embed": {"target_modules": ["embed_tokens", "q_proj"]},
    "rslora": {
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "use_rslora": True,
        "rank_pattern": {"k_proj": 2},
        "alpha_pattern": {"o_proj": 32},
    },
    "lmhead": {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    # peft's rule selects every module whose name ends with "norm": model.norm and each
    # layer's input_layernorm and post_attention_layernorm.
    "norms": {"target_modules": ["v_proj"], "modules_to_save": ["norm"]},
}


#: Classifier variants: a saved non-head module (the pooler) beside the head, and DoRA over
#: BERT's linear layers, which have biases (DoRA scales the base output without them).
CLS_VARIANTS = {
    "pooler": {"target_modules": ["query", "value"], "modules_to_save": ["classifier", "pooler"]},
    "cls-dora": {"target_modules": ["query", "value"], "use_dora": True},
}


def make_variants(base: Path, root: Path, task_type: str, variants: dict, seed: int) -> dict:
    """Build each of ``variants`` (name -> extra ``LoraConfig`` fields) over ``base``."""
    return {
        name: make_variant_adapter(base, root / name, task_type, n, **config)
        for n, (name, config) in enumerate(variants.items(), start=seed)
    }


def _assert_generates_like_peft(engine: TransformersEngine, names: list, references: dict) -> None:
    """Every (name, prompt) of ``names`` x PROMPTS in one batch, each equal to peft's tokens."""
    combos = [(n, p) for p in PROMPTS for n in names]
    rows = [
        GenerationRow(engine.encode_prompt(p), slot=engine.slot(n), max_tokens=MAX_NEW)
        for n, p in combos
    ]
    engine.generate(rows)
    for combo, row in zip(combos, rows, strict=True):
        assert row.token_ids == references[combo], combo


@pytest.fixture(scope="module")
def gen_variants(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_variants(
        tiny_causal_lm, tmp_path_factory.mktemp("variants"), "CAUSAL_LM", GEN_VARIANTS, 10
    )


@pytest.fixture(scope="module")
def gen_engine(
    tiny_causal_lm: Path, tiny_lora_adapters: dict, gen_variants: dict
) -> TransformersEngine:
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=8)
    engine.load_adapter("plain", tiny_lora_adapters["alpha"])
    for name, path in gen_variants.items():
        engine.load_adapter(name, path)
    return engine


@pytest.fixture(scope="module")
def references(tiny_causal_lm, tiny_lora_adapters, gen_variants, gen_engine) -> dict:
    paths = {None: None, "plain": tiny_lora_adapters["alpha"], **gen_variants}
    return {
        (name, prompt): reference_greedy(
            tiny_causal_lm, path, gen_engine.encode_prompt(prompt), MAX_NEW
        )
        for name, path in paths.items()
        for prompt in PROMPTS
    }


@pytest.mark.parametrize("variant", sorted(GEN_VARIANTS))
def test_each_variant_alone_equals_peft(
    gen_engine: TransformersEngine, references: dict, variant: str
):
    _assert_generates_like_peft(gen_engine, [variant], references)  # a uniform batch
    # The variant changes the output (else the test would prove nothing).
    assert any(references[variant, p] != references["plain", p] for p in PROMPTS)
    assert any(references[variant, p] != references[None, p] for p in PROMPTS)


def test_variants_mixed_in_one_batch_equal_peft_per_row(
    gen_engine: TransformersEngine, references: dict
):
    _assert_generates_like_peft(gen_engine, [None, "plain", *GEN_VARIANTS], references)


def test_unloading_a_variant_leaves_the_others_and_the_base_exact(
    tiny_causal_lm: Path, tiny_lora_adapters: dict, gen_variants: dict, references: dict
):
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=3)
    for name in ("dora", "lmhead", "embed"):
        engine.load_adapter(name, gen_variants[name])
    engine.unload_adapter("dora")
    engine.unload_adapter("lmhead")
    engine.load_adapter("bias", gen_variants["bias"])
    _assert_generates_like_peft(engine, [None, "embed", "bias"], references)


def test_classifier_adapters_saving_a_pooler_or_with_dora_equal_peft_mixed(
    tiny_classifier: Path, tiny_cls_adapters: dict, tmp_path: Path
):
    texts = ["i love this movie", "the weather is terrible today", "hi"]
    variants = make_variants(tiny_classifier, tmp_path, "SEQ_CLS", CLS_VARIANTS, 20)
    adapter, dora = variants["pooler"], variants["cls-dora"]
    engine = TransformersEngine(tiny_classifier, "text-classification", max_adapters=3)
    engine.load_adapter("pooler", adapter)
    engine.load_adapter("dora", dora)
    plain_name, plain_path = next(iter(tiny_cls_adapters.items()))
    engine.load_adapter(plain_name, plain_path)
    rows = [(None, t) for t in texts] + [("pooler", t) for t in texts]
    rows += [(plain_name, t) for t in texts] + [("dora", t) for t in texts]
    out = engine.classify([t for _, t in rows], [n for n, _ in rows])
    paths = {None: None, "pooler": adapter, plain_name: plain_path, "dora": dora}
    for (name, text), (_labels, logits) in zip(rows, out, strict=True):
        (ref,) = reference_logits(tiny_classifier, paths[name], [text])
        assert max(abs(a - b) for a, b in zip(logits, ref, strict=True)) < 1e-4, (name, text)


def test_a_saved_module_loads_after_other_adapters_put_lora_on_it(
    tiny_causal_lm: Path, gen_variants: dict, tmp_path: Path
):
    """The adapter's own copy of a module is the base's plain module, even when other
    adapters have wrapped it (or modules inside it) with LoRA first; order does not matter."""
    lora_on_head = make_variant_adapter(
        tiny_causal_lm, tmp_path / "headlora", "CAUSAL_LM", 30, target_modules=["lm_head", "gate_proj"]
    )  # fmt: skip
    mlp = make_variant_adapter(
        tiny_causal_lm, tmp_path / "mlp", "CAUSAL_LM", 31, target_modules=["q_proj"],
        modules_to_save=["layers.1.mlp"],
    )  # fmt: skip
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=4)
    engine.load_adapter("headlora", lora_on_head)
    engine.load_adapter("lmhead", gen_variants["lmhead"])
    engine.load_adapter("mlp", mlp)
    paths = {None: None, "headlora": lora_on_head, "lmhead": gen_variants["lmhead"], "mlp": mlp}
    references = {
        (n, p): reference_greedy(tiny_causal_lm, path, engine.encode_prompt(p), MAX_NEW)
        for n, path in paths.items()
        for p in PROMPTS
    }
    _assert_generates_like_peft(engine, list(paths), references)


def test_saved_modules_shared_nested_or_holding_targets_equal_peft(
    tiny_causal_lm: Path, gen_variants: dict, tmp_path: Path
):
    """Two adapters saving the same module; one saving every down_proj loaded before one
    saving the whole layers.1.mlp around it; target_modules reaching inside a saved module
    (peft leaves those without LoRA): all served equal to peft, mixed in one batch."""
    made = make_variants(
        tiny_causal_lm,
        tmp_path,
        "CAUSAL_LM",
        {
            "lmhead2": {"target_modules": ["v_proj"], "modules_to_save": ["lm_head"]},
            "downs": {"target_modules": ["q_proj"], "modules_to_save": ["down_proj"]},
            "mlp1": {
                "target_modules": ["q_proj", "down_proj"],
                "modules_to_save": ["layers.1.mlp"],
            },
        },
        40,
    )
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=4)
    paths = {None: None, "lmhead": gen_variants["lmhead"], **made}
    for name in ("lmhead", "lmhead2", "downs", "mlp1"):
        engine.load_adapter(name, paths[name])
    references = {
        (n, p): reference_greedy(tiny_causal_lm, path, engine.encode_prompt(p), MAX_NEW)
        for n, path in paths.items()
        for p in PROMPTS
    }
    _assert_generates_like_peft(engine, list(paths), references)
    _assert_generates_like_peft(engine, ["mlp1", "downs"], references)
