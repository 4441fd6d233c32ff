"""A listening socket made by hand, for uvicorn's ``sockets=[...]``.

Used where the port must be known (or bound, and its error seen) before the
server runs: the embedded ``serve_in_background`` (port 0 in tests) and a
worker's HTTP server (bound at boot, so a taken port fails the start).
"""

from __future__ import annotations

import socket

__all__ = ["listening_socket"]


def listening_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """Bind and listen on ``host``:``port`` for uvicorn (``sockets=[...]``).

    Why the protocol number matters: connections accepted from a socket
    made as ``socket(AF_INET, SOCK_STREAM)`` (protocol 0) inherit that 0,
    and asyncio sets ``TCP_NODELAY`` only on sockets whose protocol is
    ``IPPROTO_TCP``, so Nagle's algorithm stayed on for every connection
    :func:`serve_in_background` served.  With Nagle on, a small write that
    follows another (the ``complete`` after a subscription's last ``next``,
    or the terminal event after a burst of cell events) waits for the
    client's delayed ACK (40 ms on Linux).  (``uvicorn.run(host=...,
    port=...)`` binds through asyncio's ``create_server``, whose sockets
    come from ``getaddrinfo`` with ``IPPROTO_TCP``, and was not affected.)
    ``tests/app_test.py`` checks the option on the server's end of a real
    connection.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host,
        port,
        type=socket.SOCK_STREAM,
        proto=socket.IPPROTO_TCP,
        flags=socket.AI_PASSIVE,
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
