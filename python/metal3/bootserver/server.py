"""The boot server process: dnsmasq (DHCP, TFTP) and the HTTP server, kept in step with the
registry of allowed MACs.

Everything it writes lives in the state folder: `hosts/` (the registry, written by the
provisioner), `tftp/` (copies of the iPXE binaries, the only files TFTP serves),
`dnsmasq.conf`, `dnsmasq.hosts`, `dnsmasq.leases`, `dnsmasq.log` and `access.log`. With
`router_advertisements`, router solicitations on the interface are answered (`ra.py`). The
registry is polled (a directory scan every `poll_interval`); a change rewrites the hosts file
and sends dnsmasq SIGHUP.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import shutil
import socket
import subprocess
import threading

from metal3.bootserver.dnsmasq import BIOS_BINARY, Dnsmasq, config_text, hosts_text
from metal3.bootserver.dnsmasq import write_atomically as write_file
from metal3.bootserver.http import BootContent, BootHttpServer
from metal3.bootserver.ra import RouterAdvertiser
from metal3.bootserver.registry import BootServer
from metal3.bootserver.scripts import (
    CHAIN_PATH,
    chain_script,
    host_script,
    kernel_command_line,
)
from metal3.bootserver.settings import BootServerSettings, UnknownHosts

log = logging.getLogger(__name__)


class BootServerFailed(RuntimeError):
    """The boot server cannot start or stopped on its own."""


def interface_addresses(interface: str) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses (with their prefixes) on ``interface``, in this network namespace."""
    try:
        done = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", interface],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError as exc:
        raise BootServerFailed(f"`ip` (iproute2): {exc.strerror}") from None
    if done.returncode != 0:
        raise BootServerFailed(f"interface {interface}: {done.stderr.strip()}")
    return [
        ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
        for link in json.loads(done.stdout or "[]")
        for info in link.get("addr_info", [])
        if "local" in info and "prefixlen" in info
    ]


class BootService:
    """Start, keep in step and stop the boot server's parts."""

    def __init__(self, settings: BootServerSettings) -> None:
        settings.check()
        self.settings = settings
        self.state = settings.state_dir.resolve()
        self.registry = BootServer(self.state)
        self.base_url = f"http://{settings.listen}:{settings.http_port}"
        ca = settings.agent_ca
        self._ca_b64 = base64.b64encode(ca).decode() if ca else None
        self.dnsmasq = Dnsmasq(self.state / "dnsmasq.conf", self.state / "dnsmasq.log")
        self.http: BootHttpServer | None = None
        self.advertiser: RouterAdvertiser | None = None
        self._stamp: tuple[int, ...] | None = None

    # --- what is served ----------------------------------------------------------------

    def command_line(self, extra: str = "") -> str:
        settings = self.settings
        args = " ".join(a for a in (settings.kernel_args, extra) if a)
        return kernel_command_line(
            agent_api=settings.agent_api,
            agent_ca_b64=self._ca_b64,
            console=settings.console,
            extra=args,
        )

    def script_for(self, mac: str) -> str | None:
        entry = self.registry.allowed().get(mac)
        if entry is None and self.settings.unknown_hosts is not UnknownHosts.DISCOVER:
            return None
        extra = entry.kernel_args if entry is not None else ""
        return host_script(self.base_url, mac=mac, command_line=self.command_line(extra))

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        settings = self.settings
        here = [a for a in interface_addresses(settings.interface) if str(a.ip) == settings.listen]
        if not here:
            raise BootServerFailed(
                f"{settings.listen} is not an address of {settings.interface}: the boot "
                "server serves only on the provisioning interface's own address"
            )
        outside = [
            a for a in settings.dhcp_range if ipaddress.IPv4Address(a) not in here[0].network
        ]
        if outside:
            raise BootServerFailed(
                f"--dhcp-range: {', '.join(outside)} not in {here[0].network} "
                f"({settings.interface})"
            )
        self.state.mkdir(parents=True, exist_ok=True)
        self.registry.hosts_dir.mkdir(exist_ok=True)
        tftp = self.state / "tftp"
        tftp.mkdir(exist_ok=True)
        for name in (BIOS_BINARY, settings.uefi_binary):
            source = settings.ipxe_dir / name
            if not source.is_file():
                raise BootServerFailed(f"{source}: missing (Debian's `ipxe` package has it)")
            shutil.copyfile(source, tftp / name)
        write_file(
            self.dnsmasq.config,
            config_text(settings, state=self.state, chain_url=self.base_url + CHAIN_PATH),
        )
        self.sync(reload=False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.listen, settings.http_port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise BootServerFailed(
                f"HTTP on {settings.listen}:{settings.http_port}: {exc.strerror}"
            ) from None
        content = BootContent(
            chain=lambda: chain_script(self.base_url),
            host=self.script_for,
            ramdisk_dir=settings.ramdisk_dir,
        )
        self.http = BootHttpServer(sock, content, self.state / "access.log")
        self.http.start()
        if settings.router_advertisements:
            try:
                self.advertiser = RouterAdvertiser(settings.interface)
            except OSError as exc:
                self.stop()
                raise BootServerFailed(f"router advertisements: {exc.strerror}") from None
            self.advertiser.start()
        try:
            self.dnsmasq.start()
            self.dnsmasq.wait_started()
        except RuntimeError as exc:
            self.stop()
            raise BootServerFailed(str(exc)) from None
        log.info(
            "boot server on %s (%s): DHCP %s-%s, TFTP, HTTP %s; unknown hosts: %s",
            settings.interface,
            settings.listen,
            *settings.dhcp_range,
            self.base_url,
            settings.unknown_hosts.value,
        )

    def sync(self, *, reload: bool = True) -> bool:
        """Bring dnsmasq's hosts file in step with the registry; True when it changed."""
        stamp = self.registry.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        entries = self.registry.allowed()
        write_file(self.state / "dnsmasq.hosts", hosts_text(entries.values()))
        if reload:
            self.dnsmasq.reload()
        log.info("boot server: %d host(s) allowed", len(entries))
        return True

    def run(self, stop: threading.Event) -> None:
        """Keep in step until ``stop`` is set; BootServerFailed if dnsmasq ends on its own."""
        while not stop.wait(self.settings.poll_interval):
            status = self.dnsmasq.exited()
            if status is not None:
                raise BootServerFailed(
                    f"dnsmasq exited with status {status} (see {self.dnsmasq.log})"
                )
            self.sync()

    def stop(self) -> None:
        self.dnsmasq.stop()
        if self.advertiser is not None:
            self.advertiser.stop()
            self.advertiser = None
        if self.http is not None:
            self.http.stop()
            self.http = None
