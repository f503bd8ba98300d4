"""Two virtual machines through the whole lifecycle, driven by the operator: the way a data
centre runs it, on `metal3 lab up --vms 2` (TCG under the lab's libvirtd, inside the lab's
network namespace).

- vm-0 is `redfish-virtualmedia` (sushy-tools' libvirt driver): the agent boots from the
  ramdisk ISO the BMC inserts; vm-1 is `ipmi` (virtualbmc): it boots the ramdisk from the
  network (the lab's boot server: DHCP, iPXE, HTTP).
- register, inspect (the inventory is the VM's virtual hardware: two disks, /dev/vda of 4 GiB
  and /dev/vdb of 6 GiB, the domain's MAC), prepare (metadata cleaning), provision the test OS
  (`metal3 lab os-image`, a qcow2) with user data and meta data to the disk that root-device
  hints choose: the second, where Ironic's default would take the first (the smallest of at
  least 4 GiB). The VM boots from that disk (its BIOS's boot disk: see
  `metal3.lab.profiles.VM_PROFILE`) and cloud-init reports the config drive's hostname and
  user data on the serial console, its root on /dev/vdb; deprovision cleans the disk (`blkid`
  finds no partition table left); delete powers the VM off.

The per-phase times of each VM are printed (`-s` shows them): power on to agent up, inspection,
write, and reboot to cloud-init done.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import FAST, Cluster, cluster, state
from metal3.agentapi.records import AgentRecords
from metal3.kube.client import ApiError
from metal3.kube.resources import BAREMETALHOSTS, SECRETS
from metal3.lab.osimage import read_report
from metal3.lab.profiles import disk_serial
from metal3.lab.vms import DISK_SLOT
from metal3.provisioner.direct.settings import DirectSettings
from provisioner.labkit import LabRun, lab_operator, lab_up, metal3, partition_table_type

pytestmark = pytest.mark.anyio

# TCG on a shared 2-core machine: an agent boot takes 20-60 s, the OS's boot 60-110 s.
VM_SETTINGS = DirectSettings(
    agent_timeout=420.0,
    power_timeout=120.0,
    poll_interval=1.0,
    agent_poll_interval=5.0,
    bmc_call_timeout=60.0,
    bmc_wait=2.0,
)
PHASE_TIMEOUT = 600.0
OS_BOOT_TIMEOUT = 420.0
MARKER = "metal3-e2e-user-data-ran"
USER_DATA = f"#cloud-config\nruncmd:\n  - [echo, {MARKER}]\n".encode()


@dataclass
class Vm:
    name: str
    kind: str
    mac: str
    disks: list[Path]
    console: Path
    times: dict[str, float] = field(default_factory=dict)

    def console_text(self, offset: int = 0) -> str:
        try:
            return self.console.read_bytes()[offset:].decode(errors="replace")
        except OSError:
            return ""


@dataclass(frozen=True)
class ServedImage:
    url: str
    sha256: str


@pytest.fixture(scope="module")
def vm_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabRun, ServedImage]]:
    """The lab with two VMs (one of each BMC kind) and the test OS image in its image server."""
    ramdisk = tmp_path_factory.mktemp("ramdisk")
    built = metal3("ramdisk", "build", "--output", str(ramdisk), timeout=900)  # cached
    assert built.returncode == 0, built.stderr
    data_dir = tmp_path_factory.mktemp("vm-e2e-lab")
    with lab_up(
        data_dir, "--vms", "2", "--virtual-media-hosts", "1", "--ipmi-hosts", "1",
        "--ramdisk", str(ramdisk),
    ) as run:  # fmt: skip
        image = run.images / "test-os.qcow2"
        made = metal3("lab", "os-image", "--output", str(image), timeout=900)  # cached
        assert made.returncode == 0, made.stderr
        url = (run.images / "URL").read_text().strip().rstrip("/") + f"/{image.name}"
        yield run, ServedImage(url, hashlib.sha256(image.read_bytes()).hexdigest())


def _vm(run: LabRun, name: str) -> Vm:
    host = run.hosts[name]
    folder = run.dir / "hosts" / name
    return Vm(
        name=name,
        kind=host["kind"],
        mac=host["boot_mac"],
        disks=[Path(d) for d in host["disks"]],
        console=folder / "console.log",
    )


def _domain_macs(run: LabRun, name: str) -> list[str]:
    uri = json.loads((run.dir / "lab.json").read_text())["libvirt_uri"]
    xml = subprocess.run(
        ["virsh", "-q", "-c", uri, "dumpxml", "--inactive", name],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return [m.get("address", "") for m in ET.fromstring(xml).iter("mac")]


def _secret(name: str, namespace: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


async def _wait_state(c: Cluster, name: str, wanted: str, timeout: float) -> dict[str, Any]:
    def reached(obj: dict[str, Any] | None) -> bool:
        if obj is not None and (obj.get("status") or {}).get("errorMessage"):
            raise AssertionError(f"{name}: {obj['status']['errorMessage']}")
        return state(obj) == wanted

    obj = await c.wait_for(name, reached, timeout=timeout, what=f"state {wanted!r}")
    assert obj is not None
    return obj


async def _time_agent_boots(c: Cluster, namespace: str, vm: Vm) -> None:
    """Each agent boot's power-on to agent up: from the provisioner's boot request to the
    agent's lookup, as the host's agent record has them; until cancelled."""
    seen: set[str] = set()
    while True:
        await anyio.sleep(1)
        try:
            host = await c.client.get(BAREMETALHOSTS, namespace, vm.name)
        except ApiError:
            continue
        record = await AgentRecords(c.client).get(host)
        booted, up = record.agent_boot_at, record.token_issued_at
        if booted and up and up >= booted and up not in seen:
            seen.add(up)
            vm.times[f"power on to agent up, boot {len(seen)}"] = _stamp(up) - _stamp(booted)


def _stamp(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _history_seconds(obj: dict[str, Any], operation: str) -> float:
    entry = obj["status"]["operationHistory"][operation]
    return _stamp(entry["end"]) - _stamp(entry["start"])


async def _lifecycle(c: Cluster, namespace: str, run: LabRun, vm: Vm, image: ServedImage) -> None:
    name = vm.name
    hostname = f"{name}-os"
    for document in run.manifests(namespace)[name]:
        if document["kind"] == "BareMetalHost":
            manifest = document
        else:
            await c.client.create(SECRETS, document)
    await c.client.create(SECRETS, _secret(f"{name}-user-data", namespace, {"value": USER_DATA}))
    meta = json.dumps({"hostname": hostname}).encode()
    await c.client.create(SECRETS, _secret(f"{name}-meta-data", namespace, {"value": meta}))
    manifest["spec"].update(
        online=True,
        automatedCleaningMode="metadata",
        rootDeviceHints={"serialNumber": disk_serial(name, 1)},  # not the default disk
    )
    started = time.monotonic()
    await c.client.create(BAREMETALHOSTS, manifest)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_time_agent_boots, c, namespace, vm)
        await _phases(c, namespace, run, vm, image, hostname, started)
        tg.cancel_scope.cancel()


async def _phases(
    c: Cluster, namespace: str, run: LabRun, vm: Vm, image: ServedImage, hostname: str,
    started: float,
) -> None:  # fmt: skip
    name = vm.name

    # Inspection: the VM's own virtual hardware.
    ready = await _wait_state(c, name, "available", PHASE_TIMEOUT)
    vm.times["register to available (inspection and cleaning)"] = time.monotonic() - started
    vm.times["inspection"] = _history_seconds(ready, "inspect")
    hardware = ready["status"]["hardware"]
    assert run.hosts[name]["vm"]["boot_disk"] == 1  # the BIOS boots the second disk
    disks = [
        (d["name"], sorted(d["alternateNames"]), d["sizeBytes"], d["serialNumber"])
        for d in hardware["storage"]
    ]
    slot = [f"/dev/disk/by-path/pci-0000:00:{DISK_SLOT + i:02x}.0" for i in (0, 1)]
    assert sorted(disks) == [
        (slot[0], [slot[0], "/dev/vda"], 4 << 30, disk_serial(name, 0)),
        (slot[1], [slot[1], "/dev/vdb"], 6 << 30, disk_serial(name, 1)),
    ], hardware["storage"]
    assert [n["mac"] for n in hardware["nics"]] == _domain_macs(run, name)
    firmware = vm.console_text()
    if vm.kind == "ipmi":  # network boot: SeaBIOS, iPXE, a lease from the lab's boot server
        assert "iPXE" in firmware and "metal3-ramdisk:" in firmware, firmware[-3000:]
        assert _leased(run, vm.mac), vm.mac
    else:  # virtual media: the agent ISO from the CD, never iPXE
        assert "Booting from DVD/CD" in firmware and "Booting from ROM" not in firmware

    # Provisioning to the second disk, then the OS boots from it.
    before = len(vm.console.read_bytes()) if vm.console.exists() else 0
    provisioning = time.monotonic()
    await c.client.patch(BAREMETALHOSTS, namespace, name, {"spec": {
        "image": {"url": image.url, "checksum": image.sha256, "checksumType": "sha256",
                  "format": "qcow2"},
        "userData": {"name": f"{name}-user-data", "namespace": namespace},
        "metaData": {"name": f"{name}-meta-data", "namespace": namespace},
    }})  # fmt: skip
    provisioned = await _wait_state(c, name, "provisioned", PHASE_TIMEOUT)
    vm.times["provision (agent boot, write, boot device, reboot)"] = time.monotonic() - provisioning
    vm.times["write (provision start to end)"] = _history_seconds(provisioned, "provision")
    assert provisioned["status"]["provisioning"]["image"]["url"] == image.url
    reboot = time.monotonic()
    with anyio.fail_after(OS_BOOT_TIMEOUT):
        while (report := read_report(vm.console_text(before))) is None:
            await anyio.sleep(1)
    vm.times["reboot to cloud-init done"] = time.monotonic() - reboot
    console = vm.console_text(before)
    assert report.status == "done", console[-3000:]
    assert report.datasource == "ConfigDrive", console[-3000:]
    assert report.hostname == hostname
    assert report.user_data_sha256 == hashlib.sha256(USER_DATA).hexdigest()
    assert (report.get("source") or "").startswith("/dev/vdb"), console[-3000:]
    assert MARKER in console
    assert partition_table_type(vm.disks[1]) == "dos"  # the OS image's MBR, where hinted
    assert partition_table_type(vm.disks[0]) == ""  # the default disk was never written
    status = await anyio.to_thread.run_sync(
        lambda: metal3("lab", "status", "--data-dir", str(run.dir))
    )
    assert f"OS booted, cloud-init done: hostname {hostname}" in status.stdout, status.stdout

    # Deprovisioning cleans the disk; deleting powers the VM off.
    await c.client.patch(BAREMETALHOSTS, namespace, name, {"spec": {"image": None}})
    await _wait_state(c, name, "available", PHASE_TIMEOUT)
    assert partition_table_type(vm.disks[1]) == ""
    await c.client.delete(BAREMETALHOSTS, namespace, name)
    await c.wait_for(name, lambda o: o is None, timeout=PHASE_TIMEOUT, what="deletion")


async def test_two_vms_from_registration_to_deletion(
    kubeconfig: Path, namespace: str, vm_lab: tuple[LabRun, ServedImage]
) -> None:
    run, image = vm_lab
    machines = [_vm(run, name) for name in sorted(run.hosts)]
    assert sorted(vm.kind for vm in machines) == ["ipmi", "redfish-virtualmedia"]
    async with (
        cluster(kubeconfig, namespace) as c,
        lab_operator(kubeconfig, namespace, run, VM_SETTINGS, replace(FAST, error_backoff_unit=5)),
        anyio.create_task_group() as tg,
    ):
        for vm in machines:
            tg.start_soon(_lifecycle, c, namespace, run, vm, image)
    for vm in machines:
        print(f"\n{vm.name} ({vm.kind}):")
        for phase, seconds in vm.times.items():
            print(f"  {phase}: {seconds:.1f} s")


FAILING = replace(VM_SETTINGS, agent_timeout=90.0)
# Retried at once (a failed provisioning goes through deprovisioning), given up after two.
GIVE_UP_AFTER_TWO = replace(FAST, error_backoff_unit=600, max_provisioning_retries=2)


async def test_a_vm_whose_agent_never_calls_back_and_a_wrong_checksum(
    kubeconfig: Path, namespace: str, vm_lab: tuple[LabRun, ServedImage]
) -> None:
    """vm-1 is registered with a boot MAC that is not its own: its ramdisk boots and looks
    itself up by its real MAC, which no host has, so its agent never calls back; after the
    agent timeout the host is in an inspection error and powered off. vm-0 (no inspection, no
    cleaning: one agent boot per try) is given the image with a wrong checksum: a provisioning
    error naming the checksum. The operator provisions it again, as upstream does, each try
    failing the same way, until `max_provisioning_retries` (2 here) stops it. Only then, with
    no write in flight, is the disk read: no partition table left (each failed try's agent
    wipes what it wrote), and its boot loader never ran."""
    run, image = vm_lab
    lost, bad = _vm(run, "vm-1"), _vm(run, "vm-0")
    async with (
        cluster(kubeconfig, namespace) as c,
        lab_operator(kubeconfig, namespace, run, FAILING, GIVE_UP_AFTER_TWO),
    ):
        manifests = run.manifests(namespace)
        for name in (lost.name, bad.name):
            for document in manifests[name]:
                if document["kind"] == "Secret":
                    await c.client.create(SECRETS, document)
        host = next(d for d in manifests[lost.name] if d["kind"] == "BareMetalHost")
        host["spec"].update(online=False, bootMACAddress="02:6d:33:ff:00:01")
        await c.client.create(BAREMETALHOSTS, host)
        host = next(d for d in manifests[bad.name] if d["kind"] == "BareMetalHost")
        host["metadata"]["annotations"] = {"inspect.metal3.io": "disabled"}
        host["spec"].update(
            online=True,
            automatedCleaningMode="disabled",
            rootDeviceHints={"serialNumber": disk_serial(bad.name, 1)},
            image={"url": image.url, "checksum": "0" * 64, "checksumType": "sha256",
                   "format": "qcow2"},
        )  # fmt: skip
        before = len(bad.console.read_bytes()) if bad.console.exists() else 0
        assert await _domstate(run, bad.name) == "shut off"
        await anyio.to_thread.run_sync(_zero, bad.disks[1])  # no bytes of an earlier test
        await c.client.create(BAREMETALHOSTS, host)

        def errored(obj: dict[str, Any] | None) -> bool:
            return bool(obj and (obj.get("status") or {}).get("errorType"))

        failed = await c.wait_for(bad.name, errored, timeout=PHASE_TIMEOUT, what="an error")
        assert failed is not None
        assert failed["status"]["errorType"] == "provisioning error", failed["status"]
        assert "checksum" in failed["status"]["errorMessage"], failed["status"]
        assert "zeroed so it does not boot" in failed["status"]["errorMessage"]
        never = await c.wait_for(lost.name, errored, timeout=PHASE_TIMEOUT, what="an error")
        assert never is not None
        assert never["status"]["errorType"] == "inspection error", never["status"]
        message = never["status"]["errorMessage"]
        assert "did not call back" in message and "powered off" in message, message
        with anyio.fail_after(120):
            while (await _domstate(run, lost.name)) != "shut off":
                await anyio.sleep(1)
        given_up = await c.wait_for(
            bad.name,
            lambda o: "not retrying" in ((o or {}).get("status") or {}).get("errorMessage", ""),
            timeout=PHASE_TIMEOUT,
            what="the retries to end",
        )
        assert given_up is not None
        assert given_up["status"]["provisioningFailCount"] == 2, given_up["status"]
        assert partition_table_type(bad.disks[1]) == ""  # nothing bootable was left ...
        assert await anyio.to_thread.run_sync(_written_past_the_first_mib, bad.disks[1])  # ...
        # of the image the agent streamed before the checksum showed it wrong
        console = bad.console_text(before)
        kernels = [line for line in console.splitlines() if "Command line:" in line]
        assert kernels, console[-3000:]
        assert all("metal3.agent_api=" in line for line in kernels), kernels  # only the agent's
        failures = [line for line in console.splitlines() if "deploy failed:" in line]
        assert len(failures) == 2 and all("checksum mismatch" in f for f in failures), failures
        assert read_report(console) is None
        assert state(await c.get(bad.name)) != "provisioned"
        for name in (lost.name, bad.name):
            await c.client.delete(BAREMETALHOSTS, namespace, name)
        for name in (lost.name, bad.name):
            await c.wait_for(name, lambda o: o is None, timeout=PHASE_TIMEOUT, what="deletion")


async def _domstate(run: LabRun, name: str) -> str:
    uri = json.loads((run.dir / "lab.json").read_text())["libvirt_uri"]
    done = await anyio.run_process(["virsh", "-q", "-c", uri, "domstate", name])
    return done.stdout.decode().strip()


def _written_past_the_first_mib(disk: Path) -> bool:
    with disk.open("rb") as handle:
        handle.seek(1 << 20)
        return any(handle.read(8 << 20))


def _zero(disk: Path) -> None:
    size = disk.stat().st_size
    os.truncate(disk, 0)
    os.truncate(disk, size)


def _leased(run: LabRun, mac: str) -> bool:
    """Whether the lab's boot server leased `mac` an address in the lab's subnet."""
    lab = json.loads((run.dir / "lab.json").read_text())
    subnet = ipaddress.ip_network(lab["network"]["subnet"])
    leases = (run.dir / "bootserver" / "dnsmasq.leases").read_text()
    return any(
        line.split()[1] == mac and ipaddress.ip_address(line.split()[2]) in subnet
        for line in leases.splitlines()
        if len(line.split()) > 2
    )
