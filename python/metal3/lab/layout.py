"""Where a lab keeps its files: the layout of the lab's data directory (`--data-dir DIR`).

This layout is a contract with `metal3 standalone --lab DIR`, the demo and the tests:

- `lab.json`: the lab, written last by `lab up` (its presence means ready); see
  `metal3.lab.state`
- `lab-config.json`: what `lab up` was asked for (the supervisor reads it)
- `supervisor.log`: the supervisor's log
- `journal.jsonl`: every resource the supervisor makes, written before it is made (for `down`)
- `agent-api/`: the agent API's CA (`ca.pem`), certificate (`server.pem`) and key
  (`server.key`), for `metal3 standalone --lab DIR`
- `images/`: the files the image server serves; `URL` (the hosts' base URL), `access.log`,
  `agent.iso`
- `bmc/`: the Redfish emulator's and the IPMI simulators' files and logs (a VM lab:
  `bmc/sushy/`, sushy-tools' libvirt driver, and `bmc/vbmc/`, virtualbmc; `bmc/media/`, the
  libvirt storage pool virtual media are uploaded to)
- `libvirt/`: a VM lab's libvirtd and virtlogd: configuration, sockets, state and logs
  (see `metal3.lab.libvirtd`)
- `hosts/NAME/`: `disk0..N`, `profile.json`, `sysroot/`, `agent.log`, `agent-state/`,
  `state.json`, `os.json`; a VM: `disk0..N` (raw), `domain.xml`, `console.log`
- `manifests/NAME.yaml`: a BareMetalHost and its credentials Secret, per registered host
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @property
    def lab_json(self) -> Path:
        return self.root / "lab.json"

    @property
    def config(self) -> Path:
        return self.root / "lab-config.json"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def agent_api(self) -> Path:
        return self.root / "agent-api"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def images_url(self) -> Path:
        return self.images / "URL"

    @property
    def access_log(self) -> Path:
        return self.images / "access.log"

    @property
    def agent_iso(self) -> Path:
        return self.images / "agent.iso"

    @property
    def bmc(self) -> Path:
        return self.root / "bmc"

    @property
    def libvirt(self) -> Path:
        return self.root / "libvirt"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def host(self, name: str) -> HostPaths:
        return HostPaths(self.hosts / name)


@dataclass(frozen=True)
class HostPaths:
    root: Path

    def disk(self, index: int) -> Path:
        return self.root / f"disk{index}"

    @property
    def profile(self) -> Path:
        return self.root / "profile.json"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    @property
    def agent_state(self) -> Path:
        return self.root / "agent-state"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def os(self) -> Path:
        return self.root / "os.json"

    @property
    def domain_xml(self) -> Path:
        return self.root / "domain.xml"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"
