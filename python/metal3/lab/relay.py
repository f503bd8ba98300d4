"""The agent API relay: connections to the gateway inside the lab namespace, forwarded to a
listener on 127.0.0.1 in the machine's own namespace.

The operator serves the agent API on 127.0.0.1 only; the lab's hosts can reach nothing but
their subnet. The relay listens on `GATEWAY:PORT` (a socket made inside the lab namespace)
and, for each connection, opens one to `127.0.0.1:PORT` from the supervisor (which lives in
the root namespace) and copies bytes both ways until either side closes. TLS stays end to
end: the relay sees only ciphertext. When nothing listens on 127.0.0.1 (the operator is not
running), the host's connection is closed at once, as a refused connection would be.

Each host's connections come from a loopback address of its own (`loopback_source`: the
host's A.B.C.D becomes 127.B.C.D; all of 127/8 is the loopback's), so the operator tells the
hosts apart as it would on a real network: its per-client rate limit and its logs see one
client per host, not the whole lab as one client at 127.0.0.1 (fifty agents then shared one
client's budget and were refused with 429s).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading

log = logging.getLogger(__name__)

BUFFER = 256 * 1024
CONNECT_TIMEOUT = 5.0


def loopback_source(peer: str, target: str) -> str | None:
    """The loopback address a host's connections come from (see the module doc); None (the
    kernel's choice) for an address that is not IPv4 or that would be the target's own."""
    try:
        address = ipaddress.IPv4Address(peer)
    except ValueError:
        return None
    source = str(ipaddress.IPv4Address((127 << 24) | (int(address) & 0xFFFFFF)))
    return None if source == target else source


class Relay:
    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self.listener = listener
        self.target = target
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="relay", daemon=True)
        self.accepted = 0

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            open_now = list(self._connections)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, peer = self.listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            self.accepted += 1
            threading.Thread(
                target=self._serve, args=(client, peer), name="relay-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket, peer: tuple[str, int]) -> None:
        source = loopback_source(peer[0], self.target[0])
        try:
            upstream = socket.create_connection(
                self.target, timeout=CONNECT_TIMEOUT, source_address=(source, 0) if source else None
            )
        except OSError as exc:
            log.info("relay: %s:%s -> %s:%s refused: %s", *peer, *self.target, exc)
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections.update((client, upstream))
        back = threading.Thread(
            target=self._pump, args=(upstream, client), name="relay-pump", daemon=True
        )
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._connections.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Copy until `source` ends, then end `sink`'s sending side (half close); after an
        error (a reset), both connections are shut down so the other direction ends too."""
        try:
            while True:
                data = source.recv(BUFFER)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
