"""A real webhook receiver on loopback, and an independent signature check.

The receiver is a small asyncio HTTP/1.1 server (one request per
connection, as Noteburst's sender keeps no connections alive) that answers
each request with the next scripted reply: a status (with an optional
``Location``) or "hang" (read the request, never answer).  It records
every request, so tests check headers, bodies and signatures.

:func:`verify_signature` re-implements the Standard Webhooks check with
``hmac`` and ``base64`` alone, so a test does not trust the signing
library to check itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

HANG = "hang"
"""A scripted reply: read the request, then never answer."""


@dataclass
class ReceivedRequest:
    """One request as the receiver read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A running receiver: its URL, its script and what it received."""

    port: int
    replies: list[int | str | tuple[int, str]] = field(default_factory=list)
    """What to answer, in order; once used up, 200."""
    received: list[ReceivedRequest] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?src=noteburst"

    async def wait_for(self, count: int, *, timeout: float = 60) -> None:
        """Wait until ``count`` requests arrived (fail after ``timeout``)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            reply = self.replies.pop(0) if self.replies else 200
            async with self._arrived:
                self.received.append(ReceivedRequest(method, target, headers, body))
                self._arrived.notify_all()
            if reply == HANG:
                await reader.read()  # answer nothing until the sender gives up
                return
            status, location = reply if isinstance(reply, tuple) else (reply, None)
            extra = f"location: {location}\r\n" if location else ""
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}"
                "connection: close\r\n\r\nok".encode("latin-1")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def receiver(
    *replies: int | str | tuple[int, str], host: str = "127.0.0.1"
) -> AsyncIterator[Receiver]:
    """Run a receiver on a free loopback port for the duration of the block."""
    instance = Receiver(port=0, replies=list(replies))
    server = await asyncio.start_server(instance._handle, host, 0)
    instance.port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield instance
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


def new_secret() -> str:
    """A fresh Standard Webhooks secret (32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def verify_signature(secret: str, request: ReceivedRequest) -> bool:
    """Check ``webhook-signature`` as the Standard Webhooks spec describes.

    The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the
    key is the base64 after ``whsec_``; each space-separated ``v1,<b64>``
    entry is an HMAC-SHA256 candidate.
    """
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}."
    ).encode() + request.body
    expected = hmac.new(key, content, hashlib.sha256).digest()
    for candidate in request.headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(
            expected, base64.b64decode(signature)
        ):
            return True
    return False
