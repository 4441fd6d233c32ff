"""The template process: ipykernel imported once, a kernel forked per request.

Run by :class:`~.provisioner.ForkingProvisioner` as
``python -m noteburst.forkserver.template --socket PATH --status-fd N
--parent-pid P [--warmup CODE]`` with the kernel spec's interpreter.

It imports ipykernel's stack (and runs the warm-up code, whose imports stay
in ``sys.modules`` and whose variables are dropped), then checks that it is
safe to fork: a thread, or a ZMQ context, started by an import would be
copied into every kernel half-alive (a thread does not survive a fork, its
locks may), so the template then reports ``unsafe`` and exits, and the
provisioner starts that spec's kernels the plain way.  Then it listens on a
Unix socket; each connection asks for one kernel (see :mod:`.wire`).

The child of each fork becomes the kernel: a session of its own (so
signals to the kernel's process group reach only it), the request's cwd,
environment and argv, fresh random seeds, default signal handlers; then
ipykernel's own entry point, as ``python -m ipykernel_launcher`` runs it.
It never returns into the template's code (``os._exit``).  The fork is
made ahead of the request: the template keeps one *standby* child that
has already detached and parsed the last request's command line, hands
it the next request (see :func:`_stand_by`), and forks a new standby;
without one (it died), it forks on the request.

The template reaps its children and reports each exit on the kernel's
connection, since only a parent can learn a child's exit status.  It
leaves once its parent (the Jupyter server) is gone; its kernels then see
their parent change and stop, as a plain kernel does when its server dies.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from . import wire

__all__ = ["main", "why_unforkable"]

PRELOADED: Final = (
    "zmq",
    "tornado.ioloop",
    "IPython",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    # Imported lazily by IPKernelApp.init_kernel otherwise: with debugpy,
    # 0.24 s of the 0.26 s a forked kernel took to initialise.
    "ipykernel.debugger",
    # The rest of what a forked kernel still imported while initialising
    # (psutil alone, for jupyter_client's list of local addresses, ~50 ms).
    "psutil",
    "jupyter_client.localinterfaces",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "sqlite3",
    "pdb",
    "faulthandler",
    "resource",
    "tornado.platform.asyncio",
)
"""What every kernel would import first; imported once, here."""

INLINE_BACKEND: Final = "module://matplotlib_inline.backend_inline"

REQUEST_SECONDS: Final = 10.0
"""How long a connection may take to send its request."""
STANDBY_DELAY_SECONDS: Final = 0.1
"""How long after a hand-off the next standby is forked: after the new
kernel's own start (~50 ms here), which it would otherwise slow down
(bench/kernel_start.py, through the server: p50 69-75 ms with this pause,
78-104 ms without)."""
LIFELINE_SECONDS: Final = 1.0
"""How often the template checks that its parent is still there."""


def why_unforkable() -> str | None:
    """Return why forking this process would be unsafe, or None.

    Checked after the imports and the warm-up code, which may have started
    threads (a metrics exporter, a pool) or a ZMQ context.
    """
    main = threading.main_thread()
    threads = [t.name for t in threading.enumerate() if t is not main]
    if threads:
        names = ", ".join(threads)
        return f"the warm-up left {len(threads)} thread(s) running: {names}"
    zmq = sys.modules.get("zmq")
    if zmq is not None and getattr(zmq.Context, "_instance", None) is not None:
        return "the warm-up created a ZMQ context"
    return None


def _preload(warmup: str) -> None:
    # What IPKernelApp sets before a kernel imports matplotlib, so that a
    # warm-up importing it picks the inline backend, as the kernel would.
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    for module in PRELOADED:
        __import__(module)
    _warm_first_use()
    if warmup:
        namespace: dict[str, object] = {"__name__": "__noteburst_warmup__"}
        exec(compile(warmup, "<warm-up>", "exec"), namespace)  # noqa: S102 - the operator's own code
        namespace.clear()


def _warm_first_use() -> None:
    """Do, once here, the first-use work of every kernel's first cells.

    Caches filled on first use (the regular expressions ``tokenize`` and
    IPython's input transformers compile, and ``re``'s own cache) are
    inherited by every fork, so a kernel's first cells find them filled
    instead of building them again.  Nothing here starts a thread or opens
    a file.
    """
    import io  # noqa: PLC0415 - only the template needs it
    import tokenize  # noqa: PLC0415

    from IPython.core.completer import CompletionSplitter  # noqa: PLC0415
    from IPython.core.inputtransformer2 import TransformerManager  # noqa: PLC0415

    cell = "x = 1\nprint(x)\n"
    list(tokenize.generate_tokens(io.StringIO(cell).readline))
    transformer = TransformerManager()  # type: ignore[no-untyped-call]
    transformer.transform_cell(cell)
    transformer.check_complete(cell)
    CompletionSplitter().split_line(cell)  # type: ignore[no-untyped-call]


def _reseed() -> None:
    """Give this kernel random state of its own.

    Python's ``random`` reseeds itself in a fork child already
    (``os.register_at_fork``); numpy's global generator, seeded when numpy
    was imported in the template, does not.
    """
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def _report_listening(connection: socket.socket) -> None:
    """Tell the provisioner that this kernel's sockets are bound; let go of it.

    The connection is the template's to the provisioner: the kernel
    writes one line on it, then closes its copy, so that the connection
    still ends when the template (its only other holder) goes.
    """
    if connection.fileno() == -1:
        return  # reported already
    with contextlib.suppress(OSError):
        connection.settimeout(REQUEST_SECONDS)
        connection.sendall(wire.encode({"listening": os.getpid()}))
    connection.close()


CONNECTION_FILE_PLACEHOLDER: Final = "{connection_file}"
"""What a standby parses in place of the next kernel's connection file."""


def predicted_argv(argv: Sequence[str]) -> tuple[list[str], str] | None:
    """Return ``argv`` with its ``-f`` file as a placeholder, and that file.

    None if ``argv`` names no ``-f FILE`` (what every ipykernel spec has).
    """
    for i, argument in enumerate(argv[:-1]):
        if argument == "-f":
            generic = [*argv[:i], "-f", CONNECTION_FILE_PLACEHOLDER, *argv[i + 2 :]]
            return generic, argv[i + 1]
    return None


class Prepared:
    """An ``IPKernelApp`` that has parsed a command line, the next one's guess.

    Made in the template (:meth:`Template._prepare_app`), so that every
    kernel forked after it inherits the parsed app instead of parsing the
    same command line again (3-4 ms of each kernel's CPU here, measured
    under load, where kernels are forked faster than standbys are ready).
    ``parent_pid`` is the kernels' parent: the template.
    """

    def __init__(self, generic_argv: list[str], parent_pid: int) -> None:
        from ipykernel import kernelapp  # noqa: PLC0415 - preloaded: a lookup

        self.generic_argv = generic_argv
        self.app = kernelapp.IPKernelApp.instance()
        self.app.parse_command_line(
            [*generic_argv, f"--IPKernelApp.parent_handle={parent_pid}"]
        )

    def app_for(self, argv: list[str]) -> Any | None:
        """Return the app for a request's ``argv`` if it is the guess, else None.

        The app then has ``argv``'s connection file, and does not parse
        its command line again.
        """
        predicted = predicted_argv(argv)
        if predicted is None or predicted[0] != self.generic_argv:
            return None
        app, connection_file = self.app, predicted[1]
        app.config.IPKernelApp.connection_file = connection_file
        app.cli_config.IPKernelApp.connection_file = connection_file
        app.connection_file = connection_file
        app.parse_command_line = lambda argv=None: None  # type: ignore[method-assign]
        return app


def _launch(argv: list[str], connection: socket.socket, prepared: Any = None) -> None:
    """Run ipykernel as ``launch_new_instance`` does, reporting when bound.

    A client connects to a kernel's ports as soon as the kernel manager's
    ``start_kernel`` returns.  Before the kernel has bound them, ZMQ
    refuses, and tries again only after its reconnect interval (100 ms):
    measured here, that was most of a forked start (fork to ``kernel_info``
    reply 120-210 ms, 57-85 ms with the client retrying every 5 ms).  So
    the provisioner waits for this line, and the kernel sends it as soon
    as ``init_sockets`` has bound its ports, before the rest of its
    initialisation.

    ``prepared``: a standby's app that has parsed this command line.
    """
    from ipykernel import kernelapp  # noqa: PLC0415 - preloaded: a lookup

    app = prepared
    if app is None:
        kernelapp.IPKernelApp.clear_instance()
        app = kernelapp.IPKernelApp.instance()
    bind = app.init_sockets

    def bind_then_report() -> None:
        try:
            bind()
        finally:
            _report_listening(connection)

    app.init_sockets = bind_then_report
    try:
        app.initialize(argv)
    finally:
        _report_listening(connection)  # once more, should init_sockets not run
    app.start()


def _detach(inherited: Sequence[int]) -> None:
    """Leave the template's signal handlers, descriptors and session."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    os.setsid()


def _run_kernel(
    request: wire.ForkRequest,
    connection: socket.socket,
    prepared: Prepared | None = None,
) -> int:
    """Run the requested kernel in this detached child; return its exit code."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # ipykernel watches its parent and stops when it changes: the
        # parent is this template, not the server that sent the request.
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        _reseed()
        argv = [*request["argv"], parent_handle_argument()]
        sys.argv = [launcher_path(), *argv]
        app = prepared.app_for(request["argv"]) if prepared is not None else None
        _launch(argv, connection, app)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # reported, then the process ends
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    return code


@functools.cache
def launcher_path() -> str:
    """Return ``ipykernel_launcher``'s file, the kernel's ``sys.argv[0]``.

    Looked up once, in the template, rather than in every kernel.
    """
    spec = importlib.util.find_spec("ipykernel_launcher")
    return spec.origin if spec and spec.origin else "ipykernel_launcher"


def parent_handle_argument() -> str:
    """Return the argument that names this kernel's parent, the template.

    IPKernelApp read JPY_PARENT_PID when the template imported it: its
    default is the template's environment, so say it again.
    """
    return f"--IPKernelApp.parent_handle={os.getppid()}"


def _become_kernel(
    request: wire.ForkRequest,
    inherited: Sequence[int],
    connection: socket.socket,
    prepared: Prepared | None,
) -> NoReturn:
    """Turn this fork child into the requested kernel; never returns."""
    code = 1
    try:
        _detach(inherited)
        code = _run_kernel(request, connection, prepared)
    finally:
        os._exit(code)


def _stand_by(
    channel: socket.socket, inherited: Sequence[int], prepared: Prepared | None
) -> NoReturn:
    """Wait, ready, for the next request; then become its kernel.

    What this child does before the request comes is off the request's
    path: the fork itself, leaving the template's descriptors and
    session, and the copy-on-write faults of all that (the template's
    ``prepared`` app, parsed from the last request's command line, comes
    with the fork).  Measured here: fork to
    ``kernel_info`` reply 75 ms from a fresh fork, 49 ms from a standby.
    The request comes on ``channel`` with the provisioner's connection as
    an attached descriptor; the channel's end (the template gone, or told
    to stop) ends this child.
    """
    code = 0
    try:
        _detach(inherited)
        channel.settimeout(None)
        message, fds, _, _ = socket.recv_fds(channel, wire.MAX_LINE, 1)
        if not message or not fds:
            os._exit(0)
        while not message.endswith(b"\n"):
            more = channel.recv(wire.MAX_LINE)
            if not more:
                os._exit(0)
            message += more
        channel.close()
        request: wire.ForkRequest = wire.decode(message)  # type: ignore[assignment]
        connection = socket.socket(fileno=fds[0])
        code = _run_kernel(request, connection, prepared)
    finally:
        os._exit(code)


class Template:
    """The template's loop: accept requests, fork, reap, report exits."""

    def __init__(self, listener: socket.socket, parent_pid: int) -> None:
        self.listener = listener
        self.parent_pid = parent_pid
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket] = {}
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.standby: tuple[int, socket.socket] | None = None
        """The child waiting to become the next kernel, and its channel."""
        self.prepared: Prepared | None = None
        """An app parsed from the last request's command line, for the next."""
        self.standby_due: float | None = None
        """When to fork the next standby (``time.monotonic()``), if not yet."""

    def serve(self) -> None:
        """Serve until the parent is gone."""
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_write)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "signal")
        self._prepare_standby()
        while os.getppid() == self.parent_pid:
            timeout = LIFELINE_SECONDS
            if self.standby is None and self.standby_due is not None:
                timeout = min(timeout, max(0.0, self.standby_due - time.monotonic()))
            for key, _ in self.selector.select(timeout=timeout):
                if key.data == "accept":
                    self._accept()
                elif key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_read, 4096)
                else:
                    self._peer_readable(key.data)
            self._reap()
            if self.standby_due is not None and time.monotonic() >= self.standby_due:
                self._prepare_standby()

    def _inherited(self) -> list[int]:
        """Return the descriptors a child must close: the template's own."""
        fds = [self.listener.fileno(), self.wake_read, self.wake_write]
        fds += [conn.fileno() for conn in self.children.values()]
        if self.standby is not None:
            fds.append(self.standby[1].fileno())
        with contextlib.suppress(Exception):
            fds.append(self.selector.fileno())
        return fds

    def _prepare_standby(self) -> None:
        """Fork the child that will become the next kernel, unless there is one."""
        self.standby_due = None
        if self.standby is not None:
            return
        ours, theirs = socket.socketpair()
        inherited = [*self._inherited(), ours.fileno()]
        pid = os.fork()
        if pid == 0:
            _stand_by(theirs, inherited, self.prepared)
        theirs.close()
        self.standby = (pid, ours)

    def _prepare_app(self, argv: list[str]) -> None:
        """Parse ``argv`` (the next request's guess) here, once, for every fork.

        After a request has been handed off: its kernel does not wait for
        this.  A command line that cannot be parsed here is parsed by each
        kernel, as without a guess.
        """
        generic = predicted_argv(argv)
        if generic is None:
            self.prepared = None
        elif self.prepared is None or self.prepared.generic_argv != generic[0]:
            try:
                self.prepared = Prepared(generic[0], os.getpid())
            except Exception:
                self.prepared = None
            except SystemExit as exc:  # traitlets' exit(1) on a bad command line
                if exc.code in (0, None):
                    raise  # the template's own SIGTERM handler: leave
                self.prepared = None

    def _drop_standby(self) -> None:
        """Let the standby go (it leaves when its channel ends)."""
        if self.standby is not None:
            self.standby[1].close()
            self.standby = None

    def _hand_to_standby(
        self, request: wire.ForkRequest, conn: socket.socket
    ) -> int | None:
        """Give ``request`` to the standby; return its pid, or None if it is gone."""
        if self.standby is None:
            return None
        pid, channel = self.standby
        self.standby = None
        line = wire.encode(request)
        try:
            channel.settimeout(REQUEST_SECONDS)
            sent = socket.send_fds(channel, [line], [conn.fileno()])
        except OSError:
            channel.close()
            return None  # it died: reaped as any child, the request forks anew
        # From here the standby has the request: never fork it a second time.
        # (It may already have closed its end: no empty send, which fails then.)
        with contextlib.suppress(OSError):
            if sent < len(line):
                channel.sendall(line[sent:])  # if this fails, so does the kernel
        channel.close()
        return pid

    def stop(self) -> None:
        """Let the standby go; the caller closes the rest."""
        self._drop_standby()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(REQUEST_SECONDS)
            line = conn.makefile("rb").readline(wire.MAX_LINE)
            request = wire.decode(line)
            fields = ("argv", "env", "cwd")
            if not all(key in request for key in fields):
                conn.sendall(wire.encode({"error": f"a request needs {fields}"}))
                conn.close()
                return
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(wire.encode({"error": f"bad request: {exc}"}))
            conn.close()
            return
        pid = self._hand_to_standby(request, conn)  # type: ignore[arg-type]
        standby = pid is not None
        if pid is None:
            pid = os.fork()
            if pid == 0:
                _become_kernel(request, self._inherited(), conn, self.prepared)  # type: ignore[arg-type]
        self.children[pid] = conn
        # If the provisioner gave up waiting, the exit is reaped all the same.
        with contextlib.suppress(OSError):
            reply = {"pid": pid, "reports_listening": True, "standby": standby}
            conn.sendall(wire.encode(reply))
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, pid)
        self._prepare_app(request["argv"])
        # Not at once: the kernel just started initialises meanwhile, and
        # preparing its successor would take CPU from it.
        self.standby_due = time.monotonic() + STANDBY_DELAY_SECONDS

    def _peer_readable(self, pid: int) -> None:
        """Stop reporting a kernel whose provisioner closed its connection."""
        conn = self.children.get(pid)
        if conn is None:
            return
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn)
            conn.close()
            del self.children[pid]  # still reaped, reported to no one

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.standby is not None and pid == self.standby[0]:
                self._drop_standby()  # it died waiting: make another
                self.standby_due = time.monotonic() + STANDBY_DELAY_SECONDS
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(OSError):
                self.selector.unregister(conn)
                conn.setblocking(True)
                conn.settimeout(REQUEST_SECONDS)
                message = {"exited": pid, "status": wire.exit_status(status)}
                conn.sendall(wire.encode(message))
            conn.close()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Noteburst's kernel template")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--warmup", default="")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Preload, check, listen, report, serve."""
    args = _parse(argv)
    # As ipykernel_launcher does: the cwd off sys.path while importing.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is its own
    # The provisioner stops a template with SIGTERM: leave through the
    # ``finally`` below, so the socket and its folder go too (children reset
    # SIGTERM to the default in ``_detach``).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with os.fdopen(args.status_fd, "wb", buffering=0) as status:
        try:
            _preload(args.warmup)
        except BaseException as exc:  # reported to the provisioner
            status.write(wire.encode({"unsafe": f"the warm-up failed: {exc!r}"}))
            return 3
        unsafe = why_unforkable()
        if unsafe is not None:
            status.write(wire.encode({"unsafe": unsafe}))
            return 3
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.socket)
        listener.listen(128)
        status.write(wire.encode(wire.READY))
    launcher_path()  # looked up here, once
    template = Template(listener, args.parent_pid)
    try:
        template.serve()
    finally:
        template.stop()
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(args.socket)
        with contextlib.suppress(OSError):  # the provisioner's mkdtemp, if empty
            os.rmdir(os.path.dirname(args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
