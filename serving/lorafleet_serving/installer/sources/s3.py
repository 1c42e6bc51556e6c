"""``s3://bucket/prefix`` through boto3 (endpoint and credentials from the environment).

A prefix means the folder ``prefix/`` (never ``prefix-old/``); subfolders are kept. A prefix
naming one object (``s3://bucket/models/x.safetensors``) installs that single file. The
single-part ETag (md5) is checked; partial files resume with ``Range: bytes=N-``.
Environment: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ..deadline import Deadline, with_retries
from ..errors import INVALID_SOURCE, SOURCE_NOT_FOUND, UNAUTHORIZED, InstallError
from ..pathsafety import inside, safe_relpath
from ..redaction import public_url
from ..verify import Expected, refuse_past_size
from .common import Listing, RemoteFile, is_transient

CHUNK_BYTES = 8 << 20
_NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "401",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


def _filter(paths, allow, ignore):
    from huggingface_hub.utils import filter_repo_objects

    return list(
        filter_repo_objects(paths, allow_patterns=allow, ignore_patterns=ignore, key=lambda x: x[0])
    )


class S3Source:
    """An S3 folder (``prefix/``) or single object.

    Args:
        uri: ``s3://bucket/prefix``.
        allow_patterns / ignore_patterns: Globs over paths relative to the prefix.
    """

    def __init__(
        self,
        uri: str,
        allow_patterns: list[str] | None = None,
        ignore_patterns: list[str] | None = None,
    ) -> None:
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InstallError(INVALID_SOURCE, f"source {uri!r}: expected s3://<bucket>/<prefix>")
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.allow_patterns = allow_patterns or None
        self.ignore_patterns = ignore_patterns or None
        self.endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        self._client = None

    def describe(self) -> dict:
        """The source for lorafleet.json (bucket, prefix, endpoint; no credentials)."""
        return {
            "uri": public_url(self.uri),
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": public_url(self.endpoint_url) if self.endpoint_url else None,
        }

    @property
    def client(self):
        """The boto3 S3 client (created on first use; endpoint/credentials from the env)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._client

    def _call(self, fn, what: str, deadline: Deadline):
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        try:
            return with_retries(fn, is_transient=is_transient, deadline=deadline, what=what)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise InstallError(
                UNAUTHORIZED,
                f"s3://{self.bucket}: no usable credentials in the environment ({what})",
            ) from exc
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise InstallError(
                    SOURCE_NOT_FOUND, f"s3://{self.bucket}/{self.prefix}: {code} ({what})"
                ) from exc
            if code in _DENIED:
                raise InstallError(
                    UNAUTHORIZED, f"s3://{self.bucket}/{self.prefix}: {code} ({what})"
                ) from exc
            raise

    def list(self, deadline: Deadline) -> Listing:
        """List ``prefix/`` (or the single object) with sizes and ETags."""
        folder = f"{self.prefix}/" if self.prefix else ""

        def list_folder():
            found = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # folder marker objects
                    found.append((obj["Key"][len(folder) :], obj["Key"], obj["Size"], obj["ETag"]))
            return found

        found = self._call(list_folder, "listing objects", deadline)
        if not found and self.prefix:
            from botocore.exceptions import ClientError

            try:
                head = self._call(
                    lambda: self.client.head_object(Bucket=self.bucket, Key=self.prefix),
                    "reading object",
                    deadline,
                )
                found = [
                    (
                        posixpath.basename(self.prefix),
                        self.prefix,
                        head["ContentLength"],
                        head["ETag"],
                    )
                ]
            except InstallError as exc:
                if exc.reason != SOURCE_NOT_FOUND:
                    raise
            except ClientError:
                pass
        found = _filter(found, self.allow_patterns, self.ignore_patterns)
        if not found:
            raise InstallError(SOURCE_NOT_FOUND, f"s3://{self.bucket}/{folder}: no objects")
        files = []
        for rel, key, size, etag in found:
            rel = safe_relpath(rel, where=f"s3://{self.bucket}/{folder}")
            etag = etag.strip('"')
            md5 = etag if "-" not in etag and len(etag) == 32 else None
            files.append(
                RemoteFile(
                    path=rel, expected=Expected(size=size, md5=md5), fingerprint=etag, remote=key
                )
            )
        return Listing(files=files)

    def download(self, listing: Listing, dest: Path, deadline: Deadline) -> None:
        """Download each object; complete files are skipped, partial ones resumed with Range."""
        for f in listing.files:
            target = inside(dest, f.path, where=self.uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._call(
                lambda f=f, target=target: self._fetch(f, target, deadline),
                f"downloading {f.remote}",
                deadline,
            )

    def _fetch(self, f: RemoteFile, target: Path, deadline: Deadline) -> None:
        size = f.expected.size
        have = target.stat().st_size if target.exists() else 0
        if size is not None and have == size:
            return
        if size is not None and have > size:
            target.unlink()
            have = 0
        kwargs = {"Bucket": self.bucket, "Key": f.remote}
        if have:
            kwargs["Range"] = f"bytes={have}-"
        resp = self.client.get_object(**kwargs)
        mode = "ab" if have and resp.get("ContentRange") else "wb"
        written = have if mode == "ab" else 0
        with target.open(mode) as fh:
            for chunk in resp["Body"].iter_chunks(CHUNK_BYTES):
                written += len(chunk)
                try:
                    refuse_past_size(written, f.expected, name=f.remote)
                except Exception:
                    resp["Body"].close()
                    target.unlink(missing_ok=True)
                    raise
                fh.write(chunk)
                if deadline.expired():
                    deadline.check(f"downloading {f.remote}")
