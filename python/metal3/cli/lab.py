"""`metal3 lab`: emulated hosts for the operator to manage, on this machine.

    metal3 lab up --data-dir DIR [--hosts N] [--unregistered M] ...
    metal3 lab status --data-dir DIR [--json]
    metal3 lab down --data-dir DIR
    metal3 lab os-image --output FILE [--cache-dir DIR]

Needs root (network namespaces, loop devices). Imports nothing heavy at module level: the lab
is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metal3.lab.config import LabConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Emulated bare-metal hosts on this machine: a BMC per host on 127.0.0.1 (Redfish via "
        "sushy-tools' emulator, or IPMI), disks on loop devices, NICs in network namespaces "
        "on a bridge in a lab namespace, an image server, and manifests to apply. Powering a "
        "host on with network or virtual-media boot starts `metal3 agent run` for it; booting "
        "it from disk records what its config drive holds. With --vms, the hosts are QEMU "
        "(TCG) virtual machines under the lab's own libvirtd instead. Needs root."
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = sub.add_parser(
        "up",
        help="start a lab and return once it is ready",
        description="Start the lab's supervisor and wait until the lab is ready (DIR/lab.json "
        "written), then print its summary. The supervisor keeps running in the background "
        "until `metal3 lab down`. Default host mix: one IPMI host when N >= 3, one "
        "redfish-virtualmedia host when N >= 2, the others Redfish; profiles small, medium, "
        "storage in turn.",
    )
    _data_dir(up)
    up.add_argument("--hosts", type=int, help="hosts with manifests (default 4; none with --vms)")
    up.add_argument(
        "--vms",
        type=int,
        default=0,
        metavar="N",
        help="a lab of N QEMU (TCG) virtual machines under the lab's own libvirtd instead, "
        "with sushy-tools' libvirt driver (Redfish, virtual media) and virtualbmc (IPMI) as "
        "their BMCs: the first half (rounded up) redfish-virtualmedia, the rest IPMI",
    )
    up.add_argument(
        "--ramdisk",
        type=Path,
        metavar="DIR",
        help="with --vms: run the boot server (DHCP, TFTP, iPXE, HTTP) on the lab bridge for "
        "every VM, serving this agent ramdisk (`metal3 ramdisk build --output DIR`)",
    )
    up.add_argument(
        "--unregistered",
        type=int,
        default=0,
        metavar="M",
        help="extra Redfish hosts with no manifest, powered on with network boot at start "
        "(their agents look themselves up; for discovery)",
    )
    up.add_argument(
        "--virtual-media-hosts", type=int, help="how many hosts use redfish-virtualmedia"
    )
    up.add_argument("--ipmi-hosts", type=int, help="how many hosts use IPMI")
    up.add_argument("--profile", help="one profile for every host: small, medium or storage")
    up.add_argument(
        "--power-delay",
        type=int,
        default=1,
        metavar="SECONDS",
        help="the Redfish emulator applies a power change this long after the request "
        "(up to a second sooner; sushy-tools alone waits a random 1-11 s; default 1)",
    )
    up.add_argument(
        "--power-off-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a powered-off host's agent goes on running this long after its BMC reports the "
        "host off, as with a BMC that answers before the power is cut (default 0)",
    )
    up.add_argument("--namespace", default="default", help="Kubernetes namespace of the manifests")
    up.add_argument(
        "--foreground",
        action="store_true",
        help="run the supervisor in this process (logs to stderr) until interrupted",
    )
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    up.add_argument("-v", "--verbose", action="store_true", help="debug logs from the supervisor")
    up.set_defaults(func=run_up)

    down = sub.add_parser(
        "down",
        help="stop the lab and remove its namespaces, loop devices and processes",
        description="Stop the supervisor (SIGTERM; SIGKILL after --timeout) and remove every "
        "namespace, veth, loop device and process the lab made, from lab.json and the "
        "journal, so it also works after the supervisor was killed. Files in DIR stay (disks, "
        "logs). Nothing to remove is not an error.",
    )
    _data_dir(down)
    down.add_argument("--timeout", type=float, default=60.0)
    down.set_defaults(func=run_down)

    status = sub.add_parser(
        "status",
        help="what each host is doing: power, boot, agent, and what its OS boot found",
        description="Each host's power state, what it booted (agent, OS, nothing and why), "
        "its agent's pid, and from its last disk boot the host name and user-data sha256 its "
        "config drive held.",
    )
    _data_dir(status)
    status.add_argument("--json", action="store_true", help="the whole status as JSON")
    status.set_defaults(func=run_status)

    os_image = sub.add_parser(
        "os-image",
        help="write the test OS image (a qcow2 with cloud-init reading the config drive)",
        description="Write a small bootable qcow2 built from Debian packages: a kernel, extlinux "
        "(BIOS, MBR), systemd, cloud-init with the config drive as its datasource, and the "
        "serial console, where a `metal3-os-image:` line reports what cloud-init did "
        "(status, datasource, hostname, user-data sha256). Cached by its inputs' digest under "
        "--cache-dir: the first build takes about two minutes (needs root and deb.debian.org), the "
        "next is a copy.",
    )
    os_image.add_argument("--output", type=Path, required=True, help="the qcow2 file to write")
    os_image.add_argument(
        "--cache-dir",
        type=Path,
        help="where built images are kept (default: $XDG_CACHE_HOME/metal3 or ~/.cache/metal3)",
    )
    os_image.add_argument("--json", action="store_true", help="print what was written as JSON")
    os_image.set_defaults(func=run_os_image)


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, required=True, help="the lab's folder")


def _fail(message: str) -> int:
    print(f"metal3 lab: error: {message}", file=sys.stderr)
    return 1


def run_up(args: argparse.Namespace) -> int:
    from metal3.lab.config import LabConfig, LabConfigError
    from metal3.lab.control import LabError, up
    from metal3.lab.status import up_summary

    config = LabConfig(
        hosts=args.hosts if args.hosts is not None else (0 if args.vms else 4),
        vms=args.vms,
        ramdisk=str(args.ramdisk.resolve()) if args.ramdisk else None,
        unregistered=args.unregistered,
        virtual_media_hosts=args.virtual_media_hosts,
        ipmi_hosts=args.ipmi_hosts,
        profile=args.profile,
        power_delay=args.power_delay,
        power_off_lag=args.power_off_lag,
        namespace=args.namespace,
    )
    try:
        config.check()
    except LabConfigError as exc:
        print(f"metal3 lab up: error: {exc}", file=sys.stderr)
        return 2
    if args.foreground:
        return _foreground(args.data_dir, config, args.verbose)
    try:
        result = up(args.data_dir, config, timeout=args.timeout, verbose=args.verbose)
    except LabError as exc:
        return _fail(str(exc))
    if result.cleaned_before:
        print("(removed what an earlier lab in this folder had left)")
    print(up_summary(result.info, str(args.data_dir.resolve()), result.seconds))
    return 0


def _foreground(data_dir: Path, config: LabConfig, verbose: bool) -> int:
    """Become the supervisor (exec), attached to this terminal, after `up`'s own checks."""
    import os

    from metal3.lab.control import LabError, prepare

    try:
        data_dir = prepare(data_dir, config)
    except LabError as exc:
        return _fail(str(exc))
    argv = [sys.executable, "-m", "metal3.lab.supervisor", "--data-dir", str(data_dir)]
    os.execv(sys.executable, argv + (["--verbose"] if verbose else []))  # does not return
    return 1


def run_down(args: argparse.Namespace) -> int:
    from metal3.lab.control import LabError, down

    try:
        result = down(args.data_dir, timeout=args.timeout)
    except LabError as exc:
        return _fail(str(exc))
    if result.stopped_supervisor is not None:
        how = "killed" if result.killed_supervisor else "stopped"
        print(f"{how} the supervisor (pid {result.stopped_supervisor})")
    if result.removed:
        print("removed: " + ", ".join(result.removed))
    print(f"lab down in {result.seconds:.1f} s: nothing of it is left in {args.data_dir}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from metal3.lab.control import status
    from metal3.lab.state import LabStateError
    from metal3.lab.status import status_text

    try:
        doc = status(args.data_dir)
    except LabStateError as exc:
        return _fail(str(exc))
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(status_text(doc))
    return 0


def run_os_image(args: argparse.Namespace) -> int:
    import logging

    from metal3.lab.osimage import OsImageError, build_os_image

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        image = build_os_image(args.output, cache_dir=args.cache_dir)
    except OsImageError as exc:
        return _fail(str(exc))
    if args.json:
        sys.stdout.write(json.dumps(image.to_json(), indent=2) + "\n")
    else:
        how = "from the cache" if image.from_cache else "built"
        print(
            f"{image.path}: {image.file_size / 2**20:.1f} MiB qcow2, virtual "
            f"{image.virtual_size / 2**20:.0f} MiB, sha256 {image.sha256} ({how} in "
            f"{image.seconds:.1f} s)"
        )
    return 0
