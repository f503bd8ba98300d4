"""`metal3 lab up | down | status`: start the supervisor and wait until the lab is ready, stop
it and remove what it made, or say what the lab's hosts are doing.

`up` starts `python -m metal3.lab.supervisor` detached (its own session, its log in
`DIR/supervisor.log`) and returns when `lab.json` appears; if the supervisor exits first, its
log says why (and it has removed what it made). A DIR whose supervisor still runs is refused;
leftovers of a dead one are removed first. `down` asks the supervisor to stop (SIGTERM, SIGKILL
after a timeout), then removes whatever is left from `lab.json` and the journal, so it works
after a killed supervisor too, and checks that nothing remains.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metal3.lab.config import LabConfig
from metal3.lab.layout import LabPaths
from metal3.lab.resources import Journal, lab_prefixes, leftovers, process_start_time, teardown
from metal3.lab.state import LabInfo, LabStateError, VmInfo, load_lab, read_json, write_json

SUPERVISOR_MODULE = "metal3.lab.supervisor"


class LabError(RuntimeError):
    """`lab up`/`down` could not do what was asked; the message says why."""


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def supervisor_pid(data_dir: Path) -> int | None:
    """The pid of the live supervisor of `data_dir`, if one runs."""
    paths = LabPaths(data_dir)
    candidates = []
    lab = read_json(paths.lab_json)
    if isinstance(lab, dict) and isinstance(lab.get("supervisor_pid"), int):
        candidates.append(int(lab["supervisor_pid"]))
    candidates += [
        int(e["pid"]) for e in Journal(paths.journal).entries() if e.get("kind") == "lab"
    ]
    folder = str(data_dir.resolve())
    for pid in candidates:
        argv = _cmdline(pid)
        if _alive(pid) and SUPERVISOR_MODULE in argv and _names_folder(argv, folder):
            return pid
    return None


def _names_folder(argv: list[str], folder: str) -> bool:
    for index, arg in enumerate(argv):
        if arg == "--data-dir" and index + 1 < len(argv):
            return str(Path(argv[index + 1]).resolve()) == folder
    return False


def _has_leftovers(data_dir: Path) -> bool:
    paths = LabPaths(data_dir)
    return paths.journal.exists() or paths.lab_json.exists()


def prepare(data_dir: Path, config: LabConfig) -> Path:
    """Check that `data_dir` can take a new lab (none runs there; what a dead one left is
    removed) and write the configuration the supervisor reads; the folder, resolved."""
    config.check()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = LabPaths(data_dir)
    running = supervisor_pid(data_dir)
    if running is not None:
        raise LabError(
            f"a lab already runs in {data_dir} (supervisor pid {running}): "
            f"`metal3 lab down --data-dir {data_dir}` first"
        )
    if _has_leftovers(data_dir):
        report = teardown(data_dir)
        if report.errors:
            raise LabError(
                "the previous lab in this folder could not be removed: " + "; ".join(report.errors)
            )
    write_json(paths.config, config.to_json())
    return data_dir


@dataclass(frozen=True)
class UpResult:
    info: LabInfo
    seconds: float
    cleaned_before: bool


def up(
    data_dir: Path,
    config: LabConfig,
    *,
    timeout: float = 120.0,
    verbose: bool = False,
) -> UpResult:
    """Start a lab in `data_dir` and wait until it is ready."""
    cleaned = _has_leftovers(data_dir)
    data_dir = prepare(data_dir, config)
    paths = LabPaths(data_dir)
    started = time.monotonic()
    with paths.supervisor_log.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                SUPERVISOR_MODULE,
                "--data-dir",
                str(data_dir),
                *(["--verbose"] if verbose else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    deadline = started + timeout
    while True:
        lab = read_json(paths.lab_json)
        if isinstance(lab, dict) and lab.get("supervisor_pid") == process.pid:
            return UpResult(load_lab(data_dir), time.monotonic() - started, cleaned)
        code = process.poll()
        if code is not None:
            raise LabError(
                f"the lab supervisor exited with {code} before the lab was ready:\n"
                + _tail(paths.supervisor_log)
            )
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            teardown(data_dir)
            raise LabError(
                f"the lab was not ready after {timeout:.0f} s; stopped it:\n"
                + _tail(paths.supervisor_log)
            )
        time.sleep(0.02)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class DownResult:
    stopped_supervisor: int | None
    killed_supervisor: bool
    removed: list[str]
    seconds: float


def down(data_dir: Path, *, timeout: float = 60.0) -> DownResult:
    """Stop the lab in `data_dir` and remove everything it made; fine when there is none."""
    data_dir = data_dir.resolve()
    started = time.monotonic()
    paths = LabPaths(data_dir)
    prefixes = lab_prefixes(Journal(paths.journal).entries())
    pid = supervisor_pid(data_dir)
    killed = False
    if pid is not None:
        start_time = process_start_time(pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and process_start_time(pid) == start_time:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
    report = teardown(data_dir)
    if report.errors:
        raise LabError("the lab could not be removed completely: " + "; ".join(report.errors))
    remaining = leftovers(data_dir, prefixes)
    if remaining:
        raise LabError("still there after `down`: " + ", ".join(remaining))
    removed = (
        [f"namespace {ns}" for ns in report.namespaces]
        + [f"loop device {dev}" for dev in report.loop_devices]
        + report.processes
    )
    return DownResult(pid, killed, removed, time.monotonic() - started)


def status(data_dir: Path) -> dict[str, Any]:
    """The lab and each host's state.json and os.json, as one document; for a VM host, its
    domain's state (from the lab's libvirtd) and the last lines of its serial console."""
    data_dir = data_dir.resolve()
    info = load_lab(data_dir)
    paths = LabPaths(data_dir)
    hosts = []
    for host in info.hosts:
        folder = paths.host(host.name)
        hosts.append(
            {
                "name": host.name,
                "kind": host.kind,
                "profile": host.profile,
                "registered": host.registered,
                "bmc_address": host.bmc_address,
                "boot_mac": host.boot_mac,
                "ip": host.ip,
                "state": read_json(folder.state) or {},
                "os": read_json(folder.os),
                "vm": _vm_status(info.libvirt_uri, host.vm) if host.vm is not None else None,
            }
        )
    return {
        "data_dir": str(data_dir),
        "supervisor_pid": info.supervisor_pid,
        "running": supervisor_pid(data_dir) == info.supervisor_pid,
        "network": {"namespace": info.namespace, "subnet": info.subnet, "gateway": info.gateway},
        "agent_api": {"listen": info.agent_api_listen, "lab_address": info.agent_api_lab_address},
        "images": {"url": info.images_url, "local_url": info.images_local_url},
        "hosts_cpu": info.hosts_cpu,
        "hosts": hosts,
    }


def _vm_status(uri: str, vm: VmInfo) -> dict[str, Any]:
    from metal3.lab import vms

    return {
        "domain": vm.domain,
        "state": vms.state(uri, vm.domain),
        "console_log": vm.console_log,
        "console_tail": vms.console_tail(Path(vm.console_log)),
        "os_report": vms.os_report(Path(vm.console_log)),
    }


__all__ = ["LabError", "LabStateError", "down", "status", "supervisor_pid", "up"]
