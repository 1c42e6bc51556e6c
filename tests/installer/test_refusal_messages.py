"""Refusals a new user meets first: an unusable --dest, a file that is no checkpoint at all,
and no empty staging folder left behind after a refusal."""

from __future__ import annotations

from pathlib import Path

from lorafleet_serving.installer import InstallRequest, install


def test_unwritable_dest_is_a_clear_refusal_not_an_internal_error(tmp_path, bert2):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".staging").write_text("a file where the installer needs a folder")
    report = install(InstallRequest(
        "base", namespace="ml", name="bert", source=f"file://{bert2}", dest=dest,
        task="text-classification", num_labels=2,
    ))  # fmt: skip
    assert report["ok"] is False
    assert report["reason"] == "InvalidSource", report
    assert "--dest" in report["message"] and "not writable" in report["message"], report
    assert "Traceback" not in report["message"]


def test_text_file_renamed_pt_names_the_problem(tmp_path, bert2):
    ckpt = tmp_path / "model.pt"
    ckpt.write_text("this is not a checkpoint\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(InstallRequest(
        "base", namespace="ml", name="bert", source=f"file://{bert2}", dest=dest,
        checkpoint=f"file://{ckpt}", task="text-classification", num_labels=2,
    ))  # fmt: skip
    assert report["ok"] is False and report["reason"] == "InvalidBaseModel", report
    assert "model.pt: not a PyTorch checkpoint" in report["message"], report
    assert not (dest / "ml" / "basemodels" / "bert").exists()


def test_refusal_leaves_no_staging_folder(tmp_path, bert_adapter):
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(
        InstallRequest(
            "base", namespace="ml", name="notbase", source=f"file://{bert_adapter}", dest=dest
        )
    )
    assert report["ok"] is False and report["reason"] == "NotABaseModel", report
    leftovers = sorted(
        str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_dir() and not any(p.iterdir())
    )
    assert leftovers == [], leftovers  # only the lock file may stay (flock target)
    assert not (dest / ".staging" / "ml" / "basemodels" / "notbase").exists()
    assert not (dest / "ml").exists() or not any(Path(dest / "ml").rglob("lorafleet.json"))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections are refused


def test_unreachable_hub_timeout_says_what_was_being_retried(tmp_path, monkeypatch):
    # Before: "the install did not finish within 5 s" and nothing about why (the backoff sleep
    # after the attempt at 3.5 s outlasts the deadline, so the watchdog answers).
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(
        InstallRequest(
            "base", namespace="ml", name="hub", source="hf://org/repo", dest=dest, timeout=5
        )
    )
    assert report["ok"] is False and report["reason"] == "Timeout", report
    assert "resolving revision" in report["message"], report
    assert "ConnectError" in report["message"] or "Connection" in report["message"], report


def test_unreachable_hub_after_retries_names_the_endpoint(tmp_path, monkeypatch):
    # Before: "InternalError: ConnectError: [Errno 111] Connection refused" (no endpoint, no repo).
    import httpx
    from lorafleet_serving.installer.deadline import Deadline
    from lorafleet_serving.installer.errors import InstallError
    from lorafleet_serving.installer.sources import hub

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "with_retries", lambda fn, **kw: fn())  # no backoff in a unit test
    src = hub.HubSource("hf://org/repo")

    def refuse():
        raise httpx.ConnectError("[Errno 111] Connection refused")

    try:
        src._call(refuse, "resolving revision", Deadline(None))
    except InstallError as exc:
        assert exc.reason == "InternalError"
        assert endpoint in exc.message and "org/repo" in exc.message, exc.message
        assert "resolving revision" in exc.message and "Connection refused" in exc.message
    else:  # pragma: no cover
        raise AssertionError("no InstallError")


def test_malformed_hub_id_is_invalid_source_and_its_query_is_redacted(tmp_path, monkeypatch):
    # Before: InternalError with a traceback (HFValidationError), and with HF_TOKEN unset the
    # token in "hf://org/repo?token=..." was printed verbatim (only http(s) queries were cut).
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    dest = tmp_path / "dest"
    dest.mkdir()
    for uri in ("hf://org/repo?token=hf_NOTLOGGED123", "hf://org/re po"):
        report = install(
            InstallRequest("base", namespace="ml", name="hub", source=uri, dest=dest, timeout=30)
        )
        assert report["ok"] is False and report["reason"] == "InvalidSource", report
        assert "does not name a Hub repository" in report["message"], report
        assert "NOTLOGGED" not in report["message"], report
    assert not any(dest.rglob("*"))  # refused before anything was written


def test_redact_cuts_query_strings_of_any_scheme():
    from lorafleet_serving.installer.errors import redact

    assert redact("hf://org/repo?token=abc123 failed") == "hf://org/repo?*** failed"
    assert redact("s3://b/k?versionId=v1") == "s3://b/k?***"
    assert redact("https://h/x?X-Amz-Signature=s") == "https://h/x?***"
