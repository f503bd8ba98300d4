"""`metal3 demo`: the whole host lifecycle, live.

By default the real thing (`metal3.cli.demo_lab`): an emulated lab of hosts with Redfish,
Redfish virtual-media and IPMI BMCs (`metal3 lab`), standalone mode with the direct
provisioner, a qcow2 image made on the spot and written by the metal3 agent to each host's
disk, every disk and config drive checked with reference tools, then deprovisioned and
deleted. Needs root (loop devices, network namespaces).

`--vms`: two virtual machines (QEMU TCG under libvirt, with sushy-tools and virtualbmc as
their BMCs) that boot the agent ramdisk from virtual media and the network, and boot the
written OS, whose cloud-init applies the config drive (`metal3.cli.demo_vms`).

`--fixture`: the simulated lifecycle of the example manifests on the fixture provisioner
(`metal3.cli.demo_fixture`): quick, needs nothing, writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import metal3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run hosts through their whole lifecycle and show it live. By default on an emulated "
        "lab (metal3 lab: Redfish, Redfish virtual media and IPMI hosts) with the real "
        "provisioner, which writes a qcow2 image made here to each host's disk; the disks and "
        "config drives are checked with qemu-img, sgdisk, bsdtar, blkid and wipefs, and the "
        "lab is taken down at the end. Needs root. With --fixture: the example manifests on "
        "the fixture provisioner (simulated hardware, nothing written)."
    )
    parser.add_argument(
        "--fixture",
        action="store_true",
        help="the simulated lifecycle of the example manifests (fixture provisioner): quick, "
        "no root needed, nothing is written",
    )
    parser.add_argument(
        "--vms",
        action="store_true",
        help="two virtual machines instead (Redfish virtual media and IPMI network boot): "
        "the agent ramdisk and a test OS with cloud-init are built (cached after the first "
        "time), the OS is written and boots from disk; their serial consoles are shown live. "
        "Needs root and the packages ./dev installs; takes minutes (TCG emulation)",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=None,
        help="lab hosts (default 4: two Redfish, one Redfish virtual media, one IPMI; at "
        "least 3); not with --fixture",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="with --fixture: folder of example manifests (default: the examples/ folder of "
        "this source tree)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds per phase (per host phase for the lab demo; default 120; at least 600 "
        "with --vms)",
    )
    parser.add_argument("--plain", action="store_true", help="no live table, one line per change")
    parser.set_defaults(func=run)


def default_examples() -> Path | None:
    """The source tree's examples/ (an editable install), or ./examples."""
    for candidate in (Path(metal3.__file__).resolve().parents[2] / "examples", Path("examples")):
        if candidate.is_dir():
            return candidate
    return None


def run(args: argparse.Namespace) -> int:
    live = sys.stdout.isatty() and not args.plain
    if args.fixture:
        if args.hosts is not None:
            print("metal3 demo: --hosts is for the lab demo, not --fixture", file=sys.stderr)
            return 2
        if args.vms:
            print("metal3 demo: --vms and --fixture are two different demos", file=sys.stderr)
            return 2
        return run_fixture(args, live)
    if args.examples is not None:
        print("metal3 demo: --examples goes with --fixture", file=sys.stderr)
        return 2
    if args.vms:
        if args.hosts is not None:
            print("metal3 demo: --vms makes two virtual machines; no --hosts", file=sys.stderr)
            return 2
        from metal3.cli.demo_vms import VmDemoOptions, run_vm_demo

        return run_vm_demo(VmDemoOptions(timeout=max(args.timeout, 600.0), live=live))
    from metal3.cli.demo_lab import LabDemoOptions, run_lab_demo

    hosts = 4 if args.hosts is None else args.hosts
    return run_lab_demo(LabDemoOptions(hosts=hosts, timeout=args.timeout, live=live))


def run_fixture(args: argparse.Namespace, live: bool) -> int:
    folder: Path | None = args.examples or default_examples()
    if folder is None or not folder.is_dir():
        print("demo: no examples folder found; pass --examples DIR", file=sys.stderr)
        return 2
    from metal3.cli.demo_fixture import run_demo

    return run_demo(folder, args.timeout, live=live)
