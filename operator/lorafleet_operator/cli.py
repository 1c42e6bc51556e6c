"""The ``lorafleet`` command line: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module that defines ``add_parser(subparsers)`` (registering
its ``argparse`` sub-parser and setting ``func``) so that ``lorafleet --help`` stays fast:
modules import their heavy dependencies (kopf, kubernetes, ray) inside ``func`` only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that register a subcommand, in the order ``--help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "lorafleet_operator.local.up",  # lorafleet up
    "lorafleet_operator.local.status",  # lorafleet status
    "lorafleet_operator.runtime",  # lorafleet operator
    "lorafleet_operator.crdgen",  # lorafleet crds
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="lorafleet",
        description=(
            "Install model weights and LoRA adapters and serve many adapters over one base "
            "model: on Kubernetes (the operator) or on this machine (local mode)."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part not built yet must not break the others
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lorafleet`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
