"""The staged half of an install, under the target's lock: fetch, check, record, promote.

:func:`stage_and_promote` downloads into ``ROOT/.staging/...`` (resumable) with progress,
verifies sizes and digests, validates the files as a base model or an adapter, leaves out
pickles, writes ``lorafleet.json`` and moves the files to the final path with one ``rename``.
A refusal or a full volume also removes the staged files; a ``Timeout`` or an internal error
keeps them for a resuming re-run.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .deadline import Deadline
from .errors import CHECKSUM_MISMATCH, INSTALLED, INTERNAL_ERROR, TIMEOUT, InstallError
from .manifest import now_rfc3339, recorded_uri, write_manifest
from .pickles import leave_out_pickles
from .progress import ProgressReporter, folder_bytes
from .redaction import redact, uri_secrets
from .request import InstallRequest
from .sources import Listing, RemoteFile, Source
from .space import check_space, is_space_exhausted, space_exhausted_error
from .staging import Target, promote
from .verify import Digests, check_digests, file_digests, in_parallel, verify_file

if TYPE_CHECKING:  # the validators import torch: loaded when first used
    from .validate_adapter import AdapterFacts
    from .validate_base import BaseFacts

# Failures after which the staged bytes are kept for a resuming re-run.
RESUMABLE = frozenset({TIMEOUT, INTERNAL_ERROR})
# Names listed in a report message before "(+N more)".
MAX_NAMES_IN_MESSAGE = 10


@dataclass(frozen=True)
class ResolvedSources:
    """One install's sources once listed, and the folder the install goes to.

    Attributes:
        src: The model's or adapter's source.
        listing: Its files (sizes, digests), from ``src.list``.
        resolved: The resolved revision the report records (the commit, the given revision
            or the content digest).
        dirname: The revision folder's name: ``resolved``, plus ``-ckpt-<12 hex>`` with a
            checkpoint.
        final: The final path, ``ROOT/<ns>/<kind>/<name>/<dirname>``.
        ckpt_src: The checkpoint's source, or None.
        ckpt_listing: The checkpoint's one file, or None.
    """

    src: Source
    listing: Listing
    resolved: str
    dirname: str
    final: Path
    ckpt_src: Source | None = None
    ckpt_listing: Listing | None = None


def stage_and_promote(
    req: InstallRequest, plan: ResolvedSources, target: Target, deadline: Deadline
) -> dict:
    """Stage, check and promote the install (under the target's lock), then tidy the staging.

    The staged bytes are kept for a resuming re-run after a ``RESUMABLE`` failure and
    removed after any other; a full volume is reported as ``InsufficientSpace``.

    Returns:
        The report dict.

    Raises:
        InstallError: Any failure staging, verifying, validating or promoting.
    """
    staging = target.staging_path(
        {
            "source": req.source,
            "dir": plan.dirname,
            "allow": list(req.allow_patterns) or None,
            "ignore": list(req.ignore_patterns) or None,
            "sha256": req.sha256,
        }
    )
    files_dir = staging / "files"
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
        _prune_unlisted(files_dir, plan.listing)
        report = _install_staged(req, plan, staging, target, deadline)
    except InstallError as exc:
        if exc.reason not in RESUMABLE:
            _discard_staging(staging, target)
        raise
    except Exception as exc:  # a full volume (ENOSPC/EDQUOT) is never kept to resume from
        if not is_space_exhausted(exc):
            raise
        _discard_staging(staging, target)
        raise space_exhausted_error(
            exc, req.dest, what=f"{target.namespace}/{target.name}"
        ) from exc
    _discard_staging(staging, target)  # leave no empty folders behind
    return report


def _discard_staging(staging: Path, target: Target) -> None:
    """Remove a staging folder, and the target's staging parent if that leaves it empty."""
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):  # a refusal leaves no empty folder either
        target.staging_parent.rmdir()


def _prune_unlisted(files_dir: Path, listing: Listing) -> None:
    """Delete staged files a previous run produced that the listing does not name."""
    if listing.archive:
        return
    wanted = {f.path for f in listing.files}
    for path in sorted(files_dir.rglob("*"), reverse=True):
        rel = path.relative_to(files_dir).as_posix()
        if rel == ".cache" or rel.startswith(".cache/"):
            continue
        if path.is_file() and rel not in wanted and rel.removesuffix(".part") not in wanted:
            path.unlink()


def _install_staged(
    req: InstallRequest, plan: ResolvedSources, staging: Path, target: Target, deadline: Deadline
) -> dict:
    """Download into ``staging``, verify, validate, write ``lorafleet.json`` and promote.

    Steps, in order: space check, download (with progress), verify sizes and digests,
    validate as a base or an adapter, leave out pickles, write the manifest, one ``rename``
    of ``<staging>/files`` to ``plan.final``.

    Returns:
        The report dict of the finished install.

    Raises:
        InstallError: The first failing step's reason (``InsufficientSpace``,
            ``ChecksumMismatch``, a validation refusal, ``Timeout``, ...).
    """
    files_dir = staging / "files"
    total = _total_bytes(plan)
    if total is not None:
        check_space(
            target.root,
            max(0, total - folder_bytes(staging)),
            what=f"{target.namespace}/{target.name}",
        )
    fetched, ckpt_file, ckpt_fetched = _download(req, plan, staging, target, total, deadline)
    shutil.rmtree(files_dir / ".cache", ignore_errors=True)
    deadline.check("verifying")
    digests = _verify_files(plan.listing, files_dir, fetched)
    ckpt_digest = _verify_checkpoint(ckpt_file, plan.ckpt_listing, ckpt_fetched)

    deadline.check("validating")
    report: dict = {
        "ok": True,
        "reason": INSTALLED,
        "kind": req.kind,
        "resolvedRevision": plan.resolved,
    }
    facts = _validate_staged(req, files_dir, ckpt_file, plan.ckpt_listing)
    report.update(facts.report_fields())
    left_out = _leave_out_pickles(files_dir, facts.findings)

    entries = _file_entries(files_dir, digests)
    size = sum(e["size"] for e in entries)
    message = _installed_message(entries, size, plan.final, left_out, facts.findings)
    report.update(sizeBytes=size, path=str(plan.final), message=message)
    report = {k: v for k, v in report.items() if v is not None}
    manifest = _manifest(req, plan, target, facts, entries, report, ckpt_digest)
    write_manifest(files_dir, manifest)
    deadline.check("promoting the install")
    promote(files_dir, plan.final)
    return report


def _total_bytes(plan: ResolvedSources) -> int | None:
    """Bytes to download: the listing's total plus the checkpoint's, None if either is unknown."""
    total = plan.listing.total_bytes
    if plan.ckpt_listing is not None and total is not None:
        ckpt_total = plan.ckpt_listing.total_bytes
        total = None if ckpt_total is None else total + ckpt_total
    return total


def _download(
    req: InstallRequest,
    plan: ResolvedSources,
    staging: Path,
    target: Target,
    total: int | None,
    deadline: Deadline,
) -> tuple[dict, Path | None, Digests | None]:
    """Download the files and the checkpoint into ``staging``, with progress as ``req`` asks.

    The files go to ``<staging>/files``, the checkpoint to ``<staging>/checkpoint``.

    Returns:
        The digests the source computed while downloading (relative path -> digests; empty
        when it computed none), the downloaded checkpoint file or None, and the checkpoint's
        digests computed while downloading or None.
    """
    with ProgressReporter(
        lambda: folder_bytes(staging),
        total,
        progress_file=req.progress_file,
        stream=req.progress_stream,
        label=f"{target.namespace}/{target.name}",
    ):
        fetched = plan.src.download(plan.listing, staging / "files", deadline) or {}
        if plan.ckpt_src is None:
            return fetched, None, None
        ckpt_dir = staging / "checkpoint"
        ckpt_name = plan.ckpt_listing.files[0].path
        ckpt_fetched = plan.ckpt_src.download(plan.ckpt_listing, ckpt_dir, deadline) or {}
        return fetched, ckpt_dir / ckpt_name, ckpt_fetched.get(ckpt_name)


def _verify_files(
    listing: Listing, files_dir: Path, fetched: dict
) -> dict[str, tuple[Digests, int]]:
    """Check every listed file is there with its expected size and digests (not for archives).

    Files not hashed while downloading (complete from an earlier run, or from a source that
    does not hash) are hashed several at once; the first failing file in listing order is
    reported. A file that fails is deleted: it is never promoted nor resumed from.

    Returns:
        Relative path -> (its digests, its ``st_mtime_ns`` when checked), so the manifest
        need not hash it again.

    Raises:
        InstallError: ``ChecksumMismatch`` (missing file, size or digest differs).
    """

    def verify(f: RemoteFile) -> tuple[Digests, int]:
        path = files_dir / f.path
        if not path.is_file():
            raise InstallError(CHECKSUM_MISMATCH, f"{f.path}: missing after download")
        try:
            if f.path in fetched:  # hashed while downloading
                d = check_digests(fetched[f.path], f.expected, name=f.path)
            else:
                d = verify_file(path, f.expected, name=f.path)
        except InstallError:
            path.unlink(missing_ok=True)  # never promoted, never resumed from
            raise
        return d, path.stat().st_mtime_ns

    checked = [] if listing.archive else listing.files
    return {f.path: d for f, d in zip(checked, in_parallel(verify, checked), strict=True)}


def _verify_checkpoint(
    ckpt_file: Path | None, ckpt_listing: Listing | None, fetched: Digests | None = None
) -> Digests | None:
    """Check the downloaded checkpoint against its listing (deleted when it fails).

    Args:
        ckpt_file: The downloaded checkpoint, or None without one.
        ckpt_listing: Its listing (one file).
        fetched: Its digests computed while downloading, or None to hash the file now.

    Returns:
        Its digests, or None without a checkpoint.

    Raises:
        InstallError: ``ChecksumMismatch``.
    """
    if ckpt_file is None:
        return None
    f = ckpt_listing.files[0]
    try:
        if fetched is not None:  # hashed while downloading
            return check_digests(fetched, f.expected, name=f.path)
        return verify_file(ckpt_file, f.expected, name=f.path)
    except InstallError:
        ckpt_file.unlink(missing_ok=True)
        raise


def _validate_staged(
    req: InstallRequest, files_dir: Path, ckpt_file: Path | None, ckpt_listing: Listing | None
) -> BaseFacts | AdapterFacts:
    """Validate the staged files as a base model (applying the checkpoint) or an adapter.

    Returns:
        The validator's facts.

    Raises:
        InstallError: The validator's refusal.
    """
    if req.kind == "base":
        from .validate_base import validate_base

        return validate_base(
            files_dir,
            task=req.task,
            num_labels=req.num_labels,
            checkpoint_file=ckpt_file,
            checkpoint_name=ckpt_listing.files[0].path if ckpt_listing else None,
            strict=req.strict,
        )
    from .validate_adapter import validate_adapter

    return validate_adapter(
        files_dir, base_path=req.base_path, base_source=req.base_source, max_rank=req.max_rank
    )


def _leave_out_pickles(files_dir: Path, findings: list[dict]) -> list[str]:
    """Remove the pickle files from the install, noting them in ``findings`` (a warning).

    Returns:
        The relative paths left out.
    """
    left_out = leave_out_pickles(files_dir)
    if left_out:
        findings.append(
            {
                "level": "warning",
                "code": "PickleLeftOut",
                "message": "pickle files left out of the install (never loaded; a pickle runs "
                f"code when loaded): {', '.join(left_out)}",
            }
        )
    return left_out


def _file_entries(files_dir: Path, digests: dict[str, tuple[Digests, int]]) -> list[dict]:
    """The manifest's ``files``: every staged file's relative path, size and sha256.

    Digests from verification are reused while the file is unchanged (same mtime); other
    files (converted, unpacked from an archive) are hashed now, several at once.
    """

    def entry(path: Path) -> dict:
        rel = path.relative_to(files_dir).as_posix()
        known = digests.get(rel)
        d = known[0] if known and known[1] == path.stat().st_mtime_ns else file_digests(path)
        return {"path": rel, "size": d.size, "sha256": d.sha256}

    return in_parallel(entry, sorted(p for p in files_dir.rglob("*") if p.is_file()))


def _installed_message(
    entries: list[dict], size: int, final: Path, left_out: list[str], findings: list[dict]
) -> str:
    """The report's message: what was installed where, then what was left out and warned.

    The pickles left out are named up to ``MAX_NAMES_IN_MESSAGE``; every warning but
    ``PickleLeftOut`` follows with its code.
    """
    message = f"installed {len(entries)} files ({size} bytes) at {final}"
    if left_out:
        more = len(left_out) - MAX_NAMES_IN_MESSAGE
        message += f"; left out {len(left_out)} pickle file(s): " + ", ".join(
            left_out[:MAX_NAMES_IN_MESSAGE]
        )
        message += f" (+{more} more)" if more > 0 else ""
    # Warnings reach the resource's status through the report's message (the Installed
    # condition); lorafleet.json keeps every finding in full.
    warned = [f for f in findings if f["level"] == "warning" and f["code"] != "PickleLeftOut"]
    if warned:
        message += "; warnings: " + "; ".join(f"{f['code']}: {f['message']}" for f in warned)
    return message


def _manifest(
    req: InstallRequest,
    plan: ResolvedSources,
    target: Target,
    facts: BaseFacts | AdapterFacts,
    entries: list[dict],
    report: dict,
    ckpt_digest: Digests | None,
) -> dict:
    """The ``lorafleet.json`` of this install (docs/interfaces.md section 1).

    Args:
        req: The request.
        plan: Its resolved sources.
        target: Where it is installed.
        facts: The validator's facts (their findings are recorded, redacted).
        entries: The files (:func:`_file_entries`).
        report: The final report (recorded as is; its ``sizeBytes`` too).
        ckpt_digest: The checkpoint's digests, or None without a checkpoint.
    """
    src, ckpt_src = plan.src, plan.ckpt_src
    manifest = {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "BaseModel" if req.kind == "base" else "LoraAdapter",
        "namespace": target.namespace,
        "name": target.name,
        "installedAt": now_rfc3339(),
        "source": src.describe(),
        "resolvedRevision": plan.resolved,
        "checkpoint": (
            {**ckpt_src.describe(), "sha256": ckpt_digest.sha256, "strict": req.strict}
            if ckpt_src is not None
            else None
        ),
        "files": entries,
        "sizeBytes": report["sizeBytes"],
        "findings": [
            {**f, "message": redact(f["message"], uri_secrets(src.uri, req.base_source))}
            for f in facts.findings
        ],
        "report": report,
    }
    if req.kind == "adapter":
        manifest["base"] = {
            "path": str(req.base_path),
            "source": recorded_uri(req.base_source),
            "declared": facts.base_model,
        }
    return manifest
