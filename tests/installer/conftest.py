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
    from lorafleet_serving.installer import InstallRequest, install

    dest = tmp_path_factory.mktemp("dest-bert")
    report = install(
        InstallRequest(
            "base",
            namespace="ml",
            name="bert",
            source=f"file://{bert2}",
            dest=dest,
            task="text-classification",
            num_labels=2,
        )
    )
    assert report["ok"], report
    return Path(report["path"])


@pytest.fixture
def small_volume(tmp_path: Path):
    """A real 48 MiB filesystem (tmpfs) mounted at ``tmp_path/vol`` for this test, then unmounted.

    Skips, saying why, only where mounting is impossible (not root, no CAP_SYS_ADMIN).
    """
    import subprocess

    mount = tmp_path / "vol"
    mount.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        why = proc.stderr.strip() or f"exit code {proc.returncode}"
    except OSError as exc:  # no mount(8)
        proc, why = None, str(exc)
    if proc is None or proc.returncode != 0:
        pytest.skip(f"cannot mount a 48 MiB tmpfs here: {why}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
