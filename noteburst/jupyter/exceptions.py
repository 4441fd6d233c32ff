"""Errors raised by the Jupyter adapters, converted at the I/O boundary.

Every failure that leaves :mod:`noteburst.jupyter` is a :class:`JupyterError`:
httpx and websockets exceptions are caught where the I/O happens and turned
into one of the classes below, so callers never need to know which transport
library is underneath, and never see a token in a message.

The hierarchy::

    JupyterError                the root; catch it to handle any Jupyter fault
    ├── JupyterWebError         an HTTP call failed: method, URL without
    │   │                       token, status, excerpt of the body
    │   └── LabUnavailableError the server is unreachable or gone (connection
    │                           refused, 302/424 from the hub proxy, websocket
    │                           dropped)
    ├── LabSpawnError           JupyterHub could not start a lab (its message,
    │                           or a spawn timeout)
    ├── KernelStartError        a kernel could not be started, including an
    │                           unknown kernel name (jupyter_server answers
    │                           500 for that)
    ├── KernelDiedError         the kernel died or was restarted while a cell
    │                           was running; carries ``cell_index``
    ├── CellTimeoutError        a cell exceeded its time limit; also a
    │   │                       `TimeoutError`; carries ``cell_index``
    │   └── NoOutputTimeoutError  a cell sent nothing for too long
    ├── KernelMessageTooLargeError  one kernel message exceeded the
    │                           connection's size limit
    └── KernelProtocolError     a message on the kernel websocket could not be
                                understood

A failing *cell* is not an exception here: :func:`~.execute.execute_notebook`
returns a :class:`~.execute.CellFailure` for it, because a notebook that raises
is a normal outcome of running it.  These exceptions are for infrastructure
faults, the ones that justify a retry on another kernel or lab.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

__all__ = [
    "CellTimeoutError",
    "JupyterError",
    "JupyterWebError",
    "KernelDiedError",
    "KernelMessageTooLargeError",
    "KernelProtocolError",
    "KernelStartError",
    "LabSpawnError",
    "LabUnavailableError",
    "NoOutputTimeoutError",
    "sanitize_url",
]

_BODY_EXCERPT = 500
"""How many characters of a response body an error keeps."""

_SECRET_PARAMS = frozenset({"token", "_xsrf", "access_token"})
_TOKEN_IN_TEXT = re.compile(r"(?i)(token[\"'=:\s]+)[A-Za-z0-9_\-\.]{8,}")


def sanitize_url(url: str | httpx.URL) -> str:
    """Return ``url`` without credentials in its query string or netloc.

    Parameters
    ----------
    url
        Any URL, as text or an `httpx.URL`.

    Returns
    -------
    str
        The URL with ``token``-like query parameters replaced by ``REDACTED``
        and any ``user:password@`` removed.
    """
    parts = urlsplit(str(url))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode(
        [
            (key, "REDACTED" if key.lower() in _SECRET_PARAMS else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact(text: str) -> str:
    return _TOKEN_IN_TEXT.sub(r"\1REDACTED", text)


class JupyterError(Exception):
    """Root of every error raised by :mod:`noteburst.jupyter`."""


class JupyterWebError(JupyterError):
    """An HTTP request to a Jupyter server failed.

    Parameters
    ----------
    message
        What went wrong, in words.
    method
        HTTP method of the failed request.
    url
        URL of the failed request; it is sanitised before being stored.
    status
        HTTP status, or `None` when no response arrived.
    body
        Response body; only a sanitised excerpt is kept.

    Attributes
    ----------
    method : str | None
        HTTP method.
    url : str | None
        Sanitised URL (no token).
    status : int | None
        HTTP status code, if a response arrived.
    body : str | None
        At most 500 characters of the response body, tokens redacted.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | httpx.URL | None = None,
        status: int | None = None,
        body: str | None = None,
    ) -> None:
        self.method = method
        self.url = sanitize_url(url) if url is not None else None
        self.status = status
        self.body = _redact(body[:_BODY_EXCERPT]) if body else None
        super().__init__(_redact(message))

    def __str__(self) -> str:
        text = super().__str__()
        where = " ".join(p for p in (self.method, self.url) if p)
        if where:
            text = f"{text} ({where}"
            text += f" -> {self.status})" if self.status is not None else ")"
        if self.body:
            text = f"{text}: {self.body}"
        return text

    @classmethod
    def from_response(
        cls, response: httpx.Response, message: str | None = None
    ) -> JupyterWebError:
        """Build the error for an unexpected HTTP response.

        Parameters
        ----------
        response
            The response; its body should already have been read.
        message
            Optional description; defaults to the status line.

        Returns
        -------
        JupyterWebError
            An instance of this class (or the subclass it is called on).
        """
        try:
            body = response.text
        except (httpx.ResponseNotRead, UnicodeDecodeError):
            body = None
        request = response.request
        return cls(
            message or f"HTTP {response.status_code} {response.reason_phrase}",
            method=request.method,
            url=request.url,
            status=response.status_code,
            body=body,
        )

    @classmethod
    def from_exception(
        cls, exc: httpx.HTTPError, message: str | None = None
    ) -> JupyterWebError:
        """Build the error for an httpx exception (transport error, timeout).

        Parameters
        ----------
        exc
            The httpx exception.
        message
            Optional description; defaults to the exception type and text.

        Returns
        -------
        JupyterWebError
            An instance of this class (or the subclass it is called on).
        """
        method: str | None = None
        url: httpx.URL | None = None
        try:
            request = exc.request
        except RuntimeError:  # the exception was raised without a request
            pass
        else:
            method, url = request.method, request.url
        status: int | None = None
        body: str | None = None
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            try:
                body = exc.response.text
            except (httpx.ResponseNotRead, UnicodeDecodeError):
                body = None
        detail = str(exc) or type(exc).__name__
        return cls(
            message or f"{type(exc).__name__}: {detail}",
            method=method,
            url=url,
            status=status,
            body=body,
        )


class LabUnavailableError(JupyterWebError):
    """The Jupyter server cannot be reached, has stopped, or dropped the socket.

    Raised for connection errors, for the hub proxy's "server gone" answers
    (302 to ``/hub/user/...`` and 424), and when the kernel websocket closes
    while the adapter still expects messages.  A retry on a fresh lab may
    succeed.
    """


class KernelStartError(JupyterError):
    """A kernel could not be started or connected to.

    Parameters
    ----------
    message
        What went wrong.
    kernel_name
        The requested kernelspec name, if known.
    """

    def __init__(self, message: str, *, kernel_name: str | None = None) -> None:
        super().__init__(message)
        self.kernel_name = kernel_name


class KernelDiedError(JupyterError):
    """The kernel died, or was restarted, while a cell was executing.

    Parameters
    ----------
    message
        What went wrong.
    cell_index
        Index into ``nb.cells`` of the cell that was running, if known.
    """

    def __init__(self, message: str, *, cell_index: int | None = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index


class KernelProtocolError(JupyterError):
    """A kernel websocket frame or message could not be understood."""


class CellTimeoutError(JupyterError, TimeoutError):
    """A cell ran longer than its ``cell_timeout``.

    It is a `TimeoutError`, like the one ``asyncio.timeout`` raises around a
    whole run, and carries the cell index.  The kernel is still busy with the
    cell: discard it.

    Parameters
    ----------
    cell_index
        Index of the cell in ``nb.cells``.
    timeout
        The limit that was exceeded, in seconds.
    """

    def __init__(self, cell_index: int, timeout: float) -> None:
        super().__init__(f"cell {cell_index} did not finish within {timeout} s")
        self.cell_index = cell_index
        self.timeout = timeout


class NoOutputTimeoutError(CellTimeoutError):
    """A cell sent nothing (no output, no status) for ``no_output_timeout``.

    A `CellTimeoutError` (so also a `TimeoutError`) with the cell index: a
    cell that stays silent that long is presumed stuck.  The kernel is still
    busy with the cell: discard it.

    Parameters
    ----------
    cell_index
        Index of the cell in ``nb.cells``.
    timeout
        The silence that was exceeded, in seconds.
    """

    def __init__(self, cell_index: int, timeout: float) -> None:
        JupyterError.__init__(
            self, f"cell {cell_index} produced no output for {timeout:g} s"
        )
        self.cell_index = cell_index
        self.timeout = timeout


class KernelMessageTooLargeError(JupyterError):
    """The kernel sent one message larger than the connection accepts.

    The websocket client refuses frames over its ``max_size`` (closing the
    connection with code 1009) rather than buffer an unbounded message, so
    the run cannot go on; it is not a fault of the lab (retrying would meet
    the same message).  Output caps cut smaller messages instead.

    Parameters
    ----------
    limit
        The largest message accepted, in bytes.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the kernel sent a message larger than {limit} bytes (one output "
            "too large to receive)"
        )
        self.limit = limit


class LabSpawnError(JupyterError):
    """A lab (JupyterHub user server) could not be started.

    Raised when the hub reports the spawn as failed (its message, such as
    ``Spawn failed: Server at ... didn't respond in 10 seconds``, is the
    error's text), when the spawn does not finish within the caller's
    timeout, or when the hub refuses to start the server.

    Parameters
    ----------
    message
        What went wrong.
    username
        The hub user whose server failed to start.
    """

    def __init__(self, message: str, *, username: str | None = None) -> None:
        super().__init__(message)
        self.username = username
