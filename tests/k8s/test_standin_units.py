"""Unit tests of the stand-ins' pure helpers (no cluster needed)."""

from __future__ import annotations

from tests.support.kubelet_standin import _PathRewriter, _termination_message, expand_vars
from tests.support.kuberay_standin import rewrite_paths


def test_rewrite_paths_only_at_boundaries() -> None:
    cfg = {"args": {"base_path": "/models/ns/a", "other": "/models2/x", "root": "/models"}}
    out = rewrite_paths(cfg, {"/models": "/tmp/m"})
    assert out == {"args": {"base_path": "/tmp/m/ns/a", "other": "/models2/x", "root": "/tmp/m"}}
    assert cfg["args"]["base_path"] == "/models/ns/a"  # input untouched


def test_expand_vars_follows_kubelet_rules() -> None:
    env = {"A": "1", "B": "x y"}
    assert expand_vars("$(A)-$(B)-$(C)-$$(A)", env) == "1-x y-$(C)-$(A)"


def test_mount_paths_are_rewritten_at_path_boundaries_only() -> None:
    rw = _PathRewriter(
        {"/models": "/tmp/vol", "/models/cache": "/tmp/cache", "/dev/termination-log": "/tmp/t"}
    )
    assert rw("--dest /models/ns") == "--dest /tmp/vol/ns"
    assert rw("--dest=/models") == "--dest=/tmp/vol"
    assert rw("/models/cache/x") == "/tmp/cache/x"
    assert rw("/models2/x /x/models") == "/models2/x /x/models"
    assert rw("--report-file /dev/termination-log") == "--report-file /tmp/t"


def test_termination_message_rules(tmp_path) -> None:
    f = tmp_path / "msg"
    f.write_bytes(b"x" * 5000)
    assert len(_termination_message(f, 0, "", None)) == 4096
    f.write_bytes(b"")
    logs = "\n".join(f"line {i}" for i in range(200))
    assert _termination_message(f, 0, logs, "FallbackToLogsOnError") == ""
    msg = _termination_message(f, 1, logs, "FallbackToLogsOnError")
    assert msg.endswith("line 199") and msg.count("\n") == 79
    assert _termination_message(f, 1, logs, "File") == ""
