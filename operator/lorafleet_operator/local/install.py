"""Run the installer (``lorafleet-install``, docs/interfaces.md sections 1-2) for local mode.

The installer runs as a subprocess -- the same command an install Job runs on a cluster -- so
this package never imports torch. Its report is the last line of ``--report-file``; its
progress (``{"bytesDone", "bytesTotal", "updatedAt"}``) is polled from ``--progress-file`` and
shown as a progress bar. The installer's own stderr goes to a log file under ``HOME/logs/``
whose tail is shown when an install fails. Secrets (``HF_TOKEN``, AWS keys, ...) reach it only
through the inherited environment, never on its command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorafleet_operator.installer_args import adapter_install_args, base_install_args
from lorafleet_operator.local.manifests import LocalObject
from lorafleet_operator.models import BaseModelSpec, LoraAdapterSpec
from lorafleet_operator.report import InstallReport, parse_report

#: Seconds between two reads of the progress file.
POLL_INTERVAL_S = 0.25


class InstallFailed(RuntimeError):
    """The installer refused or failed; ``reason``/``message`` come from its report.

    Attributes:
        key: ``Kind/namespace/name`` of the object.
        reason: CamelCase reason of the report (``SourceNotFound``, ``KeysMismatch``, ...).
        message: The report's message (what and where).
        log: Path of the installer's stderr log.
    """

    def __init__(self, key: str, reason: str, message: str, log: Path) -> None:
        self.key, self.reason, self.message, self.log = key, reason, message, log
        super().__init__(f"{key}: {reason}: {message} (installer log: {log})")


@dataclass
class Progress:
    """One progress sample of a running install.

    Attributes:
        bytes_done: Bytes fetched so far.
        bytes_total: Total bytes when known, else ``None``.
    """

    bytes_done: int
    bytes_total: int | None


def installer_command() -> list[str]:
    """The argv prefix that runs the installer from this Python environment.

    Returns:
        ``[".../bin/lorafleet-install"]`` beside the running interpreter when it exists, else
        the one on ``PATH``, else ``[sys.executable, "-m", "lorafleet_serving.installer"]``.
    """
    sibling = Path(sys.executable).with_name("lorafleet-install")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)]
    found = shutil.which("lorafleet-install")
    if found:
        return [found]
    return [sys.executable, "-m", "lorafleet_serving.installer"]


def install_args(
    obj: LocalObject,
    models_root: Path,
    *,
    base_path: str | None = None,
    base_source: str | None = None,
    max_rank: int | None = None,
) -> list[str]:
    """Build the installer arguments for one object (docs/interfaces.md section 1), with the
    same builder as the cluster's install Job (:mod:`lorafleet_operator.installer_args`).

    Args:
        obj: The BaseModel or LoraAdapter.
        models_root: ``--dest`` (``HOME/models``).
        base_path: Install folder of the adapter's base (LoraAdapter only).
        base_source: The base's source URI (LoraAdapter only; compared with the adapter's
            ``base_model_name_or_path`` by the installer).
        max_rank: Largest LoRA rank accepted (the base's ``serving.maxRank``).

    Returns:
        The argument list after the program name (no report/progress files).

    Raises:
        ValueError: If an adapter is given without ``base_path``.
    """
    spec = obj.spec
    if isinstance(spec, BaseModelSpec):
        return base_install_args(obj.namespace, obj.name, spec, dest=str(models_root))
    assert isinstance(spec, LoraAdapterSpec)
    if not base_path:
        raise ValueError(f"{obj.key}: the adapter's base model is not installed")
    return adapter_install_args(
        obj.namespace,
        obj.name,
        spec,
        dest=str(models_root),
        base_path=base_path,
        base_source=base_source,
        max_rank=max_rank,
    )


def read_report(report_file: Path) -> InstallReport | None:
    """Read the installer's report from its ``--report-file``, with the cluster's own parser
    (:func:`lorafleet_operator.report.parse_report`: the last line holding a JSON report).

    Args:
        report_file: The ``--report-file`` path.

    Returns:
        The report; ``None`` when the file is missing or empty; a failed ``InternalError``
        report quoting the text when no line is a report.
    """
    try:
        text = report_file.read_text(encoding="utf-8")
    except OSError:
        return None
    return parse_report(text)


def read_progress(progress_file: Path) -> Progress | None:
    """Read the installer's progress file (``{"bytesDone", "bytesTotal", "updatedAt"}``).

    Args:
        progress_file: The ``--progress-file`` path.

    Returns:
        The sample, or ``None`` while the file does not exist or is being rewritten.
    """
    try:
        data = json.loads(progress_file.read_text(encoding="utf-8"))
        done = int(data.get("bytesDone") or 0)
        total = data.get("bytesTotal")
        return Progress(done, int(total) if total is not None else None)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def run_installer(
    obj: LocalObject,
    args: list[str],
    logs_dir: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
) -> InstallReport:
    """Run the installer for one object and return its successful report.

    Args:
        obj: The object being installed (named in errors and the log file name).
        args: Output of :func:`install_args`.
        logs_dir: Folder of the installer's stderr/stdout log
            (``<kind>-<namespace>-<name>.log``, overwritten per run).
        on_progress: Called with every new progress sample (about every 0.25 s).
        timeout: ``--timeout`` passed to the installer (seconds), or ``None``.

    Returns:
        The install report (``ok`` true), as on a cluster: :class:`InstallReport`.

    Raises:
        InstallFailed: If the installer exits non-zero or leaves no valid report; carries the
            report's ``reason`` and ``message`` (``InternalError`` when there is no report).
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{obj.kind.lower()}-{obj.namespace}-{obj.name}.log"
    with tempfile.TemporaryDirectory(prefix="lorafleet-install-") as tmp:
        report_file = Path(tmp) / "report.json"
        progress_file = Path(tmp) / "progress.json"
        argv = [
            *installer_command(),
            *args,
            "--report-file",
            str(report_file),
            "--progress-file",
            str(progress_file),
        ]
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        env = dict(os.environ)
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        last: Progress | None = None
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                while proc.poll() is None:
                    time.sleep(POLL_INTERVAL_S)
                    sample = read_progress(progress_file)
                    if sample is not None and sample != last and on_progress is not None:
                        on_progress(sample)
                        last = sample
            except BaseException:  # Ctrl-C while installing: stop the installer too
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        sample = read_progress(progress_file)
        if sample is not None and sample != last and on_progress is not None:
            on_progress(sample)
        report = read_report(report_file)
    if report is None:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise InstallFailed(
            obj.key,
            "InternalError",
            f"the installer exited with code {proc.returncode} without a report"
            + (f"; last output: {' | '.join(tail)}" if tail else ""),
            log_path,
        )
    if proc.returncode != 0 or not report.ok:
        raise InstallFailed(
            obj.key,
            report.reason if not report.ok else "InternalError",
            report.message or f"installer exit code {proc.returncode}",
            log_path,
        )
    return report
