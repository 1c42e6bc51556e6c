"""`lorafleet operator`: flags, JSON logs, and (integration) liveness + metrics endpoints."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
import requests
from lorafleet_operator.cli import build_parser
from lorafleet_operator.runtime import JsonLogFormatter

from tests.operator.conftest import GROUP, VERSION, wait_for


def test_operator_and_crds_subcommands_are_registered():
    parser = build_parser()
    args = parser.parse_args(
        ["operator", "-n", "a", "-n", "b", "--peering", "lf", "--job-ttl", "5"]
    )
    assert args.namespace == ["a", "b"] and args.peering == "lf" and args.job_ttl == 5
    assert callable(args.func)
    args = parser.parse_args(["crds", "--check"])
    assert args.check is True
    with pytest.raises(SystemExit):
        parser.parse_args(["operator", "-n", "a", "--all-namespaces"])


def test_json_log_lines():
    record = logging.LogRecord(
        "lorafleet.operator", logging.WARNING, __file__, 1, "phase %s", ("Ready",), None
    )
    record.k8s_ref = {"kind": "BaseModel", "namespace": "ml", "name": "minilm", "uid": "u"}
    line = json.loads(JsonLogFormatter().format(record))
    assert line["level"] == "WARNING" and line["message"] == "phase Ready"
    assert line["object"] == {"kind": "BaseModel", "namespace": "ml", "name": "minilm"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
@pytest.mark.cluster
def test_operator_process_serves_liveness_and_metrics(
    custom: Any, namespace: str, lorafleet_crds: None, kube_cluster: Any, tmp_path
):
    health, metrics = _free_port(), _free_port()
    env = dict(
        os.environ, KUBECONFIG=str(kube_cluster.kubeconfig), LORAFLEET_LISTEN_HOST="127.0.0.1"
    )
    log = open(tmp_path / "operator.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lorafleet_operator",
            "operator",
            "--namespace",
            namespace,
            "--health-port",
            str(health),
            "--metrics-port",
            str(metrics),
            "--log-format",
            "json",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            "liveness endpoint",
            lambda: _get_ok(f"http://127.0.0.1:{health}/healthz"),
            timeout=60,
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "basemodels",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BaseModel",
                "metadata": {"name": "m"},
                "spec": {"source": {"uri": "hf://acme/m"}},
            },
        )
        # No claim "lorafleet-models" here: the error path ends in a condition and a metric.
        wait_for(
            "VolumeNotFound condition",
            lambda: any(
                c.get("reason") == "VolumeNotFound"
                for c in (
                    custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, "basemodels", "m"
                    ).get("status")
                    or {}
                ).get("conditions")
                or []
            ),
        )
        text = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
        assert 'lorafleet_reconciles_total{kind="BaseModel"}' in text
        assert 'lorafleet_failures_total{kind="BaseModel",reason="VolumeNotFound"}' in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        # Let the namespace go: no operator is left to remove kopf's finalizer.
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "basemodels", "m", {"metadata": {"finalizers": None}}
        )
    lines = (tmp_path / "operator.log").read_text().splitlines()
    assert any(json.loads(line).get("level") for line in lines if line.startswith("{"))


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
