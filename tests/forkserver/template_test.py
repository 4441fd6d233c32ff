"""The template's parts that need no kernel: argv guesses, the standby hand-off."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from ipykernel.kernelapp import IPKernelApp

from noteburst.forkserver import template, wire
from noteburst.forkserver.template import CONNECTION_FILE_PLACEHOLDER, Prepared

WAIT = 30


def test_predicted_argv_puts_a_placeholder_for_the_connection_file() -> None:
    argv = ["-f", "/run/k1.json", "--Kernel._execute_sleep=0"]
    generic, connection_file = template.predicted_argv(argv) or ([], "")
    assert generic == ["-f", CONNECTION_FILE_PLACEHOLDER, "--Kernel._execute_sleep=0"]
    assert connection_file == "/run/k1.json"
    assert template.predicted_argv(["--debug"]) is None


@pytest.fixture
def no_app() -> Iterator[None]:
    IPKernelApp.clear_instance()
    yield
    IPKernelApp.clear_instance()


@pytest.mark.usefixtures("no_app")
def test_a_prepared_app_serves_only_the_command_line_it_parsed() -> None:
    generic = ["-f", CONNECTION_FILE_PLACEHOLDER, "--Kernel._execute_sleep=0"]
    prepared = Prepared(generic, os.getpid())
    assert prepared.app_for(["-f", "/run/k2.json", "--debug"]) is None
    assert prepared.app_for(["--Kernel._execute_sleep=0"]) is None
    app = prepared.app_for(["-f", "/run/k2.json", "--Kernel._execute_sleep=0"])
    assert app is prepared.app
    # The next kernel's file, wherever IPython reads it from, and no
    # second parse of the command line (which would bring the guess back).
    assert app.connection_file == "/run/k2.json"
    assert app.config.IPKernelApp.connection_file == "/run/k2.json"
    assert app.cli_config.IPKernelApp.connection_file == "/run/k2.json"
    app.parse_command_line(generic)
    assert app.connection_file == "/run/k2.json"


def test_a_standby_gets_each_request_once_even_if_it_hangs_up_at_once() -> None:
    # A standby closes its channel as soon as it has read the request; the
    # template once then sent an empty remainder, failed on the closed
    # channel, and forked the same request again: two kernels on one
    # connection file (the second died with "Address already in use").
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    keeper = template.Template(listener, os.getppid())
    request: wire.ForkRequest = {"argv": [], "env": {"X": "1" * 4000}, "cwd": "/"}
    try:
        for attempt in range(200):
            ours, theirs = socket.socketpair()
            keeper.standby = (4242 + attempt, ours)
            received: list[bytes] = []

            def standby(
                channel: socket.socket = theirs, received: list[bytes] = received
            ) -> None:
                message, fds, _, _ = socket.recv_fds(channel, wire.MAX_LINE, 1)
                channel.close()  # at once, as _stand_by does
                received.append(message)
                for fd in fds:
                    os.close(fd)

            thread = threading.Thread(target=standby)
            thread.start()
            provisioner_end, template_end = socket.socketpair()
            with provisioner_end, template_end:
                pid = keeper._hand_to_standby(request, template_end)
            thread.join(WAIT)
            assert pid == 4242 + attempt, f"attempt {attempt}: forked again"
            assert json.loads(received[0]) == request
    finally:
        listener.close()
        os.close(keeper.wake_read)
        os.close(keeper.wake_write)


def test_a_request_for_a_dead_standby_is_forked_anew() -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    keeper = template.Template(listener, os.getppid())
    ours, theirs = socket.socketpair()
    theirs.close()  # the standby died
    keeper.standby = (4242, ours)
    request: wire.ForkRequest = {"argv": [], "env": {}, "cwd": "/"}
    try:
        provisioner_end, template_end = socket.socketpair()
        with provisioner_end, template_end:
            assert keeper._hand_to_standby(request, template_end) is None
        assert keeper.standby is None
    finally:
        listener.close()
        os.close(keeper.wake_read)
        os.close(keeper.wake_write)


def current(keeper: template.Template) -> Prepared | None:
    """The template's prepared app (a call: mypy narrows no attribute)."""
    return keeper.prepared


@pytest.mark.usefixtures("no_app")
def test_the_template_parses_a_command_line_once_for_every_later_kernel(
    capfd: pytest.CaptureFixture[str],
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    keeper = template.Template(listener, os.getppid())
    try:
        keeper._prepare_app(["-f", "/run/k1.json", "--Kernel._execute_sleep=0"])
        prepared = current(keeper)
        assert prepared is not None
        assert prepared.generic_argv == [
            "-f",
            CONNECTION_FILE_PLACEHOLDER,
            "--Kernel._execute_sleep=0",
        ]
        # The kernels' parent is the template, this process.
        assert prepared.app.parent_handle == os.getpid()
        # The same command line with another file: parsed already.
        keeper._prepare_app(["-f", "/run/k2.json", "--Kernel._execute_sleep=0"])
        assert current(keeper) is prepared
        # Another command line replaces the guess.
        IPKernelApp.clear_instance()
        keeper._prepare_app(["-f", "/run/k3.json"])
        replaced = current(keeper)
        assert replaced is not None
        assert replaced is not prepared
        assert replaced.generic_argv == ["-f", CONNECTION_FILE_PLACEHOLDER]
        # No connection file, no guess.
        keeper._prepare_app(["--debug"])
        assert current(keeper) is None
        # One the app refuses (argparse exits) leaves the template running.
        IPKernelApp.clear_instance()
        keeper._prepare_app(["-f", "/run/k4.json", "--nosuchflag"])
        assert current(keeper) is None
        assert "--nosuchflag" in capfd.readouterr().err
    finally:
        listener.close()
        os.close(keeper.wake_read)
        os.close(keeper.wake_write)


def test_first_use_work_is_done_once_in_the_template() -> None:
    # In a fresh interpreter, as the template is: tokenize's pattern (what
    # IPython's input transformers compile for every kernel's first cell)
    # is compiled, and no thread is left behind (the fork would copy it).
    code = (
        "import threading, tokenize\n"
        "from noteburst.forkserver import template\n"
        "assert tokenize._compile.cache_info().currsize == 0\n"
        "template._warm_first_use()\n"
        "print(tokenize._compile.cache_info().currsize, threading.active_count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    assert done.stdout.split() == ["1", "1"]
