"""`metal3 agent`: the program that runs on a host (in the ramdisk) and does its hardware work.

`run` is the agent proper: it dials out to the operator's agent API, looks itself up by its MAC
addresses and carries out what the operator asks (inspect, clean, deploy). The other actions do
one step by hand, on this machine, and print JSON: the same code the agent runs for each command.

Start-up is on the deploy path of every host: this module imports nothing at module level
beyond the standard library; each action imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    run = sub.add_parser(
        "run",
        help="the agent: look this host up at the operator's agent API and do what it asks "
        "(inspect, clean, deploy), reporting each result",
        description="Run the agent: look this host up at the operator's agent API by its MAC "
        "addresses (HTTPS, dialling out only), then run what the operator asks (inspect, clean, "
        "deploy) and report each result until it is acknowledged. What --api and --ca-file "
        "leave out is read from the kernel command line (metal3.agent_api=URL, "
        "metal3.agent_ca_file=PATH or metal3.agent_ca=BASE64-PEM).",
    )
    run.add_argument("--api", help="https://HOST:PORT of the agent API")
    run.add_argument(
        "--ca-file", help="CA certificate (PEM) that signed the agent API's certificate"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/run/metal3-agent"),
        help="where the token and the commands done are kept (default: %(default)s)",
    )
    run.add_argument(
        "--mac",
        action="append",
        dest="macs",
        help="look the host up by this MAC (repeatable; default: this machine's)",
    )
    run.add_argument(
        "--max-commands", type=int, help="exit after this many commands (default: no limit)"
    )
    run.add_argument(
        "--power-action",
        choices=["exit", "system"],
        default="exit",
        help="on power_off/reboot_to_disk: 'system' powers off or reboots this machine, "
        "'exit' only exits (default: %(default)s)",
    )
    run.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="read the inventory's procfs/sysfs under this directory (a recorded tree, as the "
        "lab's hosts have) instead of /",
    )
    run.add_argument(
        "--work-nice",
        type=int,
        choices=range(-20, 20),
        metavar="N",
        help="run the commands' work (cleaning, image writes) at nice N, the agent's calls to "
        "the operator keeping the process's priority (for a machine whose CPUs the agent "
        "shares, as the lab's hosts do; default: the process's)",
    )
    run.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    run.set_defaults(func=run_agent)

    inventory = sub.add_parser(
        "inventory",
        help="print this machine's hardware inventory (ironic-python-agent's format) as JSON",
        description="Collect the hardware inventory from procfs, sysfs and the standard tools "
        "(lsblk, udevadm, ip, ethtool, dmidecode, ipmitool where present) and print it as JSON, "
        "field for field as ironic-python-agent's GenericHardwareManager reports it. A missing "
        "source leaves its field out and logs why.",
    )
    inventory.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="read procfs/sysfs under this directory instead of / (a recorded tree; tool "
        "outputs are then read from ROOT/.tools/)",
    )
    inventory.set_defaults(func=run_inventory)

    root_device = sub.add_parser(
        "root-device",
        help="choose the disk to deploy to from BareMetalHost rootDeviceHints",
        description="Print the disk that the hints choose (an inventory disk entry, JSON), with "
        "Ironic's semantics; with no hints, the smallest disk of at least 4 GiB. Exits 1 naming "
        "the hints when no disk matches: never another disk instead.",
    )
    root_device.add_argument(
        "--hints",
        default="{}",
        help='rootDeviceHints as JSON, e.g. \'{"minSizeGigabytes": 100, "rotational": false}\'',
    )
    root_device.add_argument(
        "--inventory",
        type=Path,
        help="an inventory JSON file (from `metal3 agent inventory`) instead of this machine's",
    )
    root_device.set_defaults(func=run_root_device)

    clean = sub.add_parser(
        "clean",
        help="erase a disk's metadata (partition tables, filesystem, md and LVM signatures)",
        description="Metadata cleaning as Ironic does it: both GPT headers and the MBR, every "
        "filesystem, md RAID and LVM signature on the disk and its partitions. Refuses a disk "
        "that is mounted, used as swap, held by md/LVM or holds the running system.",
    )
    clean.add_argument("disk", help="the whole disk, e.g. /dev/sdb")
    clean.add_argument(
        "--mode",
        choices=["metadata", "disabled"],
        default="metadata",
        help="metadata (default) erases; disabled only checks the disk and touches nothing",
    )
    clean.set_defaults(func=run_clean)

    deploy = sub.add_parser(
        "deploy",
        help="write an image onto a disk in one verified pass, then a config drive",
        description="Stream the image onto the disk (one GET, verified against the checksum "
        "while written), then add a config-2 config drive partition (ISO 9660 with "
        "openstack/latest/meta_data.json, user_data and network_data.json) after the image's "
        "partitions, with the GPT backup header moved to the end of the disk. A failed write "
        "zeroes the start and end of the disk so it cannot boot a half-written image.",
    )
    deploy.add_argument("--image", required=True, help="http(s) URL or path of the image")
    deploy.add_argument(
        "--checksum", required=True, help="expected hex digest, or URL of a checksum file"
    )
    deploy.add_argument(
        "--checksum-type", choices=["auto", "md5", "sha256", "sha512"], default="auto"
    )
    deploy.add_argument(
        "--format", choices=["auto", "raw", "qcow2", "gzip", "xz", "zstd"], default="auto"
    )
    deploy.add_argument("--disk", required=True, help="the whole disk to write, e.g. /dev/sdb")
    deploy.add_argument("--user-data", type=Path, help="file written as user_data, byte for byte")
    deploy.add_argument("--network-data", type=Path, help="JSON file written as network_data.json")
    deploy.add_argument(
        "--meta-data",
        type=Path,
        help="JSON file merged over the defaults into meta_data.json (needs a uuid unless "
        "--host-uuid is given)",
    )
    deploy.add_argument("--host-uuid", help="the BareMetalHost's uid (meta_data uuid)")
    deploy.add_argument("--host-name", help="the BareMetalHost's name (meta_data name/hostname)")
    deploy.add_argument("--host-namespace", default="", help="the BareMetalHost's namespace")
    deploy.add_argument("--ca-file", help="PEM bundle of CAs to trust for https")
    deploy.add_argument("--insecure", action="store_true", help="do not verify https certificates")
    deploy.set_defaults(func=run_deploy)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _setup_logging(level: str = "INFO") -> None:
    """Log to stderr (stdout carries the JSON result)."""
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_inventory(args: argparse.Namespace) -> int:
    from metal3.agent.inventory import collect_inventory

    _setup_logging()
    _print_json(collect_inventory(args.root))
    return 0


def run_root_device(args: argparse.Namespace) -> int:
    from metal3.agent.errors import AgentError
    from metal3.agent.hints import select_root_device

    try:
        hints = json.loads(args.hints)
    except json.JSONDecodeError as exc:
        return _fail(f"--hints is not JSON: {exc}")
    if args.inventory is not None:
        try:
            inventory = json.loads(args.inventory.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return _fail(f"cannot read the inventory {args.inventory}: {exc}")
        resolve_links = False  # another machine's disks: this machine's links say nothing
    else:
        from metal3.agent.inventory import collect_inventory

        inventory = collect_inventory()
        resolve_links = True
    if not isinstance(inventory, dict):
        return _fail("the inventory is not a JSON object")
    try:
        disk = select_root_device(inventory.get("disks") or [], hints, resolve_links=resolve_links)
    except AgentError as exc:
        return _fail(str(exc))
    _print_json(disk)
    return 0


def run_clean(args: argparse.Namespace) -> int:
    from metal3.agent.clean import clean_disk
    from metal3.agent.errors import AgentError

    try:
        result = clean_disk(args.disk, args.mode)
    except AgentError as exc:
        return _fail(str(exc))
    _print_json(result.to_json())
    return 0


def _read_json_file(path: Path | None, what: str) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {what} from {path}: {exc}") from exc


def run_deploy(args: argparse.Namespace) -> int:
    from metal3.agent.configdrive import HostIdentity
    from metal3.agent.deploy import DeployRequest, deploy
    from metal3.agent.errors import AgentError

    _setup_logging()
    try:
        network_data = _read_json_file(args.network_data, "network data")
        meta_data = _read_json_file(args.meta_data, "meta data")
        user_data = args.user_data.read_bytes() if args.user_data is not None else None
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    host = None
    if args.host_uuid:
        name = args.host_name or args.host_uuid
        host = HostIdentity(uuid=args.host_uuid, namespace=args.host_namespace, name=name)
    request = DeployRequest(
        image_url=args.image,
        checksum=args.checksum,
        checksum_type=args.checksum_type,
        image_format=args.format,
        disk=args.disk,
        user_data=user_data,
        network_data=network_data,
        meta_data=meta_data,
        host=host,
        ca_file=args.ca_file,
        insecure=args.insecure,
    )
    try:
        result = deploy(request)
    except AgentError as exc:
        return _fail(str(exc))
    _print_json(result.to_json())
    return 0


def run_agent(args: argparse.Namespace) -> int:
    from metal3.agent.runner import POWER_ACTIONS, run_from_command_line

    assert args.power_action in POWER_ACTIONS
    _setup_logging(str(args.log_level))
    return run_from_command_line(
        api=args.api,
        ca_file=args.ca_file,
        state_dir=args.state_dir,
        macs=args.macs,
        max_commands=args.max_commands,
        power_action=args.power_action,
        inventory_root=args.root,
        work_nice=args.work_nice,
    )
