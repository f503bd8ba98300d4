"""`metal3 ramdisk build --output DIR`: the agent ramdisk (kernel, initramfs, ISO).

Imports nothing beyond the standard library at module level; the builder is imported when the
command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The agent ramdisk: a kernel and initramfs (and a BIOS-bootable ISO for virtual media) "
        "that boot a machine into `metal3 agent run`, built from Debian packages and this "
        "project's wheel. Needs root."
    )
    sub = parser.add_subparsers(dest="ramdisk_command", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build",
        help="build (or take from the cache) DIR/vmlinuz, DIR/initramfs.img, DIR/agent.iso",
        description="Build the agent ramdisk into DIR: vmlinuz (Debian's kernel), "
        "initramfs.img (a Debian root from debootstrap --variant=minbase with python3, the "
        "agent's tools and the kernel's storage and network drivers, plus this project's wheel "
        "and the agent's dependencies), agent.iso (both behind ISOLINUX) and ramdisk.json "
        "(digests, sizes, versions). Each part is cached under the digest of its inputs, so "
        "building again with nothing changed only copies files. At boot the init brings the "
        "network up (DHCP, or metal3.ip=ADDRESS/PREFIX with metal3.gateway=, "
        "metal3.interface=, metal3.dns=) and runs `metal3 agent run`, which reads "
        "metal3.agent_api=URL and metal3.agent_ca=BASE64-PEM from the kernel command line.",
    )
    build.add_argument("--output", type=Path, required=True, help="the folder to write")
    build.add_argument(
        "--cache-dir",
        type=Path,
        help="where built parts are kept (default: $XDG_CACHE_HOME/metal3 or ~/.cache/metal3)",
    )
    source = build.add_mutually_exclusive_group()
    source.add_argument(
        "--source", type=Path, help="the checkout to build the wheel from (default: this one)"
    )
    source.add_argument("--wheel", type=Path, help="use this metal3 wheel instead of building one")
    build.add_argument("--mirror", help="the Debian mirror (default: http://deb.debian.org/debian)")
    build.add_argument("--no-iso", action="store_true", help="skip the ISO")
    build.add_argument(
        "--iso-kernel-args",
        help="the kernel command line the ISO boots with, e.g. the agent API and CA "
        "(default: 'console=tty0 console=ttyS0,115200n8')",
    )
    build.add_argument("--json", action="store_true", help="print ramdisk.json instead")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    import logging

    from metal3.ramdisk import build, debian
    from metal3.ramdisk.cache import default_cache_dir
    from metal3.ramdisk.tools import RamdiskError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    options = build.BuildOptions(
        output=args.output,
        cache_dir=args.cache_dir or default_cache_dir(),
        source=args.source,
        wheel=args.wheel,
        mirror=args.mirror or debian.MIRROR,
        iso=not args.no_iso,
        iso_kernel_args=args.iso_kernel_args or build.DEFAULT_ISO_ARGS,
    )
    try:
        result = build.build(options)
    except RamdiskError as exc:
        print(f"metal3 ramdisk: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result.manifest, indent=2, sort_keys=True) + "\n")
        return 0
    for path in (result.kernel, result.initramfs, result.iso):
        if path is not None:
            print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
    layers = ", ".join(f"{k} {'cached' if v else 'built'}" for k, v in result.cached.items())
    print(f"kernel {result.manifest['kernel']['version']}; {layers}; "
          f"{sum(result.seconds.values()):.1f} s")  # fmt: skip
    return 0
