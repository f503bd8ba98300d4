"""How the real demo judges what the hosts' disks hold, with reference tools only.

- `check_image`: the disk against the image converted by `qemu-img convert -O raw`: every byte
  of the image's extent equal, except the primary partition table (LBA 0-33, which gains the
  config drive's entry: the image's own entries are compared through `sfdisk --json`) and the
  config drive partition the agent adds after the image's last partition (over the image's
  free space, never over its partitions); and `sgdisk --verify` finds no problem.
- `check_config_drive`: the `config-2` partition read with `bsdtar` (user_data byte for byte,
  meta_data.json's hostname and uuid).
- `check_untouched` / `check_cleaned`: `wipefs` and `blkid -p` find no signature where none
  should be (the host's other disks; the disk after metadata cleaning).

Every check returns a `Check` (ok, and a line saying what was compared) and never raises for
what it finds on the disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTOR = 512
GPT_HEAD_SECTORS = 34  # protective MBR, GPT header, 32 sectors of partition entries
CHUNK = 4 << 20
ENV = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _tool(*args: str | Path, ok_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, env=ENV
    )
    if done.returncode not in ok_codes:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done


def partitions(disk: str | Path) -> list[dict[str, Any]]:
    """`sfdisk --json`'s partitions of `disk` (empty when it has no table)."""
    done = _tool("sfdisk", "--json", disk, ok_codes=(0, 1))
    if done.returncode != 0:
        return []
    entries: list[dict[str, Any]] = json.loads(done.stdout)["partitiontable"]["partitions"]
    return entries


def _same_entry(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("start", "size", "type", "uuid", "name")
    return all(a.get(k) == b.get(k) for k in keys)


def _segments(start: int, end: int, skip: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) without the ranges in `skip`."""
    pieces = [(start, end)]
    for s, e in skip:
        pieces = [
            part
            for a, b in pieces
            for part in ((a, min(b, s)), (max(a, e), b))
            if part[0] < part[1]
        ]
    return pieces


def _first_difference(
    disk: str, reference: Path, skip: Sequence[tuple[int, int]], size: int
) -> int | None:
    """The first offset below `size` where `disk` and `reference` differ outside `skip`."""
    with open(disk, "rb") as got, reference.open("rb") as want:
        offset = 0
        while offset < size:
            count = min(CHUNK, size - offset)
            a, b = got.read(count), want.read(count)
            if len(a) != count:
                return offset + len(a)  # the disk is shorter than the image
            if a != b:
                for s, e in _segments(offset, offset + count, skip):
                    x, y = a[s - offset : e - offset], b[s - offset : e - offset]
                    if x != y:
                        return s + next(i for i in range(len(x)) if x[i] != y[i])
            offset += count
    return None


def find_config_drive(disk: str) -> dict[str, Any] | None:
    """The partition whose file system is labelled config-2 (`blkid -p` at its place)."""
    for entry in partitions(disk):
        start, size = int(entry["start"]) * SECTOR, int(entry["size"]) * SECTOR
        done = _tool(
            "blkid", "-p", "-o", "export", f"--offset={start}", f"--size={size}", disk,
            ok_codes=(0, 2),
        )  # fmt: skip
        if "LABEL=config-2" in done.stdout.split():
            return entry
    return None


def check_image(disk: str, reference: Path) -> Check:
    """The image on `disk`, against `reference` (see the module docstring)."""
    size = reference.stat().st_size
    image_parts = partitions(reference)
    disk_parts = partitions(disk)
    missing = [p for p in image_parts if not any(_same_entry(p, d) for d in disk_parts)]
    if missing:
        return Check("disk", False, f"{disk}: the image's partitions are not all there: {missing}")
    # Sector 0's boot code (bytes 0-445) is compared; the protective MBR's partition record
    # and the GPT (header and entries) are the table's, compared above through sfdisk.
    skip = [(446, GPT_HEAD_SECTORS * SECTOR)]
    drive = find_config_drive(disk)
    if drive is not None:
        start = int(drive["start"]) * SECTOR
        end = start + int(drive["size"]) * SECTOR
        image_end = max(
            ((int(p["start"]) + int(p["size"])) * SECTOR for p in image_parts), default=0
        )
        if start < image_end:
            return Check("disk", False, f"{disk}: the config drive overlaps the image's data")
        skip.append((start, end))
    difference = _first_difference(disk, reference, skip, size)
    if difference is not None:
        return Check("disk", False, f"{disk}: differs from the reference at byte {difference}")
    verify = _tool("sgdisk", "--verify", disk, ok_codes=(0, 2))
    if "No problems found" not in verify.stdout:
        return Check("disk", False, f"{disk}: sgdisk --verify: {verify.stdout.strip()[-300:]}")
    kept = "the config drive partition added after them" if drive else "no config drive partition"
    return Check(
        "disk",
        True,
        f"{disk}: its first {size} bytes are `qemu-img convert -O raw`'s output, but for the "
        f"partition table (the image's {len(image_parts)} partition(s) unchanged, {kept}); "
        "sgdisk --verify: no problems",
    )


def check_config_drive(
    disk: str, *, user_data: bytes, hostname: str, uuid: str, workdir: Path
) -> Check:
    """The config drive on `disk` holds `user_data` and meta data naming `hostname`, `uuid`."""
    drive = find_config_drive(disk)
    if drive is None:
        return Check("config drive", False, f"{disk}: no partition labelled config-2")
    start, size = int(drive["start"]) * SECTOR, int(drive["size"]) * SECTOR
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".iso") as iso:
        with open(disk, "rb") as handle:
            handle.seek(start)
            remaining = size
            while remaining:
                block = handle.read(min(CHUNK, remaining))
                if not block:
                    break
                iso.write(block)
                remaining -= len(block)
        iso.flush()
        got_user_data = _tool("bsdtar", "-xOf", iso.name, "openstack/latest/user_data").stdout
        meta_raw = _tool("bsdtar", "-xOf", iso.name, "openstack/latest/meta_data.json").stdout
    if got_user_data.encode() != user_data:
        return Check("config drive", False, f"{disk}: user_data differs from what was sent")
    meta = json.loads(meta_raw)
    if meta.get("hostname") != hostname or meta.get("uuid") != uuid:
        return Check(
            "config drive",
            False,
            f"{disk}: meta_data.json hostname {meta.get('hostname')!r}, uuid "
            f"{meta.get('uuid')!r}; expected {hostname!r}, {uuid!r}",
        )
    return Check(
        "config drive",
        True,
        f"partition {drive['node'].removeprefix(disk)} (config-2, read by bsdtar): user_data = "
        f"the host's Secret ({len(user_data)} bytes), meta_data hostname {hostname}, uuid = "
        "the host's",
    )


def signatures(disk: str, offsets: Sequence[int] = ()) -> list[str]:
    """What `wipefs` finds on `disk`, and `blkid -p` at each of `offsets`."""
    found = [
        line.strip()
        for line in _tool("wipefs", "--no-act", "--noheadings", disk).stdout.splitlines()
        if line.strip()
    ]
    for offset in offsets:
        done = _tool("blkid", "-p", "-o", "export", f"--offset={offset}", disk, ok_codes=(0, 2))
        found += [
            f"at {offset}: {line}" for line in done.stdout.split() if line.startswith("TYPE=")
        ]
    return found


def check_untouched(disks: Sequence[str]) -> Check:
    """The host's other disks hold no signature (nothing was written to them)."""
    found = {disk: signatures(disk) for disk in disks}
    dirty = {disk: sig for disk, sig in found.items() if sig}
    if dirty:
        return Check("other disks", False, f"signatures found: {dirty}")
    return Check(
        "other disks",
        True,
        f"{len(disks)} other disk(s): no signature (wipefs)" if disks else "none",
    )


def check_cleaned(disk: str, offsets: Sequence[int]) -> Check:
    """After metadata cleaning: no partition table or file system signature on `disk`, nor at
    the partitions' former places."""
    found = signatures(disk, offsets)
    if found:
        return Check("cleaned", False, f"{disk}: signatures left after cleaning: {found}")
    return Check(
        "cleaned",
        True,
        f"{disk}: no signature (wipefs), none at the {len(offsets)} former partitions (blkid -p)",
    )
