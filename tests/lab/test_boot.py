"""Hosts boot what their BMC says: network boot and the lab's agent ISO start the agent,
another ISO boots nothing, a disk with a partition table and a config drive "boots the OS",
power off stops the agent. Driven through the BMCs with the landed drivers and ipmitool."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.conftest import AgentApiStandIn
from lab.helpers import Lab, root_namespace, run_metal3, wait_for
from metal3.agent.configdrive import build_config_drive
from metal3.agent.partitions import prepare_config_drive_partition
from metal3.bmc import BootDevice, connect
from metal3.bmc.credentials import Credentials
from metal3.bmc.interface import BMC
from metal3.lab.state import LabHost, load_lab

pytestmark = pytest.mark.anyio


def bmc_of(host: LabHost) -> BMC:
    return connect(host.bmc_address, Credentials(host.username, host.password))


def ipmitool(host: LabHost, *args: str) -> str:
    port = host.bmc_address.rsplit(":", 1)[1]
    done = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", port, "-U", host.username, "-E",
         *args],
        env={"IPMI_PASSWORD": host.password, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def sha256sum(path: Path) -> str:
    """The digest as coreutils' sha256sum computes it (the reference)."""
    done = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return done.stdout.split()[0]


def agent_running(lab: Lab, name: str) -> int | None:
    """The agent pid state.json names, if that process runs `metal3 agent run` in the
    host's namespace (checked with `ip netns pids` and the process's command line)."""
    pid = lab.state(name)["agent"]["pid"]
    if pid is None:
        return None
    host = lab.info.host(name)
    pids = subprocess.run(
        ["ip", "netns", "pids", host.namespace], capture_output=True, text=True, check=True
    ).stdout.split()
    if str(pid) not in pids:
        return None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if cmdline == [b""]:
        return None  # an ending process (a zombie): the record names a boot that is over
    assert b"agent" in cmdline and b"run" in cmdline
    assert f"--root={lab.host_dir(name)}/sysroot".encode() in [
        b"=".join(cmdline[i : i + 2]) for i in range(len(cmdline) - 1)
    ]
    return int(pid)


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def lookups_from(api: AgentApiStandIn, host: LabHost) -> list[dict[str, Any]]:
    return [b for b in api.lookups() if set(b["mac_addresses"]) == set(host.macs)]


async def test_network_boot_starts_the_agent_and_power_off_stops_it(
    lab: Lab, agent_api: AgentApiStandIn
) -> None:
    host = lab.info.host("host-0")
    async with bmc_of(host) as bmc:
        await bmc.set_boot_device(BootDevice.PXE)
        await bmc.power_on(wait=30)
        pid = wait_for(lambda: agent_running(lab, "host-0"), "host-0's agent")
        state = lab.state("host-0")
        assert (state["power"], state["boot_source"], state["booted"]) == ("on", "network", "agent")
        # The agent reaches the agent API through the relay at the gateway, over TLS checked
        # against the lab's CA, and looks itself up by the host's MACs.
        lookup = wait_for(lambda: lookups_from(agent_api, host), "a lookup from host-0's agent")
        # ... and names the system as its BMC does (the recorded tree's SMBIOS UUID).
        assert lookup[0]["system_uuid"] == host.bmc_address.rsplit("/", 1)[1]
        log = lab.host_dir("host-0") / "agent.log"
        assert "boot 1 from the network (pxe): starting the agent" in log.read_text()
        wait_for(
            lambda: "no BareMetalHost has any of these MAC addresses" in log.read_text(),
            "the agent to log the stand-in's answer",
        )
        cmdline = (lab.host_dir("host-0") / "sysroot/proc/cmdline").read_text()
        assert f"BOOTIF=01-{host.boot_mac.replace(':', '-')}" in cmdline
        assert f"metal3.agent_api=https://{lab.info.agent_api_lab_address}" in cmdline
        await bmc.power_off(soft_wait=None, wait=30)
        wait_for(lambda: process_gone(pid), "host-0's agent to end")
        # The BMC's report reaches the lab just after the change (as a real BMC's event).
        state = wait_for(
            lambda: (s := lab.state("host-0"))["power"] == "off" and s, "the lab to hear of it"
        )
        assert state["agent"]["pid"] is None


async def test_ipmi_network_boot_and_power_off(lab: Lab, agent_api: AgentApiStandIn) -> None:
    host = lab.info.host("host-3")
    assert "Set Boot Device to pxe" in ipmitool(host, "chassis", "bootdev", "pxe")
    ipmitool(host, "power", "on")
    pid = wait_for(lambda: agent_running(lab, "host-3"), "host-3's agent")
    wait_for(lambda: lookups_from(agent_api, host), "a lookup from host-3's agent")
    ipmitool(host, "power", "reset")
    wait_for(lambda: process_gone(pid), "the agent of host-3's first boot to end")
    second = wait_for(lambda: agent_running(lab, "host-3"), "host-3's agent after the reset")
    assert second != pid
    assert lab.state("host-3")["boots"] == 2
    ipmitool(host, "power", "off")
    wait_for(lambda: process_gone(second), "host-3's agent to end")
    # The lab records the power off as it stops the agent, which may end before the record.
    wait_for(lambda: lab.state("host-3")["agent"]["pid"] is None, "the lab's record of it")


async def test_virtual_media_boots_only_the_lab_agent_iso(lab: Lab, tmp_path: Path) -> None:
    host = lab.info.host("host-2")
    other = lab.data_dir / "images" / "other.iso"
    other.write_bytes(build_config_drive(meta_data={"uuid": "not-an-agent"}))
    async with bmc_of(host) as bmc:
        await bmc.insert_media(lab.info.agent_iso_url)
        await bmc.set_boot_device(BootDevice.CD)
        await bmc.power_on(wait=30)
        pid = wait_for(lambda: agent_running(lab, "host-2"), "host-2's agent")
        state = lab.state("host-2")
        assert state["boot_source"] == "virtual-media"
        assert state["media"]["agent_iso"] is True
        assert state["media"]["sha256"] == sha256sum(lab.data_dir / "images" / "agent.iso")
        cmdline = (lab.host_dir("host-2") / "sysroot/proc/cmdline").read_text()
        assert "BOOTIF=" not in cmdline  # not a network boot
        await bmc.power_off(soft_wait=None, wait=30)
        wait_for(lambda: process_gone(pid), "host-2's agent to end")

        await bmc.insert_media(lab.info.images_local_url + "other.iso")
        await bmc.power_on(wait=30)
        state = wait_for(
            lambda: (s := lab.state("host-2"))["boots"] == 2 and s["booted"] and s, "boot 2"
        )
        assert state["booted"] == "nothing"
        assert "not the lab's agent ISO" in state["note"]
        assert state["agent"]["pid"] is None
        await bmc.power_off(soft_wait=None, wait=30)
    gets = [
        json.loads(line)
        for line in (lab.data_dir / "images" / "access.log").read_text().splitlines()
    ]
    downloads = [g for g in gets if g["method"] == "GET" and g["listener"] == "local"]
    assert {g["path"] for g in downloads} >= {"/agent.iso", "/other.iso"}


def write_gpt_with_config_drive(device: str, meta_data: dict[str, Any], user_data: bytes) -> None:
    """A GPT with one partition, then a config drive as the agent writes it."""
    subprocess.run(["sgdisk", "--zap-all", device], capture_output=True, check=True)
    subprocess.run(
        ["sgdisk", "-n", "1:2048:+64M", "-t", "1:8300", device], capture_output=True, check=True
    )
    partition = prepare_config_drive_partition(device)
    image = build_config_drive(meta_data=meta_data, user_data=user_data, network_data={})
    with open(device, "r+b") as disk:
        disk.seek(partition.offset)
        disk.write(image)
        disk.flush()
        os.fsync(disk.fileno())


async def test_disk_boot_records_what_the_config_drive_holds(lab: Lab, tmp_path: Path) -> None:
    host = lab.info.host("host-1")
    user_data = b"#cloud-config\nwrite_files:\n- path: /etc/lab\n  content: booted\n"
    (tmp_path / "user_data").write_bytes(user_data)
    expected_digest = sha256sum(tmp_path / "user_data")
    write_gpt_with_config_drive(
        host.loop_devices[0], {"uuid": "lab-uuid-1", "hostname": "web-1.lab.example"}, user_data
    )
    async with bmc_of(host) as bmc:
        await bmc.set_boot_device(BootDevice.DISK, persistent=True)
        await bmc.power_on(wait=30)
        found = wait_for(
            lambda: (
                (lab.host_dir("host-1") / "os.json").exists()
                and json.loads((lab.host_dir("host-1") / "os.json").read_text())
            ),
            "host-1's os.json",
        )
        assert found["booted"] is True
        assert found["disk"] == host.loop_devices[0]
        assert found["hostname"] == "web-1.lab.example"
        assert found["user_data_sha256"] == expected_digest
        assert found["config_drive"]["network_data"] is True
        assert found["partition_table"]["label"] == "gpt"
        assert lab.state("host-1")["booted"] == "os"
        status = run_metal3("lab", "status", "--data-dir", str(lab.data_dir))
        assert status.returncode == 0, status.stderr
        line = next(x for x in status.stdout.splitlines() if x.startswith("host-1 "))
        assert "web-1.lab.example" in line and expected_digest in line
        await bmc.power_off(soft_wait=None, wait=30)


async def test_disk_boot_of_empty_disks_boots_nothing(lab: Lab) -> None:
    host = lab.info.host("host-3")  # IPMI; its disks were never written
    ipmitool(host, "chassis", "bootdev", "disk")
    ipmitool(host, "power", "on")
    found = wait_for(
        lambda: (
            (lab.host_dir("host-3") / "os.json").exists()
            and json.loads((lab.host_dir("host-3") / "os.json").read_text())
        ),
        "host-3's os.json",
    )
    assert found["booted"] is False
    assert [s["reason"] for s in found["skipped"]] == ["no partition table"] * len(host.disks)
    assert lab.state("host-3")["booted"] == "nothing"
    ipmitool(host, "power", "off")


async def test_unregistered_host_runs_its_agent_from_the_start(
    lab: Lab, agent_api: AgentApiStandIn
) -> None:
    spare = lab.info.host("spare-0")
    assert agent_running(lab, "spare-0")
    assert lab.state("spare-0")["boot_source"] == "network"
    wait_for(lambda: lookups_from(agent_api, spare), "a lookup from spare-0's agent")


async def test_power_off_lag_keeps_the_agent_running_that_long(tmp_path: Path) -> None:
    """`lab up --power-off-lag 3`: the BMC reports the host off at once, its agent goes on
    for 3 s more (a BMC that answers before the power is cut), then is stopped."""
    data_dir = tmp_path / "lagging-lab"
    up = run_metal3(
        "lab", "up", "--hosts", "1", "--power-delay", "0", "--power-off-lag", "3",
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert up.returncode == 0, up.stderr + (data_dir / "supervisor.log").read_text()
    try:
        info = load_lab(data_dir)
        lab = Lab(info, data_dir, root_namespace(), [], up.stdout)
        host = info.host("host-0")
        async with bmc_of(host) as bmc:
            await bmc.set_boot_device(BootDevice.PXE)
            await bmc.power_on(wait=30)
            pid = wait_for(lambda: agent_running(lab, "host-0"), "host-0's agent")
            await bmc.power_off(soft_wait=None, wait=30)
            wait_for(lambda: lab.state("host-0")["power"] == "off", "the lab to hear of it")
            wait_for(lambda: process_gone(pid), "host-0's agent to end after the lag")
        # The lab's own notes, stamped when it acted: the lag began at the power off, and the
        # agent was stopped no sooner than 3 s later (whatever the load on this machine).
        notes = {}  # message -> when (`--- lab: STAMP MESSAGE`)
        for line in (lab.host_dir("host-0") / "agent.log").read_text().splitlines():
            if line.startswith("--- lab: "):
                stamp, message = line.removeprefix("--- lab: ").split(" ", 1)
                notes[message] = datetime.datetime.fromisoformat(stamp)
        lagged = notes["power off: the agent goes on for 3 s (power off lag)"]
        stopped = notes["power off: stopping the agent"]
        assert (stopped - lagged).total_seconds() >= 3.0
    finally:
        down = run_metal3("lab", "down", "--data-dir", str(data_dir))
        assert down.returncode == 0, down.stderr
