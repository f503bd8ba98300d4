"""Helpers for the lab tests: the command line, the root namespace's view, waiting."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from metal3.lab.state import LabInfo

T = TypeVar("T")


def run_metal3(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _ip_json(*args: str) -> Any:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "[]")


def _without_lifetimes(addresses: Any) -> Any:
    """`ip -j addr` with address lifetimes dropped: dynamic ones count down on their own."""
    for link in addresses:
        for info in link.get("addr_info", []):
            info.pop("valid_life_time", None)
            info.pop("preferred_life_time", None)
    return addresses


@dataclass(frozen=True)
class RootNamespace:
    addr: Any
    route: Any
    link: Any


def root_namespace() -> RootNamespace:
    """The root namespace's `ip -j addr`, `ip -j route show table all`, `ip -j link`."""
    return RootNamespace(
        addr=_without_lifetimes(_ip_json("addr")),
        route=_ip_json("route", "show", "table", "all"),
        link=_ip_json("link"),
    )


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    folder = Path(f"/proc/{pid}/fd")
    for entry in folder.iterdir() if folder.is_dir() else []:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_address: str, family: int) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if family == socket.AF_INET:
        packed = struct.pack("<I", int.from_bytes(raw, "big"))
    else:
        packed = b"".join(
            struct.pack("<I", int.from_bytes(raw[i : i + 4], "big")) for i in (0, 4, 8, 12)
        )
    return f"{socket.inet_ntop(family, packed)}:{int(port, 16)}"


def root_namespace_sockets(pids: Iterable[int]) -> list[tuple[str, int, str]]:
    """(protocol, pid, local address) of every listening TCP and bound UDP socket that the
    processes `pids` hold in the root namespace (this test process's namespace)."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for name, family, listen_only in (
        ("tcp", socket.AF_INET, True),
        ("tcp6", socket.AF_INET6, True),
        ("udp", socket.AF_INET, False),
        ("udp6", socket.AF_INET6, False),
    ):
        for line in Path(f"/proc/self/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            inode = int(fields[9])
            if inode not in owner or (listen_only and fields[3] != "0A"):
                continue
            found.append((name, owner[inode], _address(fields[1], family)))
    return found


@dataclass
class Lab:
    info: LabInfo
    data_dir: Path
    before: RootNamespace
    journal: list[dict[str, Any]]
    up_output: str

    def host_dir(self, name: str) -> Path:
        return self.data_dir / "hosts" / name

    def state(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.host_dir(name) / "state.json").read_text()))
