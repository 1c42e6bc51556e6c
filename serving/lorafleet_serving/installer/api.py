"""``install()``: fetch, verify, validate and atomically place one base model or adapter.

Pipeline: resolve the source (revision -> commit, file list with sizes and digests) ->
quick no-op if ``ROOT/<ns>/<kind>/<name>/<revision>/lorafleet.json`` exists -> lock the
target -> space check -> download into ``ROOT/.staging/...`` (resumable) with progress ->
verify sizes/digests -> validate -> leave out pickles -> write ``lorafleet.json`` -> one
``rename`` to the final path. Failures never leave anything at the final path; a refusal or a
full volume (``InsufficientSpace``) also removes the staged files, so the space is free again.
This module resolves the source and decides whether the install is already there; the staged
half, under the target's lock, is :mod:`.pipeline`.
Every message that leaves is redacted (:mod:`.redaction`), including the source URIs' own
query values and user-info.

Revision folder names: the resolved commit for ``hf://``; otherwise the ``revision`` given by
the user, else the content digest of :func:`lorafleet_serving.installer.sources.content_digest`
(``sha256-<16 hex>``). When a checkpoint is applied over a base, ``-ckpt-<12 hex>`` is
appended (a digest of the checkpoint's identity, ``strict``, ``task`` and ``num_labels``),
since the installed weights then differ from the source's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import traceback
from pathlib import Path

from ..types import TASKS
from .deadline import Deadline
from .errors import (
    INTERNAL_ERROR,
    INVALID_BASE_MODEL,
    INVALID_SOURCE,
    REMOVED,
    TIMEOUT,
    InstallError,
)
from .manifest import MANIFEST_NAME, read_manifest, recorded_uri
from .pipeline import ResolvedSources, stage_and_promote
from .redaction import redact, uri_secrets
from .request import InstallRequest
from .sources import Listing, content_digest, open_source
from .staging import Target, check_revision_dirname

KINDS = ("base", "adapter")


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
    secrets = uri_secrets(req.source, req.checkpoint, req.base_source)
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


def _suffix_for_checkpoint(ckpt_listing: Listing, strict: bool, task, num_labels) -> str:
    """``-ckpt-<12 hex>``: a digest of the checkpoint's content and the options applying it."""
    ident = json.dumps([content_digest(ckpt_listing.files), strict, task, num_labels])
    return "-ckpt-" + hashlib.sha256(ident.encode()).hexdigest()[:12]


def _install(req: InstallRequest, deadline: Deadline) -> dict:
    """Install as ``req`` says, once :func:`install` has checked the kind and the deadline.

    A finished install (its ``lorafleet.json`` present) is a no-op, checked before any
    network call for a pinned revision, then again after listing and again under the
    target's lock.

    Returns:
        The report dict.

    Raises:
        InstallError: Any install failure, with its reason.
    """
    _check_request(req)
    target = Target(req.dest, req.namespace, req.kind, req.name)
    # A pinned revision names the folder before any network call: a finished install is then a
    # no-op even when the source is unreachable.
    pinned = _pinned_manifest(req, target)
    if pinned is not None:
        return _already(pinned, target.final_path(req.revision), req)
    plan = _resolve(req, target, deadline)
    done = read_manifest(plan.final)
    if done is not None:
        return _already(done, plan.final, req)
    with target.lock(deadline):
        done = read_manifest(plan.final)
        if done is not None:
            return _already(done, plan.final, req)
        if plan.final.exists():  # no manifest: not ours or a broken leftover; never overwrite
            raise InstallError(
                INTERNAL_ERROR,
                f"{plan.final} exists without a complete {MANIFEST_NAME}; remove it first",
            )
        return stage_and_promote(req, plan, target, deadline)


def _check_request(req: InstallRequest) -> None:
    """Check the request's options against each other, before anything is read or fetched.

    Checks, in order: ``task`` is known; ``num_labels`` and ``max_rank`` are at least 1; an
    adapter names an installed base (``base_path`` with a ``config.json``); a checkpoint goes
    with a base only; ``dest`` is an existing folder.

    Raises:
        InstallError: ``InvalidSource``, or ``InvalidBaseModel`` when ``base_path`` holds no
            installed base.
    """
    task, num_labels, max_rank, base_path = req.task, req.num_labels, req.max_rank, req.base_path
    if task is not None and task not in TASKS:
        raise InstallError(
            INVALID_SOURCE, f"--task must be one of {', '.join(TASKS)}, got {task!r}"
        )
    if num_labels is not None and num_labels < 1:
        raise InstallError(INVALID_SOURCE, f"--num-labels must be at least 1, got {num_labels}")
    if max_rank is not None and max_rank < 1:
        raise InstallError(INVALID_SOURCE, f"--max-rank must be at least 1, got {max_rank}")
    if req.kind == "adapter":
        if base_path is None:
            raise InstallError(
                INVALID_SOURCE, "an adapter install needs --base-path (the installed base folder)"
            )
        if not (base_path / "config.json").is_file():
            raise InstallError(
                INVALID_BASE_MODEL, f"no installed base model at {base_path} (config.json missing)"
            )
    if req.checkpoint and req.kind != "base":
        raise InstallError(INVALID_SOURCE, "--checkpoint applies to a base model only")
    if not req.dest.is_dir():
        raise InstallError(INVALID_SOURCE, f"--dest {req.dest} is not an existing folder")


def _pinned_manifest(req: InstallRequest, target: Target) -> dict | None:
    """The manifest of a finished install named by the request alone, without the network.

    Only a revision that names the folder by itself qualifies: a 40-hex commit, or any
    revision of a non-``hf://`` source; never with a checkpoint (its digest is in the name).

    Returns:
        The manifest dict, or None (not pinned, or not installed yet).
    """
    if req.checkpoint or not req.revision:
        return None
    is_commit = re.fullmatch(r"[0-9a-f]{40}", req.revision) is not None
    if is_commit or not req.source.startswith("hf://"):
        return read_manifest(target.final_path(req.revision))
    return None


def _resolve(req: InstallRequest, target: Target, deadline: Deadline) -> ResolvedSources:
    """Open and list the source (and the checkpoint), and name the revision folder.

    Raises:
        InstallError: ``InvalidSource`` (bad URI, a revision that cannot name a folder, a
            checkpoint that is not exactly one file), or what listing the source raises.
    """
    src = open_source(
        req.source,
        revision=req.revision,
        allow_patterns=list(req.allow_patterns) or None,
        ignore_patterns=list(req.ignore_patterns) or None,
        sha256=req.sha256,
        max_unpacked_bytes=req.max_unpacked_bytes,
    )
    listing = src.list(deadline)
    if listing.resolved_revision:
        resolved = listing.resolved_revision
    elif req.revision:
        resolved = check_revision_dirname(req.revision)
    else:
        resolved = content_digest(listing.files)
    if not req.checkpoint:
        return ResolvedSources(src, listing, resolved, resolved, target.final_path(resolved))
    ckpt_src = open_source(req.checkpoint)
    ckpt_listing = ckpt_src.list(deadline)
    if len(ckpt_listing.files) != 1 or ckpt_listing.archive:
        raise InstallError(INVALID_SOURCE, f"--checkpoint {req.checkpoint!r} must name one file")
    dirname = resolved + _suffix_for_checkpoint(ckpt_listing, req.strict, req.task, req.num_labels)
    final = target.final_path(dirname)
    return ResolvedSources(src, listing, resolved, dirname, final, ckpt_src, ckpt_listing)


def _already(manifest: dict, final: Path, req: InstallRequest) -> dict:
    """The report of a finished install, re-validated when this run asks for something else.

    A base installed for another ``task``/``num_labels``, or an adapter checked against another
    base folder, base source or a larger ``max_rank``, is validated again (read-only) against
    the new request; the files stay as they are.

    Args:
        manifest: The finished install's ``lorafleet.json``.
        final: Its folder.
        req: This run's request.

    Raises:
        InstallError: The existing install does not satisfy this request.
    """
    report = dict(manifest["report"])
    if report.get("kind") == "adapter":
        base = manifest.get("base") or {}
        stale = (
            str(req.base_path) != base.get("path")
            or recorded_uri(req.base_source) != base.get("source")
            or (req.max_rank is not None and report.get("rank", 0) > req.max_rank)
        )
        if stale:
            from .validate_adapter import validate_adapter

            facts = validate_adapter(
                final,
                base_path=req.base_path,
                base_source=req.base_source,
                max_rank=req.max_rank,
            )
            report.update(facts.report_fields())
    elif (req.task is not None and req.task != report.get("task")) or (
        req.num_labels is not None and req.num_labels != report.get("numLabels")
    ):
        from .validate_base import validate_base

        facts = validate_base(final, task=req.task, num_labels=req.num_labels)
        report.update(facts.report_fields())
    report = {k: v for k, v in report.items() if v is not None}
    report["message"] = f"already installed at {final}"
    report["path"] = str(final)
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
