"""The Jupyter kernel websocket protocol, Sans-I/O.

Nothing here touches a socket, a clock that matters or an event loop.  The
module turns bytes into messages and messages into notebook outputs, so the
hard part of running a notebook (reproducing what nbclient writes into a
notebook, message by message) is unit-tested offline from recorded message
sequences, and the I/O layer (:mod:`.kernel`, :mod:`.execute`) stays thin.

It has three parts:

Framing
    :func:`encode_v1` / :func:`decode_v1` handle the binary
    ``v1.kernel.websocket.jupyter.org`` subprotocol that jupyter_server 2.x
    picks when a client offers it; :func:`encode_legacy` /
    :func:`decode_legacy` handle the older JSON protocol the server falls back
    to when none is offered (JSON text frames, plus a binary layout for
    messages that carry buffers).
Messages
    :func:`new_message`, :func:`execute_request` and
    :func:`kernel_info_request` build client requests.  Clients never sign
    messages: jupyter_server re-signs them with the kernel's key.
Folding
    :class:`NotebookOutputFolder` turns the kernel's replies into nbformat
    outputs exactly as nbclient 0.11's ``NotebookClient`` does with its
    default settings (``process_message``, ``output``, ``clear_output``,
    ``handle_comm_msg``, ``_update_display_id``, ``record_timing``; streams
    are *not* coalesced, because ``coalesce_streams`` defaults to off).  The
    one nbclient feature left out is the emulation of ipywidgets' ``Output``
    widget, which needs to send messages back to the kernel.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Final

import nbformat
from nbformat import NotebookNode

from .exceptions import KernelDiedError, KernelProtocolError

__all__ = [
    "DEATH_STATES",
    "PROTOCOL_VERSION",
    "SKIPPED_ENAME",
    "STOP_AFTER_ERROR_GUARD",
    "TRUNCATION_MARKER",
    "V1_SUBPROTOCOL",
    "CellOutcome",
    "Message",
    "NotebookOutputFolder",
    "OutputLimits",
    "OutputsChanged",
    "WireProtocol",
    "decode",
    "decode_legacy",
    "decode_v1",
    "encode",
    "encode_legacy",
    "encode_v1",
    "execute_request",
    "guard_applies",
    "is_death_status",
    "kernel_info_request",
    "nbclient_timestamp",
    "new_message",
    "parent_msg_id",
]

_log = logging.getLogger(__name__)

V1_SUBPROTOCOL: Final = "v1.kernel.websocket.jupyter.org"
"""The binary websocket subprotocol of jupyter_server 2.x."""

PROTOCOL_VERSION: Final = "5.3"
"""Kernel messaging protocol version sent in request headers."""

DEATH_STATES: Final = frozenset({"restarting", "dead"})
"""``execution_state`` values with which jupyter_server reports a lost kernel."""

Message = dict[str, Any]
"""A decoded kernel message.

Keys: ``header``, ``parent_header``, ``metadata``, ``content``, ``buffers``
(a list of `bytes`), ``channel``, and, copied from the header for
convenience and nbclient compatibility, ``msg_id`` and ``msg_type``.
"""

_MESSAGE_PARTS: Final = ("header", "parent_header", "metadata", "content")
_MAX_V1_OFFSETS: Final = 1 << 16


class WireProtocol(enum.Enum):
    """How messages are framed on the kernel websocket."""

    V1 = V1_SUBPROTOCOL
    """Binary ``v1.kernel.websocket.jupyter.org`` frames."""

    LEGACY = "legacy"
    """JSON text frames (binary only for messages with buffers)."""


# -- framing ---------------------------------------------------------------


def _normalize(channel: str, parts: Sequence[Any], buffers: list[bytes]) -> Message:
    for name, part in zip(_MESSAGE_PARTS, parts, strict=True):
        if not isinstance(part, dict):
            raise KernelProtocolError(f"message {name} is not a JSON object")
    header, parent_header, metadata, content = parts
    if "msg_type" not in header or "msg_id" not in header:
        raise KernelProtocolError("message header lacks msg_type or msg_id")
    return {
        "channel": channel,
        "header": header,
        "parent_header": parent_header,
        "metadata": metadata,
        "content": content,
        "buffers": buffers,
        "msg_id": header["msg_id"],
        "msg_type": header["msg_type"],
    }


def _json_part(data: bytes | memoryview, what: str) -> Any:
    if not data:
        return {}
    try:
        return json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KernelProtocolError(f"message {what} is not valid JSON: {exc}") from exc


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def encode_v1(msg: Mapping[str, Any]) -> bytes:
    """Encode a message as a ``v1.kernel.websocket.jupyter.org`` frame.

    Parameters
    ----------
    msg
        A message with ``channel``, ``header``, ``parent_header``,
        ``metadata``, ``content`` and optionally ``buffers``.

    Returns
    -------
    bytes
        ``u64le n``, ``n`` little-endian u64 offsets, then the channel name,
        the four JSON parts and the buffers.  The first offset is where the
        channel starts; the last is the end of the frame.
    """
    parts = [_dumps(msg[key]) for key in _MESSAGE_PARTS]
    parts += [bytes(b) for b in msg.get("buffers") or ()]
    channel = str(msg["channel"]).encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(channel))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return b"".join([head, channel, *parts])


def decode_v1(data: bytes) -> Message:
    """Decode a ``v1.kernel.websocket.jupyter.org`` frame.

    Parameters
    ----------
    data
        One binary websocket frame.

    Returns
    -------
    Message
        The decoded message.

    Raises
    ------
    KernelProtocolError
        If the frame is truncated or its parts are not JSON objects.
    """
    if len(data) < 8:  # noqa: PLR2004
        raise KernelProtocolError("v1 frame shorter than its offset count")
    (count,) = struct.unpack_from("<Q", data)
    # channel + 4 JSON parts need 6 offsets; the header must fit in the frame.
    if not 6 <= count <= _MAX_V1_OFFSETS or 8 * (count + 1) > len(data):  # noqa: PLR2004
        raise KernelProtocolError(f"v1 frame has an invalid offset count {count}")
    offsets = struct.unpack_from(f"<{count}Q", data, 8)
    if offsets[0] != 8 * (count + 1) or offsets[-1] != len(data):
        raise KernelProtocolError("v1 frame offsets do not match its length")
    if any(b < a for a, b in pairwise(offsets)):
        raise KernelProtocolError("v1 frame offsets are not increasing")
    view = memoryview(data)
    try:
        channel = bytes(view[offsets[0] : offsets[1]]).decode()
    except UnicodeDecodeError as exc:
        raise KernelProtocolError("v1 frame channel is not UTF-8") from exc
    chunks = [view[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    parts = [
        _json_part(chunk, name)
        for chunk, name in zip(chunks[:4], _MESSAGE_PARTS, strict=True)
    ]
    buffers = [bytes(chunk) for chunk in chunks[4:]]
    return _normalize(channel, parts, buffers)


def encode_legacy(msg: Mapping[str, Any]) -> str | bytes:
    """Encode a message for the legacy (no subprotocol) JSON protocol.

    Parameters
    ----------
    msg
        A message with ``channel``, ``header``, ``parent_header``,
        ``metadata``, ``content`` and optionally ``buffers``.

    Returns
    -------
    str | bytes
        A JSON text frame, or, if the message has buffers, the binary layout
        ``!I nbufs``, ``nbufs`` ``!I`` offsets, the JSON message, the buffers.
    """
    body = {key: msg[key] for key in ("channel", *_MESSAGE_PARTS)}
    buffers = [bytes(b) for b in msg.get("buffers") or ()]
    if not buffers:
        return json.dumps(body, ensure_ascii=False)
    chunks = [_dumps(body), *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    head = struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets)
    return b"".join([head, *chunks])


def decode_legacy(data: str | bytes) -> Message:
    """Decode a frame of the legacy (no subprotocol) JSON protocol.

    Parameters
    ----------
    data
        A text frame (JSON message) or a binary frame (message with buffers).

    Returns
    -------
    Message
        The decoded message.

    Raises
    ------
    KernelProtocolError
        If the frame is not a well-formed message.
    """
    buffers: list[bytes] = []
    if isinstance(data, str):
        try:
            body = json.loads(data)
        except json.JSONDecodeError as exc:
            raise KernelProtocolError(f"legacy frame is not valid JSON: {exc}") from exc
    else:
        if len(data) < 4:  # noqa: PLR2004
            raise KernelProtocolError("legacy binary frame is truncated")
        (count,) = struct.unpack_from("!I", data)
        if not 1 <= count <= _MAX_V1_OFFSETS or 4 * (count + 1) > len(data):
            raise KernelProtocolError(
                f"legacy binary frame has an invalid count {count}"
            )
        offsets = [*struct.unpack_from(f"!{count}I", data, 4), len(data)]
        if offsets[0] != 4 * (count + 1) or any(b < a for a, b in pairwise(offsets)):
            raise KernelProtocolError("legacy binary frame offsets are not increasing")
        chunks = [data[a:b] for a, b in pairwise(offsets)]
        body = _json_part(chunks[0], "body")
        buffers = chunks[1:]
    if not isinstance(body, dict):
        raise KernelProtocolError("legacy frame is not a JSON object")
    parts = [
        body.get("header"),
        body.get("parent_header") or {},
        body.get("metadata") or {},
        body.get("content"),
    ]
    return _normalize(str(body.get("channel", "")), parts, buffers)


def encode(msg: Mapping[str, Any], protocol: WireProtocol) -> str | bytes:
    """Encode ``msg`` for ``protocol``; see :func:`encode_v1`, :func:`encode_legacy`."""
    if protocol is WireProtocol.V1:
        return encode_v1(msg)
    return encode_legacy(msg)


def decode(data: str | bytes, protocol: WireProtocol) -> Message:
    """Decode one websocket frame received under ``protocol``.

    Parameters
    ----------
    data
        The frame: `bytes` for binary frames, `str` for text frames.
    protocol
        The protocol negotiated in the handshake.

    Returns
    -------
    Message
        The decoded message.

    Raises
    ------
    KernelProtocolError
        If the frame does not fit the protocol.
    """
    if protocol is WireProtocol.V1:
        if isinstance(data, str):
            raise KernelProtocolError("text frame received on a v1 kernel websocket")
        return decode_v1(data)
    return decode_legacy(data)


# -- messages --------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_message(
    msg_type: str,
    content: Mapping[str, Any],
    *,
    session: str,
    username: str = "noteburst",
    channel: str = "shell",
    msg_id: str | None = None,
) -> Message:
    """Build a client request message.

    Parameters
    ----------
    msg_type
        Message type, e.g. ``execute_request``.
    content
        Message content.
    session
        The client session id (the ``session_id`` of the websocket URL).
    username
        Username recorded in the header.
    channel
        Channel to send it on.
    msg_id
        Message id; a random UUID hex if not given.

    Returns
    -------
    Message
        The message, ready for :func:`encode`.
    """
    msg_id = msg_id or uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": username,
        "session": session,
        "date": _now_iso(),
        "version": PROTOCOL_VERSION,
    }
    return {
        "channel": channel,
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": dict(content),
        "buffers": [],
        "msg_id": msg_id,
        "msg_type": msg_type,
    }


def execute_request(
    code: str,
    *,
    session: str,
    username: str = "noteburst",
    silent: bool = False,
    store_history: bool = True,
    stop_on_error: bool = True,
) -> Message:
    """Build an ``execute_request`` the way nbclient sends one for a cell.

    Parameters
    ----------
    code
        Source to run.
    session
        Client session id.
    username
        Username recorded in the header.
    silent
        Whether the kernel should suppress output and not count the execution.
    store_history
        Whether the kernel should record the execution (``In[n]``).
    stop_on_error
        Whether the kernel should abort queued requests after an error.

    Returns
    -------
    Message
        The request; ``allow_stdin`` is false because nobody can answer.
    """
    content = {
        "code": code,
        "silent": silent,
        "store_history": store_history,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": stop_on_error,
    }
    return new_message("execute_request", content, session=session, username=username)


def kernel_info_request(*, session: str, username: str = "noteburst") -> Message:
    """Build a ``kernel_info_request``.

    Parameters
    ----------
    session
        Client session id.
    username
        Username recorded in the header.

    Returns
    -------
    Message
        The request.
    """
    return new_message("kernel_info_request", {}, session=session, username=username)


STOP_AFTER_ERROR_GUARD: Final = """\
def _noteburst_install_guard():
    # Noteburst sends cells ahead of the one running.  ipykernel aborts the
    # requests queued when a cell fails, but one still on its way runs.  This
    # input transformer makes every cell after a failure raise instead of
    # running, so a notebook's cells never run past its first error.
    shell = get_ipython()

    class NoteburstSkippedError(Exception):
        pass

    shell._noteburst_skipped = NoteburstSkippedError(
        "not run: an earlier cell of this notebook failed"
    )
    failed = []

    def stop_after_error(lines):
        if not shell.last_execution_succeeded:
            failed.append(True)
        if failed:
            return ["raise get_ipython()._noteburst_skipped\\n"]
        return lines

    shell.input_transformers_post.append(stop_after_error)


_noteburst_install_guard()
del _noteburst_install_guard
"""
"""Code run silently in an IPython kernel before a notebook, closing the
abort race of pipelined execution (see :mod:`.execute`): after a failed
cell, any later request the kernel still receives raises
``NoteburstSkippedError`` instead of running the cell's code."""

SKIPPED_ENAME: Final = "NoteburstSkippedError"
"""``ename`` of a cell the guard kept from running."""


def guard_applies(kernel_info_reply: Mapping[str, Any]) -> bool:
    """Whether :data:`STOP_AFTER_ERROR_GUARD` can run in this kernel (IPython)."""
    content = kernel_info_reply.get("content") or {}
    return content.get("implementation") == "ipython"


def parent_msg_id(msg: Mapping[str, Any]) -> str | None:
    """Return the ``msg_id`` of the request ``msg`` answers, if any."""
    parent = msg.get("parent_header") or {}
    value = parent.get("msg_id")
    return value if isinstance(value, str) and value else None


def is_death_status(msg: Mapping[str, Any]) -> bool:
    """Whether ``msg`` is jupyter_server's notice that the kernel died.

    jupyter_server sends an iopub ``status`` of ``restarting`` when its
    restarter replaces a dead kernel and ``dead`` when it gives up; neither
    has a parent header, so they concern every request in flight.
    """
    return (
        msg.get("msg_type") == "status"
        and (msg.get("content") or {}).get("execution_state") in DEATH_STATES
    )


def nbclient_timestamp(msg: Mapping[str, Any] | None) -> str:
    """Return the timestamp nbclient would record for ``msg``.

    nbclient formats the header's ``date`` (a `datetime` once jupyter_client
    has parsed it) as ``%Y-%m-%dT%H:%M:%S.%fZ``, and falls back to the
    current UTC time.

    Parameters
    ----------
    msg
        A kernel message, or `None`.

    Returns
    -------
    str
        The timestamp.
    """
    raw = ((msg or {}).get("header") or {}).get("date")
    if isinstance(raw, datetime):
        return raw.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            pass
    return datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z"


# -- folding messages into a notebook --------------------------------------

_RGX_CARRIAGERETURN = re.compile(r".*\r(?=[^\n])")
_RGX_BACKSPACE = re.compile(r"[^\n]\b")
_OUTPUT_MSG_TYPES: Final = frozenset(
    {"execute_result", "display_data", "update_display_data"}
)


@dataclass(frozen=True, slots=True)
class CellOutcome:
    """How one executed cell ended, from its ``execute_reply``.

    Attributes
    ----------
    cell_index
        Index of the cell in ``nb.cells``.
    status
        The reply's status: ``ok``, ``error`` or ``aborted``.
    reply
        The reply's content (``ename``, ``evalue``, ``traceback`` on error).
    """

    cell_index: int
    status: str
    reply: dict[str, Any]

    @property
    def failed(self) -> bool:
        """Whether the cell raised (the reply status is ``error``)."""
        return self.status == "error"


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """Byte budgets for outputs, applied as messages arrive.

    A cell printing without end must not grow the notebook (nor the memory
    of the process folding it) without bound, and a reader must see that
    something was cut.  Sizes are UTF-8 bytes of text and of each MIME
    value's JSON.

    Attributes
    ----------
    max_output_bytes
        Largest single output: a longer stream is cut with a marker, larger
        rich data is replaced by a marker; `None` for no limit.
    max_total_bytes
        Budget of all outputs of the notebook: once spent, further outputs
        are dropped and one marker per cell says so (errors are still
        recorded, so a failure stays explained); `None` for no limit.
    """

    max_output_bytes: int | None = None
    max_total_bytes: int | None = None


OutputsChanged = Callable[[int, int], None]
"""``(cell_index, first_changed)``: outputs of ``nb.cells[cell_index]`` from
index ``first_changed`` on are new or different (see
:class:`NotebookOutputFolder`)."""

TRUNCATION_MARKER: Final = "[Noteburst: output truncated"
"""How every marker of dropped output begins (for readers and tests)."""


@dataclass(slots=True)
class _RunningCell:
    index: int
    msg_id: str
    execution_count: int
    reply: Message | None = None
    idle: bool = False


class NotebookOutputFolder:
    """Fold kernel messages into a notebook exactly as nbclient 0.11 does.

    One folder follows one notebook through one execution: the map from
    display ids to outputs is notebook-wide, so ``update_display_data`` also
    updates outputs of cells that already finished, as in nbclient.

    Use it as: :meth:`set_kernel_info` with the ``kernel_info_reply``; then
    for each code cell :meth:`begin_cell`, send the request, :meth:`feed`
    every message received until :attr:`cell_done`, then
    :meth:`finish_cell`; finally :meth:`finish_notebook`.  The notebook is
    mutated in place as messages arrive, so an interrupted run leaves the
    outputs received so far.

    Parameters
    ----------
    nb
        The notebook to write into.
    record_timing
        Record ``metadata.execution`` timestamps (nbclient's default: on).
    coalesce_streams
        Merge stream outputs per name after each cell (nbclient's default:
        off).
    store_widget_state
        Save widget state from comm messages in ``metadata.widgets``
        (nbclient's default: on).
    limits
        Output byte budgets (see :class:`OutputLimits`); `None` for none.
        :attr:`outputs_truncated` tells whether any output was cut.
    on_outputs_changed
        Told, synchronously, each time the outputs stored in a cell change:
        ``on_outputs_changed(cell_index, first_changed)`` means that
        ``nb.cells[cell_index].outputs[first_changed:]`` was appended,
        replaced or cut (a cleared cell reports 0 and has fewer outputs).
        It covers every change the folder makes, in any cell (a display
        update also changes cells that finished), after the limits were
        applied, except the clearing of a cell's outputs by
        :meth:`begin_cell`, which callers know of.  It only says where to
        look, so a listener can read the changes later, in batches; it must
        be cheap and must not raise.
    """

    def __init__(
        self,
        nb: NotebookNode,
        *,
        record_timing: bool = True,
        coalesce_streams: bool = False,
        store_widget_state: bool = True,
        limits: OutputLimits | None = None,
        on_outputs_changed: OutputsChanged | None = None,
    ) -> None:
        self.nb = nb
        self.on_outputs_changed = on_outputs_changed
        self.record_timing = record_timing
        self.coalesce_streams = coalesce_streams
        self.store_widget_state = store_widget_state
        self.code_cells_executed = 0
        self._display_id_map: dict[str, dict[int, list[int]]] = {}
        self._widget_state: dict[str, dict[str, Any]] = {}
        self._widget_buffers: dict[str, dict[tuple[str, ...], dict[str, str]]] = {}
        self._clear_before_next_output = False
        self._cell: _RunningCell | None = None
        self.limits = limits or OutputLimits()
        self.outputs_truncated = False
        """Whether any output was cut or dropped under :attr:`limits`."""
        self._total_bytes = 0
        self._dropped_in: set[int] = set()

    # -- lifecycle ---------------------------------------------------------

    @staticmethod
    def should_execute(cell: NotebookNode) -> bool:
        """Whether nbclient would send ``cell`` to the kernel.

        Only code cells with non-blank source are executed.
        """
        return bool(cell.cell_type == "code" and cell.source.strip())

    def set_kernel_info(self, reply: Message) -> None:
        """Record ``language_info`` from a ``kernel_info_reply``, as nbclient does.

        Raises
        ------
        KernelProtocolError
            If the reply has no ``language_info``.
        """
        content = reply.get("content") or {}
        if "language_info" not in content:
            raise KernelProtocolError("kernel_info_reply has no language_info")
        self.nb.metadata["language_info"] = content["language_info"]

    def begin_cell(self, cell_index: int, msg_id: str) -> None:
        """Start following the execution of ``nb.cells[cell_index]``.

        Call it before the request is sent.  Clears the cell's outputs and
        timing metadata.

        Parameters
        ----------
        cell_index
            Index of the cell in ``nb.cells``.
        msg_id
            ``msg_id`` of the ``execute_request`` for it.
        """
        if self._cell is not None:
            raise RuntimeError(f"cell {self._cell.index} has not been finished")
        cell = self.nb.cells[cell_index]
        if self.record_timing:
            cell["metadata"]["execution"] = {}
        self.code_cells_executed += 1
        cell.outputs = []
        self._clear_before_next_output = False
        self._cell = _RunningCell(cell_index, msg_id, self.code_cells_executed)

    @property
    def current_cell(self) -> int | None:
        """Index of the cell being followed, if any."""
        return self._cell.index if self._cell else None

    @property
    def cell_done(self) -> bool:
        """Whether both the ``execute_reply`` and the iopub ``idle`` arrived."""
        return (
            self._cell is not None and self._cell.reply is not None and self._cell.idle
        )

    @property
    def reply_received(self) -> bool:
        """Whether the current cell's ``execute_reply`` arrived."""
        return self._cell is not None and self._cell.reply is not None

    def feed(self, msg: Message) -> None:
        """Process one message received from the kernel.

        Messages whose parent is not the current cell's request are ignored,
        as are iopub messages after the cell's ``idle``.

        Raises
        ------
        KernelDiedError
            On a ``restarting`` or ``dead`` status while a cell runs.
        """
        running = self._cell
        if running is None:
            return
        if is_death_status(msg):
            state = msg["content"]["execution_state"]
            raise KernelDiedError(
                f"kernel {state} while cell {running.index} was executing",
                cell_index=running.index,
            )
        if parent_msg_id(msg) != running.msg_id:
            return
        channel = msg.get("channel")
        if channel == "shell":
            if msg["msg_type"] == "execute_reply" and running.reply is None:
                running.reply = msg
                if self.record_timing:
                    cell = self.nb.cells[running.index]
                    cell["metadata"]["execution"]["shell.execute_reply"] = (
                        nbclient_timestamp(msg)
                    )
        elif channel == "iopub" and not running.idle:
            running.idle = self._process_message(msg, running.index)

    def finish_cell(self) -> CellOutcome:
        """Close the current cell once :attr:`cell_done` (or abandon waiting for idle).

        Sets ``execution_count`` to nbclient's counter, coalesces streams if
        asked to, and returns the outcome from the ``execute_reply``.

        Raises
        ------
        RuntimeError
            If no cell is running or its reply has not arrived.
        """
        running = self._cell
        if running is None or running.reply is None:
            raise RuntimeError("finish_cell() before the execute_reply arrived")
        self._cell = None
        cell = self.nb.cells[running.index]
        if running.execution_count:
            cell["execution_count"] = running.execution_count
        if self.coalesce_streams and cell.outputs:
            cell.outputs = _coalesce_streams(cell.outputs)
            self._changed(running.index, 0)
        content = dict(running.reply.get("content") or {})
        return CellOutcome(running.index, str(content.get("status", "")), content)

    def abandon_cell(self) -> None:
        """Stop following the current cell without finishing it (cancellation)."""
        self._cell = None

    def finish_notebook(self) -> None:
        """Write widget state into ``nb.metadata.widgets`` (after a successful run)."""
        if not self._widget_state:
            return
        state = {
            model_id: _serialize_widget_state(widget)
            for model_id, widget in self._widget_state.items()
            if "_model_name" in widget
        }
        self.nb.metadata.widgets = {
            "application/vnd.jupyter.widget-state+json": {
                "state": state,
                "version_major": 2,
                "version_minor": 0,
            }
        }
        for key, widget in self.nb.metadata.widgets[
            "application/vnd.jupyter.widget-state+json"
        ]["state"].items():
            buffers = self._widget_buffers.get(key)
            if buffers:
                widget["buffers"] = list(buffers.values())

    # -- nbclient's process_message and friends ------------------------------

    def _process_message(self, msg: Message, cell_index: int) -> bool:
        """Apply one iopub message to the cell; return whether it was ``idle``."""
        cell = self.nb.cells[cell_index]
        msg_type = msg["msg_type"]
        content = msg["content"]
        transient = content.get("transient")
        display_id = transient.get("display_id") if transient else None

        if display_id and msg_type in _OUTPUT_MSG_TYPES:
            self._update_display_id(display_id, msg)

        if "execution_count" in content:
            cell["execution_count"] = content["execution_count"]

        if self.record_timing:
            execution = cell["metadata"]["execution"]
            if msg_type == "status":
                if content["execution_state"] == "idle":
                    execution["iopub.status.idle"] = nbclient_timestamp(msg)
                elif content["execution_state"] == "busy":
                    execution["iopub.status.busy"] = nbclient_timestamp(msg)
            elif msg_type == "execute_input":
                execution["iopub.execute_input"] = nbclient_timestamp(msg)

        if msg_type == "status":
            if content["execution_state"] == "idle":
                return True
        elif msg_type == "clear_output":
            self._clear_output(cell.outputs, msg, cell_index)
        elif msg_type.startswith("comm"):
            self._handle_comm_msg(msg)
        elif msg_type not in ("execute_input", "update_display_data"):
            self._output(cell.outputs, msg, display_id, cell_index)
        return False

    def _output(
        self,
        outs: list[NotebookNode],
        msg: Message,
        display_id: str | None,
        cell_index: int,
    ) -> None:
        try:
            out = nbformat.v4.output_from_msg(msg)
        except ValueError:
            _log.debug("Ignoring iopub message of type %s", msg["msg_type"])
            return
        if self._clear_before_next_output:
            self._forget_outputs(outs, cell_index)
            outs[:] = []
            self._clear_display_id_mapping(cell_index)
            self._clear_before_next_output = False
            self._changed(cell_index, 0)
        out = self._within_output_limit(out)
        size = _output_size(out)
        budget = self.limits.max_total_bytes
        if (
            budget is not None
            and self._total_bytes + size > budget
            and out["output_type"] != "error"
        ):
            self.outputs_truncated = True
            if cell_index not in self._dropped_in:
                self._dropped_in.add(cell_index)
                outs.append(
                    nbformat.v4.new_output(
                        "stream",
                        name="stderr",
                        text=(
                            f"{TRUNCATION_MARKER}: the notebook's outputs reached "
                            f"the limit of {budget} bytes; further output of "
                            "this cell was dropped]\n"
                        ),
                    )
                )
                self._changed(cell_index, len(outs) - 1)
            return
        self._total_bytes += size
        if display_id:
            cell_map = self._display_id_map.setdefault(display_id, {})
            cell_map.setdefault(cell_index, []).append(len(outs))
        outs.append(out)
        self._changed(cell_index, len(outs) - 1)

    def _clear_output(
        self, outs: list[NotebookNode], msg: Message, cell_index: int
    ) -> None:
        if msg["content"].get("wait"):
            self._clear_before_next_output = True
        else:
            self._forget_outputs(outs, cell_index)
            outs[:] = []
            self._clear_display_id_mapping(cell_index)
            self._changed(cell_index, 0)

    def _forget_outputs(self, outs: list[NotebookNode], cell_index: int) -> None:
        """Give the budget of outputs about to be cleared back."""
        if self.limits.max_total_bytes is not None:
            self._total_bytes -= sum(_output_size(out) for out in outs)
            self._dropped_in.discard(cell_index)

    def _within_output_limit(self, out: NotebookNode) -> NotebookNode:
        limit = self.limits.max_output_bytes
        if limit is None:
            return out
        size = _output_size(out)
        if size <= limit:
            return out
        self.outputs_truncated = True
        marker = (
            f"{TRUNCATION_MARKER}: {size} bytes exceed the limit of {limit} "
            "bytes per output]"
        )
        kind = out["output_type"]
        if kind == "stream":
            kept = out["text"].encode("utf-8")[:limit].decode("utf-8", "ignore")
            out["text"] = f"{kept}\n{marker}\n"
        elif kind == "error":
            # Keep the end of the traceback: it names the failing line.
            out["traceback"] = [marker, *_tail_within(out["traceback"], limit)]
        else:
            out["data"] = {"text/plain": marker}
            out["metadata"] = {}
        return out

    def _clear_display_id_mapping(self, cell_index: int) -> None:
        for cell_map in self._display_id_map.values():
            if cell_index in cell_map:
                cell_map[cell_index] = []

    def _update_display_id(self, display_id: str, msg: Message) -> None:
        if display_id not in self._display_id_map:
            return
        if msg["header"]["msg_type"] == "update_display_data":
            # nbclient rewrites the header of the message itself; do it on a
            # copy so callers' messages stay as received.
            msg = {**msg, "header": {**msg["header"], "msg_type": "display_data"}}
        try:
            out = nbformat.v4.output_from_msg(msg)
        except ValueError:
            return
        out = self._within_output_limit(out)
        for cell_idx, output_indices in self._display_id_map[display_id].items():
            outputs = self.nb.cells[cell_idx]["outputs"]
            for output_idx in output_indices:
                outputs[output_idx]["data"] = out["data"]
                outputs[output_idx]["metadata"] = out["metadata"]
            if output_indices:
                self._changed(cell_idx, min(output_indices))

    def _changed(self, cell_index: int, first_changed: int) -> None:
        if self.on_outputs_changed is not None:
            self.on_outputs_changed(cell_index, first_changed)

    def _handle_comm_msg(self, msg: Message) -> None:
        content = msg["content"]
        data = content.get("data") or {}
        if self.store_widget_state and "state" in data:
            comm_id = content["comm_id"]
            self._widget_state.setdefault(comm_id, {}).update(data["state"])
            if data.get("buffer_paths"):
                buffers = self._widget_buffers.setdefault(comm_id, {})
                buffers.update(
                    {
                        tuple(k["path"]): k
                        for k in _buffer_data(data["buffer_paths"], msg)
                    }
                )


def _buffer_data(paths: Iterable[Any], msg: Message) -> list[dict[str, Any]]:
    return [
        {
            "data": base64.b64encode(buffer).decode("utf-8"),
            "encoding": "base64",
            "path": path,
        }
        for path, buffer in zip(paths, msg.get("buffers") or [], strict=False)
    ]


def _serialize_widget_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": state.get("_model_name"),
        "model_module": state.get("_model_module"),
        "model_module_version": state.get("_model_module_version"),
        "state": state,
    }


def _output_size(out: Mapping[str, Any]) -> int:
    """Bytes an output holds: its text, traceback or MIME values."""
    kind = out.get("output_type")
    if kind == "stream":
        return len(str(out.get("text", "")).encode("utf-8"))
    if kind == "error":
        return sum(len(line.encode("utf-8")) for line in out.get("traceback", []))
    size = 0
    for value in (out.get("data") or {}).values():
        text = value if isinstance(value, str) else json.dumps(value)
        size += len(text.encode("utf-8"))
    return size


def _tail_within(lines: Sequence[str], limit: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        used += len(line.encode("utf-8"))
        if used > limit:
            break
        kept.append(line)
    return kept[::-1]


def _coalesce_streams(outputs: list[NotebookNode]) -> list[NotebookNode]:
    """Nbclient's ``coalesce_streams`` post-processing, verbatim."""
    new_outputs: list[NotebookNode] = []
    streams: dict[str, NotebookNode] = {}
    for output in outputs:
        if output["output_type"] == "stream":
            if output["name"] in streams:
                streams[output["name"]]["text"] += output["text"]
            else:
                new_outputs.append(output)
                streams[output["name"]] = output
        else:
            new_outputs.append(output)
    for output in streams.values():
        old = output["text"]
        while len(output["text"]) < len(old):
            old = output["text"]
            output["text"] = _RGX_BACKSPACE.sub("", output["text"])
        output["text"] = _RGX_CARRIAGERETURN.sub("", output["text"])
    for i, output in enumerate(new_outputs):
        if (
            output["output_type"] == "stream"
            and output["name"] == "stderr"
            and len(new_outputs) >= i + 2
            and new_outputs[i + 1]["output_type"] == "stream"
            and new_outputs[i + 1]["name"] == "stdout"
        ):
            stdout = new_outputs.pop(i + 1)
            new_outputs.insert(i, stdout)
    return new_outputs
