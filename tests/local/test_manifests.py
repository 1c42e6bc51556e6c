"""Unit tests of local mode's manifest reading, installer arguments, state file and status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lorafleet_operator.local.install import install_args, read_progress, read_report
from lorafleet_operator.local.manifests import ManifestsInvalid, display_uri, load_manifests
from lorafleet_operator.local.state import LocalState
from lorafleet_operator.local.status import render, summary
from rich.console import Console

BASE = """\
apiVersion: lorafleet.io/v1alpha1
kind: BaseModel
metadata: {name: minilm}
spec:
  source: {uri: "file://weights/base"}
  task: text-classification
  id2label: {"0": neg, "1": pos}
  serving: {maxRank: 16}
"""
ADAPTERS = """\
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: sentiment}
spec:
  baseModel: minilm
  source: {uri: "file://weights/sentiment"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
---
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: topic, namespace: default}
spec:
  baseModel: minilm
  servedName: topic-v1
  source: {uri: "file://weights/topic"}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("base", "sentiment", "topic"):
        (tmp_path / "weights" / name).mkdir(parents=True)
        (tmp_path / "weights" / name / "config.json").write_text("{}")
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "adapters.yml").write_text(ADAPTERS)
    (tmp_path / "notes.txt").write_text("not a manifest")
    return tmp_path


def test_reads_multi_document_files_and_resolves_relative_file_uris(folder: Path) -> None:
    objects, skipped = load_manifests(folder)

    assert [o.key for o in objects] == [
        "BaseModel/default/minilm",
        "LoraAdapter/default/sentiment",
        "LoraAdapter/default/topic",
    ]
    assert objects[0].spec.source.uri == f"file://{folder / 'weights' / 'base'}"
    assert objects[2].served_name == "topic-v1"
    assert objects[1].served_name == "sentiment"
    assert len(skipped) == 1 and "ConfigMap" in skipped[0]
    assert objects[0].source_stamp == [("config.json", 2, objects[0].source_stamp[0][2])]


def test_fingerprint_changes_with_spec_and_local_files(folder: Path) -> None:
    before = {o.key: o.fingerprint for o in load_manifests(folder)[0]}
    (folder / "weights" / "topic" / "adapter_model.safetensors").write_bytes(b"x" * 10)
    after = {o.key: o.fingerprint for o in load_manifests(folder)[0]}
    assert before["LoraAdapter/default/topic"] != after["LoraAdapter/default/topic"]
    assert before["LoraAdapter/default/sentiment"] == after["LoraAdapter/default/sentiment"]
    (folder / "base.yaml").write_text(BASE.replace("maxRank: 16", "maxRank: 32"))
    again = {o.key: o.fingerprint for o in load_manifests(folder)[0]}
    assert again["BaseModel/default/minilm"] != after["BaseModel/default/minilm"]


@pytest.mark.parametrize(
    ("broken", "needles"),
    [
        (BASE.replace("task: text-classification", "task: translation"), ["spec.task"]),
        (BASE.replace("maxRank: 16", "maxRank: 16, gpu: 1"), ["spec.serving.gpu"]),
        (BASE.replace("weights/base", "weights/missing"), ["spec.source.uri", "does not exist"]),
        (BASE.replace("name: minilm", "name: MiniLM"), ["metadata.name"]),
        (BASE.replace("lorafleet.io/v1alpha1", "lorafleet.io/v9"), ["apiVersion"]),
        (BASE + "  extra: [", ["not valid YAML"]),
    ],
)
def test_a_bad_field_names_file_object_and_field(
    folder: Path, broken: str, needles: list[str]
) -> None:
    (folder / "base.yaml").write_text(broken)
    with pytest.raises(ManifestsInvalid) as info:
        load_manifests(folder)
    message = str(info.value)
    assert str(folder / "base.yaml") in message
    for needle in needles:
        assert needle in message


def test_references_duplicates_and_served_name_clashes(folder: Path) -> None:
    (folder / "more.yaml").write_text(
        ADAPTERS.split("---")[0].replace("baseModel: minilm", "baseModel: nope")
        + "---\n"
        + ADAPTERS.split("---")[0]
        .replace("name: sentiment", "name: other")
        .replace("baseModel: minilm", "baseModel: minilm\n  servedName: topic-v1")
    )
    with pytest.raises(ManifestsInvalid) as info:
        load_manifests(folder)
    errors = info.value.errors
    assert any("spec.baseModel" in e and "'nope'" in e for e in errors)
    assert any("metadata.name" in e and "duplicate" in e for e in errors)
    assert any("spec.servedName" in e and "topic-v1" in e for e in errors)


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (
            b"apiVersion: lorafleet.io/v1alpha1\nkind: BaseModel\nmetadata: {name: x, namespace: 5}\n"
            b"spec: {source: {uri: 'file://weights/base'}}\n",
            ["metadata.namespace", "5"],
        ),
        (
            b"apiVersion: lorafleet.io/v1alpha1\nkind: [BaseModel]\nmetadata: {name: x}\n",
            ["field kind", "['BaseModel']"],
        ),
        (b"\xff\xfe\x00garbage\x9c", ["not UTF-8"]),
    ],
)
def test_wrong_types_and_binary_files_are_named_not_raised(
    folder: Path, content: bytes, needles: list[str]
) -> None:
    """A non-string namespace or kind, or a file that is not text, is a clear error naming the
    file (and the field), never a TypeError or UnicodeDecodeError out of ``lorafleet up``."""
    (folder / "bad.yaml").write_bytes(content)
    with pytest.raises(ManifestsInvalid) as info:
        load_manifests(folder)
    message = str(info.value)
    assert str(folder / "bad.yaml") in message
    for needle in needles:
        assert needle in message


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="does not exist"):
        load_manifests(tmp_path / "nope")


def test_install_args_follow_the_installer_command_line(folder: Path, tmp_path: Path) -> None:
    base, sentiment, _ = load_manifests(folder)[0]
    root = tmp_path / "models"

    args = install_args(base, root)

    assert args[:9] == [
        "base",
        "--namespace",
        "default",
        "--name",
        "minilm",
        "--source",
        f"file://{folder / 'weights' / 'base'}",
        "--dest",
        str(root),
    ]
    assert args[args.index("--task") + 1] == "text-classification"
    assert args[args.index("--num-labels") + 1] == "2"
    assert args[args.index("--max-rank") + 1] == "16"

    args = install_args(sentiment, root, base_path="/m/base", base_source="hf://a/b", max_rank=16)
    assert args[0] == "adapter"
    assert args[args.index("--base-path") + 1] == "/m/base"
    assert args[args.index("--base-source") + 1] == "hf://a/b"
    assert args[args.index("--max-rank") + 1] == "16"
    with pytest.raises(ValueError, match="not installed"):
        install_args(sentiment, root)


def test_report_and_progress_files(tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert read_report(report) is None
    report.write_text("")
    assert read_report(report) is None
    report.write_text('garbage\n{"ok": true, "path": "/x", "rank": 8}\n\n')
    parsed = read_report(report)
    assert parsed is not None and parsed.ok and (parsed.path, parsed.rank) == ("/x", 8)
    report.write_text("{not json")
    parsed = read_report(report)  # the cluster's parser: a failed report quoting the text
    assert parsed is not None and not parsed.ok and parsed.reason == "InternalError"
    assert "{not json" in parsed.message
    progress = tmp_path / "progress"
    assert read_progress(progress) is None
    progress.write_text(json.dumps({"bytesDone": 5, "bytesTotal": None, "updatedAt": 1.0}))
    sample = read_progress(progress)
    assert sample is not None and sample.bytes_done == 5 and sample.bytes_total is None


def test_state_file_and_status_table(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.update(
        "BaseModel/default/minilm",
        phase="Ready",
        reason="Serving",
        task="text-classification",
        resolvedRevision="sha256-0123456789abcdef0123",
        sizeBytes=3 * 1024 * 1024,
    )
    state.update(
        "LoraAdapter/default/topic",
        phase="Failed",
        reason="TargetModulesNotFound",
        message="module c_attn not in BertForSequenceClassification",
        baseModel="minilm",
        rank=8,
    )
    with pytest.raises(ValueError, match="unknown phase"):
        state.update("BaseModel/default/minilm", phase="Running")

    data = json.loads((tmp_path / "state.json").read_text())
    assert data["objects"]["BaseModel/default/minilm"]["phase"] == "Ready"
    assert summary(data) == "failed"
    console = Console(width=200, record=True)
    render(data, console)
    text = console.export_text()
    assert "minilm" in text and "3.0Mi" in text and "sha256-01234" in text
    assert "TargetModulesNotFound" in text and "module c_attn" in text
    assert LocalState(tmp_path).objects.keys() == data["objects"].keys()


def test_display_uri_drops_credentials_and_signatures() -> None:
    uri = "https://user:s3cr3t@example.com/m/model.tar?X-Amz-Signature=abc#frag"
    assert display_uri(uri) == "https://example.com/m/model.tar"
    assert display_uri("hf://org/repo") == "hf://org/repo"
    assert display_uri("file:///tmp/x") == "file:///tmp/x"


def test_local_mode_never_imports_torch_or_ray() -> None:
    code = (
        "import sys\n"
        "import lorafleet_operator.cli as cli\n"
        "import lorafleet_operator.local.fleet, lorafleet_operator.local.ray_head\n"
        "cli.build_parser()\n"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'ray', 'lorafleet_serving')"
        " if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_port_in_use_is_detected() -> None:
    import socket

    from lorafleet_operator.local.ray_head import free_port, port_is_free

    port = free_port()
    assert port_is_free(port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert not port_is_free(port)


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--port", "99999", "--port: must be between 1 and 65535"),
        ("--port", "0", "--port: must be between 1 and 65535"),
        ("--num-cpus", "0", "--num-cpus: must be at least 1"),
        ("--timeout", "-5", "--timeout: must be at least 1"),
    ],
)
def test_out_of_range_options_are_usage_errors(
    tmp_path: Path, option: str, value: str, needle: str
) -> None:
    # Before: --port 99999 printed "OverflowError: bind(): port must be 0-65535." (exit 1),
    # --num-cpus 0 silently meant "all CPUs", --timeout -5 was accepted.
    from lorafleet_operator.cli import build_parser

    parser = build_parser()
    argv = ["up", "-f", str(tmp_path), "--home", str(tmp_path / "home"), option, value]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    proc = subprocess.run(
        [sys.executable, "-m", "lorafleet_operator.cli", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "home").exists()


def test_served_table_counts_what_is_served_and_labels_reasons() -> None:
    # Before: "served models (ready in 16.0 s)" over a table whose ENDPOINT column held
    # "Timeout" when nothing at all was served.
    from types import SimpleNamespace

    from lorafleet_operator.local.up import _served_table

    base = SimpleNamespace(served_name="hubbase", kind="BaseModel", spec=None)
    adapter = SimpleNamespace(
        served_name="s3ad", kind="LoraAdapter", spec=SimpleNamespace(base_model="hubbase")
    )
    records = {
        "b": {"phase": "Failed", "reason": "Timeout"},
        "a": {"phase": "Pending", "reason": "BaseModelNotReady"},
    }
    fleet = SimpleNamespace(
        objects={"b": base, "a": adapter}, state=SimpleNamespace(get=records.__getitem__)
    )
    console = Console(width=200, record=True)
    console.print(_served_table(fleet, 16.0))
    text = console.export_text()
    assert "models: 0 of 2 served (16.0 s)" in text
    assert "ENDPOINT / REASON" in text and "Timeout" in text and "BaseModelNotReady" in text


def test_free_ports_are_drawn_outside_the_ephemeral_and_ray_worker_ranges() -> None:
    """A port handed to Ray or Serve must not be taken meanwhile by an outgoing connection
    (kernel ephemeral range) or a Ray worker (10002-19999): a CI run once lost Serve's HTTP
    port that way ("Address already in use")."""
    from lorafleet_operator.local.ray_head import _ephemeral_low, free_port, port_is_free

    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= p < low for p in ports), ports
    assert all(port_is_free(p) for p in ports)
