"""The template's parts that need no kernel: argv guesses, the standby hand-off."""

from __future__ import annotations

import json
import os
import socket
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
    prepared = Prepared(generic)
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
