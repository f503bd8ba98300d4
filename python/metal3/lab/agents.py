"""The agent process of a lab host: `metal3 agent run` inside the host's network namespace.

What a booted agent ramdisk would run, as a process: `ip netns exec HOSTNS python -m metal3
agent run --api https://GATEWAY:PORT --ca-file ... --state-dir DIR/hosts/NAME/agent-state
--root DIR/hosts/NAME/sysroot --power-action exit --mac MAC...`, its output appended to
`DIR/hosts/NAME/agent.log` (each boot starts with a `--- lab:` line). The agent reads its
inventory from the host's recorded tree and cleans and writes the host's loop devices.
Powering the host off ends it: SIGTERM, then SIGKILL if it has not gone after a grace period.
The agent is killed with the supervisor (the kernel's parent-death signal), so a supervisor
that dies leaves no agent running.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# Looked up in the parent: between fork and exec the child only calls it (no dlopen there).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_supervisor() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class AgentSpec:
    namespace: str
    api_url: str
    ca_file: Path
    state_dir: Path
    root: Path
    macs: tuple[str, ...]
    log_path: Path

    def argv(self) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            sys.executable,
            "-m",
            "metal3",
            "agent",
            "run",
            "--api",
            self.api_url,
            "--ca-file",
            str(self.ca_file),
            "--state-dir",
            str(self.state_dir),
            "--root",
            str(self.root),
            "--power-action",
            "exit",
            *(arg for mac in self.macs for arg in ("--mac", mac)),
        ]


def _environment() -> dict[str, str]:
    """The supervisor's environment without proxies: a lab host reaches only its subnet."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_agent(spec: AgentSpec, reason: str) -> subprocess.Popen[bytes]:
    """Start the agent (call from a thread that lives as long as the supervisor)."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_path.open("ab") as log:
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        log.write(f"--- lab: {stamp} {reason}: starting the agent\n".encode())
        log.flush()
        return subprocess.Popen(
            spec.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_environment(),
            start_new_session=True,
            preexec_fn=_die_with_supervisor,
        )


def note(log_path: Path, message: str) -> None:
    """A `--- lab:` line in the agent log (power off, exit)."""
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    with log_path.open("a") as log:
        log.write(f"--- lab: {stamp} {message}\n")


def signal_process(pid: int, sig: int) -> bool:
    """Send `sig`; False when the process is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
