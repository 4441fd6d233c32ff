"""Webhook URL and secret checks, the message, and the retry schedule."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from noteburst.domain.execution import (
    ErrorCode,
    Execution,
    ExecutionFailure,
    ExecutionStatus,
    Progress,
)
from noteburst.domain.webhook import (
    WebhookRequest,
    backoff_delay,
    build_payload,
    check_secret,
    check_url,
)
from noteburst.exceptions import InvalidInputError

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_url_form() -> None:
    checked = check_url("https://hooks.example.com/x?y=1")
    assert (checked.scheme, checked.host, checked.port) == (
        "https",
        "hooks.example.com",
        443,
    )
    assert check_url("http://[::1]:8080/").host == "::1"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "http:///nohost",
        "http://user:pw@example.com/",
        "http://example.com/#frag",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "example.com/hook",
        "http://example.com/" + "a" * 3000,
    ],
)
def test_bad_urls_name_the_field(url: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        check_url(url)
    assert info.value.field == "webhook.url"


def test_secret_form() -> None:
    assert check_secret(SECRET) == b"k" * 32
    for bad in [
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(b"x" * 65).decode(),
        "whsec_not base64!",
    ]:
        with pytest.raises(InvalidInputError) as info:
            check_secret(bad)
        assert info.value.field == "webhook.secret"
        assert bad.removeprefix("whsec_") not in info.value.message


def test_request_repr_hides_the_secret() -> None:
    request = WebhookRequest(url="https://example.com/", secret=SECRET)
    assert SECRET not in repr(request)


def test_payload_shape() -> None:
    now = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    execution = Execution(
        id="e1",
        status=ExecutionStatus.FAILED,
        kernel_name="python3",
        timeout_seconds=60,
        created_at=now - timedelta(seconds=3),
        progress=Progress(cells_total=2, cells_done=1),
        attempts=1,
        last_sequence=5,
        started_at=now - timedelta(seconds=2),
        finished_at=now - timedelta(seconds=1),
        error=ExecutionFailure(code=ErrorCode.CELL_ERROR, message="boom", cell_index=1),
    )
    payload = build_payload(execution, public_url="https://nb.example/", now=now)
    assert payload["type"] == "execution.finished"
    assert payload["timestamp"] == "2026-11-26T08:00:00+00:00"
    data = payload["data"]
    assert isinstance(data, dict)
    assert data["id"] == "e1"
    assert data["status"] == "FAILED"
    assert data["error"] == {"code": "CELL_ERROR", "message": "boom", "cellIndex": 1}
    assert data["finishedAt"] == "2026-11-26T07:59:59+00:00"
    link = urlsplit(data["resultUrl"])
    assert (link.scheme, link.netloc, link.path) == ("https", "nb.example", "/graphql")
    query = parse_qs(link.query)
    assert "execution(id: $id)" in query["query"][0]
    assert query["variables"] == ['{"id": "e1"}']


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [
        backoff_delay(n, initial_seconds=1, max_seconds=10, rng=rng)
        for n in range(1, 8)
    ]
    ceilings = [1, 2, 4, 8, 10, 10, 10]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
