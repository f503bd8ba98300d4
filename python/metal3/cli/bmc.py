"""`metal3 bmc`: drive one BMC by hand, with the same drivers the operator uses.

    metal3 bmc ADDRESS [--username U --password-file F | --credentials-secret FILE.yaml]
               [--insecure] [--ca-file F] COMMAND ...

`check` answers the usual "why does my host not register" question in one go: is the address
valid, does the BMC answer, does it accept the credentials, and what power state does it report.
Exit codes: 0 success, 1 the BMC failed or refused, 2 bad input (address, credentials, usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import anyio

from metal3.bmc import connect
from metal3.bmc.address import BMCAddress, Driver, parse_address
from metal3.bmc.credentials import Credentials, credentials_from_secret
from metal3.bmc.errors import (
    BMCAddressError,
    BMCAuthError,
    BMCCertificateError,
    BMCCredentialsError,
    BMCError,
    BMCTimeoutError,
    BMCUnreachableError,
)
from metal3.bmc.interface import BMC, BootDevice

EXIT_OK, EXIT_BMC, EXIT_INPUT = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Talk to one BMC with the operator's Redfish/IPMI drivers."
    parser.add_argument("address", help="BMC address as in spec.bmc.address")
    creds = parser.add_argument_group("credentials (one of)")
    creds.add_argument("--username", help="user name (with --password-file)")
    creds.add_argument(
        "--password-file",
        type=Path,
        help="file holding the password (one trailing newline dropped)",
    )
    creds.add_argument(
        "--credentials-secret",
        type=Path,
        metavar="FILE.yaml",
        help="a Secret manifest with username and password keys (data or stringData)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the BMC's TLS certificate (disableCertificateVerification)",
    )
    parser.add_argument("--ca-file", help="CA bundle to verify the BMC's TLS certificate")
    commands = parser.add_subparsers(dest="bmc_command", metavar="COMMAND", required=True)

    power = commands.add_parser("power", help="power status|on|off|reboot")
    power.add_argument("action", choices=("status", "on", "off", "reboot"))
    power.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the state")
    power.add_argument(
        "--soft-wait",
        type=float,
        default=60.0,
        help="off: seconds of graceful shutdown before forcing (0: force at once)",
    )

    boot = commands.add_parser("boot", help="set the boot device: pxe|cd|disk")
    boot.add_argument("device", choices=[d.value for d in BootDevice])
    boot.add_argument("--persistent", action="store_true", help="for every boot, not just the next")
    mode = boot.add_mutually_exclusive_group()
    mode.add_argument("--uefi", action="store_true", default=None, help="boot in UEFI mode")
    mode.add_argument("--legacy", action="store_true", help="boot in legacy BIOS mode")

    media = commands.add_parser("media", help="virtual media: insert URL | eject | status")
    media_commands = media.add_subparsers(dest="media_command", metavar="ACTION", required=True)
    insert = media_commands.add_parser("insert", help="insert a CD image by URL")
    insert.add_argument("url")
    media_commands.add_parser("eject", help="eject the virtual CD")
    media_commands.add_parser("status", help="show what is inserted")

    commands.add_parser("inventory", help="system inventory as JSON")
    commands.add_parser("bios", help="BIOS attributes as JSON")
    commands.add_parser("check", help="check address, reachability and credentials in one go")
    parser.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def load_credentials(args: argparse.Namespace) -> Credentials:
    """From --credentials-secret, or --username with --password-file."""
    if args.credentials_secret is not None:
        if args.username or args.password_file:
            raise BMCCredentialsError(
                "command line", "give either --credentials-secret or --username/--password-file"
            )
        import yaml

        path: Path = args.credentials_secret
        try:
            secret = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise BMCCredentialsError(str(path), f"cannot read: {exc.strerror}") from None
        except yaml.YAMLError:
            raise BMCCredentialsError(str(path), "not valid YAML") from None
        if not isinstance(secret, dict):
            raise BMCCredentialsError(str(path), "not a Secret manifest (expected a mapping)")
        return credentials_from_secret(secret)
    if not args.username or args.password_file is None:
        raise BMCCredentialsError(
            "command line", "give --username and --password-file, or --credentials-secret"
        )
    password_path: Path = args.password_file
    try:
        password = password_path.read_text()
    except OSError as exc:
        raise BMCCredentialsError(str(password_path), f"cannot read: {exc.strerror}") from None
    password = password.removesuffix("\n").removesuffix("\r")
    if not password.strip():
        raise BMCCredentialsError(str(password_path), "the password file is empty")
    return Credentials(args.username, password)


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


async def _execute(bmc: BMC, args: argparse.Namespace) -> int:
    command = args.bmc_command
    if command == "power":
        if args.action == "status":
            print((await bmc.power_state()).value)
        elif args.action == "on":
            await bmc.power_on(wait=args.wait)
            print("on")
        elif args.action == "off":
            await bmc.power_off(soft_wait=args.soft_wait or None, wait=args.wait)
            print("off")
        else:
            await bmc.reboot(wait=args.wait)
            print("on (rebooted)")
    elif command == "boot":
        uefi = True if args.uefi else (False if args.legacy else None)
        await bmc.set_boot_device(BootDevice(args.device), persistent=args.persistent, uefi=uefi)
        settings = await bmc.boot_settings()
        print(_json(dataclasses.asdict(settings)))
    elif command == "media":
        if args.media_command == "insert":
            await bmc.insert_media(args.url)
        elif args.media_command == "eject":
            await bmc.eject_media()
        print(_json(dataclasses.asdict(await bmc.media_state())))
    elif command == "inventory":
        print(_json(dataclasses.asdict(await bmc.inventory())))
    elif command == "bios":
        print(_json(await bmc.bios_attributes()))
    return EXIT_OK


def _describe(address: BMCAddress) -> str:
    info = address.info
    where = f"{address.host}:{address.ipmi_port}" if address.driver is Driver.IPMI else None
    target = where or f"{address.endpoint} system {address.system_id or '(the only one)'}"
    return (
        f"{info.driver} driver, {target}; boots the agent via {info.boot_method}; "
        f"bootMACAddress {'required' if info.needs_mac else 'not required'}"
    )


async def _check(bmc: BMC, credentials: Credentials) -> int:
    print(f"address:     ok ({_describe(bmc.address)})")
    for warning in credentials.warnings():
        print(f"warning:     {warning}")
    try:
        await bmc.validate()
    except BMCAuthError as exc:
        print("reachable:   yes (the BMC answered)")
        print(f"credentials: REJECTED for user {credentials.username!r}: {exc.message}")
        return EXIT_BMC
    except BMCCertificateError as exc:
        print(f"reachable:   yes, but TLS verification failed: {exc.message}")
        print("hint:        use --ca-file, or --insecure (disableCertificateVerification: true)")
        return EXIT_BMC
    except BMCTimeoutError as exc:
        print(f"reachable:   NO, no answer in time: {exc.message}")
        print("hint:        check the host, port and any firewall between here and the BMC")
        return EXIT_BMC
    except BMCUnreachableError as exc:
        print(f"reachable:   NO: {exc.message}")
        print("hint:        check the host, port and scheme (http vs https, IPMI port 623/udp)")
        return EXIT_BMC
    print("reachable:   yes")
    print(f"credentials: accepted for user {credentials.username!r}")
    print(f"power:       {(await bmc.power_state()).value}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        address = parse_address(args.address)
        credentials = load_credentials(args)
    except (BMCAddressError, BMCCredentialsError) as exc:
        return _fail(str(exc), EXIT_INPUT)
    bmc = connect(
        address,
        credentials,
        disable_certificate_verification=args.insecure,
        ca_file=args.ca_file,
    )

    async def main() -> int:
        async with bmc:
            if args.bmc_command == "check":
                return await _check(bmc, credentials)
            return await _execute(bmc, args)

    try:
        return anyio.run(main)
    except BMCError as exc:
        return _fail(f"{exc.kind}: {exc}", EXIT_BMC)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
