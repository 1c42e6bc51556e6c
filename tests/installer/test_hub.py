"""Installs from a real Hub-compatible server: olah (offline mirror) behind the stand-in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lorafleet_serving.installer import InstallRequest, install
from safetensors.torch import save_file

pytestmark = pytest.mark.integration


@pytest.fixture
def hub_env(olah_hub, monkeypatch):
    """Point huggingface_hub at the local mirror for this test only; no token by default."""
    monkeypatch.setenv("HF_ENDPOINT", olah_hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return olah_hub


@pytest.fixture(scope="module")
def bert_repo(olah_hub, bert2):
    """``acme/tiny-bert``: the tiny classifier, weights as LFS, tagged ``v1``."""
    sha = olah_hub.create_repo("acme/tiny-bert", bert2, tag="v1")
    return "acme/tiny-bert", sha


@pytest.fixture(scope="module")
def big_repo(olah_hub, bert2, tmp_path_factory):
    """``acme/bert-big``: the classifier plus a 12 MB LFS tensor file (for kill/resume)."""
    src = tmp_path_factory.mktemp("bert-big")
    shutil.copytree(bert2, src, dirs_exist_ok=True)
    torch.manual_seed(0)
    save_file({"extra.blob": torch.randn(3 * 1024 * 1024)}, str(src / "extra.safetensors"))
    sha = olah_hub.create_repo("acme/bert-big", src)
    return "acme/bert-big", sha, src


def _base(dest: Path, repo_id: str, **kw) -> dict:
    kw.setdefault("task", "text-classification")
    return install(
        InstallRequest(
            "base", namespace="ml", name="bert", source=f"hf://{repo_id}", dest=dest, **kw
        )
    )


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lorafleet_serving.installer", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_install_from_hub_records_commit_and_lfs_digests(tmp_path, hub_env, bert_repo, bert2):
    repo_id, sha = bert_repo
    report = _base(tmp_path, repo_id, revision="v1")
    assert report["ok"], report
    assert report["resolvedRevision"] == sha
    final = Path(report["path"])
    assert final == tmp_path / "ml" / "basemodels" / "bert" / sha
    manifest = json.loads((final / "lorafleet.json").read_text())
    assert manifest["source"]["repoId"] == repo_id and manifest["source"]["revision"] == "v1"
    want = hashlib.sha256((bert2 / "model.safetensors").read_bytes()).hexdigest()
    assert {f["path"]: f["sha256"] for f in manifest["files"]}["model.safetensors"] == want
    assert not (final / ".cache").exists()
    # a re-run after success is a quick no-op
    start = time.monotonic()
    again = _base(tmp_path, repo_id, revision="main")
    assert (
        again["ok"] and again["path"] == report["path"] and "already installed" in again["message"]
    )
    assert time.monotonic() - start < 5


def test_allow_and_ignore_patterns(tmp_path, hub_env, bert_repo):
    report = _base(
        tmp_path,
        bert_repo[0],
        allow_patterns=["*.json", "*.safetensors"],
        ignore_patterns=["tokenizer*"],
    )
    assert report["ok"], report
    names = {p.name for p in Path(report["path"]).iterdir()}
    assert names == {"config.json", "model.safetensors", "lorafleet.json"}


def test_missing_repo_and_revision_are_source_not_found(tmp_path, hub_env, bert_repo):
    assert _base(tmp_path, "acme/does-not-exist")["reason"] == "SourceNotFound"
    report = _base(tmp_path, bert_repo[0], revision="no-such-branch")
    assert report["reason"] == "SourceNotFound" and "no-such-branch" in report["message"]


def test_gated_repo_needs_the_token(tmp_path, hub_env, bert2, monkeypatch):
    hub_env.create_repo("acme/gated-bert", bert2)
    hub_env.gate("acme/gated-bert", "hf_gate_secret_123")
    try:
        report = _base(tmp_path, "acme/gated-bert")
        assert report["reason"] == "Unauthorized", report
        assert "gated" in report["message"]
        monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_456")
        wrong = _base(tmp_path, "acme/gated-bert")
        assert wrong["reason"] == "Unauthorized" and "hf_wrong_token_456" not in json.dumps(wrong)
        monkeypatch.setenv("HF_TOKEN", "hf_gate_secret_123")
        ok = _base(tmp_path, "acme/gated-bert")
        assert ok["ok"], ok
        manifest = (Path(ok["path"]) / "lorafleet.json").read_text()
        assert "hf_gate_secret_123" not in manifest
    finally:
        hub_env.gate("acme/gated-bert", None)


def test_corrupted_file_on_server_is_checksum_mismatch(tmp_path, hub_env, bert2):
    src = tmp_path / "src"
    shutil.copytree(bert2, src)
    hub_env.create_repo("acme/corrupt-bert", src)
    hub_env.corrupt_lfs_file("acme/corrupt-bert", "model.safetensors", offset=5000)
    dest = tmp_path / "dest"
    dest.mkdir()
    report = _base(dest, "acme/corrupt-bert")
    assert report["reason"] == "ChecksumMismatch", report
    assert "model.safetensors" in report["message"] and "sha256" in report["message"]
    assert not (dest / "ml" / "basemodels" / "bert").exists()
    assert not [p for p in dest.rglob("model.safetensors*")]


def test_killed_download_resumes_and_digests_are_correct(tmp_path, hub_env, big_repo):
    repo_id, _sha, src = big_repo
    size = (src / "extra.safetensors").stat().st_size
    progress = tmp_path / "progress.json"
    report_file = tmp_path / "report.log"
    before = hub_env.served_bytes(repo_id)
    hub_env.throttle(repo_id, 2_000_000)
    args = [
        "base",
        "--namespace",
        "ml",
        "--name",
        "bert",
        "--source",
        f"hf://{repo_id}",
        "--dest",
        str(tmp_path),
    ]
    args += [
        "--task",
        "text-classification",
        "--progress-file",
        str(progress),
        "--report-file",
        str(report_file),
    ]
    proc = _cli(*args, env={"HF_ENDPOINT": hub_env.endpoint}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline:
            if progress.exists():
                data = json.loads(progress.read_text())
                done = data["bytesDone"]
                if done > size // 3:
                    break
            time.sleep(0.1)
        assert size // 3 < done < data["bytesTotal"], data
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        hub_env.throttle(repo_id, None)
    assert not (tmp_path / "ml" / "basemodels" / "bert").exists()
    partial = [p for p in (tmp_path / ".staging").rglob("*.part")]
    assert partial and partial[0].stat().st_size > 0
    first_run = hub_env.served_bytes(repo_id) - before

    report = _base(tmp_path, repo_id)
    assert report["ok"], report
    total_served = hub_env.served_bytes(repo_id) - before
    # the re-run fetched only what was missing (plus the small files), not the whole file again
    assert total_served < size + first_run // 2, (total_served, first_run, size)
    manifest = json.loads((Path(report["path"]) / "lorafleet.json").read_text())
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert (
        digests["extra.safetensors"]
        == hashlib.sha256((src / "extra.safetensors").read_bytes()).hexdigest()
    )
    assert not (tmp_path / ".staging" / "ml" / "basemodels" / "bert").exists()


def test_cli_timeout_reports_timeout(tmp_path, hub_env, big_repo):
    repo_id = big_repo[0]
    hub_env.throttle(repo_id, 500_000)
    report_file = tmp_path / "report.log"
    try:
        proc = _cli(
            "base",
            "--namespace",
            "ml",
            "--name",
            "slow",
            "--source",
            f"hf://{repo_id}",
            "--dest",
            str(tmp_path),
            "--timeout",
            "3",
            "--report-file",
            str(report_file),
            env={"HF_ENDPOINT": hub_env.endpoint},
        )
        out, _err = proc.communicate(timeout=60)
    finally:
        hub_env.throttle(repo_id, None)
    assert proc.returncode == 1
    line = json.loads(report_file.read_text().splitlines()[-1])
    assert line["reason"] == "Timeout" and line["ok"] is False
    assert json.loads(out.splitlines()[-1]) == line
    assert not (tmp_path / "ml" / "basemodels" / "slow").exists()


def test_concurrent_installers_of_the_same_target(tmp_path, hub_env, bert_repo):
    repo_id, sha = bert_repo
    args = [
        "base",
        "--namespace",
        "ml",
        "--name",
        "bert",
        "--source",
        f"hf://{repo_id}",
        "--dest",
        str(tmp_path),
    ]
    procs = [
        _cli(
            *args,
            "--report-file",
            str(tmp_path / f"r{i}.log"),
            env={"HF_ENDPOINT": hub_env.endpoint},
        )
        for i in range(2)
    ]
    for p in procs:
        p.communicate(timeout=120)
    assert [p.returncode for p in procs] == [0, 0]
    reports = [json.loads((tmp_path / f"r{i}.log").read_text().splitlines()[-1]) for i in range(2)]
    assert {r["path"] for r in reports} == {str(tmp_path / "ml" / "basemodels" / "bert" / sha)}
    assert sorted(os.listdir(tmp_path / "ml" / "basemodels" / "bert")) == [sha]


def test_checkpoint_and_subfolder_from_the_hub(tmp_path, hub_env, bert2):
    from safetensors.torch import load_file

    src = tmp_path / "src"
    shutil.copytree(bert2, src / "model")
    state = load_file(str(bert2 / "model.safetensors"))
    (src / "ckpts").mkdir()
    torch.save({f"module.{k}": v for k, v in state.items()}, src / "ckpts" / "last.pt")
    sha = hub_env.create_repo("acme/with-ckpt", src)
    dest = tmp_path / "dest"
    dest.mkdir()
    report = _base(dest, "acme/with-ckpt/model", checkpoint="hf://acme/with-ckpt/ckpts/last.pt")
    assert report["ok"], report
    final = Path(report["path"])
    assert final.name.startswith(sha + "-ckpt-")
    assert (final / "config.json").is_file() and not (final / "model").exists()
    assert not list(final.rglob("*.pt"))
    manifest = json.loads((final / "lorafleet.json").read_text())
    assert manifest["checkpoint"]["uri"] == "hf://acme/with-ckpt/ckpts/last.pt"
    assert any(f["code"] == "PrefixStripped" for f in manifest["findings"])
