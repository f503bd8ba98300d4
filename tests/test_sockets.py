"""The one way the project's servers make their listening sockets."""

from __future__ import annotations

import socket

import pytest

from metal3.sockets import listening_socket


@pytest.mark.parametrize("no_delay", [False, True])
def test_a_listening_socket_accepts_and_passes_no_delay_on(no_delay: bool) -> None:
    with listening_socket("127.0.0.1", 0, no_delay=no_delay) as server:
        port = server.getsockname()[1]
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = server.accept()
            with accepted:
                delay_off = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert bool(delay_off) is no_delay


def test_an_address_with_a_colon_is_ipv6_and_a_taken_port_is_refused() -> None:
    try:
        server = listening_socket("::1", 0)
    except OSError as exc:  # a kernel without IPv6 on loopback
        pytest.fail(f"no IPv6 loopback here: {exc}")
    with server:
        assert server.family == socket.AF_INET6
        port = server.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            listening_socket("::1", port)
