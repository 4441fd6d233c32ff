"""Resolving, checking, signing and sending webhooks: the outbound adapter.

:class:`WebhookGuard` applies :class:`~noteburst.domain.addresses.AddressPolicy`
to a URL: its form, its host name, and every address the name resolves to
(with a timeout on resolution).  The API calls it at submission and the
sender again before every attempt, because what a name resolves to can
change between the two (DNS rebinding).

:class:`WebhookSender` then connects to the very address it checked: the
request goes to the address literal, with the original ``Host`` header and,
for https, the original name as TLS server name (httpx's ``sni_hostname``
extension), so the certificate is still verified for the name.  No second
resolution happens between check and connect.  Redirects are never
followed (a 3xx is a failed attempt), proxies from the environment are not
used (they would resolve the name again), and every step is bounded by the
attempt's timeout.  Only the status is read, never the body.

Signing follows the Standard Webhooks specification through its reference
library (``standardwebhooks``, from Svix).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
from standardwebhooks import Webhook

from ..domain.addresses import AddressPolicy
from ..domain.webhook import WebhookUrl, check_url
from ..exceptions import ClientError, WebhookRefusedError

__all__ = [
    "AttemptResult",
    "Resolver",
    "WebhookGuard",
    "WebhookSender",
    "signed_headers",
    "system_resolver",
]

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves a host name and port to address literals."""

_HTTP_REDIRECT = range(300, 400)
_HTTP_SUCCESS = range(200, 300)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system's resolver (``getaddrinfo``), in order, unique."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt got: a status, or why it failed."""

    status_code: int | None
    latency_seconds: float
    error: str | None

    @property
    def succeeded(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status_code is not None and self.status_code in _HTTP_SUCCESS


def signed_headers(
    secret: str, *, message_id: str, timestamp: datetime, body: str
) -> dict[str, str]:
    """Return the Standard Webhooks headers for a message body."""
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


class WebhookGuard:
    """Checks a webhook URL and the addresses its host resolves to.

    Parameters
    ----------
    policy
        Which addresses are allowed.
    resolver
        Name resolution (the system's by default; tests inject one to
        change what a name resolves to between two checks).
    resolve_timeout
        Seconds one resolution may take.
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        resolver: Resolver = system_resolver,
        resolve_timeout: float = 5.0,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._timeout = resolve_timeout

    async def check(
        self, url: str, *, field: str = "webhook.url"
    ) -> tuple[WebhookUrl, list[str]]:
        """Check a URL and resolve its host.

        Returns
        -------
        tuple of (WebhookUrl, list of str)
            The parsed URL and its allowed addresses, in resolution order.

        Raises
        ------
        InvalidInputError
            The URL is malformed.
        WebhookRefusedError
            Its host is a metadata name, cannot be resolved in time, or any
            of its addresses is refused.
        """
        target = check_url(url, field=field)
        reason = self._policy.refuse_host(target.host)
        if reason is not None:
            raise WebhookRefusedError(field, reason)
        addresses = await self._resolve(target, field)
        reason = self._policy.refuse_addresses(addresses)
        if reason is not None:
            raise WebhookRefusedError(field, reason)
        return target, addresses

    async def _resolve(self, target: WebhookUrl, field: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(target.host))]
        except ValueError:
            pass
        try:
            async with asyncio.timeout(self._timeout):
                return await self._resolver(target.host, target.port)
        except TimeoutError as exc:
            reason = f"resolving {target.host!r} took over {self._timeout:g}s"
            raise WebhookRefusedError(field, reason) from exc
        except OSError as exc:
            reason = f"cannot resolve {target.host!r} ({exc.strerror or exc})"
            raise WebhookRefusedError(field, reason) from exc


class WebhookSender:
    """Sends one signed webhook attempt to a checked address.

    Parameters
    ----------
    http
        A client of its own: ``follow_redirects=False``, ``trust_env=False``.
    guard
        Checks the URL again before every attempt.
    """

    def __init__(self, *, http: httpx.AsyncClient, guard: WebhookGuard) -> None:
        self._http = http
        self._guard = guard

    async def send(
        self,
        url: str,
        *,
        body: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109 - bounds the whole attempt, see below
    ) -> AttemptResult:
        """Check, resolve and POST; never raises for the receiver's faults.

        ``timeout`` bounds the whole attempt: resolution, connection, TLS,
        sending and the response's status line and headers.
        """
        started = time.monotonic()

        def result(status: int | None, error: str | None) -> AttemptResult:
            return AttemptResult(
                status_code=status,
                latency_seconds=time.monotonic() - started,
                error=error,
            )

        try:
            async with asyncio.timeout(timeout):
                try:
                    target, addresses = await self._guard.check(url)
                except ClientError as exc:
                    return result(None, exc.message)
                status, error = await self._post(target, addresses, body, headers)
        except TimeoutError:
            return result(None, f"no answer within {timeout:g}s")
        return result(status, error)

    async def _post(
        self,
        target: WebhookUrl,
        addresses: list[str],
        body: bytes,
        headers: dict[str, str],
    ) -> tuple[int | None, str | None]:
        """POST to each checked address in turn until one connects."""
        error = "no address to connect to"
        original = httpx.URL(target.url)
        host_header = original.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        for address in addresses:
            pinned = original.copy_with(host=address)
            try:
                async with self._http.stream(
                    "POST",
                    pinned,
                    content=body,
                    headers={**headers, "host": host_header},
                    extensions=extensions,
                ) as response:
                    status = response.status_code
            except httpx.ConnectError as exc:
                error = f"cannot connect to {address}: {exc}"
                continue
            except httpx.HTTPError as exc:
                return None, f"{type(exc).__name__}: {exc}"
            if status in _HTTP_SUCCESS:
                return status, None
            if status in _HTTP_REDIRECT:
                return status, f"HTTP {status} (redirects are not followed)"
            return status, f"HTTP {status}"
        return None, error
