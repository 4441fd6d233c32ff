"""The messages between the provisioner and a template: JSON lines.

One connection per kernel: the provisioner connects, sends one
:class:`ForkRequest` line, and reads one reply line (``{"pid": N,
"reports_listening": true}`` or ``{"error": "..."}``).  The connection
then stays open.  The kernel itself, which holds a copy of the template's
end until then, sends ``{"listening": N}`` once its ports are bound (this
line may come before the ``pid`` line); a template that does not say
``reports_listening`` (an older Noteburst in the kernel's interpreter)
never sends it.  When the kernel exits, the template (its parent, the
only process that can reap it) sends ``{"exited": N, "status": S}``,
``S`` as :attr:`subprocess.Popen.returncode` gives it (negative: killed by
that signal), and closes it.  The template's
own start is reported on a pipe: one :data:`READY` or ``{"unsafe": why}``
line.

Hand-written rather than a library: three message shapes over a local
socket, in two processes that should import as little as possible.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final, TypedDict

__all__ = [
    "READY",
    "ForkRequest",
    "decode",
    "encode",
    "exit_status",
]

READY: Final = {"ready": True}
"""What a template reports once it is ready to fork."""

MAX_LINE: Final = 4 * 1024 * 1024
"""The longest line either side accepts (a request carries the environment)."""


class ForkRequest(TypedDict):
    """Start a kernel: its command line after the interpreter, environment, cwd."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


def encode(message: dict[str, Any] | ForkRequest) -> bytes:
    """Return ``message`` as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Return the message in ``line`` (a JSON object)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        msg = f"not a message: {line[:200]!r}"
        raise ValueError(msg)
    return message


def exit_status(wait_status: int) -> int:
    """Return ``os.waitpid``'s status as ``Popen.returncode`` gives it."""
    return os.waitstatus_to_exitcode(wait_status)
