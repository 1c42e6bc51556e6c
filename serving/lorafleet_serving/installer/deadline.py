"""The install's time budget (``--timeout``) and the retry policy for transient errors.

Transient network errors are retried with exponential backoff (tenacity) until they succeed
or the deadline passes; a passed deadline becomes ``InstallError(Timeout)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from .errors import TIMEOUT, InstallError

T = TypeVar("T")


class Deadline:
    """A point in time after which the install gives up.

    Args:
        timeout_s: Seconds from now; None means no limit.
    """

    def __init__(self, timeout_s: float | None) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"--timeout must be positive seconds, got {timeout_s}")
        self.timeout_s = timeout_s
        self._end = None if timeout_s is None else time.monotonic() + timeout_s
        # The last transient error being retried, for a Timeout message that says why.
        self.last_retried: str | None = None

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a limit."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self._end is not None and time.monotonic() >= self._end

    def check(self, what: str) -> None:
        """Raise ``InstallError(Timeout)`` naming ``what`` if the deadline has passed."""
        if self.expired():
            raise InstallError(TIMEOUT, f"gave up after {self.timeout_s:g} s while {what}")


def with_retries(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    deadline: Deadline,
    what: str,
    max_attempts: int = 8,
) -> T:
    """Call ``fn``, retrying transient failures with exponential backoff (0.5 s .. 10 s).

    Args:
        fn: The operation (no arguments).
        is_transient: True for errors worth retrying (connection resets, 5xx, 429).
        deadline: Retries stop when it passes.
        what: Description for the Timeout message, e.g. ``"downloading config.json"``.
        max_attempts: Upper bound on attempts.

    Returns:
        ``fn()``'s result.

    Raises:
        InstallError: ``Timeout`` when the deadline passed while retrying.
        Exception: The last non-transient (or final transient) error from ``fn``.
    """
    stop = stop_after_attempt(max_attempts)
    remaining = deadline.remaining()
    if remaining is not None:
        stop = stop | stop_after_delay(remaining)

    def note(state) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            deadline.last_retried = f"{what}: {type(exc).__name__}: {exc}"

    retrying = Retrying(
        stop=stop,
        wait=wait_exponential(multiplier=0.5, max=10),
        retry=retry_if_exception(is_transient),
        before_sleep=note,
        reraise=True,
    )
    try:
        return retrying(fn)
    except RetryError as exc:  # pragma: no cover - reraise=True makes this rare
        raise exc.last_attempt.exception() from exc
    except Exception as exc:
        if is_transient(exc) and deadline.expired():
            raise InstallError(
                TIMEOUT, f"gave up after {deadline.timeout_s:g} s while {what}: {exc}"
            ) from exc
        raise
