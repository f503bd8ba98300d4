"""The boot server's settings (what `metal3 bootserver` takes on its command line)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_IPXE_DIR = Path("/usr/lib/ipxe")  # Debian's `ipxe` package
UEFI_BINARIES = ("snponly.efi", "ipxe.efi")


class UnknownHosts(enum.Enum):
    """What a MAC nobody allowed gets."""

    IGNORE = "ignore"  # no DHCP answer at all
    ADDRESS = "address"  # an address, but no boot file
    DISCOVER = "discover"  # an address and the agent (discovery: the operator's --discovery)


@dataclass(frozen=True)
class BootServerSettings:
    interface: str
    listen: str  # the boot server's IPv4 address on `interface`
    dhcp_range: tuple[str, str]
    state_dir: Path
    ramdisk_dir: Path  # vmlinuz and initramfs.img, as `metal3 ramdisk build` writes them
    agent_api: str
    agent_ca: bytes | None = None  # PEM
    http_port: int = 8080
    lease_time: str = "1h"
    console: str = "ttyS0"
    kernel_args: str = ""
    unknown_hosts: UnknownHosts = UnknownHosts.IGNORE
    uefi_binary: str = UEFI_BINARIES[0]
    ipxe_dir: Path = DEFAULT_IPXE_DIR
    dnsmasq_user: str = "root"
    log_dhcp: bool = False  # every option of every DHCP exchange in dnsmasq.log
    router_advertisements: bool = True  # see metal3.bootserver.ra
    poll_interval: float = 0.25  # seconds between looks at the hosts folder

    def check(self) -> None:
        """ValueError naming what does not fit."""
        if not self.interface or self.interface == "lo":
            raise ValueError("--interface must name the provisioning interface (not lo)")
        try:
            listen = ipaddress.IPv4Address(self.listen)
        except ValueError:
            raise ValueError(f"--listen {self.listen!r} is not an IPv4 address") from None
        if listen.is_loopback or listen.is_unspecified:
            raise ValueError(
                "--listen must be the provisioning address, not a wildcard or loopback"
            )
        try:
            first, last = (ipaddress.IPv4Address(a) for a in self.dhcp_range)
        except ValueError:
            raise ValueError(f"--dhcp-range {','.join(self.dhcp_range)!r}: not IPv4") from None
        if first > last:
            raise ValueError("--dhcp-range: the first address comes after the last")
        if self.uefi_binary not in UEFI_BINARIES:
            raise ValueError(f"--uefi-binary must be one of {', '.join(UEFI_BINARIES)}")
        if not 0 < self.http_port < 65536:
            raise ValueError("--http-port must be a TCP port")
        if not self.agent_api.startswith(("https://", "http://")):
            raise ValueError("--agent-api must be the agent API's URL (https://HOST:PORT)")
        for name in ("vmlinuz", "initramfs.img"):
            if not (self.ramdisk_dir / name).is_file():
                raise ValueError(f"--ramdisk {self.ramdisk_dir}: no {name} (metal3 ramdisk build)")
