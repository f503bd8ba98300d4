"""Listening TCP sockets, made one way for every server of the project (the API server, the
standalone parent that hands its socket to the API server child, the lab's servers)."""

from __future__ import annotations

import socket


def listening_socket(
    host: str, port: int, *, backlog: int = 128, no_delay: bool = False
) -> socket.socket:
    """A TCP socket listening on `host:port` (port 0: any free port; an address with a colon
    is IPv6). `no_delay`: connections accepted from it send small writes at once (no Nagle),
    which a server answering in several writes needs, or each answer waits for the client's
    delayed ACK (40 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if no_delay:  # accepted connections inherit it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
