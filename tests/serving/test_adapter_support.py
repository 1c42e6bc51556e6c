"""One capability check for installer and engine: what the engine cannot serve is refused at
install (``UnsupportedAdapter``) with the same words the engine would use, never Ready-then-503.

Real peft adapters (``get_peft_model`` + ``save_pretrained``) over the tiny Llama and BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lorafleet_serving.engine.transformers_engine import TransformersEngine
from lorafleet_serving.errors import AdapterLoadError
from lorafleet_serving.installer import InstallRequest, install

from tests.support.models import make_variant_adapter

VARIANTS = {
    "dora-embed": (
        {"target_modules": ["embed_tokens", "q_proj"], "use_dora": True},
        "DoRA on embedding layers (model.embed_tokens) is not served",
    ),
    "tokens": (
        {"target_modules": ["q_proj"], "trainable_token_indices": [1, 2]},
        "trainable_token_indices (trained token embeddings) is not served",
    ),
    "base-bias": (
        {"target_modules": ["q_proj"], "bias": "all"},
        "bias='all' (trained base-model biases) is not served",
    ),
}


def _install_adapter(adapter: Path, base: Path, tmp_path: Path, name: str) -> tuple[dict, Path]:
    """Install ``adapter`` over the installed ``base`` into a fresh ``tmp_path/dest-<name>``;
    returns the report and that volume root."""
    dest = tmp_path / f"dest-{name}"
    dest.mkdir()
    request = InstallRequest(
        "adapter", namespace="ml", name=name, source=f"file://{adapter}", dest=dest,
        base_path=base,
    )  # fmt: skip
    return install(request), dest


@pytest.fixture(scope="module")
def installed_llama(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("dest")
    report = install(
        InstallRequest(
            "base",
            namespace="ml",
            name="llama",
            source=f"file://{tiny_causal_lm}",
            dest=dest,
            task="text-generation",
        )
    )
    assert report["ok"], report
    return Path(report["path"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_an_adapter_the_engine_cannot_serve_is_refused_at_install_with_the_engines_words(
    variant: str, tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path
) -> None:
    config, said = VARIANTS[variant]
    adapter = make_variant_adapter(tiny_causal_lm, tmp_path / variant, "CAUSAL_LM", 0, **config)
    report, dest = _install_adapter(adapter, installed_llama, tmp_path, variant)
    assert not report["ok"] and report["reason"] == "UnsupportedAdapter", report
    assert said in report["message"], report["message"]
    assert not any((dest / "ml").rglob("adapter_model.safetensors"))  # nothing left installed
    # The engine, handed the same files, refuses them with the same message (served variants:
    # test_adapter_variants.py).
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=2)
    with pytest.raises(AdapterLoadError) as refused:
        engine.load_adapter(variant, adapter)
    assert said in refused.value.message
    assert report["message"] in refused.value.message


def test_plain_lora_with_rslora_and_patterns_installs_and_loads(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path
) -> None:
    adapter = make_variant_adapter(
        tiny_causal_lm,
        tmp_path / "plain",
        "CAUSAL_LM",
        0,
        target_modules=["q_proj", "v_proj"],
        use_rslora=True,
        rank_pattern={"v_proj": 2},
        alpha_pattern={"v_proj": 4},
    )
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "plain")
    assert report["ok"], report
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=2)
    assert engine.load_adapter("plain", report["path"]).rank == 4


def test_a_classification_head_saved_with_the_adapter_is_served(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    adapter = make_variant_adapter(
        tiny_classifier,
        tmp_path / "head",
        "SEQ_CLS",
        0,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    saved = json.loads((adapter / "adapter_config.json").read_text())["modules_to_save"]
    assert "classifier" in saved  # peft may add "score" beside it: both are head names
    engine = TransformersEngine(tiny_classifier, "text-classification", max_adapters=2)
    assert engine.load_adapter("head", adapter).head is not None


def test_a_truncated_adapter_file_is_an_invalid_adapter_not_an_invalid_base(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path
) -> None:
    adapter = make_variant_adapter(
        tiny_causal_lm, tmp_path / "cut", "CAUSAL_LM", 0, target_modules=["q_proj"]
    )
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "cut")
    assert not report["ok"] and report["reason"] == "InvalidAdapter", report
    assert "adapter_model.safetensors: not a readable safetensors file" in report["message"]


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"bias": "all"}, "bias='all' (trained base-model biases) is not served"),
        ({"bias": "lora_only"}, "bias='lora_only'"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
        ({"alora_invocation_tokens": [5, 6]}, "aLoRA (alora_invocation_tokens)"),
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
        ({"modules_to_save": ["query"]}, "also carries LoRA weights (bert.encoder.layer.0"),
        ({"modules_to_save": ["nothere"]}, "modules_to_save ['nothere'] names no module"),
        ({"kasa_config": {"beta": 1e-4}}, "peft LoRA variant(s) kasa_config (they change"),
        ({"init_lora_weights": "mica"}, "peft LoRA variant(s) mica"),
        ({"use_future_trick": True}, "would ignore, though they look like they change the math:"),
        ({"shift_pattern": {"q": 2}}, "look like they change the math: shift_pattern"),
        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights='pissa_niter_4': trained"),
        ({"init_lora_weights": "olora"}, "convert it to plain LoRA first"),
        ({"init_lora_weights": "bogus"}, "init_lora_weights='bogus': not an initialisation"),
    ],
)
def test_config_only_variants_are_named(tiny_classifier: Path, config: dict, said: str) -> None:
    from lorafleet_serving.adapter_support import unsupported_features
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    keys = ["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"]
    problems = unsupported_features(
        {"target_modules": ["query"], **config}, keys, model, task="text-classification"
    )
    assert len(problems) == 1 and said in problems[0], problems
    assert unsupported_features({"bias": "none"}, keys, model, task="text-classification") == []


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        (
            "rank_pattern",
            {"q_proj": "abc"},
            "rank_pattern must be positive numbers (entry 'q_proj')",
        ),
        ("rank_pattern", ["q_proj"], "rank_pattern must be an object"),
        ("rank_pattern", {"q_proj": 2.5}, "rank_pattern must be positive integers"),
        ("alpha_pattern", {"(": 4}, "alpha_pattern must be valid regular expressions"),
        ("target_modules", "(", "target_modules must be a valid regular expression"),
        ("target_modules", 5, "target_modules must be a list of module names"),
        ("modules_to_save", "lm_head", "modules_to_save must be a list of module names"),
        ("lora_alpha", "8", "lora_alpha must be a finite number"),
        ("lora_alpha", None, "lora_alpha must be a finite number"),
        ("use_dora", "yes", "use_dora must be true or false"),
        ("lora_bias", "false", "lora_bias must be true or false"),
        ("lora_dropout", "x", "lora_dropout must be a number in [0, 1)"),
        ("layers_to_transform", "1", "layers_to_transform must be a layer index"),
        ("exclude_modules", 7, "exclude_modules must be a list of module names"),
        ("task_type", "BOGUS", "task_type must be one of"),
        ("peft_type", "lora", "peft_type is 'lora', not 'LORA'"),
    ],
)
def test_a_config_field_of_the_wrong_type_is_an_invalid_adapter_naming_it(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path, field: str, value, said: str
) -> None:
    adapter = make_variant_adapter(
        tiny_causal_lm, tmp_path / "bad", "CAUSAL_LM", 0, target_modules=["q_proj"]
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    config[field] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    report, dest = _install_adapter(adapter, installed_llama, tmp_path, "bad")
    assert not report["ok"] and report["reason"] == "InvalidAdapter", report
    assert said in report["message"], report["message"]
    assert not list(dest.rglob("adapter_config.json"))  # nothing staged is left behind


@pytest.mark.parametrize(
    "config",
    [
        {"target_modules": ["q_proj"], "use_dora": True},
        {"target_modules": ["q_proj"], "lora_bias": True},
        {"target_modules": ["embed_tokens", "q_proj"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    ],
    ids=["dora", "lora-bias", "embeddings", "lm-head"],
)
def test_served_variants_install_without_labels(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path, config: dict
) -> None:
    adapter = make_variant_adapter(tiny_causal_lm, tmp_path / "v", "CAUSAL_LM", 0, **config)
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "v")
    assert report["ok"], report
    # A saved lm_head is a module copy, not a head of labels.
    assert report.get("numLabels") is None and not report.get("labels"), report
    findings = json.loads((Path(report["path"]) / "lorafleet.json").read_text())["findings"]
    assert not [f for f in findings if f["code"] == "UnmatchedWeights"], findings


def test_unknown_config_keys_are_a_warning_in_the_report_and_the_manifest(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path
) -> None:
    """Keys peft does not know install with a warning naming them; one that looks like it
    changes the math is refused, by the installer and by the engine alike."""
    adapter = make_variant_adapter(
        tiny_causal_lm, tmp_path / "a", "CAUSAL_LM", 0, target_modules=["q_proj"]
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps({**config, "trained_by": "someone", "use_future_trick": False})
    )
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "a")
    assert report["ok"], report
    said = "keys the installed peft does not know (ignored when the adapter loads): trained_by,"
    assert f"warnings: UnknownConfigKeys: adapter_config.json {said}" in report["message"]
    findings = json.loads((Path(report["path"]) / "lorafleet.json").read_text())["findings"]
    assert [f["level"] for f in findings if f["code"] == "UnknownConfigKeys"] == ["warning"]
    TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=1).load_adapter("a", adapter)

    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_future_trick": 2}))
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "b")
    assert not report["ok"] and report["reason"] == "UnsupportedAdapter", report
    assert "change the math: use_future_trick" in report["message"]
    with pytest.raises(AdapterLoadError) as refused:
        TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=1).load_adapter(
            "b", adapter
        )
    assert "use_future_trick" in refused.value.message


def test_weights_that_would_overwrite_the_shared_base_are_refused(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path
) -> None:
    """A tensor naming a base weight outside LoRA and modules_to_save would be loaded by peft
    into the shared base (every adapter and the bare base would change): one that differs
    from the base's is refused by both; one equal to it is dropped and the adapter serves."""
    from safetensors.torch import load_file, save_file

    adapter = make_variant_adapter(tiny_causal_lm, tmp_path / "o", "CAUSAL_LM", 0, target_modules=["q_proj"])  # fmt: skip
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.model.norm.weight"] = torch.zeros(64)
    save_file(weights, adapter / "adapter_model.safetensors")
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "o")
    said = "retrained base weights ('model.norm.weight' differs from the base's; loading it"
    assert not report["ok"] and report["reason"] == "UnsupportedAdapter", report
    assert said in report["message"], report["message"]
    engine = TransformersEngine(tiny_causal_lm, "text-generation", max_adapters=1)
    before = engine.model.get_submodule("model.norm").weight.clone()
    with pytest.raises(AdapterLoadError, match="would change the shared base"):
        engine.load_adapter("o", adapter)
    assert torch.equal(engine.model.get_submodule("model.norm").weight, before)
    weights["base_model.model.model.norm.weight"] = before  # a copy equal to the base's
    save_file(weights, adapter / "adapter_model.safetensors")
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "equal")
    assert report["ok"], report
    engine.load_adapter("o", adapter)
    assert torch.equal(engine.model.get_submodule("model.norm").weight, before)


@pytest.mark.parametrize(
    ("drop", "said"),
    [
        ("k_proj.lora_", "target_modules selects model.layers.0.self_attn.k_proj"),
        ("layers.1.self_attn.q_proj.lora_B", "lora_A or lora_B missing for model.layers.1"),
    ],
)
def test_an_adapter_missing_lora_weights_is_an_invalid_adapter(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path, drop: str, said: str
) -> None:
    from safetensors.torch import load_file, save_file

    adapter = make_variant_adapter(
        tiny_causal_lm, tmp_path / "half", "CAUSAL_LM", 0, target_modules=["q_proj", "k_proj"]
    )
    weights = load_file(adapter / "adapter_model.safetensors")
    kept = {k: v for k, v in weights.items() if drop not in k}
    assert len(kept) < len(weights)
    save_file(kept, adapter / "adapter_model.safetensors")
    report, _ = _install_adapter(adapter, installed_llama, tmp_path, "half")
    assert not report["ok"] and report["reason"] == "InvalidAdapter", report
    assert said in report["message"], report["message"]


def test_a_rank_pattern_over_the_limit_is_named(
    tiny_causal_lm: Path, installed_llama: Path, tmp_path: Path
) -> None:
    adapter = make_variant_adapter(
        tiny_causal_lm, tmp_path / "rp", "CAUSAL_LM", 0, target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 8},
    )  # fmt: skip
    dest = tmp_path / "dest-rp"
    dest.mkdir()
    request = InstallRequest(
        "adapter", namespace="ml", name="rp", source=f"file://{adapter}", dest=dest,
        base_path=installed_llama, max_rank=4,
    )  # fmt: skip
    report = install(request)
    assert not report["ok"] and report["reason"] == "RankExceedsLimit", report
    assert "rank_pattern {'v_proj': 8} exceeds maxRank 4" in report["message"]


def test_a_tied_output_layer_copy_that_differs_is_refused(tmp_path: Path) -> None:
    """GPT-2 ties lm_head to the token embedding: a changed lm_head.weight in an adapter
    would be written into the shared embedding. It is a base weight too (refused)."""
    from safetensors.torch import load_file, save_file

    from tests.support.models import make_tiny_causal_lm

    base = make_tiny_causal_lm(tmp_path / "gpt2", arch="gpt2")
    adapter = make_variant_adapter(base, tmp_path / "tied", "CAUSAL_LM", 0, target_modules=["c_attn"])  # fmt: skip
    weights = load_file(adapter / "adapter_model.safetensors")
    engine = TransformersEngine(base, "text-generation", max_adapters=1)
    wte = engine.model.get_submodule("transformer.wte").weight
    before = wte.detach().clone()
    weights["base_model.model.lm_head.weight"] = before + 0.5
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match=r"'lm_head\.weight' differs from the base's"):
        engine.load_adapter("tied", adapter)
    assert torch.equal(engine.model.get_submodule("transformer.wte").weight, before)
