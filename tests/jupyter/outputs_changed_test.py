"""The folder's ``on_outputs_changed`` notices cover every change it makes.

Offline, from the recorded kernel traffic of ``protocol_test.py``: a
shadow copy of the notebook's outputs is updated *only* from the notices
(``shadow[cell][first_changed:] = outputs[first_changed:]``) after every
message, and must equal the folded notebook at every step, in every cell.
Live-output events are built on exactly that contract, so a missed notice
(a clear, a display update in another cell, a cut, coalescing) fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nbformat import NotebookNode

from noteburst.jupyter.protocol import Message, NotebookOutputFolder, OutputLimits
from tests.jupyter.protocol_test import (
    NOTEBOOK_RECORDINGS,
    empty_notebook,
    ids,
    iopub,
    load,
)


class Shadow:
    """Outputs rebuilt from the notices alone."""

    def __init__(self, nb: NotebookNode) -> None:
        self.nb = nb
        self.cells: dict[int, list[Any]] = {}
        self.changed: dict[int, int] = {}
        self.notices = 0

    def notice(self, cell_index: int, first_changed: int) -> None:
        self.notices += 1
        outs = self.nb.cells[cell_index].outputs
        assert 0 <= first_changed <= len(outs)
        self.changed[cell_index] = min(
            first_changed, self.changed.get(cell_index, first_changed)
        )

    def begin(self, cell_index: int) -> None:
        self.cells[cell_index] = []  # begin_cell clears; callers know

    def apply_and_check(self) -> None:
        for index, first in self.changed.items():
            held = self.cells.setdefault(index, [])
            start = min(first, len(held))
            held[start:] = copy.deepcopy(self.nb.cells[index].outputs[start:])
        self.changed.clear()
        for index, held in self.cells.items():
            assert held == self.nb.cells[index].outputs, index


def fold_checked(path: Path, **options: Any) -> Shadow:
    recording = load(path)
    nb = copy.deepcopy(recording.notebook)
    shadow = Shadow(nb)
    folder = NotebookOutputFolder(nb, on_outputs_changed=shadow.notice, **options)
    folder.set_kernel_info(recording.kernel_info_reply())
    messages: Iterator[Message] = iter(recording.messages())
    for index, msg_id in recording.requests:
        folder.begin_cell(index, msg_id)
        shadow.begin(index)
        while not folder.cell_done:
            folder.feed(next(messages))
            shadow.apply_and_check()
        outcome = folder.finish_cell()
        shadow.apply_and_check()
        if outcome.failed:
            break
    return shadow


@pytest.mark.parametrize("path", NOTEBOOK_RECORDINGS, ids=ids(NOTEBOOK_RECORDINGS))
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="plain"),
        pytest.param({"coalesce_streams": True}, id="coalesced"),
        pytest.param(
            {"limits": OutputLimits(max_output_bytes=20, max_total_bytes=200)},
            id="limited",
        ),
    ],
)
def test_notices_rebuild_every_step_of_every_recording(
    path: Path, options: dict[str, Any]
) -> None:
    shadow = fold_checked(path, **options)
    outputs = sum(len(cell) for cell in shadow.cells.values())
    assert (shadow.notices > 0) == (outputs > 0)


def test_notices_cover_clears_cuts_and_display_updates() -> None:
    nb = empty_notebook("a()", "b()")
    shadow = Shadow(nb)
    folder = NotebookOutputFolder(
        nb,
        on_outputs_changed=shadow.notice,
        limits=OutputLimits(max_output_bytes=50, max_total_bytes=300),
    )

    def feed(msg: Message) -> int:
        """Fold ``msg``, check the shadow, return how many notices it gave."""
        before = shadow.notices
        folder.feed(msg)
        shadow.apply_and_check()
        return shadow.notices - before

    folder.begin_cell(0, "a")
    shadow.begin(0)
    feed(iopub("stream", {"name": "stdout", "text": "one\n"}, "a"))
    content = {"data": {"text/plain": "v1"}, "metadata": {}}
    feed(iopub("display_data", {**content, "transient": {"display_id": "d"}}, "a"))
    feed(iopub("stream", {"name": "stdout", "text": "x" * 80}, "a"))  # cut
    assert feed(iopub("clear_output", {"wait": True}, "a")) == 0  # not yet
    feed(iopub("stream", {"name": "stderr", "text": "after\n"}, "a"))
    feed(iopub("display_data", {**content, "transient": {"display_id": "d"}}, "a"))
    folder.feed({**iopub("execute_reply", {"status": "ok"}, "a"), "channel": "shell"})
    feed(iopub("status", {"execution_state": "idle"}, "a"))
    folder.finish_cell()
    folder.begin_cell(1, "b")
    shadow.begin(1)
    update = {"data": {"text/plain": "v2"}, "metadata": {}}
    feed(
        iopub("update_display_data", {**update, "transient": {"display_id": "d"}}, "b")
    )
    assert nb.cells[0].outputs[-1].data == {"text/plain": "v2"}
    for _ in range(20):  # past the notebook's budget: one marker
        feed(iopub("stream", {"name": "stdout", "text": "y" * 40}, "b"))
    feed(iopub("clear_output", {"wait": False}, "b"))
    assert nb.cells[1].outputs == []
    assert shadow.cells[1] == []
