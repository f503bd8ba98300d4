"""The lab's network: a lab namespace with a bridge, and one namespace per host on it.

Nothing is made in the machine's own (root) namespace: each veth pair is created with one end
directly in the lab namespace (on the bridge) and the other directly in the host's namespace
(`ip link add ... netns LAB type veth peer ... netns HOST`), so no interface, address or route
ever appears in the root namespace, not even for a moment. The subnet is a /24 from the
private ranges that overlaps no route and no address of the root namespace, chosen at run
time; the bridge holds the gateway (.1), hosts get .10 onwards with a default route to it.
The lab namespace forwards nothing: hosts reach only what the lab serves on the gateway.

The supervisor serves on the gateway from the root namespace's process: `socket_in_namespace`
creates a socket inside a namespace from a short-lived thread that switches its own network
namespace (setns(2) is per thread), so the rest of the process stays where it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from metal3 import sockets

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
CLONE_NEWNET = 0x40000000
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
FIRST_HOST_OFFSET = 10  # hosts get .10, .11, ...
MAX_HOSTS = 240
T = TypeVar("T")


class NetworkError(RuntimeError):
    """A namespace, link or address could not be made (or read)."""


def run_ip(args: Sequence[str], *, batch: Iterable[str] | None = None) -> str:
    """`ip ARGS` (with `-batch -` lines on stdin when given); NetworkError when it fails."""
    argv = ["ip", *args]
    script = None
    if batch is not None:
        argv += ["-batch", "-"]
        script = "\n".join(batch) + "\n"
    try:
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise NetworkError("`ip` (iproute2) is not installed: the lab needs it") from None
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        shown = f"{' '.join(argv)}" + (f" <<< {script.strip()!r}" if script else "")
        raise NetworkError(f"`{shown}` failed: {said}")
    return done.stdout


# --- the subnet ------------------------------------------------------------------------


def root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace routes or holds an address in (all tables;
    default routes are left out: they overlap everything and route nothing in particular)."""
    found: list[ipaddress.IPv4Network] = []
    for route in json.loads(run_ip(["-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(run_ip(["-j", "-4", "addr", "show"]) or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                found.append(
                    ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                )
    return found


def choose_subnet(
    taken: Sequence[ipaddress.IPv4Network], rng: random.Random | None = None
) -> ipaddress.IPv4Network:
    """A random /24 of the private ranges that overlaps none of `taken`."""
    rng = rng or random.Random()
    for _ in range(1000):
        base = rng.choice(PRIVATE_RANGES)
        offset = rng.randrange(base.num_addresses // 256)
        candidate = ipaddress.IPv4Network((int(base.network_address) + offset * 256, 24))
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NetworkError("no private /24 is free of the machine's routes and addresses")


# --- namespaces and links --------------------------------------------------------------


@dataclass(frozen=True)
class HostLink:
    """A host's namespace and NICs: (name in the host, MAC) in order; the first has `ip`."""

    namespace: str
    nics: tuple[tuple[str, str], ...]
    ip: str
    port_prefix: str  # bridge port names in the lab namespace: PREFIX0, PREFIX1, ...


@dataclass(frozen=True)
class LabNetwork:
    namespace: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def host_ip(self, index: int) -> str:
        if index >= MAX_HOSTS:
            raise NetworkError(f"a lab has at most {MAX_HOSTS} hosts")
        return str(self.subnet.network_address + FIRST_HOST_OFFSET + index)


def namespaces() -> set[str]:
    """The named network namespaces (`ip netns list`)."""
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def create_lab_namespace(lab: LabNetwork) -> None:
    """The lab namespace with its bridge holding the gateway address."""
    run_ip(["netns", "add", lab.namespace])
    run_ip(
        ["-n", lab.namespace],
        batch=[
            "link set lo up",
            f"link add name {BRIDGE} type bridge stp_state 0 forward_delay 0",
            f"addr add {lab.gateway}/{lab.subnet.prefixlen} dev {BRIDGE}",
            f"link set {BRIDGE} up",
        ],
    )


def create_host_namespaces(lab: LabNetwork, hosts: Sequence[HostLink]) -> None:
    """Each host's namespace, its NICs as veths onto the lab bridge, its address and route."""
    if not hosts:
        return
    run_ip([], batch=[f"netns add {host.namespace}" for host in hosts])
    pairs = []
    ports = []
    for host in hosts:
        for number, (name, mac) in enumerate(host.nics):
            port = f"{host.port_prefix}{number}"
            pairs.append(
                f"link add name {port} netns {lab.namespace} type veth "
                f"peer name {name} netns {host.namespace} address {mac}"
            )
            ports += [f"link set {port} master {BRIDGE}", f"link set {port} up"]
    run_ip([], batch=pairs)
    run_ip(["-n", lab.namespace], batch=ports)
    for host in hosts:
        first = host.nics[0][0]
        run_ip(
            ["-n", host.namespace],
            batch=[
                "link set lo up",
                *(f"link set {name} up" for name, _ in host.nics),
                f"addr add {host.ip}/{lab.subnet.prefixlen} dev {first}",
                f"route add default via {lab.gateway} dev {first}",
            ],
        )


def namespace_pids(namespace: str) -> list[int]:
    """The processes in a namespace (`ip netns pids`); empty when it does not exist."""
    if namespace not in namespaces():
        return []
    try:
        out = run_ip(["netns", "pids", namespace])
    except NetworkError:
        return []
    return [int(word) for word in out.split() if word.isdigit()]


def delete_namespace(namespace: str) -> bool:
    """Delete a namespace (its veths go with it); False when there was none."""
    if namespace not in namespaces():
        return False
    run_ip(["netns", "delete", namespace])
    return True


def record_ip_addr(namespace: str) -> str:
    """`ip -d -j addr show` inside the namespace: the recording an inventory reads."""
    return run_ip(["-n", namespace, "-d", "-j", "addr", "show"])


# --- sockets inside a namespace --------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def in_namespace(namespace: str, call: Callable[[], T]) -> T:
    """`call()` run by a thread that has joined the network namespace `namespace`.

    Only the sockets it creates live there; the thread ends afterwards, so no thread of the
    process stays in the namespace.
    """
    path = NETNS_DIR / namespace
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failure.append(NetworkError(f"no network namespace {namespace}: {exc.strerror}"))
            return
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                failure.append(NetworkError(f"setns({path}): {os.strerror(err)}"))
                return
            result.append(call())
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def listening_socket(address: str, port: int, *, namespace: str | None = None) -> socket.socket:
    """A TCP socket listening on address:port, in `namespace` (None: this thread's)."""

    def make() -> socket.socket:
        return sockets.listening_socket(address, port)

    return make() if namespace is None else in_namespace(namespace, make)
