"""Token text: what ``new_token`` makes and ``parse_token`` accepts."""

from __future__ import annotations

import re

from noteburst.constants import TOKEN_PREFIX
from noteburst.domain.auth import new_token, parse_token


def test_keys_are_letters_and_digits_so_a_command_line_takes_them() -> None:
    # With URL-safe base64 one key in 64 started with "-", which
    # `noteburst token revoke KEY` read as an option.  Over 2000 keys that
    # would show with near certainty.
    for _ in range(2000):
        made = new_token()
        assert re.fullmatch(r"[A-Za-z0-9]{16}", made.key), made.key
        assert parse_token(made.token) == (made.key, made.token.split(".")[1])


def test_keys_made_before_still_parse() -> None:
    old = f"{TOKEN_PREFIX}-Qc7FZIckmTZNpZ5.{'a' * 43}"
    assert parse_token(old) == ("-Qc7FZIckmTZNpZ5", "a" * 43)
