"""The installer's command line for one BaseModel or LoraAdapter (docs/interfaces.md section 1).

One builder for both places that run the installer: the install Job on a cluster
(:func:`lorafleet_operator.jobs.build_base_install_job` / ``build_adapter_install_job``) and
``lorafleet up`` (:mod:`lorafleet_operator.local.install`), so the same spec is installed with
the same arguments everywhere. The caller adds where the report and progress go
(``--report-file``, ``--progress-file``) and ``--timeout``. No secret is ever an argument: the
installer reads credentials from its environment.
"""

from __future__ import annotations

from .models import BaseModelSpec, LoraAdapterSpec, Source


def source_args(source: Source) -> list[str]:
    """Arguments naming what to fetch: ``--source`` and its revision, patterns and digest."""
    args = ["--source", source.uri]
    if source.revision:
        args += ["--revision", source.revision]
    for pattern in source.allow_patterns or []:
        args += ["--allow-pattern", pattern]
    for pattern in source.ignore_patterns or []:
        args += ["--ignore-pattern", pattern]
    if source.sha256:
        args += ["--sha256", source.sha256]
    return args


def base_install_args(namespace: str, name: str, spec: BaseModelSpec, *, dest: str) -> list[str]:
    """``lorafleet-install base ...`` arguments (after the program name) of a BaseModel.

    ``--num-labels`` is ``spec.numLabels``, else the number of ``spec.id2label`` entries (the
    head must have one output per named label), else absent (the checkpoint's own).

    Args:
        namespace: The BaseModel's namespace.
        name: Its name.
        spec: Its parsed spec.
        dest: The models root the installer writes under (``--dest``).

    Returns:
        The argument list, without report/progress files and timeout.
    """
    args = ["base", "--namespace", namespace, "--name", name, *source_args(spec.source)]
    args += ["--dest", dest, "--task", str(spec.task)]
    num_labels = spec.num_labels
    if num_labels is None and spec.id2label:
        num_labels = len(spec.id2label)
    if num_labels is not None:
        args += ["--num-labels", str(num_labels)]
    if spec.checkpoint is not None:
        args += ["--checkpoint", spec.checkpoint.uri]
        if not spec.checkpoint.strict:
            args.append("--no-strict")
    return [*args, "--max-rank", str(spec.serving.max_rank)]


def adapter_install_args(
    namespace: str,
    name: str,
    spec: LoraAdapterSpec,
    *,
    dest: str,
    base_path: str,
    base_source: str | None,
    max_rank: int | None,
) -> list[str]:
    """``lorafleet-install adapter ...`` arguments (after the program name) of a LoraAdapter.

    Args:
        namespace: The LoraAdapter's namespace.
        name: Its name.
        spec: Its parsed spec.
        dest: The models root (``--dest``).
        base_path: Install folder of its base (the BaseModel's ``status.path``).
        base_source: The base's ``source.uri`` (compared with the adapter's
            ``base_model_name_or_path``), or None.
        max_rank: The base's ``serving.maxRank``, or None for no limit.

    Returns:
        The argument list, without report/progress files and timeout.
    """
    args = ["adapter", "--namespace", namespace, "--name", name, *source_args(spec.source)]
    args += ["--dest", dest, "--base-path", base_path]
    if base_source:
        args += ["--base-source", base_source]
    if max_rank is not None:
        args += ["--max-rank", str(max_rank)]
    return args
