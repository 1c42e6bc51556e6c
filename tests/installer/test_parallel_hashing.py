"""Several files hashed at once: results and errors in listing order, bad files named.

``in_parallel`` runs the per-file work on a small thread pool; ``_verify_files`` hashes the
files the download did not (complete from an earlier run, S3) that way, and
``_verify_checkpoint`` reuses the checkpoint's digests from the download instead of reading
it again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from lorafleet_serving.installer import pipeline
from lorafleet_serving.installer.errors import CHECKSUM_MISMATCH, InstallError
from lorafleet_serving.installer.sources import Listing, RemoteFile
from lorafleet_serving.installer.verify import Digests, Expected, file_digests, in_parallel


def test_in_parallel_runs_items_at_once_and_keeps_order() -> None:
    barrier = threading.Barrier(3, timeout=10)  # breaks unless three calls run together

    def fn(i: int) -> int:
        barrier.wait()
        return i * i

    assert in_parallel(fn, [1, 2, 3], workers=3) == [1, 4, 9]


def test_in_parallel_reports_first_failing_item_in_order() -> None:
    def fn(i: int) -> int:
        if i == 0:
            time.sleep(0.2)  # fails last, but comes first
            raise ValueError("item 0")
        if i == 2:
            raise ValueError("item 2")
        return i

    with pytest.raises(ValueError, match="item 0"):
        in_parallel(fn, [0, 1, 2, 3], workers=4)


def test_in_parallel_one_worker_runs_in_the_calling_thread() -> None:
    caller = threading.get_ident()
    assert in_parallel(lambda _: threading.get_ident(), [1, 2], workers=1) == [caller, caller]


def _staged(tmp_path: Path, count: int) -> tuple[Path, list[RemoteFile]]:
    """``count`` files of different bytes, listed with their true size and sha256."""
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    listed = []
    for i in range(count):
        data = bytes([i]) * (100_000 + i)
        (files_dir / f"model-{i}.safetensors").write_bytes(data)
        expected = Expected(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        listed.append(RemoteFile(f"model-{i}.safetensors", expected, expected.sha256, ""))
    return files_dir, listed


def _hashed_together(monkeypatch: pytest.MonkeyPatch, parties: int) -> None:
    """Make ``pipeline.verify_file`` wait until ``parties`` files are being hashed at once."""
    barrier = threading.Barrier(parties, timeout=10)
    real = pipeline.verify_file

    def verify_file(path, expected, *, name):
        barrier.wait()
        return real(path, expected, name=name)

    monkeypatch.setattr(pipeline, "verify_file", verify_file)


def test_verify_files_hashes_several_files_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_dir, listed = _staged(tmp_path, 4)
    _hashed_together(monkeypatch, 4)

    digests = pipeline._verify_files(Listing(files=listed), files_dir, {})

    assert list(digests) == [f.path for f in listed]
    for f in listed:
        assert digests[f.path][0] == file_digests(files_dir / f.path)


def test_verify_files_names_the_file_with_a_bad_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_dir, listed = _staged(tmp_path, 4)
    listed[2].expected.sha256 = "0" * 64
    _hashed_together(monkeypatch, 4)

    with pytest.raises(InstallError) as err:
        pipeline._verify_files(Listing(files=listed), files_dir, {})

    assert err.value.reason == CHECKSUM_MISMATCH
    assert err.value.message.startswith("model-2.safetensors: sha256 is ")
    assert not (files_dir / "model-2.safetensors").exists()  # never promoted nor resumed from


def test_verify_files_reports_the_first_bad_file_in_listing_order(tmp_path: Path) -> None:
    files_dir, listed = _staged(tmp_path, 4)
    listed[3].expected.sha256 = "0" * 64
    (files_dir / "model-1.safetensors").unlink()

    with pytest.raises(
        InstallError, match=r"^ChecksumMismatch: model-1\.safetensors: missing after download"
    ):
        pipeline._verify_files(Listing(files=listed), files_dir, {})


def test_verify_files_checks_digests_from_the_download(tmp_path: Path) -> None:
    files_dir, listed = _staged(tmp_path, 2)
    fetched = {listed[1].path: Digests(size=listed[1].expected.size, sha256="f" * 64)}

    with pytest.raises(
        InstallError, match=r"^ChecksumMismatch: model-1\.safetensors: sha256 is f{64}"
    ):
        pipeline._verify_files(Listing(files=listed), files_dir, fetched)


def test_checkpoint_digests_from_the_download_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files_dir, listed = _staged(tmp_path, 1)
    ckpt = files_dir / listed[0].path
    good = file_digests(ckpt)

    def no_second_read(*args, **kwargs):
        raise AssertionError("the checkpoint was hashed again")

    monkeypatch.setattr(pipeline, "verify_file", no_second_read)
    assert pipeline._verify_checkpoint(ckpt, Listing(files=listed), good) == good

    bad = Digests(size=good.size, sha256="f" * 64)
    with pytest.raises(
        InstallError, match=r"^ChecksumMismatch: model-0\.safetensors: sha256 is f{64}"
    ):
        pipeline._verify_checkpoint(ckpt, Listing(files=listed), bad)
    assert not ckpt.exists()
