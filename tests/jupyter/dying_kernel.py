"""A kernel that dies when Noteburst first asks it something (a test kernelspec).

Run as ``python dying_kernel.py MARKER TIMES -f CONNECTION_FILE``: ipykernel,
except that while fewer than ``TIMES`` launches have died (a line each in
``MARKER``), a ``kernel_info_request`` from Noteburst (username
``noteburst``; jupyter_server's own requests, which open the websocket, are
answered) makes the process exit.  jupyter_server then reports the kernel
``restarting``: a kernel that died after its websocket opened and before
any notebook code ran, as a port taken during its start can make it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp

_MARKER = Path(sys.argv.pop(1))
_TIMES = int(sys.argv.pop(1))


def _die_if_due(username: str | None) -> None:
    deaths = _MARKER.read_text().count("\n") if _MARKER.exists() else 0
    if username == "noteburst" and deaths < _TIMES:
        with _MARKER.open("a") as marker:
            marker.write("died\n")
        os._exit(1)


class DiesWhenAsked(IPythonKernel):
    """Exits on Noteburst's ``kernel_info_request`` while deaths are due."""

    async def kernel_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        _die_if_due(parent["header"].get("username"))
        await super().kernel_info_request(stream, ident, parent)  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=DiesWhenAsked)
