"""The plain manifests and the chart's CRDs stay in sync with their sources."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.chart.helm import CHART, ROOT

INSTALL = ROOT / "manifests" / "install"
GENERATED_CRDS = ROOT / "manifests" / "crds"


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in GENERATED_CRDS.glob("*.yaml"))
    assert generated, "manifests/crds/ is empty: run `lorafleet crds`"
    for name in generated:
        chart_copy = CHART / "crds" / name
        assert chart_copy.exists(), f"charts/lorafleet/crds/{name} missing: run render-manifests"
        assert chart_copy.read_text() == (GENERATED_CRDS / name).read_text(), (
            f"charts/lorafleet/crds/{name} differs from manifests/crds/{name}: "
            "run scripts/render-manifests.sh"
        )
    extra = {p.name for p in (CHART / "crds").glob("*.yaml")} - set(generated)
    assert extra == {"kopf-peering.yaml"}, f"unexpected CRD files in the chart: {extra}"


def test_peering_crds_match_the_resources_kopf_uses() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    names = {(d["spec"]["group"], d["spec"]["names"]["plural"], d["spec"]["scope"]) for d in docs}
    from kopf._cogs.structs import references  # kopf's own selectors of its peering resources

    assert names == {
        (
            references.CLUSTER_PEERINGS_K.group,
            references.CLUSTER_PEERINGS_K.any_name,
            "Cluster",
        ),
        (
            references.NAMESPACED_PEERINGS_K.group,
            references.NAMESPACED_PEERINGS_K.any_name,
            "Namespaced",
        ),
    }


def test_install_manifests_are_rendered_from_the_chart(helm_bin: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "render-manifests.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM": str(helm_bin)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in INSTALL.glob("*.yaml"))
    for name in fresh:
        assert (INSTALL / name).read_text() == (tmp_path / name).read_text(), (
            f"manifests/install/{name} is stale: run scripts/render-manifests.sh"
        )
    crds = [d for d in yaml.safe_load_all((INSTALL / "01-crds.yaml").read_text()) if d]
    assert {d["metadata"]["name"] for d in crds} >= {
        "basemodels.lorafleet.io",
        "loraadapters.lorafleet.io",
        "clusterkopfpeerings.kopf.dev",
    }
