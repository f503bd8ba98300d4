"""The `metal3` command: one entry point, one module per subcommand.

Start-up is on the deploy path (the agent runs `metal3` on every host), so the command line is
built in two cheap steps:

- `SUBCOMMANDS` names each subcommand, its one-line help and its module; that is all
  `metal3 --help` and `metal3 --version` need, and they import no subcommand module.
- Only the subcommand on the command line is declared: its module ``metal3.cli.<name>`` is
  imported and ``configure(parser)`` adds its description and arguments and sets ``func``
  (returning the process exit code) as the parser default.

A subcommand's module imports nothing heavy at module level (no Kubernetes client, HTTP
framework, BMC library or controller): the work is imported inside ``func``, when the command
runs. tests/test_cli.py checks both rules in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple


class Subcommand(NamedTuple):
    name: str
    help: str

    @property
    def module(self) -> str:
        return f"metal3.cli.{self.name}"


# Order here is the order `metal3 --help` lists them.
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("demo", "run the demo: emulated hosts' real lifecycle (--fixture: simulated)"),
    Subcommand("standalone", "run the embedded API server and the operator together"),
    Subcommand("operator", "run the operator against a cluster"),
    Subcommand("apiserver", "run the embedded Kubernetes-compatible API server"),
    Subcommand(
        "bmc", "talk to a BMC directly (power, boot device, virtual media, inventory, check)"
    ),
    Subcommand("image", "inspect or write disk images"),
    Subcommand("agent", "run on a host: inventory, root device, clean, deploy, and the agent"),
    Subcommand("lab", "emulated hosts (BMCs, disks, networks) for the operator to manage"),
    Subcommand("ramdisk", "build the agent ramdisk: kernel, initramfs and ISO that run the agent"),
    Subcommand("bootserver", "network boot of the agent: DHCP, TFTP, iPXE and HTTP per host MAC"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in SUBCOMMANDS)


class _VersionAction(argparse.Action):
    """`--version`: reads the installed version only when asked (metadata is slow to load)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings,
            dest,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        import metal3

        sys.stdout.write(f"metal3 {metal3.__version__}\n")
        parser.exit()


def build_parser(declare: Collection[str] = ()) -> argparse.ArgumentParser:
    """The `metal3` parser, with the arguments of the subcommands named in `declare`.

    The others are listed (name and help) but left empty, and their modules are not imported.
    """
    unknown = set(declare) - set(NAMES)
    if unknown:
        raise ValueError(f"no such subcommand: {', '.join(sorted(unknown))}")
    parser = argparse.ArgumentParser(
        prog="metal3",
        description="Kubernetes-native bare-metal host manager (metal3.io/v1alpha1).",
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for sub in SUBCOMMANDS:
        sub_parser = subparsers.add_parser(sub.name, help=sub.help)
        if sub.name in declare:
            importlib.import_module(sub.module).configure(sub_parser)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names: its first argument that is not an option.

    This holds because the top-level parser takes only flags (--help, --version), never an
    option with a value; an unknown name is left to the parser to reject.
    """
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in NAMES else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = command_in(arguments)
    parser = build_parser(() if command is None else (command,))
    args = parser.parse_args(arguments)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return func(args)
