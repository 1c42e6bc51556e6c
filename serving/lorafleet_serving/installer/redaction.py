"""Secrets taken out of every text the installer lets out: reports, messages, logs, manifests.

Two ways, both always applied by :func:`redact`:

- By value: the values of the secret environment variables (:data:`SECRET_ENV_VARS`), the
  password of every URL in :data:`URL_ENV_VARS` (``HF_ENDPOINT=https://user:pass@mirror``; a
  user name without a password, ``https://TOKEN@host``, counts as one), and any extra values the
  caller knows (:func:`url_secrets` of the source URIs: their query values and password), each
  also in its percent-encoded form.
- By shape: every query string (``scheme://host/path?...``, and ``/path?name=...`` as HTTP
  libraries print it: ``Max retries exceeded with url: /x.tar?X-Amz-Signature=...``), and
  every URL user-info (``scheme://user:pass@host``).

:class:`RedactingStream` applies it line by line to a text stream (the CLI wraps its stdout
and stderr, so tracebacks, library warnings and progress lines are covered as well).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from typing import TextIO
from urllib.parse import parse_qsl, quote, unquote, urlsplit

#: Environment variables whose values are secrets, redacted wherever they appear.
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HTTPS_BEARER_TOKEN",
)
#: Environment variables holding URLs whose user-info (``user:password@``) is secret.
URL_ENV_VARS = (
    "HF_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
)
#: Shorter values are not redacted by value (they would blank ordinary words).
MIN_SECRET_CHARS = 4
MASK = "***"

_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
_URL_USERINFO = re.compile(rf"({_SCHEME})[^/@\s'\"<>]+@")
_URL_QUERY = re.compile(rf"({_SCHEME}[^\s?#'\"<>]*)\?[^\s'\"<>]*")
# "/path?name=value" without a scheme (urllib3: "... with url: /a.tar?X-Amz-Signature=..."),
# also percent-encoded ("%3Fname%3Dvalue"); a "?" after a space is prose, not a query.
_BARE_QUERY = re.compile(r"((?<=[^\s?])\?|%3[Ff])(?=[\w.~%-]+(?:=|%3[Dd]))[^\s'\"<>]*")


def url_secrets(url: str | None) -> list[str]:
    """The secret parts of one URL: its password (or a user name alone: a token) and query values.

    A user name beside a password is not secret and is kept (it may be an ordinary word).

    Args:
        url: Any URI (``https://u:p@host/x?sig=...``); None or a URL without secrets gives [].

    Returns:
        The values, raw and percent-decoded, at least :data:`MIN_SECRET_CHARS` long.
    """
    if not url or "://" not in url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password if parts.password is not None else parts.username]
        found += [value for _name, value in parse_qsl(parts.query, keep_blank_values=False)]
        found += [raw.partition("=")[2] for raw in parts.query.split("&")]
    except ValueError:
        return []
    values = set()
    for value in found:
        if value:
            values.update({value, unquote(value)})
    return sorted(v for v in values if len(v) >= MIN_SECRET_CHARS)


def uri_secrets(*uris: str | None) -> tuple[str, ...]:
    """Several sources' own secrets (a pre-signed URL's signature, ``user:password@``), by value.

    Args:
        uris: URIs, None for an absent one.

    Returns:
        :func:`url_secrets` of each URI, in order.
    """
    return tuple(v for uri in uris for v in url_secrets(uri))


def environment_secrets() -> list[str]:
    """Secret values in the environment now: :data:`SECRET_ENV_VARS` and URL user-info.

    Returns:
        The values (read at call time; nothing is cached).
    """
    values = [os.environ.get(var, "") for var in SECRET_ENV_VARS]
    for var in URL_ENV_VARS:
        values += url_secrets(os.environ.get(var))
    return [v for v in values if len(v) >= MIN_SECRET_CHARS]


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Remove secrets from ``text`` (see the module doc for what counts as one).

    Args:
        text: Any message about to be logged, reported or written to a file.
        extra: More secret values to remove (e.g. :func:`url_secrets` of the source).

    Returns:
        The text with each secret replaced by ``***``.
    """
    values = {*environment_secrets(), *(v for v in extra if v and len(v) >= MIN_SECRET_CHARS)}
    for value in sorted(values, key=len, reverse=True):  # longest first: no partial leftovers
        for form in {value, quote(value, safe=""), quote(value)}:
            text = text.replace(form, MASK)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _URL_QUERY.sub(rf"\1?{MASK}", text)
    return _BARE_QUERY.sub(lambda m: m[1] + MASK, text)


def public_url(uri: str) -> str:
    """``uri`` without user-info, query string or fragment: safe to record in lorafleet.json.

    Args:
        uri: A source URI or endpoint (``https://u:p@host:8443/x?sig=...``).

    Returns:
        ``scheme://host[:port]/path`` (the text unchanged when it is not a URL).
    """
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return redact(uri)
    return f"{parts.scheme}://{host}{parts.path}"


class RedactingStream(io.TextIOBase):
    """A text stream that passes every complete line through :func:`redact`.

    Text is held until a newline (or :meth:`flush`), so a secret split over two ``write``
    calls of one line is still found.

    Args:
        target: Where the redacted text goes (e.g. the real ``sys.stderr``).
        extra: Secret values known to the caller (see :func:`redact`).
    """

    def __init__(self, target: TextIO, extra: Iterable[str] = ()) -> None:
        super().__init__()
        self._target = target
        self._extra = tuple(extra)
        self._pending = ""

    def write(self, text: str) -> int:
        """Buffer ``text``; write out every complete line, redacted.

        Returns:
            ``len(text)``.
        """
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._target.write(redact(done + "\n", self._extra))
        return len(text)

    def flush(self) -> None:
        """Write out what is pending (redacted) and flush the target."""
        if self._pending:
            self._target.write(redact(self._pending, self._extra))
            self._pending = ""
        self._target.flush()

    def isatty(self) -> bool:
        """Whether the target is a terminal (progress bars ask)."""
        return self._target.isatty()

    def fileno(self) -> int:
        """The target's file descriptor."""
        return self._target.fileno()

    @property
    def encoding(self) -> str:
        """The target's encoding."""
        return getattr(self._target, "encoding", "utf-8")

    def writable(self) -> bool:
        """Always True."""
        return True
