"""Install failures as ``InstallError(reason, message)``; the reasons are the words of the report.

Reasons are the CamelCase words of the install report (docs/interfaces.md section 2): a user
can search for them and the operator copies them into a condition's ``reason``.
"""

from __future__ import annotations

import os
import re

INSTALLED = "Installed"
REMOVED = "Removed"

SOURCE_NOT_FOUND = "SourceNotFound"
UNAUTHORIZED = "Unauthorized"
CHECKSUM_MISMATCH = "ChecksumMismatch"
MISSING_SHARD = "MissingShard"
UNSAFE_CHECKPOINT = "UnsafeCheckpoint"
KEYS_MISMATCH = "KeysMismatch"
SHAPE_MISMATCH = "ShapeMismatch"
NOT_A_BASE_MODEL = "NotABaseModel"
TARGET_MODULES_NOT_FOUND = "TargetModulesNotFound"
NO_ADAPTER_WEIGHTS_APPLIED = "NoAdapterWeightsApplied"
EMPTY_ADAPTER_WEIGHTS = "EmptyAdapterWeights"
RANK_EXCEEDS_LIMIT = "RankExceedsLimit"
INSUFFICIENT_SPACE = "InsufficientSpace"
TIMEOUT = "Timeout"
INVALID_SOURCE = "InvalidSource"
INVALID_ADAPTER = "InvalidAdapter"
INVALID_BASE_MODEL = "InvalidBaseModel"
INTERNAL_ERROR = "InternalError"

FAILURE_REASONS = frozenset(
    {
        SOURCE_NOT_FOUND,
        UNAUTHORIZED,
        CHECKSUM_MISMATCH,
        MISSING_SHARD,
        UNSAFE_CHECKPOINT,
        KEYS_MISMATCH,
        SHAPE_MISMATCH,
        NOT_A_BASE_MODEL,
        TARGET_MODULES_NOT_FOUND,
        NO_ADAPTER_WEIGHTS_APPLIED,
        EMPTY_ADAPTER_WEIGHTS,
        RANK_EXCEEDS_LIMIT,
        INSUFFICIENT_SPACE,
        TIMEOUT,
        INVALID_SOURCE,
        INVALID_ADAPTER,
        INVALID_BASE_MODEL,
        INTERNAL_ERROR,
    }
)

# Environment variables whose values are secrets: never echoed in a message or log line.
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HTTPS_BEARER_TOKEN",
)

_URL_QUERY = re.compile(r"(\w+://[^\s?#'\"]+)\?[^\s'\"]*")  # any scheme: hf://x?token=
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """Remove secrets from ``text``: values of the secret env vars, URL user-info and queries.

    Query strings are dropped because presigned URLs carry signatures there.

    Args:
        text: Any message about to be logged or reported.

    Returns:
        The text with each secret replaced by ``***``.
    """
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    return _URL_QUERY.sub(r"\1?***", text)


class InstallError(Exception):
    """An install that cannot succeed, with the report's ``reason`` word and a message.

    Args:
        reason: One of the CamelCase reason constants of this module.
        message: What is wrong and where (file, key, module); never holds a secret.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown install failure reason {reason!r}")
        self.reason = reason
        self.message = redact(message)
        super().__init__(f"{reason}: {self.message}")
