"""The ramdisk build cache: each stage's output kept under the digest of its inputs.

An entry is a folder `STAGE-KEY/` holding the stage's files and `manifest.json` (the sha256 of
every file, plus what the stage reported). An entry is used only after every file matched its
recorded digest; one that does not (a partial write, a corrupted disk, a hand edit) is removed
and built again. Entries are written to a temporary folder and renamed into place, and a lock
file keeps two builders from building the same stage at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KEEP_PER_STAGE = 3  # older entries of a stage are removed when a new one is made


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metal3`` (``~/.cache/metal3`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metal3"


def digest(*parts: str | bytes) -> str:
    """sha256 over the parts, each length-prefixed (so no two part lists collide)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    folder: Path
    files: dict[str, str]  # name -> sha256
    meta: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.folder / name


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root / "ramdisk"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Only one builder at a time works in this cache."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, stage: str, key: str) -> Entry | None:
        """The entry, if present and intact."""
        folder = self.root / f"{stage}-{key}"
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            files = dict(manifest["files"])
            meta = dict(manifest["meta"])
        except (OSError, ValueError, KeyError, TypeError):
            if folder.exists():
                log.warning("ramdisk cache: %s has no readable manifest; rebuilding", folder)
                shutil.rmtree(folder, ignore_errors=True)
            return None
        for name, want in files.items():
            try:
                got = file_sha256(folder / name)
            except OSError:
                got = ""
            if got != want:
                log.warning(
                    "ramdisk cache: %s/%s does not match its digest; rebuilding", folder, name
                )
                shutil.rmtree(folder, ignore_errors=True)
                return None
        os.utime(folder)  # recently used: kept by `_prune`
        return Entry(folder, files, meta)

    def make(self, stage: str, key: str, build: Callable[[Path], dict[str, Any]]) -> Entry:
        """Run ``build(folder)`` (it writes the stage's files into ``folder`` and returns what
        to record about them) and keep the result as the entry for ``key``."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=self.root))
        try:
            meta = build(tmp)
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(
                json.dumps({"files": files, "meta": meta}, indent=2, sort_keys=True) + "\n"
            )
            final = self.root / f"{stage}-{key}"
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(stage)
        return Entry(final, files, meta)

    def fetch(
        self, stage: str, key: str, build: Callable[[Path], dict[str, Any]]
    ) -> tuple[Entry, bool]:
        """The intact entry for ``key`` (True: from the cache), or a new one built now."""
        entry = self.get(stage, key)
        if entry is not None:
            return entry, True
        return self.make(stage, key, build), False

    def _prune(self, stage: str) -> None:
        entries = sorted(
            (p for p in self.root.glob(f"{stage}-*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in entries[KEEP_PER_STAGE:]:
            shutil.rmtree(old, ignore_errors=True)
