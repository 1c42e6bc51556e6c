"""Shared inputs for installer tests: tiny models and state dicts made on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import make_lora_adapter, make_tiny_causal_lm, make_tiny_classifier


@pytest.fixture(scope="session")
def bert2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny 2-label BertForSequenceClassification folder (negative/positive)."""
    return make_tiny_classifier(tmp_path_factory.mktemp("bert2"), num_labels=2, seed=0)


@pytest.fixture(scope="session")
def bert3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny 3-label BertForSequenceClassification folder."""
    return make_tiny_classifier(tmp_path_factory.mktemp("bert3"), num_labels=3, seed=1)


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT2LMHeadModel folder (attention projection named c_attn)."""
    return make_tiny_causal_lm(tmp_path_factory.mktemp("gpt2"), arch="gpt2", num_layers=2)


@pytest.fixture(scope="session")
def bert_adapter(tmp_path_factory: pytest.TempPathFactory, bert2: Path) -> Path:
    """LoRA r=8 on query/value over ``bert2`` with its own 4-label classifier head."""
    return make_lora_adapter(
        bert2,
        tmp_path_factory.mktemp("bert-adapter") / "topic",
        task="SEQ_CLS",
        modules_to_save=["classifier"],
        num_labels=4,
        seed=3,
    )


@pytest.fixture(scope="session")
def installed_bert(tmp_path_factory: pytest.TempPathFactory, bert2: Path) -> Path:
    """``bert2`` installed as a text-classification base; returns its install folder."""
    from lorafleet_serving.installer import install

    dest = tmp_path_factory.mktemp("dest-bert")
    report = install(
        "base",
        namespace="ml",
        name="bert",
        source=f"file://{bert2}",
        dest=dest,
        task="text-classification",
        num_labels=2,
    )
    assert report["ok"], report
    return Path(report["path"])
