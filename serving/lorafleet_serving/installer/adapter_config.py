"""Reading and checking an adapter's ``adapter_config.json`` on its own, before any weight.

Checks, in order: the file is there and holds one JSON object; ``peft_type`` is exactly
``LORA``; ``r`` is a positive integer; every field peft reads has the type peft needs
(patterns, module lists, numbers, flags, ``layers_to_transform``, ``exclude_modules``,
``task_type``); ``r`` and ``rank_pattern`` are within ``--max-rank`` (``RankExceedsLimit``);
something is targeted. Every other refusal is ``InvalidAdapter``, naming the field.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import INVALID_ADAPTER, RANK_EXCEEDS_LIMIT, InstallError


def read_adapter_config(folder: Path) -> dict:
    """Read ``adapter_config.json``: present, valid JSON, one object.

    Raises:
        InstallError: ``InvalidAdapter`` (a folder with ``config.json`` instead is named as
            a full model).
    """
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        hint = (
            " (it holds config.json: a full model belongs in a BaseModel)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise InstallError(INVALID_ADAPTER, f"no adapter_config.json in the source{hint}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise InstallError(
            INVALID_ADAPTER, f"adapter_config.json is not valid JSON: {exc}"
        ) from exc
    if not isinstance(cfg, dict):
        raise InstallError(INVALID_ADAPTER, "adapter_config.json does not hold a JSON object")
    return cfg


def check_adapter_config(cfg: dict, max_rank: int | None) -> None:
    """Check ``adapter_config.json`` alone, in the order of the module doc.

    Args:
        cfg: The config (:func:`read_adapter_config`).
        max_rank: Largest ``r`` accepted, or None.

    Raises:
        InstallError: ``InvalidAdapter`` or ``RankExceedsLimit``.
    """
    peft_type = str(cfg.get("peft_type", ""))
    if peft_type != "LORA":  # peft's PeftType is case-sensitive
        raise InstallError(
            INVALID_ADAPTER,
            f"adapter_config.json: peft_type is {peft_type or 'missing'!r}, not 'LORA'",
        )
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InstallError(
            INVALID_ADAPTER, f"adapter_config.json: r must be a positive integer, got {r!r}"
        )
    _check_config_types(cfg)
    if max_rank is not None:
        if r > max_rank:
            raise InstallError(
                RANK_EXCEEDS_LIMIT, f"adapter_config.json: r={r} exceeds maxRank {max_rank}"
            )
        rank_pattern = cfg.get("rank_pattern") or {}
        over = {k: int(v) for k, v in rank_pattern.items() if int(v) > max_rank}
        if over:
            raise InstallError(
                RANK_EXCEEDS_LIMIT,
                f"adapter_config.json: rank_pattern {over} exceeds maxRank {max_rank}",
            )
    if not cfg.get("target_modules") and not cfg.get("target_parameters"):
        raise InstallError(INVALID_ADAPTER, "adapter_config.json: target_modules is empty")


def _check_config_types(cfg: dict) -> None:
    """Refuse ``adapter_config.json`` fields of the wrong type (peft would fail on them later).

    Raises:
        InstallError: ``InvalidAdapter`` naming the field and what it must be.
    """
    _check_pattern_fields(cfg)
    _check_module_fields(cfg)
    _check_number_and_flag_fields(cfg)
    _check_layer_and_task_fields(cfg)


def _bad(cfg: dict, name: str, what: str) -> InstallError:
    """The ``InvalidAdapter`` error for field ``name``: what it must be, what it is."""
    return InstallError(
        INVALID_ADAPTER, f"adapter_config.json: {name} must be {what}, got {cfg[name]!r}"
    )


def _is_finite_number(value: object) -> bool:
    """An int or float (not a bool), neither infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_pattern_fields(cfg: dict) -> None:
    """``rank_pattern``/``alpha_pattern``: objects of regular expression -> positive number.

    A ``rank_pattern`` value must be a whole number.

    Raises:
        InstallError: ``InvalidAdapter``.
    """
    for name in ("rank_pattern", "alpha_pattern"):
        value = cfg.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _bad(cfg, name, "an object of module pattern -> number")
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise _bad(cfg, name, f"positive numbers (entry {key!r})")
            if name == "rank_pattern" and number != int(number):
                raise _bad(cfg, name, f"positive integers (entry {key!r})")
            try:
                re.compile(key)
            except re.error as exc:
                raise _bad(
                    cfg, name, f"valid regular expressions as keys ({key!r}: {exc})"
                ) from exc


def _check_module_fields(cfg: dict) -> None:
    """The module lists: ``target_modules``, ``modules_to_save``, ``target_parameters``.

    ``target_modules`` may also be one regular expression; the others are lists of names.

    Raises:
        InstallError: ``InvalidAdapter``.
    """
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as exc:
            raise _bad(cfg, "target_modules", f"a valid regular expression ({exc})") from exc
    elif targets is not None and not (
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
    ):
        raise _bad(cfg, "target_modules", "a list of module names or a regular expression")
    for name in ("modules_to_save", "target_parameters"):
        value = cfg.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise _bad(cfg, name, "a list of module names")


def _check_number_and_flag_fields(cfg: dict) -> None:
    """``lora_alpha`` finite, ``lora_dropout`` in [0, 1), the boolean switches true or false.

    Raises:
        InstallError: ``InvalidAdapter``.
    """
    if "lora_alpha" in cfg and not _is_finite_number(cfg["lora_alpha"]):
        raise _bad(cfg, "lora_alpha", "a finite number")
    dropout = cfg.get("lora_dropout")
    if dropout is not None and not (_is_finite_number(dropout) and 0 <= dropout < 1):
        raise _bad(cfg, "lora_dropout", "a number in [0, 1)")
    for name in ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out", "inference_mode"):
        if cfg.get(name) is not None and not isinstance(cfg[name], bool):
            raise _bad(cfg, name, "true or false")


def _check_layer_and_task_fields(cfg: dict) -> None:
    """``layers_to_transform``, ``exclude_modules`` and ``task_type``.

    Layer indexes; names or a regular expression; one of peft's ``TaskType`` values.

    Raises:
        InstallError: ``InvalidAdapter``.
    """
    layers = cfg.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool))
        or (isinstance(layers, list) and all(isinstance(n, int) for n in layers))
    ):
        raise _bad(cfg, "layers_to_transform", "a layer index or a list of them")
    excluded = cfg.get("exclude_modules")
    if excluded is not None and not (
        isinstance(excluded, str)
        or (isinstance(excluded, list) and all(isinstance(m, str) for m in excluded))
    ):
        raise _bad(cfg, "exclude_modules", "a list of module names or a regular expression")
    task_type = cfg.get("task_type")
    if task_type is not None:
        from peft import TaskType

        if task_type not in {t.value for t in TaskType}:
            raise _bad(cfg, "task_type", f"one of {', '.join(t.value for t in TaskType)} or null")
