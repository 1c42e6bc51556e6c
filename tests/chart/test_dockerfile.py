"""What can be checked of the Dockerfile without a Docker engine.

Its commands exist in the package, its final stage is slim and non-root, and its build
context (after .dockerignore) holds everything ``pip install .`` needs: the last is proved by
building the wheel from a copy of exactly that context.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.chart.dockerfile import ignored, parse_dockerfile, read_dockerignore, run_commands

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
IGNORE = read_dockerignore(ROOT / ".dockerignore")
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BUILD_TOOLS = {"gcc", "g++", "make", "cmake", "build-essential", "git", "python3-dev", "cargo"}


@pytest.fixture(scope="module")
def stages():
    return parse_dockerfile(DOCKERFILE)


def test_multi_stage_with_pinned_bases(stages) -> None:
    assert len(stages) >= 2, "Dockerfile must be multi-stage"
    for stage in stages:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-(slim-)?bookworm", stage.base), (
            f"base image {stage.base!r} is not pinned to a Python patch release"
        )
    final, builder = stages[-1], stages[0]
    assert final.base.endswith("-slim-bookworm")
    # Same interpreter version in both: the venv's python symlink must resolve in the final.
    assert final.base.split(":")[1].split("-")[0] == builder.base.split(":")[1].split("-")[0]


def test_final_stage_is_non_root_without_build_tools(stages) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users and users[-1].value.split(":")[0] == "10001"
    installed: set[str] = set()
    for argv in run_commands(final):
        if argv[:2] == ["apt-get", "install"]:
            installed |= {w for w in argv[2:] if not w.startswith("-")}
        assert argv[0] not in {"pip", "pip3"}, "no pip installs in the final stage"
    assert installed.isdisjoint(BUILD_TOOLS), f"build tools in the final stage: {installed}"
    copies = [c.value for c in final.all("COPY")]
    assert copies == [f"--from={stages[0].name} /opt/lorafleet /opt/lorafleet"], copies
    assert any("/opt/lorafleet/bin" in env.value for env in final.all("ENV"))


def test_cmd_defaults_to_the_operator(stages) -> None:
    (cmd,) = stages[-1].all("CMD")
    argv = cmd.exec_form()
    assert argv == ["lorafleet", "operator"], argv
    assert argv[0] in SCRIPTS, f"{argv[0]} is not a console script of the package"
    assert not stages[-1].all("ENTRYPOINT"), "an ENTRYPOINT would break the Jobs' commands"


def test_every_command_the_builder_runs_from_the_venv_is_in_the_package(stages) -> None:
    venv_commands = [
        argv for argv in run_commands(stages[0]) if argv[0].startswith("/opt/lorafleet/bin/")
    ]
    names = {Path(argv[0]).name for argv in venv_commands}
    assert {"lorafleet", "lorafleet-install"} <= names
    for name in names - {"python", "pip"}:
        assert name in SCRIPTS, f"Dockerfile runs {name}, which the package does not install"
    installs = [argv for argv in venv_commands if argv[1:4] == ["-m", "pip", "install"]]
    assert ["/opt/lorafleet/bin/python", "-m", "pip", "install", "."] in installs


def test_copied_sources_exist_and_are_not_ignored(stages) -> None:
    for copy in stages[0].all("COPY"):
        *sources, _dest = copy.value.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert not ignored(source.rstrip("/"), IGNORE), f"COPY {source} is .dockerignored"
    for must_skip in (".git", "tests", "charts", "benchmarks", "operator/x/__pycache__/a.pyc"):
        assert ignored(must_skip, IGNORE), f".dockerignore should exclude {must_skip}"


def build_context(dest: Path) -> None:
    """Copy the files docker would send as the build context (after .dockerignore)."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT)
        dirnames[:] = [d for d in dirnames if not ignored(str(rel_dir / d).lstrip("./"), IGNORE)]
        for name in filenames:
            rel = str(rel_dir / name).removeprefix("./")
            if not ignored(rel, IGNORE):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, dest / rel)


@pytest.mark.slow
def test_context_builds_a_wheel_with_both_console_scripts(tmp_path: Path, stages) -> None:
    context = tmp_path / "context"
    context.mkdir()
    build_context(context)
    src = context / "src"
    src.mkdir()
    for copy in stages[0].all("COPY"):  # lay the files out as the builder's COPYs do
        *sources, dest = copy.value.split()
        for source in sources:
            target = src / dest if dest.endswith("/") and dest != "./" else src
            if (context / source).is_dir():
                shutil.copytree(context / source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(context / source, target / Path(source).name)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("lorafleet-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = zf.read(entry_points).decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in text
    assert any(n.startswith("lorafleet_operator/") for n in names)
    assert any(n.startswith("lorafleet_serving/") for n in names)
