"""The command line, the report line, progress output, space check, path safety, remove."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorafleet_serving.installer import InstallRequest, install
from lorafleet_serving.installer.cli import main
from lorafleet_serving.installer.errors import InstallError, redact
from lorafleet_serving.installer.manifest import report_line
from lorafleet_serving.installer.pathsafety import safe_relpath
from lorafleet_serving.installer.progress import ProgressReporter


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorafleet_serving.installer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_success_writes_report_and_progress(tmp_path, bert2):
    report_file = tmp_path / "termination-log"
    progress = tmp_path / ".progress" / "ml" / "basemodels" / "bert.json"  # folder made on demand
    proc = _run(
        "base", "--namespace", "ml", "--name", "bert", "--source", f"file://{bert2}", "--dest", str(tmp_path),
        "--task", "text-classification", "--num-labels", "2",
        "--report-file", str(report_file), "--progress-file", str(progress),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = report_file.read_text().splitlines()[-1]
    report = json.loads(line)
    assert report["ok"] is True and report["reason"] == "Installed" and report["kind"] == "base"
    assert report["numLabels"] == 2 and report["architecture"] == "BertForSequenceClassification"
    assert json.loads(proc.stdout.splitlines()[-1]) == report
    assert len(line.encode()) < 4096
    data = json.loads(progress.read_text())
    assert (
        data["bytesDone"]
        == data["bytesTotal"]
        == sum(p.stat().st_size for p in bert2.iterdir() if p.is_file())
    )
    assert isinstance(data["updatedAt"], float)
    assert "bytes" in proc.stderr  # plain progress lines when stderr is not a terminal

    removed = _run("remove", "--path", report["path"], "--report-file", str(report_file))
    assert removed.returncode == 0
    assert json.loads(report_file.read_text().splitlines()[-1])["reason"] == "Removed"
    assert not Path(report["path"]).exists()


def test_cli_failure_exit_code_and_reason(tmp_path, bert_adapter):
    report_file = tmp_path / "report"
    proc = _run(
        "base", "--namespace", "ml", "--name", "bert", "--source", f"file://{bert_adapter}",
        "--dest", str(tmp_path), "--report-file", str(report_file),
    )  # fmt: skip
    assert proc.returncode == 1
    report = json.loads(report_file.read_text().splitlines()[-1])
    assert report == {
        "ok": False,
        "reason": "NotABaseModel",
        "message": report["message"],
        "kind": "base",
    }
    assert "NotABaseModel" in proc.stderr


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "base",
                "--namespace",
                "ml",
                "--name",
                "x",
                "--source",
                "file:///x",
                "--dest",
                str(tmp_path),
                "--num-labels",
                "0",
            ]
        )
    assert exc.value.code == 2
    code = main(
        [
            "base",
            "--namespace",
            "Bad_NS",
            "--name",
            "x",
            "--source",
            "file:///x",
            "--dest",
            str(tmp_path),
        ]
    )
    assert code == 1
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["reason"] == "InvalidSource" and "Bad_NS" in report["message"]


def test_unknown_scheme_and_missing_local_source(tmp_path):
    report = install(
        InstallRequest("base", namespace="ml", name="x", source="ftp://host/m", dest=tmp_path)
    )
    assert report["reason"] == "InvalidSource" and "ftp" in report["message"]
    report = install(
        InstallRequest(
            "base", namespace="ml", name="x", source=f"file://{tmp_path}/nope", dest=tmp_path
        )
    )
    assert report["reason"] == "SourceNotFound"


def test_insufficient_space_is_refused_before_copying(tmp_path, bert2, monkeypatch):
    import shutil

    from lorafleet_serving.installer import space

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    report = install(
        InstallRequest("base", namespace="ml", name="bert", source=f"file://{bert2}", dest=tmp_path)
    )
    assert report["reason"] == "InsufficientSpace"
    assert "1000 bytes free" in report["message"]
    assert not list(tmp_path.rglob("model.safetensors"))


def test_pvc_source_resolves_under_the_pvc_root(tmp_path, bert2, monkeypatch):
    import shutil

    claim = tmp_path / "pvcs" / "models-claim" / "bert"
    shutil.copytree(bert2, claim)
    monkeypatch.setenv("LORAFLEET_PVC_ROOT", str(tmp_path / "pvcs"))
    dest = tmp_path / "dest"
    dest.mkdir()
    report = install(
        InstallRequest(
            "base",
            namespace="ml",
            name="bert",
            source="pvc://models-claim/bert",
            dest=dest,
            revision="v1",
        )
    )
    assert report["ok"], report
    assert Path(report["path"]) == dest / "ml" / "basemodels" / "bert" / "v1"
    assert (claim / "model.safetensors").is_file()  # never moved


def test_report_line_stays_under_the_termination_message_limit():
    report = {
        "ok": False,
        "reason": "KeysMismatch",
        "message": "missing keys: "
        + ", ".join(f"encoder.layer.{i}.attention.self.query.weight" for i in range(300)),
        "kind": "base",
        "labels": {str(i): f"label-{i}-é" for i in range(400)},
    }
    line = report_line(report)
    assert len(line.encode()) <= 4000
    parsed = json.loads(line)
    assert parsed["reason"] == "KeysMismatch" and parsed["truncated"] is True
    assert parsed["message"].startswith("missing keys: encoder.layer.0")
    small = json.loads(
        report_line({"ok": True, "reason": "Installed", "message": "m", "rank": None})
    )
    assert small == {"ok": True, "reason": "Installed", "message": "m"}


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc/passwd", "a\\b", "", "."])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InstallError) as exc:
        safe_relpath(name, where="archive t.tar")
    assert exc.value.reason == "InvalidSource"


def test_safe_names_are_normalised():
    assert safe_relpath("./a//b/c.json", where="x") == "a/b/c.json"


def test_secrets_are_redacted(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret_value")
    text = redact("token hf_supersecret_value at https://user:pw@host/x?X-Amz-Signature=abc")
    assert "hf_supersecret_value" not in text and "pw@" not in text and "abc" not in text
    err = InstallError("Unauthorized", "refused hf_supersecret_value")
    assert "hf_supersecret_value" not in str(err)


def test_progress_file_and_plain_lines(tmp_path):
    counter = {"n": 0}
    out = io.StringIO()
    progress = tmp_path / "p.json"
    with ProgressReporter(
        lambda: counter["n"], 100, progress_file=progress, stream=out, label="ml/x"
    ):
        assert json.loads(progress.read_text())["bytesDone"] == 0
        counter["n"] = 60
    data = json.loads(progress.read_text())
    assert data["bytesDone"] == 60 and data["bytesTotal"] == 100
    assert "ml/x: 60/100 bytes (60.0%)" in out.getvalue()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(tmp_path):
    out = _Tty()
    with ProgressReporter(lambda: 2048, 4096, stream=out, label="ml/bar"):
        pass
    text = out.getvalue()
    assert "ml/bar" in text and "━" in text  # rich's bar, not the plain line
    assert "2048/4096 bytes" not in text


def test_unloadable_config_is_invalid_base_model(tmp_path, bert2):
    import shutil

    src = tmp_path / "badcfg"
    shutil.copytree(bert2, src)
    (src / "config.json").write_text("{not json")
    report = install(
        InstallRequest("base", namespace="ml", name="bert", source=f"file://{src}", dest=tmp_path)
    )
    assert report["reason"] == "InvalidBaseModel" and "config.json" in report["message"]


def test_pinned_revision_reinstall_needs_no_source(tmp_path, bert2):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(bert2, src)
    dest = tmp_path / "dest"
    dest.mkdir()
    first = install(
        InstallRequest(
            "base", namespace="ml", name="bert", source=f"file://{src}", dest=dest, revision="v7"
        )
    )
    assert first["ok"], first
    shutil.rmtree(src)  # the source is gone; the finished install still answers
    again = install(
        InstallRequest(
            "base", namespace="ml", name="bert", source=f"file://{src}", dest=dest, revision="v7"
        )
    )
    assert (
        again["ok"] and again["path"] == first["path"] and "already installed" in again["message"]
    )


def test_cli_adapter_install_with_patterns(tmp_path, bert_adapter, installed_bert):
    report_file = tmp_path / "report"
    proc = _run(
        "adapter", "--namespace", "ml", "--name", "topic", "--source", f"file://{bert_adapter}",
        "--dest", str(tmp_path), "--base-path", str(installed_bert), "--max-rank", "16",
        "--ignore-pattern", "README.md", "--report-file", str(report_file),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_file.read_text().splitlines()[-1])
    assert report["kind"] == "adapter" and report["rank"] == 8 and report["numLabels"] == 4
    assert not (Path(report["path"]) / "README.md").exists()
    assert (bert_adapter / "README.md").exists()
