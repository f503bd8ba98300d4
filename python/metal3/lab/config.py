"""What `metal3 lab up` is asked for, and the hosts that makes: names, BMC kinds, profiles,
MACs, addresses.

The default mix for `--hosts N`: one `ipmi` host when N >= 3, one `redfish-virtualmedia` host
when N >= 2, the rest `redfish`; Redfish hosts come first, then virtual media, then IPMI.
`--unregistered M` adds M Redfish hosts `spare-0..` with no manifest, powered on at lab start
with network boot. Profiles go round robin (small, medium, storage) unless one is chosen. MACs
are stable: `02:6d:33:HH:LL:NN` (a locally administered prefix, the host's index in two bytes,
the NIC's number), so every `lab up` gives a host the same MACs.

`--vms N` makes a lab of N virtual machines `vm-0..` instead (no process hosts): by default
the first half, rounded up, `redfish-virtualmedia` and the rest `ipmi`; all take the VM profile.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from metal3.lab.profiles import PROFILES, VM_PROFILE, Profile, profile_for

MAC_PREFIX = "02:6d:33"
MAX_HOSTS = 200


class LabConfigError(ValueError):
    """A `lab up` request that cannot be met."""


@dataclass(frozen=True)
class LabConfig:
    hosts: int
    unregistered: int = 0
    virtual_media_hosts: int | None = None  # None: the default mix
    ipmi_hosts: int | None = None
    profile: str | None = None  # None: round robin
    power_delay: int = 1  # seconds until the Redfish emulator applies a power change
    # Seconds a host keeps running after its BMC took a power off (and reports it off): some
    # BMCs answer before the power is cut, and so may the lab's notifications under load.
    power_off_lag: float = 0.0
    namespace: str = "default"  # the Kubernetes namespace of the manifests
    vms: int = 0  # > 0: a lab of this many virtual machines (and no process hosts)
    ramdisk: str | None = None  # with vms: the lab's boot server serves this agent ramdisk

    def check(self) -> None:
        if self.vms < 0:
            raise LabConfigError("--vms is a whole number >= 0")
        if self.ramdisk is not None and not self.vms:
            raise LabConfigError("--ramdisk is for a lab of virtual machines (--vms)")
        if self.vms and (self.hosts or self.unregistered or self.profile is not None):
            raise LabConfigError(
                "--vms makes a lab of virtual machines only: no --hosts, --unregistered or "
                "--profile with it"
            )
        if self.hosts < 0 or self.unregistered < 0 or self.hosts + self.unregistered + self.vms < 1:
            raise LabConfigError("a lab needs at least one host (--hosts / --unregistered)")
        if self.hosts + self.unregistered + self.vms > MAX_HOSTS:
            raise LabConfigError(f"a lab has at most {MAX_HOSTS} hosts")
        media, ipmi = self.kind_counts()
        machines = self.vms or self.hosts
        if media < 0 or ipmi < 0 or media + ipmi > machines:
            what = f"--vms {self.vms}" if self.vms else f"--hosts {self.hosts}"
            raise LabConfigError(
                f"--virtual-media-hosts {media} and --ipmi-hosts {ipmi} do not fit in {what}"
            )
        if self.profile is not None and self.profile not in PROFILES:
            raise LabConfigError(
                f"no profile {self.profile!r}; the profiles are {', '.join(PROFILES)}"
            )
        if self.power_delay < 0:
            raise LabConfigError("--power-delay is a whole number of seconds >= 0")
        if not 0 <= self.power_off_lag <= 60:
            raise LabConfigError("--power-off-lag is a number of seconds from 0 to 60")

    def kind_counts(self) -> tuple[int, int]:
        """(redfish-virtualmedia hosts, ipmi hosts) among the registered ones."""
        if self.vms:
            vm_ipmi = self.vms // 2 if self.ipmi_hosts is None else self.ipmi_hosts
            if self.virtual_media_hosts is None:
                return self.vms - max(vm_ipmi, 0), vm_ipmi
            return self.virtual_media_hosts, vm_ipmi
        media = self.virtual_media_hosts
        if media is None:
            media = 1 if self.hosts >= 2 else 0
        ipmi = self.ipmi_hosts
        if ipmi is None:
            ipmi = 1 if self.hosts >= 3 else 0
        return media, ipmi

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LabConfig:
        return cls(**raw)


@dataclass(frozen=True)
class HostPlan:
    index: int
    name: str
    kind: str
    profile: Profile
    registered: bool
    system_uuid: str

    def macs(self) -> tuple[str, ...]:
        return tuple(
            f"{MAC_PREFIX}:{self.index >> 8 & 0xFF:02x}:{self.index & 0xFF:02x}:{nic:02x}"
            for nic in range(self.profile.nics)
        )

    def nic_names(self) -> tuple[str, ...]:
        return tuple(f"eth{nic}" for nic in range(self.profile.nics))


def plan_hosts(config: LabConfig) -> list[HostPlan]:
    config.check()
    media, ipmi = config.kind_counts()
    if config.vms:
        redfish = config.vms - media - ipmi
        kinds = ["redfish"] * redfish + ["redfish-virtualmedia"] * media + ["ipmi"] * ipmi
        return [
            _plan(index, f"vm-{index}", kind, config, registered=True, profile=VM_PROFILE)
            for index, kind in enumerate(kinds)
        ]
    redfish = config.hosts - media - ipmi
    kinds = ["redfish"] * redfish + ["redfish-virtualmedia"] * media + ["ipmi"] * ipmi
    plans = []
    for index, kind in enumerate(kinds):
        plans.append(_plan(index, f"host-{index}", kind, config, registered=True))
    for spare in range(config.unregistered):
        index = config.hosts + spare
        plans.append(_plan(index, f"spare-{spare}", "redfish", config, registered=False))
    return plans


def _plan(
    index: int,
    name: str,
    kind: str,
    config: LabConfig,
    *,
    registered: bool,
    profile: Profile | None = None,
) -> HostPlan:
    return HostPlan(
        index=index,
        name=name,
        kind=kind,
        profile=profile or profile_for(index, config.profile),
        registered=registered,
        system_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://metal3.io/lab/{name}")),
    )
