"""Record the files and tool outputs the inventory reads on this host into a tree that
`collect_inventory(tree)` reads back (see metal3.agent.inventory.sysroot for the layout).

The recorder is the inventory itself, run on `/` through a `SysRoot` that copies everything
it reads: so the tree holds exactly what the inventory of this host was made from, no more.
Directories that end up empty get a `.keep` file (git does not keep empty directories).

    PYTHONPATH=python:tests .venv/bin/python -m agent.sysroot_recorder tests/agent/data/sysroot-vm
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metal3.agent.inventory import SysRoot, collect
from metal3.agent.inventory.sysroot import RECORDINGS


class RecordingSysRoot(SysRoot):
    """This host (`/`), with every file, directory, link and tool output read copied into
    `dest`."""

    def __init__(self, dest: Path) -> None:
        super().__init__(Path("/"))
        self.dest = dest

    def _copy_dir(self, rel: str) -> None:
        (self.dest / rel).mkdir(parents=True, exist_ok=True)

    def _copy_text(self, rel: str, text: str) -> None:
        target = self.dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def read(self, rel: str) -> str | None:
        text = super().read(rel)
        if text is not None:
            self._copy_text(rel, text)
        return text

    def exists(self, rel: str) -> bool:
        found = super().exists(rel)
        if found:
            if self.path(rel).is_dir():
                self._copy_dir(rel)
            elif not (self.dest / rel).exists():
                self._copy_text(rel, "")  # a device node or a file known only to exist
        return found

    def is_dir(self, rel: str) -> bool:
        found = super().is_dir(rel)
        if found:
            self._copy_dir(rel)
        return found

    def listdir(self, rel: str) -> list[str]:
        # Entries come into the tree as the inventory reads them; an entry it lists but never
        # reads changes nothing in the inventory, so it is not copied.
        if self.path(rel).is_dir():
            self._copy_dir(rel)
        return super().listdir(rel)

    def readlink(self, rel: str) -> str | None:
        target = super().readlink(rel)
        if target is not None:
            link = self.dest / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_dir() and not link.is_symlink():
                link.rmdir()
            if not link.is_symlink():
                os.symlink(target, link)
        return target

    def tool(self, argv: Sequence[str], recording: str, *, quiet: bool = False) -> str | None:
        out = super().tool(argv, recording, quiet=quiet)
        if out is not None:
            self._copy_text(f"{RECORDINGS}/{recording}", out)
        return out


def record(dest: Path) -> dict[str, Any]:
    """Record this host into `dest` and return the inventory made while recording."""
    inventory = collect(RecordingSysRoot(dest))
    for directory, subdirs, files in os.walk(dest):
        if not subdirs and not files:
            (Path(directory) / ".keep").touch()
    return inventory


if __name__ == "__main__":
    record(Path(sys.argv[1]))
