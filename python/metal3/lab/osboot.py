"""What "booting the OS" from disk finds: a partition table, and what cloud-init would read.

A lab host told to boot from disk looks at its disks in order, as firmware does, and boots
the first one that holds a partition table: the table must be one `sfdisk` reads, and a GPT
must pass `sgdisk --verify` with no problem (headers, CRCs, backup at the disk's end). On it,
the config drive is the partition whose file system is labelled `config-2` (as cloud-init
finds it); its ISO 9660 file system is read and the host name (`meta_data.json`) and the
sha256 of `user_data` recorded, which is what cloud-init would have applied. A disk with a
valid table but no config drive boots with nothing to configure; no disk with a table means
nothing boots. The result goes to `os.json` (see `boot_from_disks`).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, cast

from metal3.agent.errors import AgentError
from metal3.agent.partitions import PartitionTable, find_labelled_partition, read_table

META_DATA = "openstack/latest/meta_data.json"
USER_DATA = "openstack/latest/user_data"
NETWORK_DATA = "openstack/latest/network_data.json"


class _Window(io.RawIOBase):
    """A read-only view of `length` bytes of a file from `offset` (a partition)."""

    def __init__(self, handle: io.BufferedReader, offset: int, length: int) -> None:
        self._handle = handle
        self._offset = offset
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + position)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._length - self._position))
        if count == 0:
            return 0
        self._handle.seek(self._offset + self._position)
        data = self._handle.read(count)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)


def _read_iso_file(iso: Any, path: str) -> bytes | None:
    """A file of the ISO by its Rock Ridge, Joliet or ISO 9660 name; None when absent."""
    import pycdlib.pycdlibexception as errors

    iso9660 = "/" + "/".join(
        part.upper() if index < path.count("/") else _iso_file_name(part)
        for index, part in enumerate(path.split("/"))
    )
    for key, name in (("rr_path", "/" + path), ("joliet_path", "/" + path), ("iso_path", iso9660)):
        out = io.BytesIO()
        try:
            iso.get_file_from_iso_fp(out, **{key: name})
        except errors.PyCdlibException:
            continue
        return out.getvalue()
    return None


def _iso_file_name(name: str) -> str:
    upper = name.upper()
    return (upper if "." in upper else upper + ".") + ";1"


def read_config_drive(disk: str, offset: int, size: int) -> dict[str, Any]:
    """The config drive's contents (ISO 9660 at `offset` of `disk`), summarised."""
    import pycdlib

    with open(disk, "rb") as handle:
        window = io.BufferedReader(_Window(handle, offset, size))
        iso = cast(Any, pycdlib.PyCdlib())  # pycdlib has no annotations
        try:
            iso.open_fp(window)
        except Exception as exc:
            raise AgentError(f"the config-2 partition holds no readable ISO 9660: {exc}") from exc
        try:
            meta_raw = _read_iso_file(iso, META_DATA)
            user_data = _read_iso_file(iso, USER_DATA)
            network_raw = _read_iso_file(iso, NETWORK_DATA)
        finally:
            iso.close()
    if meta_raw is None:
        raise AgentError(f"the config drive has no {META_DATA}")
    try:
        meta = json.loads(meta_raw)
    except ValueError as exc:
        raise AgentError(f"{META_DATA} is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise AgentError(f"{META_DATA} is not a JSON object")
    return {
        "hostname": meta.get("hostname") or meta.get("name"),
        "uuid": meta.get("uuid"),
        "name": meta.get("name"),
        "public_keys": sorted((meta.get("public_keys") or {}).keys()),
        "user_data_sha256": hashlib.sha256(user_data).hexdigest()
        if user_data is not None
        else None,
        "user_data_bytes": len(user_data) if user_data is not None else None,
        "network_data": network_raw is not None,
    }


# sgdisk --verify says "No problems found" about the table it ended up using even when it had
# to fall back to the backup header; these words in its output mark what it had to work around.
_GPT_TROUBLE = ("Problem", "ERROR", "corrupt", "Caution", "Warning", "Invalid", "invalid")


def _without_alignment_notes(lines: list[str]) -> list[str]:
    """Drop sgdisk's note that a partition does not start or end on a 2048-sector boundary
    (two lines: "Caution: Partition N doesn't end on a 2048-sector boundary. This may" /
    "result in problems with some disk encryption tools."): firmware boots such disks, and
    images made by other tools often have them."""
    kept: list[str] = []
    skip_next = False
    for line in lines:
        if skip_next:
            skip_next = False
            continue
        if line.startswith("Caution: Partition") and "sector boundary" in line:
            skip_next = line.rstrip().endswith("This may")
            continue
        kept.append(line)
    return kept


def verify_gpt(disk: str) -> list[str]:
    """Problems `sgdisk --verify` reports for the GPT on `disk` (empty: none), including a
    damaged primary or backup header that it could work around."""
    tool = shutil.which("sgdisk")
    if tool is None:
        raise AgentError("sgdisk (gdisk) is not installed: the lab cannot check a GPT")
    done = subprocess.run([tool, "--verify", disk], capture_output=True, text=True, timeout=60)
    lines = _without_alignment_notes(
        [line.strip(" *") for line in (done.stdout + done.stderr).splitlines()]
    )
    trouble = [line for line in lines if any(word in line for word in _GPT_TROUBLE)]
    if done.returncode == 0 and not trouble and any("No problems found" in x for x in lines):
        return []
    return trouble or [line for line in lines if line] or ["sgdisk --verify failed"]


def inspect_disk(disk: str) -> dict[str, Any]:
    """What booting from `disk` finds; `bootable` says whether it boots."""
    try:
        table = read_table(disk)
    except AgentError as exc:
        return {"disk": disk, "bootable": False, "reason": str(exc)}
    if table is None:
        return {"disk": disk, "bootable": False, "reason": "no partition table"}
    if table.label == "gpt":
        problems = verify_gpt(disk)
        if problems:
            return {
                "disk": disk,
                "bootable": False,
                "reason": "the GPT has problems: " + "; ".join(problems[:5]),
            }
    found: dict[str, Any] = {
        "disk": disk,
        "bootable": True,
        "partition_table": {"label": table.label, "partitions": len(table.partitions)},
        "config_drive": None,
    }
    found["config_drive"] = _config_drive(disk, table)
    return found


def _config_drive(disk: str, table: PartitionTable) -> dict[str, Any] | None:
    partition = find_labelled_partition(disk, table)
    if partition is None:
        return None
    offset = partition.start * table.sector_size
    size = partition.sectors * table.sector_size
    try:
        contents = read_config_drive(disk, offset, size)
    except AgentError as exc:
        return {"partition": partition.number, "error": str(exc)}
    return {"partition": partition.number, **contents}


def boot_from_disks(disks: Sequence[str]) -> dict[str, Any]:
    """Boot the first disk that holds a partition table: the content of `os.json`."""
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    tried = []
    for disk in disks:
        found = inspect_disk(disk)
        if not found.pop("bootable"):
            tried.append(found)
            continue
        drive = found.get("config_drive") or {}
        return {
            "time": stamp,
            "booted": True,
            "hostname": drive.get("hostname"),
            "user_data_sha256": drive.get("user_data_sha256"),
            **found,
            "skipped": tried,
        }
    return {
        "time": stamp,
        "booted": False,
        "reason": "no disk holds a bootable partition table",
        "hostname": None,
        "user_data_sha256": None,
        "skipped": tried,
    }
