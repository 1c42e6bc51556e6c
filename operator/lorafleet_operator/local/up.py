"""``lorafleet up``: install and serve a folder of manifests on this machine, then follow it.

Steps: read and validate every BaseModel/LoraAdapter manifest of the folder (nothing is
installed when any is invalid); start a local Ray head (or use ``--ray-dashboard``); install each
object with ``lorafleet-install`` into ``HOME/models`` (progress shown); deploy one Ray Serve
application per BaseModel through the dashboard's REST API, with the serve config the operator
builds for a RayService; print the endpoint and the served models. Then watch the folder: a new
or changed LoraAdapter is installed and added to ``user_config`` (replicas reconfigure in place,
no restart), a removed one is unloaded (404 afterwards). Ctrl-C or SIGTERM stops everything it
started. ``HOME/state.json`` records phase, reason, revision, size and path per object
(``lorafleet status`` prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Exit codes.
EXIT_OK = 0
EXIT_INVALID = 2
EXIT_FAILED = 1

EPILOG = """\
examples:
  lorafleet up -f manifests/                 # serve on http://127.0.0.1:8000, follow changes
  lorafleet up -f manifests/ --port 9000 --home /data/lorafleet
  lorafleet status                           # phase, reason, revision, size per object

HTTP API (OpenAI-style): GET /v1/models, POST /v1/completions, POST /v1/chat/completions,
POST /v1/classify (text-classification bases); "model" is the base's or an adapter's name.
With several BaseModels, each application is served under /<basemodel name>/.
"""


def _bounded(kind: type, low: float, high: float | None = None) -> Any:
    """An argparse ``type`` that also checks the range (a usage error, before anything starts)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register the ``up`` subcommand.

    Args:
        subparsers: The ``argparse`` sub-parsers object of the ``lorafleet`` command.

    Returns:
        The ``up`` parser (``func`` set to :func:`run`).
    """
    parser = subparsers.add_parser(
        "up",
        help="install and serve a folder of BaseModel/LoraAdapter manifests on this machine",
        description=(
            "Local mode: validate the BaseModel and LoraAdapter manifests in DIR, install them\n"
            "with lorafleet-install into HOME/models, serve them with Ray Serve on\n"
            "127.0.0.1:PORT, then follow DIR: added or changed LoraAdapters are installed and\n"
            "served in place (no restart), removed ones are unloaded (404). Ctrl-C stops\n"
            "everything it started. Installs are reused by the next `up` on the same HOME."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="directory",
        metavar="DIR",
        type=Path,
        required=True,
        help="folder of manifests (*.yaml, *.yml; several YAML documents per file allowed)",
    )
    parser.add_argument(
        "--port",
        type=_bounded(int, 1, 65535),
        default=8000,
        help="port of the HTTP endpoint (Ray Serve's proxy) on 127.0.0.1 (default 8000)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(".lorafleet"),
        help=(
            "folder for installs (HOME/models), logs, state.json and the Ray token "
            "(HOME/secrets, 0700) (default ./.lorafleet)"
        ),
    )
    parser.add_argument(
        "--no-watch",
        action="store_true",
        help="serve what the folder holds now and do not follow later changes",
    )
    parser.add_argument(
        "--ray-dashboard",
        metavar="URL",
        help=(
            "use the running Ray cluster whose dashboard is at URL (e.g. http://127.0.0.1:8265) "
            "instead of starting one; its Serve HTTP port is used and its other applications "
            "are kept; its token is read like Ray does (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
            "~/.ray/auth_token)"
        ),
    )
    parser.add_argument(
        "--num-cpus",
        type=_bounded(int, 1),
        default=None,
        help="CPUs the local Ray head may schedule (default: this machine's, at least 2)",
    )
    parser.add_argument(
        "--reinstall",
        action="store_true",
        help=(
            "run the installer for every object even when HOME holds an install of the same "
            "spec (e.g. to pick up a new commit of an hf:// branch)"
        ),
    )
    parser.add_argument(
        "--timeout",
        type=_bounded(float, 1),
        default=900.0,
        help="seconds allowed for one install and for a deployment to be RUNNING (default 900)",
    )
    parser.set_defaults(func=run)
    return parser


class _Console:
    """Output of ``up``: rich when available, progress bars on a terminal, plain lines else."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False, soft_wrap=True)
        if not self.console.is_terminal:  # piped to a log: never truncate table columns
            self.console = Console(highlight=False, soft_wrap=True, width=200)
        self._bars: dict[str, Any] = {}
        self._progress: Any = None  # rich.progress.Progress once a bar is shown
        self._last_line: dict[str, float] = {}

    def info(self, text: str) -> None:
        with contextlib.suppress(OSError):  # a closed terminal must not stop the clean-up
            self.console.print(f"[bold cyan]lorafleet[/] {_escape(text)}")

    def error(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self.console.print(f"[bold red]lorafleet[/] {_escape(text)}")

    def progress(self, key: str, sample: Any) -> None:
        if not self.console.is_terminal:
            now = time.monotonic()
            if now - self._last_line.get(key, 0.0) < 2.0:
                return
            self._last_line[key] = now
            total = f"{sample.bytes_total:,}" if sample.bytes_total else "?"
            self.console.print(f"lorafleet {key}: {sample.bytes_done:,} / {total} bytes")
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        if key not in self._bars:
            self._bars[key] = self._progress.add_task(key, total=sample.bytes_total)
        self._progress.update(
            self._bars[key], completed=sample.bytes_done, total=sample.bytes_total
        )

    def install_done(self, key: str) -> None:
        if self._progress is not None and key in self._bars:
            self._progress.remove_task(self._bars.pop(key))
            if not self._bars:
                self._progress.stop()
                self._progress = None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _load(out: _Console, directory: Path) -> tuple[Any, list[Any]] | None:
    """The folder's snapshot and objects, or ``None`` (said why) when there is nothing valid."""
    from lorafleet_operator.local.manifests import ManifestsInvalid, load_manifests

    try:
        snapshot = _snapshot(directory)
        objects, skipped = load_manifests(directory)
    except (OSError, ManifestsInvalid) as exc:
        out.error(f"{exc}")
        out.error("nothing was installed or started")
        return None
    for note in skipped:
        out.info(note)
    if not objects:
        out.error(f"no BaseModel or LoraAdapter manifest in {directory}; nothing to serve")
        return None
    out.info(
        f"{len(objects)} object(s) in {directory}: "
        + ", ".join(f"{o.kind}/{o.name}" for o in objects)
    )
    return snapshot, objects


@dataclass
class _Session:
    """What ``up`` started, so the clean-up finds it even when interrupted half-way."""

    head: Any = None
    serve: Any = None
    fleet: Any = None
    lock: Any = None


def _connect(out: _Console, args: argparse.Namespace, home: Path, session: _Session) -> int | None:
    """Reach Ray: the cluster at ``--ray-dashboard``, or a local head started here.

    ``session.head`` and ``session.serve`` are set as soon as each exists.

    Returns:
        The Serve HTTP port, or ``None`` when ``--port`` is taken.
    """
    from lorafleet_operator.local.serve_rest import ServeREST

    if args.ray_dashboard:
        from lorafleet_operator.local.ray_token import token_from_environment

        session.serve = ServeREST(args.ray_dashboard, token=token_from_environment())
        details = session.serve.details()
        http_port = int((details.get("http_options") or {}).get("port") or args.port)
        if (details.get("controller_info") or {}).get("actor_id") is None:
            http_port = args.port  # Serve not started yet: our http_options apply
        out.info(f"using the Ray cluster at {args.ray_dashboard} (Serve HTTP port {http_port})")
        return http_port
    from lorafleet_operator.local.ray_head import SECRETS_DIR, LocalRayHead, port_is_free

    if not port_is_free(args.port):
        out.error(f"port {args.port} on 127.0.0.1 is already in use; choose another with --port")
        return None
    num_cpus = args.num_cpus or max(2, os.cpu_count() or 2)
    out.info(f"starting a local Ray head ({num_cpus} CPUs, dashboard on 127.0.0.1)")
    started = time.monotonic()
    head = session.head = LocalRayHead.start(num_cpus=num_cpus, secrets_dir=home / SECRETS_DIR)
    out.info(
        f"Ray is up in {time.monotonic() - started:.1f} s: dashboard {head.dashboard_url}"
        f" (token auth: Bearer token in {head.token_file}), logs {head.logs_dir}"
    )
    session.serve = ServeREST(head.dashboard_url, token=head.token)
    return int(args.port)


def _serve_until_stopped(
    out: _Console,
    args: argparse.Namespace,
    fleet: Any,
    directory: Path,
    snapshot: Any,
    objects: list[Any],
) -> None:
    """Apply the objects, then follow the folder (or sleep) until interrupted."""
    from lorafleet_operator.local.manifests import ManifestsInvalid, load_manifests
    from lorafleet_operator.local.serve_rest import DeployFailed

    started = time.monotonic()
    ok = fleet.apply(objects)
    _print_served(out, fleet, time.monotonic() - started)
    if not ok:
        out.error("some objects are not served; see `lorafleet status` for the reasons")
    if args.no_watch:
        out.info("serving until Ctrl-C (not following the folder: --no-watch)")
        while True:
            time.sleep(3600)
    else:
        _watch(out, fleet, directory, snapshot, load_manifests, ManifestsInvalid, DeployFailed)


def _shut_down(out: _Console, session: _Session, code: int) -> None:
    """Remove the applications (shared cluster) or stop the head; never interrupted."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # let the clean-up finish
    fleet, head, serve = session.fleet, session.head, session.serve
    try:
        if fleet is not None and head is None:
            try:
                fleet.undeploy()
            except Exception as exc:
                out.error(f"could not remove the applications: {exc}")
        if head is not None:
            head.stop(remove_temp=code == EXIT_OK)
            out.info("Ray head stopped")
        if fleet is not None:
            fleet.mark_stopped()
        if serve is not None:
            serve.close()
        if session.lock is not None:
            session.lock.release()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def run(args: argparse.Namespace) -> int:
    """Run ``lorafleet up`` (see the module docstring).

    Args:
        args: Parsed arguments of the ``up`` parser.

    Returns:
        0 after a clean stop, 1 when serving failed, 2 when the manifests are invalid.
    """
    from lorafleet_operator.local.fleet import Fleet, Reporter
    from lorafleet_operator.local.serve_rest import DeployFailed

    out = _Console()
    directory = args.directory.resolve()
    home = args.home.resolve()
    # Explicit handlers, first thing: a shell starts background jobs with SIGINT ignored, and
    # Python keeps an inherited SIG_IGN; `kill -INT` must stop `up` all the same, at any time.
    # SIGHUP too: closing the terminal must not orphan the Ray head.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    session = _Session()
    code = EXIT_OK
    try:
        loaded = _load(out, directory)
        if loaded is None:
            code = EXIT_INVALID
            return code
        snapshot, objects = loaded
        from lorafleet_operator.local.state import HomeInUse, HomeLock

        try:
            session.lock = HomeLock(home)
        except (HomeInUse, OSError) as exc:
            out.error(f"{exc}")
            code = EXIT_FAILED
            return code
        http_port = _connect(out, args, home, session)
        if http_port is None:
            code = EXIT_FAILED
            return code
        fleet = session.fleet = Fleet(
            home,
            session.serve,
            http_port,
            Reporter(out.info, out.error, out.progress, out.install_done),
            shared_cluster=bool(args.ray_dashboard),
            timeout_s=args.timeout,
            reinstall=args.reinstall,
        )
        fleet.state.set_top(
            pid=os.getpid(),
            directory=str(directory),
            dashboard=session.serve.dashboard_url,
            endpoint=f"http://127.0.0.1:{http_port}",
        )
        _serve_until_stopped(out, args, fleet, directory, snapshot, objects)
    except KeyboardInterrupt:
        out.info("stopping")
    except DeployFailed as exc:
        out.error(f"serving failed: {exc.reason}: {exc}")
        if session.head is not None:
            out.error(f"Ray logs: {session.head.logs_dir} (kept)")
        code = EXIT_FAILED
    except Exception as exc:
        out.error(f"{type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    finally:
        _shut_down(out, session, code)
    return code


def _served_table(fleet: Any, seconds: float) -> Any:
    """The table printed after an apply: every object, its phase, endpoint or reason."""
    from rich.table import Table

    rows = []
    for key, obj in fleet.objects.items():
        record = fleet.state.get(key)
        base = "" if obj.kind == "BaseModel" else obj.spec.base_model
        phase = record.get("phase", "")
        rows.append((obj.served_name, obj.kind, base, phase, record.get("endpoint"), record))
    served = sum(1 for row in rows if row[3] == "Ready")
    table = Table(
        title=f"models: {served} of {len(rows)} served ({seconds:.1f} s)", title_justify="left"
    )
    for column in ("MODEL", "KIND", "BASE", "PHASE", "ENDPOINT / REASON"):
        table.add_column(column, no_wrap=True)
    for name, kind, base, phase, endpoint, record in rows:
        table.add_row(name, kind, base, phase, endpoint or record.get("reason", ""))
    return table


def _print_served(out: _Console, fleet: Any, seconds: float) -> None:
    out.console.print(_served_table(fleet, seconds))
    for app in sorted(fleet.deployed):
        endpoint = fleet.endpoint(app)
        out.info(f"endpoint of {app!r}: {endpoint}  (try: curl {endpoint}/v1/models)")
    sys.stdout.flush()


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime in ns) of the manifest files of ``directory``."""
    from lorafleet_operator.local.manifests import manifest_files

    out = {}
    for path in manifest_files(directory):
        try:
            st = path.stat()
        except OSError:
            continue
        out[path.name] = (st.st_size, st.st_mtime_ns)
    return out


def _watch(
    out: _Console,
    fleet: Any,
    directory: Path,
    snapshot: Any,
    load_manifests: Any,
    invalid_error: type[Exception],
    deploy_failed: Any,
) -> None:
    from watchfiles import watch

    def manifest_filter(change: Any, path: str) -> bool:
        name = os.path.basename(path)
        return name.endswith((".yaml", ".yml")) and not name.startswith(".")

    out.info(f"following {directory} for changes (Ctrl-C to stop)")
    applied = snapshot
    for changes in watch(
        directory,
        watch_filter=manifest_filter,
        debounce=400,
        recursive=False,
        raise_interrupt=True,
        rust_timeout=2000,
        yield_on_timeout=True,
    ):
        try:
            current = _snapshot(directory)
        except OSError as exc:
            out.error(f"cannot read {directory}: {exc}; still serving the previous manifests")
            continue
        if not changes and current == applied:
            continue  # periodic check: nothing changed (also covers the watcher's start-up)
        applied = current
        names = sorted({os.path.basename(p) for _, p in changes}) or ["the folder"]
        out.info(f"change in {', '.join(names)}")
        try:
            objects, _ = load_manifests(directory)
        except (invalid_error, OSError) as exc:
            out.error(f"{exc}")
            out.error("the change is not applied; still serving the previous manifests")
            continue
        except Exception as exc:  # a bug in validation must not stop what is served
            out.error(f"reading the manifests failed: {type(exc).__name__}: {exc}")
            out.error("the change is not applied; still serving the previous manifests")
            continue
        started = time.monotonic()
        try:
            ok = fleet.apply(objects)
        except deploy_failed as exc:
            out.error(f"serving the change failed: {exc.reason}: {exc}")
            continue
        _print_served(out, fleet, time.monotonic() - started)
        if not ok:
            out.error("some objects are not served; see `lorafleet status` for the reasons")
