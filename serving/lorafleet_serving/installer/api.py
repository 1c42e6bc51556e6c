"""``install()``: fetch, verify, validate and atomically place one base model or adapter.

Pipeline: resolve the source (revision -> commit, file list with sizes and digests) ->
quick no-op if ``ROOT/<ns>/<kind>/<name>/<revision>/lorafleet.json`` exists -> lock the
target -> space check -> download into ``ROOT/.staging/...`` (resumable) with progress ->
verify sizes/digests -> validate -> leave out pickles -> write ``lorafleet.json`` -> one
``rename`` to the final path. Failures never leave anything at the final path; a refusal or a
full volume (``InsufficientSpace``) also removes the staged files, so the space is free again.
Every message that leaves is redacted (:mod:`.redaction`), including the source URIs' own
query values and user-info.

Revision folder names: the resolved commit for ``hf://``; otherwise the ``revision`` given by
the user, else the content digest of :func:`lorafleet_serving.installer.sources.content_digest`
(``sha256-<16 hex>``). When a checkpoint is applied over a base, ``-ckpt-<12 hex>`` is
appended (a digest of the checkpoint's identity, ``strict``, ``task`` and ``num_labels``),
since the installed weights then differ from the source's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import traceback
from pathlib import Path

from ..types import TASKS
from .deadline import Deadline
from .errors import (
    CHECKSUM_MISMATCH,
    INSTALLED,
    INTERNAL_ERROR,
    INVALID_BASE_MODEL,
    INVALID_SOURCE,
    REMOVED,
    TIMEOUT,
    InstallError,
)
from .manifest import MANIFEST_NAME, now_rfc3339, read_manifest, write_manifest
from .pickles import leave_out_pickles
from .progress import ProgressReporter, folder_bytes
from .redaction import public_url, redact, url_secrets
from .request import InstallRequest
from .sources import Listing, content_digest, open_source
from .space import check_space, is_space_exhausted, space_exhausted_error
from .staging import Target, check_revision_dirname, promote
from .verify import Digests, check_digests, file_digests, verify_file

KINDS = ("base", "adapter")
# Failures after which the staged bytes are kept for a resuming re-run.
RESUMABLE = frozenset({TIMEOUT, INTERNAL_ERROR})
# Names listed in a report message before "(+N more)".
MAX_NAMES_IN_MESSAGE = 10


def _fail(reason: str, message: str, kind: str, secrets: tuple[str, ...] = ()) -> dict:
    return {"ok": False, "reason": reason, "message": redact(message, secrets), "kind": kind}


def install(req: InstallRequest) -> dict:
    """Install a base model or a LoRA adapter as ``req`` says.

    Args:
        req: What to install, from where, to where (:class:`.request.InstallRequest`).

    Returns:
        The report dict (docs/interfaces.md section 2); ``ok`` is False on failure, with
        ``reason`` and ``message``. Never raises for install failures.
    """
    kind, timeout = req.kind, req.timeout
    secrets = _uri_secrets(req.source, req.checkpoint, req.base_source)
    if kind not in KINDS:
        return _fail(INVALID_SOURCE, f"kind must be one of {KINDS}, got {kind!r}", str(kind))
    if req.max_unpacked_bytes is not None and req.max_unpacked_bytes < 1:
        return _fail(
            INVALID_SOURCE,
            f"--max-unpacked-bytes must be positive, got {req.max_unpacked_bytes}",
            kind,
        )
    try:
        deadline = Deadline(timeout)
    except ValueError as exc:
        return _fail(INVALID_SOURCE, str(exc), kind)
    result: dict = {}

    def run() -> None:
        try:
            result["report"] = _install(req, deadline)
            result["report"]["message"] = redact(result["report"]["message"], secrets)
        except InstallError as exc:
            result["report"] = _fail(exc.reason, exc.message, kind, secrets)
        except Exception as exc:  # report, never crash without a reason
            print(redact(traceback.format_exc(), secrets), file=sys.stderr)
            result["report"] = _fail(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", kind, secrets)

    if timeout is None:
        run()
        return result["report"]
    worker = threading.Thread(target=run, name="lorafleet-install", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    if worker.is_alive():
        message = f"the install did not finish within {timeout:g} s"
        if deadline.last_retried:  # e.g. an unreachable endpoint retried until the deadline
            message += f"; still retrying {deadline.last_retried}"
        return _fail(TIMEOUT, message, kind, secrets)
    return result["report"]


def _uri_secrets(*uris: str | None) -> tuple[str, ...]:
    """A source's own secrets (a pre-signed URL's signature, ``user:password@``), by value."""
    return tuple(v for uri in uris for v in url_secrets(uri))


def _suffix_for_checkpoint(ckpt_listing: Listing, strict: bool, task, num_labels) -> str:
    ident = json.dumps([content_digest(ckpt_listing.files), strict, task, num_labels])
    return "-ckpt-" + hashlib.sha256(ident.encode()).hexdigest()[:12]


def _install(req: InstallRequest, deadline: Deadline) -> dict:
    kind, namespace, name, source, dest = req.kind, req.namespace, req.name, req.source, req.dest
    revision, checkpoint, strict, sha256 = req.revision, req.checkpoint, req.strict, req.sha256
    task, num_labels, max_rank = req.task, req.num_labels, req.max_rank
    base_path, base_source = req.base_path, req.base_source
    allow_patterns = list(req.allow_patterns) or None
    ignore_patterns = list(req.ignore_patterns) or None
    if task is not None and task not in TASKS:
        raise InstallError(
            INVALID_SOURCE, f"--task must be one of {', '.join(TASKS)}, got {task!r}"
        )
    if num_labels is not None and num_labels < 1:
        raise InstallError(INVALID_SOURCE, f"--num-labels must be at least 1, got {num_labels}")
    if max_rank is not None and max_rank < 1:
        raise InstallError(INVALID_SOURCE, f"--max-rank must be at least 1, got {max_rank}")
    if kind == "adapter":
        if base_path is None:
            raise InstallError(
                INVALID_SOURCE, "an adapter install needs --base-path (the installed base folder)"
            )
        if not (base_path / "config.json").is_file():
            raise InstallError(
                INVALID_BASE_MODEL, f"no installed base model at {base_path} (config.json missing)"
            )
    if checkpoint and kind != "base":
        raise InstallError(INVALID_SOURCE, "--checkpoint applies to a base model only")
    if not dest.is_dir():
        raise InstallError(INVALID_SOURCE, f"--dest {dest} is not an existing folder")

    target = Target(dest, namespace, kind, name)
    opts = {
        "task": task,
        "num_labels": num_labels,
        "base_path": base_path,
        "base_source": base_source,
        "max_rank": max_rank,
    }
    # A pinned revision names the folder before any network call: a finished install is then a
    # no-op even when the source is unreachable.
    pinned = None
    if not checkpoint and revision:
        is_commit = re.fullmatch(r"[0-9a-f]{40}", revision) is not None
        if is_commit or not source.startswith("hf://"):
            pinned = read_manifest(target.final_path(revision))
    if pinned is not None:
        return _already(pinned, target.final_path(revision), opts)
    src = open_source(
        source,
        revision=revision,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        sha256=sha256,
        max_unpacked_bytes=req.max_unpacked_bytes,
    )
    listing = src.list(deadline)
    if listing.resolved_revision:
        resolved = listing.resolved_revision
    elif revision:
        resolved = check_revision_dirname(revision)
    else:
        resolved = content_digest(listing.files)
    dirname = resolved
    ckpt_src = ckpt_listing = None
    if checkpoint:
        ckpt_src = open_source(checkpoint)
        ckpt_listing = ckpt_src.list(deadline)
        if len(ckpt_listing.files) != 1 or ckpt_listing.archive:
            raise InstallError(INVALID_SOURCE, f"--checkpoint {checkpoint!r} must name one file")
        dirname += _suffix_for_checkpoint(ckpt_listing, strict, task, num_labels)
    final = target.final_path(dirname)

    done = read_manifest(final)
    if done is not None:
        return _already(done, final, opts)
    with target.lock(deadline):
        done = read_manifest(final)
        if done is not None:
            return _already(done, final, opts)
        if final.exists():  # no manifest: not ours or a broken leftover; never overwrite
            raise InstallError(
                INTERNAL_ERROR,
                f"{final} exists without a complete {MANIFEST_NAME}; remove it first",
            )
        staging = target.staging_path(
            {
                "source": source,
                "dir": dirname,
                "allow": allow_patterns,
                "ignore": ignore_patterns,
                "sha256": sha256,
            }
        )
        files_dir = staging / "files"

        def discard_staging() -> None:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # a refusal leaves no empty folder either
                target.staging_parent.rmdir()

        try:
            files_dir.mkdir(parents=True, exist_ok=True)
            _prune_unlisted(files_dir, listing)
            report = _stage_and_promote(
                req,
                src,
                listing,
                staging,
                files_dir,
                final,
                target=target,
                resolved=resolved,
                ckpt_src=ckpt_src,
                ckpt_listing=ckpt_listing,
                deadline=deadline,
            )
        except InstallError as exc:
            if exc.reason not in RESUMABLE:
                discard_staging()
            raise
        except Exception as exc:  # a full volume (ENOSPC/EDQUOT) is never kept to resume from
            if not is_space_exhausted(exc):
                raise
            discard_staging()
            raise space_exhausted_error(
                exc, dest, what=f"{target.namespace}/{target.name}"
            ) from exc
        discard_staging()  # leave no empty folders behind
        return report


def _already(manifest: dict, final: Path, opts: dict) -> dict:
    """The report of a finished install, re-validated when this run asks for something else.

    A base installed for another ``task``/``num_labels``, or an adapter checked against another
    base folder, base source or a larger ``max_rank``, is validated again (read-only) against
    the new request; the files stay as they are.

    Raises:
        InstallError: The existing install does not satisfy this request.
    """
    report = dict(manifest["report"])
    if report.get("kind") == "adapter":
        base = manifest.get("base") or {}
        stale = (
            str(opts["base_path"]) != base.get("path")
            or _recorded_uri(opts["base_source"]) != base.get("source")
            or (opts["max_rank"] is not None and report.get("rank", 0) > opts["max_rank"])
        )
        if stale:
            from .validate_adapter import validate_adapter

            facts = validate_adapter(
                final,
                base_path=opts["base_path"],
                base_source=opts["base_source"],
                max_rank=opts["max_rank"],
            )
            report.update(_adapter_fields(facts))
    elif (opts["task"] is not None and opts["task"] != report.get("task")) or (
        opts["num_labels"] is not None and opts["num_labels"] != report.get("numLabels")
    ):
        from .validate_base import validate_base

        facts = validate_base(final, task=opts["task"], num_labels=opts["num_labels"])
        report.update(_base_fields(facts))
    report = {k: v for k, v in report.items() if v is not None}
    report["message"] = f"already installed at {final}"
    report["path"] = str(final)
    return report


def _recorded_uri(uri: str | None) -> str | None:
    """A URI as lorafleet.json records it (no user-info, no query string)."""
    return public_url(uri) if uri else None


def _base_fields(facts) -> dict:
    return {
        "task": facts.task,
        "numLabels": facts.num_labels,
        "architecture": facts.architecture,
        "labels": facts.labels,
    }


def _adapter_fields(facts) -> dict:
    return {
        "rank": facts.rank,
        "loraAlpha": facts.lora_alpha,
        "targetModules": facts.target_modules,
        "modulesToSave": facts.modules_to_save,
        "numLabels": facts.num_labels,
        "labels": facts.labels,
        "baseMatches": facts.base_matches,
    }


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


def _stage_and_promote(
    req: InstallRequest,
    src,
    listing: Listing,
    staging: Path,
    files_dir: Path,
    final: Path,
    *,
    target: Target,
    resolved: str,
    ckpt_src,
    ckpt_listing,
    deadline: Deadline,
) -> dict:
    kind, strict, task, num_labels = req.kind, req.strict, req.task, req.num_labels
    max_rank, base_path, base_source = req.max_rank, req.base_path, req.base_source
    progress_file, progress_stream = req.progress_file, req.progress_stream
    total = listing.total_bytes
    if ckpt_listing is not None and total is not None:
        ckpt_total = ckpt_listing.total_bytes
        total = None if ckpt_total is None else total + ckpt_total
    if total is not None:
        check_space(
            target.root,
            max(0, total - folder_bytes(staging)),
            what=f"{target.namespace}/{target.name}",
        )

    label = f"{target.namespace}/{target.name}"
    with ProgressReporter(
        lambda: folder_bytes(staging),
        total,
        progress_file=progress_file,
        stream=progress_stream,
        label=label,
    ):
        fetched = src.download(listing, files_dir, deadline) or {}
        ckpt_file = None
        if ckpt_src is not None:
            ckpt_dir = staging / "checkpoint"
            ckpt_src.download(ckpt_listing, ckpt_dir, deadline)
            ckpt_file = ckpt_dir / ckpt_listing.files[0].path
    shutil.rmtree(files_dir / ".cache", ignore_errors=True)
    deadline.check("verifying")

    digests: dict[str, tuple[Digests, int]] = {}
    checked = [] if listing.archive else listing.files
    for f in checked:
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
        digests[f.path] = (d, path.stat().st_mtime_ns)
    if ckpt_file is not None:
        try:
            ckpt_digest = verify_file(
                ckpt_file, ckpt_listing.files[0].expected, name=ckpt_listing.files[0].path
            )
        except InstallError:
            ckpt_file.unlink(missing_ok=True)
            raise

    deadline.check("validating")
    report: dict = {"ok": True, "reason": INSTALLED, "kind": kind, "resolvedRevision": resolved}
    if kind == "base":
        from .validate_base import validate_base

        facts = validate_base(
            files_dir,
            task=task,
            num_labels=num_labels,
            checkpoint_file=ckpt_file,
            checkpoint_name=ckpt_listing.files[0].path if ckpt_listing else None,
            strict=strict,
        )
        findings = facts.findings
        report.update(_base_fields(facts))
    else:
        from .validate_adapter import validate_adapter

        facts = validate_adapter(
            files_dir, base_path=base_path, base_source=base_source, max_rank=max_rank
        )
        findings = facts.findings
        report.update(_adapter_fields(facts))
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

    entries = []
    for path in sorted(p for p in files_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(files_dir).as_posix()
        known = digests.get(rel)
        d = known[0] if known and known[1] == path.stat().st_mtime_ns else file_digests(path)
        entries.append({"path": rel, "size": d.size, "sha256": d.sha256})
    size = sum(e["size"] for e in entries)
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
    report.update(sizeBytes=size, path=str(final), message=message)
    report = {k: v for k, v in report.items() if v is not None}
    manifest = {
        "apiVersion": "lorafleet.io/v1alpha1",
        "kind": "BaseModel" if kind == "base" else "LoraAdapter",
        "namespace": target.namespace,
        "name": target.name,
        "installedAt": now_rfc3339(),
        "source": src.describe(),
        "resolvedRevision": resolved,
        "checkpoint": (
            {**ckpt_src.describe(), "sha256": ckpt_digest.sha256, "strict": strict}
            if ckpt_src is not None
            else None
        ),
        "files": entries,
        "sizeBytes": size,
        "findings": [
            {**f, "message": redact(f["message"], _uri_secrets(src.uri, base_source))}
            for f in findings
        ],
        "report": report,
    }
    if kind == "adapter":
        manifest["base"] = {
            "path": str(base_path),
            "source": _recorded_uri(base_source),
            "declared": facts.base_model,
        }
    write_manifest(files_dir, manifest)
    deadline.check("promoting the install")
    promote(files_dir, final)
    return report


def remove(path: str | os.PathLike) -> dict:
    """Remove an installed revision folder (must hold ``lorafleet.json``), atomically.

    Args:
        path: ``ROOT/<ns>/<kind>/<name>/<revision>``.

    Returns:
        A report with reason ``Removed`` (also when nothing was there), or a failure.
    """
    from .staging import remove_tree_atomically

    target = Path(path)
    if not target.exists():
        return {
            "ok": True,
            "reason": REMOVED,
            "message": f"nothing at {target}",
            "path": str(target),
        }
    if not (target / MANIFEST_NAME).is_file():
        return _fail(
            INVALID_SOURCE, f"{target} holds no {MANIFEST_NAME}; refusing to delete it", "remove"
        )
    try:
        remove_tree_atomically(target)
    except OSError as exc:
        return _fail(INTERNAL_ERROR, f"cannot remove {target}: {exc}", "remove")
    return {"ok": True, "reason": REMOVED, "message": f"removed {target}", "path": str(target)}
