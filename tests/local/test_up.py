"""``lorafleet up`` / ``lorafleet status`` end to end: real installer, real Ray Serve, tiny models.

One ``lorafleet up`` process follows a manifest folder (a tiny BERT classifier base and two
adapters with their own heads) and deploys to the session's Ray cluster (``ray_cluster``
fixture, reached with ``--ray-dashboard`` so Ray starts once per session). The tests then drive
it only through the folder and HTTP, as a user would: both adapters answer with their own label
sets; a third manifest becomes servable without restarting the Model replica (same pid); a
removed manifest answers 404; a second ``up`` on the same home reuses the installs (no installer
run) and is serving in under 30 s. A manifest with a bad field fails before anything is
installed, naming the file and the field.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from lorafleet_operator.cli import main as lorafleet_main
from lorafleet_operator.local.serve_rest import ServeREST, replica_pids
from lorafleet_operator.local.status import load_state

from tests.support.models import make_variant_adapter

LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
SENTIMENT = {"0": "negative", "1": "positive"}
TOPIC = {"0": "sport", "1": "politics", "2": "science", "3": "business"}
APP = "tinybert"


def _base(source: Path | str) -> dict:
    uri = source if isinstance(source, str) else f"file://{source}"
    return {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "BaseModel",
        "metadata": {"name": APP},
        "spec": {
            "source": {"uri": uri},
            "task": "text-classification",
            "id2label": SENTIMENT,
            "serving": {"maxAdaptersPerReplica": 4, "maxBatchSize": 8},
        },
    }


def _adapter(name: str, source: Path, labels: dict | None = None) -> dict:
    spec: dict = {"baseModel": APP, "source": {"uri": f"file://{source}"}}
    if labels:
        spec["labels"] = labels
    return {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": name},
        "spec": spec,
    }


def _write(path: Path, *docs: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: the watcher ignores it
    tmp.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    os.replace(tmp, path)


class UpProcess:
    """A ``lorafleet up`` subprocess with its output in a log file."""

    def __init__(
        self, directory: Path, home: Path, dashboard: str, log: Path, env: dict | None = None
    ) -> None:
        self.log = log
        self.started = time.monotonic()
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                LORAFLEET,
                "up",
                "-f",
                str(directory),
                "--home",
                str(home),
                "--ray-dashboard",
                dashboard,
                "--timeout",
                "300",
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"lorafleet up exited ({self.proc.returncode}):\n{self.text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in lorafleet up's output:\n{self.text()}")
            time.sleep(0.3)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        return self.proc.returncode


def _classify(url: str, model: str, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", json={"model": model, "input": texts}, timeout=60)


def _poll_status(url: str, model: str, wanted: int, timeout: float = 120.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = _classify(url, model, ["a quick check"])
        if resp.status_code == wanted or time.monotonic() > deadline:
            return resp
        time.sleep(0.5)


@pytest.mark.timeout(60)
def test_bad_field_names_file_and_field_and_installs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    weights = tmp_path / "weights"
    weights.mkdir()
    _write(folder / "base.yaml", _base(weights))
    bad = _adapter("broken", weights)
    bad["spec"]["source"]["uri"] = "ftp://example.invalid/adapter"  # scheme not allowed
    _write(folder / "adapters.yaml", _adapter("good", weights), bad)
    home = tmp_path / "home"

    code = lorafleet_main(["up", "-f", str(folder), "--home", str(home)])

    out = capsys.readouterr().out
    assert code == 2
    assert str(folder / "adapters.yaml") in out
    assert "LoraAdapter/broken" in out
    assert "spec.source.uri" in out
    assert "nothing was installed" in out
    assert not home.exists()  # no install, no state, no Ray


@pytest.mark.timeout(60)
def test_adapter_of_unknown_base_is_rejected_with_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    orphan = _adapter("orphan", tmp_path)
    orphan["spec"]["baseModel"] = "missing"
    _write(folder / "orphan.yml", orphan)

    code = lorafleet_main(["up", "-f", str(folder), "--home", str(tmp_path / "home")])

    out = capsys.readouterr().out
    assert code == 2
    assert "orphan.yml" in out and "spec.baseModel" in out and "'missing'" in out
    assert not (tmp_path / "home").exists()


@pytest.mark.integration
class TestUp:
    """One ``up`` process for the whole class (tests run in order)."""

    @pytest.fixture(scope="class")
    @classmethod
    def fleet(
        cls,
        tmp_path_factory: pytest.TempPathFactory,
        ray_cluster,
        olah_hub,
        tiny_classifier: Path,
        tiny_cls_adapters: dict,
    ) -> Iterator[dict]:
        root = tmp_path_factory.mktemp("local-up")
        folder = root / "manifests"
        folder.mkdir()
        # The base comes from a Hub (the offline olah mirror, via HF_ENDPOINT), the adapters
        # from local folders (file://).
        commit = olah_hub.create_repo("lorafleet-local/tiny-bert", tiny_classifier)
        _write(folder / "base.yaml", _base("hf://lorafleet-local/tiny-bert"))
        _write(
            folder / "adapters.yaml",
            _adapter("sentiment", tiny_cls_adapters["sentiment"], SENTIMENT),
            _adapter("topic", tiny_cls_adapters["topic"], TOPIC),
        )
        home = root / "home"
        # The session's Ray requires its token; up finds it as Ray's clients do.
        env = {"HF_ENDPOINT": olah_hub.endpoint, "RAY_AUTH_TOKEN_PATH": str(ray_cluster.token_file)}
        up = UpProcess(folder, home, ray_cluster.dashboard_url, root / "up-1.log", env)
        info = {
            "commit": commit,
            "up": up,
            "folder": folder,
            "home": home,
            "root": root,
            "cluster": ray_cluster,
            "url": f"{ray_cluster.http_url}/{APP}",
            "adapters": tiny_cls_adapters,
        }
        try:
            up.wait_for("following")
            time.sleep(1.0)  # let the watcher start
            yield info
        finally:
            info["up"].stop()

    def _model_pids(self, fleet: dict) -> list[int]:
        rest = ServeREST(fleet["cluster"].dashboard_url, token=fleet["cluster"].token)
        try:
            return replica_pids(rest.details()).get(f"{APP}/Model", [])
        finally:
            rest.close()

    def test_serves_base_and_both_adapters(self, fleet: dict) -> None:
        url = fleet["url"]
        for model, labels in (("sentiment", SENTIMENT), ("topic", TOPIC), (APP, SENTIMENT)):
            resp = _classify(url, model, ["a fine day", "a bad day"])
            assert resp.status_code == 200, resp.text
            rows = resp.json()["data"]
            assert len(rows) == 2
            for row in rows:
                assert set(row["scores"]) == set(labels.values())
                assert row["label"] in labels.values()
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        assert {m["id"] for m in models} == {APP, "sentiment", "topic"}
        state = load_state(fleet["home"])
        assert state is not None
        phases = {k: r["phase"] for k, r in state["objects"].items()}
        assert phases == {
            f"BaseModel/default/{APP}": "Ready",
            "LoraAdapter/default/sentiment": "Ready",
            "LoraAdapter/default/topic": "Ready",
        }
        base = state["objects"][f"BaseModel/default/{APP}"]
        assert base["sizeBytes"] > 0
        assert base["resolvedRevision"] == fleet["commit"]  # the Hub commit of main
        assert Path(base["path"], "lorafleet.json").is_file()
        assert "bytes" in fleet["up"].text()  # installer progress was shown

    def test_status_prints_a_table(self, fleet: dict, capsys: pytest.CaptureFixture) -> None:
        code = lorafleet_main(["status", "--home", str(fleet["home"])])
        out = capsys.readouterr().out
        assert code == 0
        assert "basemodels.lorafleet.io" in out and "loraadapters.lorafleet.io" in out
        for word in (APP, "sentiment", "topic", "Ready", "text-classification"):
            assert word in out
        assert "REPLICAS" in out and "RESIDENT" in out
        # Both adapters were used on the one replica: the app's residency report says so, as
        # status.serving does on a cluster (reports are asynchronous: a few seconds at most).
        deadline = time.monotonic() + 60
        while True:
            assert lorafleet_main(["status", "--home", str(fleet["home"]), "-o", "json"]) == 0
            objects = json.loads(capsys.readouterr().out)["objects"]
            resident = {
                name: (objects[f"LoraAdapter/default/{name}"].get("serving") or {}).get("resident")
                for name in ("sentiment", "topic")
            }
            if resident == {"sentiment": "1/1", "topic": "1/1"}:
                break
            assert time.monotonic() < deadline, resident
            time.sleep(1.0)
        assert objects[f"BaseModel/default/{APP}"]["serving"]["replicas"] == "1"

    def test_added_manifest_is_served_in_place(self, fleet: dict) -> None:
        pids_before = self._model_pids(fleet)
        assert pids_before
        assert _classify(fleet["url"], "plain", ["x"]).status_code == 404
        _write(fleet["folder"] / "plain.yaml", _adapter("plain", fleet["adapters"]["plain"]))

        resp = _poll_status(fleet["url"], "plain", 200)

        assert resp.status_code == 200, resp.text
        assert set(resp.json()["data"][0]["scores"]) == set(SENTIMENT.values())
        assert self._model_pids(fleet) == pids_before  # reconfigured, not restarted
        assert _classify(fleet["url"], "sentiment", ["still here"]).status_code == 200

    def test_removed_manifest_answers_404(self, fleet: dict) -> None:
        _write(
            fleet["folder"] / "adapters.yaml",
            _adapter("sentiment", fleet["adapters"]["sentiment"], SENTIMENT),
        )  # topic removed from the multi-document file

        resp = _poll_status(fleet["url"], "topic", 404)

        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "model_not_found"
        assert _classify(fleet["url"], "sentiment", ["still here"]).status_code == 200
        deadline = time.monotonic() + 60
        while "LoraAdapter/default/topic" in load_state(fleet["home"])["objects"]:
            assert time.monotonic() < deadline, "topic still in state.json"
            time.sleep(0.3)

    def test_invalid_change_keeps_serving(self, fleet: dict) -> None:
        bad = _adapter("bad", fleet["adapters"]["plain"])
        bad["spec"]["rank"] = 8  # not a LoraAdapter field
        _write(fleet["folder"] / "bad.yaml", bad)
        fleet["up"].wait_for("spec.rank", timeout=60)
        (fleet["folder"] / "bad.yaml").unlink()
        assert _classify(fleet["url"], "plain", ["x"]).status_code == 200

    def test_install_failure_is_reported_and_others_keep_serving(
        self, fleet: dict, tiny_lora_adapters: dict, capsys: pytest.CaptureFixture
    ) -> None:
        # A causal-LM adapter (targets q_proj/v_proj) over the BERT base: the installer refuses.
        _write(fleet["folder"] / "wrong.yaml", _adapter("wrong", tiny_lora_adapters["alpha"]))
        key = "LoraAdapter/default/wrong"
        deadline = time.monotonic() + 120
        while (load_state(fleet["home"])["objects"].get(key) or {}).get("phase") != "Failed":
            assert time.monotonic() < deadline, fleet["up"].text()
            time.sleep(0.3)
        record = load_state(fleet["home"])["objects"][key]
        assert record["reason"] == "TargetModulesNotFound", record
        assert "q_proj" in record["message"]
        assert _classify(fleet["url"], "wrong", ["x"]).status_code == 404
        assert _classify(fleet["url"], "plain", ["x"]).status_code == 200
        assert lorafleet_main(["status", "--home", str(fleet["home"])]) == 0
        out = capsys.readouterr().out
        assert "Failed" in out and "TargetModulesNotFound" in out
        (fleet["folder"] / "wrong.yaml").unlink()
        while key in load_state(fleet["home"])["objects"]:
            assert time.monotonic() < deadline + 60, fleet["up"].text()
            time.sleep(0.3)

    def test_an_adapter_the_engine_cannot_serve_fails_at_install_never_ready(
        self, fleet: dict, tiny_classifier: Path, tmp_path: Path
    ) -> None:
        """Trained base biases (bias='all') would be written into the shared base: refused by
        the installer with UnsupportedAdapter (the engine's own check), never Ready."""
        adapter = make_variant_adapter(
            tiny_classifier, tmp_path / "biases", "SEQ_CLS", 7, target_modules=["query"],
            bias="all",
        )  # fmt: skip
        _write(fleet["folder"] / "biases.yaml", _adapter("biases", adapter))
        key = "LoraAdapter/default/biases"
        phases = set()
        deadline = time.monotonic() + 120
        while (record := load_state(fleet["home"])["objects"].get(key) or {}).get(
            "phase"
        ) != "Failed":
            phases.add(record.get("phase"))
            assert time.monotonic() < deadline, fleet["up"].text()
            time.sleep(0.2)
        assert "Ready" not in phases
        assert record["reason"] == "UnsupportedAdapter", record
        assert "bias='all' (trained base-model biases) is not served" in record["message"]
        assert _classify(fleet["url"], "biases", ["x"]).status_code == 404
        assert _classify(fleet["url"], "plain", ["x"]).status_code == 200
        (fleet["folder"] / "biases.yaml").unlink()
        while key in load_state(fleet["home"])["objects"]:
            assert time.monotonic() < deadline + 60, fleet["up"].text()
            time.sleep(0.3)

    def test_second_up_reuses_installs(self, fleet: dict) -> None:
        first: UpProcess = fleet["up"]
        assert first.stop() == 0
        rest = ServeREST(fleet["cluster"].dashboard_url, token=fleet["cluster"].token)
        try:
            assert APP not in (rest.details().get("applications") or {})  # undeployed
        finally:
            rest.close()
        state = load_state(fleet["home"])
        assert state["pid"] is None
        assert {r["phase"] for r in state["objects"].values()} == {"Installed"}
        logs = sorted((fleet["home"] / "logs").glob("*.log"))
        mtimes = {p: p.stat().st_mtime_ns for p in logs}

        second = UpProcess(
            fleet["folder"],
            fleet["home"],
            fleet["cluster"].dashboard_url,
            fleet["root"] / "up-2.log",
            {
                "HF_ENDPOINT": "http://127.0.0.1:9",  # no Hub: reusing must not need one
                "RAY_AUTH_TOKEN_PATH": str(fleet["cluster"].token_file),
            },
        )
        fleet["up"] = second
        second.wait_for("following", timeout=120)
        elapsed = time.monotonic() - second.started

        text = second.text()
        assert text.count("reusing install") == 3, text  # base, sentiment, plain
        assert "installing from" not in text
        assert {p: p.stat().st_mtime_ns for p in logs} == mtimes  # the installer never ran
        assert elapsed < 30, f"second up took {elapsed:.1f} s to serve"
        assert _classify(fleet["url"], "plain", ["x"]).status_code == 200
        assert json.loads((fleet["home"] / "state.json").read_text())["pid"] == second.proc.pid
