"""Replaying CELL_OUTPUTS events the way the schema tells a client to.

Tests check live outputs by rebuilding every cell's outputs from the
events alone and comparing with the executed notebook; this is that
client, written from the ``ExecutionEvent.outputs`` description.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from noteburst.domain.execution import EventKind, ExecutionEvent

__all__ = [
    "OUTPUT_CASES",
    "UPDATED_LATER",
    "notebook_outputs",
    "replay_graphql",
    "replay_stored",
]

OUTPUT_CASES = (
    # Prints in a loop, each its own stream message.
    "for i in range(30):\n    print(f'line {i}\\n', end='', flush=True)",
    # stdout and stderr interleaved.
    "import sys\n"
    "print('out\\n', end='', flush=True)\n"
    "print('err\\n', end='', file=sys.stderr, flush=True)\n"
    "print('out again\\n', end='')",
    # Rich display and a result.
    "from IPython.display import HTML, clear_output, display\n"
    "display(HTML('<b>one</b>'))\n"
    "display({'text/plain': 'two'}, raw=True)\n"
    "'result'",
    # An animation: each frame replaces the previous one.
    "for i in range(5):\n"
    "    clear_output(wait=True)\n"
    "    display(HTML(f'<i>frame {i}</i>'))\n"
    "    print(f'frame {i}\\n', end='', flush=True)",
    # A display updated in its own cell...
    "handle = display('first', display_id=True)\n"
    "print('between\\n', end='')\n"
    "handle.update('second')",
    # ...and from a later one.
    "handle.update('third')\nprint('later cell\\n', end='')",
    # Cleared outright.
    "print('gone\\n', end='', flush=True)\nclear_output()\nprint('stays\\n', end='')",
    # A failure ends the run with its traceback as output.
    "print('before the error\\n', end='')\n1 / 0",
    "print('never')",
)
"""Cells whose outputs exercise every way the folder changes outputs.

Each print is one ``write`` (the newline included, ``end=''``): ipykernel
sends what its buffer holds whenever a flush timer fires, and a timer
left from an earlier write can fire between the writes of one
``print('x')`` (``'x'``, then ``'\\n'``), splitting it into two stream
messages.  One write per print keeps the kernel's messages, and so the
events, the same from run to run.
"""

UPDATED_LATER = 4
"""Index in :data:`OUTPUT_CASES` of the cell a later cell's display update changes."""


def _apply(
    cells: dict[int, list[Any]], cell_index: int, start: int, outputs: list[Any]
) -> None:
    held = cells.setdefault(cell_index, [])
    assert 0 <= start <= len(held), (cell_index, start, len(held))
    held[start:] = outputs


def replay_stored(events: Iterable[ExecutionEvent]) -> dict[int, list[Any]]:
    """Each cell's outputs after applying stored events (from the last RUNNING)."""
    cells: dict[int, list[Any]] = {}
    for event in events:
        if event.kind is EventKind.RUNNING:
            cells = {}
        elif event.kind is EventKind.CELL_OUTPUTS:
            assert event.cell_index is not None
            assert event.output_start is not None
            assert event.outputs is not None
            _apply(cells, event.cell_index, event.output_start, event.outputs)
    return cells


def replay_graphql(
    events: Iterable[Mapping[str, Any]],
    cells: dict[int, list[Any]] | None = None,
) -> dict[int, list[Any]]:
    """The same for events received by a subscription, onto ``cells`` if given."""
    cells = {} if cells is None else {i: list(o) for i, o in cells.items()}
    for event in events:
        if event["kind"] == "RUNNING":
            cells = {}
        elif event["kind"] == "CELL_OUTPUTS":
            _apply(cells, event["cellIndex"], event["outputStart"], event["outputs"])
    return cells


def notebook_outputs(nb: Mapping[str, Any]) -> dict[int, list[Any]]:
    """Outputs of every code cell of an executed notebook that has any."""
    return {
        index: list(cell["outputs"])
        for index, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and cell["outputs"]
    }
