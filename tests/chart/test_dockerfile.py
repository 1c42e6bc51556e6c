"""What can be checked of the Dockerfile without building it (scripts/image.sh builds it).

Its bases are build arguments pinned to a patch release; its dependency layer is keyed by the
dependency list alone; the project's code is the last, small layer; its commands exist in the
package; its final stage is slim and non-root; and its build context (after .dockerignore)
holds everything the package stage needs: the last is proved by building the wheel from a copy
of exactly that context, laid out as the stage's COPYs lay it out.
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

from tests.chart.dockerfile import (
    Stage,
    build_args,
    ignored,
    parse_dockerfile,
    read_dockerignore,
    run_commands,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
IGNORE = read_dockerignore(ROOT / ".dockerignore")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SCRIPTS = PROJECT["scripts"]
BUILD_TOOLS = {"gcc", "g++", "make", "cmake", "build-essential", "git", "python3-dev", "cargo"}
VENV_PYTHON = "/opt/lorafleet/bin/python"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE)


def stage(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def context_copies(st: Stage) -> list[list[str]]:
    """The COPY instructions of a stage that read the build context (no ``--from``)."""
    return [c.value.split() for c in st.all("COPY") if not c.value.startswith("--from=")]


def test_bases_are_build_args_pinned_to_one_python_patch_release(stages) -> None:
    args = build_args(DOCKERFILE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-bookworm", args["BUILDER_IMAGE"]), args
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", args["BASE_IMAGE"]), args
    # Same interpreter in both: the venv's python symlink must resolve in the final stage.
    assert args["BUILDER_IMAGE"].split("-")[0] == args["BASE_IMAGE"].split("-")[0]
    names = {s.name for s in stages}
    for st in stages:
        assert st.raw_base in {"${BUILDER_IMAGE}", "${BASE_IMAGE}"} | names, (
            f"stage {st.name} is FROM {st.raw_base!r}: neither a base argument nor a stage"
        )
    assert stages[-1].raw_base == "${BASE_IMAGE}" and stages[-1].name is None
    assert stage(stages, "deps").raw_base == "${BUILDER_IMAGE}"


def test_dependency_layer_is_keyed_by_the_dependency_list_alone(stages) -> None:
    """deps sees no context file: only requirements.txt, derived from pyproject.toml."""
    deps, reqs = stage(stages, "deps"), stage(stages, "requirements")
    assert context_copies(deps) == []
    assert [c.value for c in deps.all("COPY")] == [
        "--from=requirements /requirements.txt /opt/lorafleet/requirements.txt"
    ]
    assert context_copies(reqs) == [["pyproject.toml", "/src/pyproject.toml"]]
    (install_run,) = deps.all("RUN")  # one RUN: one layer holding the whole venv
    argvs = run_commands(deps)
    pip_install = [VENV_PYTHON, "-m", "pip", "install", "--progress-bar", "off"]
    assert [*pip_install, "-r", "/opt/lorafleet/requirements.txt"] in argvs, install_run.value
    assert ["python3", "-m", "venv", "/opt/lorafleet"] in argvs
    assert any(e.value.split("=")[0] == "PIP_NO_CACHE_DIR" for e in deps.all("ENV")), (
        "pip's cache must not be baked into the dependency layer"
    )


def requirements_of(pyproject: Path, stages: list[Stage], tmp: Path) -> list[str]:
    """Run the requirements stage's python on a pyproject.toml; the lines it writes."""
    (argv,) = [a for a in run_commands(stage(stages, "requirements")) if a[0] == "python3"]
    assert argv[1] == "-c"
    code = argv[2].replace("/src/pyproject.toml", str(pyproject))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp
    )
    return done.stdout.splitlines()


def test_requirements_are_the_dependency_list_without_the_dev_extra(tmp_path, stages) -> None:
    assert requirements_of(ROOT / "pyproject.toml", stages, tmp_path) == PROJECT["dependencies"]
    # A change elsewhere in pyproject.toml (version, dev extra, tool settings) writes the same
    # requirements.txt, so the dependency layer stays cached.
    text = (ROOT / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(
        text.replace('version = "0.1.0"', 'version = "9.9.9"').replace(
            '"pytest>=8,<10",', '"pytest>=8,<10", "example-extra>=1",'
        )
        + "\n[tool.example]\nx = 1\n"
    )
    assert changed.read_text() != text
    assert requirements_of(changed, stages, tmp_path) == PROJECT["dependencies"]


def test_code_is_the_small_last_layer_of_a_non_root_final_stage(stages) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users and users[-1].value.split(":")[0] == "10001"
    installed: set[str] = set()
    for argv in run_commands(final):
        if argv[:2] == ["apt-get", "install"]:
            installed |= {w for w in argv[2:] if not w.startswith("-")}
        assert argv[0] not in {"pip", "pip3"} and "pip" not in argv[1:3], (
            "no pip installs in the final stage"
        )
    assert installed <= {"wget"} and installed.isdisjoint(BUILD_TOOLS), installed
    # The last two layer-making instructions: the dependency venv, then the code.
    layers = [i for i in final.instructions if i.keyword in {"RUN", "COPY", "ADD"}]
    assert [i.value for i in layers[-2:]] == [
        "--from=deps /opt/lorafleet /opt/lorafleet",
        "--from=package /package/ /",
    ], layers
    assert context_copies(final) == [], "the final stage copies nothing from the context"
    assert any("/opt/lorafleet/bin" in env.value for env in final.all("ENV"))


def test_cmd_defaults_to_the_operator(stages) -> None:
    (cmd,) = stages[-1].all("CMD")
    argv = cmd.exec_form()
    assert argv == ["lorafleet", "operator"], argv
    assert argv[0] in SCRIPTS, f"{argv[0]} is not a console script of the package"
    assert not stages[-1].all("ENTRYPOINT"), "an ENTRYPOINT would break the Jobs' commands"


def test_package_stage_installs_the_code_alone_and_runs_its_commands(stages) -> None:
    package = stage(stages, "package")
    assert package.raw_base == "deps", "the package is built with the dependency venv"
    argvs = run_commands(package)
    venv_commands = [a for a in argvs if a[0].startswith("/opt/lorafleet/bin/")]
    names = {Path(a[0]).name for a in venv_commands}
    assert {"lorafleet", "lorafleet-install"} <= names
    for name in names - {"python", "pip"}:
        assert name in SCRIPTS, f"Dockerfile runs {name}, which the package does not install"
    pips = [a[3:] for a in venv_commands if a[1:3] == ["-m", "pip"]]
    assert ["wheel", "--no-deps", "--no-build-isolation", "-w", "/wheels", "/src"] in pips
    # Installed under /package (what the final stage copies), without dependencies.
    assert ["install", "--no-deps", "--root", "/package", "/wheels/lorafleet-*.whl"] in pips
    assert all("--no-deps" in p for p in pips if p[0] == "install"), pips


def test_copied_sources_exist_and_are_not_ignored(stages) -> None:
    for st in stages:
        for *sources, _dest in context_copies(st):
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
    image_root = tmp_path / "root"  # the package stage's filesystem, as far as COPY fills it
    for *sources, dest in context_copies(stage(stages, "package")):
        target = image_root / dest.lstrip("/")
        for source in sources:
            if (context / source).is_dir():
                shutil.copytree(context / source, target, dirs_exist_ok=True)
            else:
                assert dest.endswith("/"), f"COPY {source} {dest}: expected a folder"
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(context / source, target / Path(source).name)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(image_root / "src")],
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
