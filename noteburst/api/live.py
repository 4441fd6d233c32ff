"""The live page of an execution: ``GET /executions/{id}``, served by Noteburst.

A browser opening it sees the notebook's cells and, while the execution
runs, their outputs as they arrive over the ``executionStatus``
subscription (graphql-transport-ws, on the same origin's ``/graphql``),
each cell's state, the progress and, once terminal, the stored executed
notebook with its error.  The server renders only the frame and embeds
what it knows (the execution, and the submitted notebook, or the executed
one once terminal) as JSON; ``static/live/live.js`` does the rest in the
browser, so a terminal execution needs no websocket at all.

Who may see it is decided exactly as for GraphQL: the request is
authenticated by :func:`~noteburst.api.auth.authenticate` (the ingress's
user header in proxy mode) and the execution is read through the same
:class:`~noteburst.services.execution.ExecutionService` calls as the
``execution`` query, so an unknown id and another user's id get the same
404 page.  A browser cannot send an API token when it navigates, so in
tokens mode an anonymous request gets a 401 page with a form: the script
keeps the token in ``sessionStorage`` (this tab only), fetches the same
URL again with ``Authorization: Bearer`` and sends the token to the
websocket in ``connection_init``; the token never appears in a URL, so not
in any access log, history or ``Referer`` either.

Every URL in the page is relative (``../graphql``, ``../live-static/...``),
so it works under any mount prefix or ``root_path`` an ingress adds.  The
libraries it uses are vendored npm packages (:data:`VENDORED`, copied by
``scripts/vendor_live_page.py``, each with its LICENSE), loaded with
subresource integrity; there is no CDN.  The page is served with a
Content-Security-Policy that allows scripts from Noteburst only: a
notebook's HTML and markdown outputs are rendered as HTML, as JupyterLab
renders outputs of a notebook it ran, but scripts in them do not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.status import (
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from ..domain.auth import Caller
from ..domain.execution import Execution
from ..exceptions import (
    AuthenticationError,
    ClientError,
    ServiceUnavailableError,
)
from ..factory import ApiFactory
from .auth import authenticate

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "PAGE_PATH",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "SUBMIT_PATH",
    "VENDORED",
    "VENDOR_DIR",
    "VendoredAsset",
    "live_routes",
    "page_data",
    "subresource_integrity",
]

_logger = structlog.get_logger("noteburst.api.live")

PAGE_PATH: Final = "/executions/{execution_id}"
"""Route of an execution's page, beside ``/graphql``."""

SUBMIT_PATH: Final = "/executions"
"""Route of the small form that submits a notebook file and opens its page."""

STATIC_PREFIX: Final = "/live-static"
"""Where the page's script, style sheet and libraries are served."""

STATIC_DIR: Final = Path(__file__).parent / "static" / "live"
"""``live.js``, ``live.css`` and the vendored libraries (``vendor/``)."""

VENDOR_DIR: Final = STATIC_DIR / "vendor"
"""The vendored npm files, ``<package>@<version>/<file>`` plus LICENSE."""

_TEMPLATE: Final = Path(__file__).parent / "templates" / "live.html"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        # Only Noteburst's own files run: not a notebook output's scripts or
        # event handlers (innerHTML never runs <script>; this stops the rest).
        "script-src 'self'",
        # Outputs style themselves (pandas' <style>, ANSI colours).
        "style-src 'self' 'unsafe-inline'",
        # Images come inline in the outputs (data: URLs).
        "img-src 'self' data:",
        "font-src 'self' data:",
        # GraphQL over HTTP and the websocket ('self' covers ws:/wss:).
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    )
)
"""The page's Content-Security-Policy."""

_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class VendoredAsset:
    """One npm file the page loads, vendored byte for byte.

    Parameters
    ----------
    package
        The npm package, pinned exactly in ``package.json``.
    version
        Its version.
    file
        The file inside the package.
    integrity
        Its SHA-384 (``sha384-<base64>``): the page's ``integrity``
        attribute, and what the vendoring script and the tests check.
    """

    package: str
    version: str
    file: str
    integrity: str

    @property
    def vendored_path(self) -> str:
        """Path under :data:`VENDOR_DIR`: ``<package>@<version>/<file>``."""
        return f"{self.package}@{self.version}/{self.file}"

    @property
    def license_path(self) -> str:
        """Path of the package's licence under :data:`VENDOR_DIR`."""
        return f"{self.package}@{self.version}/LICENSE"


VENDORED: Final = (
    # The graphql-transport-ws client (its UMD build: global `graphqlWs`).
    VendoredAsset(
        "graphql-ws",
        "6.4.2",
        "umd/graphql-ws.min.js",
        "sha384-mxvR4Mzbsb6QVx/9xI2gtQikQA6m8zMDBFnu3l//4/ROsWt7y2sUGWd+/tYQqDm7",
    ),
    # Markdown cells and text/markdown outputs (UMD: global `marked`).
    VendoredAsset(
        "marked",
        "18.3.0",
        "lib/marked.umd.js",
        "sha384-hH4NOxDIQY57RnVrD2fqqLH/RL4DK2iPPnw/nHh2KuepyxA6z62hUUPNnuXf6AMX",
    ),
    # ANSI colours of tracebacks and streams, HTML-escaped (an ES module).
    VendoredAsset(
        "ansi_up",
        "6.0.6",
        "ansi_up.js",
        "sha384-UqO5igYqtn31vMYkehbRHvHt4IjXnVP23CXozLpc755+milvKv//67GdhmweFyEF",
    ),
)
"""The libraries the page loads, in load order."""


def subresource_integrity(path: Path) -> str:
    """Return a file's ``sha384-<base64>`` subresource-integrity value."""
    digest = hashlib.sha384(path.read_bytes()).digest()
    return "sha384-" + base64.b64encode(digest).decode("ascii")


@cache
def _own_integrity(name: str) -> str:
    return subresource_integrity(STATIC_DIR / name)


def page_data(execution: Execution, notebook: dict[str, Any] | None) -> dict[str, Any]:
    """Return what the page starts from, with GraphQL's names and enum values.

    Parameters
    ----------
    execution
        The execution, as the caller may see it.
    notebook
        The executed notebook once terminal, else the submitted one.
    """
    error = execution.error
    return {
        "execution": {
            "id": execution.id,
            "status": execution.status.name,
            "terminal": execution.status.is_terminal,
            "progress": {
                "cellsTotal": execution.progress.cells_total,
                "cellsDone": execution.progress.cells_done,
            },
            "error": None
            if error is None
            else {
                "code": error.code.name,
                "message": error.message,
                "cellIndex": error.cell_index,
                "ename": error.ename,
                "evalue": error.evalue,
                "traceback": list(error.traceback),
            },
        },
        "notebook": notebook,
    }


def _json_for_script(data: object) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&``."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


@cache
def _template() -> string.Template:
    return string.Template(_TEMPLATE.read_text(encoding="utf-8"))


def render_page(
    *,
    title: str,
    data: dict[str, Any],
    body: str = "",
    status_code: int = 200,
    base: str = "..",
) -> HTMLResponse:
    """Render the page frame around ``body`` (HTML) with ``data`` for the script.

    Parameters
    ----------
    title
        The document's title (plain text).
    data
        The JSON the script starts from: ``execution`` and ``notebook``, or
        ``problem`` (``status``, ``message``, ``tokenForm``).
    body
        Server-rendered HTML of the main element (a problem's explanation),
        shown also without the script.
    status_code
        The HTTP status.
    base
        The relative path from the page to the application's root: ``..``
        from ``/executions/{id}``, ``.`` from ``/executions``.
    """
    static = base + STATIC_PREFIX
    vendor = f"{static}/vendor"
    scripts = []
    for asset in VENDORED:
        src = f"{vendor}/{asset.vendored_path}"
        if asset.file.endswith(".min.js") or asset.file.endswith(".umd.js"):
            scripts.append(
                f'<script defer src="{src}" integrity="{asset.integrity}"></script>'
            )
        else:
            # An ES module that live.js imports: preloaded with its integrity.
            scripts.append(
                f'<link rel="modulepreload" href="{src}" integrity="{asset.integrity}">'
            )
    page = _template().substitute(
        title=html.escape(title),
        static=static,
        css_integrity=_own_integrity("live.css"),
        js_integrity=_own_integrity("live.js"),
        vendored="\n".join(scripts),
        body=body,
        data=_json_for_script(data),
    )
    return HTMLResponse(page, status_code=status_code, headers=_HEADERS)


def _problem(
    status: int, title: str, message: str, *, token_form: bool = False
) -> HTMLResponse:
    body = (
        f'<section class="problem"><h1>{html.escape(title)}</h1>'
        f"<p>{html.escape(message)}</p>"
    )
    if token_form:
        # No name on the input and no action: without the script nothing
        # is submitted, so the token cannot end up in a URL.
        body += (
            '<form id="token-form" class="token-form" autocomplete="off">'
            '<label>API token <input id="token" type="password" '
            'autocomplete="off" spellcheck="false" required></label> '
            '<button type="submit">Show the execution</button>'
            '<p class="hint">Kept in this tab only (sessionStorage), sent as '
            "an Authorization header, never in a URL.</p></form>"
        )
    body += "</section>"
    data = {"problem": {"status": status, "message": message, "tokenForm": token_form}}
    return render_page(title=title, data=data, body=body, status_code=status)


def _not_found(execution_id: str) -> HTMLResponse:
    return _problem(
        HTTP_404_NOT_FOUND,
        "Execution not found",
        f"There is no execution {execution_id!r} that you may see.",
    )


async def _execution_page(
    factory: ApiFactory, caller: Caller, execution_id: str
) -> Response:
    """Read the execution as the ``execution`` query does, and render it."""
    service = factory.create_execution_service(caller)
    execution = await service.get(execution_id)
    if execution is None:
        return _not_found(execution_id)
    if execution.status.is_terminal:
        notebook = await service.get_notebook(execution_id)
    else:
        notebook = await service.get_source_notebook(execution_id)
    if notebook is None:  # purged between the two reads
        return _not_found(execution_id)
    return render_page(
        title=f"Execution {execution_id}", data=page_data(execution, notebook)
    )


def _submit_form(mode: str) -> HTMLResponse:
    """Render the form page: public, like GraphiQL's, as it holds no data."""
    extra_fields = ""
    if mode == "tokens":
        extra_fields = (
            '<label>API token <input id="token" type="password" '
            'autocomplete="off" spellcheck="false"></label>'
            '<p class="hint">Only needed once per tab: kept in sessionStorage, '
            "sent as an Authorization header, never in a URL.</p>"
        )
    body = (
        '<section class="submit"><h1>Run a notebook</h1>'
        '<form id="submit-form" autocomplete="off">'
        '<label>Notebook <input id="notebook-file" type="file" '
        'accept=".ipynb,application/x-ipynb+json,application/json" required>'
        f"</label>{extra_fields}"
        '<button type="submit">Run it and watch</button>'
        '<p class="form-message" role="status"></p></form></section>'
    )
    data = {"submit": {"tokenForm": mode == "tokens"}}
    return render_page(title="Run a notebook", data=data, body=body, base=".")


def live_routes(mode: str) -> list[BaseRoute]:
    """Return the page's route, the submission form's and the static files.

    Parameters
    ----------
    mode
        ``auth.mode``: in ``tokens`` mode an anonymous visitor is offered a
        token form (a browser cannot send a token when it navigates).
    """

    async def execution_page(request: Request) -> Response:
        execution_id = request.path_params["execution_id"]
        state: Any = request.state
        factory = ApiFactory(state.context)
        try:
            caller = await authenticate(factory, request, mode=mode)
            return await _execution_page(factory, caller, execution_id)
        except AuthenticationError as exc:
            return _problem(
                HTTP_401_UNAUTHORIZED,
                "Sign in to see this execution",
                exc.message,
                token_form=mode == "tokens",
            )
        except ClientError as exc:  # PermissionDeniedError: no Noteburst scope
            return _problem(HTTP_403_FORBIDDEN, "Not allowed", exc.message)
        except ServiceUnavailableError as exc:
            _logger.warning("Execution page refused", error=str(exc))
            return _problem(
                HTTP_503_SERVICE_UNAVAILABLE,
                "Try again shortly",
                "Noteburst cannot reach its database right now.",
            )

    async def submit_page(request: Request) -> Response:
        return _submit_form(mode)

    return [
        Route(PAGE_PATH, execution_page, methods=["GET"], name="execution-page"),
        Route(SUBMIT_PATH, submit_page, methods=["GET"], name="submit-page"),
        Mount(STATIC_PREFIX, app=StaticFiles(directory=STATIC_DIR), name="live-static"),
    ]
