"""Unit tests of the serve configs local mode builds (no Ray: the REST client is never called)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet_operator.local.fleet import Fleet, Reporter
from lorafleet_operator.local.manifests import load_manifests
from lorafleet_operator.local.serve_rest import ServeREST
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.serveconfig import build_serve_config

MANIFESTS = """\
apiVersion: lorafleet.io/v1alpha1
kind: BaseModel
metadata: {name: minilm}
spec:
  source: {uri: "file://w"}
  task: text-classification
  id2label: {"0": neg, "1": pos}
  serving: {gpus: 1, maxAdaptersPerReplica: 3}
---
apiVersion: lorafleet.io/v1alpha1
kind: BaseModel
metadata: {name: llama}
spec:
  source: {uri: "file://w"}
  serving: {cpu: 1500m, replicas: 2}
---
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: topic}
spec:
  baseModel: minilm
  servedName: topic-v2
  source: {uri: "file://w"}
  labels: {"0": a, "1": b, "2": c}
---
apiVersion: lorafleet.io/v1alpha1
kind: LoraAdapter
metadata: {name: poet}
spec:
  baseModel: llama
  source: {uri: "file://w"}
"""


def _fleet(tmp_path: Path, shared: bool = False) -> Fleet:
    (tmp_path / "w").mkdir(exist_ok=True)
    (tmp_path / "all.yaml").write_text(MANIFESTS)
    objects, _ = load_manifests(tmp_path)
    fleet = Fleet(
        tmp_path / "home",
        ServeREST("http://127.0.0.1:9"),
        8123,
        Reporter(lambda _: None, lambda _: None),
        shared_cluster=shared,
    )
    fleet.objects = {o.key: o for o in objects}
    return fleet


RECORDS = {
    "BaseModel/default/minilm": {"path": "/m/minilm/r1"},
    "BaseModel/default/llama": {"path": "/m/llama/r1"},
    "LoraAdapter/default/topic": {"path": "/m/topic/r1", "rank": 8, "labels": {"0": "x"}},
    "LoraAdapter/default/poet": {"path": "/m/poet/r1", "rank": 4},
}


def test_two_bases_get_their_own_route_prefix_and_no_gpus(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)

    apps = {a["name"]: a for a in fleet.build_configs(RECORDS)}

    assert set(apps) == {"minilm", "llama"}
    assert apps["minilm"]["route_prefix"] == "/minilm"
    assert apps["llama"]["route_prefix"] == "/llama"
    assert fleet.endpoint("llama") == "http://127.0.0.1:8123/llama"
    minilm_model = apps["minilm"]["deployments"][1]
    assert minilm_model["ray_actor_options"] == {"num_cpus": 0.5}  # spec asked for 1 GPU
    assert minilm_model["user_config"] == {
        "max_adapters": 3,
        "adapters": {
            # the manifest's labels win over the install report's
            "topic-v2": {"path": "/m/topic/r1", "rank": 8, "labels": {"0": "a", "1": "b", "2": "c"}}
        },
    }
    assert apps["minilm"]["args"]["labels"] == {"0": "neg", "1": "pos"}
    llama_model = apps["llama"]["deployments"][1]
    assert llama_model["ray_actor_options"] == {"num_cpus": 1.5}
    assert llama_model["num_replicas"] == 2
    assert llama_model["user_config"]["adapters"] == {"poet": {"path": "/m/poet/r1", "rank": 4}}
    assert "labels" not in apps["llama"]["args"]


@pytest.mark.parametrize("shared", [False, True])
def test_local_apps_answer_only_loopback_host_names(tmp_path: Path, shared: bool) -> None:
    # DNS rebinding: a web page's requests to 127.0.0.1 carry the page's own host name.
    for app in _fleet(tmp_path, shared).build_configs(RECORDS):
        assert app["args"]["allowed_hosts"] == ["localhost", "127.0.0.1", "[::1]"]
    # The cluster path (the operator's serveConfigV2) does not restrict hosts.
    spec = BaseModelSpec.model_validate(
        {"source": {"uri": "hf://org/m"}, "task": "text-classification"}
    )
    cluster = build_serve_config("m", "/models/m", spec, {})["applications"][0]
    assert "allowed_hosts" not in cluster["args"]


@pytest.mark.parametrize(("shared", "route"), [(False, "/"), (True, "/minilm")])
def test_a_single_base_is_served_at_the_root_of_its_own_cluster(
    tmp_path: Path, shared: bool, route: str
) -> None:
    fleet = _fleet(tmp_path, shared)
    records = {k: v for k, v in RECORDS.items() if "llama" not in k and "poet" not in k}

    (app,) = fleet.build_configs(records)

    assert app["route_prefix"] == route


def test_an_adapter_without_an_installed_base_is_left_out(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    records = {k: v for k, v in RECORDS.items() if k != "BaseModel/default/llama"}

    apps = fleet.build_configs(records)

    assert [a["name"] for a in apps] == ["minilm"]
    assert "poet" not in str(apps)


def test_application_names_stay_distinct_across_namespaces(tmp_path: Path) -> None:
    """``a/x``, ``default/a-x`` and ``default/x``: ``<ns>-<name>`` alone would name two
    applications ``a-x`` (Serve refuses the whole config)."""
    base = "apiVersion: lorafleet.io/v1alpha1\nkind: BaseModel\nmetadata: {{name: {n}, namespace: {ns}}}\nspec: {{source: {{uri: 'file://w'}}}}\n"
    (tmp_path / "w").mkdir()
    docs = [
        base.format(n="x", ns="a"),
        base.format(n="a-x", ns="default"),
        base.format(n="x", ns="default"),
    ]
    (tmp_path / "all.yaml").write_text("---\n".join(docs))
    objects, _ = load_manifests(tmp_path)
    fleet = Fleet(
        tmp_path / "home",
        ServeREST("http://127.0.0.1:9"),
        8123,
        Reporter(lambda _: None, lambda _: None),
    )
    fleet.objects = {o.key: o for o in objects}
    records = {o.key: {"path": f"/m/{o.namespace}/{o.name}/r1"} for o in objects}
    apps = fleet.build_configs(records)
    names = [a["name"] for a in apps]
    assert len(names) == len(set(names)) == 3, names
    assert len({a["route_prefix"] for a in apps}) == 3


def test_readme_says_where_several_bases_are_served() -> None:
    # A new user ran the README's `curl localhost:PORT/health` against the demo (two bases) and
    # got Ray Serve's plain-text 404: the README must say that each base is under its prefix.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    api = readme.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    assert "/<basemodel name>" in api and "/minilm/v1/classify" in api


def test_one_up_per_home_folder(tmp_path: Path) -> None:
    """A second `lorafleet up` on the same --home is refused, naming the holder's pid; the
    lock goes with its holder."""
    import os
    import subprocess
    import sys

    from lorafleet_operator.local.state import HomeInUse, HomeLock

    lock = HomeLock(tmp_path)
    holder = (
        "import sys, time; from pathlib import Path; "
        "from lorafleet_operator.local.state import HomeLock, HomeInUse\n"
        "try:\n    HomeLock(Path(sys.argv[1]))\nexcept HomeInUse as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", holder, str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    lock.release()
    again = subprocess.run([sys.executable, "-c", holder, str(tmp_path)], env=os.environ)
    assert again.returncode == 0  # the lock went with its holder
    first = HomeLock(tmp_path)
    with pytest.raises(HomeInUse):
        HomeLock(tmp_path)
    first.release()
