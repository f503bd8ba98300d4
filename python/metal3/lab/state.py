"""`lab.json`, the lab as the outside sees it, and the JSON files the lab keeps per host.

`lab.json` (owner-only: it holds the BMC credentials) is written by the supervisor once the lab
is ready, and removed when it is taken down. Its keys:

    {"version": 1, "lab_id", "supervisor_pid",
     "network": {"namespace", "subnet", "gateway"},
     "agent_api": {"listen": "127.0.0.1:PORT", "lab_address": "GATEWAY:PORT",
                   "ca_file", "cert_file", "key_file"},
     "images": {"dir", "url" (hosts' base URL), "local_url" (http://127.0.0.1:PORT/)},
     "agent_iso_url" (what a BMC downloads for virtual media),
     "bmcs": {"redfish_url" (the first Redfish emulator's; a lab of more than 16 Redfish hosts
              has more: each host's own is in its "bmc_address"), "notify_url"},
     "libvirt_uri" (a VM lab's libvirtd, `qemu:///system?socket=...`; "" otherwise),
     "hosts_cpu": {"group" (the hosts' CPU cgroup, `metal3.lab.cpu`; "" if none),
                   "note" (why there is none)},
     "hosts": [{"name", "namespace", "kind", "bmc_address", "credentials": {"username",
                "password"}, "boot_mac", "macs", "ip", "profile", "disks", "loop_devices",
                "registered", "manifest",
                "vm" (null for a process host): {"domain", "console_log", "memory_mib",
                                                  "disk_sizes", "boot_disk"}}]}

A VM host's `namespace` is the lab namespace (its NIC is a tap on the lab bridge), its `disks`
are the raw files behind its virtio disks and it has no loop devices.

Per host, `hosts/NAME/state.json` is what the host is doing (power, boot device, what it
booted, the agent's pid) and `hosts/NAME/os.json` what "booting the OS" found on its disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metal3.lab.layout import LabPaths

VERSION = 1
JsonObject = dict[str, Any]


class LabStateError(RuntimeError):
    """lab.json is missing or not what this version writes."""


def write_json(path: Path, value: Any, *, private: bool = False) -> None:
    """Write atomically (readers never see half a file); `private`: owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable (being replaced)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class VmInfo:
    """What a VM host is in libvirt: its domain, serial console log, memory, disk sizes (in
    the guest's order) and the disk its BIOS boots (an index into them)."""

    domain: str
    console_log: str
    memory_mib: int
    disk_sizes: tuple[int, ...]
    boot_disk: int = 0

    def to_json(self) -> JsonObject:
        return {
            "domain": self.domain,
            "console_log": self.console_log,
            "memory_mib": self.memory_mib,
            "disk_sizes": list(self.disk_sizes),
            "boot_disk": self.boot_disk,
        }

    @classmethod
    def from_json(cls, raw: JsonObject) -> VmInfo:
        return cls(
            domain=str(raw["domain"]),
            console_log=str(raw["console_log"]),
            memory_mib=int(raw["memory_mib"]),
            disk_sizes=tuple(int(s) for s in raw["disk_sizes"]),
            boot_disk=int(raw.get("boot_disk", 0)),
        )


@dataclass(frozen=True)
class LabHost:
    name: str
    namespace: str  # the host's network namespace
    kind: str  # redfish | redfish-virtualmedia | ipmi
    bmc_address: str
    username: str
    password: str
    boot_mac: str
    macs: tuple[str, ...]
    ip: str
    profile: str
    disks: tuple[str, ...]
    loop_devices: tuple[str, ...]
    registered: bool
    manifest: str | None
    vm: VmInfo | None = None

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "kind": self.kind,
            "bmc_address": self.bmc_address,
            "credentials": {"username": self.username, "password": self.password},
            "boot_mac": self.boot_mac,
            "macs": list(self.macs),
            "ip": self.ip,
            "profile": self.profile,
            "disks": list(self.disks),
            "loop_devices": list(self.loop_devices),
            "registered": self.registered,
            "manifest": self.manifest,
            "vm": self.vm.to_json() if self.vm is not None else None,
        }

    @classmethod
    def from_json(cls, raw: JsonObject) -> LabHost:
        return cls(
            name=str(raw["name"]),
            namespace=str(raw["namespace"]),
            kind=str(raw["kind"]),
            bmc_address=str(raw["bmc_address"]),
            username=str(raw["credentials"]["username"]),
            password=str(raw["credentials"]["password"]),
            boot_mac=str(raw["boot_mac"]),
            macs=tuple(str(m) for m in raw["macs"]),
            ip=str(raw["ip"]),
            profile=str(raw["profile"]),
            disks=tuple(str(d) for d in raw["disks"]),
            loop_devices=tuple(str(d) for d in raw["loop_devices"]),
            registered=bool(raw["registered"]),
            manifest=raw.get("manifest"),
            vm=VmInfo.from_json(raw["vm"]) if raw.get("vm") else None,
        )


@dataclass(frozen=True)
class LabInfo:
    lab_id: str
    supervisor_pid: int
    namespace: str
    subnet: str
    gateway: str
    agent_api_listen: str
    agent_api_lab_address: str
    ca_file: str
    cert_file: str
    key_file: str
    images_dir: str
    images_url: str
    images_local_url: str
    agent_iso_url: str
    redfish_url: str
    notify_url: str
    hosts: tuple[LabHost, ...] = field(default=())
    libvirt_uri: str = ""
    hosts_cpu_group: str = ""
    hosts_cpu_note: str = ""

    @property
    def hosts_cpu(self) -> dict[str, str]:
        """`lab.json`'s "hosts_cpu": the hosts' CPU group, or the note why there is none."""
        return {"group": self.hosts_cpu_group, "note": self.hosts_cpu_note}

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in this lab")

    def to_json(self) -> JsonObject:
        return {
            "version": VERSION,
            "lab_id": self.lab_id,
            "supervisor_pid": self.supervisor_pid,
            "network": {
                "namespace": self.namespace,
                "subnet": self.subnet,
                "gateway": self.gateway,
            },
            "agent_api": {
                "listen": self.agent_api_listen,
                "lab_address": self.agent_api_lab_address,
                "ca_file": self.ca_file,
                "cert_file": self.cert_file,
                "key_file": self.key_file,
            },
            "images": {
                "dir": self.images_dir,
                "url": self.images_url,
                "local_url": self.images_local_url,
            },
            "agent_iso_url": self.agent_iso_url,
            "bmcs": {"redfish_url": self.redfish_url, "notify_url": self.notify_url},
            "libvirt_uri": self.libvirt_uri,
            "hosts_cpu": self.hosts_cpu,
            "hosts": [host.to_json() for host in self.hosts],
        }

    @classmethod
    def from_json(cls, raw: JsonObject) -> LabInfo:
        if raw.get("version") != VERSION:
            raise LabStateError(f"lab.json version {raw.get('version')!r}; this reads {VERSION}")
        network, api, images = raw["network"], raw["agent_api"], raw["images"]
        return cls(
            lab_id=str(raw["lab_id"]),
            supervisor_pid=int(raw["supervisor_pid"]),
            namespace=str(network["namespace"]),
            subnet=str(network["subnet"]),
            gateway=str(network["gateway"]),
            agent_api_listen=str(api["listen"]),
            agent_api_lab_address=str(api["lab_address"]),
            ca_file=str(api["ca_file"]),
            cert_file=str(api["cert_file"]),
            key_file=str(api["key_file"]),
            images_dir=str(images["dir"]),
            images_url=str(images["url"]),
            images_local_url=str(images["local_url"]),
            agent_iso_url=str(raw["agent_iso_url"]),
            redfish_url=str(raw["bmcs"]["redfish_url"]),
            notify_url=str(raw["bmcs"]["notify_url"]),
            hosts=tuple(LabHost.from_json(h) for h in raw["hosts"]),
            libvirt_uri=str(raw.get("libvirt_uri") or ""),
            hosts_cpu_group=str((raw.get("hosts_cpu") or {}).get("group") or ""),
            hosts_cpu_note=str((raw.get("hosts_cpu") or {}).get("note") or ""),
        )


def load_lab(data_dir: Path) -> LabInfo:
    """The lab in `data_dir`; LabStateError when there is none (or not one this reads)."""
    path = LabPaths(data_dir).lab_json
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabStateError(f"no lab in {data_dir} (no {path}): run `metal3 lab up`") from None
    except (OSError, ValueError) as exc:
        raise LabStateError(f"cannot read {path}: {exc}") from exc
    try:
        return LabInfo.from_json(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise LabStateError(f"{path} is not a lab description: {exc!r}") from exc
