"""Record real kernel websocket traffic for the offline protocol tests.

Run ``uv run python -m tests.jupyter.record_messages`` to (re)generate
``tests/data/kernel_messages/*.json``.  For each notebook in
``tests/data/notebooks`` and for each wire protocol it starts a kernel on a
private jupyter_server, sends ``kernel_info`` and then each code cell as
nbclient would, and stores every frame received from the moment the
websocket opened (nudges, welcome messages and all), raw, with the ids of
the requests that were sent.  A last recording makes the kernel exit
mid-cell to capture jupyter_server's ``restarting`` notice.

``protocol_test.py`` replays these frames through :mod:`noteburst.jupyter.protocol`
and through nbclient's own code, and compares.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import nbformat
import websockets
from nbformat import NotebookNode
from websockets.asyncio.client import ClientConnection

from noteburst.jupyter import protocol
from noteburst.jupyter.exceptions import JupyterWebError
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.jupyter.protocol import NotebookOutputFolder, WireProtocol
from noteburst.jupyter.rest import JupyterRestClient

DATA = Path(__file__).parent.parent / "data"
OUT = DATA / "kernel_messages"
WAIT = 30.0

DEATH_NOTEBOOK = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell("print('alive')"),
        nbformat.v4.new_code_cell("import os\nprint('dying', flush=True)\nos._exit(1)"),
        nbformat.v4.new_code_cell("print('never')"),
    ]
)


def frame_to_json(frame: str | bytes) -> dict[str, str]:
    if isinstance(frame, str):
        return {"type": "text", "data": frame}
    return {"type": "binary", "data": base64.b64encode(frame).decode()}


class Recorder:
    """A raw websocket that keeps every frame it receives."""

    def __init__(self, ws: ClientConnection, wire_protocol: WireProtocol) -> None:
        self.ws = ws
        self.wire_protocol = wire_protocol
        self.session = "recorded-session"
        self.frames: list[str | bytes] = []

    async def receive(self) -> protocol.Message:
        async with asyncio.timeout(WAIT):
            frame = await self.ws.recv()
        self.frames.append(frame)
        return protocol.decode(frame, self.wire_protocol)

    async def send(self, msg: protocol.Message) -> str:
        await self.ws.send(protocol.encode(msg, self.wire_protocol))
        msg_id: str = msg["msg_id"]
        return msg_id

    async def kernel_info(self) -> str:
        info_id = await self.send(protocol.kernel_info_request(session=self.session))
        while True:
            msg = await self.receive()
            if msg["msg_type"] == "kernel_info_reply" and (
                protocol.parent_msg_id(msg) == info_id
            ):
                return info_id

    async def run_cell(self, source: str) -> tuple[str, str | None]:
        """Send a cell; return its msg_id and reply status (None: kernel died)."""
        msg_id = await self.send(protocol.execute_request(source, session=self.session))
        reply: protocol.Message | None = None
        idle = False
        while reply is None or not idle:
            msg = await self.receive()
            if protocol.is_death_status(msg):
                return msg_id, None
            if protocol.parent_msg_id(msg) != msg_id:
                continue
            if msg["msg_type"] == "execute_reply":
                reply = msg
            elif msg["msg_type"] == "status":
                idle = idle or msg["content"]["execution_state"] == "idle"
        return msg_id, reply["content"]["status"]


async def record(
    rest: JupyterRestClient,
    nb: NotebookNode,
    wire_protocol: WireProtocol,
    *,
    death: bool,
) -> dict[str, Any]:
    kernel_id = await rest.create_kernel("python3")
    subprotocols = (
        [websockets.Subprotocol(protocol.V1_SUBPROTOCOL)]
        if wire_protocol is WireProtocol.V1
        else None
    )
    requests: list[dict[str, Any]] = []
    try:
        async with websockets.connect(
            rest.ws_url(kernel_id, "recorded-session"),
            additional_headers=rest.auth_headers,
            subprotocols=subprotocols,
            max_size=None,
        ) as ws:
            recorder = Recorder(ws, wire_protocol)
            info_id = await recorder.kernel_info()
            for index, cell in enumerate(nb.cells):
                if not NotebookOutputFolder.should_execute(cell):
                    continue
                msg_id, status = await recorder.run_cell(cell.source)
                requests.append({"cell_index": index, "msg_id": msg_id})
                if status != "ok":
                    break
    finally:
        try:
            await rest.delete_kernel(kernel_id)
        except JupyterWebError as exc:  # a kernel that is restarting answers 500
            print(f"could not delete kernel {kernel_id}: {exc}")
    frames = recorder.frames
    if death:
        assert any(
            protocol.is_death_status(protocol.decode(f, wire_protocol)) for f in frames
        )
    return {
        "protocol": wire_protocol.name.lower(),
        "notebook": nb,
        "kernel_info_msg_id": info_id,
        "requests": requests,
        "frames": [frame_to_json(frame) for frame in frames],
    }


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalJupyterServer(root_dir=Path(tmp), start_timeout=60)
        await server.start()
        try:
            async with httpx.AsyncClient(trust_env=False) as http:
                rest = JupyterRestClient(
                    http=http, base_url=server.url, token=server.token, timeout=30
                )
                cases = [
                    (path.stem, nbformat.read(path, as_version=4), False)
                    for path in sorted((DATA / "notebooks").glob("*.ipynb"))
                ]
                cases.append(("kernel_death", DEATH_NOTEBOOK, True))
                for name, nb, death in cases:
                    for wire_protocol in WireProtocol:
                        recording = await record(rest, nb, wire_protocol, death=death)
                        target = OUT / f"{name}.{recording['protocol']}.json"
                        target.write_text(
                            json.dumps(recording, indent=1, ensure_ascii=False) + "\n"
                        )
                        print(f"{target}: {len(recording['frames'])} frames")
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
