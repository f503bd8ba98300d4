"""Router advertisements that configure nothing, so iPXE does not wait for one.

iPXE's automatic configuration (the `autoboot` of a NIC's iPXE ROM or of `undionly.kpxe`,
which runs before any script of ours) tries DHCP and IPv6 together and, on a network with no
IPv6 router, waits about 13 seconds for a router advertisement before it goes on. This answers
each router solicitation on the provisioning interface with an advertisement that carries no
prefix, no managed/other flags and a router lifetime of 0 ("not a default router"): iPXE's
IPv6 configuration ends at once and finds nothing to use, and hosts on the link take no
address or route from it.

A raw ICMPv6 socket bound to the interface (SO_BINDTODEVICE); replies go to the solicitor's
link-local address (RFC 4861 allows a unicast answer), at most `MAX_PER_SECOND` per second.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time

log = logging.getLogger(__name__)

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
ALL_ROUTERS = "ff02::2"
ALL_NODES = "ff02::1"
MAX_PER_SECOND = 20
# type, code, checksum (the kernel fills it), hop limit 0 (unspecified), flags (M=O=0),
# router lifetime 0, reachable time 0, retransmission timer 0
ADVERTISEMENT = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)


class RouterAdvertiser:
    """Answers router solicitations on ``interface`` until stopped."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.ifindex = socket.if_nametoindex(interface)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            for option in (socket.IPV6_MULTICAST_HOPS, socket.IPV6_UNICAST_HOPS):
                sock.setsockopt(socket.IPPROTO_IPV6, option, 255)  # NDP requires 255
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS)
            sock.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", self.ifindex)
            )
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bootserver-ra", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        sent: list[float] = []
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data, source = self.sock.recvfrom(1500)
            except OSError:
                continue
            if not data or data[0] != ROUTER_SOLICITATION:
                continue
            now = time.monotonic()
            sent = [t for t in sent if now - t < 1.0]
            if len(sent) >= MAX_PER_SECOND:
                continue
            address = str(source[0]).split("%")[0]
            target = address if address not in ("::", "") else ALL_NODES
            try:
                self.sock.sendto(ADVERTISEMENT, (target, 0, 0, self.ifindex))
            except OSError as exc:
                log.info("router advertisement to %s: %s", target, exc)
                continue
            sent.append(now)
            self.answered += 1
            log.info("router advertisement (configures nothing) sent to %s", target)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()
