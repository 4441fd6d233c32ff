"""The live page's frame and assets (noteburst/api/live.py), without a server.

The vendored libraries are the npm files ``package.json`` pins, byte for
byte, with the digests the page's ``integrity`` attributes carry; every URL
in the page is relative and served; the embedded JSON cannot end its
``<script>`` element early.  Who may see a page is tested over real HTTP
(tests/app_live_page_test.py) and in a browser (tests/app_browser_live_test.py).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin

import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Mount, Route

from noteburst.api.live import (
    CONTENT_SECURITY_POLICY,
    STATIC_DIR,
    VENDOR_DIR,
    VENDORED,
    live_routes,
    page_data,
    render_page,
    subresource_integrity,
)
from noteburst.domain.execution import (
    ErrorCode,
    Execution,
    ExecutionFailure,
    ExecutionStatus,
    Progress,
)

# See tests/api/graphiql_test.py: Starlette 1.x warns once, on import.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message=r"Using `httpx` with `starlette\.testclient` is deprecated",
        category=StarletteDeprecationWarning,
    )
    from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "node_modules"
URL_RE = re.compile(r"""(?:src|href)="([^"]*)\"""")
TAG_RE = re.compile(r"""<(?:script|link)\b[^>]*>""")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EXECUTION = Execution(
    id="e1",
    status=ExecutionStatus.FAILED,
    kernel_name="python3",
    timeout_seconds=60.0,
    created_at=NOW,
    progress=Progress(cells_total=3, cells_done=2),
    error=ExecutionFailure(
        code=ErrorCode.CELL_ERROR,
        message="cell 1 raised",
        cell_index=1,
        ename="ZeroDivisionError",
        evalue="division by zero",
        traceback=["\x1b[31mZeroDivisionError\x1b[0m"],
    ),
)


def _page() -> str:
    return bytes(render_page(title="t", data=page_data(EXECUTION, None)).body).decode()


@pytest.fixture
def client() -> TestClient:
    async def page(_: object) -> object:
        return render_page(title="Execution e1", data=page_data(EXECUTION, None))

    # Mounted where app.py mounts it: the page under /executions/.
    app = Starlette(routes=[Route("/executions/e1", page), *live_routes("none")])
    return TestClient(app)


def test_vendored_files_are_the_pinned_npm_files() -> None:
    assert NODE_MODULES.is_dir(), "run `npm ci` (scripts/_env.sh does)"
    pins = json.loads((REPO / "package.json").read_text())["dependencies"]
    for asset in VENDORED:
        assert pins[asset.package] == asset.version
        vendored = VENDOR_DIR / asset.vendored_path
        original = NODE_MODULES / asset.package / asset.file
        assert vendored.read_bytes() == original.read_bytes(), asset
        assert subresource_integrity(vendored) == asset.integrity, asset
        assert (VENDOR_DIR / asset.license_path).read_text().strip()


def test_nothing_else_is_vendored() -> None:
    expected = {
        path for asset in VENDORED for path in (asset.vendored_path, asset.license_path)
    }
    found = {
        str(path.relative_to(VENDOR_DIR))
        for path in VENDOR_DIR.rglob("*")
        if path.is_file()
    }
    assert found == expected


def test_the_script_imports_the_vendored_module() -> None:
    script = (STATIC_DIR / "live.js").read_text()
    imports = re.findall(r'^import .* from "([^"]+)";$', script, re.M)
    modules = [a for a in VENDORED if not a.file.endswith((".min.js", ".umd.js"))]
    assert imports == [f"./vendor/{a.vendored_path}" for a in modules]


def test_every_url_is_relative_and_served(client: TestClient) -> None:
    response = client.get("/executions/e1")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = response.text
    assert not re.search(r"\b(?:https?|wss?)://", page)
    urls = URL_RE.findall(page)
    assert len(urls) == len(VENDORED) + 3  # favicon, style sheet, live.js
    for url in urls:
        assert url.startswith("../live-static/"), url  # no scheme, no host
        served = client.get("/executions/" + url)
        assert served.status_code == 200, url


def test_under_a_mount_prefix_the_relative_urls_still_resolve() -> None:
    async def page(_: object) -> object:
        return render_page(title="Execution e1", data=page_data(EXECUTION, None))

    inner = Starlette(routes=[Route("/executions/e1", page), *live_routes("none")])
    client = TestClient(Starlette(routes=[Mount("/prefix", app=inner)]))
    response = client.get("/prefix/executions/e1")
    assert response.status_code == 200
    for url in URL_RE.findall(response.text):
        resolved = urljoin("http://testserver/prefix/executions/e1", url)
        assert resolved.startswith("http://testserver/prefix/live-static/")
        assert client.get(resolved).status_code == 200, resolved
    form = client.get("/prefix/executions")
    assert form.status_code == 200
    for url in URL_RE.findall(form.text):
        resolved = urljoin("http://testserver/prefix/executions", url)
        assert resolved.startswith("http://testserver/prefix/live-static/")
        assert client.get(resolved).status_code == 200, resolved


def test_the_form_submits_nothing_without_the_script(client: TestClient) -> None:
    for mode in ("none", "tokens"):
        app = Starlette(routes=live_routes(mode))
        page = TestClient(app).get("/executions").text
        form = re.search(r"<form.*?</form>", page, re.S)
        assert form is not None
        assert "name=" not in form[0]
        assert "action=" not in form[0]
        assert ('id="token"' in form[0]) is (mode == "tokens")


def test_integrity_matches_the_served_bytes(client: TestClient) -> None:
    tags = [t for t in TAG_RE.findall(_page()) if "integrity=" in t]
    assert len(tags) == len(VENDORED) + 2  # and live.css, live.js
    for tag in tags:
        url = URL_RE.search(tag)
        integrity = re.search(r'integrity="([^"]+)"', tag)
        assert url is not None
        assert integrity is not None
        body = client.get("/executions/" + url[1]).content
        path = STATIC_DIR / url[1].removeprefix("../live-static/")
        assert path.read_bytes() == body
        assert subresource_integrity(path) == integrity[1]


def test_embedded_json_cannot_close_its_element() -> None:
    notebook = {"cells": [{"source": "</script><script>alert(1)</script>\u2028&"}]}
    response = render_page(title="<t>", data=page_data(EXECUTION, notebook))
    page = bytes(response.body).decode()
    match = re.search(r'id="noteburst-data">(.*?)</script>', page, re.S)
    assert match is not None
    assert "<" not in match[1]
    assert json.loads(match[1])["notebook"] == notebook
    assert "<title>&lt;t&gt;</title>" in page


def test_page_data_uses_graphql_names() -> None:
    data = page_data(EXECUTION, {"cells": []})
    assert data["execution"] == {
        "id": "e1",
        "status": "FAILED",
        "terminal": True,
        "progress": {"cellsTotal": 3, "cellsDone": 2},
        "error": {
            "code": "CELL_ERROR",
            "message": "cell 1 raised",
            "cellIndex": 1,
            "ename": "ZeroDivisionError",
            "evalue": "division by zero",
            "traceback": ["\x1b[31mZeroDivisionError\x1b[0m"],
        },
    }
    running = page_data(
        replace(EXECUTION, status=ExecutionStatus.RUNNING, error=None), None
    )
    assert running["execution"]["terminal"] is False
    assert running["execution"]["error"] is None
