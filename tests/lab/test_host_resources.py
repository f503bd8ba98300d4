"""What a lab host costs the machine: its disk's loop device writes its file with direct I/O
(where the file system allows it), like a disk with no page cache in front of it, and an
agent process kept ready for the next boot runs at the lowest priority, in its own session
and that session's CPU scheduling group (autogroup) too, until its boot gives it normal
priority; in a lab with the hosts' CPU group (`metal3.lab.cpu`), every agent runs in it."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metal3.lab import agents, cpu, disks

MiB = 1 << 20


def _direct_io_possible(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def test_disk_loop_device_writes_its_file_directly(tmp_path: Path) -> None:
    backing = tmp_path / "disk"
    disks.make_sparse(backing, 16 * MiB)
    device = disks.attach(backing)
    try:
        dio = Path(f"/sys/block/{Path(device).name}/loop/dio").read_text().strip()
        assert dio == ("1" if _direct_io_possible(tmp_path) else "0")
        data = os.urandom(64 * 1024)
        fd = os.open(device, os.O_WRONLY)
        try:
            assert os.pwrite(fd, data, 4 * MiB) == len(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        with backing.open("rb") as handle:
            handle.seek(4 * MiB)
            assert handle.read(len(data)) == data
    finally:
        disks.detach(device)
    assert device not in disks.loop_devices_over([backing])


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _group(pid: int) -> tuple[str, int] | None:
    """The autogroup and its nice (None: a kernel without autogroups, or a process the kernel
    schedules by its cgroup instead: one whose cgroup has the cpu controller, where the file
    exists but reads empty)."""
    try:
        fields = Path(f"/proc/{pid}/autogroup").read_text().split()  # /autogroup-N nice M
    except FileNotFoundError:
        return None
    if not fields:
        return None
    name, _, nice = fields
    return name, int(nice)


class _ShellAgent(agents.AgentSpec):
    """An agent whose process kept ready says it is ready, waits for the boot line, then
    sleeps, and whose cold start is a shell that sleeps: the launcher's part without a host
    namespace."""

    def argv(self) -> list[str]:
        return ["sh", "-c", "exec sleep 60"]

    def warm_argv(self) -> list[str]:  # says it is ready as the real one does, then waits
        ready = f"os.write(int(os.environ['{agents.READY_FD_VARIABLE}']), b'1')"
        wait = "sys.stdin.readline(); os.execvp('sleep', ['sleep', '60'])"
        return [sys.executable, "-c", f"import os, sys; {ready}; {wait}"]


def test_agent_kept_ready_yields_until_booted(tmp_path: Path) -> None:
    """The process kept ready runs at nice 19 in a session of its own whose scheduling group
    is at nice 19 too (ours untouched); its boot gives both a booted agent's priority, and the
    next one is started only when asked for again."""
    ours = _group(os.getpid())
    spec = _ShellAgent(
        namespace="unused", api_url="https://unused", ca_file=tmp_path / "ca.pem",
        state_dir=tmp_path / "state", root=tmp_path / "root", macs=("02:00:00:00:00:01",),
        log_path=tmp_path / "agent.log",
    )  # fmt: skip
    launcher = agents.AgentLauncher(spec)
    launcher.prepare()
    ready = launcher._ready
    assert ready is not None
    try:
        assert _nice(ready.pid) == 19
        assert os.getsid(ready.pid) == ready.pid  # a session of its own
        group = _group(ready.pid)
        if ours is not None:  # we have an autogroup, so its new session has one too
            assert group is not None
        if group is not None:  # (ours may be the kernel's default group, which reads empty)
            assert group[1] == 19
            assert ours is None or group[0] != ours[0]
        assert _group(os.getpid()) == ours
        booted = launcher.start("test boot")
        assert booted is ready  # not started afresh
        assert _nice(booted.pid) == agents.AGENT_NICE
        assert _group(booted.pid) in (None, (group[0] if group else "", agents.AGENT_NICE))
        assert launcher._ready is None
        launcher.prepare()
        assert launcher._ready is not None and launcher._ready is not booted
        assert _nice(launcher._ready.pid) == 19
    finally:
        launcher.close()
        ready.send_signal(signal.SIGKILL)
        ready.wait()


def test_an_agent_booted_without_a_ready_process_runs_at_the_booted_agents_priority(
    tmp_path: Path,
) -> None:
    """A boot that finds no process kept ready starts the agent afresh, at the same priority
    (nice and autogroup) as one booted from a ready process."""
    spec = _ShellAgent(
        namespace="unused", api_url="https://unused", ca_file=tmp_path / "ca.pem",
        state_dir=tmp_path / "state", root=tmp_path / "root", macs=("02:00:00:00:00:01",),
        log_path=tmp_path / "agent.log",
    )  # fmt: skip
    launcher = agents.AgentLauncher(spec)
    booted = launcher.start("cold boot")
    try:
        assert launcher._ready is None
        assert _nice(booted.pid) == agents.AGENT_NICE
        group = _group(booted.pid)
        assert group is None or group[1] == agents.AGENT_NICE
        assert "cold boot: starting the agent" in (tmp_path / "agent.log").read_text()
    finally:
        booted.send_signal(signal.SIGKILL)
        booted.wait()


def test_host_keeps_an_agent_ready_only_while_off_and_set_to_boot_it(tmp_path: Path) -> None:
    """A ready agent is started at lab start, used by the agent's boot, and started again
    only once the host is off with a boot device that boots the agent (network or CD): never
    for a host that boots its disk next."""
    import asyncio

    from metal3.lab.hosts import BmcReport, Host
    from metal3.lab.layout import HostPaths

    spec = _ShellAgent(
        namespace="unused", api_url="https://unused", ca_file=tmp_path / "ca.pem",
        state_dir=tmp_path / "state", root=tmp_path / "root", macs=("02:00:00:00:00:01",),
        log_path=tmp_path / "agent.log",
    )  # fmt: skip
    (tmp_path / "host").mkdir()
    loop = asyncio.new_event_loop()
    host = Host(
        name="h", paths=HostPaths(tmp_path / "host"), agent=spec, disks=(),
        boot_mac="02:00:00:00:00:01", agent_cmdline="", agent_iso_sha256="", loop=loop,
    )  # fmt: skip
    started: list[int] = []
    try:
        first = host.launcher._ready
        assert first is not None  # lab start: the first boot is the agent's
        spec.state_dir.mkdir()
        (spec.state_dir / "agent-state.json").write_text('{"token": "an earlier boot\'s"}')
        host.on_report(BmcReport(power="on", boot_device="pxe"))
        assert host.process is first and host.launcher._ready is None
        assert not spec.state_dir.exists()  # each boot starts empty, as a ramdisk's /run
        started.append(first.pid)
        host.on_report(BmcReport(power="on", boot_device="disk"))  # set while on
        host.on_report(BmcReport(power="off", boot_device="disk"))
        assert host.launcher._ready is None  # its next boot is from its disk
        host.on_report(BmcReport(power="off", boot_device="pxe"))
        ready = host.launcher._ready
        assert ready is not None and ready.poll() is None and _nice(ready.pid) == 19
        started.append(ready.pid)
        assert not host.agent_ready and not _state(host)["agent"]["ready"]
        _run_loop_until(loop, lambda: host.agent_ready)  # its ready signal, on the loop
        assert _state(host)["agent"]["ready"] is True
        host.on_report(BmcReport(power="on", boot_device="pxe"))
        assert host.process is ready and not _state(host)["agent"]["ready"]
    finally:
        host.stop()
        loop.close()
        for pid in started:
            agents.signal_process(pid, signal.SIGKILL)


def _state(host: Any) -> dict[str, Any]:
    return dict(json.loads(host.paths.state.read_text()))


def _run_loop_until(loop: Any, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not done in time"
        loop.run_until_complete(asyncio.sleep(0.05))


def test_a_ready_process_says_when_it_has_imported_the_agent(tmp_path: Path) -> None:
    """The real ready process (`python -m metal3.lab.agents`) writes one byte on the pipe it
    is given once the agent is imported, and closes it; with no boot line (end of input) it
    then ends without running an agent."""
    signal_read, signal_write = os.pipe()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "metal3.lab.agents", "agent", "run", "--api", "https://x"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
            env={**os.environ, agents.READY_FD_VARIABLE: str(signal_write)},
            pass_fds=(signal_write,),
        )  # fmt: skip
        os.close(signal_write)
        signal_write = -1
        assert process.returncode == 0, process.stderr
        assert os.read(signal_read, 16) == b"1"
        assert os.read(signal_read, 16) == b""  # closed: nothing else is written
    finally:
        os.close(signal_read)
        if signal_write >= 0:
            os.close(signal_write)


def test_agents_run_in_the_hosts_low_weight_cpu_group(tmp_path: Path) -> None:
    """With the hosts' CPU group, a ready process and a booted agent (from the ready process
    or started cold) run in it, the group at an eighth of the default CPU weight; the
    booted agent at nice 0 there, the ready one at 19. The group goes once they are gone."""
    group = cpu.create_group(cpu.group_path(f"m3lab-t{secrets.token_hex(3)}"))
    try:
        name, weight = cpu.weight_file(group)  # cpu.shares 128 (v1, as here) or cpu.weight 12
        assert (group / name).read_text().strip() == weight == ("128" if "shares" in name else "12")
        spec = _ShellAgent(
            namespace="unused", api_url="https://unused", ca_file=tmp_path / "ca.pem",
            state_dir=tmp_path / "state", root=tmp_path / "root", macs=("02:00:00:00:00:01",),
            log_path=tmp_path / "agent.log", cpu_group=group,
        )  # fmt: skip
        real_argv = agents.AgentSpec.argv(spec)
        assert real_argv[real_argv.index("--work-nice") + 1] == str(agents.WORK_NICE) == "19"
        launcher = agents.AgentLauncher(spec)
        launcher.prepare()
        ready = launcher._ready
        assert ready is not None
        started = [ready]
        try:
            assert cpu.members(group) == [ready.pid]
            assert _nice(ready.pid) == agents.READY_NICE
            booted = launcher.start("test boot")
            assert booted is ready and _nice(booted.pid) == agents.GROUPED_AGENT_NICE == 0
            cold = agents.AgentLauncher(spec).start("cold boot")
            started.append(cold)
            assert sorted(cpu.members(group)) == sorted([ready.pid, cold.pid])
            assert _nice(cold.pid) == agents.GROUPED_AGENT_NICE
            assert os.getpid() not in cpu.members(group)
            assert not cpu.remove_group(group, timeout=0.1)  # not while they run
        finally:
            for process in started:
                process.send_signal(signal.SIGKILL)
                process.wait()
        assert cpu.remove_group(group)
        assert not group.exists()
    finally:
        cpu.remove_group(group, timeout=0)


def test_the_cpu_hierarchy_is_found_for_cgroup_v1_and_v2(tmp_path: Path) -> None:
    v1_mounts = (
        "35 28 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:12 - cgroup cgroup rw,cpu\n"
        "36 28 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    )
    v1_own = "4:memory:/job/7\n1:cpu:/job/7\n0::/\n"
    assert cpu.group_parent(v1_mounts, v1_own) == Path("/sys/fs/cgroup/cpu/job/7")
    # v2: beside this process's cgroup, where the parent hands "cpu" down.
    unified = tmp_path / "unified"
    (unified / "user.slice").mkdir(parents=True)
    (unified / "user.slice" / "cgroup.subtree_control").write_text("cpu memory pids\n")
    v2_mounts = f"30 25 0:26 / {unified} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    v2_own = "0::/user.slice/session-3.scope\n"
    assert cpu.group_parent(v2_mounts, v2_own) == unified / "user.slice"
    (unified / "user.slice" / "cgroup.subtree_control").write_text("memory pids\n")
    assert cpu.group_parent(v2_mounts, v2_own) is None
    # A hybrid machine (v1 cpu, v2 without it, as here) takes the v1 hierarchy.
    assert cpu.group_parent(v1_mounts + v2_mounts, v1_own) == Path("/sys/fs/cgroup/cpu/job/7")
