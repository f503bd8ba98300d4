"""A provisioning network for boot server tests, made of namespaces only.

- the server namespace: the bridge `br0` (the provisioning network, gateway .1: the boot
  server's address) and `ext0`, a veth to the "outside" namespace on another subnet: it
  stands for the machine's own network, which the boot server must never answer on;
- one namespace per client, a veth with the client's MAC on the bridge (or, for `outside`,
  the other end of `ext0`).

Both subnets are chosen to overlap no route of the machine; nothing is made in the root
namespace. `metal3 bootserver` runs inside the server namespace (`ip netns exec`), as it runs
with hostNetwork on a provisioning host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metal3.lab.network import (
    BRIDGE,
    LabNetwork,
    choose_subnet,
    create_lab_namespace,
    delete_namespace,
    root_networks,
    run_ip,
)

EXTERNAL = "ext0"
HTTP_PORT = 8080


@dataclass
class BootNet:
    lab: LabNetwork
    outside_subnet: ipaddress.IPv4Network
    prefix: str
    clients: list[str] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        return self.lab.namespace

    @property
    def address(self) -> str:
        return self.lab.gateway

    @property
    def outside_address(self) -> str:
        return str(self.outside_subnet.network_address + 1)

    @property
    def outside_ns(self) -> str:
        return f"{self.prefix}-out"

    def dhcp_range(self) -> tuple[str, str]:
        base = self.lab.subnet.network_address
        return str(base + 100), str(base + 150)

    def add_client(self, mac: str) -> str:
        """A namespace with one NIC (`eth0`, this MAC) on the bridge; its name."""
        number = len(self.clients)
        namespace = f"{self.prefix}-c{number}"
        run_ip(["netns", "add", namespace])
        self.clients.append(namespace)
        run_ip(
            [],
            batch=[
                f"link add name bp{number} netns {self.server_ns} type veth "
                f"peer name eth0 netns {namespace} address {mac}"
            ],
        )
        run_ip(["-n", self.server_ns], batch=[f"link set bp{number} master {BRIDGE}",
                                              f"link set bp{number} up"])  # fmt: skip
        run_ip(["-n", namespace], batch=["link set lo up", "link set eth0 up"])
        return namespace


@contextlib.contextmanager
def boot_network() -> Iterator[BootNet]:
    taken = root_networks()
    subnet = choose_subnet(taken)
    outside = choose_subnet([*taken, subnet])
    prefix = f"m3bs-{random.randrange(16**6):06x}"
    net = BootNet(LabNetwork(prefix, subnet), outside, prefix)
    create_lab_namespace(net.lab)
    try:
        run_ip(["netns", "add", net.outside_ns])
        run_ip(
            [],
            batch=[
                f"link add name {EXTERNAL} netns {net.server_ns} type veth "
                f"peer name eth0 netns {net.outside_ns}"
            ],
        )
        run_ip(
            ["-n", net.server_ns],
            batch=[f"addr add {net.outside_address}/24 dev {EXTERNAL}", f"link set {EXTERNAL} up"],
        )
        run_ip(["-n", net.outside_ns], batch=["link set lo up", "link set eth0 up"])
        yield net
    finally:
        for namespace in [*net.clients, net.outside_ns, net.server_ns]:
            with contextlib.suppress(Exception):
                delete_namespace(namespace)


def in_ns(
    namespace: str, argv: Sequence[str], *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, timeout=timeout
    )


UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this at each event: keep what a bound lease said, and take the address
if [ "$1" = bound ]; then
    env > "$(dirname "$0")/lease.$interface.env"
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
fi
exit 0
"""

CLIENT_KINDS = {
    # what the client says about itself: vendor class, and options (hex)
    "bios-pxe": ("PXEClient:Arch:00000:UNDI:002001", ["0x5d:0000"]),
    "uefi-pxe": ("PXEClient:Arch:00007:UNDI:003016", ["0x5d:0007"]),
    "ipxe": ("PXEClient:Arch:00000:UNDI:002001", ["0x5d:0000", "0x4d:69505845", "0xaf:130101"]),
    "linux": ("udhcp 1.35.0", []),  # what the ramdisk's own udhcpc says
}


def dhcp(namespace: str, folder: Path, kind: str) -> dict[str, str] | None:
    """busybox udhcpc in ``namespace`` as a ``kind`` boot client: the lease's variables
    (ip, siaddr, boot: the boot file, ...), or None when no server answered."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    lease = folder / "lease.eth0.env"
    lease.unlink(missing_ok=True)
    vendor, options = CLIENT_KINDS[kind]
    argv = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4", "-T", "2",
            "-s", str(script), "-V", vendor, "-O", "bootfile"]  # fmt: skip
    for option in options:
        argv += ["-x", option]
    done = in_ns(namespace, argv, timeout=120)
    if done.returncode != 0 or not lease.exists():
        return None
    values = {}
    for line in lease.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    # the BOOTP file field, or option 67 (dnsmasq sends both ways)
    values["boot"] = values.get("boot_file") or values.get("bootfile") or ""
    return values


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    state: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def dnsmasq_pid(self) -> int:
        for child in (
            Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        ):
            if Path(f"/proc/{child}/comm").read_text().strip() == "dnsmasq":
                return int(child)
        raise AssertionError(f"no dnsmasq under the boot server:\n{self.log_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode


def start_server(
    net: BootNet, folder: Path, *, ramdisk: Path, agent_api: str, extra: Sequence[str] = ()
) -> ServerProcess:
    """`metal3 bootserver` in the server namespace; returns once HTTP answers."""
    state = folder / "state"
    log = folder / "bootserver.log"
    first, last = net.dhcp_range()
    argv = [
        "ip", "netns", "exec", net.server_ns, sys.executable, "-m", "metal3", "bootserver",
        "--interface", BRIDGE, "--listen", net.address, "--dhcp-range", f"{first},{last}",
        "--state-dir", str(state), "--ramdisk", str(ramdisk), "--agent-api", agent_api,
        "--http-port", str(HTTP_PORT), "--log-dhcp", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
    server = ServerProcess(process, state, log)
    deadline = time.monotonic() + 60
    while "boot server on" not in server.log_text():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the boot server did not start:\n{server.log_text()}")
        time.sleep(0.1)
    return server
