"""Offline tests of the Sans-I/O protocol module, from recorded kernel traffic.

``tests/data/kernel_messages/*.json`` hold every frame a real kernel sent
over jupyter_server's websocket while running the fidelity notebooks (see
``record_messages.py``).  Each recording is replayed twice: through
:class:`NotebookOutputFolder`, and through nbclient's own
``NotebookClient.async_execute_cell`` with a kernel client that serves the
recorded messages.  The two notebooks must be identical, timestamps included.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import queue
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.jsonutil import extract_dates
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode

from noteburst.jupyter import protocol
from noteburst.jupyter.exceptions import KernelDiedError, KernelProtocolError
from noteburst.jupyter.protocol import (
    TRUNCATION_MARKER,
    CellOutcome,
    Message,
    NotebookOutputFolder,
    OutputLimits,
    WireProtocol,
)

RECORDINGS_DIR = Path(__file__).parent.parent / "data" / "kernel_messages"
RECORDINGS = sorted(RECORDINGS_DIR.glob("*.json"))
NOTEBOOK_RECORDINGS = [p for p in RECORDINGS if not p.name.startswith("kernel_death.")]


@dataclass
class Recording:
    name: str
    protocol: WireProtocol
    notebook: NotebookNode
    kernel_info_msg_id: str
    requests: list[tuple[int, str]]
    frames: list[str | bytes]

    def messages(self) -> list[Message]:
        return [protocol.decode(frame, self.protocol) for frame in self.frames]

    def kernel_info_reply(self) -> Message:
        return next(
            msg
            for msg in self.messages()
            if msg["msg_type"] == "kernel_info_reply"
            and protocol.parent_msg_id(msg) == self.kernel_info_msg_id
        )


def load(path: Path) -> Recording:
    data = json.loads(path.read_text())
    frames: list[str | bytes] = [
        frame["data"] if frame["type"] == "text" else base64.b64decode(frame["data"])
        for frame in data["frames"]
    ]
    return Recording(
        name=path.stem,
        protocol=WireProtocol[data["protocol"].upper()],
        notebook=nbformat.from_dict(data["notebook"]),
        kernel_info_msg_id=data["kernel_info_msg_id"],
        requests=[(r["cell_index"], r["msg_id"]) for r in data["requests"]],
        frames=frames,
    )


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# -- replay through our folder and through nbclient --------------------------


def fold(
    recording: Recording, **options: Any
) -> tuple[NotebookNode, list[CellOutcome], NotebookOutputFolder]:
    """Replay the recording through NotebookOutputFolder, as execute_notebook does."""
    nb = copy.deepcopy(recording.notebook)
    folder = NotebookOutputFolder(nb, **options)
    folder.set_kernel_info(recording.kernel_info_reply())
    messages: Iterator[Message] = iter(recording.messages())
    outcomes: list[CellOutcome] = []
    for index, msg_id in recording.requests:
        folder.begin_cell(index, msg_id)
        while not folder.cell_done:
            folder.feed(next(messages))
        outcomes.append(folder.finish_cell())
        if outcomes[-1].failed:
            break
    else:
        folder.finish_notebook()
    return nb, outcomes, folder


class ReplayChannel:
    def __init__(self) -> None:
        self.messages: collections.deque[dict[str, Any]] = collections.deque()

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        if not self.messages:
            raise queue.Empty
        return self.messages.popleft()


class ReplayKernelClient:
    """Just enough of jupyter_client's KernelClient for nbclient, from a recording."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.messages = [self._as_jupyter_client(msg) for msg in recording.messages()]
        self.requests = iter(recording.requests)
        self.shell_channel = ReplayChannel()
        self.iopub_channel = ReplayChannel()
        self.allow_stdin = False

    @staticmethod
    def _as_jupyter_client(msg: Message) -> dict[str, Any]:
        converted = dict(msg)
        converted["header"] = extract_dates(msg["header"])
        converted["parent_header"] = extract_dates(msg["parent_header"])
        return converted

    def execute(self, code: str, **_options: Any) -> str:
        index, msg_id = next(self.requests)
        assert code == self.recording.notebook.cells[index].source
        for channel in (self.shell_channel, self.iopub_channel):
            name = "shell" if channel is self.shell_channel else "iopub"
            channel.messages = collections.deque(
                msg
                for msg in self.messages
                if msg["channel"] == name and protocol.parent_msg_id(msg) == msg_id
            )
        return msg_id

    async def is_alive(self) -> bool:
        return True


async def fold_with_nbclient(
    recording: Recording, **options: Any
) -> tuple[NotebookNode, CellExecutionError | None]:
    """nbclient's own async_execute loop, minus starting a kernel."""
    nb = copy.deepcopy(recording.notebook)
    client = NotebookClient(nb, **options)
    client.kc = ReplayKernelClient(recording)  # type: ignore[assignment]
    nb.metadata["language_info"] = recording.kernel_info_reply()["content"][
        "language_info"
    ]
    try:
        for index, cell in enumerate(nb.cells):
            await client.async_execute_cell(
                cell, index, execution_count=client.code_cells_executed + 1
            )
        client.set_widgets_metadata()
    except CellExecutionError as exc:
        return nb, exc
    return nb, None


@pytest.mark.asyncio
@pytest.mark.parametrize("path", NOTEBOOK_RECORDINGS, ids=ids(NOTEBOOK_RECORDINGS))
@pytest.mark.parametrize("coalesce_streams", [False, True])
async def test_folds_like_nbclient(path: Path, coalesce_streams: bool) -> None:
    recording = load(path)
    ours, outcomes, _ = fold(recording, coalesce_streams=coalesce_streams)
    theirs, error = await fold_with_nbclient(
        recording, coalesce_streams=coalesce_streams
    )

    assert ours == theirs
    nbformat.validate(ours)
    if error is None:
        assert not any(outcome.failed for outcome in outcomes)
    else:
        assert outcomes[-1].failed
        assert outcomes[-1].reply["ename"] == error.ename
        assert outcomes[-1].reply["evalue"] == error.evalue


def test_recordings_cover_both_protocols_and_noise() -> None:
    names = {load(path).name for path in RECORDINGS}
    for path in NOTEBOOK_RECORDINGS:
        stem = path.name.split(".")[0]
        assert {f"{stem}.v1", f"{stem}.legacy"} <= names
    noise = set()
    for path in RECORDINGS:
        recording = load(path)
        request_ids = {msg_id for _, msg_id in recording.requests}
        request_ids.add(recording.kernel_info_msg_id)
        for msg in recording.messages():
            if protocol.parent_msg_id(msg) not in request_ids:
                noise.add((msg["msg_type"], msg["content"].get("execution_state")))
    # The server's nudges reach the client; the folder must ignore them.
    assert ("status", "busy") in noise
    assert ("status", "idle") in noise


# -- specific behaviours, on the recordings ------------------------------------


def recording(name: str, wire: str = "v1") -> Recording:
    return load(RECORDINGS_DIR / f"{name}.{wire}.json")


@pytest.mark.parametrize("wire", ["v1", "legacy"])
def test_streams_are_not_coalesced_by_default(wire: str) -> None:
    nb, _, _ = fold(recording("streams", wire))
    outputs = nb.cells[1].outputs
    assert [(o.name, o.text) for o in outputs] == [
        ("stdout", "out 0\n"),
        ("stderr", "err 0\n"),
        ("stdout", "out 1\n"),
        ("stderr", "err 1\n"),
        ("stdout", "out 2\n"),
        ("stderr", "err 2\n"),
    ]
    assert nb.cells[4].outputs[0].text == "progress 50%\rprogress 100%\nback\bspace\n"


def test_coalesced_streams_are_merged_and_cleaned() -> None:
    nb, _, _ = fold(recording("streams"), coalesce_streams=True)
    assert [(o.name, o.text) for o in nb.cells[1].outputs] == [
        ("stdout", "out 0\nout 1\nout 2\n"),
        ("stderr", "err 0\nerr 1\nerr 2\n"),
    ]
    assert nb.cells[4].outputs[0].text == "progress 100%\nback\bspace\n"


def test_execution_metadata_and_counts() -> None:
    nb, outcomes, folder = fold(recording("mixed_cells"))
    executed = [o.cell_index for o in outcomes]
    assert executed == [1, 5, 6, 8, 9]
    assert [nb.cells[i].execution_count for i in executed] == [1, 2, 3, 4, 5]
    assert folder.code_cells_executed == 5
    for index, cell in enumerate(nb.cells):
        if index in executed:
            assert set(cell.metadata.execution) == {
                "iopub.status.busy",
                "iopub.execute_input",
                "shell.execute_reply",
                "iopub.status.idle",
            }
        else:
            assert "execution" not in cell.metadata
            if cell.cell_type == "code":
                assert cell.execution_count is None
                assert cell.outputs == []
    assert nb.cells[6].outputs == []  # "value;" suppresses the result
    assert nb.metadata.language_info.name == "python"


def test_clear_output_with_and_without_wait() -> None:
    nb, _, _ = fold(recording("clear_output"))
    texts = [[o.get("text") for o in cell.outputs] for cell in nb.cells]
    assert texts[1] == ["kept\n"]
    assert texts[2] == ["second\n"]
    assert texts[3] == ["stays because nothing follows the clear\n"]
    assert texts[4] == ["step 4\n"]
    assert [o.output_type for o in nb.cells[5].outputs] == [
        "display_data",
        "execute_result",
    ]
    assert nb.cells[5].outputs[0].data["text/html"] == "<p>two</p>"


def test_update_display_data_reaches_earlier_cells() -> None:
    nb, _, _ = fold(recording("update_display"))
    assert nb.cells[1].outputs[0].data["text/html"] == "<p>v3 from a later cell</p>"
    shared = [o for o in nb.cells[3].outputs if o.output_type == "display_data"]
    assert len(shared) == 2
    assert all(o.data["text/html"] == "<p>again</p>" for o in shared)
    # The update after an immediate clear has nothing left to update.
    assert [o.output_type for o in nb.cells[5].outputs] == ["stream"]


def test_error_stops_the_run_and_keeps_outputs() -> None:
    nb, outcomes, _ = fold(recording("error_middle"))
    assert [o.cell_index for o in outcomes] == [1, 2]
    failed = outcomes[-1]
    assert failed.failed
    assert failed.reply["ename"] == "ValueError"
    assert failed.reply["evalue"] == "bad value 42"
    assert [o.output_type for o in nb.cells[2].outputs] == ["stream", "error"]
    assert nb.cells[2].execution_count == 2
    assert nb.cells[3].execution_count is None
    assert "widgets" not in nb.metadata


def test_widget_state_and_buffers() -> None:
    for wire in ("v1", "legacy"):
        nb, _, _ = fold(recording("widgets", wire))
        state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"][
            "state"
        ]
        assert list(state) == ["fake-widget-1"]
        widget = state["fake-widget-1"]
        assert widget["model_name"] == "FakeModel"
        assert widget["state"]["value"] == 2
        assert widget["buffers"] == [
            {
                "data": base64.b64encode(b"\x00\x01binary").decode(),
                "encoding": "base64",
                "path": ["blob"],
            }
        ]


@pytest.mark.parametrize("wire", ["v1", "legacy"])
def test_kernel_death_is_reported_with_the_cell(wire: str) -> None:
    rec = recording("kernel_death", wire)
    with pytest.raises(KernelDiedError) as caught:
        fold(rec)
    assert caught.value.cell_index == 1
    assert "restarting" in str(caught.value)


def replay_into(folder: NotebookOutputFolder, rec: Recording) -> None:
    messages = iter(rec.messages())
    for index, msg_id in rec.requests:
        folder.begin_cell(index, msg_id)
        while not folder.cell_done:
            folder.feed(next(messages))
        folder.finish_cell()


def test_kernel_death_keeps_earlier_outputs() -> None:
    kept_dying_output = False
    for wire in ("v1", "legacy"):
        rec = recording("kernel_death", wire)
        nb = copy.deepcopy(rec.notebook)
        folder = NotebookOutputFolder(nb)
        with pytest.raises(KernelDiedError):
            replay_into(folder, rec)
        assert nb.cells[0].outputs[0].text == "alive\n"
        # A dying kernel may or may not get its last flush out.
        assert [o.text for o in nb.cells[1].outputs] in ([], ["dying\n"])
        kept_dying_output = kept_dying_output or bool(nb.cells[1].outputs)
        assert nb.cells[1].execution_count == 2  # from execute_input
        assert folder.current_cell == 1
    assert kept_dying_output


# -- framing -------------------------------------------------------------------


@pytest.mark.parametrize("path", RECORDINGS, ids=ids(RECORDINGS))
def test_recorded_frames_round_trip(path: Path) -> None:
    rec = load(path)
    for frame in rec.frames:
        msg = protocol.decode(frame, rec.protocol)
        assert msg["channel"] in {"shell", "iopub", "control", "stdin"}
        assert msg["msg_type"] == msg["header"]["msg_type"]
        assert msg["msg_id"] == msg["header"]["msg_id"]
        again = protocol.decode(protocol.encode(msg, rec.protocol), rec.protocol)
        assert again == msg
        if rec.protocol is WireProtocol.V1 or msg["buffers"]:
            assert isinstance(frame, bytes)
        else:
            assert isinstance(frame, str)


def test_v1_layout_matches_the_documented_format() -> None:
    msg = protocol.new_message("comm_msg", {"x": 1}, session="s")
    msg["buffers"] = [b"\x00buf"]
    frame = protocol.encode_v1(msg)
    count = struct.unpack_from("<Q", frame)[0]
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    assert count == 7  # channel, 4 JSON parts, 1 buffer: 6 parts -> 7 offsets
    assert offsets[0] == 8 * (count + 1)
    assert offsets[-1] == len(frame)
    assert frame[offsets[0] : offsets[1]] == b"shell"
    assert frame[offsets[5] : offsets[6]] == b"\x00buf"
    assert protocol.decode_v1(frame) == msg


def test_legacy_binary_layout() -> None:
    msg = protocol.new_message("comm_msg", {"x": 1}, session="s", channel="iopub")
    assert isinstance(protocol.encode_legacy(msg), str)
    msg["buffers"] = [b"one", b"\xfftwo"]
    frame = protocol.encode_legacy(msg)
    assert isinstance(frame, bytes)
    assert struct.unpack_from("!I", frame)[0] == 3
    assert protocol.decode_legacy(frame) == msg


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01\x00\x00\x00",
        struct.pack("<Q", 2) + struct.pack("<2Q", 24, 24),
        struct.pack("<Q", 6) + struct.pack("<6Q", 56, 61, 62, 63, 64, 999),
        struct.pack("<Q", 6)
        + struct.pack("<6Q", 56, 61, 60, 62, 63, 64)
        + b"shell{}{}{}{}",
        struct.pack("<Q", 6)
        + struct.pack("<6Q", 56, 61, 64, 66, 68, 70)
        + b"shell!!!{}{}{}",
        struct.pack("<Q", 6)
        + struct.pack("<6Q", 56, 61, 63, 65, 67, 69)
        + b"shell[]{}{}{}",
        struct.pack("<Q", 6)
        + struct.pack("<6Q", 56, 61, 63, 65, 67, 69)
        + b"shell{}{}{}{}",
    ],
    ids=[
        "empty",
        "short",
        "too-few-offsets",
        "offset-beyond-end",
        "decreasing",
        "bad-json",
        "header-not-object",
        "header-without-id",
    ],
)
def test_malformed_v1_frames(frame: bytes) -> None:
    with pytest.raises(KernelProtocolError):
        protocol.decode_v1(frame)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"header": {}}',
        b"\x00",
        b"\x00\x00\x00\x05\x00\x00\x00\x08",
    ],
)
def test_malformed_legacy_frames(frame: str | bytes) -> None:
    with pytest.raises(KernelProtocolError):
        protocol.decode_legacy(frame)


def test_text_frame_on_v1_is_an_error() -> None:
    with pytest.raises(KernelProtocolError):
        protocol.decode("{}", WireProtocol.V1)


# -- messages ------------------------------------------------------------------


def test_execute_request_is_what_nbclient_sends() -> None:
    msg = protocol.execute_request("1 + 1", session="abc", username="bot")
    header = msg["header"]
    assert header["msg_type"] == "execute_request"
    assert header["session"] == "abc"
    assert header["username"] == "bot"
    assert header["version"] == "5.3"
    assert len(header["msg_id"]) == 32
    assert datetime.fromisoformat(header["date"]).tzinfo is not None
    assert msg["channel"] == "shell"
    assert msg["parent_header"] == {}
    assert msg["metadata"] == {}
    assert msg["content"] == {
        "code": "1 + 1",
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    assert protocol.execute_request("x", session="abc")["msg_id"] != header["msg_id"]


def test_kernel_info_request() -> None:
    msg = protocol.kernel_info_request(session="abc")
    assert msg["msg_type"] == "kernel_info_request"
    assert msg["content"] == {}


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2026-11-25T18:04:18.282808Z", "2026-11-25T18:04:18.282808Z"),
        ("2026-11-25T18:04:18Z", "2026-11-25T18:04:18.000000Z"),
        ("2026-11-25T18:04:18.2828+00:00", "2026-11-25T18:04:18.282800Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "2026-01-02T03:04:05.000006Z"),
    ],
)
def test_nbclient_timestamp(date: Any, expected: str) -> None:
    assert protocol.nbclient_timestamp({"header": {"date": date}}) == expected


def test_nbclient_timestamp_falls_back_to_now() -> None:
    value = protocol.nbclient_timestamp({"header": {"date": "yesterday"}})
    assert value.endswith("Z")
    parsed = datetime.fromisoformat(value)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60
    assert protocol.nbclient_timestamp(None).endswith("Z")


def test_death_status_detection() -> None:
    def status(state: str) -> Message:
        return protocol.new_message("status", {"execution_state": state}, session="s")

    assert protocol.is_death_status(status("restarting"))
    assert protocol.is_death_status(status("dead"))
    assert not protocol.is_death_status(status("starting"))
    assert not protocol.is_death_status(status("idle"))


# -- folder rules ----------------------------------------------------------------


def empty_notebook(*sources: str) -> NotebookNode:
    nb: NotebookNode = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources]
    )
    return nb


def iopub(msg_type: str, content: dict[str, Any], parent: str) -> Message:
    msg = protocol.new_message(msg_type, content, session="k", channel="iopub")
    msg["parent_header"] = {"msg_id": parent}
    return msg


def test_folder_misuse_is_caught() -> None:
    folder = NotebookOutputFolder(empty_notebook("1", "2"))
    with pytest.raises(RuntimeError):
        folder.finish_cell()
    folder.begin_cell(0, "a")
    with pytest.raises(RuntimeError):
        folder.begin_cell(1, "b")
    with pytest.raises(RuntimeError):
        folder.finish_cell()
    with pytest.raises(KernelProtocolError):
        folder.set_kernel_info({"content": {}})


def test_messages_without_a_running_cell_are_ignored() -> None:
    nb = empty_notebook("1")
    folder = NotebookOutputFolder(nb)
    folder.feed(iopub("stream", {"name": "stdout", "text": "x"}, "a"))
    folder.feed(iopub("status", {"execution_state": "restarting"}, ""))
    assert nb.cells[0].outputs == []


def test_messages_after_idle_are_ignored() -> None:
    nb = empty_notebook("print(1)")
    folder = NotebookOutputFolder(nb)
    folder.begin_cell(0, "a")
    folder.feed(iopub("status", {"execution_state": "idle"}, "a"))
    folder.feed(iopub("stream", {"name": "stdout", "text": "late"}, "a"))
    assert nb.cells[0].outputs == []
    assert not folder.cell_done


def test_should_execute() -> None:
    assert NotebookOutputFolder.should_execute(nbformat.v4.new_code_cell("x"))
    assert not NotebookOutputFolder.should_execute(nbformat.v4.new_code_cell(" \n"))
    assert not NotebookOutputFolder.should_execute(nbformat.v4.new_markdown_cell("x"))
    assert not NotebookOutputFolder.should_execute(nbformat.v4.new_raw_cell("x"))


# -- output limits ------------------------------------------------------------------


def stream(text: str, parent: str = "a") -> Message:
    return iopub("stream", {"name": "stdout", "text": text}, parent)


def display(data: dict[str, Any], parent: str = "a", display_id: str = "") -> Message:
    content: dict[str, Any] = {"data": data, "metadata": {}}
    if display_id:
        content["transient"] = {"display_id": display_id}
    return iopub("display_data", content, parent)


def error(traceback: list[str], parent: str = "a") -> Message:
    content = {"ename": "ValueError", "evalue": "bad", "traceback": traceback}
    return iopub("error", content, parent)


def test_no_limits_by_default() -> None:
    nb = empty_notebook("flood()")
    folder = NotebookOutputFolder(nb)
    folder.begin_cell(0, "a")
    for _ in range(100):
        folder.feed(stream("x" * 10_000))
    assert len(nb.cells[0].outputs) == 100
    assert not folder.outputs_truncated


def test_an_output_over_its_limit_is_cut_with_a_marker() -> None:
    nb = empty_notebook("big()")
    folder = NotebookOutputFolder(nb, limits=OutputLimits(max_output_bytes=100))
    folder.begin_cell(0, "a")
    folder.feed(stream("é" * 80))  # 160 bytes: cut on a character boundary
    folder.feed(display({"text/plain": "p" * 50, "text/html": "h" * 100}))
    folder.feed(display({"text/plain": "small"}))
    outputs = nb.cells[0].outputs
    assert outputs[0].text.startswith("é" * 50 + "\n" + TRUNCATION_MARKER)
    assert "160 bytes exceed the limit of 100 bytes per output" in outputs[0].text
    assert list(outputs[1].data) == ["text/plain"]
    assert outputs[1].data["text/plain"].startswith(TRUNCATION_MARKER)
    assert outputs[2].data == {"text/plain": "small"}
    assert folder.outputs_truncated


def test_a_long_traceback_keeps_its_end() -> None:
    nb = empty_notebook("fail()")
    folder = NotebookOutputFolder(nb, limits=OutputLimits(max_output_bytes=25))
    folder.begin_cell(0, "a")
    folder.feed(error([f"frame {i:02d}" for i in range(10)]))  # 8 bytes each
    traceback = nb.cells[0].outputs[0].traceback
    assert traceback[0].startswith(TRUNCATION_MARKER)
    assert traceback[1:] == ["frame 07", "frame 08", "frame 09"]


def test_output_past_the_notebook_budget_is_dropped_once_marked() -> None:
    nb = empty_notebook("flood()", "more()", "fail()")
    folder = NotebookOutputFolder(nb, limits=OutputLimits(max_total_bytes=1000))
    folder.begin_cell(0, "a")
    for _ in range(10_000):  # 1 MB offered, 1 kB kept
        folder.feed(stream("y" * 99 + "\n"))
    folder.feed(iopub("status", {"execution_state": "idle"}, "a"))
    folder.feed({**iopub("execute_reply", {"status": "ok"}, "a"), "channel": "shell"})
    folder.finish_cell()
    first = nb.cells[0].outputs
    assert len(first) == 11  # 10 x 100 bytes, then one marker
    assert first[-1].name == "stderr"
    assert first[-1].text.startswith(TRUNCATION_MARKER)
    assert "limit of 1000 bytes" in first[-1].text
    # Later cells get one marker each; an error is still recorded.
    folder.begin_cell(1, "b")
    folder.feed(stream("z", "b"))
    folder.feed(stream("z", "b"))
    assert [out.text[: len(TRUNCATION_MARKER)] for out in nb.cells[1].outputs] == [
        TRUNCATION_MARKER
    ]
    folder.abandon_cell()
    folder.begin_cell(2, "c")
    folder.feed(error(["Traceback", "ValueError: bad"], "c"))
    assert nb.cells[2].outputs[-1].output_type == "error"
    assert folder.outputs_truncated


def test_cleared_output_gives_its_budget_back() -> None:
    nb = empty_notebook("progress()")
    folder = NotebookOutputFolder(nb, limits=OutputLimits(max_total_bytes=250))
    folder.begin_cell(0, "a")
    for step in range(100):  # a progress bar: clear, then print
        folder.feed(iopub("clear_output", {"wait": step % 2 == 0}, "a"))
        folder.feed(stream(f"{step:3d}% " + "#" * 100))
    assert len(nb.cells[0].outputs) == 1
    assert nb.cells[0].outputs[0].text.startswith(" 99%")
    assert not folder.outputs_truncated
