"""What a lab made, written down before it is made, and taking all of it away again.

The supervisor appends one JSON line to `DIR/journal.jsonl` for each resource before it
creates it (a namespace, a disk file that gets a loop device) and right after it starts a
process, so a supervisor killed at any point leaves enough behind for `teardown` to remove
everything: processes (checked by pid *and* start time, so a reused pid is never killed),
every process still inside a lab namespace, the hosts' CPU cgroup, the namespaces (their
veths go with them), and the loop devices over the lab's disk files (found by backing file,
journal or not). Files in DIR stay (disks, logs, os.json), except `lab.json` and the journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metal3.lab import cpu, disks, network
from metal3.lab.layout import LabPaths

log = logging.getLogger(__name__)


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot, /proc/PID/stat field 22) of a live process;
    None when there is none (or only a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def same_process(pid: int, start_time: int | None) -> bool:
    return start_time is not None and process_start_time(pid) == start_time


class Journal:
    """Append-only record of a lab's resources (one JSON object per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def process(self, what: str, pid: int) -> None:
        self.add("process", what=what, pid=pid, start_time=process_start_time(pid))

    def entries(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found


@dataclass
class TeardownReport:
    processes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    loop_devices: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def removed_anything(self) -> bool:
        return bool(self.processes or self.namespaces or self.loop_devices)


def lab_prefixes(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e["prefix"]) for e in entries if e.get("kind") == "lab" and e.get("prefix")]


def _kill(pid: int, start_time: int | None, what: str, report: TeardownReport) -> None:
    if not same_process(pid, start_time):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        report.processes.append(f"{what} (pid {pid})")


def _wait_gone(pids: list[tuple[int, int | None]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(same_process(pid, start) for pid, start in pids):
            return
        time.sleep(0.02)


def teardown(data_dir: Path) -> TeardownReport:
    """Remove everything the lab in `data_dir` made (idempotent; no supervisor needed)."""
    paths = LabPaths(data_dir)
    journal = Journal(paths.journal)
    entries = journal.entries()
    report = TeardownReport()
    prefixes = lab_prefixes(entries)
    journal_ns = {str(e["name"]) for e in entries if e.get("kind") == "netns"}
    lab_ns = sorted(
        journal_ns
        | {ns for ns in network.namespaces() for p in prefixes if ns == p or ns.startswith(p + "-")}
    )
    # 1. processes: the ones recorded, and whatever still runs inside a lab namespace
    victims: list[tuple[int, int | None]] = []
    for entry in entries:
        if entry.get("kind") == "process":
            pid, start = int(entry["pid"]), entry.get("start_time")
            _kill(pid, start, str(entry.get("what", "process")), report)
            victims.append((pid, start))
    for ns in lab_ns:
        for pid in network.namespace_pids(ns):
            start = process_start_time(pid)
            _kill(pid, start, f"process in {ns}", report)
            victims.append((pid, start))
    _wait_gone(victims)
    # 2. the hosts' CPU group, once its processes are gone
    for entry in entries:
        if entry.get("kind") == "cpu_group" and entry.get("path"):
            group = Path(str(entry["path"]))
            if not cpu.remove_group(group):  # (True when it is gone already)
                report.errors.append(f"{group} still has processes: {cpu.members(group)}")
    # 3. namespaces (their veths and the bridge go with them)
    for ns in lab_ns:
        try:
            if network.delete_namespace(ns):
                report.namespaces.append(ns)
        except network.NetworkError as exc:
            report.errors.append(str(exc))
    # 4. loop devices over the lab's disk files
    backing = {Path(str(e["path"])) for e in entries if e.get("kind") == "disk"}
    backing |= set(paths.hosts.glob("*/disk[0-9]*"))
    try:
        for device in sorted(disks.loop_devices_over(backing)):
            try:
                disks.detach(device)
                report.loop_devices.append(device)
            except disks.DiskError as exc:
                report.errors.append(str(exc))
    except disks.DiskError as exc:
        report.errors.append(str(exc))
    if not report.errors:
        paths.lab_json.unlink(missing_ok=True)
        paths.journal.unlink(missing_ok=True)
    return report


def leftovers(data_dir: Path, prefixes: list[str]) -> list[str]:
    """What of a lab is still there (empty after a complete teardown)."""
    paths = LabPaths(data_dir)
    found = [
        f"namespace {ns}"
        for ns in sorted(network.namespaces())
        for p in prefixes
        if ns == p or ns.startswith(p + "-")
    ]
    found += [f"CPU group {group}" for group in cpu.groups_named(prefixes)]
    found += [
        f"loop device {dev}"
        for dev in sorted(disks.loop_devices_over(paths.hosts.glob("*/disk[0-9]*")))
    ]
    return found
