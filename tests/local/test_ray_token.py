"""The local Ray head's token file: private folder and file, atomic replace, Ray's lookup order."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from lorafleet_operator.local.ray_token import (
    TOKEN_FILE_NAME,
    TokenFileError,
    bearer_headers,
    new_token,
    private_dir,
    read_token,
    token_from_environment,
    write_token,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_token_file_is_0600_in_a_0700_folder_and_replaced_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "home" / "secrets"
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 40
    path = write_token(folder, first)
    assert path == folder / TOKEN_FILE_NAME
    assert (_mode(folder), _mode(path)) == (0o700, 0o600)
    assert read_token(path) == first
    assert write_token(folder, second) == path
    assert read_token(path) == second
    assert sorted(p.name for p in folder.iterdir()) == [TOKEN_FILE_NAME]  # no temporary left


def test_a_loose_existing_folder_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    write_token(folder, new_token())
    assert _mode(folder) == 0o700


def test_a_symlinked_or_foreign_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "secrets"
    link.symlink_to(target)
    with pytest.raises(TokenFileError, match="must be a folder"):
        write_token(link, new_token())
    assert not any(target.iterdir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    if os.getuid() == 65534:  # pragma: no cover - the tests run as another user
        pytest.skip("running as uid 65534")
    with pytest.raises(TokenFileError, match="belongs to uid 65534"):
        private_dir(foreign)


def test_token_from_environment_follows_rays_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert token_from_environment() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert token_from_environment() == "from-home"
    path = write_token(tmp_path / "s", "from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert token_from_environment() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert token_from_environment() == "from-env"


def test_bearer_headers() -> None:
    assert bearer_headers("abc") == {"Authorization": "Bearer abc"}
    assert bearer_headers(None) == {} == bearer_headers("")
