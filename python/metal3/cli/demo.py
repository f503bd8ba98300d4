"""`metal3 demo`: the whole host lifecycle, live, on the embedded API server.

It starts standalone mode (API server + operator, fixture provisioner) in a temporary directory,
applies the example manifests, and shows the hosts move through their states: a table redrawn in
place on a terminal, one line per change otherwise. Then it provisions every host that is not
yet running a workload, deletes them all, and prints per-phase timings. It exits non-zero if any
host ends anywhere unexpected (or the examples are refused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import metal3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="folder of example manifests (default: the examples/ folder of this source tree)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--plain", action="store_true", help="no live table, one line per change")
    parser.set_defaults(func=run)


def default_examples() -> Path | None:
    """The source tree's examples/ (an editable install), or ./examples."""
    for candidate in (Path(metal3.__file__).resolve().parents[2] / "examples", Path("examples")):
        if candidate.is_dir():
            return candidate
    return None


def run(args: argparse.Namespace) -> int:
    folder: Path | None = args.examples or default_examples()
    if folder is None or not folder.is_dir():
        print("demo: no examples folder found; pass --examples DIR", file=sys.stderr)
        return 2
    from metal3.cli.demo_session import run_demo

    return run_demo(folder, args.timeout, live=sys.stdout.isatty() and not args.plain)
