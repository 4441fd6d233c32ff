"""The REST API of one Jupyter server: status, kernelspecs, kernels.

The same client talks to a standalone jupyter_server (base URL
``http://127.0.0.1:PORT/``) and to a JupyterHub user server through the hub
proxy (base URL ``https://hub/user/NAME/``).  Its rules come from what was
measured on both (see ``jupyter-on-loopback.md``):

* Authentication is the ``Authorization: token ...`` header on every request,
  never cookies.  jupyter_server answers a token-authenticated request with a
  login cookie; a client that sent it back would be cookie-authenticated and
  then fail the XSRF check on POST.  So outgoing ``Cookie`` headers are
  stripped and cookies set by the server are dropped from the shared client's
  jar.
* Redirects are never followed: the hub answers 302 (and, if followed, 424)
  for a user server that is gone, which becomes
  :class:`~.exceptions.LabUnavailableError`.
* Every request has a timeout, and every httpx exception becomes a
  :class:`~.exceptions.JupyterError` subclass here, at the boundary.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx

from .exceptions import (
    JupyterWebError,
    KernelStartError,
    LabUnavailableError,
)

__all__ = ["JupyterRestClient"]

_GONE_STATUSES = frozenset({301, 302, 303, 307, 308, 424, 502, 503, 504})
"""Redirects (hub: "server not running"), 424 (hub: "no longer running") and
gateway errors (proxy without a backend)."""


class JupyterRestClient:
    """Client for the REST API of one Jupyter server.

    Parameters
    ----------
    http
        Shared HTTP client.  Its cookie jar is not used for authentication
        and is not filled by this client.
    base_url
        Base URL of the Jupyter server, e.g. ``http://127.0.0.1:8888/`` or
        ``https://hub.example/user/bot-1/``.
    token
        API token sent as ``Authorization: token ...``; `None` for no auth.
    timeout
        Timeout in seconds of every request.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        token: str | None,
        timeout: float,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/") + "/"
        self._token = token
        self.timeout = timeout

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (also the websocket handshake)."""
        return {"Authorization": f"token {self._token}"} if self._token else {}

    def url(self, path: str) -> str:
        """Return the absolute URL of ``path`` (relative to the base URL)."""
        return self.base_url + path.lstrip("/")

    def ws_url(self, kernel_id: str, session_id: str) -> str:
        """Return the websocket URL of a kernel's channels.

        Parameters
        ----------
        kernel_id
            Kernel id.
        session_id
            Client session id; jupyter_server keys message buffering on it.

        Returns
        -------
        str
            ``ws(s)://.../api/kernels/ID/channels?session_id=...``.
        """
        parts = urlsplit(self.url(f"api/kernels/{quote(kernel_id, safe='')}/channels"))
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = urlencode({"session_id": session_id})
        return urlunsplit((scheme, parts.netloc, parts.path, query, ""))

    async def status(self) -> dict[str, Any]:
        """Return the server's ``GET /api/status`` document.

        Raises
        ------
        LabUnavailableError
            If the server cannot be reached or is gone.
        JupyterWebError
            For any other failure.
        """
        return _json_object(await self._request("GET", "api/status", expected={200}))

    async def kernelspecs(self) -> list[str]:
        """Return the names of the kernelspecs the server offers.

        Raises
        ------
        LabUnavailableError
            If the server cannot be reached or is gone.
        JupyterWebError
            For any other failure.
        """
        response = await self._request("GET", "api/kernelspecs", expected={200})
        specs = _json_object(response).get("kernelspecs")
        if not isinstance(specs, dict):
            raise JupyterWebError.from_response(
                response, "kernelspecs document without specs"
            )
        return list(specs)

    async def create_kernel(self, name: str) -> str:
        """Start a kernel and return its id.

        The server answers as soon as the process is launched; the kernel is
        ready when the websocket handshake to it completes.

        Parameters
        ----------
        name
            Kernelspec name, e.g. ``python3``.

        Raises
        ------
        KernelStartError
            If the server cannot start it (jupyter_server answers 500 for an
            unknown kernelspec).
        LabUnavailableError
            If the server cannot be reached or is gone.
        JupyterWebError
            For any other failure.
        """
        response = await self._request(
            "POST", "api/kernels", json={"name": name}, expected={201, 500}
        )
        if response.status_code == 500:  # noqa: PLR2004
            detail = JupyterWebError.from_response(response)
            raise KernelStartError(
                f"server could not start kernel {name!r}: {detail}", kernel_name=name
            )
        kernel_id = _json_object(response).get("id")
        if not isinstance(kernel_id, str):
            raise JupyterWebError.from_response(response, "kernel model without id")
        return kernel_id

    async def interrupt_kernel(self, kernel_id: str) -> None:
        """Interrupt a kernel (SIGINT); the running cell ends with an error.

        Raises
        ------
        LabUnavailableError
            If the server cannot be reached or is gone.
        JupyterWebError
            For any other failure, including an unknown kernel (404).
        """
        path = f"api/kernels/{quote(kernel_id, safe='')}/interrupt"
        await self._request("POST", path, expected={204})

    async def delete_kernel(self, kernel_id: str) -> None:
        """Shut a kernel down; a kernel that is already gone is not an error.

        Raises
        ------
        LabUnavailableError
            If the server cannot be reached or is gone.
        JupyterWebError
            For any other failure.
        """
        path = f"api/kernels/{quote(kernel_id, safe='')}"
        await self._request("DELETE", path, expected={204, 404})

    async def _request(
        self,
        method: str,
        path: str,
        *,
        expected: set[int],
        json: Any = None,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            self.url(path),
            json=json,
            headers=self.auth_headers,
            timeout=self.timeout,
        )
        # Never authenticate with (or keep) the login cookie: header only.
        request.headers.pop("Cookie", None)
        try:
            response = await self._http.send(request, follow_redirects=False)
        except httpx.TransportError as exc:
            raise LabUnavailableError.from_exception(exc) from exc
        except httpx.HTTPError as exc:
            raise JupyterWebError.from_exception(exc) from exc
        self._forget_cookies(response)
        if response.status_code in expected:
            return response
        if response.status_code in _GONE_STATUSES:
            raise LabUnavailableError.from_response(
                response, f"Jupyter server unavailable (HTTP {response.status_code})"
            )
        raise JupyterWebError.from_response(response)

    def _forget_cookies(self, response: httpx.Response) -> None:
        names = {
            header.split("=", 1)[0].strip()
            for header in response.headers.get_list("set-cookie")
        }
        if not names:
            return
        jar = self._http.cookies.jar
        for cookie in list(jar):
            if cookie.name in names:
                jar.clear(cookie.domain, cookie.path, cookie.name)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JupyterWebError.from_response(
            response, f"response is not JSON: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise JupyterWebError.from_response(response, "response is not a JSON object")
    return value
