"""``lorafleet-install``: the command line of docs/interfaces.md section 1.

Exit code 0 iff the report's ``ok`` is true. The report line goes to ``--report-file``
(default ``/dev/termination-log`` when it exists) and to stdout; progress goes to stderr.
Both streams are redacted line by line (:class:`.redaction.RedactingStream`, which also knows
the query values and user-info of the URIs on the command line), so nothing the process prints
- tracebacks and library warnings included - carries a secret.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..types import TASKS
from .api import install, remove
from .errors import INVALID_SOURCE
from .manifest import report_line, write_report
from .redaction import RedactingStream, url_secrets
from .request import InstallRequest

TERMINATION_LOG = "/dev/termination-log"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (subcommands ``base``, ``adapter``, ``remove``)."""
    parser = argparse.ArgumentParser(
        prog="lorafleet-install",
        description="Fetch, verify and validate model weights or a LoRA adapter onto a volume.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--namespace", required=True, help="Kubernetes namespace of the resource")
        p.add_argument("--name", required=True, help="resource name")
        p.add_argument(
            "--source", required=True, help="hf://, s3://, https://, file:// or pvc:// URI"
        )
        p.add_argument("--revision", help="hf branch/tag/commit; folder name for other sources")
        p.add_argument("--dest", required=True, help="volume root (ROOT)")
        p.add_argument("--max-rank", type=_positive_int, help="largest LoRA r accepted")
        p.add_argument("--sha256", help="expected sha256 of an https download")
        p.add_argument(
            "--report-file", help=f"report line target (default {TERMINATION_LOG} if present)"
        )
        p.add_argument("--progress-file", help="JSON progress file updated while downloading")
        p.add_argument("--timeout", type=_positive_float, help="seconds for the whole install")
        p.add_argument(
            "--allow-pattern", action="append", default=[], help="glob of files to include"
        )
        p.add_argument(
            "--ignore-pattern", action="append", default=[], help="glob of files to skip"
        )
        p.add_argument(
            "--max-unpacked-bytes",
            type=_positive_int,
            help="largest total an https archive may unpack to, bytes (default 1 TiB; the "
            "volume's free space bounds it too)",
        )

    base = sub.add_parser("base", help="install a base model")
    common(base)
    base.add_argument("--checkpoint", help="URI of a state_dict applied over the architecture")
    base.add_argument(
        "--no-strict", action="store_true", help="load the checkpoint keys that match"
    )
    base.add_argument("--task", choices=TASKS)
    base.add_argument("--num-labels", type=_positive_int)

    adapter = sub.add_parser("adapter", help="install a LoRA adapter")
    common(adapter)
    adapter.add_argument("--base-path", required=True, help="installed base model folder")
    adapter.add_argument(
        "--base-source", help="the base's source URI (compared with the adapter's)"
    )

    rm = sub.add_parser("remove", help="remove an installed revision folder")
    rm.add_argument("--path", required=True)
    rm.add_argument("--report-file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the installer with redacted stdout/stderr; return the exit code (0 iff ok).

    Args:
        argv: Arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 iff the report's ``ok`` is true.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    secrets = tuple(v for arg in args_list for v in url_secrets(arg))
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout = RedactingStream(real_out, secrets)
    sys.stderr = RedactingStream(real_err, secrets)
    try:
        return _main(args_list)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = real_out, real_err


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage; still leave a report
        if exc.code not in (0, None):
            line = report_line(
                {
                    "ok": False,
                    "reason": INVALID_SOURCE,
                    "message": "invalid command line (see stderr)",
                }
            )
            write_report(line, TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None)
        raise
    report_file = args.report_file or (TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None)
    if args.command == "remove":
        report = remove(args.path)
    else:
        kwargs = dict(
            namespace=args.namespace,
            name=args.name,
            source=args.source,
            dest=args.dest,
            revision=args.revision,
            allow_patterns=args.allow_pattern or (),
            ignore_patterns=args.ignore_pattern or (),
            max_rank=args.max_rank,
            sha256=args.sha256,
            progress_file=args.progress_file,
            timeout=args.timeout,
            max_unpacked_bytes=args.max_unpacked_bytes,
        )
        if args.command == "base":
            kwargs.update(
                checkpoint=args.checkpoint,
                strict=not args.no_strict,
                task=args.task,
                num_labels=args.num_labels,
            )
        else:
            kwargs.update(base_path=args.base_path, base_source=args.base_source)
        report = install(InstallRequest(args.command, **kwargs))
    if not report.get("ok"):
        print(
            f"lorafleet-install: {report.get('reason')}: {report.get('message')}", file=sys.stderr
        )
    write_report(report_line(report), report_file)
    code = 0 if report.get("ok") else 1
    sys.stdout.flush()
    sys.stderr.flush()
    if report.get("reason") == "Timeout":
        os._exit(code)  # a download thread may still be blocked in a socket read
    return code


if __name__ == "__main__":
    sys.exit(main())
