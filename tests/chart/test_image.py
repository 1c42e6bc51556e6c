"""The image built for real: ``scripts/image.sh build`` (buildah, on the local Debian base).

A copy of exactly what the build reads (Dockerfile, .dockerignore, the context, the script)
is built, so concurrent edits to the checkout cannot change the key between the two builds.
The first build takes minutes on a cold cache (pip downloads torch); the second must be a
no-op. The archive is then read the way ``ctr images import`` reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.image,
    pytest.mark.slow,
    pytest.mark.timeout(5400),
]

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = (
    "Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "operator", "serving",
    "scripts/image.sh",
)  # fmt: skip
MB = 1024 * 1024


def build(tree: Path) -> tuple[dict[str, str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(tree / "scripts" / "image.sh"), "build"],
        capture_output=True, text=True, timeout=5000, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert {"IMAGE", "ARCHIVE", "KEY"} <= values.keys(), done.stdout
    return values, elapsed


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("scripts/image.sh builds with buildah as root")
    dest = tmp_path_factory.mktemp("image-context")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for rel in SNAPSHOT:
        src, target = ROOT / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=ignore)
        else:
            shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def built(tree: Path) -> dict[str, str]:
    first, _ = build(tree)
    second, elapsed = build(tree)
    assert second == first, "an unchanged tree must give the same image, archive and key"
    assert elapsed < 5, f"the second build of an unchanged tree took {elapsed:.1f} s"
    return first


def test_key_names_the_image_and_the_archive(built: dict[str, str]) -> None:
    key = built["KEY"]
    assert built["IMAGE"] == f"localhost/lorafleet/lorafleet:{key}"
    archive = Path(built["ARCHIVE"])
    assert archive.name == f"lorafleet-{key}.tar"
    assert archive.is_file() and Path(f"{archive}.complete").is_file()


def test_archive_is_a_docker_archive_of_a_non_root_image(built: dict[str, str]) -> None:
    with tarfile.open(built["ARCHIVE"]) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        assert manifest["RepoTags"] == [built["IMAGE"]]  # the name ctr import gives it
        config = json.load(tar.extractfile(manifest["Config"]))
        assert config["os"] == "linux"
        cfg = config["config"]
        assert cfg["User"] == "10001:10001"
        assert cfg["Cmd"] == ["lorafleet", "operator"]
        assert not cfg.get("Entrypoint")
        assert cfg["WorkingDir"] == "/home/lorafleet"
        assert any(e.startswith("PATH=/opt/lorafleet/bin:") for e in cfg["Env"])
        # One diff_id per layer, in the same order as the layer files.
        assert len(config["rootfs"]["diff_ids"]) == len(manifest["Layers"])


def test_code_is_a_small_last_layer_over_the_big_dependency_layer(
    built: dict[str, str],
) -> None:
    with tarfile.open(built["ARCHIVE"]) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        layers = [tar.getmember(name) for name in manifest["Layers"]]
        sizes = [m.size for m in layers]
        *_, deps, code = layers
        assert code.size < 5 * MB, f"code layer {code.size / MB:.1f} MB (layers: {sizes})"
        assert deps.size > 1000 * MB, f"dependency layer {deps.size / MB:.0f} MB"
        assert max(sizes) == deps.size
        with tarfile.open(fileobj=tar.extractfile(code)) as layer:
            code_files = [m.name.lstrip("./") for m in layer if m.isfile()]
        with tarfile.open(fileobj=tar.extractfile(deps)) as layer:
            dep_files = [m.name.lstrip("./") for m in layer if m.isfile()]
    site = "opt/lorafleet/lib/python3.11/site-packages"
    assert f"{site}/lorafleet_operator/__init__.py" in code_files
    assert f"{site}/lorafleet_serving/__init__.py" in code_files
    assert {"opt/lorafleet/bin/lorafleet", "opt/lorafleet/bin/lorafleet-install"} <= set(code_files)
    # Compiled at build time: a read-only root filesystem needs no .pyc writes at run time.
    assert any(f.startswith(f"{site}/lorafleet_serving/__pycache__/") for f in code_files)
    assert not any("lorafleet_" in f for f in dep_files), "code leaked into the dependency layer"
    assert f"{site}/torch/__init__.py" in dep_files
    assert "opt/lorafleet/requirements.txt" in dep_files
