"""`metal3 demo`: the main job, shown end to end on the embedded defaults."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the embedded defaults")
    parser.add_argument("--examples", type=Path, default=None, help="folder of example manifests")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("demo: not yet")
    return 0
