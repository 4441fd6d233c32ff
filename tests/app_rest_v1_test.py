"""Rubin's REST API v1 end to end, driven as Times Square's client drives it.

A real Noteburst (with its in-process worker and the session's
jupyter_server) is asked over HTTP with httpx: submit with
``POST /noteburst/v1/notebooks/``, follow ``Location``/``self_url`` with
``result=false`` until ``status`` is ``complete``, then read the notebook,
``ipynb_error`` or ``error`` (Times Square's check-run loop).  Polls are
bounded by a deadline, as the client's own are.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.app import make_config, running
from tests.support.notebooks import notebook
from tests.support.webhooks import new_secret, receiver, verify_signature

SUBMIT = "/noteburst/v1/notebooks/"


async def _until_complete(
    http: httpx.AsyncClient,
    url: str,
    *,
    timeout: float = 120,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Poll the job as Times Square does; then fetch it with its result."""
    async with asyncio.timeout(timeout):
        while True:
            response = await http.get(url, params={"result": "false"}, headers=headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            assert body["status"] in {"deferred", "queued", "in_progress", "complete"}
            if body["status"] == "complete":
                assert "ipynb" not in body
                break
            await asyncio.sleep(0.2)
    final = await http.get(url, headers=headers)
    assert final.status_code == 200
    result: dict[str, Any] = final.json()
    return result


async def _submit(
    http: httpx.AsyncClient,
    base: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await http.post(base + SUBMIT, json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == job["self_url"]
    assert job["self_url"] == f"{base}/noteburst/v1/notebooks/{job['job_id']}"
    assert job["status"] in {"queued", "in_progress"}
    assert {"job_id", "kernel_name", "enqueue_time", "timeout"} <= job.keys()
    return job


@pytest.mark.asyncio
async def test_times_square_client(tmp_path: Path, jupyter_server: Any) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        meta = await http.get(nb.url + "/noteburst/")
        assert meta.status_code == 200
        assert meta.json()["metadata"]["name"] == "noteburst"

        # Success, the notebook sent as a string (as Times Square does), the
        # kernel named with other capitals (Rubin's old "LSST" style).
        source = notebook("x = 6 * 7", "print(x)", kernel=None)
        job = await _submit(
            http,
            nb.url,
            {
                "ipynb": json.dumps(source),
                "kernel_name": "PYTHON3",
                "enable_retry": False,
                "timeout": "5m",
            },
        )
        assert job["timeout"] == 300.0
        assert job["kernel_name"] == "python3"
        done = await _until_complete(http, job["self_url"])
        assert done["success"] is True
        assert "error" not in done
        assert "ipynb_error" not in done
        assert "source" not in done
        assert done["start_time"] <= done["finish_time"]
        executed = json.loads(done["ipynb"])
        assert executed["cells"][1]["outputs"][0]["text"] == "42\n"
        # source=true gives the submitted notebook; result=false leaves out ipynb.
        both = (
            await http.get(job["self_url"], params={"source": "true", "result": "0"})
        ).json()
        assert json.loads(both["source"])["cells"][0]["source"] == "x = 6 * 7"
        assert "ipynb" not in both
        assert both["success"] is True

        # A cell error: success with ipynb_error, and the partial notebook.
        job = await _submit(
            http, nb.url, {"ipynb": notebook("raise ValueError('boom')", "1")}
        )
        done = await _until_complete(http, job["self_url"])
        assert done["success"] is True
        assert done["ipynb_error"]["name"] == "ValueError"
        assert "boom" in done["ipynb_error"]["message"]
        assert "error" not in done
        assert json.loads(done["ipynb"])["cells"][0]["outputs"][0]["ename"] == (
            "ValueError"
        )

        # A timeout: not success, error.code timeout, no notebook.
        job = await _submit(
            http,
            nb.url,
            {"ipynb": notebook("import time; time.sleep(60)"), "timeout": 2},
        )
        done = await _until_complete(http, job["self_url"])
        assert done["success"] is False
        assert done["error"]["code"] == "timeout"
        assert done["error"]["message"]
        assert "ipynb" not in done

        # An unknown job: Rubin's 404 shape.
        missing = await http.get(nb.url + "/noteburst/v1/notebooks/0123abc")
        assert missing.status_code == 404
        not_found = {"type": "unknown_job", "loc": ["path", "job_id"]}
        assert missing.json() == {"detail": [{**not_found, "msg": "Job not found"}]}


@pytest.mark.asyncio
async def test_bad_input(tmp_path: Path, jupyter_server: Any) -> None:
    config = make_config(tmp_path, jupyter_server)
    good = notebook("1")
    async with (
        running(config, run_worker=False) as nb,
        httpx.AsyncClient(timeout=60) as http,
    ):

        async def refused(body: Any, *, raw: bytes | None = None) -> list[Any]:
            if raw is None:
                response = await http.post(nb.url + SUBMIT, json=body)
            else:
                response = await http.post(nb.url + SUBMIT, content=raw)
            assert response.status_code == 422, response.text
            detail: list[Any] = response.json()["detail"]
            return detail

        invalid = await refused({"ipynb": "{not json"})
        assert invalid[0]["type"] == "invalid_notebook"
        assert invalid[0]["loc"] == ["body", "ipynb"]
        notanotebook = await refused({"ipynb": {"cells": "no"}})
        assert notanotebook[0]["loc"] == ["body", "ipynb"]
        timeout = await refused({"ipynb": good, "timeout": "soon"})
        assert timeout[0]["loc"] == ["body", "timeout"]
        assert "duration" in timeout[0]["msg"]
        negative = await refused({"ipynb": good, "timeout": -5})
        assert negative[0]["loc"] == ["body", "timeout"]
        kernel = await refused({"ipynb": good, "kernel_name": "LSST"})
        assert kernel[0] == {
            "type": "unknown_kernel",
            "loc": ["body", "kernel_name"],
            "msg": kernel[0]["msg"],
        }
        assert "'LSST'" in kernel[0]["msg"]
        assert "python3" in kernel[0]["msg"]
        missing = await refused({"kernel_name": "python3"})
        assert missing[0]["type"] == "missing"
        assert missing[0]["loc"] == ["body", "ipynb"]
        garbage = await refused(None, raw=b"{")
        assert garbage[0]["type"] == "json_invalid"
        mode = await refused({"ipynb": good, "cache": {"mode": "sometimes"}})
        assert mode[0]["loc"] == ["body", "cache", "mode"]
        age = await refused(
            {"ipynb": good, "cache": {"mode": "use", "max_age_seconds": -1}}
        )
        assert age[0]["loc"] == ["body", "cache", "max_age_seconds"]
        typo = await refused({"ipynb": good, "cache": {"mode": "use", "maxAge": 5}})
        assert typo[0]["type"] == "extra_forbidden"
        hook = {"url": "http://10.0.0.1/hook", "secret": new_secret()}
        private = await refused({"ipynb": good, "webhook": hook})
        assert private[0]["type"] == "webhook_refused"
        assert private[0]["loc"] == ["body", "webhook", "url"]
        secret = await refused(
            {"ipynb": good, "webhook": {"url": "http://127.0.0.1/", "secret": "x"}}
        )
        assert secret[0]["loc"] == ["body", "webhook", "secret"]

        job = await _submit(http, nb.url, {"ipynb": good})
        flag = await http.get(job["self_url"], params={"result": "maybe"})
        assert flag.status_code == 422
        assert flag.json()["detail"][0]["loc"] == ["query", "result"]


@pytest.mark.asyncio
async def test_proxy_auth_and_tenancy(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(
        tmp_path,
        jupyter_server,
        **backend_urls,
        auth_mode="proxy",
        trusted_proxies=["127.0.0.0/8"],
        proxy_scopes_header="X-Auth-Request-Scopes",
    )
    alice = {"X-Auth-Request-User": "alice", "X-Auth-Request-Scopes": "exec:notebook"}
    bob = {"X-Auth-Request-User": "bob", "X-Auth-Request-Scopes": "exec:notebook"}
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        anonymous = await http.post(nb.url + SUBMIT, json={"ipynb": notebook("1")})
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["detail"][0]["type"] == "unauthenticated"
        unscoped = await http.post(
            nb.url + SUBMIT,
            json={"ipynb": notebook("1")},
            headers={"X-Auth-Request-User": "carol", "X-Auth-Request-Scopes": "read"},
        )
        assert unscoped.status_code == 403

        job = await _submit(http, nb.url, {"ipynb": notebook("1 + 1")}, alice)
        done = await _until_complete(http, job["self_url"], headers=alice)
        assert done["success"] is True

        # Bob sees Alice's job exactly as an unknown one; so does nobody.
        for url in (job["self_url"], nb.url + "/noteburst/v1/notebooks/nope"):
            theirs = await http.get(url, params={"source": "true"}, headers=bob)
            assert theirs.status_code == 404
            assert theirs.json()["detail"][0]["type"] == "unknown_job"
        assert (await http.get(job["self_url"])).status_code == 401


@pytest.mark.asyncio
async def test_cache_and_webhook_extensions(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """A REST client knowing Noteburst's extensions gets GraphQL's cache and webhooks.

    The first job runs and fills the cache; the second, the same notebook
    with ``cache.mode = "use"``, is complete at once (a cache hit) and its
    webhook arrives, signed, naming the job.  A third without ``cache`` runs
    again, as Rubin's API always did.
    """
    config = make_config(
        tmp_path,
        jupyter_server,
        webhook_allowed_networks=["127.0.0.1/32"],
        webhook_timeout_seconds=5,
    )
    source = notebook("import random; random.random()")
    secret = new_secret()
    async with (
        receiver() as hook,
        running(config) as nb,
        httpx.AsyncClient(timeout=60) as http,
    ):
        first = await _submit(http, nb.url, {"ipynb": source, "cache": {"mode": "use"}})
        ran = await _until_complete(http, first["self_url"])
        hit = await http.post(
            nb.url + SUBMIT,
            json={
                "ipynb": source,
                "cache": {"mode": "USE", "max_age_seconds": 3600},
                "webhook": {"url": hook.url, "secret": secret},
            },
        )
        assert hit.status_code == 202, hit.text
        cached = hit.json()
        assert cached["status"] == "complete"
        assert cached["success"] is True
        reused = (await http.get(cached["self_url"])).json()
        assert reused["ipynb"] == ran["ipynb"]
        await hook.wait_for(1, timeout=60)
        again = await _submit(http, nb.url, {"ipynb": source})
        rerun = await _until_complete(http, again["self_url"])
    assert json.loads(rerun["ipynb"]) != json.loads(ran["ipynb"])  # ran again
    [request] = hook.received
    assert verify_signature(secret, request)
    message = request.json()["data"]
    assert (message["id"], message["status"], message["cacheHit"]) == (
        cached["job_id"],
        "SUCCEEDED",
        True,
    )


@pytest.mark.asyncio
async def test_limits_are_shared_with_graphql(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """REST and GraphQL submissions count against the same per-user limit."""
    config = make_config(
        tmp_path,
        jupyter_server,
        auth_mode="proxy",
        trusted_proxies=["127.0.0.0/8"],
        max_queued_per_user=2,
        max_running_per_user=None,
        max_submissions_per_minute=None,
    )
    alice = {"X-Auth-Request-User": "alice"}
    async with (
        running(config, run_worker=False) as nb,
        httpx.AsyncClient(timeout=60) as http,
    ):
        graphql = await http.post(
            nb.url + "/graphql",
            json={
                "query": "mutation($n: JSON!) { submitExecution(input: {notebook: $n})"
                " { __typename } }",
                "variables": {"n": notebook("1")},
            },
            headers=alice,
        )
        assert graphql.json()["data"]["submitExecution"]["__typename"] == "Execution"
        await _submit(http, nb.url, {"ipynb": notebook("2")}, headers=alice)
        refused = await http.post(
            nb.url + SUBMIT, json={"ipynb": notebook("3")}, headers=alice
        )
        assert refused.status_code == 429, refused.text
        [detail] = refused.json()["detail"]
        assert detail["type"] == "limit_exceeded"
        assert "queued executions" in detail["msg"]
        bob = {"X-Auth-Request-User": "bob"}
        await _submit(http, nb.url, {"ipynb": notebook("3")}, headers=bob)
