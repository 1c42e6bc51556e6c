"""The Ray authentication token of a local Ray head: made per start, kept private, sent as Bearer.

Ray 2.60 token authentication (``RAY_AUTH_MODE=token``) checks every gRPC call (GCS, raylet,
workers, the Ray client server) and every dashboard HTTP request except a few health paths
(``ray/dashboard/http_server_head.py``). Clients present the token in an
``Authorization: Bearer <token>`` header (``ray/_private/authentication``); Ray's own
processes read it from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``.

``lorafleet up`` makes a new random token for every Ray head it starts and writes it to
``HOME/secrets/ray-auth-token`` (file 0600 in a 0700 folder, both owned by the user). Ray's
processes get only the *path* (``RAY_AUTH_TOKEN_PATH``): the token never appears on a command
line (``/proc/<pid>/cmdline`` is world-readable) nor in an environment block, logs or the
state file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

#: Name of the token file inside the secrets folder.
TOKEN_FILE_NAME = "ray-auth-token"
#: Environment variables Ray reads the token from (``RAY_AUTH_TOKEN`` wins).
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
#: Bytes of randomness of a new token (43 URL-safe characters).
TOKEN_BYTES = 32


class TokenFileError(RuntimeError):
    """The secrets folder or token file is not private to this user (or cannot be made so)."""


def new_token() -> str:
    """Return a fresh random token (``secrets.token_urlsafe``, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def private_dir(path: Path) -> Path:
    """Create (or check) a folder only this user can enter: mode 0700, owned by the caller.

    Args:
        path: The folder; its parents are created with the default mode.

    Returns:
        The folder path.

    Raises:
        TokenFileError: If ``path`` is a symlink, not a folder, or owned by another user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise TokenFileError(f"{path} must be a folder (not a symlink or file)")
    if info.st_uid != os.getuid():
        raise TokenFileError(f"{path} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def write_token(folder: Path, token: str) -> Path:
    """Write ``token`` to ``folder/ray-auth-token`` with mode 0600, replacing an old one.

    The file is created 0600 from the start (never readable by others, not even briefly) and
    moved into place atomically.

    Args:
        folder: The secrets folder (made private with :func:`private_dir`).
        token: The token text.

    Returns:
        Path of the token file.

    Raises:
        TokenFileError: If the folder is not private to this user.
        OSError: If the file cannot be written.
    """
    folder = private_dir(folder)
    target = folder / TOKEN_FILE_NAME
    tmp = folder / f".{TOKEN_FILE_NAME}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, token.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return target


def read_token(path: Path) -> str:
    """Read a token file (surrounding whitespace removed).

    Args:
        path: The token file.

    Returns:
        The token.

    Raises:
        OSError: If the file cannot be read.
    """
    return Path(path).read_text(encoding="ascii").strip()


def token_from_environment() -> str | None:
    """Find a Ray token the way Ray's own clients do (for ``up --ray-dashboard``).

    Order: ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.

    Returns:
        The token, or ``None`` when none is set (the cluster may have auth disabled).
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    candidates = [os.environ.get(TOKEN_PATH_ENV, ""), str(Path.home() / ".ray" / "auth_token")]
    for candidate in candidates:
        if candidate:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                token = read_token(Path(candidate))
                if token:
                    return token
    return None


def bearer_headers(token: str | None) -> dict[str, str]:
    """HTTP headers that authenticate to a Ray dashboard.

    Args:
        token: The token, or ``None`` for none.

    Returns:
        ``{"Authorization": "Bearer <token>"}``, or ``{}`` without a token.
    """
    return {"Authorization": f"Bearer {token}"} if token else {}
