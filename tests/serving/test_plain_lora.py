"""Plain LoRA loaded straight into the batched stacks (``engine/plain_lora.py``), without peft.

The direct path must compute exactly what peft would, and hand everything else to peft: each
case below that is not plain LoRA on ``nn.Linear`` (or that does not fit) must return
``None``, so peft loads it or refuses it with its own message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet_serving.engine.adapter_loading import (
    peft_load_config,
    read_adapter_files,
    select_weights,
)
from lorafleet_serving.engine.plain_lora import plain_lora_layers
from lorafleet_serving.engine.protocol import GenerationRow
from lorafleet_serving.engine.transformers_engine import TransformersEngine
from lorafleet_serving.errors import AdapterLoadError
from safetensors.torch import load_file, save_file

from tests.support.models import make_variant_adapter, reference_greedy

PREFIX = "base_model.model.model.layers.0.self_attn."
PROMPT = "the cat eats an apple"


@pytest.fixture(scope="module")
def engine(tiny_causal_lm: Path) -> TransformersEngine:
    return TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=4)


def _layers(engine: TransformersEngine, folder: Path):
    files = read_adapter_files("x", folder, engine.device)
    weights = select_weights("x", files, engine.model, engine.task)
    config = peft_load_config(files.config, weights.saved_entries)
    return plain_lora_layers(config, files.raw, weights.lora, engine.model)


def _edited(src: Path, dest: Path, *, tensors=None, config=None) -> Path:
    """A copy of adapter ``src`` with its tensors and/or config changed by the callables."""
    shutil.copytree(src, dest)
    if tensors is not None:
        sd = load_file(dest / "adapter_model.safetensors")
        tensors(sd)
        save_file(sd, dest / "adapter_model.safetensors", metadata={"format": "pt"})
    if config is not None:
        data = json.loads((dest / "adapter_config.json").read_text())
        config(data)
        (dest / "adapter_config.json").write_text(json.dumps(data))
    return dest


def test_plain_layers_carry_peft_scaling(engine, tiny_lora_adapters):
    folder = tiny_lora_adapters["alpha"]  # r=8, lora_alpha=16, q_proj and v_proj
    layers = _layers(engine, folder)
    assert layers is not None
    sd = load_file(folder / "adapter_model.safetensors")
    assert len(layers) == len(sd) // 2
    q = next(item for item in layers if item.qualname == "model.layers.0.self_attn.q_proj")
    torch.testing.assert_close(q.a, sd[PREFIX + "q_proj.lora_A.weight"])
    torch.testing.assert_close(q.b, sd[PREFIX + "q_proj.lora_B.weight"] * (16 / 8))


def test_rank_and_alpha_patterns_and_rslora_resolve_per_layer(engine, tiny_causal_lm, tmp_path):
    folder = make_variant_adapter(
        tiny_causal_lm,
        tmp_path / "rs",
        "CAUSAL_LM",
        3,
        target_modules=["q_proj", "k_proj", "o_proj"],
        use_rslora=True,
        rank_pattern={"k_proj": 2},
        alpha_pattern={"o_proj": 32},
    )
    layers = {item.qualname: item for item in _layers(engine, folder) or []}
    sd = load_file(folder / "adapter_model.safetensors")
    # r=4, lora_alpha=8 by default; rsLoRA: alpha / sqrt(r).
    for module, r, alpha in (("q_proj", 4, 8), ("k_proj", 2, 8), ("o_proj", 4, 32)):
        layer = layers[f"model.layers.0.self_attn.{module}"]
        assert layer.a.shape[0] == r
        expected = sd[f"{PREFIX}{module}.lora_B.weight"] * (alpha / r**0.5)
        torch.testing.assert_close(layer.b, expected)


def _drop_b(sd):
    del sd[PREFIX + "q_proj.lora_B.weight"]


def _drop_module(sd):
    del sd[PREFIX + "q_proj.lora_A.weight"], sd[PREFIX + "q_proj.lora_B.weight"]


def _extra_module(sd):
    sd[PREFIX + "k_proj.lora_A.weight"] = sd[PREFIX + "q_proj.lora_A.weight"].clone()
    sd[PREFIX + "k_proj.lora_B.weight"] = sd[PREFIX + "q_proj.lora_B.weight"].clone()


def _wrong_rank(sd):
    sd[PREFIX + "q_proj.lora_A.weight"] = sd[PREFIX + "q_proj.lora_A.weight"][:4].clone()
    sd[PREFIX + "q_proj.lora_B.weight"] = sd[PREFIX + "q_proj.lora_B.weight"][:, :4].clone()


def _lora_bias(sd):
    sd[PREFIX + "q_proj.lora_B.bias"] = torch.zeros(sd[PREFIX + "q_proj.lora_B.weight"].shape[0])


@pytest.mark.parametrize(
    ("case", "tensors", "config"),
    [
        ("half a module", _drop_b, None),
        ("a targeted module without weights", _drop_module, None),
        ("weights on a module not targeted", _extra_module, None),
        ("a rank other than the config's", _wrong_rank, None),
        ("a lora_B bias", _lora_bias, None),
        ("DoRA", None, lambda c: c.update(use_dora=True)),
        ("all-linear", None, lambda c: c.update(target_modules="all-linear")),
        ("fan_in_fan_out", None, lambda c: c.update(fan_in_fan_out=True)),
        ("a regex selecting a norm", None, lambda c: c.update(target_modules=".*(q_proj|norm)")),
    ],
)
def test_anything_but_plain_lora_goes_to_peft(
    engine, tiny_lora_adapters, tmp_path, case, tensors, config
):
    folder = _edited(tiny_lora_adapters["alpha"], tmp_path / "a", tensors=tensors, config=config)
    assert _layers(engine, folder) is None, case


def test_plain_loads_skip_peft_and_mix_with_peft_loaded_variants(
    tiny_causal_lm, tiny_lora_adapters, tmp_path
):
    """Plain adapters never create peft's model; a variant loaded later wraps the layers the
    plain ones are hooked on, and a plain one loaded after wraps hooks onto peft's layers —
    every row still equals peft with only its adapter."""
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=3)
    engine.load_adapter("alpha", tiny_lora_adapters["alpha"])
    assert engine.peft is None
    dora = make_variant_adapter(
        tiny_causal_lm, tmp_path / "dora", "CAUSAL_LM", 5, target_modules=["q_proj"], use_dora=True
    )
    engine.load_adapter("dora", dora)  # peft wraps q_proj, already hooked for alpha
    assert engine.peft is not None
    engine.load_adapter("beta", tiny_lora_adapters["beta"])  # direct, onto peft's wrappers
    paths = {None: None, "alpha": tiny_lora_adapters["alpha"], "dora": dora}
    paths["beta"] = tiny_lora_adapters["beta"]
    ids = engine.encode_prompt(PROMPT)
    rows = [GenerationRow(ids, slot=engine.slot(n), max_tokens=8) for n in paths]
    engine.generate(rows)
    for (name, path), row in zip(paths.items(), rows, strict=True):
        assert row.token_ids == reference_greedy(tiny_causal_lm, path, ids, 8), name
    engine.unload_adapter("dora")
    engine.unload_adapter("alpha")
    engine.load_adapter("gamma", tiny_lora_adapters["gamma"])
    rows = [GenerationRow(ids, slot=engine.slot(n), max_tokens=8) for n in ("gamma", "beta")]
    engine.generate(rows)
    for name, row in zip(("gamma", "beta"), rows, strict=True):
        assert row.token_ids == reference_greedy(
            tiny_causal_lm, tiny_lora_adapters[name], ids, 8
        ), name


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [(_drop_module, "LoRA weights missing"), (_extra_module, "2 weights match no layer")],
)
def test_adapters_that_do_not_fit_are_refused_with_peft_reasons(
    engine, tiny_lora_adapters, tmp_path, tensors, reason
):
    folder = _edited(tiny_lora_adapters["alpha"], tmp_path / "a", tensors=tensors)
    before = engine.tensor_bytes()
    with pytest.raises(AdapterLoadError, match=reason):
        engine.load_adapter("bad", folder)
    assert "bad" not in engine.adapters and engine.tensor_bytes() == before


@pytest.mark.parametrize(
    "slots",
    [
        [0, 0, 0],  # bare base: no delta
        [2, 2, 2],  # one adapter: addmm_ into the output
        [1, 1, 2, 2, 3, 3],  # grouped, consecutive slots: views, baddbmm_
        [1, 1, 3, 3],  # grouped, a gap: the groups' matrices gathered
        [2, 1, 2, 1],  # equal groups but interleaved (rows that joined later): regrouped
        [3, 3, 3, 1, 0, 3],  # skewed groups: padded
    ],
)
@pytest.mark.parametrize("tokens", [None, 5])
def test_every_batched_path_equals_the_per_row_formula(slots, tokens):
    """``W x + (x A_k^T) B_k^T s_k`` per row ``n`` with ``k = slots[n]``, whichever path the
    batch takes (RowPlan.aligned, consecutive or gathered slots, padding)."""
    from lorafleet_serving.engine.lora_batched import BatchedLoRA, LayerWeights
    from lorafleet_serving.engine.row_plan import RowPlan

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(12, 7)})
    lora = BatchedLoRA(3, dtype=torch.float32, device=torch.device("cpu"))
    mats = {k: (torch.randn(k + 1, 12), torch.randn(7, k + 1)) for k in (1, 2, 3)}
    for k, (a, b) in mats.items():
        lora.add_layers(f"a{k}", model, [LayerWeights("proj", a=a, b=b * 0.5)])
    x = torch.randn(len(slots), *([tokens] if tokens else []), 12)
    with torch.inference_mode(), lora.rows(slots):
        got = model["proj"](x)
    want = model["proj"](x).detach().clone()
    for n, k in enumerate(slots):
        if k:
            a, b = mats[k]
            want[n] += (x[n] @ a.T) @ b.T * 0.5
    torch.testing.assert_close(got, want)
    grouped = sorted(slots) == slots and len({slots.count(s) for s in slots}) == 1
    assert RowPlan.build(slots, torch.device("cpu")).aligned == grouped


def test_generation_batches_lie_grouped_by_adapter(engine, tiny_lora_adapters):
    """Rows are sorted by slot at prefill, so a uniformly mixed batch takes the copy-free path."""
    for name in ("alpha", "beta"):
        if name not in engine.adapters:
            engine.load_adapter(name, tiny_lora_adapters[name])
    names = ["alpha", "beta", None, "beta", "alpha", None]
    ids = engine.encode_prompt(PROMPT)
    rows = [GenerationRow(ids, slot=engine.slot(n), max_tokens=3) for n in names]
    batch = engine.start_generation(rows)
    batch.step()
    assert [rows[i].slot for i in batch.active] == sorted(r.slot for r in rows)
    plan = list(engine.lora._plans.values())[-1]  # the newest: this batch
    assert plan.aligned


def _unprefixed_copy(sd):
    key = PREFIX + "q_proj.lora_A.weight"
    sd[key.removeprefix("base_model.model.")] = torch.randn_like(sd[key])


def _only_unprefixed(sd):
    for key in list(sd):
        sd[key.removeprefix("base_model.model.")] = sd.pop(key)


@pytest.mark.parametrize(
    ("case", "tensors", "config"),
    [
        ("a module under two key forms", _unprefixed_copy, None),
        ("keys without peft's prefix", _only_unprefixed, None),
        ("a float r", None, lambda c: c.update(r=8.0)),
        ("a float rank_pattern value", None, lambda c: c.update(rank_pattern={"q_proj": 8.0})),
    ],
)
def test_ambiguous_keys_and_non_integer_ranks_go_to_peft(
    engine, tiny_lora_adapters, tmp_path, case, tensors, config
):
    folder = _edited(tiny_lora_adapters["alpha"], tmp_path / "a", tensors=tensors, config=config)
    files = read_adapter_files("x", folder, engine.device)
    weights = select_weights("x", files, engine.model, engine.task)
    config_ = peft_load_config(files.config, weights.saved_entries)
    # select_weights may drop keys naming no base weight; hand the direct path all of them.
    lora = {k: v for k, v in files.weights.items() if "lora_" in k}
    assert plain_lora_layers(config_, files.raw, lora, engine.model) is None, case


def test_half_precision_b_times_a_large_scaling_does_not_overflow(engine, tiny_lora_adapters):
    files = read_adapter_files("x", tiny_lora_adapters["alpha"], engine.device)
    lora = {k: (v * 1000).half() for k, v in files.weights.items()}
    files.config.lora_alpha = 16000  # scaling 2000: B * scaling overflows float16
    layers = plain_lora_layers(files.config, files.raw, lora, engine.model)
    assert layers is not None
    assert all(torch.isfinite(item.b).all() for item in layers)
