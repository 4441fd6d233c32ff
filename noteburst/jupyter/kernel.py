"""An open websocket to one running kernel.

:class:`KernelConnection` owns the websocket and one background reader task.
The reader decodes every frame (:mod:`.protocol`) and routes it by the
``msg_id`` of its parent request to that request's queue; traffic nobody
asked for (the server's nudge ``status`` messages, ``iopub_welcome``,
``shutdown_reply``, the kernel's ``starting`` status) is dropped.

The design follows the traps measured in ``jupyter-on-loopback.md``:

* ``max_size`` is :data:`MAX_MESSAGE_BYTES` (64 MiB), not the websockets
  default of 1 MiB, which closes the socket on the first large output (G4),
  nor unlimited, which would buffer any single message whole, however
  large.  Output caps cut messages below the limit; a larger one fails the
  connection with :class:`~.exceptions.KernelMessageTooLargeError`, which
  says so, instead of a bare dropped socket.
* If the reader stops for any reason (socket closed, undecodable frame), the
  error is stored and every waiter, present and future, gets it: nothing
  hangs silently.  A ``restarting``/``dead`` status from jupyter_server is
  delivered to every waiter as a message and then fails the connection with
  :class:`~.exceptions.KernelDiedError`.
* ``TCP_NODELAY`` is set on the client socket, the token travels in the
  handshake's ``Authorization`` header (never in the URL, G5), and the binary
  ``v1`` subprotocol is offered with a fallback to the legacy JSON protocol
  when the server picks none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from types import TracebackType
from typing import Final, Self

import websockets
from websockets.asyncio.client import ClientConnection

from . import protocol
from .exceptions import (
    JupyterError,
    KernelDiedError,
    KernelMessageTooLargeError,
    KernelProtocolError,
    KernelStartError,
    LabUnavailableError,
)
from .protocol import Message, WireProtocol
from .rest import JupyterRestClient

__all__ = ["MAX_MESSAGE_BYTES", "KernelConnection"]

_log = logging.getLogger(__name__)

_FAILED: Final = object()
"""Queue sentinel: the connection failed; raise the stored error."""

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""Largest kernel message (websocket frame) a connection accepts, in bytes."""

_MESSAGE_TOO_BIG: Final = 1009
"""Websocket close code for a frame over ``max_size`` (RFC 6455)."""

_GONE_STATUSES = frozenset({301, 302, 303, 307, 308, 424, 502, 503, 504})


class KernelConnection:
    """An open websocket to one kernel; use :meth:`open` to create one.

    Requests are sent with :meth:`execute` (or :meth:`request`), which
    returns the request's ``msg_id``; the replies to it (on any channel) are
    read in arrival order with :meth:`receive`, and :meth:`forget` drops what
    is left.  A connection is used by one task at a time.

    Attributes
    ----------
    kernel_id : str
        Id of the kernel on the server.
    session_id : str
        Client session id of this connection.
    protocol : WireProtocol
        The framing the server agreed to.
    username : str
        Username recorded in request headers.
    kernel_info_reply : Message or None
        The last ``kernel_info_reply`` received by :meth:`kernel_info` (or
        recorded by whoever asked for one, like the kernel pool), so a
        caller that needs the kernel's ``language_info`` does not pay
        another round trip for it.
    guard_installed : bool
        Whether :data:`~.protocol.STOP_AFTER_ERROR_GUARD` already ran in
        this kernel (the pool installs it while warming a kernel up), so
        :func:`~.execute.execute_notebook` does not send it again.
    """

    def __init__(
        self,
        *,
        websocket: ClientConnection,
        rest: JupyterRestClient,
        kernel_id: str,
        session_id: str,
        wire_protocol: WireProtocol,
        username: str,
    ) -> None:
        self._ws = websocket
        self._rest = rest
        self.kernel_id = kernel_id
        self.session_id = session_id
        self.protocol = wire_protocol
        self.username = username
        self.kernel_info_reply: Message | None = None
        self.guard_installed = False
        self._queues: dict[str, asyncio.Queue[Message | object]] = {}
        self._failure: JupyterError | None = None
        self._closing = False
        self._reader = asyncio.create_task(
            self._read_loop(), name=f"kernel-reader-{kernel_id}"
        )

    @classmethod
    async def open(
        cls,
        rest: JupyterRestClient,
        kernel_id: str,
        *,
        wire_protocol: WireProtocol = WireProtocol.V1,
        open_timeout: float = 60,
        username: str = "noteburst",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> KernelConnection:
        """Open the websocket to a kernel.

        jupyter_server holds the handshake open until the kernel answers and
        its iopub channel is connected, so when this returns the kernel is
        ready to execute.

        Parameters
        ----------
        rest
            REST client of the server that runs the kernel (token, URLs, and
            later :meth:`interrupt`).
        kernel_id
            Kernel id, from :meth:`.JupyterRestClient.create_kernel`.
        wire_protocol
            Preferred framing.  `WireProtocol.V1` offers the binary
            subprotocol and falls back to legacy if the server picks none;
            `WireProtocol.LEGACY` offers nothing.
        open_timeout
            Seconds to wait for the handshake, i.e. for the kernel to start.
        username
            Username recorded in request headers.
        max_message_bytes
            Largest message accepted; a larger one fails the connection with
            :class:`~.exceptions.KernelMessageTooLargeError`.

        Returns
        -------
        KernelConnection
            The open connection.

        Raises
        ------
        KernelStartError
            If the kernel does not become ready in time or the server refuses
            the connection (unknown or failed kernel).
        LabUnavailableError
            If the server cannot be reached or is gone.
        """
        session_id = uuid.uuid4().hex
        url = rest.ws_url(kernel_id, session_id)
        subprotocols = (
            [websockets.Subprotocol(protocol.V1_SUBPROTOCOL)]
            if wire_protocol is WireProtocol.V1
            else None
        )
        try:
            websocket = await websockets.connect(
                url,
                additional_headers=rest.auth_headers,
                subprotocols=subprotocols,
                max_size=max_message_bytes,
                open_timeout=open_timeout,
                close_timeout=5,
                compression=None,
            )
        except TimeoutError as exc:
            raise KernelStartError(
                f"kernel {kernel_id} not ready after {open_timeout} s"
            ) from exc
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            body = (
                exc.response.body.decode(errors="replace")
                if exc.response.body
                else None
            )
            if status in _GONE_STATUSES:
                raise LabUnavailableError(
                    "Jupyter server unavailable for kernel websocket",
                    method="GET",
                    url=url,
                    status=status,
                    body=body,
                ) from exc
            raise KernelStartError(
                f"server refused the websocket of kernel {kernel_id}: HTTP {status}"
            ) from exc
        except (
            OSError,
            websockets.InvalidHandshake,
            websockets.ConnectionClosed,
        ) as exc:
            raise LabUnavailableError(
                f"cannot open kernel websocket: {type(exc).__name__}: {exc}",
                method="GET",
                url=url,
            ) from exc
        _set_nodelay(websocket)
        chosen = (
            WireProtocol.V1
            if websocket.subprotocol == protocol.V1_SUBPROTOCOL
            else WireProtocol.LEGACY
        )
        return cls(
            websocket=websocket,
            rest=rest,
            kernel_id=kernel_id,
            session_id=session_id,
            wire_protocol=chosen,
            username=username,
        )

    # -- requests ----------------------------------------------------------

    async def request(self, msg: Message) -> str:
        """Send a request and start collecting its replies.

        Parameters
        ----------
        msg
            A message from :func:`.protocol.new_message` (or its helpers).

        Returns
        -------
        str
            The request's ``msg_id``, for :meth:`receive`.

        Raises
        ------
        JupyterError
            The connection's failure, if it has failed.
        """
        self._raise_if_failed()
        msg_id: str = msg["header"]["msg_id"]
        self._queues[msg_id] = asyncio.Queue()
        try:
            await self._ws.send(protocol.encode(msg, self.protocol))
        except websockets.ConnectionClosed as exc:
            self._queues.pop(msg_id, None)
            self._raise_if_failed()
            raise LabUnavailableError(f"kernel websocket closed: {exc}") from exc
        except BaseException:
            self._queues.pop(msg_id, None)
            raise
        return msg_id

    async def execute(
        self, code: str, *, store_history: bool = True, stop_on_error: bool = True
    ) -> str:
        """Send an ``execute_request`` for ``code``; return its ``msg_id``.

        Parameters
        ----------
        code
            Source to run.
        store_history
            Whether the kernel records it and counts it.
        stop_on_error
            Whether the kernel aborts queued requests after an error.

        Returns
        -------
        str
            The request's ``msg_id``.
        """
        msg = protocol.execute_request(
            code,
            session=self.session_id,
            username=self.username,
            store_history=store_history,
            stop_on_error=stop_on_error,
        )
        return await self.request(msg)

    async def receive(self, msg_id: str) -> Message:
        """Return the next message whose parent is ``msg_id``.

        Waits without limit; bound it with `asyncio.timeout` (it is
        cancellation-safe: no message is lost).

        Raises
        ------
        KernelDiedError
            If jupyter_server reported the kernel dead or restarting (after
            that status message itself has been returned).
        LabUnavailableError
            If the websocket closed.
        KernelProtocolError
            If a frame could not be decoded.
        """
        queue = self._queues.get(msg_id)
        if queue is None:
            self._raise_if_failed()
            raise KeyError(f"no pending request {msg_id}")
        item = await queue.get()
        if item is _FAILED:
            queue.put_nowait(_FAILED)  # keep failing later calls too
            self._raise_if_failed()
        assert isinstance(item, dict)
        return item

    def forget(self, msg_id: str) -> None:
        """Stop collecting replies to ``msg_id`` and drop any left."""
        self._queues.pop(msg_id, None)

    async def kernel_info(self) -> Message:
        """Send a ``kernel_info_request`` and return the ``kernel_info_reply``.

        The reply is also kept in :attr:`kernel_info_reply`.  Bound it with
        `asyncio.timeout`.
        """
        msg_id = await self.request(
            protocol.kernel_info_request(
                session=self.session_id, username=self.username
            )
        )
        try:
            while True:
                msg = await self.receive(msg_id)
                if msg["msg_type"] == "kernel_info_reply":
                    self.kernel_info_reply = msg
                    return msg
        finally:
            self.forget(msg_id)

    async def interrupt(self) -> None:
        """Interrupt the kernel through the REST API (SIGINT for ipykernel).

        The running cell ends with a ``KeyboardInterrupt`` error reply.  A
        signal that lands before the cell's own code starts running (just
        after ``execute_input``) can be lost by ipykernel (rarely, but it
        happens), so a caller that needs the cell to stop should interrupt
        again if no reply follows within a second or so.
        """
        await self._rest.interrupt_kernel(self.kernel_id)

    @property
    def failure(self) -> JupyterError | None:
        """Why the connection stopped working, if it did."""
        return self._failure

    # -- lifecycle ---------------------------------------------------------

    async def aclose(self) -> None:
        """Close the websocket and stop the reader; idempotent.

        Does not shut the kernel down: that is the backend's job.
        """
        if not self._closing:
            self._closing = True
            self._fail(JupyterError("kernel connection closed by the client"))
        try:
            with contextlib.suppress(websockets.WebSocketException, OSError):
                await self._ws.close()
        finally:
            self._reader.cancel()
            # wait() neither raises the reader's CancelledError nor swallows
            # a cancellation of aclose() itself.
            await asyncio.wait([self._reader])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- reader ------------------------------------------------------------

    async def _read_loop(self) -> None:
        failure: JupyterError
        try:
            async for frame in self._ws:
                self._dispatch(protocol.decode(frame, self.protocol))
            failure = LabUnavailableError(
                f"kernel websocket closed by the server ({self._ws.close_code})"
            )
        except websockets.ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == _MESSAGE_TOO_BIG:
                limit = self._ws.protocol.max_message_size
                failure = KernelMessageTooLargeError(limit or 0)
            else:
                failure = LabUnavailableError(f"kernel websocket dropped: {exc}")
        except KernelProtocolError as exc:
            failure = exc
        except Exception as exc:  # the reader must never die silently
            _log.exception("Kernel websocket reader failed")
            failure = KernelProtocolError(f"kernel websocket reader failed: {exc!r}")
        self._fail(failure)

    def _dispatch(self, msg: Message) -> None:
        if protocol.is_death_status(msg):
            state = msg["content"]["execution_state"]
            for pending in self._queues.values():
                pending.put_nowait(msg)
            self._fail(KernelDiedError(f"kernel {self.kernel_id} {state}"))
            return
        parent = protocol.parent_msg_id(msg)
        queue = self._queues.get(parent) if parent else None
        if queue is not None:
            queue.put_nowait(msg)

    def _fail(self, failure: JupyterError) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        for queue in self._queues.values():
            queue.put_nowait(_FAILED)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure


def _set_nodelay(websocket: ClientConnection) -> None:
    sock = websocket.transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
