"""Sources by URI scheme: ``hf://``, ``s3://``, ``https://`` (``http://``), ``file://``, ``pvc://``."""

from __future__ import annotations

from urllib.parse import urlparse

from ..errors import INVALID_SOURCE, InstallError
from .common import Listing, RemoteFile, Source, content_digest

SCHEMES = ("hf", "s3", "https", "http", "file", "pvc")


def open_source(
    uri: str,
    *,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
    sha256: str | None = None,
    max_unpacked_bytes: int | None = None,
) -> Source:
    """Return the source object for ``uri``.

    Args:
        uri: Source URI (see the module doc for schemes).
        revision: hf branch/tag/commit; ignored (only recorded) for other schemes.
        allow_patterns / ignore_patterns: Globs over relative paths.
        sha256: Expected sha256 of an https download.
        max_unpacked_bytes: Largest total an https archive may unpack to (bytes); None for
            the default.

    Raises:
        InstallError: ``InvalidSource`` for an unknown scheme or malformed URI.
    """
    scheme = urlparse(uri).scheme
    if scheme == "hf":
        from .hub import HubSource

        return HubSource(uri, revision, allow_patterns, ignore_patterns)
    if scheme == "s3":
        from .s3 import S3Source

        return S3Source(uri, allow_patterns, ignore_patterns)
    if scheme in ("https", "http"):
        from .https import HttpsSource

        if max_unpacked_bytes is None:
            return HttpsSource(uri, sha256)
        return HttpsSource(uri, sha256, max_unpacked_bytes)
    if scheme in ("file", "pvc"):
        from .local import LocalSource

        return LocalSource(uri, allow_patterns, ignore_patterns)
    raise InstallError(
        INVALID_SOURCE,
        f"source {uri!r}: unknown scheme {scheme!r} (expected one of {', '.join(SCHEMES)})",
    )


__all__ = ["Listing", "RemoteFile", "Source", "content_digest", "open_source"]
