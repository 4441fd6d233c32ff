"""Secrets at rest: the key file, key rotation, and unreadable tokens."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from noteburst.exceptions import ConfigurationError
from noteburst.storage.secrets import KEY_FILE_NAME, SecretBox, SecretUnreadableError


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    box = SecretBox.from_settings(None, tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = box.encrypt("whsec_abc")
    assert "whsec_abc" not in token
    again = SecretBox.from_settings(None, tmp_path / "data")
    assert again.decrypt(token) == "whsec_abc"
    assert list((tmp_path / "data").iterdir()) == [path]  # no temporary left


def test_keys_rotate(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox.from_settings(old, tmp_path).encrypt("s")
    rotated = SecretBox.from_settings(f"{new}, {old}", tmp_path)
    assert rotated.decrypt(token) == "s"
    assert SecretBox.from_settings(new, tmp_path).decrypt(rotated.encrypt("t")) == "t"
    with pytest.raises(SecretUnreadableError):
        SecretBox.from_settings(new, tmp_path).decrypt(token)
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_bad_keys_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Fernet"):
        SecretBox.from_settings("not-a-key", tmp_path)
