"""Webhooks end to end: a real Noteburst calls a real receiver on loopback.

On both setups (embedded, and Postgres + Redis with the worker's Redis
broker), an execution submitted with a webhook is followed to its end and
its receiver, which answers 500 twice and then 200, gets three signed
requests; the signatures are checked with a separate HMAC implementation
and all three attempts are visible as ``Execution.webhookDeliveries``.
Loopback is reachable only because the test config allow-lists
127.0.0.1/32.  Logs are captured during the whole delivery, and neither
they nor any API answer contain the secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from tests.support.app import make_config, running
from tests.support.notebooks import notebook
from tests.support.waiting import wait_until
from tests.support.webhooks import new_secret, receiver, verify_signature

SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { id status cacheHit webhook { url state attempts } }
    ... on InvalidInput { message field }
    ... on WebhookRefused { message field }
  }
}
"""

GET = """
query Get($id: ID!) {
  execution(id: $id) {
    id status
    webhook { url state attempts nextAttemptAt }
    webhookDeliveries {
      attempt startedAt statusCode latencySeconds error succeeded
    }
  }
}
"""

LIST = "query { executions(first: 10) { edges { node { id } } } }"

NOTEBOOK = notebook("x = 6 * 7", "print(x)")


def _config(tmp_path: Path, jupyter: Any, **overrides: Any) -> Any:
    return make_config(
        tmp_path,
        jupyter,
        webhook_allowed_networks=["127.0.0.1/32"],
        webhook_initial_backoff_seconds=0.05,
        webhook_max_backoff_seconds=0.2,
        webhook_timeout_seconds=5,
        public_url="https://noteburst.example/",
        **overrides,
    )


@pytest.mark.asyncio
async def test_webhook_is_signed_retried_and_recorded(
    tmp_path: Path,
    jupyter_server: Any,
    backend_urls: dict[str, str | None],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = new_secret()
    answers: list[str] = []
    config = _config(tmp_path, jupyter_server, **backend_urls)
    with structlog.testing.capture_logs() as logs:
        async with receiver(500, 500, 200) as hook, running(config) as nb:
            data = await nb.execute(
                SUBMIT,
                input={
                    "notebook": NOTEBOOK,
                    "webhook": {"url": hook.url, "secret": secret},
                },
            )
            answers.append(json.dumps(data))
            submitted = data["submitExecution"]
            assert submitted["__typename"] == "Execution"
            assert submitted["webhook"] == {
                "url": hook.url,
                "state": "PENDING",
                "attempts": 0,
            }
            execution_id = submitted["id"]
            events = await asyncio.wait_for(nb.watch(execution_id), 120)
            assert events[-1]["status"] == "SUCCEEDED"
            await hook.wait_for(3, timeout=60)

            async def delivered() -> bool:
                found = await nb.execute(GET, id=execution_id)
                answers.append(json.dumps(found))
                return bool(found["execution"]["webhook"]["state"] == "DELIVERED")

            await wait_until(delivered, "the webhook is delivered", timeout=60)
            final = json.loads(answers[-1])["execution"]
            answers.append(json.dumps(await nb.execute(LIST)))

    assert final["webhook"]["attempts"] == 3
    assert final["webhook"]["nextAttemptAt"] is None
    deliveries = final["webhookDeliveries"]
    assert [(d["attempt"], d["statusCode"], d["succeeded"]) for d in deliveries] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    assert [d["error"] for d in deliveries] == ["HTTP 500", "HTTP 500", None]
    assert all(d["latencySeconds"] > 0 for d in deliveries)
    assert deliveries[0]["startedAt"] < deliveries[1]["startedAt"]

    assert len(hook.received) == 3
    for request in hook.received:
        assert verify_signature(secret, request)
        assert request.headers["webhook-id"] == f"msg_{execution_id}"
    message = hook.received[-1].json()
    assert message["type"] == "execution.finished"
    assert message["data"]["id"] == execution_id
    assert message["data"]["status"] == "SUCCEEDED"
    assert message["data"]["error"] is None
    assert message["data"]["resultUrl"].startswith(
        "https://noteburst.example/graphql?query="
    )

    # The secret (or its key material) appears in no answer and no log line.
    key = secret.removeprefix("whsec_")
    assert any(entry.get("event") == "Webhook attempt" for entry in logs)
    out, err = capfd.readouterr()
    # (Records of the test's own GraphQL client, which logs what it sends,
    # are left out: they are the caller's, not Noteburst's.)
    server_records = [
        f"{record.name} {record.getMessage()} {record.__dict__}"
        for record in caplog.records
        if not record.name.startswith("gql")
    ]
    assert server_records
    everything = "\n".join([*answers, *server_records, repr(logs), out, err])
    assert key not in everything
    assert secret not in everything


@pytest.mark.asyncio
async def test_webhook_result_link_fetches_the_result(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """The message's link is a GraphQL GET query answering the execution."""
    config = _config(tmp_path, jupyter_server)
    async with receiver() as hook, running(config) as nb:
        data = await nb.execute(
            SUBMIT,
            input={
                "notebook": NOTEBOOK,
                "webhook": {"url": hook.url, "secret": new_secret()},
            },
        )
        execution_id = data["submitExecution"]["id"]
        await hook.wait_for(1, timeout=120)
        link = hook.received[0].json()["data"]["resultUrl"]
        local = nb.url + link.removeprefix("https://noteburst.example")
        async with httpx.AsyncClient(timeout=30) as client:
            answer = (await client.get(local)).json()
    execution = answer["data"]["execution"]
    assert execution["id"] == execution_id
    assert execution["status"] == "SUCCEEDED"
    assert execution["notebook"]["cells"][1]["outputs"][0]["text"] == "42\n"


@pytest.mark.asyncio
async def test_a_cache_hit_calls_its_webhook_too(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = _config(tmp_path, jupyter_server)
    async with receiver() as hook, running(config) as nb:
        first = await nb.submit(NOTEBOOK, cache={"mode": "USE"})
        await asyncio.wait_for(nb.watch(first["id"]), 120)
        data = await nb.execute(
            SUBMIT,
            input={
                "notebook": NOTEBOOK,
                "cache": {"mode": "USE"},
                "webhook": {"url": hook.url, "secret": new_secret()},
            },
        )
        hit = data["submitExecution"]
        assert hit["cacheHit"] is True
        await hook.wait_for(1, timeout=60)
    message = hook.received[0].json()["data"]
    assert (message["id"], message["status"], message["cacheHit"]) == (
        hit["id"],
        "SUCCEEDED",
        True,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("webhook", "typename", "field"),
    [
        ({"url": "http://169.254.169.254/latest/"}, "WebhookRefused", "webhook.url"),
        ({"url": "http://10.0.0.1/hook"}, "WebhookRefused", "webhook.url"),
        ({"url": "http://127.0.0.2/hook"}, "WebhookRefused", "webhook.url"),
        ({"url": "http://[::1]/hook"}, "WebhookRefused", "webhook.url"),
        ({"url": "http://metadata.google.internal/"}, "WebhookRefused", "webhook.url"),
        ({"url": "ftp://example.com/"}, "InvalidInput", "webhook.url"),
        (
            {"url": "http://127.0.0.1/hook", "secret": "whsec_c2hvcnQ="},
            "InvalidInput",
            "webhook.secret",
        ),
    ],
)
async def test_refused_webhooks_store_nothing(
    tmp_path: Path,
    jupyter_server: Any,
    webhook: dict[str, str],
    typename: str,
    field: str,
) -> None:
    config = _config(tmp_path, jupyter_server)
    async with running(config) as nb:
        data = await nb.execute(
            SUBMIT,
            input={
                "notebook": NOTEBOOK,
                "webhook": {"secret": new_secret(), **webhook},
            },
        )
        refused = data["submitExecution"]
        assert refused["__typename"] == typename
        assert refused["field"] == field
        listed = await nb.execute(LIST)
    assert listed["executions"]["edges"] == []
