"""``lorafleet status``: what local mode installed and serves, like ``kubectl get bm,lora``.

Reads ``HOME/state.json`` (written by ``lorafleet up``) and prints one table per kind:
BaseModels (NAME, TASK, PHASE, REASON, REVISION, SIZE, ADAPTERS, REPLICAS, AGE) and LoraAdapters
(NAME, BASE, RANK, PHASE, REASON, REVISION, SIZE, RESIDENT, AGE). REPLICAS and RESIDENT are
asked of the running Serve applications, as the operator asks them for ``status.serving`` on
a cluster (:func:`live_serving`). ``--wait SECONDS`` waits until every object
is Ready (exit 0) or one Failed (exit 1) -- handy in scripts that run ``up`` in the background.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from lorafleet_operator.local.state import STATE_FILE
from lorafleet_operator.serveprobe import ServeAnswer, probe_serve
from lorafleet_operator.serving_status import adapter_serving, base_serving


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register the ``status`` subcommand.

    Args:
        subparsers: The ``argparse`` sub-parsers object of the ``lorafleet`` command.

    Returns:
        The ``status`` parser (``func`` set to :func:`run`).
    """
    parser = subparsers.add_parser(
        "status",
        help="show the local BaseModels and LoraAdapters (phase, reason, revision, size)",
        description=(
            "Print what `lorafleet up` installed and serves from HOME/state.json, like "
            "`kubectl get bm,lora`: phase (Pending, Installing, Installed, Deploying, Ready, "
            "Failed), reason, resolved revision, size, and the endpoint."
        ),
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(".lorafleet"),
        help="the folder given to `lorafleet up --home` (default ./.lorafleet)",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table (default) or the raw state as JSON",
    )
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        default=None,
        help=(
            "wait until every object is Ready (exit 0), one is Failed (exit 1) or SECONDS "
            "pass (exit 3), then print"
        ),
    )
    parser.set_defaults(func=run)
    return parser


def load_state(home: Path) -> dict[str, Any] | None:
    """Read ``HOME/state.json``.

    Args:
        home: The local-mode home folder.

    Returns:
        The state dict, or ``None`` when the file does not exist or cannot be parsed.
    """
    try:
        data = json.loads((Path(home) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _running(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def summary(state: dict[str, Any]) -> str:
    """Classify a state: ``ready``, ``failed``, ``progressing`` or ``empty``.

    Args:
        state: A :func:`load_state` result.

    Returns:
        ``failed`` if any object is Failed, ``ready`` if all are Ready, ``empty`` without
        objects, else ``progressing``.
    """
    phases = [r.get("phase") for r in (state.get("objects") or {}).values()]
    if not phases:
        return "empty"
    if "Failed" in phases:
        return "failed"
    if all(p == "Ready" for p in phases):
        return "ready"
    return "progressing"


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return ""
    size = float(value)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if size < 1024 or unit == "Ti":
            return f"{int(size)}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(value)


def _age(record: dict[str, Any]) -> str:
    updated = record.get("updatedAt")
    if not isinstance(updated, (int, float)):
        return ""
    seconds = max(0, int(time.time() - updated))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _revision(record: dict[str, Any]) -> str:
    rev = str(record.get("resolvedRevision") or "")
    return rev[:12] if len(rev) > 16 else rev


def live_serving(state: dict[str, Any], timeout_s: float = 3.0) -> dict[str, dict[str, Any]]:
    """``status.serving`` of each Ready object, asked of the running Serve apps as the operator
    asks them on a cluster (``GET <endpoint>/stats``; :mod:`lorafleet_operator.serving_status`).

    Args:
        state: A :func:`load_state` result.
        timeout_s: Seconds for each app's answer.

    Returns:
        Object key -> its ``serving`` object; empty when ``lorafleet up`` is not running, and
        nothing for an app that does not answer.
    """
    if not _running(state):
        return {}
    objects = state.get("objects")
    if not isinstance(objects, dict):
        return {}
    records = {k: r for k, r in objects.items() if isinstance(r, dict) and k.count("/") == 2}
    out: dict[str, dict[str, Any]] = {}
    for key, record in records.items():
        endpoint = record.get("endpoint")
        if not key.startswith("BaseModel/") or record.get("phase") != "Ready":
            continue
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            continue
        answer = asyncio.run(_ask(endpoint, timeout_s))
        base = base_serving(answer, None)
        if base is None:
            continue
        out[key] = base
        _, namespace, name = key.split("/", 2)
        for akey, adapter in records.items():
            if not akey.startswith(f"LoraAdapter/{namespace}/") or adapter.get("baseModel") != name:
                continue
            served = adapter_serving(answer, str(adapter.get("servedName") or akey.split("/")[-1]))
            if served is not None and adapter.get("phase") == "Ready":
                out[akey] = served
    return out


async def _ask(endpoint: str, timeout_s: float) -> ServeAnswer:
    """The app's answer within ``timeout_s`` seconds in all (a server trickling bytes cannot
    hold ``lorafleet status``)."""
    try:
        return await asyncio.wait_for(
            probe_serve(endpoint, timeout_s=timeout_s, attempts=1), timeout_s
        )
    except TimeoutError:
        return ServeAnswer(ok=False, error=f"no answer within {timeout_s:g} s")


def render(
    state: dict[str, Any], console: Any, serving: dict[str, dict[str, Any]] | None = None
) -> None:
    """Print the BaseModel and LoraAdapter tables of a state.

    Args:
        state: A :func:`load_state` result.
        console: A ``rich.console.Console``.
        serving: :func:`live_serving` (REPLICAS and RESIDENT columns; ``-`` when unknown).
    """
    from rich.table import Table

    serving = serving or {}

    def live(key: str, field: str) -> str:
        return str((serving.get(key) or {}).get(field) or "-")

    objects = state.get("objects") or {}
    bases = {k: r for k, r in objects.items() if k.startswith("BaseModel/")}
    adapters = {k: r for k, r in objects.items() if k.startswith("LoraAdapter/")}
    up = f"running (pid {state.get('pid')})" if _running(state) else "not running"
    console.print(f"lorafleet up: {up}; endpoint: {state.get('endpoint') or '-'}")

    def phase(record: dict[str, Any]) -> str:
        value = record.get("phase", "")
        colour = {"Ready": "green", "Failed": "red"}.get(value, "yellow")
        return f"[{colour}]{value}[/]"

    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ("NAME", "TASK", "PHASE", "REASON", "REVISION", "SIZE", "ADAPTERS", "REPLICAS", "AGE")
    for col in columns:
        table.add_column(col, no_wrap=True)
    for key in sorted(bases):
        r = bases[key]
        ns, name = key.split("/", 2)[1:]
        n_adapters = sum(
            1
            for ak, a in adapters.items()
            if ak.split("/")[1] == ns and a.get("baseModel") == name and a.get("phase") == "Ready"
        )
        table.add_row(
            _name(ns, name),
            str(r.get("task") or ""),
            phase(r),
            str(r.get("reason") or ""),
            _revision(r),
            _size(r.get("sizeBytes")),
            str(n_adapters),
            live(key, "replicas"),
            _age(r),
        )
    console.print("[bold]basemodels.lorafleet.io[/]")
    console.print(table if bases else "  (none)")

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAME", "BASE", "RANK", "PHASE", "REASON", "REVISION", "SIZE", "RESIDENT", "AGE"):
        table.add_column(col, no_wrap=True)
    for key in sorted(adapters):
        r = adapters[key]
        ns, name = key.split("/", 2)[1:]
        table.add_row(
            _name(ns, name),
            str(r.get("baseModel") or ""),
            str(r.get("rank") or ""),
            phase(r),
            str(r.get("reason") or ""),
            _revision(r),
            _size(r.get("sizeBytes")),
            live(key, "resident"),
            _age(r),
        )
    console.print("[bold]loraadapters.lorafleet.io[/]")
    console.print(table if adapters else "  (none)")
    problems = [
        (k, r)
        for k, r in objects.items()
        if r.get("phase") in ("Failed", "Pending") and r.get("message")
    ]
    for key, r in problems:
        console.print(f"[red]{key}[/]: {r.get('reason')}: {r.get('message')}", markup=True)


def _name(namespace: str, name: str) -> str:
    return name if namespace == "default" else f"{namespace}/{name}"


def run(args: argparse.Namespace) -> int:
    """Run ``lorafleet status``.

    Args:
        args: Parsed arguments of the ``status`` parser.

    Returns:
        0; with ``--wait``: 0 when all Ready, 1 when one Failed, 3 on timeout or when
        ``lorafleet up`` is not running; 3 when there is no state file.
    """
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped: never truncate columns
        console = Console(highlight=False, soft_wrap=True, width=200)
    home = args.home.resolve()
    state = load_state(home)
    code = 0
    if args.wait is not None:
        deadline = time.monotonic() + args.wait
        while True:
            state = load_state(home)
            kind = summary(state) if state else "empty"
            if kind == "ready" and state and _running(state):
                code = 0
                break
            if kind == "failed":
                code = 1
                break
            if time.monotonic() > deadline:
                code = 3
                break
            time.sleep(0.5)
    if state is None:
        console.print(f"no local state in {home} (run `lorafleet up -f DIR --home {args.home}`)")
        return 3
    serving = live_serving(state)
    if args.output == "json":
        for key, fields in serving.items():
            state["objects"][key]["serving"] = fields
        console.print_json(json.dumps(state))
    else:
        render(state, console, serving)
    return code
