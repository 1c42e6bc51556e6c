"""Unit tests of the kubeconfig helpers of tests/chart/operator_identity.py (no cluster)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from tests.chart.operator_identity import kubeconfig_in_process, token_kubeconfig

ADMIN = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [
        {"name": "other", "cluster": {"server": "https://127.0.0.1:1"}},
        {
            "name": "test",
            "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True},
        },
    ],
    "users": [{"name": "admin", "user": {"client-certificate": "/x.crt", "client-key": "/x.key"}}],
    "contexts": [{"name": "admin@test", "context": {"cluster": "test", "user": "admin"}}],
    "current-context": "admin@test",
}


def test_token_kubeconfig_keeps_the_cluster_and_swaps_the_user(tmp_path: Path) -> None:
    admin = tmp_path / "admin.kubeconfig"
    admin.write_text(yaml.safe_dump(ADMIN))
    out = token_kubeconfig(admin, "tok.en", "operator", tmp_path / "sa.kubeconfig")
    config = yaml.safe_load(out.read_text())
    assert config["clusters"] == [ADMIN["clusters"][1]]
    assert config["users"] == [{"name": "operator", "user": {"token": "tok.en"}}]
    assert config["current-context"] == "operator"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_kubeconfig_in_process_is_what_load_kube_config_reads(tmp_path: Path) -> None:
    from kubernetes import client, config

    admin = tmp_path / "admin.kubeconfig"
    admin.write_text(yaml.safe_dump(ADMIN))
    path = token_kubeconfig(admin, "tok.en", "operator", tmp_path / "sa.kubeconfig")
    saved = client.Configuration.get_default_copy()
    before = os.environ.get("KUBECONFIG")
    try:
        with kubeconfig_in_process(path):
            assert os.environ["KUBECONFIG"] == str(path)
            config.load_kube_config()  # no argument: as the operator's startup handler calls it
            loaded = client.Configuration.get_default_copy()
            assert loaded.host == "https://127.0.0.1:6443"
            assert "Bearer tok.en" in loaded.api_key.values()
        assert os.environ.get("KUBECONFIG") == before
        # The default client configuration the operator replaced is back.
        assert client.Configuration.get_default_copy().host == saved.host
    finally:
        client.Configuration.set_default(saved)
