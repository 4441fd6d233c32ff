"""The SSRF guard with real name resolution, and the sender against a real receiver.

The receiver runs on loopback, which the guard allows only because these
tests allow-list 127.0.0.1; ``localhost`` (a real name resolving to
loopback) is refused without that.  A resolver is injected only where real
DNS cannot be made to answer what the test needs (a name pointing at the
receiver, a slow resolver).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from noteburst.domain.addresses import AddressPolicy, parse_networks
from noteburst.exceptions import InvalidInputError, WebhookRefusedError
from noteburst.storage.webhook_client import (
    AttemptResult,
    WebhookGuard,
    WebhookSender,
    signed_headers,
)
from tests.support.waiting import free_port
from tests.support.webhooks import HANG, new_secret, receiver, verify_signature

LOOPBACK_ALLOWED = AddressPolicy(allowed_networks=parse_networks(["127.0.0.1/32"]))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",  # a real name that resolves to loopback
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://10.0.0.8/",
        "http://192.168.0.1/",
        "http://172.16.5.5/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://100.64.1.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
async def test_guard_refuses_non_public_targets(url: str) -> None:
    guard = WebhookGuard(policy=AddressPolicy())
    with pytest.raises(WebhookRefusedError) as info:
        await guard.check(url)
    assert info.value.field == "webhook.url"


@pytest.mark.asyncio
async def test_guard_refuses_a_name_resolving_to_a_private_address() -> None:
    async def private(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.20.30.40"]

    guard = WebhookGuard(policy=AddressPolicy(), resolver=private)
    with pytest.raises(WebhookRefusedError, match=r"10\.20\.30\.40 is a private"):
        await guard.check("https://hooks.example.com/")


@pytest.mark.asyncio
async def test_guard_bounds_resolution_time() -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return ["93.184.215.14"]

    guard = WebhookGuard(policy=AddressPolicy(), resolver=slow, resolve_timeout=0.1)
    with pytest.raises(WebhookRefusedError, match=r"took over 0\.1s"):
        await guard.check("https://hooks.example.com/")


@pytest.mark.asyncio
async def test_guard_refuses_unresolvable_names() -> None:
    guard = WebhookGuard(policy=AddressPolicy())
    with pytest.raises(WebhookRefusedError, match="cannot resolve"):
        await guard.check("https://no-such-host.invalid/")


@pytest.mark.asyncio
async def test_guard_rejects_malformed_urls() -> None:
    with pytest.raises(InvalidInputError):
        await WebhookGuard(policy=AddressPolicy()).check("gopher://x/")


@pytest.mark.asyncio
async def test_allow_listed_loopback_passes() -> None:
    guard = WebhookGuard(policy=LOOPBACK_ALLOWED)
    target, addresses = await guard.check("http://127.0.0.1:9/x")
    assert addresses == ["127.0.0.1"]
    assert target.port == 9


async def _send(
    url: str, *, timeout: float = 5, guard: WebhookGuard | None = None
) -> tuple[AttemptResult, dict[str, str], bytes, str]:
    secret = new_secret()
    body = b'{"type":"execution.finished"}'
    headers = signed_headers(
        secret, message_id="msg_1", timestamp=datetime.now(UTC), body=body.decode()
    )
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
        sender = WebhookSender(
            http=http, guard=guard or WebhookGuard(policy=LOOPBACK_ALLOWED)
        )
        result = await sender.send(url, body=body, headers=headers, timeout=timeout)
    return result, headers, body, secret


@pytest.mark.asyncio
async def test_sender_posts_a_verifiable_signature() -> None:
    async with receiver(204) as hook:
        result, _, body, secret = await _send(hook.url)
        assert result.succeeded
        assert result.status_code == 204
        [request] = hook.received
    assert request.method == "POST"
    assert request.target == "/hook?src=noteburst"
    assert request.body == body
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_1"
    assert verify_signature(secret, request)
    assert not verify_signature(new_secret(), request)


@pytest.mark.asyncio
async def test_sender_connects_to_the_checked_address_with_the_original_host() -> None:
    async def to_receiver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    guard = WebhookGuard(policy=LOOPBACK_ALLOWED, resolver=to_receiver)
    async with receiver(200) as hook:
        result, *_ = await _send(f"http://hooks.test:{hook.port}/h", guard=guard)
        assert result.succeeded
        assert hook.received[0].headers["host"] == f"hooks.test:{hook.port}"


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "error"), [(500, "HTTP 500"), (404, "HTTP 404")])
async def test_error_statuses_fail(status: int, error: str) -> None:
    async with receiver(status) as hook:
        result, *_ = await _send(hook.url)
    assert not result.succeeded
    assert result.error == error


@pytest.mark.asyncio
async def test_redirects_are_not_followed() -> None:
    async with receiver(200) as target, receiver((307, target.url)) as hook:
        result, *_ = await _send(hook.url)
        assert result.status_code == 307
        assert result.error is not None
        assert "redirects are not followed" in result.error
        assert target.received == []


@pytest.mark.asyncio
async def test_a_hanging_receiver_times_out() -> None:
    async with receiver(HANG) as hook:
        result, *_ = await _send(hook.url, timeout=0.5)
        assert len(hook.received) == 1
    assert not result.succeeded
    assert result.error == "no answer within 0.5s"
    assert 0.5 <= result.latency_seconds < 5


@pytest.mark.asyncio
async def test_refused_address_at_send_time_is_a_failed_attempt() -> None:
    async with receiver(200) as hook:
        guard = WebhookGuard(policy=AddressPolicy())  # loopback not allowed
        result, *_ = await _send(hook.url, guard=guard)
        assert hook.received == []
    assert result.status_code is None
    assert result.error is not None
    assert "loopback" in result.error


@pytest.mark.asyncio
async def test_connection_refused_is_a_failed_attempt() -> None:
    result, *_ = await _send(f"http://127.0.0.1:{free_port()}/")
    assert result.status_code is None
    assert result.error is not None
    assert "cannot connect" in result.error
