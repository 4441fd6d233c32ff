"""GraphiQL served from assets shipped inside the package, with no CDN.

Strawberry's built-in GraphiQL page loads React, ReactDOM, js-cookie, GraphiQL
and the explorer plugin from ``unpkg.com``. The clusters Noteburst runs in
reach no CDN, so that page would stay at "Loading..." forever. This module
renders the very same page with every CDN URL pointed at copies of those files
vendored under ``noteburst/api/static/graphiql`` (one folder per
``<package>@<version>``, mirroring the CDN's layout, each with its LICENSE),
and provides the Starlette route that serves them.

The vendored files are byte-identical to the ones Strawberry pins (the
regeneration script and the tests check them against the page's own
subresource-integrity hashes). When a Strawberry upgrade moves to other
versions, `render_graphiql` raises instead of serving a page that would reach
for the internet; regenerate the assets with::

    npm ci && npm run vendor-graphiql

Given a `GraphiQLExample`, the page opens on it instead of GraphiQL's generic
welcome text: the example's document in the query editor and its variables
in the Variables pane.  GraphiQL 3 has no ``defaultVariables`` (and ignores
the variables of ``defaultTabs`` when it first fills its editors), so the
example replaces the initial value Strawberry's page already gives its
editors when the URL carries no query; as with Strawberry's welcome text, a
returning visitor keeps their stored tabs and lands on the example's.  The
inline script is rewritten by exact text, and a Strawberry upgrade that
changes that text makes `render_graphiql` raise rather than serve a page
that silently lost the example.

Share links work as GraphiQL users expect: the page reads ``query`` (GraphQL
over HTTP's name, which `noteburst.api.auth.wants_graphiql_page` now routes
to the page for browsers) as well as its own ``q``, with ``variables`` and
``operationName``, decoded as ``URLSearchParams`` does (``+`` is a space;
Strawberry's ``decodeURIComponent`` kept it a ``+`` and broke such links).
The operation a link names (or the example's) runs on the run button while
the editors hold what the page opened on; after an edit GraphiQL chooses.

The page is otherwise unchanged: queries go to the page's own URL and
subscriptions use the graphql-transport-ws protocol on the same URL (``ws:``
or ``wss:``), through the graphql-ws client bundled in ``graphiql.min.js``.

Wiring it into a Strawberry ASGI app::

    class GraphQLApp(GraphQL[Context, None]):
        async def render_graphql_ide(self, request: Request) -> Response:
            prefix = request.scope.get("root_path", "") + "/graphiql-static"
            return HTMLResponse(render_graphiql(prefix))

    app = Starlette(routes=[Route("/graphql", GraphQLApp(schema)), *static_routes()])
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from strawberry.http.ides import get_graphql_ide_html

__all__ = [
    "FAVICON",
    "STATIC_DIR",
    "CdnAsset",
    "GraphiQLExample",
    "find_cdn_assets",
    "render_graphiql",
    "static_routes",
]

STATIC_DIR: Final = Path(__file__).parent / "static" / "graphiql"
"""Folder holding the vendored GraphiQL assets, served by `static_routes`."""

FAVICON: Final = "favicon.svg"
"""File, under `STATIC_DIR`, replacing the page's inline SVG favicon.

The inline favicon is a ``data:`` URI whose SVG names its XML namespace with
an ``http://`` URL; serving it as a file keeps the page free of any URL.
"""

# A <script> or <link> start tag; quoted attribute values may contain ">".
_TAG_RE: Final = re.compile(r"""<(?:script|link)\b(?:[^>"']|"[^"]*"|'[^']*')*>""")
_ATTR_RE: Final = re.compile(
    r"""(?P<name>[^\s=/>"']+)(?:\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s>"']+)))?"""
)
# "/react@18.2.0/umd/react.production.min.js" or with a scope,
# "/@graphiql/plugin-explorer@1.0.2/dist/style.css".
_NPM_PATH_RE: Final = re.compile(
    r"^/(?P<package>(?:@[^/@]+/)?[^/@]+)@(?P<version>[^/]+)/(?P<file>.+)$"
)
_DATA_SVG_HREF_RE: Final = re.compile(r"""href\s*=\s*"data:image/svg\+xml,[^"]*\"""")
# An attribute value naming another host: absolute or protocol-relative URL.
_OTHER_HOST_RE: Final = re.compile(r"\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
# Anywhere in the page, including scripts and inline data.
_ANY_URL_RE: Final = re.compile(r"\b(?:https?|wss?)://[^\s\"'<>]*", re.IGNORECASE)
# Strawberry's welcome text: a template literal (it holds no backquote).
_EXAMPLE_QUERY_RE: Final = re.compile(r"const EXAMPLE_QUERY = `[^`]*`;")
_INITIAL_VARIABLES: Final = """React.useState(
          parameters.variables,
        );"""
_HEADERS_STATE: Final = (
    "const [headers, setHeaders] = React.useState(parameters.headers);"
)
_FETCHER_START: Final = "const fetcher = GraphiQL.createFetcher({"
_FETCHER_END: Final = "subscriptionUrl,\n      });"
_BODY_OVERFLOW: Final = "width: 100%;\n        overflow: hidden;"
_QUERY_PROP: Final = "\n          query: query,"
_PARSE_PARAMETERS: Final = """\
      for (const entry of window.location.search.slice(1).split("&")) {
        const eq = entry.indexOf("=");
        if (eq >= 0) {
          parameters[decodeURIComponent(entry.slice(0, eq))] =
            decodeURIComponent(entry.slice(eq + 1));
        }
      }
"""
# Share links are decoded as URLSearchParams does: "+" is a space (as forms
# and most link builders encode it; decodeURIComponent keeps it a "+") and a
# stray "%" does not throw.  GraphQL over HTTP names the document "query";
# GraphiQL's page writes it as "q": both open it.
_SHARE_LINK_PARAMETERS: Final = """\
      for (const [key, value] of new URLSearchParams(window.location.search)) {
        parameters[key] = value;
      }
      if (parameters.q === undefined && parameters.query !== undefined) {
        parameters.q = parameters.query;
      }
      delete parameters.query;

      const EXAMPLE_VARIABLES = EXAMPLE_VARIABLES_JS;
      const EXAMPLE_OPERATION = EXAMPLE_OPERATION_JS;
      const OPENED_OPERATION =
        parameters.operationName ||
        (parameters.q ? undefined : EXAMPLE_OPERATION);
"""
_PINNED_FETCHER: Final = r"""

      function fetcher(params, options) {
        // The text sent is current (GraphiQL's parsed document may not be).
        if (
          params.operationName === OPENED_OPERATION &&
          !definesOperation(params.query, OPENED_OPERATION)
        ) {
          params = { ...params, operationName: undefined };
        }
        return fetchGraphQL(params, options);
      }

      function definesOperation(query, name) {
        return (
          /^[_A-Za-z][_0-9A-Za-z]*$/.test(name) &&
          new RegExp(
            "\\b(?:query|mutation|subscription)\\s+" + name + "(?![_0-9A-Za-z])",
          ).test(query)
        );
      }"""


@dataclass(frozen=True, slots=True)
class GraphiQLExample:
    """What GraphiQL opens on when the URL names no query.

    Parameters
    ----------
    query
        The GraphQL document for the query editor (comments included).
    variables
        The JSON text for the Variables pane.
    operation_name
        The operation GraphiQL's run button runs while the editors still
        hold the example (with several operations it would otherwise ask);
        `None` lets GraphiQL ask.
    """

    query: str
    variables: str
    operation_name: str | None = None


@dataclass(frozen=True, slots=True)
class CdnAsset:
    """One file that Strawberry's GraphiQL page loads from the CDN.

    Parameters
    ----------
    url
        The absolute URL in the page, e.g.
        ``https://unpkg.com/react@18.2.0/umd/react.production.min.js``.
    package
        The npm package, e.g. ``react`` or ``@graphiql/plugin-explorer``.
    version
        The exact version pinned in the URL.
    file
        The file's path inside the package, e.g. ``umd/react.production.min.js``.
    integrity
        The tag's ``integrity`` attribute, if any (``sha384-...``).
    """

    url: str
    package: str
    version: str
    file: str
    integrity: str | None

    @property
    def vendored_path(self) -> str:
        """Path of the vendored copy, relative to `STATIC_DIR`.

        Returns
        -------
        str
            ``<package>@<version>/<file>``, the CDN's own layout.
        """
        return f"{self.package}@{self.version}/{self.file}"


def find_cdn_assets(html: str) -> list[CdnAsset]:
    """List the absolute URLs that ``<script>`` and ``<link>`` tags load.

    Parameters
    ----------
    html
        A GraphQL IDE page, such as Strawberry's GraphiQL template.

    Returns
    -------
    list of CdnAsset
        One entry per tag whose ``src`` or ``href`` is an absolute URL, in
        page order.

    Raises
    ------
    ValueError
        If such a URL is not of the npm CDN form
        ``<host>/<package>@<version>/<file>``, so cannot be vendored.
    """
    assets: list[CdnAsset] = []
    for tag in _TAG_RE.finditer(html):
        attrs = _attributes(tag.group())
        url = attrs.get("src") or attrs.get("href") or ""
        if not _OTHER_HOST_RE.match(url):
            continue
        match = _NPM_PATH_RE.match(urlsplit(url).path)
        if match is None:
            msg = f"Not an npm CDN URL of the form <package>@<version>/<file>: {url}"
            raise ValueError(msg)
        assets.append(
            CdnAsset(
                url=url,
                package=match["package"],
                version=match["version"],
                file=match["file"],
                integrity=attrs.get("integrity"),
            )
        )
    return assets


def render_graphiql(static_prefix: str, example: GraphiQLExample | None = None) -> str:
    """Render Strawberry's GraphiQL page with no reference to any other host.

    Parameters
    ----------
    static_prefix
        Absolute URL path where `static_routes` serves the vendored assets,
        as the browser must request it, e.g. ``/graphiql-static``; a trailing
        slash is ignored. Include the ASGI ``root_path`` if the app is mounted
        below one. A URL with a host is refused like any other host.
    example
        What the editors hold when the URL names no query; by default
        Strawberry's generic welcome text and no variables.

    Returns
    -------
    str
        The HTML page. Every CDN URL becomes ``{static_prefix}/<file>``, every
        ``integrity`` attribute is recomputed from the vendored file (so the
        browser still verifies what it runs), ``crossorigin`` is kept
        (harmless on the same origin), and the inline favicon becomes
        `FAVICON`.

    Raises
    ------
    RuntimeError
        If the page loads a file that is not vendored (typically after a
        Strawberry upgrade that changes versions), still names another host,
        or no longer has the script text the example replaces.
    """
    return _render(get_graphql_ide_html(graphql_ide="graphiql"), static_prefix, example)


def static_routes(prefix: str = "/graphiql-static") -> list[BaseRoute]:
    """Routes that serve the vendored GraphiQL assets.

    Parameters
    ----------
    prefix
        URL path to mount the assets at; pass the same value (plus any
        ``root_path``) to `render_graphiql`.

    Returns
    -------
    list of starlette.routing.BaseRoute
        A single `~starlette.routing.Mount`, named ``graphiql-static``, of a
        `~starlette.staticfiles.StaticFiles` app over `STATIC_DIR`.
    """
    return [
        Mount(
            prefix.rstrip("/"),
            app=StaticFiles(directory=STATIC_DIR),
            name="graphiql-static",
        )
    ]


@lru_cache(maxsize=16)
def _render(html: str, static_prefix: str, example: GraphiQLExample | None) -> str:
    html = _configure(html, example)
    prefix = static_prefix.rstrip("/")
    try:
        assets = {asset.url: asset for asset in find_cdn_assets(html)}
    except ValueError as exc:
        raise RuntimeError(f"Cannot serve GraphiQL without a CDN: {exc}") from exc

    def rewrite_tag(tag: re.Match[str]) -> str:
        text = tag.group()
        attrs = _attributes(text)
        asset = assets.get(attrs.get("src") or attrs.get("href") or "")
        if asset is None:
            return text
        path = STATIC_DIR / asset.vendored_path
        if not path.is_file():
            msg = (
                f"Strawberry's GraphiQL page loads {asset.url}, which is not "
                f"vendored in {STATIC_DIR}; run `npm ci && npm run vendor-graphiql`."
            )
            raise RuntimeError(msg)
        text = text.replace(asset.url, f"{prefix}/{asset.vendored_path}")
        if asset.integrity is not None:
            text = text.replace(asset.integrity, _subresource_integrity(path))
        return text

    page = _DATA_SVG_HREF_RE.sub(f'href="{prefix}/{FAVICON}"', html)
    page = _TAG_RE.sub(rewrite_tag, page)
    if leftover := _ANY_URL_RE.search(page):
        msg = (
            f"The GraphiQL page still names another host ({leftover.group()!r}); "
            "noteburst.api.graphiql does not know how to vendor it."
        )
        raise RuntimeError(msg)
    return page


def _configure(html: str, example: GraphiQLExample | None) -> str:
    """Rewrite the page's inline script: share links, and the opening example."""
    if example is not None:
        html = _replace_once(
            html,
            _EXAMPLE_QUERY_RE,
            f"const EXAMPLE_QUERY = {_js_string(example.query)};",
        )
    html = _replace_once(
        html,
        re.compile(re.escape(_PARSE_PARAMETERS)),
        _SHARE_LINK_PARAMETERS.replace(
            "EXAMPLE_VARIABLES_JS",
            _js_string(example.variables) if example else "undefined",
        ).replace(
            "EXAMPLE_OPERATION_JS",
            _js_string(example.operation_name)
            if example and example.operation_name
            else "undefined",
        ),
    )
    html = _replace_once(
        html,
        re.compile(re.escape(_INITIAL_VARIABLES)),
        "React.useState(\n"
        "          parameters.variables ??\n"
        "            (parameters.q ? undefined : EXAMPLE_VARIABLES),\n"
        "        );",
    )
    # With several operations and no operationName, GraphiQL's run button
    # opens a menu asking which to run: one click more than a first visit
    # or a shared link should take.  Name the operation (the link's
    # operationName, else the example's) while the editors hold what the
    # page opened on; after any edit (a tab switch sets the editors too),
    # GraphiQL chooses as usual (the menu, or the operation at the cursor on
    # Ctrl-Enter).
    html = _replace_once(
        html,
        re.compile(re.escape(_HEADERS_STATE)),
        _HEADERS_STATE
        + """
        const [opened] = React.useState(() => ({ query, variables }));
        const operationName =
          query === opened.query && variables === opened.variables
            ? OPENED_OPERATION
            : undefined;
        React.useEffect(() => {
          if (operationName === undefined && parameters.operationName) {
            updateURL({ operationName: undefined });
          }
        }, [operationName]);""",
    )
    # GraphiQL reports edits 100 ms late: a click right after replacing the
    # document could still send the pinned name with a document lacking it.
    html = _replace_once(
        html,
        re.compile(re.escape(_FETCHER_START)),
        "const fetchGraphQL = GraphiQL.createFetcher({",
    )
    html = _replace_once(
        html,
        re.compile(re.escape(_FETCHER_END)),
        _FETCHER_END + _PINNED_FETCHER,
    )
    # The run button's operation menu (Radix, via react-remove-scroll-bar)
    # logs a console error when the body's overflow is "hidden", as the
    # page's style sets it; "clip" keeps the page from scrolling all the
    # same (browsers without it keep "hidden", and the harmless message).
    html = _replace_once(
        html,
        re.compile(re.escape(_BODY_OVERFLOW)),
        _BODY_OVERFLOW + "\n        overflow: clip;",
    )
    return _replace_once(
        html,
        re.compile(re.escape(_QUERY_PROP)),
        _QUERY_PROP + "\n          operationName: operationName,",
    )


def _replace_once(html: str, pattern: re.Pattern[str], replacement: str) -> str:
    page, count = pattern.subn(lambda _: replacement, html)
    if count != 1:
        msg = (
            "Strawberry's GraphiQL page changed: expected its script to contain "
            f"{pattern.pattern!r} exactly once, found it {count} times; "
            "update noteburst.api.graphiql."
        )
        raise RuntimeError(msg)
    return page


def _js_string(text: str) -> str:
    """Return a JavaScript string literal of ``text``, safe inside ``<script>``."""
    literal = json.dumps(text, ensure_ascii=False)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        literal = literal.replace(char, escape)
    return literal


@cache
def _subresource_integrity(path: Path) -> str:
    digest = hashlib.sha384(path.read_bytes()).digest()
    return "sha384-" + base64.b64encode(digest).decode("ascii")


def _attributes(tag: str) -> dict[str, str]:
    """Attributes of one start tag: lower-cased names, raw values."""
    attrs: dict[str, str] = {}
    name_end = re.match(r"<[^\s/>]*", tag)
    for match in _ATTR_RE.finditer(tag, name_end.end() if name_end else 0):
        value = match["dq"] or match["sq"] or match["bare"] or ""
        attrs.setdefault(match["name"].lower(), value)
    return attrs
