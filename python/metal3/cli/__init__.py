"""The `metal3` command: one entry point, one module per subcommand.

Each subcommand lives in ``metal3.cli.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (returning the process exit code) as the parser default. Modules are
imported only when the command line is built, so a subcommand's heavy imports stay its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from metal3 import __version__

# Order here is the order `metal3 --help` lists them.
SUBCOMMANDS: tuple[str, ...] = ("demo", "standalone", "operator", "apiserver", "bmc", "image")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metal3",
        description="Kubernetes-native bare-metal host manager (metal3.io/v1alpha1).",
    )
    parser.add_argument("--version", action="version", version=f"metal3 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"metal3.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return func(args)
