"""`metal3 bootserver`: network boot of the agent ramdisk on the provisioning network.

Imports nothing beyond the standard library at module level; the server is imported when the
command runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The boot server for network boot of the agent: dnsmasq for DHCP (IPv4, a range on "
        "the provisioning network) and TFTP (iPXE binaries: undionly.kpxe for BIOS PXE, "
        "snponly.efi or ipxe.efi for UEFI), and HTTP (each host's iPXE script, the ramdisk's "
        "kernel and initramfs), all bound to the provisioning interface and address only. "
        "Only MACs the provisioner allowed (files in STATE_DIR/hosts, written by the "
        "operator's --boot-server-dir) get an address and a boot. Needs root (or "
        "CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE) and no other DHCP server on "
        "that network."
    )
    parser.add_argument(
        "--interface", required=True, help="the provisioning interface (dnsmasq binds to it only)"
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="ADDRESS",
        help="this server's IPv4 address on --interface: HTTP and TFTP are served there only",
    )
    parser.add_argument(
        "--dhcp-range",
        required=True,
        metavar="FIRST,LAST",
        help="the addresses DHCP hands out, on --interface's subnet",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="the registry of allowed MACs (STATE_DIR/hosts, shared with the operator's "
        "--boot-server-dir) and what the server writes (dnsmasq config, leases, logs)",
    )
    parser.add_argument(
        "--ramdisk",
        type=Path,
        required=True,
        metavar="DIR",
        help="DIR/vmlinuz and DIR/initramfs.img, as `metal3 ramdisk build --output DIR` writes",
    )
    parser.add_argument(
        "--agent-api",
        required=True,
        metavar="URL",
        help="the operator's agent API (https://HOST:PORT) for metal3.agent_api=",
    )
    parser.add_argument(
        "--agent-ca-file",
        type=Path,
        metavar="PEM",
        help="the CA of the agent API's certificate, passed inline as metal3.agent_ca=",
    )
    parser.add_argument("--http-port", type=int, default=8080, help="default: 8080")
    parser.add_argument("--lease-time", default="1h", help="DHCP lease time (default: 1h)")
    parser.add_argument(
        "--console", default="ttyS0", help="the kernel's console= (default: ttyS0; '' for none)"
    )
    parser.add_argument(
        "--kernel-args", default="", help="more kernel arguments for every host's boot"
    )
    parser.add_argument(
        "--unknown-hosts",
        choices=("ignore", "address", "discover"),
        default="ignore",
        help="what a MAC nobody allowed gets: ignore (default): no DHCP answer; address: an "
        "address and no boot file; discover: the agent, as allowed hosts (for the operator's "
        "--discovery)",
    )
    parser.add_argument(
        "--uefi-binary",
        choices=("snponly.efi", "ipxe.efi"),
        default="snponly.efi",
        help="the iPXE binary for UEFI PXE clients (default: snponly.efi, on the firmware's "
        "network driver)",
    )
    parser.add_argument(
        "--ipxe-dir",
        type=Path,
        default=Path("/usr/lib/ipxe"),
        help="where the iPXE binaries are (default: /usr/lib/ipxe, Debian's ipxe package)",
    )
    parser.add_argument(
        "--no-router-advertisements",
        action="store_true",
        help="do not answer IPv6 router solicitations (by default each gets an advertisement "
        "that configures nothing, so iPXE does not wait ~13 s for one)",
    )
    parser.add_argument(
        "--log-dhcp",
        action="store_true",
        help="log every option of every DHCP exchange in STATE_DIR/dnsmasq.log (dnsmasq's "
        "log-dhcp; its lease lines are logged either way)",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metal3.bootserver.server import BootServerFailed, BootService
    from metal3.bootserver.settings import BootServerSettings, UnknownHosts

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    first, _, last = args.dhcp_range.partition(",")
    try:
        ca = args.agent_ca_file.read_bytes() if args.agent_ca_file else None
        settings = BootServerSettings(
            interface=args.interface,
            listen=args.listen,
            dhcp_range=(first.strip(), last.strip()),
            state_dir=args.state_dir,
            ramdisk_dir=args.ramdisk,
            agent_api=args.agent_api,
            agent_ca=ca,
            http_port=args.http_port,
            lease_time=args.lease_time,
            console=args.console,
            kernel_args=args.kernel_args,
            unknown_hosts=UnknownHosts(args.unknown_hosts),
            uefi_binary=args.uefi_binary,
            ipxe_dir=args.ipxe_dir,
            router_advertisements=not args.no_router_advertisements,
            log_dhcp=args.log_dhcp,
        )
        service = BootService(settings)
    except (OSError, ValueError) as exc:
        print(f"metal3 bootserver: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        service.start()
        service.run(stop)
    except BootServerFailed as exc:
        print(f"metal3 bootserver: error: {exc}", file=sys.stderr)
        return 1
    finally:
        service.stop()
    return 0
