"""GraphiQL is served with vendored assets and names no other host."""

from __future__ import annotations

import base64
import hashlib
import re
import warnings
from collections.abc import Iterator

import pytest
import strawberry
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.http.ides import get_graphql_ide_html

from noteburst.api import graphiql
from noteburst.api.graphiql import (
    FAVICON,
    STATIC_DIR,
    find_cdn_assets,
    render_graphiql,
    static_routes,
)

# Starlette 1.x warns, when starlette.testclient is imported, that driving the
# TestClient with httpx is deprecated in favour of httpx2, which the project
# does not depend on. The warning fires once, at import time, so a
# filterwarnings mark cannot reach it; silence exactly that warning, here only.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message=r"Using `httpx` with `starlette\.testclient` is deprecated",
        category=StarletteDeprecationWarning,
    )
    from starlette.testclient import TestClient

PREFIX = "/graphiql-static"
ASSET_RE = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)\"""")
INTEGRITY_RE = re.compile(r"""(?:src|href)="([^"]*)"\s+integrity="([^"]*)\"""")
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".svg": ("image/svg+xml",),
}


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"


class VendoredGraphiQL(GraphQL[None, None]):
    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(render_graphiql(PREFIX))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    schema = strawberry.Schema(query=Query)
    app = Starlette(
        routes=[Route("/graphql", VendoredGraphiQL(schema)), *static_routes(PREFIX)]
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def page(client: TestClient) -> str:
    response = client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text: str = response.text  # typed Any: TestClient's types come from httpx2
    return text


def sri(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()


def test_graphql_serves_the_graphiql_page(page: str) -> None:
    assert '<div id="graphiql"' in page
    assert "GraphiQL.createFetcher(" in page
    # Subscriptions still go over graphql-transport-ws to the page's own URL.
    assert "subscriptionUrl" in page


def test_graphql_still_answers_queries(client: TestClient) -> None:
    response = client.post("/graphql", json={"query": "{ hello }"})
    assert response.json() == {"data": {"hello": "world"}}


def test_page_names_no_other_host(page: str) -> None:
    assert re.search(r"\b[a-z][a-z0-9+.-]*://", page, re.IGNORECASE) is None
    assert "unpkg" not in page
    for url in ASSET_RE.findall(page):
        assert url.startswith(f"{PREFIX}/"), url


def test_page_loads_every_vendored_asset(page: str) -> None:
    loaded = {url.removeprefix(f"{PREFIX}/") for url in ASSET_RE.findall(page)}
    vendored = {
        asset.vendored_path for asset in find_cdn_assets(get_graphql_ide_html())
    }
    assert len(vendored) == 7
    assert loaded == {*vendored, FAVICON}


def test_every_asset_is_served(client: TestClient, page: str) -> None:
    urls = ASSET_RE.findall(page)
    assert urls
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        suffix = url[url.rindex(".") :]
        content_type = response.headers["content-type"].split(";")[0]
        assert content_type in CONTENT_TYPES[suffix], (url, content_type)
        assert len(response.content) > (100 if suffix == ".svg" else 500), url


def test_integrity_matches_the_served_bytes(client: TestClient, page: str) -> None:
    pairs = INTEGRITY_RE.findall(page)
    assert len(pairs) == 7
    for url, integrity in pairs:
        assert sri(client.get(url).content) == integrity, url


def test_vendored_files_are_the_ones_strawberry_pins() -> None:
    """After a Strawberry upgrade, this says to re-run the vendoring script."""
    for asset in find_cdn_assets(get_graphql_ide_html()):
        path = STATIC_DIR / asset.vendored_path
        assert path.is_file(), (
            f"{asset.url} is not vendored: run `npm ci && npm run vendor-graphiql`"
        )
        assert sri(path.read_bytes()) == asset.integrity, asset.url


def test_each_package_ships_its_license() -> None:
    for asset in find_cdn_assets(get_graphql_ide_html()):
        license_file = STATIC_DIR / f"{asset.package}@{asset.version}" / "LICENSE"
        assert "Permission is hereby granted" in license_file.read_text(), asset.url


def test_graphiql_bundles_the_websocket_client() -> None:
    """Subscriptions need graphql-ws, which must come inside graphiql.min.js."""
    (bundle,) = STATIC_DIR.glob("graphiql@*/graphiql.min.js")
    assert b"graphql-transport-ws" in bundle.read_bytes()


@pytest.mark.parametrize("prefix", ["/ide/", "/root/graphiql-static"])
def test_prefix_is_used_verbatim(prefix: str) -> None:
    page = render_graphiql(prefix)
    expected = prefix.rstrip("/") + "/"
    assert all(url.startswith(expected) for url in ASSET_RE.findall(page))


def test_custom_mount_prefix_serves_assets() -> None:
    with TestClient(Starlette(routes=static_routes("/assets/"))) as client:
        response = client.get(f"/assets/{FAVICON}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"


def test_unvendored_asset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    template = get_graphql_ide_html().replace("react@18.2.0", "react@99.0.0")
    monkeypatch.setattr(graphiql, "get_graphql_ide_html", lambda **_: template)
    with pytest.raises(RuntimeError, match=r"react@99\.0\.0.*not vendored"):
        render_graphiql(PREFIX)


def test_unknown_external_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    template = get_graphql_ide_html().replace(
        "</head>", '<script src="https://example.com/app.js"></script></head>'
    )
    monkeypatch.setattr(graphiql, "get_graphql_ide_html", lambda **_: template)
    with pytest.raises(RuntimeError, match=r"example\.com/app\.js"):
        render_graphiql(PREFIX)


def test_other_host_in_inline_code_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    template = get_graphql_ide_html().replace(
        "</body>", "<script>fetch('https://example.com/x')</script></body>"
    )
    monkeypatch.setattr(graphiql, "get_graphql_ide_html", lambda **_: template)
    with pytest.raises(RuntimeError, match=r"example\.com/x"):
        render_graphiql(PREFIX)


def test_example_refused_when_the_page_script_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Strawberry upgrade must not silently drop the example."""
    template = get_graphql_ide_html().replace("const EXAMPLE_QUERY", "const WELCOME")
    monkeypatch.setattr(graphiql, "get_graphql_ide_html", lambda **_: template)
    example = graphiql.GraphiQLExample(query="{ hello }", variables="{}")
    with pytest.raises(RuntimeError, match=r"EXAMPLE_QUERY.*found it 0 times"):
        render_graphiql(PREFIX, example)


def test_body_overflow_is_clipped_for_the_operation_menu() -> None:
    """Radix's menu logs a console error when the body's overflow is "hidden"."""
    page = render_graphiql(PREFIX)
    assert "overflow: hidden;\n        overflow: clip;" in page
