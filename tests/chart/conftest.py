"""Fixtures of the chart tests: the Go-built helm binary and the operator's identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.helm import find_helm


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The helm binary built by ``scripts/cluster.sh build`` (or ``$HELM``)."""
    helm = find_helm()
    if helm is None:
        pytest.skip("no helm: Go is not installed, so scripts/cluster.sh cannot build it")
    return helm
