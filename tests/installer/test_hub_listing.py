"""HubSource.list: one model_info(files_metadata=True) call when the server gives file metadata.

olah's mirror leaves sizes and digests out of ``model_info``, so the olah tests in
test_hub.py cover the ``list_repo_tree`` fallback; this stands in for the Hub's fuller answer
with a stub ``HfApi`` (no server).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from huggingface_hub.hf_api import BlobLfsInfo, RepoFile, RepoSibling
from lorafleet_serving.installer.deadline import Deadline
from lorafleet_serving.installer.sources import hub as hub_module
from lorafleet_serving.installer.sources.hub import HubSource

SHA = "a" * 40
LFS_SHA256 = "b" * 64


class _StubApi:
    calls: list[str] = []
    siblings: list[RepoSibling] = []

    def __init__(self, endpoint=None, token=None) -> None:
        pass

    def model_info(self, repo_id, revision=None, files_metadata=False):
        _StubApi.calls.append(f"model_info files_metadata={files_metadata}")
        return SimpleNamespace(sha=SHA, siblings=_StubApi.siblings)

    def list_repo_tree(self, repo_id, revision=None, recursive=False):
        _StubApi.calls.append(f"list_repo_tree {revision}")
        return [
            RepoFile(path="config.json", size=10, oid="c" * 40),
            RepoFile(
                path="model.safetensors",
                size=1000,
                oid="d" * 40,
                lfs={"size": 1000, "oid": LFS_SHA256, "pointerSize": 130},
            ),
        ]


@pytest.fixture
def stub_api(monkeypatch):
    monkeypatch.setattr(hub_module, "HfApi", _StubApi)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    _StubApi.calls = []
    return _StubApi


def _by_path(listing):
    return {f.path: f.expected for f in listing.files}


def test_one_call_when_siblings_carry_metadata(stub_api) -> None:
    stub_api.siblings = [
        RepoSibling(rfilename="config.json", size=10, blob_id="c" * 40),
        RepoSibling(
            rfilename="model.safetensors",
            size=1000,
            blob_id="d" * 40,
            lfs=BlobLfsInfo(size=1000, sha256=LFS_SHA256, pointer_size=130),
        ),
    ]
    listing = HubSource("hf://acme/m", revision="main").list(Deadline(None))
    assert stub_api.calls == ["model_info files_metadata=True"]
    assert listing.resolved_revision == SHA
    got = _by_path(listing)
    # non-LFS: git blob id; LFS: sha256 only (its blob id is the pointer file's)
    assert (got["config.json"].size, got["config.json"].git_blob) == (10, "c" * 40)
    assert got["config.json"].sha256 is None
    assert (got["model.safetensors"].size, got["model.safetensors"].sha256) == (1000, LFS_SHA256)
    assert got["model.safetensors"].git_blob is None


def test_tree_listing_when_siblings_lack_metadata(stub_api) -> None:
    stub_api.siblings = [
        RepoSibling(rfilename="config.json"),
        RepoSibling(rfilename="model.safetensors"),
    ]
    listing = HubSource("hf://acme/m").list(Deadline(None))
    assert stub_api.calls == ["model_info files_metadata=True", f"list_repo_tree {SHA}"]
    got = _by_path(listing)
    assert got["config.json"].git_blob == "c" * 40
    assert (got["model.safetensors"].sha256, got["model.safetensors"].git_blob) == (
        LFS_SHA256,
        None,
    )
