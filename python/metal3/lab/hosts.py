"""How a lab host behaves when its BMC changes its power: it boots what a server would.

Every BMC report (see `metal3.lab.bmcs`) reaches the host on the supervisor's event loop:

- power on (or a reset while on) boots from the BMC's boot device:
  - network (PXE, UEFI HTTP): the lab plays the network-boot server every server would get
    its agent from, so the agent starts (`metal3.lab.agents`), with BOOTIF on its kernel
    command line and an empty state folder (a ramdisk's /run);
  - CD: if the virtual CD holds the lab's agent ISO (the very image: same sha256) the agent
    starts; with no image or another one, nothing boots (recorded in `state.json`);
  - disk (or no override: the default boot order): "boot the OS" (`metal3.lab.osboot`),
    result in `os.json`;
- power off stops the agent (SIGTERM, then SIGKILL after `AGENT_STOP_GRACE` seconds);
  with `power_off_lag` (`lab up --power-off-lag`) only that long after the BMC took it, as a
  server whose BMC reports off before the power is cut.

An agent that exits on its own (after a `power_off` or `reboot_to_disk` command, with
`--power-action exit`) leaves the host on and idle until the BMC powers it off or resets it,
as a server whose ramdisk halted. `state.json` holds the host's current view; it is written
after every change.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metal3.lab import agents, osboot
from metal3.lab.images import file_sha256
from metal3.lab.layout import HostPaths
from metal3.lab.state import write_json
from metal3.lab.sysroot import write_cmdline

log = logging.getLogger(__name__)

AGENT_STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a host is powered off
NETWORK_BOOT = ("pxe", "uefihttp")
DISK_BOOT = ("disk", "none", "")


@dataclass(frozen=True)
class BmcReport:
    """A BMC's state as it reported it: power, boot device, virtual CD; `reset` when the
    report is a reset of a host that stays on (IPMI)."""

    power: str  # on | off
    boot_device: str  # pxe | cd | disk | none | uefihttp | bios | ...
    media_file: str | None = None  # the CD image as the BMC holds it (a local file)
    reset: bool = False
    event: str = ""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class Host:
    """One host's power and boot behaviour; every method runs on the supervisor's loop."""

    def __init__(
        self,
        *,
        name: str,
        paths: HostPaths,
        agent: agents.AgentSpec,
        disks: tuple[str, ...],
        boot_mac: str,
        agent_cmdline: str,
        agent_iso_sha256: str,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[Host], None] | None = None,
        power_off_lag: float = 0.0,
    ) -> None:
        self.name = name
        self.paths = paths
        self.agent_spec = agent
        self.disks = disks
        self.boot_mac = boot_mac
        self.agent_cmdline = agent_cmdline
        self.agent_iso_sha256 = agent_iso_sha256
        self.loop = loop
        self.on_change = on_change
        self.power_off_lag = power_off_lag
        self.power = "off"
        self.boot_device = ""
        self.boots = 0
        self.booted: str | None = None  # agent | os | nothing
        self.boot_source: str | None = None
        self.note = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.agent_started_at: str | None = None
        self.agent_exit_code: int | None = None
        self.power_on_monotonic: float | None = None
        self.agent_start_latency: float | None = None
        self.media: dict[str, Any] | None = None
        self.last_event = ""
        self._stopping: dict[int, asyncio.TimerHandle] = {}
        self.launcher = agents.AgentLauncher(agent)
        # Whether the process kept ready for the next boot has imported the agent, and the
        # pipe that says so while it has not yet (`agents.AgentLauncher.prepare`).
        self.agent_ready = False
        self._ready_signal: int | None = None
        self._prepare_agent()  # a lab host's first boot is the agent's (inspection)
        self.save()

    # --- BMC reports ---------------------------------------------------------------------

    def on_report(self, report: BmcReport) -> None:
        self.boot_device = report.boot_device
        self.last_event = report.event
        if report.reset and self.power == "on":
            self._power_off("reset")
            self._power_on(report)
        elif report.power == "on" and self.power == "off":
            self._power_on(report)
        elif report.power == "off" and self.power == "on":
            self._power_off("power off")
        self.save()  # first: starting a ready agent (a fork) must not delay the state's record
        self._keep_agent_ready()

    def _keep_agent_ready(self) -> None:
        """Off and set to boot the agent: have its process ready (`metal3.lab.agents`)."""
        if self.power == "off" and self.boot_device.lower() in (*NETWORK_BOOT, "cd"):
            self._prepare_agent()

    def _prepare_agent(self) -> None:
        pipe = self.launcher.prepare()
        if pipe is None:
            return
        self._forget_ready_signal()
        self.agent_ready = False
        self._ready_signal = pipe
        self.loop.add_reader(pipe, self._agent_imported, pipe)

    def _agent_imported(self, pipe: int) -> None:
        """The ready process said it is imported (a byte), or ended before (end of file)."""
        try:
            said = os.read(pipe, 1)
        except OSError:
            said = b""
        self._forget_ready_signal()
        self.agent_ready = bool(said)
        self.save()

    def _forget_ready_signal(self) -> None:
        pipe, self._ready_signal = self._ready_signal, None
        if pipe is not None:
            self.loop.remove_reader(pipe)
            os.close(pipe)

    def _power_on(self, report: BmcReport) -> None:
        self.power = "on"
        self.power_on_monotonic = time.monotonic()
        self.boots += 1
        self.agent_exit_code = None
        self.agent_start_latency = None
        device = report.boot_device.lower()
        if device in NETWORK_BOOT:
            self.boot_source = "network"
            self._start_agent(
                f"BOOTIF=01-{self.boot_mac.replace(':', '-')} {self.agent_cmdline}",
                f"boot {self.boots} from the network ({device})",
            )
        elif device == "cd":
            self.boot_source = "virtual-media"
            self._boot_cd(report.media_file)
        elif device in DISK_BOOT:
            self.boot_source = "disk"
            self._boot_disk()
        else:
            self.boot_source = device
            self._nothing(f"boot device {device!r}: nothing the lab can boot")

    def _boot_cd(self, media_file: str | None) -> None:
        if not media_file:
            self.media = None
            self._nothing("boot from CD with no virtual media inserted")
            return
        try:
            digest = file_sha256(Path(media_file))
        except OSError as exc:
            self.media = {"file": media_file, "error": str(exc)}
            self._nothing(f"the virtual CD cannot be read: {exc}")
            return
        is_agent = digest == self.agent_iso_sha256
        self.media = {"file": media_file, "sha256": digest, "agent_iso": is_agent}
        if not is_agent:
            self._nothing("the virtual CD holds an image that is not the lab's agent ISO")
            return
        self._start_agent(self.agent_cmdline, f"boot {self.boots} from virtual media")

    def _nothing(self, why: str) -> None:
        self.booted = "nothing"
        self.note = why
        log.info("%s: %s", self.name, why)

    def _boot_disk(self) -> None:
        self.booted = None
        self.note = "booting from disk"
        boot = self.boots

        def done(future: asyncio.Future[dict[str, Any]]) -> None:
            if boot != self.boots or self.power != "on":
                return  # powered off (or rebooted) while booting: this boot never finished
            try:
                result = future.result()
            except Exception as exc:
                log.exception("%s: disk boot check failed", self.name)
                result = {"time": _now(), "booted": False, "reason": f"internal error: {exc}"}
            result["boot"] = boot
            write_json(self.paths.os, result)
            self.booted = "os" if result.get("booted") else "nothing"
            self.note = (
                f"OS booted from {result.get('disk')}"
                if result.get("booted")
                else str(result.get("reason"))
            )
            self.save()

        future = self.loop.run_in_executor(None, osboot.boot_from_disks, self.disks)
        future.add_done_callback(done)

    # --- the agent -----------------------------------------------------------------------

    def _start_agent(self, cmdline: str, reason: str) -> None:
        # A ramdisk's /run starts empty at each boot: no token or result of an earlier boot's
        # agent (it would report a result the operator had moved past, and look up again).
        shutil.rmtree(self.agent_spec.state_dir, ignore_errors=True)
        write_cmdline(self.agent_spec.root, cmdline)
        process = self.launcher.start(reason)
        self._forget_ready_signal()
        self.agent_ready = False
        self.process = process
        self.booted = "agent"
        self.note = reason
        self.agent_started_at = _now()
        if self.power_on_monotonic is not None:
            self.agent_start_latency = round(time.monotonic() - self.power_on_monotonic, 4)
        log.info("%s: %s: agent pid %d", self.name, reason, process.pid)
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:
            return  # already gone; the exit is seen by poll() on the next report
        self.loop.add_reader(pidfd, self._agent_exited, process, pidfd)

    def _agent_exited(self, process: subprocess.Popen[bytes], pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        code = process.wait()
        timer = self._stopping.pop(process.pid, None)
        if timer is not None:
            timer.cancel()
        ended = f"signal {-code}" if code < 0 else f"exit code {code}"
        agents.note(self.agent_spec.log_path, f"the agent (pid {process.pid}) ended: {ended}")
        if process is not self.process:
            return  # stopped by a power off or reset: already recorded
        self.process = None
        self.agent_exit_code = code
        if self.power == "on":
            self.note = f"the agent ended ({ended}); the host idles until powered off or reset"
        self.save()

    def _power_off(self, why: str) -> None:
        self.power = "off"
        self.booted = None
        self.note = why
        process = self.process
        if process is not None and process.poll() is None:
            if self.power_off_lag:
                agents.note(
                    self.agent_spec.log_path,
                    f"{why}: the agent goes on for {self.power_off_lag:g} s (power off lag)",
                )
                self._stopping[process.pid] = self.loop.call_later(
                    self.power_off_lag, self._stop_agent, process, why
                )
            else:
                self._stop_agent(process, why)
        self.process = None

    def _stop_agent(self, process: subprocess.Popen[bytes], why: str) -> None:
        if process.poll() is not None:
            return
        agents.note(self.agent_spec.log_path, f"{why}: stopping the agent")
        agents.signal_process(process.pid, signal.SIGTERM)
        self._stopping[process.pid] = self.loop.call_later(
            AGENT_STOP_GRACE, agents.signal_process, process.pid, signal.SIGKILL
        )

    def stop(self) -> None:
        """Power off for good (the lab is going down): kill the agent now."""
        process = self.process
        self.power = "off"
        self.process = None
        self.launcher.close()
        self._forget_ready_signal()
        self.agent_ready = False
        if process is not None and process.poll() is None:
            agents.signal_process(process.pid, signal.SIGKILL)
            process.wait()
        self.save()

    # --- state.json ----------------------------------------------------------------------

    @property
    def agent_pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "power": self.power,
            "boot_device": self.boot_device,
            "boots": self.boots,
            "boot_source": self.boot_source,
            "booted": self.booted,
            "note": self.note,
            "media": self.media,
            "agent": {
                "pid": self.agent_pid,
                "started_at": self.agent_started_at,
                "exit_code": self.agent_exit_code,
                "start_latency_seconds": self.agent_start_latency,
                "ready": self.agent_ready,
            },
            "last_event": self.last_event,
            "updated_at": _now(),
        }

    def save(self) -> None:
        write_json(self.paths.state, self.to_json())
        if self.on_change is not None:
            self.on_change(self)
