"""JupyterRestClient: header auth, no cookies, errors converted and sanitised.

Against the session's real jupyter_server where it can answer; the hub
proxy's "server gone" answers (302, 424, 503) and transport faults come from
an ``httpx.MockTransport``, since a standalone server cannot produce them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import pytest_asyncio

from noteburst.jupyter.exceptions import (
    JupyterWebError,
    KernelStartError,
    LabUnavailableError,
    sanitize_url,
)
from noteburst.jupyter.rest import JupyterRestClient
from tests.support.jupyter import JupyterServerInfo


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def test_urls() -> None:
    client = JupyterRestClient(
        http=httpx.AsyncClient(),
        base_url="https://hub.example/user/bot-1",
        token=None,
        timeout=1,
    )
    assert client.base_url == "https://hub.example/user/bot-1/"
    assert client.url("/api/status") == "https://hub.example/user/bot-1/api/status"
    assert (
        client.ws_url("k/1", "s 1")
        == "wss://hub.example/user/bot-1/api/kernels/k%2F1/channels?session_id=s+1"
    )
    assert client.auth_headers == {}
    local = JupyterRestClient(
        http=httpx.AsyncClient(),
        base_url="http://127.0.0.1:8888/",
        token="t0k",
        timeout=1,
    )
    assert local.ws_url("k", "s").startswith(
        "ws://127.0.0.1:8888/api/kernels/k/channels"
    )
    assert local.auth_headers == {"Authorization": "token t0k"}


@pytest.mark.asyncio
async def test_real_server_calls_and_no_cookies(
    jupyter_server: JupyterServerInfo, http: httpx.AsyncClient
) -> None:
    # A stale cookie in the shared jar must not be sent.
    http.cookies.set("username-127-0-0-1", "stale", domain="127.0.0.1")
    rest = JupyterRestClient(
        http=http, base_url=jupyter_server.url, token=jupyter_server.token, timeout=30
    )
    status = await rest.status()
    assert "started" in status
    assert "python3" in await rest.kernelspecs()
    kernel_id = await rest.create_kernel("python3")
    try:
        await rest.interrupt_kernel(kernel_id)
    finally:
        await rest.delete_kernel(kernel_id)
    await rest.delete_kernel(kernel_id)  # already gone: not an error
    with pytest.raises(JupyterWebError) as caught:
        await rest.interrupt_kernel(kernel_id)
    assert caught.value.status == 404
    # The login cookies jupyter_server set were not kept.
    assert [c.name for c in http.cookies.jar] == ["username-127-0-0-1"]


@pytest.mark.asyncio
async def test_unknown_kernelspec(
    jupyter_server: JupyterServerInfo, http: httpx.AsyncClient
) -> None:
    rest = JupyterRestClient(
        http=http, base_url=jupyter_server.url, token=jupyter_server.token, timeout=30
    )
    with pytest.raises(KernelStartError, match="no-such-kernel"):
        await rest.create_kernel("no-such-kernel")


@pytest.mark.asyncio
async def test_wrong_token_is_an_error_without_the_token(
    jupyter_server: JupyterServerInfo, http: httpx.AsyncClient
) -> None:
    secret = "wrong-token-abcdef123456"
    rest = JupyterRestClient(
        http=http, base_url=jupyter_server.url, token=secret, timeout=30
    )
    with pytest.raises(JupyterWebError) as caught:
        await rest.status()
    error = caught.value
    assert not isinstance(error, LabUnavailableError)
    assert error.status == 403
    assert error.method == "GET"
    assert error.url == f"{jupyter_server.url}api/status"
    assert secret not in str(error)


def mock_client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [302, 424, 502, 503])
async def test_server_gone_statuses(status: int) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Location": "/hub/user/bot/api/status"} if status == 302 else {}
        return httpx.Response(status, headers=headers, text="gone")

    async with mock_client(httpx.MockTransport(handler)) as client:
        client.cookies.set("session", "x", domain="hub.example")
        rest = JupyterRestClient(
            http=client,
            base_url="https://hub.example/user/bot/",
            token="tok",
            timeout=5,
        )
        with pytest.raises(LabUnavailableError) as caught:
            await rest.status()
    assert caught.value.status == status
    assert len(seen) == 1  # the redirect was not followed
    assert seen[0].headers["Authorization"] == "token tok"
    assert "cookie" not in seen[0].headers


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "fault",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("bad"),
    ],
    ids=["connect", "timeout", "protocol"],
)
async def test_transport_faults_are_unavailable(fault: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise fault

    async with mock_client(httpx.MockTransport(handler)) as client:
        rest = JupyterRestClient(
            http=client,
            base_url="http://127.0.0.1:1/?token=secret",
            token="t",
            timeout=5,
        )
        with pytest.raises(LabUnavailableError) as caught:
            await rest.kernelspecs()
    assert caught.value.method == "GET"
    assert caught.value.status is None
    assert "secret" not in str(caught.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "body", "call"),
    [
        (200, "not json", "status"),
        (200, "[1]", "status"),
        (200, '{"kernelspecs": 1}', "kernelspecs"),
        (201, "{}", "create_kernel"),
        (500, '{"message": "boom", "token": "abcdefghijkl"}', "status"),
    ],
)
async def test_bad_answers_are_web_errors(status: int, body: str, call: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body)

    async with mock_client(httpx.MockTransport(handler)) as client:
        rest = JupyterRestClient(
            http=client, base_url="http://lab/", token="t", timeout=5
        )
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "status": rest.status,
            "kernelspecs": rest.kernelspecs,
            "create_kernel": lambda: rest.create_kernel("python3"),
        }
        with pytest.raises(JupyterWebError) as caught:
            await calls[call]()
    assert not isinstance(caught.value, LabUnavailableError)
    assert "abcdefghijkl" not in str(caught.value)


def test_sanitize_url() -> None:
    assert (
        sanitize_url("http://user:pw@host:1/p?token=abc&x=1")
        == "http://host:1/p?token=REDACTED&x=1"
    )
    assert sanitize_url(httpx.URL("https://h/p")) == "https://h/p"
