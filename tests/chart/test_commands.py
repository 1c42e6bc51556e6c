"""Every command the chart, the Jobs, the RayService and the Dockerfile run exists in the package.

Commands are checked against ``[project.scripts]`` of pyproject.toml and then parsed by that
console script's own argparse parser, so a renamed subcommand or flag fails here rather than
in a crash-looping Pod. The serve config's ``import_path`` must name a module of the package
that defines the function (checked on its source, without importing Ray).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.dockerfile import parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
INSTALL = ROOT / "manifests" / "install" / "10-lorafleet.yaml"
EXAMPLES = ROOT / "examples"


def parser_of(script: str) -> Any:
    """The argparse parser behind a console script (``module:main`` -> ``build_parser()``)."""
    assert script in SCRIPTS, f"{script!r} is not a console script of the package: {SCRIPTS}"
    module = importlib.import_module(SCRIPTS[script].split(":")[0])
    assert hasattr(module, "build_parser"), f"{module.__name__} has no build_parser()"
    return module.build_parser()


def assert_runs(argv: Sequence[str]) -> Any:
    """Parse ``argv`` (program first) with the package's own parser; fail on any error."""
    parser = parser_of(argv[0])
    try:
        args = parser.parse_args(list(argv[1:]))
    except SystemExit as exc:  # argparse reports a bad command by exiting
        pytest.fail(f"{' '.join(argv)}: rejected by {argv[0]}'s parser (exit {exc.code})")
    assert getattr(args, "func", None) is not None or argv[0] != "lorafleet", (
        f"{' '.join(argv)} selects no subcommand"
    )
    return args


def container_argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def test_operator_deployment_command() -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    args = assert_runs(container_argv(container))
    assert args.func.__module__ == "lorafleet_operator.runtime"
    # Debug logging adds a flag: that must parse too.
    assert_runs([*container_argv(container), "--verbose"])


def test_operator_reads_every_setting_the_chart_sets() -> None:
    from lorafleet_operator import settings

    known = {getattr(settings, n) for n in dir(settings) if n.startswith("ENV_")}
    known.add("POD_ID")  # kopf's peering identity
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env - known == set(), f"the chart sets variables the operator never reads: {env - known}"
    # ... and the values it sets parse as the operator's settings.
    values = {
        e["name"]: e["value"]
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    parsed = settings.settings_from_env(values)
    assert parsed.run_as_user == 10001
    assert parsed.peering == "lorafleet"


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_install_and_cleanup_job_commands() -> None:
    from lorafleet_operator import jobs
    from lorafleet_operator.models import BaseModelSpec, LoraAdapterSpec
    from lorafleet_operator.settings import Settings

    settings = Settings()
    base = example("basemodel.yaml")
    base["metadata"]["uid"] = "0b6f0c8e-0000-4000-8000-000000000001"
    adapter = example("lora-adapter.yaml")
    adapter["metadata"]["uid"] = "0b6f0c8e-0000-4000-8000-000000000002"
    base_spec = BaseModelSpec.model_validate(base["spec"])
    adapter_spec = LoraAdapterSpec.model_validate(adapter["spec"])
    built = [
        jobs.build_base_install_job(base, base_spec, "lorafleet-models", settings),
        jobs.build_adapter_install_job(
            adapter,
            adapter_spec,
            claim_name="lorafleet-models",
            base_path="/models/ml/basemodels/minilm/abc123",
            base_source=base_spec.source.uri,
            max_rank=64,
            settings=settings,
        ),
        jobs.build_cleanup_job(
            "LoraAdapter",
            adapter,
            path="/models/ml/adapters/sentiment/abc123",
            claim_name="lorafleet-models",
            settings=settings,
        ),
    ]
    subcommands = []
    for job in built:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == settings.installer_image
        args = assert_runs(container_argv(container))
        subcommands.append(args.command)
    assert subcommands == ["base", "adapter", "remove"]


def test_serve_config_import_path_is_in_the_package() -> None:
    from lorafleet_operator import serveconfig

    module_name, _, function = serveconfig.IMPORT_PATH.partition(":")
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin, f"{module_name} is not a module of the package"
    tree = ast.parse(Path(spec.origin).read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert function in functions, f"{module_name} defines no {function}()"


def test_dockerfile_commands() -> None:
    stages = parse_dockerfile(ROOT / "Dockerfile")
    (cmd,) = stages[-1].all("CMD")
    args = assert_runs(cmd.exec_form() or [])
    assert args.func.__module__ == "lorafleet_operator.runtime"
    for inst in stages[0].all("RUN"):
        for word in inst.value.split():
            if word.startswith("/opt/lorafleet/bin/lorafleet"):
                parser_of(Path(word).name)  # a console script of the package
