"""Serve the example front end on its own origin (standard library only).

    python3 examples/browser/serve.py [--port 8081] [--bind 127.0.0.1]

``/`` is this folder; ``/vendor/graphql-ws/`` is the ESM build of the
``graphql-ws`` package pinned in the repository's package.json (``npm ci``
at the repository's root installs it in node_modules).  A real front end
bundles graphql-ws instead.  The page is then at http://127.0.0.1:8081/ and
Noteburst must list that origin in NOTEBURST_CORS_ORIGINS (see
docs/front-ends.md).
"""

from __future__ import annotations

import argparse
import functools
import posixpath
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent
GRAPHQL_WS = HERE.parent.parent / "node_modules" / "graphql-ws" / "dist"
VENDOR_PREFIX = "/vendor/graphql-ws/"


class Handler(SimpleHTTPRequestHandler):
    """Files of this folder, and graphql-ws's build under /vendor/graphql-ws/."""

    extensions_map = {  # noqa: RUF012 (the base class's attribute)
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".html": "text/html; charset=utf-8",
    }

    def translate_path(self, path: str) -> str:
        """Map ``/vendor/graphql-ws/…`` into node_modules; the rest here."""
        clean = posixpath.normpath(unquote(urlsplit(path).path))
        if clean.startswith(VENDOR_PREFIX):
            name = clean.removeprefix(VENDOR_PREFIX)
            if "/" in name:  # the build is flat; nothing else is served
                return str(GRAPHQL_WS / "missing")
            return str(GRAPHQL_WS / name)
        return super().translate_path(path)

    def end_headers(self) -> None:
        """Ask the browser not to cache the example while it is edited."""
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet unless run as a script (see main)."""
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)


def make_server(bind: str = "127.0.0.1", port: int = 8081) -> ThreadingHTTPServer:
    """Return the server (not yet serving); ``serve_forever`` runs it."""
    if not (GRAPHQL_WS / "client.js").is_file():
        msg = f"{GRAPHQL_WS} is missing: run `npm ci` at the repository's root"
        raise SystemExit(msg)
    handler = functools.partial(Handler, directory=str(HERE))
    server = ThreadingHTTPServer((bind, port), handler)
    server.verbose = False  # type: ignore[attr-defined]
    return server


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = make_server(args.bind, args.port)
    server.verbose = True  # type: ignore[attr-defined]
    host, port = server.server_address[:2]
    print(f"serving the example on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
