"""dnsmasq as the boot server's DHCP and TFTP server: its configuration, hosts file and process.

Bound to the provisioning interface only (`bind-interfaces`, `interface=`,
`except-interface=lo`), DNS off (`port=0`), IPv4 DHCP from a range on that network, TFTP from a
folder holding only the iPXE binaries. The MACs allowed to boot are bare `dhcp-host` lines
in a hosts file, which gives their requests dnsmasq's own tag `known`; dnsmasq re-reads that
file on SIGHUP, so allowing or forgetting a host never restarts it (leases and TFTP transfers
in flight carry on). No `set:` tag in that file: dnsmasq 2.86-2.90 can crash re-reading
`set:` tags of a host that holds a lease (seen here with Debian's 2.90).

Which boot file a client gets (the three `dhcp-boot` lines): iPXE, known by DHCP option 175 or
its user class `iPXE`, gets the HTTP URL of the chain script; a UEFI PXE client (vendor class
`PXEClient`, client architecture 7 or 9) the UEFI iPXE binary over TFTP; any other PXE client
`undionly.kpxe` (BIOS), which chain-loads iPXE on the firmware's PXE stack. A client that is
not PXE (the agent's own DHCP in the ramdisk) gets an address and no boot file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from metal3.bootserver.registry import HostEntry
from metal3.bootserver.settings import BootServerSettings, UnknownHosts

ALLOWED_TAG = "known"  # dnsmasq sets it for a MAC with a dhcp-host line
BIOS_BINARY = "undionly.kpxe"


def config_text(settings: BootServerSettings, *, state: Path, chain_url: str) -> str:
    """dnsmasq's configuration file (every line ours: no system file is read)."""
    first, last = settings.dhcp_range
    allowed = f"tag:{ALLOWED_TAG},"
    boots_unknown = settings.unknown_hosts is UnknownHosts.DISCOVER
    only = "" if boots_unknown else allowed
    lines = [
        "# written by `metal3 bootserver`; every start writes it again",
        "port=0",
        f"interface={settings.interface}",
        "except-interface=lo",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "keep-in-foreground",
        f"log-facility={state / 'dnsmasq.log'}",  # with timestamps, unlike stderr
        "pid-file=",
        f"user={settings.dnsmasq_user}",
        f"dhcp-range={first},{last},{settings.lease_time}",
        f"dhcp-leasefile={state / 'dnsmasq.leases'}",
        f"dhcp-hostsfile={state / 'dnsmasq.hosts'}",
        # no router and no name server: the provisioning network is one link
        "dhcp-option=option:router",
        "dhcp-option=option:dns-server",
        "enable-tftp",
        f"tftp-root={state / 'tftp'}",
        "dhcp-vendorclass=set:pxe,PXEClient",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:efi,option:client-arch,7",
        "dhcp-match=set:efi,option:client-arch,9",
        f"dhcp-boot={only}tag:ipxe,{chain_url}",
        f"dhcp-boot={only}tag:pxe,tag:!ipxe,tag:efi,{settings.uefi_binary},,{settings.listen}",
        f"dhcp-boot={only}tag:pxe,tag:!ipxe,tag:!efi,{BIOS_BINARY},,{settings.listen}",
    ]
    if settings.unknown_hosts is UnknownHosts.IGNORE:
        lines.append(f"dhcp-ignore=tag:!{ALLOWED_TAG}")
    if settings.log_dhcp:
        lines.append("log-dhcp")
    return "\n".join(lines) + "\n"


def hosts_text(entries: Iterable[HostEntry]) -> str:
    """The `dhcp-hostsfile`: one line per allowed MAC."""
    return "".join(f"{entry.mac}\n" for entry in entries)


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Dnsmasq:
    """The dnsmasq process: started with its config file, reloaded with SIGHUP."""

    def __init__(self, config: Path, log: Path, *, binary: str = "dnsmasq") -> None:
        self.config = config
        self.log = log
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self._log_start = out.tell()
            try:
                self.process = subprocess.Popen(
                    [self.binary, f"--conf-file={self.config}"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            except OSError as exc:
                raise RuntimeError(
                    f"{self.binary}: {exc.strerror} (Debian: dnsmasq-base)"
                ) from None

    def wait_started(self, timeout: float = 30.0) -> None:
        """Until dnsmasq says it started (its signal handlers are set by then: a SIGHUP
        earlier would end it); RuntimeError with its words when it exits or never says so."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log.open("rb") as handle:
                handle.seek(self._log_start)
                said = handle.read().decode(errors="replace")
            if "started, version" in said:
                return
            status = self.exited()
            if status is not None or time.monotonic() > deadline:
                how = f"exited with status {status}" if status is not None else "did not start"
                raise RuntimeError(f"dnsmasq {how}: {said.strip()[-2000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> int | None:
        """Its exit status once it has ended, else None."""
        return None if self.process is None else self.process.poll()

    def reload(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
