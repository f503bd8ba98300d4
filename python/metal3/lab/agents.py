"""The agent process of a lab host: `metal3 agent run` inside the host's network namespace.

What a booted agent ramdisk would run, as a process: `ip netns exec HOSTNS python -m metal3
agent run --api https://GATEWAY:PORT --ca-file ... --state-dir DIR/hosts/NAME/agent-state
--root DIR/hosts/NAME/sysroot --power-action exit --work-nice 19 --mac MAC...`, its output
appended to `DIR/hosts/NAME/agent.log` (each boot starts with a `--- lab:` line). The agent
reads its inventory from the host's recorded tree and cleans and writes the host's loop
devices.
Powering the host off ends it: SIGTERM, then SIGKILL if it has not gone after a grace period.
The agent is killed with the supervisor (the kernel's parent-death signal), so a supervisor
that dies leaves no agent running.

A host that is off and set to boot the agent (from the network or a CD) keeps one agent
process started ahead of its boot (`AgentLauncher`): `python -m metal3.lab.agents agent run
...` in the host's namespace, at the lowest CPU priority, that imports what the agent needs
and then waits on its stdin. The boot tells it to go (it takes a booted agent's priority and runs
`metal3 agent run` with its arguments). The next one is started only once the host is off
again and set to boot the agent (`metal3.lab.hosts`): started at each boot, fifty of them
getting ready while fifty agents wrote their images took a seventh of the machine, for boots
most of them never made (a provisioned host boots from its disk).
The lowest priority is set twice: the process's nice value, and its session's autogroup nice
(`/proc/PID/autogroup`). With the kernel's autogroup scheduling on (most distributions), a
process in a session of its own, as every lab agent is, gets a scheduling group of its own
that competes with the others as one process, and its nice value only ranks it within that
group: with the nice value alone, ten or fifty processes getting ready took as much CPU as
the hosts' agents writing their images.
Starting a Python interpreter and importing the agent took 0.3 to 1 s of each boot's CPU on a
loaded 2-core machine, all of it between the BMC's power on and the agent's lookup: time the
lab spent emulating, which a real ramdisk spends differently. A boot that finds no ready
process starts one as before.
A ready process says when it has imported the agent (a byte on a pipe whose read end
`AgentLauncher.prepare` returns), and the host's state says so (`agent.ready`): importing
takes about 0.2 s of CPU, so fifty hosts that power off at once are ready only seconds later
(at the lowest priority), and a boot before that pays for the rest of the import itself.

Where the lab has its hosts' CPU group (`metal3.lab.cpu`: one cgroup at a low CPU weight, so
that the rest of the machine comes first), every agent process, ready or booted, goes into it
before it execs: a booted agent at nice 0 there, its disk work at 19 (`--work-nice`), so that
within the group an agent's calls to the operator come before the other agents' writes.
Without the group, a booted agent runs at nice `AGENT_NICE` (10), its autogroup too: each
agent's session is then a scheduling group of its own that gets as large a share of the CPU as
the operator's whole group, and nice 10 makes it yield to the control plane somewhat (with
fifty hosts writing on two cores, the emulated BMCs answered a read in 240 ms at the median at
nice 0).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from metal3.childprocess import die_with_parent
from metal3.lab import cpu

log = logging.getLogger(__name__)

AGENT_NICE = 10  # a booted agent's CPU priority without the hosts' CPU group (module doc)
GROUPED_AGENT_NICE = 0  # a booted agent's CPU priority in the hosts' CPU group
WORK_NICE = 19  # its disk work's (`metal3 agent run --work-nice`)
READY_NICE = 19  # an agent process kept ready for its boot
READY_FD_VARIABLE = "METAL3_LAB_READY_FD"  # the pipe a ready process writes to once imported
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True)
class AgentSpec:
    namespace: str
    api_url: str
    ca_file: Path
    state_dir: Path
    root: Path
    macs: tuple[str, ...]
    log_path: Path
    cpu_group: Path | None = None  # the hosts' CPU group (`metal3.lab.cpu`), if the lab has one

    @property
    def booted_nice(self) -> int:
        return AGENT_NICE if self.cpu_group is None else GROUPED_AGENT_NICE

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
            "--work-nice",
            str(WORK_NICE),
            *(arg for mac in self.macs for arg in ("--mac", mac)),
        ]

    def warm_argv(self) -> list[str]:
        """The same agent, started ahead of its boot (`main` below)."""
        argv = self.argv()
        at = argv.index("-m") + 1
        return [*argv[:at], "metal3.lab.agents", *argv[at + 1 :]]


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
        process = subprocess.Popen(
            spec.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_environment(),
            start_new_session=True,
            preexec_fn=_setup_for(spec, spec.booted_nice),
        )
    _check_group(spec, process.pid)
    return process


class AgentLauncher:
    """One host's agent starts: from the process kept ready for it when there is one (see
    the module doc). Call from the thread `start_agent` needs."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self._ready: subprocess.Popen[bytes] | None = None

    def prepare(self) -> int | None:
        """Have a process ready for the next boot. Returns the read end of its ready signal
        when it starts one (the caller owns it: one byte once the agent is imported, end of
        file if the process ended first), None when one was there already."""
        if self._ready is not None and self._ready.poll() is None:
            return None
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        signal_read, signal_write = os.pipe()
        try:
            with self.spec.log_path.open("ab") as log:
                self._ready = subprocess.Popen(
                    self.spec.warm_argv(),
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**_environment(), READY_FD_VARIABLE: str(signal_write)},
                    start_new_session=True,
                    preexec_fn=_setup_for(self.spec, READY_NICE),
                    pass_fds=(signal_write,),
                )
        except BaseException:
            os.close(signal_read)
            raise
        finally:
            os.close(signal_write)
        _check_group(self.spec, self._ready.pid)
        return signal_read

    def start(self, reason: str) -> subprocess.Popen[bytes]:
        """Boot the agent (`start_agent`, from the ready process when it is still there);
        none is kept ready after it until `prepare` is called again."""
        ready, self._ready = self._ready, None
        process = None
        if ready is not None and ready.poll() is None and ready.stdin is not None:
            _boot_line(self.spec.log_path, reason)
            # A booted agent's priority from now on, even if it is still importing (it raises
            # its own too, once it reads the boot line).
            _set_priority(ready.pid, self.spec.booted_nice)
            try:
                ready.stdin.write(b"boot %d\n" % self.spec.booted_nice)
                ready.stdin.close()
                process = ready
            except OSError:  # it died meanwhile: start one the slow way
                signal_process(ready.pid, signal.SIGKILL)
        if process is None:
            process = start_agent(self.spec, reason)
        return process

    def close(self) -> None:
        """Kill the ready process (the lab is going down)."""
        ready, self._ready = self._ready, None
        if ready is not None and ready.poll() is None:
            signal_process(ready.pid, signal.SIGKILL)
            ready.wait()


def _setup_for(spec: AgentSpec, nice: int) -> Callable[[], None]:
    procs = cpu.procs_file(spec.cpu_group) if spec.cpu_group is not None else None
    return functools.partial(_agent_setup, procs, nice)


def _agent_setup(procs: bytes | None, nice: int) -> None:
    """In the child, before it execs: die with the supervisor, join the hosts' CPU group
    (`procs`: its `cpu.procs_file`), take `nice` (a ready process: 19, as the hosts' disk work,
    below their agents' calls to the operator)."""
    die_with_parent()  # the supervisor
    if procs is not None:
        cpu.join(procs)
    _set_priority(0, nice)


def _check_group(spec: AgentSpec, pid: int) -> None:
    """Say so when a process did not get into the hosts' CPU group (it runs beside it)."""
    if spec.cpu_group is not None and pid not in cpu.members(spec.cpu_group):
        log.warning("agent pid %d is not in the hosts' CPU group %s", pid, spec.cpu_group)


def _set_priority(pid: int, nice: int) -> None:
    """Set the nice value of `pid` (0: this process) and of its session's autogroup (see the
    module doc); the session must be the process's own. Only system calls: callable between
    fork and exec. Best effort: raising a priority needs CAP_SYS_NICE, and a kernel without
    autogroups has no file to write."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    try:
        fd = os.open(f"/proc/{pid or 'self'}/autogroup", os.O_WRONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.write(fd, b"%d" % nice)
    os.close(fd)


def _boot_line(log_path: Path, reason: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    with log_path.open("ab") as log:
        log.write(f"--- lab: {stamp} {reason}: starting the agent\n".encode())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m metal3.lab.agents agent run ARGS`: import the agent, wait for the boot (a
    line `boot NICE` on stdin; end of input: not needed after all), then run `metal3 ARGS` at
    that nice value, a booted agent's."""
    import metal3.agent.blockdev
    import metal3.agent.clean
    import metal3.agent.configdrive
    import metal3.agent.deploy
    import metal3.agent.hints
    import metal3.agent.inventory
    import metal3.agent.runner  # noqa: F401
    from metal3.cli import main as metal3_main

    _say_ready()
    boot = sys.stdin.buffer.readline().split()
    if not boot or boot[0] != b"boot":
        return 0
    _set_priority(0, int(boot[1]) if len(boot) > 1 else AGENT_NICE)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return metal3_main(list(sys.argv[1:] if argv is None else argv))


def _say_ready() -> None:
    """Tell the supervisor the agent is imported (`AgentLauncher.prepare`)."""
    value = os.environ.pop(READY_FD_VARIABLE, "")
    if not value.isdigit():
        return
    with contextlib.suppress(OSError):
        os.write(int(value), b"1")
    with contextlib.suppress(OSError):
        os.close(int(value))


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


if __name__ == "__main__":
    sys.exit(main())
