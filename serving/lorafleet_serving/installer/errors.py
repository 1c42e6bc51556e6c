"""Install failures as ``InstallError(reason, message)``; the reasons are the words of the report.

Reasons are the CamelCase words of the install report (docs/interfaces.md section 2): a user
can search for them and the operator copies them into a condition's ``reason``.
"""

from __future__ import annotations

from .redaction import redact

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
SIZE_MISMATCH = "SizeMismatch"
ARCHIVE_TOO_LARGE = "ArchiveTooLarge"
TIMEOUT = "Timeout"
INVALID_SOURCE = "InvalidSource"
INVALID_ADAPTER = "InvalidAdapter"
UNSUPPORTED_ADAPTER = "UnsupportedAdapter"
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
        SIZE_MISMATCH,
        ARCHIVE_TOO_LARGE,
        TIMEOUT,
        INVALID_SOURCE,
        INVALID_ADAPTER,
        UNSUPPORTED_ADAPTER,
        INVALID_BASE_MODEL,
        INTERNAL_ERROR,
    }
)


class InstallError(Exception):
    """An install that cannot succeed, with the report's ``reason`` word and a message.

    Args:
        reason: One of the CamelCase reason constants of this module.
        message: What is wrong and where (file, key, module); secrets in it are redacted
            (:func:`lorafleet_serving.installer.redaction.redact`).
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown install failure reason {reason!r}")
        self.reason = reason
        self.message = redact(message)
        super().__init__(f"{reason}: {self.message}")
