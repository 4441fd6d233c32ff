"""Bounded polling, for states that announce nothing: a file, a hub's or a process's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["free_port", "wait_until"]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 120
) -> None:
    """Poll ``predicate`` every 50 ms; fail the test after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
